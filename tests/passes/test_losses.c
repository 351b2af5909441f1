/* The divergences of the prelude as loss graphs (losses.h), through the
 * whole pipeline, at several temperatures with one row masked by
 * ignore_index:
 *   - the loss against a direct computation in double written here from the
 *     definitions (tolerance 1e-12 relative: both are double, and only the
 *     order of summation differs over a few dozen terms);
 *   - the gradient against central finite differences of the lowered graph
 *     (tolerance 1e-6: see tu_fd), and forward KL's against its closed form
 *     (q - p) / T * T^2 / valid rows (1e-12);
 *   - rows with -inf teacher logits and logits of magnitude 1e4 give finite
 *     losses and gradients after canonicalize (and the same graph without
 *     it gives nan, so the check has teeth);
 *   - an all-masked batch gives loss 0 and gradient 0. */
#include "losses.h"
#include "passes.h"
#include "testutil.h"

enum { NR = 4, NV = 7, MASKED_ROW = 2 };
#define IGNORE (-100)

static double lse(const double *x, int n) {
  double m = -INFINITY, s = 0;
  for (int i = 0; i < n; i++) m = fmax(m, x[i]);
  if (!isfinite(m)) return m;
  for (int i = 0; i < n; i++) s += exp(x[i] - m);
  return m + log(s);
}

/* x log(x / y) with 0 log 0 = 0 */
static double xlogxy(double x, double y) { return x == 0 ? 0 : x * log(x / y); }

/* The mean over valid rows of divergence `kind`, from the definitions. */
static double direct_loss(l_kind kind, const double *t, const double *s, const int64_t *lab,
                          double T, double beta) {
  double total = 0;
  int valid = 0;
  for (int r = 0; r < NR; r++) {
    if (lab[r] == IGNORE) continue;
    valid++;
    const double *tr = t + r * NV, *sr = s + r * NV;
    double a[NV], b[NV], p[NV], q[NV], row = 0;
    for (int i = 0; i < NV; i++) a[i] = tr[i] / T, b[i] = sr[i] / T;
    double la = lse(a, NV), lb = lse(b, NV);
    for (int i = 0; i < NV; i++) p[i] = exp(a[i] - la), q[i] = exp(b[i] - lb);
    for (int i = 0; i < NV; i++) {
      double m = beta * p[i] + (1 - beta) * q[i];
      switch (kind) {
      case L_FKL: row += p[i] == 0 ? 0 : p[i] * ((a[i] - la) - (b[i] - lb)); break;
      case L_RKL: row += q[i] * ((b[i] - lb) - (a[i] - la)); break;
      case L_JSD: row += beta * xlogxy(p[i], m) + (1 - beta) * xlogxy(q[i], m); break;
      case L_TVD: row += 0.5 * fabs(p[i] - q[i]); break;
      default: break;
      }
    }
    if (kind == L_CE) row = lse(sr, NV) - sr[lab[r]];
    else row *= T * T;
    total += row;
  }
  return total / (valid > 0 ? valid : 1);
}

static kd_graph *pipeline(const kd_graph *g, const char *last) {
  kd_graph *out = NULL;
  char err[256] = "";
  TU_CHECK(kd_pipeline_run(g, last, &out, err, sizeof err) == KD_OK, "pipeline: %s", err);
  return out;
}

static void fill(unsigned long long *seed, double *t, double *s, int64_t *lab, double scale) {
  for (int i = 0; i < NR * NV; i++) {
    t[i] = scale * tu_uniform(seed, -1, 1);
    s[i] = scale * tu_uniform(seed, -1, 1);
  }
  for (int r = 0; r < NR; r++) lab[r] = r == MASKED_ROW ? IGNORE : (int64_t)(r * 3 % NV);
}

static void check_loss(l_kind kind, double T, double beta, unsigned long long *seed, int fd) {
  double t[NR * NV], s[NR * NV];
  int64_t lab[NR];
  fill(seed, t, s, lab, 3);
  int64_t nv[2] = {NR, NV}, n1[2] = {NR, 1};
  kd_ref_input in[3] = {tu_input("teacher", 2, nv, t), tu_input("student", 2, nv, s),
                        tu_input_i64("labels", 2, n1, lab)};
  kd_graph *g = l_build(kind, T, beta, IGNORE);
  kd_graph *full = pipeline(g, NULL);
  if (!full) {
    kd_graph_free(g);
    return;
  }
  double want = direct_loss(kind, t, s, lab, T, beta);
  double got = tu_scalar(full, in, 3, "loss"), raw = tu_scalar(g, in, 3, "loss");
  TU_CHECK(tu_close(got, want, 1e-14, 1e-12), "%s T=%g: loss %.15g, direct %.15g",
           l_names[kind], T, got, want);
  TU_CHECK(tu_close(raw, want, 1e-14, 1e-12), "%s T=%g: lowered graph's loss %.15g, direct %.15g",
           l_names[kind], T, raw, want);
  kd_ref_value gr = tu_run(full, in, 3, "grad");
  if (fd && gr.size == NR * NV) {
    double d[NR * NV];
    tu_fd(g, in, 3, 1, "loss", d);
    for (int i = 0; i < NR * NV; i++)
      TU_CHECK(tu_close(gr.data[i], d[i], 1e-6, 1e-6), "%s T=%g: grad[%d] = %.12g, fd %.12g",
               l_names[kind], T, i, gr.data[i], d[i]);
  }
  if (kind == L_FKL && gr.size == NR * NV) { /* (q - p) / T * T^2 / valid rows */
    for (int r = 0; r < NR; r++) {
      double a[NV], b[NV];
      for (int i = 0; i < NV; i++) a[i] = t[r * NV + i] / T, b[i] = s[r * NV + i] / T;
      double la = lse(a, NV), lb = lse(b, NV);
      for (int i = 0; i < NV; i++) {
        double w = r == MASKED_ROW ? 0 : (exp(b[i] - lb) - exp(a[i] - la)) * T / (NR - 1);
        TU_CHECK(tu_close(gr.data[r * NV + i], w, 1e-15, 1e-12), "fkl T=%g: grad[%d][%d]", T,
                 r, i);
      }
    }
  }
  for (int i = 0; i < NV && gr.data; i++)
    TU_CHECK(gr.data[MASKED_ROW * NV + i] == 0, "%s: a masked row's gradient is 0",
             l_names[kind]);
  kd_ref_value_free(&gr);
  kd_graph_free(full);
  kd_graph_free(g);
}

/* Rows with -inf teacher logits and with logits of magnitude 1e4. */
static void check_extremes(l_kind kind, unsigned long long *seed) {
  double t[NR * NV], s[NR * NV];
  int64_t lab[NR];
  fill(seed, t, s, lab, 1);
  for (int i = 0; i < NV; i++) {
    t[1 * NV + i] = i % 3 ? -INFINITY : 1; /* teacher puts mass 0 on most tokens */
    t[3 * NV + i] *= 1e4;                  /* exp overflows unless shifted */
    s[3 * NV + i] *= 1e4;
  }
  /* rkl with a teacher probability of exactly 0 where the student's is not
   * is infinite by definition: only the 1e4 row for it */
  if (kind == L_RKL)
    for (int i = 0; i < NV; i++) t[1 * NV + i] = 0.5 * i;
  int64_t nv[2] = {NR, NV}, n1[2] = {NR, 1};
  kd_ref_input in[3] = {tu_input("teacher", 2, nv, t), tu_input("student", 2, nv, s),
                        tu_input_i64("labels", 2, n1, lab)};
  kd_graph *g = l_build(kind, 1.0, 0.5, IGNORE);
  kd_graph *full = pipeline(g, NULL);
  double want = direct_loss(kind, t, s, lab, 1.0, 0.5);
  double got = full ? tu_scalar(full, in, 3, "loss") : NAN;
  TU_CHECK(isfinite(want), "%s: the direct loss is finite", l_names[kind]);
  TU_CHECK(tu_close(got, want, 1e-12, 1e-12), "%s extremes: loss %.15g, direct %.15g",
           l_names[kind], got, want);
  kd_ref_value gr = full ? tu_run(full, in, 3, "grad") : (kd_ref_value){0};
  for (size_t i = 0; i < gr.size; i++)
    TU_CHECK(isfinite(gr.data[i]), "%s extremes: grad[%zu] = %g", l_names[kind], i, gr.data[i]);
  if (kind == L_FKL) /* without canonicalize: 0 * log(0 / q) = nan */
    TU_CHECK(isnan(tu_scalar(g, in, 3, "loss")), "the lowered fkl graph gives nan at -inf");
  kd_ref_value_free(&gr);
  kd_graph_free(full);
  kd_graph_free(g);
}

static void check_all_masked(l_kind kind, unsigned long long *seed) {
  double t[NR * NV], s[NR * NV];
  int64_t lab[NR];
  fill(seed, t, s, lab, 3);
  for (int r = 0; r < NR; r++) lab[r] = IGNORE;
  int64_t nv[2] = {NR, NV}, n1[2] = {NR, 1};
  kd_ref_input in[3] = {tu_input("teacher", 2, nv, t), tu_input("student", 2, nv, s),
                        tu_input_i64("labels", 2, n1, lab)};
  kd_graph *g = l_build(kind, 2.0, 0.5, IGNORE);
  kd_graph *full = pipeline(g, NULL);
  TU_CHECK(full && tu_scalar(full, in, 3, "loss") == 0, "%s: all masked gives loss 0",
           l_names[kind]);
  kd_ref_value gr = full ? tu_run(full, in, 3, "grad") : (kd_ref_value){0};
  TU_CHECK(gr.size == NR * NV, "%s: gradient size", l_names[kind]);
  for (size_t i = 0; i < gr.size; i++)
    TU_CHECK(gr.data[i] == 0, "%s all masked: grad[%zu] = %g", l_names[kind], i, gr.data[i]);
  kd_ref_value_free(&gr);
  kd_graph_free(full);
  kd_graph_free(g);
}

/* TVD where p == q: abs'(0) = 0 makes the gradient exactly 0. */
static void check_tvd_equal(void) {
  double t[NR * NV];
  int64_t lab[NR] = {0, 1, 2, 3};
  unsigned long long seed = 7;
  for (int i = 0; i < NR * NV; i++) t[i] = tu_uniform(&seed, -2, 2);
  int64_t nv[2] = {NR, NV}, n1[2] = {NR, 1};
  kd_ref_input in[3] = {tu_input("teacher", 2, nv, t), tu_input("student", 2, nv, t),
                        tu_input_i64("labels", 2, n1, lab)};
  kd_graph *g = l_build(L_TVD, 1.0, 0, IGNORE);
  kd_graph *full = pipeline(g, NULL);
  TU_CHECK(full && tu_scalar(full, in, 3, "loss") == 0, "tvd(p, p) = 0");
  kd_ref_value gr = full ? tu_run(full, in, 3, "grad") : (kd_ref_value){0};
  for (size_t i = 0; i < gr.size; i++) TU_CHECK(gr.data[i] == 0, "tvd grad at p == q is 0");
  kd_ref_value_free(&gr);
  kd_graph_free(full);
  kd_graph_free(g);
}

int main(void) {
  unsigned long long seed = 12345;
  static const double temps[] = {0.5, 1, 4};
  for (int k = 0; k < L_COUNT; k++) {
    for (size_t i = 0; i < sizeof temps / sizeof temps[0]; i++)
      check_loss((l_kind)k, temps[i], 0.5, &seed, 1);
    /* the ends of the temperature range: loss and closed forms only, as
     * finite differences lose digits to the 1/T^2 curvature at T = 0.05 */
    check_loss((l_kind)k, 0.05, 0.5, &seed, 0);
    check_loss((l_kind)k, 20, 0.5, &seed, 0);
    check_extremes((l_kind)k, &seed);
    check_all_masked((l_kind)k, &seed);
  }
  check_loss(L_JSD, 1, 0.1, &seed, 1);
  check_loss(L_JSD, 1, 0.9, &seed, 1);
  check_tvd_equal();
  return tu_done("test_losses");
}
