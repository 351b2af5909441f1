/* See kcheck.h. Legend: N = rows, V = vocabulary, W = f32 lanes. */
#include "kcheck.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loss.h"
#include "refexec.h"

/* Tolerances, one table. eps = FLT_EPSILON (the kernel computes in f32 from
 * f32 or bf16 inputs that the reference reads exactly), scale = 1 + max
 * |logit| / T: a log-probability formed in f32 from scaled logits carries an
 * absolute error of a few eps * scale (x / T, x - max, the exp's 1 ulp).
 * Row sums accumulate in W f32 lanes for at most B = 64 vectors (codegen's
 * BLOCK) before moving to double lanes: a random-walk error of sqrt(b) eps,
 * b = min(V / W, B), relative to the sum of the terms' magnitudes.
 *   loss:  |k - r| <= LOSS_C * eps * scale * (1 + sqrt(b))
 *          (absolute: the loss is a probability-weighted mean of log-ratios,
 *          whose terms carry the log-probabilities' absolute error)
 *   grad:  max |k - r| <= GRAD_C * eps * scale * (1 + sqrt(b)) * gmax,
 *          gmax = max(max |r|, 1 / (T count V)) (the gradient's own size; the
 *          floor keeps a tolerance for rows whose gradient is ~0)
 * LOSS_C and GRAD_C = 8: four roundings of a log-probability (two scalings,
 * two shifts) on each of two distributions. The worst error / tolerance
 * ratio is printed, so a regression shows before it fails.
 * Masked rows and all-masked batches are exact: 0, not "close to 0"; an
 * infinite reference loss (rkl where the teacher has probability 0) must be
 * the same infinity, and non-finite reference gradients non-finite too. */
#define LOSS_C 8.0
#define GRAD_C 8.0

static double worst_loss_ratio, worst_grad_ratio;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double uniform(void) { /* [0, 1) */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (double)(rng >> 11) * 0x1p-53;
}

static double normal(void) {
  double u = uniform() + 1e-300, v = uniform();
  return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* logits as the kernel reads them: f32, or bf16 (then f holds the bf16
 * values widened, for the scale) */
static void fill(float *f, uint16_t *h, size_t n, const kd_kc_case *c, int teacher) {
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

typedef struct arrays {
  float *t, *s, *grad, *grad1;
  uint16_t *th, *sh;
  int64_t *labels;
  int64_t count; /* valid rows */
} arrays;

static int alloc_inputs(const kd_kc_case *c, arrays *a) {
  size_t n = (size_t)(c->N * c->V);
  a->t = malloc(n * sizeof *a->t), a->s = malloc(n * sizeof *a->s);
  a->grad = malloc(n * sizeof *a->grad), a->grad1 = malloc(n * sizeof *a->grad1);
  a->th = malloc(n * sizeof *a->th), a->sh = malloc(n * sizeof *a->sh);
  a->labels = malloc((size_t)c->N * sizeof *a->labels);
  if (!a->t || !a->s || !a->grad || !a->grad1 || !a->th || !a->sh || !a->labels) return 0;
  fill(a->t, a->th, n, c, 1);
  fill(a->s, a->sh, n, c, 0);
  a->count = 0;
  for (int64_t i = 0; i < c->N; i++) {
    int drop = c->masked == 2 || (c->masked == 1 && uniform() < 0.3);
    a->labels[i] = drop ? -100 : (int64_t)(uniform() * (double)c->V);
    a->count += !drop;
  }
  if (c->masked == 1 && a->count == c->N && c->N > 1) a->labels[0] = -100, a->count--;
  if (!c->masked) {
    for (int64_t i = 0; i < c->N; i++)
      if (a->labels[i] < 0) a->labels[i] = 0;
    a->count = c->N;
  }
  return 1;
}

static void free_inputs(arrays *a) {
  free(a->t), free(a->s), free(a->grad), free(a->grad1), free(a->th), free(a->sh), free(a->labels);
}

/* The last compiled losses (f32 and bf16 gradient), reused while the graph
 * and the options stay the same (compiling is most of a case's time). */
typedef struct compiled_loss {
  const kd_graph *g;
  int width, nontemporal;
  kd_loss *l;
} compiled_loss;
static compiled_loss cache[2];

static kd_loss *compiled(const kd_kc_case *c, kd_dtype grad_dtype, char *err, size_t errlen) {
  compiled_loss *k = &cache[grad_dtype == KD_BF16];
  if (k->l && k->g == c->g && k->width == c->width && k->nontemporal == c->nontemporal) return k->l;
  kd_loss_free(k->l);
  memset(k, 0, sizeof *k);
  kd_loss_options lo = {.vector_width = c->width, .nontemporal = c->nontemporal, .grad_dtype = grad_dtype};
  if (kd_loss_compile(c->g, &lo, &k->l, err, errlen)) return NULL;
  k->g = c->g, k->width = c->width, k->nontemporal = c->nontemporal;
  return k->l;
}

void kd_kc_done(void) {
  for (int i = 0; i < 2; i++) kd_loss_free(cache[i].l);
  memset(cache, 0, sizeof cache);
}

/* The bf16-gradient kernel against the f32 one (loss, grad): 0 or 1. A
 * gradient below FLT_MIN may be stored as 0: vcvtneps2bf16 reads subnormal
 * inputs as 0 (the AVX-512 row kernels run with DAZ anyway), LLVM's integer
 * rounding elsewhere rounds them. */
static int check_bf16_grad(const kd_kc_case *c, kd_loss_io io, double loss, const float *grad, kd_pool *pool,
                           char *err, size_t errlen) {
  size_t n = (size_t)(c->N * c->V);
  uint16_t *gb = malloc((n ? n : 1) * sizeof *gb);
  double lb = NAN;
  kd_loss *l = compiled(c, KD_BF16, err, errlen);
  io.grad = gb, io.loss = &lb, io.grad_dtype = KD_BF16;
  if (!gb || !l || kd_loss_eval(l, &io, pool, err, errlen)) {
    if (!gb) snprintf(err, errlen, "out of memory");
    free(gb);
    return 1;
  }
  int bad = memcmp(&lb, &loss, sizeof lb) != 0;
  if (bad) snprintf(err, errlen, "loss %.17g, with the f32 gradient %.17g", lb, loss);
  for (size_t i = 0; i < n && !bad; i++) {
    uint16_t want = kd_f32_to_bf16(grad[i]);
    if (gb[i] != want && !(fabsf(grad[i]) < FLT_MIN && (gb[i] & 0x7fffu) == 0)) {
      snprintf(err, errlen, "grad[%zu] = 0x%04x, the f32 %.9g rounds to 0x%04x", i, gb[i], grad[i], want);
      bad = 1;
    }
  }
  free(gb);
  return bad;
}

int kd_kc_run(const char *what, const kd_kc_case *c, kd_pool *pool) {
  char err[512];
  int bad = 1;
  arrays a = {0};
  kd_ref_value out[8];
  size_t nout = kd_graph_noutputs(c->g);
  kd_loss *l = compiled(c, KD_F32, err, sizeof err);
  if (!l) {
    printf("FAIL %s: %s\n", what, err);
    return 1;
  }
  if (nout > 8 || !alloc_inputs(c, &a)) {
    printf("FAIL %s: out of memory\n", what);
    goto done;
  }
  int bf = c->dtype == KD_BF16;
  const void *tdata = bf ? (const void *)a.th : a.t, *sdata = bf ? (const void *)a.sh : a.s;
  int has_t = kd_graph_find_input(c->g, "teacher") != KD_NONE;
  int has_l = kd_graph_find_input(c->g, "labels") != KD_NONE;
  kd_ref_input in[3];
  size_t nin = 0;
  if (has_t) in[nin++] = (kd_ref_input){"teacher", c->dtype, 2, {c->N, c->V}, tdata};
  in[nin++] = (kd_ref_input){"student", c->dtype, 2, {c->N, c->V}, sdata};
  if (has_l) in[nin++] = (kd_ref_input){"labels", KD_I64, 2, {c->N, 1}, a.labels};
  if (kd_ref_exec(c->g, in, nin, out, err, sizeof err)) {
    printf("FAIL %s: reference: %s\n", what, err);
    goto done;
  }
  const double *rloss = find_output(c->g, out, "loss"), *rgrad = find_output(c->g, out, "grad");

  double loss = NAN, loss1 = NAN;
  kd_loss_io io = {tdata, c->dtype, sdata, c->dtype, has_l ? a.labels : NULL, c->N, c->V,
                   rgrad ? a.grad : NULL, &loss, KD_F32};
  kd_loss_io io1 = io;
  io1.grad = a.grad1;
  io1.loss = &loss1;
  if (kd_loss_eval(l, &io, pool, err, sizeof err) || kd_loss_eval(l, &io1, NULL, err, sizeof err)) {
    printf("FAIL %s: eval: %s\n", what, err);
    goto free_out;
  }
  size_t n = (size_t)(c->N * c->V);
  if (!rgrad) { /* the loss alone: compare against zero gradients on both sides */
    memset(a.grad, 0, n * sizeof *a.grad);
    memset(a.grad1, 0, n * sizeof *a.grad1);
  }
  int differ = memcmp(&loss, &loss1, sizeof loss) || memcmp(a.grad, a.grad1, n * sizeof *a.grad);

  double scale = 1, gmax = 0, lerr = fabs(loss - rloss[0]), gerr = 0;
  for (size_t i = 0; i < n; i++) {
    if (isfinite(a.t[i]) && fabs(a.t[i]) / c->T + 1 > scale) scale = fabs(a.t[i]) / c->T + 1;
    if (fabs(a.s[i]) / c->T + 1 > scale) scale = fabs(a.s[i]) / c->T + 1;
    if (!rgrad) continue;
    if (isfinite(rgrad[i]) && fabs(rgrad[i]) > gmax) gmax = fabs(rgrad[i]);
    double d = fabs((double)a.grad[i] - rgrad[i]);
    if (!isfinite(rgrad[i])) d = isfinite(a.grad[i]) ? INFINITY : 0;
    if (!(d <= gerr)) gerr = d; /* NaN sticks */
  }
  double floor = 1 / (c->T * (double)(a.count ? a.count : 1) * (double)c->V);
  if (gmax < floor) gmax = floor;
  int W = c->width ? c->width : 16;
  double b = (double)c->V / W < 64 ? (double)c->V / W : 64;
  double sum_err = 1 + sqrt(b);
  double ltol = LOSS_C * FLT_EPSILON * scale * sum_err;
  double gtol = GRAD_C * FLT_EPSILON * scale * sum_err * gmax;
  if (c->masked == 2) ltol = gtol = 0; /* exactly 0 */
  if (!isfinite(rloss[0])) lerr = loss == rloss[0] ? 0 : INFINITY;
  bad = !(lerr <= ltol) || !(gerr <= gtol) || differ;
  char berr[256] = "";
  int bbad = c->grad_bf16 && rgrad && check_bf16_grad(c, io, loss, a.grad, pool, berr, sizeof berr);
  bad |= bbad;
  for (int64_t i = 0; i < c->N; i++) /* masked rows: gradient exactly 0 */
    for (int64_t j = 0; has_l && a.labels[i] == -100 && j < c->V; j++)
      if (a.grad[i * c->V + j] != 0) bad = 1;
  if (ltol > 0 && lerr / ltol > worst_loss_ratio) worst_loss_ratio = lerr / ltol;
  if (gtol > 0 && gerr / gtol > worst_grad_ratio) worst_grad_ratio = gerr / gtol;
  printf("%s %-58s loss %.9g (ref %.9g) err %.2g/%.2g, grad err %.2g/%.2g%s%s%s\n", bad ? "FAIL" : "ok  ",
         what, loss, rloss[0], lerr, ltol, gerr, gtol, differ ? ", threads differ" : "",
         c->grad_bf16 && rgrad ? (bbad ? ", bf16 gradient: " : ", bf16 gradient exact") : "", berr);
free_out:
  for (size_t i = 0; i < nout; i++) kd_ref_value_free(&out[i]);
done:
  free_inputs(&a);
  return bad;
}

void kd_kc_report(void) {
  printf("worst error / tolerance: loss %.3f, grad %.3f\n", worst_loss_ratio, worst_grad_ratio);
}
