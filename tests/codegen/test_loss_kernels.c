/* Every fused loss kernel against the reference executor (ir/refexec.h,
 * double precision, unfused) on random inputs: odd and huge vocabularies,
 * one row, logits of magnitude 1e4, -inf teacher logits, temperatures from
 * 0.05 to 20, masked and all-masked batches, bf16 inputs, kept exps. Also: the result
 * does not depend on the thread count (bit for bit).
 *
 * Tolerances: the table in kcheck.c. The vector width is also forced to 4
 * and 8 on some cases, so the emitter is exercised at widths other than the
 * host's.
 *
 * Legend: N = rows, V = vocabulary, W = f32 lanes of the kernel. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kcheck.h"
#include "losses.h"
#include "threadpool.h"

typedef struct tcase {
  kd_tl_kind kind;
  int64_t N, V;
  double T, mag, ninf; /* temperature, logit magnitude (0: normal, sigma 3), -inf fraction */
  int masked;          /* 1: some labels -100; 2: all */
  kd_dtype dtype;
  int width;           /* 0: the host's */
  int nontemporal;     /* gradient stores with the alignment head */
  int no_grad;         /* the loss alone (no autodiff) */
} tcase;

static const tcase cases[] = {
  /* odd vocabularies (not multiples of any vector width), one row */
  {TL_FKL, 5, 1, 2, 0, 0, 0, KD_F32, 0, 0, 0},     {TL_FKL, 5, 7, 2, 0, 0, 0, KD_F32, 0, 0, 0},
  {TL_FKL, 1, 33, 2, 0, 0, 0, KD_F32, 0, 0, 0},    {TL_RKL, 5, 7, 2, 0, 0, 0, KD_F32, 0, 0, 0},
  {TL_RKL, 1, 33, 2, 0, 0, 0, KD_F32, 0, 0, 0},    {TL_JSD, 5, 7, 2, 0, 0, 0, KD_F32, 0, 0, 0},
  {TL_JSD, 3, 33, 2, 0, 0, 0, KD_F32, 0, 0, 0},    {TL_TVD, 5, 7, 2, 0, 0, 0, KD_F32, 0, 0, 0},
  {TL_TVD, 3, 33, 2, 0, 0, 0, KD_F32, 0, 0, 0},    {TL_CE, 5, 1, 1, 0, 0, 1, KD_F32, 0, 0, 0},
  {TL_CE, 5, 33, 1, 0, 0, 1, KD_F32, 0, 0, 0},
  /* real vocabularies, few rows */
  {TL_FKL, 3, 50257, 1, 0, 0, 0, KD_F32, 0, 0, 0}, {TL_RKL, 2, 50257, 1, 0, 0, 1, KD_F32, 0, 0, 0},
  {TL_JSD, 2, 50257, 1, 0, 0, 0, KD_F32, 0, 0, 0}, {TL_CE, 3, 50257, 1, 0, 0, 1, KD_F32, 0, 0, 0},
  {TL_FKL, 1, 131072, 1, 0, 0, 0, KD_F32, 0, 0, 0}, {TL_FKL, 1, 256000, 1, 0, 0, 0, KD_F32, 0, 0, 0},
  {TL_RKL, 1, 256000, 2, 0, 0, 0, KD_F32, 0, 0, 0},
  /* logits of magnitude 1e4 */
  {TL_FKL, 4, 1000, 1, 1e4, 0, 0, KD_F32, 0, 0, 0}, {TL_RKL, 4, 1000, 1, 1e4, 0, 0, KD_F32, 0, 0, 0},
  {TL_JSD, 4, 1000, 1, 1e4, 0, 0, KD_F32, 0, 0, 0}, {TL_CE, 4, 1000, 1, 1e4, 0, 1, KD_F32, 0, 0, 0},
  /* -inf in teacher logits (probability exactly 0) */
  {TL_FKL, 4, 257, 1, 0, 0.3, 0, KD_F32, 0, 0, 0}, {TL_RKL, 4, 257, 1, 0, 0.3, 0, KD_F32, 0, 0, 0},
  {TL_JSD, 4, 257, 1, 0, 0.3, 0, KD_F32, 0, 0, 0}, {TL_TVD, 4, 257, 1, 0, 0.3, 0, KD_F32, 0, 0, 0},
  /* temperatures */
  {TL_FKL, 4, 500, 0.05, 0, 0, 0, KD_F32, 0, 0, 0}, {TL_FKL, 4, 500, 20, 0, 0, 0, KD_F32, 0, 0, 0},
  {TL_RKL, 4, 500, 0.05, 0, 0, 0, KD_F32, 0, 0, 0}, {TL_RKL, 4, 500, 20, 0, 0, 0, KD_F32, 0, 0, 0},
  {TL_JSD, 4, 500, 0.05, 0, 0, 0, KD_F32, 0, 0, 0}, {TL_TVD, 4, 500, 20, 0, 0, 0, KD_F32, 0, 0, 0},
  /* masking */
  {TL_FKL, 8, 100, 2, 0, 0, 1, KD_F32, 0, 0, 0},   {TL_JSD, 8, 100, 2, 0, 0, 1, KD_F32, 0, 0, 0},
  {TL_FKL, 8, 100, 2, 0, 0, 2, KD_F32, 0, 0, 0},   {TL_CE, 8, 100, 1, 0, 0, 2, KD_F32, 0, 0, 0},
  /* bf16 inputs */
  {TL_FKL, 4, 1000, 1, 0, 0, 0, KD_BF16, 0, 0, 0}, {TL_RKL, 4, 1000, 1, 0, 0, 1, KD_BF16, 0, 0, 0},
  {TL_CE, 4, 1000, 1, 0, 0, 1, KD_BF16, 0, 0, 0},
  /* other vector widths */
  {TL_FKL, 3, 37, 2, 0, 0, 1, KD_F32, 4, 0, 0}, {TL_JSD, 3, 37, 2, 0, 0, 0, KD_F32, 8, 0, 0},
  {TL_CE, 3, 37, 1, 0, 0, 1, KD_BF16, 8, 0, 0}, {TL_TVD, 3, 1000, 1, 0, 0.3, 0, KD_F32, 4, 0, 0},
  /* non-temporal gradient stores: rows start at every alignment (V odd) */
  {TL_FKL, 5, 7, 2, 0, 0, 0, KD_F32, 0, 1, 0},  {TL_RKL, 7, 1001, 1, 0, 0, 1, KD_F32, 0, 1, 0},
  {TL_JSD, 3, 37, 2, 0, 0, 0, KD_F32, 8, 1, 0}, {TL_CE, 4, 50257, 1, 0, 0, 1, KD_BF16, 0, 1, 0},
  /* kept exps (passes/fuse.h, "Cached exps"): many blocks, a reference
   * that moves in mid-block (magnitude 1e4), -inf, another width; rows too
   * long for the row cache (recomputed) */
  {TL_JSD, 2, 20000, 1, 1e4, 0, 0, KD_F32, 4, 0, 0}, {TL_TVD, 3, 5000, 2, 1e4, 0.3, 1, KD_F32, 0, 0, 0},
  {TL_JSD, 1, 140000, 1, 0, 0, 0, KD_F32, 0, 0, 0}, {TL_TVD, 2, 140000, 1, 1e4, 0, 0, KD_F32, 0, 0, 0},
  {TL_TVD, 2, 4096, 1, 30, 0, 0, KD_F32, 0, 0, 0}, /* whole blocks, no tail, at any width up to 64 */
  /* the loss alone: forward KL and reverse KL fold into one pass */
  {TL_FKL, 4, 1000, 2, 0, 0, 1, KD_F32, 0, 0, 1}, {TL_RKL, 3, 33, 1, 0, 0.3, 0, KD_F32, 0, 0, 1},
  {TL_JSD, 3, 500, 1, 0, 0, 0, KD_BF16, 0, 0, 1},
};

int main(void) {
  kd_pool *pool;
  if (kd_pool_new(2, &pool)) {
    printf("FAIL: no thread pool\n");
    return 1;
  }
  int failures = 0;
  char err[512];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const tcase *c = &cases[i];
    char what[128];
    snprintf(what, sizeof what, "%s N=%lld V=%lld T=%g mag=%g ninf=%g masked=%d %s w=%d%s",
             kd_tl_name(c->kind), (long long)c->N, (long long)c->V, c->T, c->mag, c->ninf,
             c->masked, kd_dtype_name(c->dtype), c->width,
             c->nontemporal ? " nt" : c->no_grad ? " loss only" : "");
    kd_tl_spec sp = {c->kind, c->T, c->masked > 0, c->dtype, c->no_grad};
    kd_graph *g = kd_tl_build(&sp, err, sizeof err);
    if (!g) {
      printf("FAIL %s: %s\n", what, err);
      failures++;
      continue;
    }
    /* the bf16 gradient where its stores differ most: after a non-temporal
     * alignment head, with bf16 inputs, with masked rows */
    kd_kc_case kc = {g, c->N, c->V, c->kind == TL_CE ? 1 : c->T, c->mag, c->ninf, c->masked,
                     c->dtype, c->width, c->nontemporal,
                     c->nontemporal || c->dtype == KD_BF16 || c->masked == 1};
    failures += kd_kc_run(what, &kc, pool);
    kd_kc_done();
    kd_graph_free(g);
  }
  kd_pool_free(pool);
  kd_kc_report();
  printf(failures ? "FAILED (%d)\n" : "ok\n", failures);
  return failures != 0;
}
