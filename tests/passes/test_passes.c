/* What each pass does to a graph: the pipeline's names, canonical forms,
 * the shape of forward KL's simplified gradient, the row reductions the
 * scheduler will see, CSE and DCE shrinking graphs, and the simplifier's
 * local rules (each checked to keep the value, on the reference executor,
 * to 1e-12 relative: the rewritten graph does the same arithmetic up to
 * reassociation of a few terms). */
#include "losses.h"
#include "passes.h"
#include "testutil.h"

static kd_graph *run_to(const kd_graph *g, const char *last) {
  kd_graph *out = NULL;
  char err[256] = "";
  TU_CHECK(kd_pipeline_run(g, last, &out, err, sizeof err) == KD_OK, "%s: %s",
           last ? last : "all", err);
  return out;
}

static int count_op(const kd_graph *g, kd_opcode op) {
  int k = 0;
  for (size_t i = 0; i < kd_graph_size(g); i++) k += kd_graph_node(g, (kd_node_id)i)->op == op;
  return k;
}

/* Marks the nodes output `name` depends on; returns how many. */
static int cone(const kd_graph *g, const char *name, char *in) {
  size_t n = kd_graph_size(g);
  memset(in, 0, n);
  kd_node_id o = kd_graph_find_output(g, name);
  if (o == KD_NONE) return 0;
  in[o] = 1;
  int k = 0;
  for (size_t i = n; i-- > 0;) {
    if (!in[i]) continue;
    k++;
    const kd_node *nd = kd_graph_node(g, (kd_node_id)i);
    for (int s = 0; s < nd->nsrc; s++) in[nd->src[s]] = 1;
  }
  return k;
}

/* Reductions over the vocabulary (axis 1 of an [N, V] tensor) that output
 * `name` needs: each is a pass over the row unless the scheduler folds it. */
static int row_reductions(const kd_graph *g, const char *name) {
  char in[1024];
  if (kd_graph_size(g) > sizeof in || !cone(g, name, in)) return -1;
  int k = 0;
  for (size_t i = 0; i < kd_graph_size(g); i++) {
    const kd_node *n = kd_graph_node(g, (kd_node_id)i);
    if (in[i] && kd_opcode_class(n->op) == KD_CLASS_REDUCE && n->axis == 1 &&
        kd_graph_node(g, n->src[0])->shape[1] != 1)
      k++;
  }
  return k;
}

static void test_pipeline_names(void) {
  size_t n;
  const kd_pass *p = kd_pipeline(&n);
  static const char *const want[] = {"canonicalize", "autodiff", "simplify", "cse", "dce"};
  TU_CHECK(n == 5, "five passes after lower");
  for (size_t i = 0; i < n && i < 5; i++)
    TU_CHECK(!strcmp(p[i].name, want[i]) && kd_pipeline_find(want[i]) == &p[i], "pass %zu", i);
  TU_CHECK(kd_pipeline_find("lower") == NULL && kd_pipeline_find("fuse") == NULL, "not passes");
  kd_graph *g = l_build(L_FKL, 1, 0, -100), *out = NULL;
  char err[256] = "";
  TU_CHECK(kd_pipeline_run(g, "nonesuch", &out, err, sizeof err) == KD_ERR_INVALID &&
               !out && strstr(err, "nonesuch"),
           "an unknown pass: %s", err);
  out = run_to(g, "lower");
  TU_CHECK(out && kd_graph_size(out) == kd_graph_size(g), "lower is a copy");
  kd_graph_free(out);
  out = run_to(g, "autodiff");
  TU_CHECK(out && kd_graph_find_output(out, "grad") != KD_NONE &&
               kd_graph_find_output(out, "loss") != KD_NONE,
           "after autodiff: loss and grad");
  TU_CHECK(out && kd_graph_output_name(out, 0) && !strcmp(kd_graph_output_name(out, 0), "loss"),
           "the loss stays the first output");
  kd_graph_free(out);
  kd_graph_free(g);
}

static void test_canonicalize(void) {
  kd_graph *g = l_build(L_JSD, 2, 0.5, -100);
  kd_graph *c = run_to(g, "canonicalize");
  if (c) {
    TU_CHECK(count_op(c, KD_IR_SOFTMAX) == 0 && count_op(c, KD_IR_LOG_SOFTMAX) == 0,
             "no composites after canonicalize");
    /* the only log left is of the mixture m = (p + q) / 2, never of p or q */
    for (size_t i = 0; i < kd_graph_size(c); i++) {
      const kd_node *n = kd_graph_node(c, (kd_node_id)i);
      if (n->op != KD_IR_LOG) continue;
      kd_opcode a = kd_graph_node(c, n->src[0])->op;
      TU_CHECK(a == KD_IR_ADD, "log of %s", kd_opcode_name(a));
    }
    TU_CHECK(count_op(c, KD_IR_MULZ) >= 2, "p * log(p / m) uses mulz");
    TU_CHECK(count_op(c, KD_IR_MUL) == count_op(g, KD_IR_MUL) - count_op(c, KD_IR_MULZ),
             "every mul became mulz or stayed");
  }
  kd_graph_free(c);
  kd_graph_free(g);

  /* A weight of exactly 0 removes an infinite term: 0 * inf = 0. */
  g = kd_graph_new();
  kd_dim sh[2] = {1, kd_graph_sym(g, "V")};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, sh);
  kd_node_id inf = kd_unary(g, KD_IR_NEG, kd_unary(g, KD_IR_LOG, kd_unary(g, KD_IR_ABS, x)));
  kd_node_id sum = kd_binary(g, KD_IR_ADD, kd_binary(g, KD_IR_MUL, kd_const(g, 0, KD_F32), inf),
                             x);
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, sum, KD_AXIS_ALL));
  double xs[3] = {0, 1, 2};
  int64_t shape[2] = {1, 3};
  kd_ref_input in = tu_input("student", 2, shape, xs);
  TU_CHECK(isnan(tu_scalar(g, &in, 1, "loss")), "0 * inf is nan before canonicalize");
  c = run_to(g, NULL);
  TU_CHECK(c && tu_scalar(c, &in, 1, "loss") == 3, "a 0 weight gives exactly 0");
  kd_graph_free(c);
  kd_graph_free(g);
}

/* Is node id exp(u / T - lse(u / T)) for input `input` (u / T as u (1/T)
 * when T is a power of two)? */
static int is_softmax_of(const kd_graph *g, kd_node_id id, const char *input) {
  const kd_node *e = kd_graph_node(g, id);
  if (e->op != KD_IR_EXP) return 0;
  const kd_node *d = kd_graph_node(g, e->src[0]);
  if (d->op != KD_IR_SUB || kd_graph_node(g, d->src[1])->op != KD_IR_LSE) return 0;
  const kd_node *u = kd_graph_node(g, d->src[0]);
  return (u->op == KD_IR_DIV || u->op == KD_IR_MUL) && u->src[0] == kd_graph_find_input(g, input);
}

/* Forward KL's gradient after the pipeline is (q - p) W with W = G / T, G
 * the row's weight (mask, mean, T^2): no row sum is left in it, and one
 * subtraction and one multiply per logit (W is a product per row). T = 2,
 * so 1/T is a multiply by 1/2 folded into W. */
static void test_fkl_gradient_shape(void) {
  kd_graph *g = l_build(L_FKL, 2, 0, -100);
  kd_graph *raw = run_to(g, "autodiff"), *full = run_to(g, NULL);
  if (raw && full) {
    TU_CHECK(row_reductions(raw, "grad") >= 3, "autodiff alone: %d row reductions",
             row_reductions(raw, "grad"));
    TU_CHECK(row_reductions(full, "grad") == 2, "fkl grad: %d row reductions, want the 2 lse",
             row_reductions(full, "grad"));
    TU_CHECK(row_reductions(full, "loss") == 3, "fkl loss: %d row reductions, want 2 lse + 1",
             row_reductions(full, "loss"));
    TU_CHECK(kd_graph_size(full) < kd_graph_size(raw), "simplify shrinks: %zu -> %zu",
             kd_graph_size(raw), kd_graph_size(full));
    TU_CHECK(kd_graph_size(full) <= 37, "fkl after the pipeline: %zu nodes", kd_graph_size(full));
    TU_CHECK(count_op(full, KD_IR_LOG) == 0, "no log in fkl");
    TU_CHECK(count_op(full, KD_IR_DIV) == 2, "no division per logit in fkl: %d divisions (the mean's 2)",
             count_op(full, KD_IR_DIV));
    const kd_node *gr = kd_graph_node(full, kd_graph_find_output(full, "grad"));
    int k = gr->op == KD_IR_MUL && kd_graph_node(full, gr->src[1])->op == KD_IR_SUB;
    const kd_node *sub = kd_graph_node(full, gr->src[k]), *w = kd_graph_node(full, gr->src[1 - k]);
    TU_CHECK(gr->op == KD_IR_MUL && sub->op == KD_IR_SUB && w->rank == 2 && w->shape[1] == 1,
             "grad = (a - b) W with W a row weight: %s of %s and %s", kd_opcode_name(gr->op),
             kd_opcode_name(sub->op), kd_opcode_name(w->op));
    if (gr->op == KD_IR_MUL && sub->op == KD_IR_SUB) {
      TU_CHECK(is_softmax_of(full, sub->src[0], "student"), "a = q");
      TU_CHECK(is_softmax_of(full, sub->src[1], "teacher"), "b = p");
    }
    /* W = G (1/T): the literal it carries is T^2 / T = 2 */
    TU_CHECK(w->op == KD_IR_MUL && kd_graph_node(full, w->src[1])->op == KD_IR_CONST &&
                 kd_graph_node(full, w->src[1])->value == 2.0,
             "W = G times T^2 / T = 2");
  }
  kd_graph_free(raw);
  kd_graph_free(full);
  kd_graph_free(g);

  /* reverse KL: the loss's softmax-weighted sum is the only row sum, and
   * the gradient reuses it */
  g = l_build(L_RKL, 2, 0, -100);
  full = run_to(g, NULL);
  if (full) {
    TU_CHECK(row_reductions(full, "loss") == 3, "rkl loss: %d", row_reductions(full, "loss"));
    TU_CHECK(row_reductions(full, "grad") == 3, "rkl grad: %d", row_reductions(full, "grad"));
    int sums = 0;
    for (size_t i = 0; i < kd_graph_size(full); i++) {
      const kd_node *n = kd_graph_node(full, (kd_node_id)i);
      sums += n->op == KD_IR_SUM && n->axis == 1;
    }
    TU_CHECK(sums == 1, "rkl: %d row sums in the whole graph, want 1", sums);
  }
  kd_graph_free(full);
  kd_graph_free(g);
}

/* Two copies of the same softmax merge; the dead one goes. */
static void test_cse_dce(void) {
  kd_graph *g = kd_graph_new();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, nv);
  kd_input(g, "unused", KD_F32, 2, nv);
  kd_node_id a = kd_row(g, KD_IR_SOFTMAX, kd_binary(g, KD_IR_DIV, x, kd_const(g, 2, KD_F32)), 1);
  kd_node_id b = kd_row(g, KD_IR_SOFTMAX, kd_binary(g, KD_IR_DIV, x, kd_const(g, 2, KD_F32)), 1);
  kd_unary(g, KD_IR_EXP, kd_unary(g, KD_IR_LOG, a)); /* dead */
  kd_node_id m = kd_binary(g, KD_IR_MUL, a, b);
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, m, KD_AXIS_ALL));
  kd_graph *c = NULL, *d = NULL;
  char err[256] = "";
  TU_CHECK(kd_pass_cse(g, &c, err, sizeof err) == KD_OK, "cse: %s", err);
  TU_CHECK(c && kd_graph_size(c) == kd_graph_size(g) - 3, "cse merges const, div, softmax: %zu",
           c ? kd_graph_size(c) : 0);
  TU_CHECK(c && kd_pass_dce(c, &d, err, sizeof err) == KD_OK, "dce: %s", err);
  TU_CHECK(d && kd_graph_size(d) == kd_graph_size(c) - 2, "dce drops log and exp: %zu",
           d ? kd_graph_size(d) : 0);
  TU_CHECK(d && kd_graph_find_input(d, "unused") != KD_NONE, "dce keeps every input");
  double xs[6] = {1, 2, 3, -1, 0, 4}, us[6] = {0};
  int64_t shape[2] = {2, 3};
  kd_ref_input in[2] = {tu_input("student", 2, shape, xs), tu_input("unused", 2, shape, us)};
  double want = tu_scalar(g, in, 2, "loss");
  TU_CHECK(d && tu_scalar(d, in, 2, "loss") == want, "cse + dce keep the value");
  kd_graph_free(c);
  kd_graph_free(d);
  kd_graph_free(g);
}

/* The local rules, each on a graph where it applies. */
static void test_simplify_rules(void) {
  kd_graph *g = kd_graph_new();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, nv);
  kd_node_id k6 = kd_binary(g, KD_IR_MUL, kd_const(g, 2, KD_F32), kd_const(g, 3, KD_F32));
  kd_node_id nn = kd_unary(g, KD_IR_NEG, kd_unary(g, KD_IR_NEG, x));            /* --x */
  kd_node_id one = kd_binary(g, KD_IR_MUL, nn, kd_const(g, 1, KD_F32));          /* x*1 */
  kd_node_id zero = kd_binary(g, KD_IR_ADD, one, kd_const(g, 0, KD_F32));        /* x+0 */
  kd_node_id sm = kd_reduce(g, KD_IR_SUM, kd_row(g, KD_IR_SOFTMAX, x, 1), 1);   /* = 1 */
  kd_node_id rs = kd_reduce(g, KD_IR_SUM, sm, 1);                                /* size 1 */
  kd_node_id y = kd_binary(g, KD_IR_MUL, kd_binary(g, KD_IR_ADD, zero, rs), k6);
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, y, KD_AXIS_ALL));
  kd_graph *c = NULL, *s = NULL;
  char err[256] = "";
  TU_CHECK(kd_pass_canonicalize(g, &c, err, sizeof err) == KD_OK, "%s", err);
  TU_CHECK(c && kd_pass_simplify(c, &s, err, sizeof err) == KD_OK, "%s", err);
  if (s) {
    /* what is left: x, const 6, 1 (the softmax's sum), add, mul, sum */
    TU_CHECK(count_op(s, KD_IR_NEG) == 0, "--x folded");
    TU_CHECK(count_op(s, KD_IR_LSE) == 0 && count_op(s, KD_IR_EXP) == 0, "sum(softmax) = 1");
    TU_CHECK(count_op(s, KD_IR_SUM) == 1, "one sum left (the loss), got %d",
             count_op(s, KD_IR_SUM));
    TU_CHECK(count_op(s, KD_IR_MUL) == 1, "x*1 gone, 2*3 folded: %d muls",
             count_op(s, KD_IR_MUL));
    double xs[6] = {1, 2, 3, -1, 0, 4};
    int64_t shape[2] = {2, 3};
    kd_ref_input in = tu_input("student", 2, shape, xs);
    double want = tu_scalar(g, &in, 1, "loss"), got = tu_scalar(s, &in, 1, "loss");
    TU_CHECK(tu_close(got, want, 0, 1e-12) && tu_close(got, 6 * (9 + 6), 0, 1e-12), "value %.17g, want %.17g", got,
             want);
  }
  kd_graph_free(c);
  kd_graph_free(s);
  kd_graph_free(g);
}

/* sum(a + b) splits only where a side then needs no reduction of its own:
 * sum(2x + 3y) stays one sum (taking the factors out would add one), and
 * sum(x + softmax(x)) becomes sum(x) + 1. */
static void test_sum_split(void) {
  kd_graph *g = kd_graph_new();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, nv), y = kd_input(g, "teacher", KD_F32, 2, nv);
  kd_node_id ax = kd_binary(g, KD_IR_MUL, x, kd_const(g, 2, KD_F32));
  kd_node_id by = kd_binary(g, KD_IR_MUL, kd_const(g, 3, KD_F32), y);
  kd_node_id scaled = kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_ADD, ax, by), 1);
  kd_node_id soft = kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_ADD, x, kd_row(g, KD_IR_SOFTMAX, x, 1)), 1);
  kd_graph_add_output(g, "scaled", kd_reduce(g, KD_IR_SUM, scaled, KD_AXIS_ALL));
  kd_graph_add_output(g, "soft", kd_reduce(g, KD_IR_SUM, soft, KD_AXIS_ALL));
  kd_graph *c = NULL, *s = NULL;
  char err[256] = "";
  TU_CHECK(kd_pass_canonicalize(g, &c, err, sizeof err) == KD_OK, "%s", err);
  TU_CHECK(c && kd_pass_simplify(c, &s, err, sizeof err) == KD_OK, "%s", err);
  if (s) {
    TU_CHECK(row_reductions(s, "scaled") == 1, "sum(2x + 3y): %d row sums, want 1",
             row_reductions(s, "scaled"));
    TU_CHECK(row_reductions(s, "soft") == 1, "sum(x + softmax(x)): %d row sums, want 1",
             row_reductions(s, "soft"));
    TU_CHECK(count_op(s, KD_IR_LSE) == 0, "sum(softmax(x)) = 1: no logsumexp left");
    double xs[6] = {1, 2, 3, -1, 0, 4}, ys[6] = {0.5, -2, 1, 3, 2, -1};
    int64_t shape[2] = {2, 3};
    kd_ref_input in[2] = {tu_input("student", 2, shape, xs), tu_input("teacher", 2, shape, ys)};
    for (int k = 0; k < 2; k++) {
      const char *out = k ? "soft" : "scaled";
      double want = tu_scalar(g, in, 2, out), got = tu_scalar(s, in, 2, out);
      TU_CHECK(tu_close(got, want, 0, 1e-12), "%s: %.17g, want %.17g", out, got, want);
    }
  }
  kd_graph_free(c);
  kd_graph_free(s);
  kd_graph_free(g);
}

/* Whether node x depends on an op (x itself included). */
static bool depends_on(const kd_graph *g, kd_node_id x, kd_opcode op) {
  const kd_node *n = kd_graph_node(g, x);
  if (n->op == op) return true;
  for (int s = 0; s < n->nsrc; s++)
    if (depends_on(g, n->src[s], op)) return true;
  return false;
}

/* The first row sum (axis 1 over a full row) output `name` depends on. */
static const kd_node *row_sum_of(const kd_graph *g, const char *name) {
  char in[1024];
  if (kd_graph_size(g) > sizeof in || !cone(g, name, in)) return NULL;
  for (size_t i = 0; i < kd_graph_size(g); i++) {
    const kd_node *n = kd_graph_node(g, (kd_node_id)i);
    if (in[i] && n->op == KD_IR_SUM && n->axis == 1 && kd_graph_node(g, n->src[0])->shape[1] != 1)
      return n;
  }
  return NULL;
}

/* a / b where a is a multiple of b term by term (jsd's gradient: (-(c q) -
 * c p) / (p/2 + q/2) = -2c) is folded; real quotients are not. */
static void test_ratio_fold(void) {
  kd_graph *g = kd_graph_new();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
  kd_node_id t = kd_input(g, "teacher", KD_F32, 2, nv), x = kd_input(g, "student", KD_F32, 2, nv);
  kd_node_id p = kd_row(g, KD_IR_SOFTMAX, t, 1), q = kd_row(g, KD_IR_SOFTMAX, x, 1);
  kd_node_id c = kd_reduce(g, KD_IR_SUM, t, KD_AXIS_ALL); /* a factor that is no literal */
  kd_node_id half = kd_const(g, 0.5, KD_F32);
  kd_node_id num = kd_binary(g, KD_IR_SUB, kd_unary(g, KD_IR_NEG, kd_binary(g, KD_IR_MUL, q, c)),
                             kd_binary(g, KD_IR_MUL, p, c));
  kd_node_id mix = kd_binary(g, KD_IR_ADD, kd_binary(g, KD_IR_MUL, p, half), kd_binary(g, KD_IR_MUL, q, half));
  kd_node_id skew = kd_binary(g, KD_IR_ADD, kd_binary(g, KD_IR_MUL, p, kd_const(g, 0.1, KD_F32)),
                              kd_binary(g, KD_IR_MUL, q, kd_const(g, 0.9, KD_F32)));
  kd_node_id near = kd_binary(g, KD_IR_ADD, p, kd_binary(g, KD_IR_MUL, q, kd_const(g, 2, KD_F32)));
  /* beta = 0.3: (-(q (0.7 c)) - p (0.3 c)) / (0.3 p + 0.7 q) = -c */
  kd_node_id num3 = kd_binary(g, KD_IR_SUB,
                              kd_unary(g, KD_IR_NEG, kd_binary(g, KD_IR_MUL, q, kd_binary(g, KD_IR_MUL, c, kd_const(g, 0.7, KD_F32)))),
                              kd_binary(g, KD_IR_MUL, p, kd_binary(g, KD_IR_MUL, c, kd_const(g, 0.3, KD_F32))));
  kd_node_id mix3 = kd_binary(g, KD_IR_ADD, kd_binary(g, KD_IR_MUL, p, kd_const(g, 0.3, KD_F32)),
                              kd_binary(g, KD_IR_MUL, q, kd_const(g, 0.7, KD_F32)));
  kd_graph_add_output(g, "fold", kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_DIV, num, mix), KD_AXIS_ALL));
  kd_graph_add_output(g, "fold3", kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_DIV, num3, mix3), KD_AXIS_ALL));
  kd_graph_add_output(g, "real", kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_DIV, p, skew), KD_AXIS_ALL));
  kd_graph_add_output(g, "near", kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_DIV, kd_binary(g, KD_IR_ADD, p, q), near),
                                            KD_AXIS_ALL));
  kd_graph *cn = NULL, *s = NULL;
  char err[256] = "";
  TU_CHECK(kd_pass_canonicalize(g, &cn, err, sizeof err) == KD_OK, "%s", err);
  TU_CHECK(cn && kd_pass_simplify(cn, &s, err, sizeof err) == KD_OK, "%s", err);
  if (s) {
    TU_CHECK(!depends_on(s, kd_graph_find_output(s, "fold"), KD_IR_DIV),
             "(-(c q) - c p) / (p/2 + q/2) folded");
    TU_CHECK(!depends_on(s, kd_graph_find_output(s, "fold"), KD_IR_EXP), "fold: no softmax left");
    TU_CHECK(!depends_on(s, kd_graph_find_output(s, "fold3"), KD_IR_DIV),
             "(-(q (0.7 c)) - p (0.3 c)) / (0.3 p + 0.7 q) folded");
    TU_CHECK(depends_on(s, kd_graph_find_output(s, "real"), KD_IR_DIV), "p / (0.1 p + 0.9 q) kept");
    TU_CHECK(depends_on(s, kd_graph_find_output(s, "near"), KD_IR_DIV), "(p + q) / (p + 2 q) kept");
    double ts[6] = {1, 2, 3, -1, 0, 4}, xs[6] = {0.5, -2, 1, 3, 2, -1};
    int64_t shape[2] = {2, 3};
    kd_ref_input in[2] = {tu_input("teacher", 2, shape, ts), tu_input("student", 2, shape, xs)};
    static const char *const outs[] = {"fold", "fold3", "real", "near"};
    for (int k = 0; k < 4; k++) {
      double want = tu_scalar(g, in, 2, outs[k]), got = tu_scalar(s, in, 2, outs[k]);
      TU_CHECK(tu_close(got, want, 0, 1e-12), "%s: %.17g, want %.17g", outs[k], got, want);
    }
  }
  kd_graph_free(cn);
  kd_graph_free(s);
  kd_graph_free(g);
}

/* A softmax-weighted sum gives up its row scalars (lse) only where the rest
 * can then be folded online: sum(p (log p - log q)) becomes sum(p (t - s))
 * plus row scalars, but in sum(q (log q - log m)), m a mixture of p and q,
 * lse stays inside: taken out, it would cancel against a sum as large as
 * the logits. At logits of 1e17 that cancellation loses everything even
 * in the reference executor's doubles (ulp 16), so the test sees it: each
 * row's late sum is log 2 (q and p one-hot on different columns). */
static void test_late_split(void) {
  kd_graph *g = kd_graph_new();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
  kd_node_id t = kd_input(g, "teacher", KD_F32, 2, nv), x = kd_input(g, "student", KD_F32, 2, nv);
  kd_node_id p = kd_row(g, KD_IR_SOFTMAX, t, 1), q = kd_row(g, KD_IR_SOFTMAX, x, 1);
  kd_node_id half = kd_const(g, 0.5, KD_F32);
  kd_node_id lm = kd_unary(g, KD_IR_LOG, kd_binary(g, KD_IR_ADD, kd_binary(g, KD_IR_MUL, p, half),
                                                    kd_binary(g, KD_IR_MUL, q, half)));
  kd_node_id lp = kd_unary(g, KD_IR_LOG, p), lq = kd_unary(g, KD_IR_LOG, q);
  kd_node_id late = kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, q, kd_binary(g, KD_IR_SUB, lq, lm)), 1);
  kd_node_id online = kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, p, kd_binary(g, KD_IR_SUB, lp, lq)), 1);
  kd_graph_add_output(g, "late", kd_reduce(g, KD_IR_SUM, late, KD_AXIS_ALL));
  kd_graph_add_output(g, "online", kd_reduce(g, KD_IR_SUM, online, KD_AXIS_ALL));
  kd_graph *cn = NULL, *s = NULL;
  char err[256] = "";
  TU_CHECK(kd_pass_canonicalize(g, &cn, err, sizeof err) == KD_OK, "%s", err);
  TU_CHECK(cn && kd_pass_simplify(cn, &s, err, sizeof err) == KD_OK, "%s", err);
  const kd_node *rl = s ? row_sum_of(s, "late") : NULL, *ro = s ? row_sum_of(s, "online") : NULL;
  TU_CHECK(rl && ro, "both outputs keep a row sum");
  if (rl && ro) {
    const kd_node *ao = kd_graph_node(s, ro->src[0]);
    TU_CHECK(ao->nsrc == 2 && !depends_on(s, ao->src[1], KD_IR_LSE),
             "sum(p (log p - log q)): the lse's are taken out");
    double ts[6] = {1, 2, 3, -1, 0, 4}, xs[6] = {0.5, -2, 1, 3, 2, -1};
    double tb[6] = {1e17, -1e17, 0, 0, -1e17, 1e17}, xb[6] = {-1e17, 1e17, 0, 1e17, 0, -1e17};
    int64_t shape[2] = {2, 3};
    kd_ref_input in[2] = {tu_input("teacher", 2, shape, ts), tu_input("student", 2, shape, xs)};
    kd_ref_input big[2] = {tu_input("teacher", 2, shape, tb), tu_input("student", 2, shape, xb)};
    for (int k = 0; k < 2; k++) {
      const char *out = k ? "online" : "late";
      double want = tu_scalar(g, in, 2, out), got = tu_scalar(s, in, 2, out);
      TU_CHECK(tu_close(got, want, 0, 1e-12), "%s: %.17g, want %.17g", out, got, want);
    }
    double got = tu_scalar(s, big, 2, "late");
    TU_CHECK(tu_close(got, 2 * log(2.0), 0, 1e-12), "late at logits 1e17: %.17g, want 2 log 2", got);
  }
  kd_graph_free(cn);
  kd_graph_free(s);
  kd_graph_free(g);
}

/* x c - y c = (x - y) c: one multiply per element instead of two; in a -
 * (y + 3) the literal moves out, (a - y) - 3, and a - y is shared; x / 4 =
 * x (1/4), no division left. */
static void test_common_factor(void) {
  kd_graph *g = kd_graph_new();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, nv), y = kd_input(g, "teacher", KD_F32, 2, nv);
  kd_node_id d = kd_binary(g, KD_IR_SUB, kd_binary(g, KD_IR_MUL, x, kd_const(g, 0.3, KD_F32)),
                           kd_binary(g, KD_IR_MUL, kd_const(g, 0.3, KD_F32), y));
  kd_node_id sh = kd_binary(g, KD_IR_SUB, kd_binary(g, KD_IR_SUB, x, kd_binary(g, KD_IR_ADD, y, kd_const(g, 3, KD_F32))),
                            kd_binary(g, KD_IR_SUB, x, y));
  kd_node_id q = kd_binary(g, KD_IR_DIV, x, kd_const(g, 4, KD_F32));
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, d, KD_AXIS_ALL));
  kd_graph_add_output(g, "shift", kd_reduce(g, KD_IR_SUM, sh, KD_AXIS_ALL));
  kd_graph_add_output(g, "quarter", kd_reduce(g, KD_IR_SUM, q, KD_AXIS_ALL));
  kd_graph *s = NULL;
  char err[256] = "";
  TU_CHECK(kd_pass_simplify(g, &s, err, sizeof err) == KD_OK, "%s", err);
  if (s) {
    TU_CHECK(count_op(s, KD_IR_MUL) == 2, "x c - c y and x / 4: %d multiplies, want 2",
             count_op(s, KD_IR_MUL));
    TU_CHECK(count_op(s, KD_IR_DIV) == 0, "x / 4: %d divisions left", count_op(s, KD_IR_DIV));
    TU_CHECK(count_op(s, KD_IR_ADD) == 0 && count_op(s, KD_IR_SUB) == 3,
             "a - (y + 3) is (a - y) - 3: %d additions, %d subtractions, want 0 and 3 (a - y shared)",
             count_op(s, KD_IR_ADD), count_op(s, KD_IR_SUB));
    double xs[6] = {1, 2, 3, -1, 0, 4}, ys[6] = {0.5, -2, 1, 3, 2, -1};
    int64_t shape[2] = {2, 3};
    kd_ref_input in[2] = {tu_input("student", 2, shape, xs), tu_input("teacher", 2, shape, ys)};
    static const char *const outs[] = {"loss", "shift", "quarter"};
    for (int k = 0; k < 3; k++) {
      double want = tu_scalar(g, in, 2, outs[k]), got = tu_scalar(s, in, 2, outs[k]);
      TU_CHECK(tu_close(got, want, 0, 1e-12), "%s: %.17g, want %.17g", outs[k], got, want);
    }
  }
  kd_graph_free(s);
  kd_graph_free(g);
}

/* The rules for the gradients' row weights: mulz by a factor that the range
 * analysis bounds (1 / max(count, 1)) is a product, and not by 1 / count,
 * which is inf for a count of 0, nor by 0.001 / max(count, 1e-40), whose
 * divisor is 0 in f32; x w - mulz(w, v) = mulz(w, x - v);
 * (a + x) - (a + y) = x - y; (z r) s = z (r s) for r, s per row;
 * (x - r) - (y - r2) = (x - y) - (r - r2) and (x - r) - r2 = x - (r + r2)
 * (one subtraction of a row scalar per element), but (x - r) - 3 as it is
 * (a literal stays outside, as test_common_factor's rule puts it);
 * (x + r) + r2 = x + (r + r2), (x - r) + r2 = x - (r - r2), (x + r) - r2 =
 * x + (r - r2), but (x - r) + 3 as it is. Each
 * output is checked for its shape after simplify and against the graph
 * before it in the reference executor. */
static void test_row_factors(void) {
  kd_graph *g = kd_graph_new();
  kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")}, n1[2] = {nv[0], 1};
  kd_node_id x = kd_input(g, "student", KD_F32, 2, nv), y = kd_input(g, "teacher", KD_F32, 2, nv);
  kd_node_id one = kd_const(g, 1, KD_F32);
  kd_node_id cnt = kd_reduce(g, KD_IR_SUM, kd_expand(g, one, 2, n1), KD_AXIS_ALL);
  kd_node_id w = kd_binary(g, KD_IR_DIV, one, kd_binary(g, KD_IR_MAX, cnt, one));
  kd_node_id winf = kd_binary(g, KD_IR_DIV, one, cnt);
  kd_node_id wtiny = kd_binary(g, KD_IR_DIV, kd_const(g, 1e-3, KD_F32),
                                 kd_binary(g, KD_IR_MAX, cnt, kd_const(g, 1e-40, KD_F32)));
  kd_node_id r = kd_unary(g, KD_IR_EXP, kd_reduce(g, KD_IR_SUM, y, 1)); /* per row */
  kd_node_id r2 = kd_reduce(g, KD_IR_SUM, x, 1);
  kd_node_id e = kd_unary(g, KD_IR_EXP, x);
  kd_graph_add_output(g, "bounded", kd_binary(g, KD_IR_MULZ, x, w));
  kd_graph_add_output(g, "unbounded", kd_binary(g, KD_IR_MULZ, x, winf));
  kd_graph_add_output(g, "tiny", kd_binary(g, KD_IR_MULZ, x, wtiny));
  kd_graph_add_output(g, "shared", kd_binary(g, KD_IR_SUB, kd_binary(g, KD_IR_MUL, y, e),
                                             kd_binary(g, KD_IR_MULZ, e, x)));
  kd_graph_add_output(g, "shift", kd_binary(g, KD_IR_SUB, kd_binary(g, KD_IR_ADD, r, x),
                                            kd_binary(g, KD_IR_ADD, y, r)));
  kd_graph_add_output(g, "rows", kd_binary(g, KD_IR_MUL, kd_binary(g, KD_IR_MUL, x, r), w));
  kd_graph_add_output(g, "gather", kd_binary(g, KD_IR_SUB, kd_binary(g, KD_IR_SUB, x, r),
                                             kd_binary(g, KD_IR_SUB, y, r2)));
  kd_graph_add_output(g, "gather2", kd_binary(g, KD_IR_SUB, kd_binary(g, KD_IR_SUB, x, r), r2));
  kd_graph_add_output(g, "literal", kd_binary(g, KD_IR_SUB, kd_binary(g, KD_IR_SUB, x, r), kd_const(g, 3, KD_F32)));
  kd_graph_add_output(g, "gather3", kd_binary(g, KD_IR_ADD, kd_binary(g, KD_IR_ADD, r, x), r2));
  kd_graph_add_output(g, "gather4", kd_binary(g, KD_IR_ADD, r2, kd_binary(g, KD_IR_SUB, x, r)));
  kd_graph_add_output(g, "gather5", kd_binary(g, KD_IR_SUB, kd_binary(g, KD_IR_ADD, x, r), r2));
  kd_graph_add_output(g, "literal2", kd_binary(g, KD_IR_ADD, kd_binary(g, KD_IR_SUB, x, r), kd_const(g, 3, KD_F32)));
  kd_graph *s = NULL;
  char err[256] = "";
  TU_CHECK(kd_pass_simplify(g, &s, err, sizeof err) == KD_OK, "%s", err);
  if (s) {
    const kd_node *o[13];
    static const char *const outs[] = {"bounded", "unbounded", "shared",  "shift",   "rows",
                                       "tiny",    "gather",    "gather2", "literal", "gather3",
                                       "gather4", "gather5",   "literal2"};
    for (int k = 0; k < 13; k++) o[k] = kd_graph_node(s, kd_graph_find_output(s, outs[k]));
    TU_CHECK(o[0]->op == KD_IR_MUL, "mulz(x, 1 / max(count, 1)) is a product: %s",
             kd_opcode_name(o[0]->op));
    TU_CHECK(o[1]->op == KD_IR_MULZ, "mulz(x, 1 / count) stays: %s", kd_opcode_name(o[1]->op));
    TU_CHECK(o[5]->op == KD_IR_MULZ, "mulz(x, 0.001 / max(count, 1e-40)) stays: %s", kd_opcode_name(o[5]->op));
    TU_CHECK(o[2]->op == KD_IR_MULZ && kd_graph_node(s, o[2]->src[1])->op == KD_IR_SUB,
             "y e - mulz(e, x) = mulz(e, y - x): %s", kd_opcode_name(o[2]->op));
    TU_CHECK(o[3]->op == KD_IR_SUB && kd_graph_node(s, o[3]->src[0])->op == KD_IR_INPUT &&
                 kd_graph_node(s, o[3]->src[1])->op == KD_IR_INPUT,
             "(r + x) - (y + r) = x - y: %s", kd_opcode_name(o[3]->op));
    const kd_node *rs = o[4]->op == KD_IR_MUL ? kd_graph_node(s, o[4]->src[1]) : NULL;
    TU_CHECK(rs && kd_graph_node(s, o[4]->src[0])->op == KD_IR_INPUT && rs->op == KD_IR_MUL &&
                 rs->rank == 2 && rs->shape[1] == 1,
             "(x r) w = x (r w), r w per row");
    const kd_node *g0 = kd_graph_node(s, o[6]->src[0]), *g1 = kd_graph_node(s, o[6]->src[1]);
    TU_CHECK(o[6]->op == KD_IR_SUB && g0->op == KD_IR_SUB && g0->shape[1] != 1 && g1->op == KD_IR_SUB &&
                 g1->shape[1] == 1,
             "(x - r) - (y - r2) = (x - y) - (r - r2): %s", kd_opcode_name(o[6]->op));
    const kd_node *h1 = kd_graph_node(s, o[7]->src[1]);
    TU_CHECK(o[7]->op == KD_IR_SUB && kd_graph_node(s, o[7]->src[0])->op == KD_IR_INPUT && h1->op == KD_IR_ADD &&
                 h1->shape[1] == 1,
             "(x - r) - r2 = x - (r + r2): %s", kd_opcode_name(o[7]->op));
    TU_CHECK(o[8]->op == KD_IR_SUB && kd_graph_node(s, o[8]->src[0])->op == KD_IR_SUB,
             "(x - r) - 3 stays: %s", kd_opcode_name(o[8]->op));
    static const kd_opcode top[] = {KD_IR_ADD, KD_IR_SUB, KD_IR_ADD}, row[] = {KD_IR_ADD, KD_IR_SUB, KD_IR_SUB};
    for (int k = 0; k < 3; k++) { /* x op (r op' r2): x first, the row scalars together */
      const kd_node *t = o[9 + k], *e0 = kd_graph_node(s, t->src[0]), *e1 = kd_graph_node(s, t->src[1]);
      TU_CHECK(t->op == top[k] && e0->op == KD_IR_INPUT && e1->op == row[k] && e1->shape[1] == 1,
               "%s: x %s (r %s r2), got %s of %s and %s", outs[9 + k], kd_opcode_name(top[k]),
               kd_opcode_name(row[k]), kd_opcode_name(t->op), kd_opcode_name(e0->op), kd_opcode_name(e1->op));
    }
    TU_CHECK(o[12]->op == KD_IR_ADD && kd_graph_node(s, o[12]->src[0])->op == KD_IR_SUB,
             "(x - r) + 3 stays: %s", kd_opcode_name(o[12]->op));
    double xs[6] = {1, 2, 3, -1, 0, 4}, ys[6] = {0.5, -2, 1, 3, 2, -1};
    int64_t shape[2] = {2, 3};
    kd_ref_input in[2] = {tu_input("student", 2, shape, xs), tu_input("teacher", 2, shape, ys)};
    for (int k = 0; k < 13; k++) {
      kd_ref_value want = tu_run(g, in, 2, outs[k]), got = tu_run(s, in, 2, outs[k]);
      for (size_t i = 0; want.data && got.data && i < 6; i++)
        TU_CHECK(tu_close(got.data[i], want.data[i], 0, 1e-12), "%s[%zu]: %.17g, want %.17g",
                 outs[k], i, got.data[i], want.data[i]);
      kd_ref_value_free(&want);
      kd_ref_value_free(&got);
    }
  }
  kd_graph_free(s);
  kd_graph_free(g);
}

int main(void) {
  test_common_factor();
  test_row_factors();
  test_ratio_fold();
  test_late_split();
  test_pipeline_names();
  test_sum_split();
  test_canonicalize();
  test_fkl_gradient_shape();
  test_cse_dce();
  test_simplify_rules();
  return tu_done("test_passes");
}
