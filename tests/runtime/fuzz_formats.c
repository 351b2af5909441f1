/* libFuzzer target for the runtime's file readers (built with -DKDC_FUZZ=ON):
 * the first byte picks .npy or safetensors, the rest is the file. Every
 * input must give KD_OK or a status with a message, never a crash, a leak
 * or an out-of-bounds read; an accepted file must describe memory inside
 * the input. Run: build-fuzz/tests/runtime/fuzz_formats -max_total_time=60 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "npy.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  char err[256];
  const uint8_t *buf = data + 1;
  size_t len = size - 1;
  if (data[0] & 1) {
    kd_array a;
    if (kd_npy_read_mem(buf, len, &a, err, sizeof err) == KD_OK) {
      if ((int64_t)a.nbytes != kd_array_numel(&a) * (int64_t)kd_dtype_size(a.dtype)) abort();
      kd_array_free(&a);
    } else if (!err[0]) {
      abort();
    }
  } else {
    kd_safetensors *st;
    if (kd_st_open_mem(buf, len, &st, err, sizeof err) == KD_OK) {
      for (int i = 0; i < kd_st_count(st); i++) {
        const kd_st_tensor *t = kd_st_at(st, i);
        const uint8_t *p = t->data;
        if (p < buf || p + t->nbytes > buf + len || kd_st_find(st, t->name) != t) abort();
      }
      kd_st_close(st);
    } else if (!err[0]) {
      abort();
    }
  }
  return 0;
}
