/* The row kernels and the caller's floating-point environment (x86 MXCSR):
 * on an AVX-512 host a kernel runs with flush-to-zero and
 * denormals-are-zero set (codegen/cpu.c, enter_ftz), so
 *   - the caller's MXCSR control bits are the same after a call as before,
 *     whatever they were (the default 0x1f80, or with FTZ and DAZ set), and
 *   - the loss and gradient are the same bits whatever the caller's MXCSR,
 * on rows whose x - lse spans [-120, 0], where exps are subnormal or
 * flushed. Elsewhere (no x86, no AVX-512) the test says it is skipped. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loss.h"
#include "losses.h"
#include "session.h"

#if defined(__x86_64__)
#include <xmmintrin.h>

enum { N = 6, V = 999 };

static int run(kd_loss *l, const float *t, const float *s, float *g, double *loss, unsigned csr,
               unsigned *after) {
  char err[256];
  kd_loss_io io = {t, KD_F32, s, KD_F32, NULL, N, V, g, loss, KD_F32};
  unsigned saved = _mm_getcsr();
  _mm_setcsr(csr);
  kd_status st = kd_loss_eval(l, &io, NULL, err, sizeof err);
  *after = _mm_getcsr();
  _mm_setcsr(saved);
  if (st) printf("FAIL eval: %s\n", err);
  return st != KD_OK;
}

int main(void) {
  char err[512];
  kd_session *s;
  if (kd_session_new(&s, err, sizeof err)) {
    printf("FAIL session: %s\n", err);
    return 1;
  }
  int avx512 = kd_session_vector_width(s) == 16;
  kd_session_free(s);
  if (!avx512) {
    printf("skipped: not an AVX-512 host\n");
    return 0;
  }
  static float t[N * V], sl[N * V], g0[N * V], g1[N * V];
  for (int i = 0; i < N * V; i++) { /* logits from 0 down to -120 */
    t[i] = -120.0f * (float)((i * 7919) % V) / V;
    sl[i] = -120.0f * (float)((i * 104729 + 17) % V) / V;
  }
  int failures = 0;
  static const kd_tl_kind kinds[] = {TL_FKL, TL_JSD, TL_TVD};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    kd_tl_spec sp = {kinds[k], 1.0, 0, KD_F32, 0};
    kd_graph *gr = kd_tl_build(&sp, err, sizeof err);
    kd_loss *l = NULL;
    kd_loss_options lo = {0};
    if (!gr || kd_loss_compile(gr, &lo, &l, err, sizeof err)) {
      printf("FAIL %s: %s\n", kd_tl_name(kinds[k]), gr ? err : "graph");
      failures++;
      kd_graph_free(gr);
      continue;
    }
    double loss0 = NAN, loss1 = NAN;
    unsigned after0 = 0, after1 = 0, dflt = 0x1f80, ftz = 0x1f80 | 0x8040;
    if (run(l, t, sl, g0, &loss0, dflt, &after0) || run(l, t, sl, g1, &loss1, ftz, &after1)) {
      failures++;
    } else {
      int same = !memcmp(&loss0, &loss1, sizeof loss0) && !memcmp(g0, g1, sizeof g0);
      /* the control bits; the low 6 are sticky exception flags that any
       * inexact operation sets */
      int kept = (after0 & ~0x3fu) == dflt && (after1 & ~0x3fu) == ftz;
      printf("%s %s: MXCSR after a call %#x (was %#x), %#x (was %#x); loss %.9g, %s\n",
             same && kept ? "ok  " : "FAIL", kd_tl_name(kinds[k]), after0, dflt, after1, ftz, loss0,
             same ? "the same bits either way" : "results differ with the caller's MXCSR");
      failures += !(same && kept);
    }
    kd_loss_free(l);
    kd_graph_free(gr);
  }
  printf(failures ? "FAILED (%d)\n" : "ok\n", failures);
  return failures != 0;
}
#else
int main(void) {
  printf("skipped: not x86-64\n");
  return 0;
}
#endif
