/* The reference executor against direct computations: every op on small
 * arrays with broadcasting, IEEE special values, logsumexp stability, and
 * the input-binding errors. Expected values are computed here with libm on
 * the same doubles, so the tolerance is a few ulps (1e-15 relative): the
 * executor must do exactly this arithmetic, in double. */
#include "testutil.h"

#define RTOL 1e-15

static kd_graph *g;
static kd_node_id X, Y, C; /* x: f32 [N, V]; y: f32 [N, 1]; c: bool [N, V] */

enum { NR = 2, NV = 4 };
static double xs[NR * NV] = {0.5, -1.25, 0, 3, -INFINITY, 2, 1e4, -0.0};
static double ys[NR] = {2, -0.5};
static double cs[NR * NV] = {1, 0, 1, 0, 0, 0, 1, 1};

static kd_ref_value run1(kd_node_id out) {
  kd_graph_add_output(g, "out", out);
  int64_t nv[2] = {NR, NV}, n1[2] = {NR, 1};
  kd_ref_input in[3] = {tu_input("x", 2, nv, xs), tu_input("y", 2, n1, ys),
                        tu_input("c", 2, nv, cs)};
  in[2].dtype = KD_BOOL;
  unsigned char cb[NR * NV];
  for (int i = 0; i < NR * NV; i++) cb[i] = cs[i] != 0;
  in[2].data = cb;
  return tu_run(g, in, 3, "out");
}

static void fresh(void) {
  kd_graph_free(g);
  g = kd_graph_new();
  kd_dim n = kd_graph_sym(g, "N"), v = kd_graph_sym(g, "V");
  kd_dim nv[2] = {n, v}, n1[2] = {n, 1};
  X = kd_input(g, "x", KD_F32, 2, nv);
  Y = kd_input(g, "y", KD_F32, 2, n1);
  C = kd_input(g, "c", KD_BOOL, 2, nv);
}

static double sgn(double x) { return x > 0 ? 1 : x < 0 ? -1 : x; }
static double mulz(double a, double b) { return a == 0 ? 0 : a * b; }
static double nmax(double a, double b) { return isnan(a) || isnan(b) ? NAN : a > b ? a : b; }
static double nmin(double a, double b) { return isnan(a) || isnan(b) ? NAN : a < b ? a : b; }

static void test_unary(void) {
  static const struct {
    kd_opcode op;
    double (*f)(double);
  } ops[] = {{KD_IR_EXP, exp}, {KD_IR_LOG, log}, {KD_IR_SQRT, sqrt}, {KD_IR_ABS, fabs},
             {KD_IR_SIGN, sgn}};
  for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
    fresh();
    kd_ref_value v = run1(kd_unary(g, ops[k].op, X));
    for (int i = 0; i < NR * NV && v.data; i++) {
      double want = ops[k].f(xs[i]);
      TU_CHECK(tu_close(v.data[i], want, 0, RTOL), "%s(%g) = %g, want %g",
               kd_opcode_name(ops[k].op), xs[i], v.data[i], want);
    }
    kd_ref_value_free(&v);
  }
  fresh();
  kd_ref_value v = run1(kd_unary(g, KD_IR_NEG, kd_unary(g, KD_IR_STOPGRAD, X)));
  for (int i = 0; i < NR * NV && v.data; i++) TU_CHECK(v.data[i] == -xs[i], "neg");
  kd_ref_value_free(&v);
  TU_CHECK(exp(-INFINITY) == 0 && log(0.0) == -INFINITY, "libm's IEEE edges");
  fresh();
  v = run1(kd_cast(g, kd_binary(g, KD_IR_MUL, X, kd_const(g, -1.5, KD_F32)), KD_I32));
  for (int i = 0; i < NR * NV && v.data; i++)
    if (isfinite(xs[i])) TU_CHECK(v.data[i] == trunc(-1.5 * xs[i]), "cast to i32 truncates");
  kd_ref_value_free(&v);
}

/* x (op) y with y [N, 1] broadcast along the row. */
static void test_binary(void) {
  static const struct {
    kd_opcode op;
    double (*f)(double, double);
  } ops[] = {{KD_IR_POW, pow}, {KD_IR_MULZ, mulz}, {KD_IR_MAX, nmax}, {KD_IR_MIN, nmin}};
  for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
    fresh();
    kd_ref_value v = run1(kd_binary(g, ops[k].op, X, Y));
    for (int i = 0; i < NR * NV && v.data; i++) {
      double want = ops[k].f(xs[i], ys[i / NV]);
      TU_CHECK(tu_close(v.data[i], want, 0, RTOL), "%s(%g, %g) = %g, want %g",
               kd_opcode_name(ops[k].op), xs[i], ys[i / NV], v.data[i], want);
    }
    kd_ref_value_free(&v);
  }
  for (kd_opcode op = KD_IR_ADD; op <= KD_IR_NE; op++) {
    if (op == KD_IR_POW || op == KD_IR_MULZ || op == KD_IR_MAX || op == KD_IR_MIN) continue;
    fresh();
    kd_ref_value v = run1(kd_binary(g, op, Y, X)); /* the broadcast operand first */
    for (int i = 0; i < NR * NV && v.data; i++) {
      double a = ys[i / NV], b = xs[i], want = NAN;
      switch (op) {
      case KD_IR_ADD: want = a + b; break;
      case KD_IR_SUB: want = a - b; break;
      case KD_IR_MUL: want = a * b; break;
      case KD_IR_DIV: want = a / b; break;
      case KD_IR_LT: want = a < b; break;
      case KD_IR_LE: want = a <= b; break;
      case KD_IR_GT: want = a > b; break;
      case KD_IR_GE: want = a >= b; break;
      case KD_IR_EQ: want = a == b; break;
      case KD_IR_NE: want = a != b; break;
      default: break;
      }
      TU_CHECK(tu_close(v.data[i], want, 0, RTOL), "%s(%g, %g) = %g, want %g",
               kd_opcode_name(op), a, b, v.data[i], want);
    }
    kd_ref_value_free(&v);
  }
  /* MULZ: 0 * inf and 0 * nan are exactly 0. */
  fresh();
  kd_node_id z = kd_binary(g, KD_IR_MUL, X, kd_const(g, 0, KD_F32)); /* 0 * -inf = nan */
  kd_ref_value v = run1(kd_binary(g, KD_IR_MULZ, kd_const(g, 0, KD_F32),
                                  kd_binary(g, KD_IR_ADD, z, kd_const(g, INFINITY, KD_F32))));
  for (int i = 0; i < NR * NV && v.data; i++) TU_CHECK(v.data[i] == 0, "mulz(0, nan or inf)");
  kd_ref_value_free(&v);
}

static void test_select_iota_expand(void) {
  fresh();
  kd_ref_value v = run1(kd_select(g, C, X, Y));
  for (int i = 0; i < NR * NV && v.data; i++) {
    double want = cs[i] ? xs[i] : ys[i / NV];
    TU_CHECK(tu_close(v.data[i], want, 0, 0), "select[%d] = %g, want %g", i, v.data[i], want);
  }
  kd_ref_value_free(&v);
  /* The branch not taken may be nan: it never reaches the result. */
  fresh();
  kd_node_id nan = kd_unary(g, KD_IR_LOG, kd_const(g, -1, KD_F32));
  v = run1(kd_select(g, kd_binary(g, KD_IR_EQ, X, X), X, nan));
  for (int i = 0; i < NR * NV && v.data; i++) TU_CHECK(v.data[i] == xs[i], "select skips nan");
  kd_ref_value_free(&v);
  fresh();
  kd_dim sh[2] = {1, kd_graph_sym(g, "V")};
  v = run1(kd_binary(g, KD_IR_ADD, kd_iota(g, 2, sh, 1), kd_binary(g, KD_IR_MUL, Y, X)));
  for (int i = 0; i < NR * NV && v.data; i++)
    TU_CHECK(tu_close(v.data[i], (i % NV) + ys[i / NV] * xs[i], 0, RTOL), "iota + y * x");
  kd_ref_value_free(&v);
  fresh();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
  v = run1(kd_expand(g, Y, 2, nv));
  TU_CHECK(v.rank == 2 && v.shape[0] == NR && v.shape[1] == NV, "expand's shape");
  for (int i = 0; i < NR * NV && v.data; i++) TU_CHECK(v.data[i] == ys[i / NV], "expand");
  kd_ref_value_free(&v);
}

/* Row reductions, softmax, and logsumexp's edge cases. */
static void test_reductions(void) {
  static double rows[3][4] = {
      {1e4, 1e4 - 1, -1e4, 0},                   /* exp(1e4) overflows unshifted */
      {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, /* all -inf: lse = -inf */
      {-INFINITY, 0.5, -2, 0.25},
  };
  for (int r = 0; r < 3; r++) {
    double m = -INFINITY, s = 0;
    for (int k = 0; k < 4; k++) m = fmax(m, rows[r][k]);
    for (int k = 0; k < 4 && isfinite(m); k++) s += exp(rows[r][k] - m);
    double want_lse = isfinite(m) ? m + log(s) : m, want_sum = 0;
    for (int k = 0; k < 4; k++) want_sum += rows[r][k];
    kd_graph *h = kd_graph_new();
    kd_dim sh[2] = {1, kd_graph_sym(h, "V")};
    kd_node_id x = kd_input(h, "x", KD_F32, 2, sh);
    kd_graph_add_output(h, "lse", kd_reduce(h, KD_IR_LSE, x, 1));
    kd_graph_add_output(h, "max", kd_reduce(h, KD_IR_RMAX, x, 1));
    kd_graph_add_output(h, "sum", kd_reduce(h, KD_IR_SUM, x, KD_AXIS_ALL));
    kd_graph_add_output(h, "sm", kd_row(h, KD_IR_SOFTMAX, x, 1));
    kd_graph_add_output(h, "lsm", kd_row(h, KD_IR_LOG_SOFTMAX, x, 1));
    int64_t shape[2] = {1, 4};
    kd_ref_input in = tu_input("x", 2, shape, rows[r]);
    double lse = tu_scalar(h, &in, 1, "lse");
    TU_CHECK(tu_close(lse, want_lse, 0, RTOL), "row %d: lse = %g, want %g", r, lse, want_lse);
    TU_CHECK(tu_scalar(h, &in, 1, "max") == m, "row %d: max", r);
    double sum = tu_scalar(h, &in, 1, "sum");
    TU_CHECK(tu_close(sum, want_sum, 0, RTOL), "row %d: sum = %g, want %g", r, sum, want_sum);
    kd_ref_value sm = tu_run(h, &in, 1, "sm"), lsm = tu_run(h, &in, 1, "lsm");
    for (int k = 0; k < 4 && sm.data && lsm.data; k++) {
      /* all -inf rows give nan (0/0), as torch does */
      double want = isfinite(m) ? exp(rows[r][k] - want_lse) : NAN;
      TU_CHECK(tu_close(sm.data[k], want, 0, 1e-14), "row %d: softmax[%d] = %g, want %g", r, k,
               sm.data[k], want);
      TU_CHECK(tu_close(lsm.data[k], isfinite(m) ? rows[r][k] - want_lse : NAN, 0, RTOL),
               "row %d: log_softmax[%d]", r, k);
    }
    kd_ref_value_free(&sm);
    kd_ref_value_free(&lsm);
    kd_graph_free(h);
  }
  /* Axis 0 of [N, V]: columns. */
  fresh();
  kd_ref_value v = run1(kd_reduce(g, KD_IR_SUM, kd_unary(g, KD_IR_ABS, X), 0));
  TU_CHECK(v.rank == 2 && v.shape[0] == 1 && v.shape[1] == NV, "column sum's shape");
  for (int k = 0; k < NV && v.data; k++)
    TU_CHECK(v.data[k] == fabs(xs[k]) + fabs(xs[NV + k]), "column sum %d", k);
  kd_ref_value_free(&v);
}

/* Bad bindings are errors with a message, never crashes. */
static void test_binding_errors(void) {
  kd_graph *h = kd_graph_new();
  kd_dim n = kd_graph_sym(h, "N"), v = kd_graph_sym(h, "V");
  kd_dim nv[2] = {n, v};
  kd_node_id t = kd_input(h, "teacher", KD_F32, 2, nv);
  kd_node_id s = kd_input(h, "student", KD_BF16, 2, nv);
  kd_node_id l = kd_input(h, "labels", KD_I64, 2, (kd_dim[]){n, 1});
  kd_graph_add_output(h, "out", kd_binary(h, KD_IR_ADD, kd_binary(h, KD_IR_ADD, t, s), l));
  float tf[6] = {1, 2, 3, 4, 5, 6};
  uint16_t sb[6];
  for (int i = 0; i < 6; i++) sb[i] = kd_f32_to_bf16(0.5f * (float)i);
  int64_t lab[2] = {7, -100};
  kd_ref_input in[3] = {{"teacher", KD_F32, 2, {2, 3}, tf},
                        {"student", KD_BF16, 2, {2, 3}, sb},
                        {"labels", KD_I64, 2, {2, 1}, lab}};
  kd_ref_value out[1];
  char err[256] = "";
  TU_CHECK(kd_ref_exec(h, in, 3, out, err, sizeof err) == KD_OK, "good bindings: %s", err);
  for (int i = 0; i < 6 && out[0].data; i++)
    TU_CHECK(out[0].data[i] == tf[i] + 0.5 * i + (double)lab[i / 3], "f32 + bf16 + i64 [%d]", i);
  kd_ref_value_free(&out[0]);

  in[1].shape[1] = 4; /* V disagrees */
  TU_CHECK(kd_ref_exec(h, in, 3, out, err, sizeof err) == KD_ERR_INVALID &&
               strstr(err, "(V)"),
           "a symbol mismatch: %s", err);
  in[1].shape[1] = 3;
  in[2].rank = 1;
  TU_CHECK(kd_ref_exec(h, in, 3, out, err, sizeof err) == KD_ERR_INVALID && strstr(err, "rank"),
           "a rank mismatch: %s", err);
  in[2].rank = 2;
  in[2].dtype = KD_F32;
  TU_CHECK(kd_ref_exec(h, in, 3, out, err, sizeof err) == KD_ERR_INVALID,
           "float data for an integer input: %s", err);
  in[2].dtype = KD_I64;
  TU_CHECK(kd_ref_exec(h, in, 2, out, err, sizeof err) == KD_ERR_INVALID &&
               strstr(err, "labels"),
           "a missing input: %s", err);
  in[0].data = NULL;
  TU_CHECK(kd_ref_exec(h, in, 3, out, err, sizeof err) == KD_ERR_INVALID, "no data: %s", err);
  kd_graph_free(h);
}

int main(void) {
  test_unary();
  test_binary();
  test_select_iota_expand();
  test_reductions();
  test_binding_errors();
  kd_graph_free(g);
  return tu_done("test_refexec");
}
