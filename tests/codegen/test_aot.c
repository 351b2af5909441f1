/* An ahead-of-time compiled loss, linked as an object file into a program
 * that links the runtime but not LLVM (this test), runs through kd_loss_run
 * and agrees with the reference executor. The object and its header are
 * emitted at build time by emit_loss.c; the call goes through the header's
 * typed wrapper. Tolerances: the table in kcheck.c, through the same
 * graph kd_kc_run would use; here the kernel is the linked one. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aot_fkl.h" /* generated next to the object */
#include "losses.h"
#include "refexec.h"

int main(void) {
  enum { N = 6, V = 77 };
  static float t[N * V], s[N * V], grad[N * V];
  int64_t labels[N] = {3, -100, 5, 7, -100, 0};
  uint64_t r = 12345;
  for (int i = 0; i < N * V; i++) {
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    t[i] = (float)((double)(r >> 11) * 0x1p-53 * 8 - 4);
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    s[i] = (float)((double)(r >> 11) * 0x1p-53 * 8 - 4);
  }
  char err[512];
  double loss = NAN;
  if (kd_aot_fkl(t, s, labels, N, V, grad, &loss, NULL, err, sizeof err)) {
    printf("FAIL run: %s\n", err);
    return 1;
  }
  /* the same loss, the reference way */
  kd_tl_spec sp = {TL_FKL, 2.0, 1, KD_F32, 0};
  kd_graph *g = kd_tl_build(&sp, err, sizeof err);
  kd_ref_input in[3] = {{"teacher", KD_F32, 2, {N, V}, t},
                        {"student", KD_F32, 2, {N, V}, s},
                        {"labels", KD_I64, 2, {N, 1}, labels}};
  kd_ref_value out[2];
  if (!g || kd_ref_exec(g, in, 3, out, err, sizeof err)) {
    printf("FAIL reference: %s\n", err);
    return 1;
  }
  int li = strcmp(kd_graph_output_name(g, 0), "loss") ? 1 : 0;
  double gerr = 0, gmax = 0;
  for (int i = 0; i < N * V; i++) {
    double d = fabs(grad[i] - out[1 - li].data[i]);
    if (!(d <= gerr)) gerr = d;
    if (fabs(out[1 - li].data[i]) > gmax) gmax = fabs(out[1 - li].data[i]);
  }
  /* kcheck.c's table: 8 eps scale (1 + sqrt(min(V / W, 64))), scale = 1 +
   * max|logit| / T = 3, W = 4: the narrowest host; wider vectors only lower
   * the error */
  double tol = 8 * FLT_EPSILON * 3 * (1 + sqrt(V / 4.0 < 64 ? V / 4.0 : 64));
  double lerr = fabs(loss - out[li].data[0]);
  int bad = !(lerr <= tol) || !(gerr <= tol * gmax);
  printf("%s aot fkl: loss %.9g (ref %.9g) err %.2g/%.2g, grad err %.2g/%.2g\n", bad ? "FAIL" : "ok",
         loss, out[li].data[0], lerr, tol, gerr, tol * gmax);
  /* the masked rows: gradient exactly 0 */
  for (int j = 0; j < V; j++)
    if (grad[1 * V + j] != 0 || grad[4 * V + j] != 0) bad = 1;
  kd_ref_value_free(&out[0]);
  kd_ref_value_free(&out[1]);
  kd_graph_free(g);
  return bad;
}
