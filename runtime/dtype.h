/* Element types, shared by the IR, the runtime and the file readers. */
#ifndef KD_DTYPE_H
#define KD_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum kd_dtype {
  KD_F32, KD_BF16, KD_F64, KD_I32, KD_I64, KD_BOOL,
  KD_DTYPE_COUNT
} kd_dtype;

const char *kd_dtype_name(kd_dtype t); /* "f32", "bf16", ... */
size_t kd_dtype_size(kd_dtype t);      /* bytes per element; KD_BOOL is 1 */

/* bfloat16 is the top half of an IEEE float; widening is exact. */
static inline float kd_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Rounds to nearest even; NaN stays NaN. */
static inline uint16_t kd_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

#endif /* KD_DTYPE_H */
