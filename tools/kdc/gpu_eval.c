/* eval-loss on the GPU: open the driver, pick the SM of device 0, emit PTX
 * for it, load and run it. */
#include "gpu_eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "commands.h"
#include "cuda.h"
#include "gpuloss.h"
#include "ptx.h"

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The newest SM the emitter knows that device 0 can run (PTX for an older
 * SM runs on a newer GPU). */
static const char *pick_sm(const kd_cuda_device_info *info) {
  static const char *const sms[] = {"sm_90", "sm_89", "sm_87", "sm_86", "sm_80", "sm_75"};
  int cc = info->cc_major * 10 + info->cc_minor;
  for (size_t i = 0; i < sizeof sms / sizeof sms[0]; i++)
    if (atoi(sms[i] + 3) <= cc) return sms[i];
  return NULL;
}

int kdc_eval_cuda(const char *cmd, const kd_graph *g, const kd_loss_io *io, double *t_compile,
                  double *t_run) {
  char err[8192] = "";
  kd_cuda *cu = NULL;
  kd_gpu_loss *l = NULL;
  char *ptx = NULL;
  kd_cuda_device_info info;
  kd_status st = kd_cuda_open(&cu, err, sizeof err);
  if (!st) st = kd_cuda_use_device(cu, 0, err, sizeof err);
  if (!st) st = kd_cuda_device_info_get(cu, 0, &info, err, sizeof err);
  const char *sm = st ? NULL : pick_sm(&info);
  if (!st && !sm) {
    snprintf(err, sizeof err, "%s (sm_%d%d) is older than sm_75", info.name, info.cc_major, info.cc_minor);
    st = KD_ERR_UNSUPPORTED;
  }
  double t0 = seconds();
  if (!st) {
    kd_ptx_options o = {.sm = sm, .grad_dtype = io->grad_dtype};
    st = kd_ptx_emit(g, &o, 0, &ptx, NULL, err, sizeof err);
  }
  if (!st) st = kd_gpu_loss_load(cu, ptx, &l, err, sizeof err);
  *t_compile = seconds() - t0;
  t0 = seconds();
  if (!st) st = kd_gpu_loss_eval(l, io, err, sizeof err);
  *t_run = seconds() - t0;
  kd_gpu_loss_free(l);
  free(ptx);
  kd_cuda_close(cu);
  if (st) fprintf(stderr, "%s: %s\n", cmd, err);
  return st ? KDC_EXIT_USER : KDC_EXIT_OK;
}
