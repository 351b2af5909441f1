/* Reads the assembly of fused loss kernels: no call into libm's f32 exp or
 * log (one call per lane is what llvm.exp on a vector becomes without a
 * vector math library), and on an AVX-512 host the loops use zmm registers.
 * Per-row scalars (a log-sum-exp's final log) may call libm's double log:
 * once per row, not per logit. A loss of three passes over the row (jsd)
 * fetches the gradient row for writing in pass 0 (prefetchw on x86) and
 * the next row's logits into L2 in its middle pass (prefetcht1); one of two
 * passes (fkl, ce) fetches nothing. On AVX-512, fkl's and jsd's sums of
 * MULZ products (p (t - s), p (log p - log m)) are merge-masked FMAs into
 * the accumulator (vfmadd...ps ... {%kN} without {z}: one instruction a
 * term, not a multiply, a masked move and an add). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loss.h"
#include "losses.h"
#include "session.h"

/* Whether a line holds a merge-masked zmm FMA: vfmadd/vfmsub ... {%kN}
 * without {z}. */
static int masked_fma(const char *as) {
  for (const char *l = as; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    size_t n = strcspn(l, "\n");
    char line[160];
    snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line - 1 ? n : sizeof line - 1), l);
    if ((strstr(line, "vfmadd") || strstr(line, "vfmsub")) && strstr(line, "zmm") && strstr(line, "{%k") &&
        !strstr(line, "{z}"))
      return 1;
  }
  return 0;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
  if (s) s[n] = 0;
  fclose(f);
  return s;
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
  int failures = 0;
  static const kd_tl_kind kinds[] = {TL_FKL, TL_JSD, TL_CE};
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    kd_tl_spec sp = {kinds[i], 2.0, 1, KD_F32, 0};
    kd_graph *g = kd_tl_build(&sp, err, sizeof err);
    char path[] = "/tmp/kdc_test_asm_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    char *as = NULL;
    if (!g || fd < 0 || kd_loss_emit_file(g, NULL, path, 1, err, sizeof err) || !(as = slurp(path))) {
      printf("FAIL %s: %s\n", kd_tl_name(kinds[i]), g ? err : "graph");
      failures++;
    } else {
      int libm = strstr(as, "expf") || strstr(as, "logf");
      int zmm = strstr(as, "zmm") != NULL;
      int pf = strstr(as, "prefetcht1") != NULL && strstr(as, "prefetchw") != NULL;
      int want_pf = kinds[i] == TL_JSD;
      int mfma = masked_fma(as), want_mfma = avx512 && kinds[i] != TL_CE;
#if defined(__x86_64__)
      int bad = libm || (avx512 && !zmm) || pf != want_pf || (want_mfma && !mfma);
#else
      int bad = libm;
      (void)want_pf, (void)want_mfma;
#endif
      printf("%s %s: %zu bytes of assembly, %s f32 libm call, %s, %s%s\n", bad ? "FAIL" : "ok  ",
             kd_tl_name(kinds[i]), strlen(as), libm ? "a" : "no",
             avx512 ? (zmm ? "zmm registers" : "no zmm register") : "not AVX-512",
             pf ? "prefetches the next row" : "no prefetch", mfma ? ", merge-masked FMA sums" : "");
      failures += bad;
    }
    free(as);
    remove(path);
    kd_graph_free(g);
  }
  printf(failures ? "FAILED (%d)\n" : "ok\n", failures);
  return failures != 0;
}
