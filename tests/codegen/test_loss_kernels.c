/* Every fused loss kernel against the reference executor (ir/refexec.h,
 * double precision, unfused) on random inputs: odd and huge vocabularies,
 * one row, logits of magnitude 1e4, -inf teacher logits, temperatures from
 * 0.05 to 20, masked and all-masked batches, bf16 inputs. Also: the result
 * does not depend on the thread count (bit for bit).
 *
 * Legend: N = rows, V = vocabulary, W = f32 lanes of the kernel. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loss.h"
#include "losses.h"
#include "refexec.h"
#include "threadpool.h"

/* Tolerances, one table. eps = FLT_EPSILON (the kernel computes in f32 from
 * f32 or bf16 inputs that the reference reads exactly), scale = 1 + max
 * |logit| / T: a log-probability formed in f32 from scaled logits carries an
 * absolute error of a few eps * scale (x / T, x - max, the exp's 1 ulp).
 * Row sums accumulate in W f32 lanes of V / W terms each and are combined in
 * double: a random-walk error of sqrt(V / W) eps relative to the sum of the
 * terms' magnitudes.
 *   loss:  |k - r| <= LOSS_C * eps * scale * (1 + sqrt(V / W))
 *          (absolute: the loss is a probability-weighted mean of log-ratios,
 *          whose terms carry the log-probabilities' absolute error)
 *   grad:  max |k - r| <= GRAD_C * eps * scale * (1 + sqrt(V / W)) * gmax,
 *          gmax = max(max |r|, 1 / (T count V)) (the gradient's own size; the
 *          floor keeps a tolerance for rows whose gradient is ~0)
 * LOSS_C and GRAD_C = 8: four roundings of a log-probability (two scalings,
 * two shifts) on each of two distributions. The test prints the worst
 * error / tolerance ratio, so a regression shows before it fails.
 * Masked rows and all-masked batches are exact: 0, not "close to 0"; an
 * infinite reference loss (rkl where the teacher has probability 0) must be
 * the same infinity, and non-finite reference gradients non-finite too. */
#define LOSS_C 8.0
#define GRAD_C 8.0

static int failures;
static double worst_loss_ratio, worst_grad_ratio;

typedef struct tcase {
  kd_tl_kind kind;
  int64_t N, V;
  double T;
  double mag;      /* logits uniform in [-mag, mag]; 0: normal with sigma 3 */
  double ninf;     /* fraction of teacher logits set to -inf */
  int masked;      /* 1: some labels -100; 2: all labels -100 */
  kd_dtype dtype;
} tcase;

static const tcase cases[] = {
  /* odd vocabularies (not multiples of any vector width), one row */
  {TL_FKL, 5, 1, 2, 0, 0, 0, KD_F32},     {TL_FKL, 5, 7, 2, 0, 0, 0, KD_F32},
  {TL_FKL, 1, 33, 2, 0, 0, 0, KD_F32},    {TL_RKL, 5, 7, 2, 0, 0, 0, KD_F32},
  {TL_RKL, 1, 33, 2, 0, 0, 0, KD_F32},    {TL_JSD, 5, 7, 2, 0, 0, 0, KD_F32},
  {TL_JSD, 3, 33, 2, 0, 0, 0, KD_F32},    {TL_TVD, 5, 7, 2, 0, 0, 0, KD_F32},
  {TL_TVD, 3, 33, 2, 0, 0, 0, KD_F32},    {TL_CE, 5, 1, 1, 0, 0, 1, KD_F32},
  {TL_CE, 5, 33, 1, 0, 0, 1, KD_F32},
  /* real vocabularies, few rows */
  {TL_FKL, 3, 50257, 1, 0, 0, 0, KD_F32}, {TL_RKL, 2, 50257, 1, 0, 0, 1, KD_F32},
  {TL_JSD, 2, 50257, 1, 0, 0, 0, KD_F32}, {TL_CE, 3, 50257, 1, 0, 0, 1, KD_F32},
  {TL_FKL, 1, 131072, 1, 0, 0, 0, KD_F32}, {TL_FKL, 1, 256000, 1, 0, 0, 0, KD_F32},
  {TL_RKL, 1, 256000, 2, 0, 0, 0, KD_F32},
  /* logits of magnitude 1e4 */
  {TL_FKL, 4, 1000, 1, 1e4, 0, 0, KD_F32}, {TL_RKL, 4, 1000, 1, 1e4, 0, 0, KD_F32},
  {TL_JSD, 4, 1000, 1, 1e4, 0, 0, KD_F32}, {TL_CE, 4, 1000, 1, 1e4, 0, 1, KD_F32},
  /* -inf in teacher logits (probability exactly 0) */
  {TL_FKL, 4, 257, 1, 0, 0.3, 0, KD_F32}, {TL_RKL, 4, 257, 1, 0, 0.3, 0, KD_F32},
  {TL_JSD, 4, 257, 1, 0, 0.3, 0, KD_F32}, {TL_TVD, 4, 257, 1, 0, 0.3, 0, KD_F32},
  /* temperatures */
  {TL_FKL, 4, 500, 0.05, 0, 0, 0, KD_F32}, {TL_FKL, 4, 500, 20, 0, 0, 0, KD_F32},
  {TL_RKL, 4, 500, 0.05, 0, 0, 0, KD_F32}, {TL_RKL, 4, 500, 20, 0, 0, 0, KD_F32},
  {TL_JSD, 4, 500, 0.05, 0, 0, 0, KD_F32}, {TL_TVD, 4, 500, 20, 0, 0, 0, KD_F32},
  /* masking */
  {TL_FKL, 8, 100, 2, 0, 0, 1, KD_F32},   {TL_JSD, 8, 100, 2, 0, 0, 1, KD_F32},
  {TL_FKL, 8, 100, 2, 0, 0, 2, KD_F32},   {TL_CE, 8, 100, 1, 0, 0, 2, KD_F32},
  /* bf16 inputs */
  {TL_FKL, 4, 1000, 1, 0, 0, 0, KD_BF16}, {TL_RKL, 4, 1000, 1, 0, 0, 1, KD_BF16},
  {TL_CE, 4, 1000, 1, 0, 0, 1, KD_BF16},
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double uniform(void) { /* [0, 1) */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (double)(rng >> 11) * 0x1p-53;
}

static double normal(void) {
  double u = uniform() + 1e-300, v = uniform();
  return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* logits as the kernel reads them: f32, or bf16 (then `f` holds the bf16
 * values widened, for the scale) */
static void fill(float *f, uint16_t *h, size_t n, const tcase *c, int teacher) {
  for (size_t i = 0; i < n; i++) {
    double x = c->mag > 0 ? c->mag * (2 * uniform() - 1) : 3 * normal();
    if (teacher && uniform() < c->ninf) x = -INFINITY;
    f[i] = (float)x;
    if (c->dtype == KD_BF16) {
      h[i] = kd_f32_to_bf16(f[i]);
      f[i] = kd_bf16_to_f32(h[i]);
    }
  }
}

static const double *find_output(const kd_graph *g, kd_ref_value *out, const char *name) {
  for (size_t i = 0; i < kd_graph_noutputs(g); i++)
    if (!strcmp(kd_graph_output_name(g, i), name)) return out[i].data;
  return NULL;
}

static void run_case(const tcase *c, kd_pool *pool) {
  char err[512], what[128];
  snprintf(what, sizeof what, "%s N=%lld V=%lld T=%g mag=%g ninf=%g masked=%d %s",
           kd_tl_name(c->kind), (long long)c->N, (long long)c->V, c->T, c->mag, c->ninf,
           c->masked, kd_dtype_name(c->dtype));
  kd_tl_spec sp = {c->kind, c->T, c->masked > 0, c->dtype};
  kd_graph *g = kd_tl_build(&sp, err, sizeof err);
  kd_loss *l = NULL;
  if (!g || kd_loss_compile(g, NULL, &l, err, sizeof err)) {
    printf("FAIL %s: %s\n", what, err);
    failures++;
    kd_graph_free(g);
    return;
  }
  size_t n = (size_t)(c->N * c->V);
  float *t = malloc(n * sizeof *t), *s = malloc(n * sizeof *s);
  float *grad = malloc(n * sizeof *grad), *grad1 = malloc(n * sizeof *grad1);
  uint16_t *th = malloc(n * sizeof *th), *sh = malloc(n * sizeof *sh);
  int64_t *labels = malloc((size_t)c->N * sizeof *labels);
  fill(t, th, n, c, 1);
  fill(s, sh, n, c, 0);
  int64_t count = 0;
  for (int64_t i = 0; i < c->N; i++) {
    int drop = c->masked == 2 || (c->masked == 1 && uniform() < 0.3);
    labels[i] = drop ? -100 : (int64_t)(uniform() * (double)c->V);
    count += !drop;
  }
  if (c->masked == 1 && count == c->N) labels[0] = -100, count--; /* at least one masked row */
  if (!c->masked) count = c->N;
  int bf = c->dtype == KD_BF16;
  const void *tdata = bf ? (const void *)th : t, *sdata = bf ? (const void *)sh : s;

  kd_ref_input in[3];
  size_t nin = 0;
  int has_t = c->kind != TL_CE, has_l = c->masked || c->kind == TL_CE;
  if (has_t) in[nin++] = (kd_ref_input){"teacher", c->dtype, 2, {c->N, c->V}, tdata};
  in[nin++] = (kd_ref_input){"student", c->dtype, 2, {c->N, c->V}, sdata};
  if (has_l) in[nin++] = (kd_ref_input){"labels", KD_I64, 2, {c->N, 1}, labels};
  kd_ref_value out[4];
  if (kd_ref_exec(g, in, nin, out, err, sizeof err)) {
    printf("FAIL %s: reference: %s\n", what, err);
    failures++;
    goto done;
  }
  const double *rloss = find_output(g, out, "loss"), *rgrad = find_output(g, out, "grad");

  double loss = NAN, loss1 = NAN;
  kd_loss_io io = {tdata, c->dtype, sdata, c->dtype, has_l ? labels : NULL, c->N, c->V, grad, &loss};
  kd_loss_io io1 = io;
  io1.grad = grad1;
  io1.loss = &loss1;
  if (kd_loss_eval(l, &io, pool, err, sizeof err) || kd_loss_eval(l, &io1, NULL, err, sizeof err)) {
    printf("FAIL %s: eval: %s\n", what, err);
    failures++;
    goto free_out;
  }
  if (memcmp(&loss, &loss1, sizeof loss) || memcmp(grad, grad1, n * sizeof *grad)) {
    printf("FAIL %s: 1 and %d threads differ\n", what, kd_pool_size(pool));
    failures++;
  }

  double scale = 1, gmax = 0, lerr = fabs(loss - rloss[0]), gerr = 0;
  for (size_t i = 0; i < n; i++) {
    if (isfinite(t[i]) && fabs(t[i]) / c->T + 1 > scale) scale = fabs(t[i]) / c->T + 1;
    if (fabs(s[i]) / c->T + 1 > scale) scale = fabs(s[i]) / c->T + 1;
    if (isfinite(rgrad[i]) && fabs(rgrad[i]) > gmax) gmax = fabs(rgrad[i]);
    double d = fabs((double)grad[i] - rgrad[i]);
    if (!isfinite(rgrad[i])) d = isfinite(grad[i]) ? INFINITY : 0;
    if (!(d <= gerr)) gerr = d; /* NaN sticks */
  }
  double T = c->kind == TL_CE ? 1 : c->T;
  double floor = 1 / (T * (double)(count ? count : 1) * (double)c->V);
  if (gmax < floor) gmax = floor;
  double sum_err = 1 + sqrt((double)c->V / 16);
  double ltol = LOSS_C * FLT_EPSILON * scale * sum_err;
  double gtol = GRAD_C * FLT_EPSILON * scale * sum_err * gmax;
  if (c->masked == 2) ltol = gtol = 0; /* exactly 0 */
  if (!isfinite(rloss[0])) lerr = loss == rloss[0] ? 0 : INFINITY;
  int bad = !(lerr <= ltol) || !(gerr <= gtol);
  /* masked rows: gradient exactly 0 */
  for (int64_t i = 0; i < c->N; i++)
    for (int64_t j = 0; has_l && labels[i] == -100 && j < c->V; j++)
      if (grad[i * c->V + j] != 0) bad = 1;
  if (ltol > 0 && lerr / ltol > worst_loss_ratio) worst_loss_ratio = lerr / ltol;
  if (gtol > 0 && gerr / gtol > worst_grad_ratio) worst_grad_ratio = gerr / gtol;
  printf("%s %-62s loss %.9g (ref %.9g) err %.2g/%.2g, grad err %.2g/%.2g\n", bad ? "FAIL" : "ok  ",
         what, loss, rloss[0], lerr, ltol, gerr, gtol);
  failures += bad;
free_out:
  for (size_t i = 0; i < kd_graph_noutputs(g); i++) kd_ref_value_free(&out[i]);
done:
  free(t), free(s), free(grad), free(grad1), free(th), free(sh), free(labels);
  kd_loss_free(l);
  kd_graph_free(g);
}

int main(void) {
  kd_pool *pool;
  if (kd_pool_new(2, &pool)) {
    printf("FAIL: no thread pool\n");
    return 1;
  }
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], pool);
  kd_pool_free(pool);
  printf("worst error / tolerance: loss %.3f, grad %.3f\n", worst_loss_ratio, worst_grad_ratio);
  printf(failures ? "FAILED (%d)\n" : "ok\n", failures);
  return failures != 0;
}
