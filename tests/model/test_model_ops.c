/* The model ops (tanh, reshape, permute, matmul, gather_rows,
 * scatter_add_rows): values on hand-computed examples, the shape rules and
 * their errors, and every gradient against central finite differences in
 * double (gradcheck.h). Each gradient case builds loss = sum(f(a, b) * w)
 * with w fixed random weights, so the adjoint reaching f is not uniform.
 *
 * Tolerances: 1e-6 absolute and relative, as tests/passes/test_grad_ops.c
 * and for the same reason (tu_fd in testutil.h): the finite differences of
 * these O(1) polynomial or tanh losses are accurate to about 1e-10, so the
 * margin is four orders of magnitude while a wrong rule (a missing
 * transpose, a batch axis not summed) is off by O(1). */
#include "fuse.h"
#include "gradcheck.h"

#define ATOL 1e-6
#define RTOL 1e-6

/* ---- gradients ---------------------------------------------------------- */

typedef kd_node_id (*op_fn)(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids);

static kd_node_id f_tanh(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  return kd_unary(g, KD_IR_TANH, a);
}
static kd_node_id f_reshape(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  kd_dim sh[2] = {3, 8}; /* [2, 3, 4] -> [3, 8], then a product, so order matters */
  return kd_binary(g, KD_IR_MUL, kd_reshape(g, a, 2, sh), kd_reshape(g, a, 2, sh));
}
static kd_node_id f_permute3(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  int perm[3] = {2, 0, 1};
  return kd_permute(g, a, perm);
}
static kd_node_id f_permute4(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  int perm[4] = {0, 2, 1, 3}; /* [B, T, H, Dh] -> [B, H, T, Dh], as attention does */
  return kd_unary(g, KD_IR_TANH, kd_permute(g, a, perm));
}
static kd_node_id f_matmul(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  return kd_matmul(g, a, b);
}
static kd_node_id f_matmul_bt(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  int perm[3] = {0, 2, 1}; /* q k^T */
  return kd_matmul(g, a, kd_permute(g, b, perm));
}
static kd_node_id f_matmul_self(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  return kd_matmul(g, a, a); /* both operands at once: the adjoints add */
}
static kd_node_id f_gather(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  return kd_gather_rows(g, a, ids);
}
static kd_node_id f_scatter(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  return kd_scatter_add_rows(g, a, ids, 5);
}
static kd_node_id f_embed_linear(kd_graph *g, kd_node_id a, kd_node_id b, kd_node_id ids) {
  return kd_matmul(g, kd_gather_rows(g, a, ids), b);
}

static const struct {
  const char *name;
  op_fn f;
  int ra, rb; /* rb 0: no b */
  int64_t sa[4], sb[4];
} cases[] = {
    {"tanh", f_tanh, 2, 0, {3, 5}, {0}},
    {"reshape", f_reshape, 3, 0, {2, 3, 4}, {0}},
    {"permute rank 3", f_permute3, 3, 0, {2, 3, 4}, {0}},
    {"permute rank 4", f_permute4, 4, 0, {2, 3, 2, 2}, {0}},
    {"matmul", f_matmul, 2, 2, {3, 4}, {4, 5}},
    {"matmul shared b, rank 3", f_matmul, 3, 2, {2, 3, 4}, {4, 5}},
    {"matmul shared b, rank 4", f_matmul, 4, 2, {2, 2, 3, 4}, {4, 2}},
    {"matmul batched", f_matmul, 3, 3, {2, 3, 4}, {2, 4, 5}},
    {"matmul batched rank 4", f_matmul, 4, 4, {2, 2, 3, 4}, {2, 2, 4, 3}},
    {"matmul by a permuted b", f_matmul_bt, 3, 3, {2, 3, 4}, {2, 5, 4}},
    {"matmul a a", f_matmul_self, 2, 0, {4, 4}, {0}},
    {"gather_rows", f_gather, 2, 0, {5, 3}, {0}},
    {"scatter_add_rows", f_scatter, 3, 0, {2, 3, 3}, {0}},
    {"gather then matmul", f_embed_linear, 2, 2, {5, 4}, {4, 2}},
};

/* ids [2, 3] into 5 rows, with repeats (4 and 0 twice) and a row never
 * used (2), so the scatter both sums and leaves zeros. */
static const int64_t ids_data[6] = {4, 0, 4, 1, 3, 0};

static double *random_array(size_t n, unsigned long long *seed) {
  double *x = malloc(n * sizeof(double));
  for (size_t i = 0; i < n && x; i++) x[i] = tu_uniform(seed, -1, 1);
  return x;
}

static size_t prod(int rank, const int64_t *shape) {
  size_t n = 1;
  for (int i = 0; i < rank; i++) n *= (size_t)shape[i];
  return n;
}

static void test_grad(size_t c, unsigned long long *seed) {
  kd_graph *g = kd_graph_new();
  kd_dim da[4], db[4], di[2] = {2, 3};
  for (int i = 0; i < 4; i++) da[i] = cases[c].sa[i], db[i] = cases[c].sb[i];
  kd_node_id a = kd_input(g, "a", KD_F32, cases[c].ra, da);
  kd_node_id b = cases[c].rb ? kd_input(g, "b", KD_F32, cases[c].rb, db) : KD_NONE;
  kd_node_id ids = kd_input(g, "ids", KD_I64, 2, di);
  kd_node_id f = cases[c].f(g, a, b, ids);
  const kd_node *fn = kd_graph_node(g, f);
  TU_CHECK(fn != NULL, "%s: %s", cases[c].name, kd_graph_error(g));
  if (!fn) {
    kd_graph_free(g);
    return;
  }
  kd_node fcopy = *fn;
  kd_node_id w = kd_input(g, "w", KD_F32, fcopy.rank, fcopy.shape);
  kd_graph_add_output(g, "loss",
                      kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, f, w), KD_AXIS_ALL));
  TU_CHECK(!kd_graph_error(g), "%s: %s", cases[c].name, kd_graph_error(g));

  int64_t sw[4], sids[2] = {2, 3};
  for (int i = 0; i < fcopy.rank; i++) sw[i] = fcopy.shape[i];
  double *xa = random_array(prod(cases[c].ra, cases[c].sa), seed);
  double *xb = random_array(cases[c].rb ? prod(cases[c].rb, cases[c].sb) : 1, seed);
  double *xw = random_array(prod(fcopy.rank, sw), seed);
  kd_ref_input in[4] = {tu_input("a", cases[c].ra, cases[c].sa, xa),
                        tu_input("w", fcopy.rank, sw, xw),
                        tu_input_i64("ids", 2, sids, ids_data),
                        tu_input("b", cases[c].rb, cases[c].sb, xb)};
  size_t wrt[2] = {0, 3};
  gc_check(cases[c].name, g, in, cases[c].rb ? 4 : 3, wrt, cases[c].rb ? 2 : 1, ATOL, RTOL);
  free(xa);
  free(xb);
  free(xw);
  kd_graph_free(g);
}

/* ---- values ------------------------------------------------------------- */

/* Runs a one-output graph on inputs "a" (f64) and "ids" (i64). */
static kd_ref_value run1(kd_graph *g, kd_node_id out, int ra, const int64_t *sa,
                         const double *a, const int64_t *ids, int64_t nids) {
  kd_graph_add_output(g, "out", out);
  int64_t sids[1] = {nids};
  kd_ref_input in[2] = {tu_input("a", ra, sa, a), tu_input_i64("ids", 1, sids, ids)};
  return tu_run(g, in, ids ? 2 : 1, "out");
}

static void expect_values(const char *what, kd_ref_value v, const double *want, size_t n) {
  TU_CHECK(v.size == n, "%s: %zu elements, want %zu", what, v.size, n);
  for (size_t i = 0; i < n && v.size == n; i++)
    TU_CHECK(v.data[i] == want[i], "%s[%zu] = %g, want %g", what, i, v.data[i], want[i]);
  kd_ref_value_free(&v);
}

static void test_values(void) {
  { /* a batch of two [[1,2],[3,4]] times one shared b = [[1,2],[3,4]] (rows 0
       and 1 of a, gathered): [[7,10],[15,22]] twice */
    kd_graph *g = kd_graph_new();
    kd_dim s[3] = {2, 2, 2}, m[2] = {2, 2};
    kd_node_id a = kd_input(g, "a", KD_F64, 3, s);
    kd_node_id rows = kd_reshape(g, a, 2, (kd_dim[]){4, 2});
    kd_node_id b = kd_reshape(g, kd_gather_rows(g, rows, kd_iota(g, 1, (kd_dim[]){2}, 0)), 2, m);
    int64_t sa[3] = {2, 2, 2};
    double x[8] = {1, 2, 3, 4, 1, 2, 3, 4}, want[8] = {7, 10, 15, 22, 7, 10, 15, 22};
    expect_values("matmul", run1(g, kd_matmul(g, a, b), 3, sa, x, NULL, 0), want, 8);
    kd_graph_free(g);
  }
  { /* hand values for a plain 2 x 2 product */
    kd_graph *g = kd_graph_new();
    kd_dim m[2] = {2, 2};
    kd_node_id a = kd_input(g, "a", KD_F64, 2, m);
    kd_node_id t = kd_permute(g, a, (int[]){1, 0});
    int64_t sa[2] = {2, 2};
    double x[4] = {1, 2, 3, 4}, want[4] = {5, 11, 11, 25}; /* a a^T */
    expect_values("a a^T", run1(g, kd_matmul(g, a, t), 2, sa, x, NULL, 0), want, 4);
    kd_graph_free(g);
  }
  { /* permute [2, 3] -> [3, 2]: the transpose */
    kd_graph *g = kd_graph_new();
    kd_dim s[2] = {2, 3};
    kd_node_id p = kd_permute(g, kd_input(g, "a", KD_F64, 2, s), (int[]){1, 0});
    int64_t sa[2] = {2, 3};
    double x[6] = {0, 1, 2, 3, 4, 5}, want[6] = {0, 3, 1, 4, 2, 5};
    expect_values("permute", run1(g, p, 2, sa, x, NULL, 0), want, 6);
    kd_graph_free(g);
  }
  { /* gather rows 2, 0, 2 of a [3, 2]; scatter them back: row 2 twice, row 1 none */
    kd_graph *g = kd_graph_new();
    kd_dim s[2] = {3, 2}, n[1] = {3};
    kd_node_id a = kd_input(g, "a", KD_F64, 2, s);
    kd_node_id ids = kd_input(g, "ids", KD_I64, 1, n);
    kd_node_id r = kd_gather_rows(g, a, ids);
    kd_graph_add_output(g, "rows", r);
    kd_node_id back = kd_scatter_add_rows(g, r, ids, 3);
    int64_t sa[2] = {3, 2}, id[3] = {2, 0, 2};
    double x[6] = {1, 2, 3, 4, 5, 6}, want[6] = {1, 2, 0, 0, 10, 12};
    expect_values("scatter_add_rows", run1(g, back, 2, sa, x, id, 3), want, 6);
    kd_graph_free(g);
  }
}

/* ---- shapes and errors -------------------------------------------------- */

static void expect_error(kd_graph *g, kd_node_id id, const char *what, const char *text) {
  TU_CHECK(id == KD_NONE && kd_graph_error(g) && strstr(kd_graph_error(g), text),
           "%s: got %s, want an error with \"%s\"", what,
           kd_graph_error(g) ? kd_graph_error(g) : "no error", text);
}

static void test_shapes(void) {
  kd_graph *g = kd_graph_new();
  kd_dim B = kd_graph_sym(g, "B"), T = kd_graph_sym(g, "T");
  kd_dim btd[3] = {B, T, 8}, bthd[4] = {B, T, 2, 4}, tb[2] = {T, B}, bt[2] = {B, T};
  kd_node_id x = kd_input(g, "x", KD_F32, 3, btd);
  kd_node_id ids = kd_input(g, "ids", KD_I32, 2, bt);
  kd_node_id r = kd_reshape(g, x, 4, bthd);
  kd_node_id p = kd_permute(g, r, (int[]){0, 2, 1, 3});
  kd_node_id s = kd_matmul(g, p, kd_permute(g, p, (int[]){0, 1, 3, 2}));
  kd_node_id e = kd_gather_rows(g, kd_input(g, "table", KD_F32, 2, (kd_dim[]){11, 8}), ids);
  kd_node_id sw = kd_reshape(g, ids, 2, tb); /* the same symbols in another order: allowed */
  TU_CHECK(!kd_graph_error(g), "model shapes: %s", kd_graph_error(g));
  const kd_node *sn = kd_graph_node(g, s), *en = kd_graph_node(g, e);
  TU_CHECK(sn && sn->rank == 4 && sn->shape[0] == B && sn->shape[1] == 2 && sn->shape[2] == T &&
               sn->shape[3] == T,
           "attention scores are [B, 2, T, T]");
  TU_CHECK(en && en->rank == 3 && en->shape[2] == 8 && en->dtype == KD_F32,
           "an embedding is [B, T, 8] f32");
  TU_CHECK(sw != KD_NONE, "reshape [B, T] -> [T, B]");
  char buf[4096] = "";
  FILE *f = fmemopen(buf, sizeof buf - 1, "w");
  if (f) {
    kd_graph_print(g, f);
    fclose(f);
  }
  TU_CHECK(strstr(buf, "permute %2, perm=[0, 2, 1, 3]"), "printer: %s", buf);
  TU_CHECK(strstr(buf, "f32[B, T, 2, 4] = reshape %0"), "printer: %s", buf);
  char err[256];
  TU_CHECK(kd_graph_verify(g, err, sizeof err) == KD_OK, "verify: %s", err);
  kd_graph_free(g);

  /* each error on a fresh graph: the first error sticks */
  const char *what[] = {"matmul K", "reshape size", "reshape symbols", "permute", "gather ids",
                        "matmul batch", "scatter width"};
  for (int k = 0; k < 7; k++) {
    g = kd_graph_new();
    B = kd_graph_sym(g, "B");
    T = kd_graph_sym(g, "T");
    kd_node_id a = kd_input(g, "a", KD_F32, 2, (kd_dim[]){3, 4});
    kd_node_id a3 = kd_input(g, "a3", KD_F32, 3, (kd_dim[]){B, 3, 4});
    kd_node_id fi = kd_input(g, "fids", KD_F32, 1, (kd_dim[]){3});
    kd_node_id ii = kd_input(g, "iids", KD_I64, 1, (kd_dim[]){3});
    switch (k) {
    case 0: expect_error(g, kd_matmul(g, a, a), what[k], "matmul: [3, 4] times [3, 4]"); break;
    case 1:
      expect_error(g, kd_reshape(g, a, 2, (kd_dim[]){5, 2}), what[k], "not have the same size");
      break;
    case 2:
      expect_error(g, kd_reshape(g, a3, 3, (kd_dim[]){T, 4, 3}), what[k], "same size");
      break;
    case 3: expect_error(g, kd_permute(g, a, (int[]){0, 0}), what[k], "not a permutation"); break;
    case 4: expect_error(g, kd_gather_rows(g, a, fi), what[k], "integer ids"); break;
    case 5: {
      kd_node_id o = kd_input(g, "o", KD_F32, 3, (kd_dim[]){T, 4, 3});
      expect_error(g, kd_matmul(g, a3, o), what[k], "matmul: [B, 3, 4] times [T, 4, 3]");
      break;
    }
    case 6: expect_error(g, kd_scatter_add_rows(g, fi, ii, 5), what[k], "scatter_add_rows");
      break;
    }
    kd_graph_free(g);
  }
}

/* An id outside the table is an error when run, naming the op. */
static void test_bad_id(void) {
  kd_graph *g = kd_graph_new();
  kd_node_id a = kd_input(g, "a", KD_F64, 2, (kd_dim[]){3, 2});
  kd_node_id ids = kd_input(g, "ids", KD_I64, 1, (kd_dim[]){2});
  kd_graph_add_output(g, "out", kd_gather_rows(g, a, ids));
  double x[6] = {0};
  int64_t sa[2] = {3, 2}, si[1] = {2}, id[2] = {1, 3};
  kd_ref_input in[2] = {tu_input("a", 2, sa, x), tu_input_i64("ids", 1, si, id)};
  kd_ref_value out[1];
  char err[256] = "";
  TU_CHECK(kd_ref_exec(g, in, 2, out, err, sizeof err) == KD_ERR_INVALID &&
               strstr(err, "gather_rows: id 3 at 1 is outside 0..2"),
           "a bad id: %s", err);
  kd_graph_free(g);
}

/* The row-kernel compiler refuses the model ops by name. */
static void test_fuse_refuses(void) {
  for (int k = 0; k < 2; k++) {
    kd_graph *g = kd_graph_new();
    kd_dim nv[2] = {kd_graph_sym(g, "N"), kd_graph_sym(g, "V")};
    kd_node_id s = kd_input(g, "student", KD_F32, 2, nv);
    kd_node_id f = k == 0 ? kd_unary(g, KD_IR_TANH, s)
                          : kd_reshape(g, s, 2, nv); /* [N, V]: it passes the shape test */
    kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, f, KD_AXIS_ALL));
    kd_schedule *sc = NULL;
    char err[256] = "";
    kd_status st = kd_fuse(g, &sc, err, sizeof err);
    TU_CHECK(st == KD_ERR_UNSUPPORTED && strstr(err, k == 0 ? "tanh" : "reshape"),
             "fuse of a model op: %d %s", (int)st, err);
    if (st == KD_OK) kd_schedule_free(sc);
    kd_graph_free(g);
  }
}

int main(void) {
  unsigned long long seed = 0x2545f4914f6cdd1dull;
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) test_grad(c, &seed);
  test_values();
  test_shapes();
  test_bad_id();
  test_fuse_refuses();
  return tu_done("test_model_ops");
}
