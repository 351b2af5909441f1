/* Every divergence of the prelude compiled to PTX for the GPU present and
 * run on it against the reference executor (gcheck.h): a vocabulary that is
 * no multiple of 4 (the one-column path), one that is (the 4-wide path),
 * and V = 256000. Skipped (exit 77, reason printed) where there is no CUDA
 * driver or no GPU. */
#include <stdio.h>
#include <stdlib.h>

#include "cuda.h"
#include "gcheck.h"
#include "gpuloss.h"
#include "ptx.h"

typedef struct gpu_ctx {
  kd_cuda *cu;
  const char *sm;
} gpu_ctx;

static kd_status gpu_compile(void *ctx, const kd_graph *g, kd_dtype grad_dtype, void **h, char *err,
                             size_t errlen) {
  gpu_ctx *c = ctx;
  kd_ptx_options o = {.sm = c->sm, .grad_dtype = grad_dtype};
  char *ptx = NULL;
  kd_status st = kd_ptx_emit(g, &o, 0, &ptx, NULL, err, errlen);
  if (!st) st = kd_gpu_loss_load(c->cu, ptx, (kd_gpu_loss **)h, err, errlen);
  free(ptx);
  return st;
}

static kd_status gpu_eval(void *h, const kd_loss_io *io, char *err, size_t errlen) {
  return kd_gpu_loss_eval(h, io, err, errlen);
}

static void gpu_release(void *h) { kd_gpu_loss_free(h); }

int main(void) {
  char err[512];
  gpu_ctx c = {NULL, NULL};
  kd_cuda_device_info info;
  kd_status st = kd_cuda_open(&c.cu, err, sizeof err);
  if (st == KD_ERR_UNSUPPORTED) {
    printf("SKIPPED: %s\n", err);
    return 77;
  }
  if (!st) st = kd_cuda_use_device(c.cu, 0, err, sizeof err);
  if (!st) st = kd_cuda_device_info_get(c.cu, 0, &info, err, sizeof err);
  if (st) {
    printf("FAIL: %s\n", err);
    kd_cuda_close(c.cu);
    return 1;
  }
  c.sm = info.cc_major >= 9 ? "sm_90" : "sm_80";
  printf("device: %s (sm_%d%d), PTX for %s\n", info.name, info.cc_major, info.cc_minor, c.sm);
  static const int64_t shapes[][2] = {{5, 37}, {4, 1024}, {2, 256000}};
  static const gc_runner run = {gpu_compile, gpu_eval, gpu_release, 256};
  int failures = gc_run_all(&run, &c, shapes, sizeof shapes / sizeof shapes[0]);
  kd_cuda_close(c.cu);
  return failures != 0;
}
