/* Every differentiable op's gradient: autodiff + the reference executor
 * against central finite differences in double (step and tolerance: see
 * tu_fd in testutil.h). Each case builds loss = sum(f(x, y) * w) with w
 * fixed random weights, so the adjoint reaching f is not uniform, and
 * checks d loss / d x (x: "student" [N, V]) and, for binary ops,
 * d loss / d y with y [N, 1] broadcast along the row, which exercises the
 * sum over broadcast axes. Each gradient is checked straight out of autodiff
 * and again after the whole pipeline (simplify, cse and dce must not change
 * a value). */
#include "passes.h"
#include "testutil.h"

#define ATOL 1e-6
#define RTOL 1e-6

enum { NR = 3, NV = 5 };

typedef kd_node_id (*op_fn)(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w);

#define B(op, a, b) kd_binary(g, KD_IR_##op, a, b)
#define U(op, a) kd_unary(g, KD_IR_##op, a)
static kd_node_id f_neg(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return U(NEG, x); }
static kd_node_id f_exp(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return U(EXP, x); }
static kd_node_id f_log(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return U(LOG, x); }
static kd_node_id f_sqrt(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return U(SQRT, x); }
static kd_node_id f_abs(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return U(ABS, x); }
static kd_node_id f_sign(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return B(ADD, U(SIGN, x), x); /* sign contributes 0 */
}
static kd_node_id f_cast(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return B(MUL, kd_cast(g, x, KD_F64), x);
}
static kd_node_id f_add(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return B(ADD, x, y); }
static kd_node_id f_sub(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return B(SUB, y, x); }
static kd_node_id f_mul(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return B(MUL, x, y); }
static kd_node_id f_mulz(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return B(MULZ, y, x); }
static kd_node_id f_div(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return B(DIV, x, y); }
static kd_node_id f_pow(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return B(POW, x, y); }
static kd_node_id f_max(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return B(MAX, x, y); }
static kd_node_id f_min(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) { return B(MIN, y, x); }
static kd_node_id f_select(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return kd_select(g, B(GT, w, kd_const(g, 0, KD_F32)), x, B(MUL, y, y));
}
static kd_node_id f_sum1(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return B(MUL, kd_reduce(g, KD_IR_SUM, B(MUL, x, x), 1), y);
}
static kd_node_id f_sum0(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return kd_reduce(g, KD_IR_SUM, B(MUL, x, y), 0);
}
static kd_node_id f_sumall(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return B(MUL, kd_reduce(g, KD_IR_SUM, B(MUL, x, x), KD_AXIS_ALL), x);
}
static kd_node_id f_rmax(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return kd_reduce(g, KD_IR_RMAX, B(MUL, x, y), 1);
}
static kd_node_id f_lse1(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return kd_reduce(g, KD_IR_LSE, B(MUL, x, y), 1);
}
static kd_node_id f_lse0(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return kd_reduce(g, KD_IR_LSE, x, 0);
}
static kd_node_id f_softmax(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return kd_row(g, KD_IR_SOFTMAX, B(MUL, x, y), 1);
}
static kd_node_id f_log_softmax(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  return kd_row(g, KD_IR_LOG_SOFTMAX, B(DIV, x, y), 1);
}
static kd_node_id f_expand(kd_graph *g, kd_node_id x, kd_node_id y, kd_node_id w) {
  const kd_node *n = kd_graph_node(g, x);
  kd_dim shape[2] = {n->shape[0], n->shape[1]};
  return B(MUL, kd_expand(g, y, 2, shape), x);
}
#undef B
#undef U

/* x's range: (lo, hi), with a random sign when sign is set. */
static const struct {
  const char *name;
  op_fn f;
  double lo, hi;
  int sign;
  int wrt_y; /* check d loss / d y too */
} cases[] = {
    {"neg", f_neg, -2, 2, 0, 0},       {"exp", f_exp, -2, 2, 0, 0},
    {"log", f_log, 0.5, 2, 0, 0},      {"sqrt", f_sqrt, 0.5, 2, 0, 0},
    {"abs", f_abs, 0.5, 2, 1, 0},      {"sign", f_sign, 0.5, 2, 1, 0},
    {"cast", f_cast, -2, 2, 0, 0},
    {"add", f_add, -2, 2, 0, 1},       {"sub", f_sub, -2, 2, 0, 1},
    {"mul", f_mul, -2, 2, 0, 1},       {"mulz", f_mulz, -2, 2, 0, 1},
    {"div", f_div, -2, 2, 0, 1},       {"pow", f_pow, 0.5, 2, 0, 1},
    {"max", f_max, -2, 2, 0, 1},       {"min", f_min, -2, 2, 0, 1},
    {"select", f_select, -2, 2, 0, 1}, {"sum axis 1", f_sum1, -2, 2, 0, 1},
    {"sum axis 0", f_sum0, -2, 2, 0, 1}, {"sum all", f_sumall, -2, 2, 0, 0},
    {"reduce_max", f_rmax, -2, 2, 0, 1}, {"logsumexp axis 1", f_lse1, -2, 2, 0, 1},
    {"logsumexp axis 0", f_lse0, -2, 2, 0, 0}, {"softmax", f_softmax, -2, 2, 0, 1},
    {"log_softmax", f_log_softmax, -2, 2, 0, 1}, {"expand", f_expand, -2, 2, 0, 1},
};

/* Compares the gradient output `grad` of gr with finite differences of the
 * loss of g0 in in[k]. */
static void check_grad(const char *what, const kd_graph *g0, const kd_graph *gr,
                       kd_ref_input *in, size_t nin, size_t k, const char *grad) {
  size_t size = (size_t)(in[k].shape[0] * in[k].shape[1]);
  double fd[NR * NV];
  tu_fd(g0, in, nin, k, "loss", fd);
  kd_ref_value v = tu_run(gr, in, nin, grad);
  TU_CHECK(v.size == size, "%s: gradient has %zu elements, want %zu", what, v.size, size);
  for (size_t i = 0; i < size && v.size == size; i++)
    TU_CHECK(tu_close(v.data[i], fd[i], ATOL, RTOL), "%s: d/d%s[%zu] = %.12g, fd %.12g", what,
             in[k].name, i, v.data[i], fd[i]);
  kd_ref_value_free(&v);
}

static void test_case(size_t c, unsigned long long *seed) {
  kd_graph *g = kd_graph_new();
  kd_dim n = kd_graph_sym(g, "N"), v = kd_graph_sym(g, "V");
  kd_dim nv[2] = {n, v}, n1[2] = {n, 1};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, nv);
  kd_node_id y = kd_input(g, "y", KD_F32, 2, n1);
  kd_node_id w = kd_input(g, "w", KD_F32, 2, nv);
  kd_node_id f = cases[c].f(g, x, y, w);
  kd_graph_add_output(g, "loss",
                      kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, f, w), KD_AXIS_ALL));
  TU_CHECK(!kd_graph_error(g), "%s: %s", cases[c].name, kd_graph_error(g));

  double xs[NR * NV], ys[NR], ws[NR * NV];
  for (int i = 0; i < NR * NV; i++) {
    xs[i] = tu_uniform(seed, cases[c].lo, cases[c].hi);
    if (cases[c].sign && tu_uniform(seed, 0, 1) < 0.5) xs[i] = -xs[i];
    ws[i] = tu_uniform(seed, -1, 1);
  }
  for (int i = 0; i < NR; i++) ys[i] = tu_uniform(seed, 0.5, 1.5);
  int64_t snv[2] = {NR, NV}, sn1[2] = {NR, 1};
  kd_ref_input in[3] = {tu_input("student", 2, snv, xs), tu_input("y", 2, sn1, ys),
                        tu_input("w", 2, snv, ws)};

  char err[256] = "";
  kd_graph *dx = NULL, *dy = NULL, *piped = NULL;
  TU_CHECK(kd_autodiff(g, "loss", "student", "grad", &dx, err, sizeof err) == KD_OK, "%s: %s",
           cases[c].name, err);
  if (dx) check_grad(cases[c].name, g, dx, in, 3, 0, "grad");
  TU_CHECK(kd_pipeline_run(g, NULL, &piped, err, sizeof err) == KD_OK, "%s: %s", cases[c].name,
           err);
  if (piped) check_grad(cases[c].name, g, piped, in, 3, 0, "grad");
  if (cases[c].wrt_y) {
    TU_CHECK(kd_autodiff(g, "loss", "y", "grad_y", &dy, err, sizeof err) == KD_OK, "%s: %s",
             cases[c].name, err);
    if (dy) check_grad(cases[c].name, g, dy, in, 3, 1, "grad_y");
  }
  kd_graph_free(dx);
  kd_graph_free(dy);
  kd_graph_free(piped);
  kd_graph_free(g);
}

/* Ties and non-smooth points take the documented conventions; finite
 * differences cannot see stop_gradient, so d/dx sum(sg(x) x) = sg(x) = x
 * is checked exactly. */
static void test_conventions(void) {
  kd_graph *g = kd_graph_new();
  kd_dim sh[2] = {1, kd_graph_sym(g, "V")};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, sh);
  kd_node_id m = kd_reduce(g, KD_IR_RMAX, x, 1);
  kd_node_id a = kd_unary(g, KD_IR_ABS, x);
  kd_node_id sg = kd_binary(g, KD_IR_MUL, kd_unary(g, KD_IR_STOPGRAD, x), x);
  kd_node_id sum = kd_binary(g, KD_IR_ADD, kd_binary(g, KD_IR_ADD, a, m), sg);
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, sum, KD_AXIS_ALL));
  kd_graph *d = NULL;
  char err[256] = "";
  TU_CHECK(kd_autodiff(g, "loss", "student", "grad", &d, err, sizeof err) == KD_OK, "%s", err);
  double xs[4] = {0, 3, -1, 3};
  int64_t shape[2] = {1, 4};
  kd_ref_input in = tu_input("student", 2, shape, xs);
  kd_ref_value v = tu_run(d, &in, 1, "grad");
  /* abs'(0) = 0; reduce_max's gradient goes to the first of the tied
   * maxima; stop_gradient adds x */
  double want[4] = {0 + 0, 1 + 1 + 3, -1 - 1, 1 + 3};
  for (int i = 0; i < 4 && v.data; i++)
    TU_CHECK(v.data[i] == want[i], "conventions: grad[%d] = %g, want %g", i, v.data[i], want[i]);
  kd_ref_value_free(&v);
  kd_graph_free(d);
  kd_graph_free(g);
}

/* No rule is an error naming the op; so is a missing output or input. */
static void test_errors(void) {
  kd_graph *g = kd_graph_new();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, nv);
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_RMAX, x, KD_AXIS_ALL));
  kd_graph_add_output(g, "rows", kd_reduce(g, KD_IR_SUM, x, 1));
  kd_graph *d = NULL;
  char err[256] = "";
  TU_CHECK(kd_autodiff(g, "loss", "student", "grad", &d, err, sizeof err) ==
                   KD_ERR_UNSUPPORTED && strstr(err, "reduce_max"),
           "an op without a rule: %s", err);
  TU_CHECK(d == NULL, "no graph on failure");
  TU_CHECK(kd_autodiff(g, "rows", "student", "grad", &d, err, sizeof err) == KD_ERR_INVALID &&
               strstr(err, "scalar"),
           "a non-scalar output: %s", err);
  TU_CHECK(kd_autodiff(g, "loss", "teacher", "grad", &d, err, sizeof err) == KD_ERR_INVALID &&
               strstr(err, "teacher"),
           "a missing input: %s", err);
  kd_graph_free(g);
}

int main(void) {
  unsigned long long seed = 0x9e3779b97f4a7c15ull;
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) test_case(c, &seed);
  test_conventions();
  test_errors();
  return tu_done("test_grad_ops");
}
