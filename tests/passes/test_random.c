/* Random graphs through the pipeline: the passes must keep every value.
 * Each case builds a random expression over teacher, student [N, V] and a
 * row scalar r [N, 1] (elementwise ops, row reductions, softmaxes, selects,
 * constants among 0, 1, -1, 2, 0.5), sums it against fixed weights into a
 * loss, and compares the loss and the gradient of the whole pipeline with
 * the lowered graph's loss and its gradient from autodiff alone. Cases
 * whose reference values are not all finite are skipped (there the
 * canonical forms may legitimately differ: mulz's 0 * inf = 0). The
 * tolerance, 1e-9 relative to the largest gradient element, allows for the
 * reassociation the simplifier does (a few dozen roundings of 1e-16 each,
 * amplified by at most a few exps of O(10) values), while a wrong rule
 * changes a value at O(1). */
#include "passes.h"
#include "testutil.h"

enum { NR = 3, NV = 6, CASES = 300, OPS = 10 };

static kd_node_id pick(kd_node_id *pool, int n, unsigned long long *seed) {
  return pool[(int)tu_uniform(seed, 0, n)];
}

static kd_graph *random_graph(unsigned long long *seed) {
  kd_graph *g = kd_graph_new();
  kd_dim n = kd_graph_sym(g, "N"), v = kd_graph_sym(g, "V");
  kd_dim nv[2] = {n, v}, n1[2] = {n, 1};
  kd_node_id pool[4 + OPS];
  int np = 0;
  pool[np++] = kd_input(g, "student", KD_F32, 2, nv);
  pool[np++] = kd_input(g, "teacher", KD_F32, 2, nv);
  pool[np++] = kd_input(g, "r", KD_F32, 2, n1);
  kd_node_id w = kd_input(g, "w", KD_F32, 2, nv);
  static const double consts[] = {0, 1, -1, 2, 0.5};
  static const kd_opcode bin[] = {KD_IR_ADD, KD_IR_SUB, KD_IR_MUL, KD_IR_MULZ, KD_IR_MAX,
                                  KD_IR_MIN};
  static const kd_opcode un[] = {KD_IR_NEG, KD_IR_ABS, KD_IR_STOPGRAD};
  for (int k = 0; k < OPS; k++) {
    kd_node_id a = pick(pool, np, seed), b = pick(pool, np, seed), r = KD_NONE;
    double u = tu_uniform(seed, 0, 1);
    if (u < 0.15) b = kd_const(g, consts[(int)tu_uniform(seed, 0, 5)], KD_F32);
    int choice = (int)tu_uniform(seed, 0, 12);
    switch (choice) {
    case 0: case 1: case 2: case 3:
      r = kd_binary(g, bin[(int)tu_uniform(seed, 0, 6)], a, b);
      break;
    case 4: r = kd_unary(g, un[(int)tu_uniform(seed, 0, 3)], a); break;
    case 5: /* exp of a tamed value, so nothing overflows */
      r = kd_unary(g, KD_IR_EXP, kd_binary(g, KD_IR_MUL, kd_const(g, 0.25, KD_F32),
                                           kd_binary(g, KD_IR_MIN, a, kd_const(g, 8, KD_F32))));
      break;
    case 6: r = kd_reduce(g, KD_IR_SUM, a, 1); break;
    case 7: r = kd_reduce(g, KD_IR_LSE, a, 1); break;
    case 8: r = kd_row(g, KD_IR_SOFTMAX, a, 1); break;
    case 9: r = kd_row(g, KD_IR_LOG_SOFTMAX, a, 1); break;
    case 10: r = kd_select(g, kd_binary(g, KD_IR_GT, a, b), a, b); break;
    default: /* a softmax-weighted sum, the form the row rules target */
      r = kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, kd_row(g, KD_IR_SOFTMAX, a, 1), b), 1);
      break;
    }
    pool[np++] = r;
  }
  kd_node_id last = kd_binary(g, KD_IR_ADD, pool[np - 1], pool[np - 2]);
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, last, w),
                                           KD_AXIS_ALL));
  return g;
}

static int all_finite(const kd_ref_value *v) {
  for (size_t i = 0; i < v->size; i++)
    if (!isfinite(v->data[i])) return 0;
  return v->size > 0;
}

int main(void) {
  unsigned long long seed = 0x5eed;
  int compared = 0;
  for (int c = 0; c < CASES; c++) {
    kd_graph *g = random_graph(&seed);
    double s[NR * NV], t[NR * NV], r[NR], w[NR * NV];
    for (int i = 0; i < NR * NV; i++) {
      s[i] = tu_uniform(&seed, -3, 3);
      t[i] = tu_uniform(&seed, -3, 3);
      w[i] = tu_uniform(&seed, -1, 1);
    }
    for (int i = 0; i < NR; i++) r[i] = tu_uniform(&seed, -3, 3);
    int64_t nv[2] = {NR, NV}, n1[2] = {NR, 1};
    kd_ref_input in[4] = {tu_input("student", 2, nv, s), tu_input("teacher", 2, nv, t),
                          tu_input("r", 2, n1, r), tu_input("w", 2, nv, w)};
    kd_graph *raw = NULL, *full = NULL;
    char err[256] = "";
    TU_CHECK(!kd_graph_error(g), "case %d: %s", c, kd_graph_error(g));
    TU_CHECK(kd_autodiff(g, "loss", "student", "grad", &raw, err, sizeof err) == KD_OK,
             "case %d: autodiff: %s", c, err);
    TU_CHECK(kd_pipeline_run(g, NULL, &full, err, sizeof err) == KD_OK, "case %d: %s", c, err);
    if (raw && full) {
      kd_ref_value l0 = tu_run(raw, in, 4, "loss"), g0 = tu_run(raw, in, 4, "grad");
      kd_ref_value l1 = tu_run(full, in, 4, "loss"), g1 = tu_run(full, in, 4, "grad");
      if (all_finite(&l0) && all_finite(&g0) && g1.size == g0.size && l1.size == 1) {
        compared++;
        double scale = 1;
        for (size_t i = 0; i < g0.size; i++) scale = fmax(scale, fabs(g0.data[i]));
        int bad = !tu_close(l1.data[0], l0.data[0], 1e-9 * fmax(1, fabs(l0.data[0])), 0);
        for (size_t i = 0; i < g0.size; i++)
          bad += !tu_close(g1.data[i], g0.data[i], 1e-9 * scale, 0);
        TU_CHECK(!bad, "case %d: loss %.17g vs %.17g, %d values differ", c, l1.data[0],
                 l0.data[0], bad);
        if (bad) {
          kd_graph_print(g, stderr);
          kd_graph_print(full, stderr);
        }
      }
      kd_ref_value_free(&l0);
      kd_ref_value_free(&g0);
      kd_ref_value_free(&l1);
      kd_ref_value_free(&g1);
    }
    kd_graph_free(raw);
    kd_graph_free(full);
    kd_graph_free(g);
  }
  /* most random cases must be comparable, or this test checks nothing */
  TU_CHECK(compared > CASES / 2, "only %d of %d cases had finite references", compared, CASES);
  printf("compared %d of %d random graphs\n", compared, CASES);
  return tu_done("test_random");
}
