/* The GPU kernels' check against the reference executor, shared by the
 * run on a GPU (test_gpu_run.c) and the host emulation (test_ptx_emu.c):
 * every divergence of the prelude (the specs in examples/losses, lowered
 * with labels so that every third row is masked, through the whole
 * pipeline), f32 and bf16 logits in [-6, 6), and f32 logits with the
 * gradient stored as bf16, on the shapes given. Prints a line per case; the
 * tolerances are in gcheck.c. */
#ifndef KD_GCHECK_H
#define KD_GCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "ir.h"
#include "lossrun.h"

typedef struct gc_runner {
  /* one compiled loss per graph and gradient dtype, *h */
  kd_status (*compile)(void *ctx, const kd_graph *g, kd_dtype grad_dtype, void **h, char *err, size_t errlen);
  kd_status (*eval)(void *h, const kd_loss_io *io, char *err, size_t errlen);
  void (*release)(void *h);
  int block; /* threads per row block (the tolerance depends on it) */
} gc_runner;

/* Returns the number of failures. */
int gc_run_all(const gc_runner *run, void *ctx, const int64_t (*shapes)[2], size_t nshapes);

#endif /* KD_GCHECK_H */
