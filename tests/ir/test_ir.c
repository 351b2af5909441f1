/* The IR builders (shape and dtype inference, error propagation), the
 * verifier (it must reject broken graphs) and the printer (golden text). */
#include "testutil.h"

static kd_graph *g;
static kd_dim N, V;

static const kd_node *node(kd_node_id id) { return kd_graph_node(g, id); }

static int shape_is(kd_node_id id, int rank, kd_dim d0, kd_dim d1) {
  const kd_node *n = node(id);
  if (!n || n->rank != rank) return 0;
  return (rank < 1 || n->shape[0] == d0) && (rank < 2 || n->shape[1] == d1);
}

static void test_inference(void) {
  kd_dim nv[2] = {N, V}, n1[2] = {N, 1}, onev[2] = {1, V};
  kd_node_id t = kd_input(g, "teacher", KD_F32, 2, nv);
  kd_node_id s = kd_input(g, "student", KD_BF16, 2, nv);
  kd_node_id lab = kd_input(g, "labels", KD_I64, 2, n1);
  kd_node_id T = kd_const(g, 2.0, KD_F64);
  kd_node_id a = kd_binary(g, KD_IR_DIV, t, T);
  TU_CHECK(shape_is(a, 2, N, V) && node(a)->dtype == KD_F32, "f32 / weak f64 const is f32");
  kd_node_id b = kd_unary(g, KD_IR_EXP, s);
  TU_CHECK(node(b)->dtype == KD_F32, "bf16 computes as f32, got %s",
           kd_dtype_name(node(b)->dtype));
  kd_node_id l = kd_reduce(g, KD_IR_LSE, a, 1);
  TU_CHECK(shape_is(l, 2, N, 1), "a row reduction keeps the axis as 1");
  kd_node_id d = kd_binary(g, KD_IR_SUB, a, l);
  TU_CHECK(shape_is(d, 2, N, V), "[N, V] - [N, 1] broadcasts to [N, V]");
  kd_node_id all = kd_reduce(g, KD_IR_SUM, l, KD_AXIS_ALL);
  TU_CHECK(shape_is(all, 0, 0, 0), "a reduction over every axis is rank 0");
  kd_node_id io = kd_iota(g, 2, onev, 1);
  TU_CHECK(node(io)->dtype == KD_I64 && shape_is(io, 2, 1, V), "iota is i64 [1, V]");
  kd_node_id hit = kd_binary(g, KD_IR_EQ, io, lab);
  TU_CHECK(node(hit)->dtype == KD_BOOL && shape_is(hit, 2, N, V), "eq gives bool [N, V]");
  kd_node_id cnt = kd_reduce(g, KD_IR_SUM, hit, KD_AXIS_ALL);
  TU_CHECK(node(cnt)->dtype == KD_I64, "sum of bool counts in i64");
  kd_node_id sel = kd_select(g, hit, a, kd_const(g, 0, KD_F32));
  TU_CHECK(shape_is(sel, 2, N, V) && node(sel)->dtype == KD_F32, "select broadcasts");
  kd_node_id f64 = kd_binary(g, KD_IR_ADD, a, kd_cast(g, t, KD_F64));
  TU_CHECK(node(f64)->dtype == KD_F64, "f32 + f64 tensor is f64");
  kd_node_id sm = kd_row(g, KD_IR_SOFTMAX, a, 1);
  TU_CHECK(shape_is(sm, 2, N, V), "softmax keeps the shape");
  kd_node_id e = kd_expand(g, l, 2, nv);
  TU_CHECK(shape_is(e, 2, N, V), "expand [N, 1] to [N, V]");
  TU_CHECK(kd_graph_error(g) == NULL, "no error so far: %s", kd_graph_error(g));
  TU_CHECK(kd_graph_find_input(g, "labels") == lab, "find_input");
  TU_CHECK(kd_graph_add_output(g, "loss", all) == KD_OK, "add_output");
  TU_CHECK(kd_graph_add_output(g, "loss", all) == KD_ERR_INVALID, "an output name is unique");
  TU_CHECK(kd_graph_find_output(g, "loss") == all, "find_output");
  char err[256];
  TU_CHECK(kd_graph_verify(g, err, sizeof err) == KD_OK, "verify: %s", err);
}

/* Each bad operand gives KD_NONE and an error; KD_NONE propagates. */
static void test_errors(void) {
  kd_graph *h = kd_graph_new();
  kd_dim n = kd_graph_sym(h, "N"), v = kd_graph_sym(h, "V");
  kd_dim nv[2] = {n, v}, vn[2] = {v, n}, n5[2] = {n, 5};
  kd_node_id x = kd_input(h, "x", KD_F32, 2, nv);
  kd_node_id z = kd_input(h, "z", KD_F32, 2, n5);
  TU_CHECK(kd_binary(h, KD_IR_ADD, x, z) == KD_NONE, "V does not broadcast against 5");
  TU_CHECK(kd_graph_error(h) && strstr(kd_graph_error(h), "do not broadcast"), "message: %s",
           kd_graph_error(h));
  kd_graph_free(h);

  h = kd_graph_new();
  n = kd_graph_sym(h, "N");
  v = kd_graph_sym(h, "V");
  nv[0] = n, nv[1] = v, vn[0] = v, vn[1] = n;
  x = kd_input(h, "x", KD_F32, 2, nv);
  kd_node_id y = kd_input(h, "y", KD_F32, 2, vn);
  kd_node_id bad = kd_binary(h, KD_IR_MUL, x, y);
  TU_CHECK(bad == KD_NONE, "[N, V] * [V, N] is an error");
  TU_CHECK(kd_unary(h, KD_IR_EXP, bad) == KD_NONE, "KD_NONE propagates");
  TU_CHECK(strstr(kd_graph_error(h), "mul") != NULL, "the first error is kept: %s",
           kd_graph_error(h));
  kd_graph_free(h);

  h = kd_graph_new();
  n = kd_graph_sym(h, "N");
  nv[0] = n, nv[1] = 3;
  x = kd_input(h, "x", KD_F32, 2, nv);
  TU_CHECK(kd_reduce(h, KD_IR_SUM, x, 2) == KD_NONE, "axis 2 of a rank-2 tensor");
  kd_graph_free(h);

  h = kd_graph_new();
  x = kd_input(h, "x", KD_F32, 0, NULL);
  TU_CHECK(kd_input(h, "x", KD_F32, 0, NULL) == KD_NONE, "an input name is unique");
  kd_graph_free(h);

  h = kd_graph_new();
  x = kd_input(h, "x", KD_F32, 0, NULL);
  TU_CHECK(kd_select(h, x, x, x) == KD_NONE, "select needs a bool condition");
  kd_graph_free(h);

  h = kd_graph_new();
  x = kd_input(h, "x", KD_F32, 0, NULL);
  TU_CHECK(kd_unary(h, KD_IR_ADD, x) == KD_NONE, "kd_unary refuses a binary op");
  TU_CHECK(kd_reduce(h, KD_IR_EXP, x, 0) == KD_NONE, "kd_reduce refuses exp");
  kd_graph_free(h);
}

/* A valid graph broken in one place at a time: the verifier names it. */
static void test_verifier(void) {
  static const struct {
    const char *what, *msg;
  } cases[] = {
      {"a source after its user", "not an earlier node"},
      {"a wrong shape", "has shape"},
      {"a wrong dtype", "operands make it"},
      {"a missing operand", "takes 2 operands"},
      {"an axis out of range", "out of range"},
      {"an unknown symbol", "unknown symbol"},
      {"a bool select condition replaced", "not bool"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    kd_graph *h = kd_graph_new();
    kd_dim n = kd_graph_sym(h, "N"), v = kd_graph_sym(h, "V");
    kd_dim nv[2] = {n, v};
    kd_node_id x = kd_input(h, "x", KD_F32, 2, nv);
    kd_node_id e = kd_unary(h, KD_IR_EXP, x);
    kd_node_id l = kd_reduce(h, KD_IR_LSE, e, 1);
    kd_node_id d = kd_binary(h, KD_IR_SUB, e, l);
    kd_node_id sel = kd_select(h, kd_binary(h, KD_IR_GT, d, kd_const(h, 0, KD_F32)), d, e);
    kd_graph_add_output(h, "y", sel);
    char err[256] = "";
    TU_CHECK(kd_graph_verify(h, err, sizeof err) == KD_OK, "intact graph: %s", err);
    switch (c) {
    case 0: kd_graph_node_mut(h, e)->src[0] = d; break;
    case 1: kd_graph_node_mut(h, l)->shape[1] = v; break;
    case 2: kd_graph_node_mut(h, d)->dtype = KD_I32; break;
    case 3: kd_graph_node_mut(h, d)->nsrc = 1; break;
    case 4: kd_graph_node_mut(h, l)->axis = 2; break;
    case 5: kd_graph_node_mut(h, x)->shape[0] = KD_DIM_SYM(7); break;
    case 6: kd_graph_node_mut(h, sel)->src[0] = d; break;
    }
    kd_status st = kd_graph_verify(h, err, sizeof err);
    TU_CHECK(st == KD_ERR_INVALID, "%s: accepted", cases[c].what);
    TU_CHECK(strstr(err, cases[c].msg) != NULL, "%s: message \"%s\"", cases[c].what, err);
    kd_graph_free(h);
  }
}

/* The printed form is stable: golden text for one small graph. */
static void test_printer(void) {
  kd_graph *h = kd_graph_new();
  kd_dim n = kd_graph_sym(h, "N"), v = kd_graph_sym(h, "V");
  kd_dim nv[2] = {n, v};
  kd_node_id t = kd_input(h, "teacher", KD_F32, 2, nv);
  kd_node_id a = kd_binary(h, KD_IR_DIV, t, kd_const(h, 0.1, KD_F32));
  kd_node_id l = kd_reduce(h, KD_IR_LSE, a, 1);
  kd_node_id lp = kd_binary(h, KD_IR_SUB, a, l);
  kd_set_name(h, lp, "log_p");
  kd_node_id m = kd_binary(h, KD_IR_MAX, lp, kd_const(h, -INFINITY, KD_F32));
  kd_node_id s = kd_reduce(h, KD_IR_SUM, kd_reduce(h, KD_IR_SUM, m, 1), KD_AXIS_ALL);
  kd_graph_add_output(h, "loss", s);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  kd_graph_print(h, f);
  fclose(f);
  const char *golden =
      "%0 : f32[N, V] = input \"teacher\"\n"
      "%1 : f32[] = const 0.1\n"
      "%2 : f32[N, V] = div %0, %1\n"
      "%3 : f32[N, 1] = logsumexp %2, axis=1\n"
      "%4 : f32[N, V] = sub %2, %3  # log_p\n"
      "%5 : f32[] = const -inf\n"
      "%6 : f32[N, V] = max %4, %5\n"
      "%7 : f32[N, 1] = sum %6, axis=1\n"
      "%8 : f32[] = sum %7, axis=all\n"
      "output loss = %8\n";
  TU_CHECK(!strcmp(buf, golden), "printed:\n%s", buf);
  free(buf);
  kd_graph_free(h);
}

static void test_tables(void) {
  TU_CHECK(!strcmp(kd_opcode_name(KD_IR_LSE), "logsumexp"), "LSE's name");
  TU_CHECK(!strcmp(kd_opcode_name(KD_IR_STOPGRAD), "stop_gradient"), "STOPGRAD's name");
  TU_CHECK(kd_opcode_nsrc(KD_IR_SELECT) == 3 && kd_opcode_nsrc(KD_IR_CONST) == 0, "arity");
  TU_CHECK(kd_opcode_class(KD_IR_SOFTMAX) == KD_CLASS_ROW, "class");
  TU_CHECK(!strcmp(kd_opcode_name(KD_OPCODE_COUNT), "?"), "out of range");
  for (int op = 0; op < KD_OPCODE_COUNT; op++)
    TU_CHECK(kd_opcode_name((kd_opcode)op) && kd_opcode_nsrc((kd_opcode)op) >= 0, "op %d", op);
}

int main(void) {
  g = kd_graph_new();
  N = kd_graph_sym(g, "N");
  V = kd_graph_sym(g, "V");
  TU_CHECK(kd_graph_sym(g, "N") == N && N != V, "symbols are found by name");
  TU_CHECK(!strcmp(kd_graph_sym_name(g, V), "V") && kd_graph_nsyms(g) == 2, "symbol names");
  test_inference();
  kd_graph_free(g);
  test_errors();
  test_verifier();
  test_printer();
  test_tables();
  return tu_done("test_ir");
}
