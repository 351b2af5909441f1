/* The plain C ABI of a compiled-loss library (`kdc compile-loss -o libNAME.so`
 * or `.a`; docs/abi.md): what the generated NAME_eval and NAME_info call.
 *
 * A loss library holds the generated kernels (NAME_program, a
 * kd_loss_program), a small generated glue file (NAME_eval, NAME_info: the
 * only exported symbols) and a private copy of this runtime built with hidden
 * visibility, so two loss libraries load side by side and a caller needs no
 * kdc header: the generated NAME.h declares everything with plain C types.
 *
 * Threads: each library keeps a few thread pools, created on first use for a
 * thread count and reused by later calls (creating one per call costs more
 * than a small batch's whole run; see docs/abi.md), freed when the library is
 * unloaded. Calls from several threads at once are safe; calls sharing a
 * pool run one after the other.
 *
 * Legend: N = rows (tokens), V = vocabulary. */
#ifndef KD_LOSSAPI_H
#define KD_LOSSAPI_H

#include <stddef.h>
#include <stdint.h>

#include "lossrun.h"

/* The version of NAME_eval's and NAME_info's signatures and of
 * kd_lossapi_info's layout (not of kd_loss_program, which is internal to a
 * library): bumped whenever one of them changes. */
#define KD_LOSSAPI_VERSION 2

/* What NAME_info reports; field order is the ABI (six 32-bit integers).
 * Version 2 (bfloat16 gradients) kept the layout: has_grad gained the value
 * 2, and NAME_eval's grad became void *. */
typedef struct kd_lossapi_info {
  uint32_t abi_version;  /* KD_LOSSAPI_VERSION */
  int32_t teacher_dtype; /* 0 float32, 1 bfloat16 (uint16_t bits), -1: reads no teacher */
  int32_t student_dtype; /* 0 float32, 1 bfloat16 */
  int32_t has_labels;    /* 1: labels [N] int64 are required */
  int32_t has_grad;      /* 1: grad [N, V] float32 is required and written; 2: the same
                            in bfloat16 (uint16_t bits, rounded to nearest even) */
  int32_t max_threads;   /* the largest `threads` NAME_eval accepts */
} kd_lossapi_info;

/* Runs p on the caller's arrays with `threads` workers (<= 0: one per online
 * CPU, 1: the calling thread only). Returns 0 or a kd_status (5: invalid
 * argument, 7: out of memory), with a message in err when err is not NULL. */
int kd_lossapi_eval(const kd_loss_program *p, const void *teacher, const void *student,
                    const int64_t *labels, int64_t N, int64_t V, void *grad, double *loss,
                    int threads, char *err, size_t errlen);

/* Fills *out from p; returns 0, or 5 when out is NULL. */
int kd_lossapi_info_of(const kd_loss_program *p, kd_lossapi_info *out);

#endif /* KD_LOSSAPI_H */
