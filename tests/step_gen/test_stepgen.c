/* Step programs from model graphs (codegen/stepgen.h), run by the step
 * executor (runtime/step.h) against the reference executor (ir/refexec.h):
 *   - the tiny GPT's forward graph: logits;
 *   - its training graph: phase 1 (logits), then logits.grad filled, then
 *     phase 2 (every parameter's gradient); the same for a 2-layer model
 *     with rmsnorm and SwiGLU; phase 1 is as long as the forward program;
 *   - each linear layer's weight gradient is one GEMM ([K, B*T] x [B*T, N],
 *     written straight into its slot), and the program has 3 GEMMs per
 *     linear layer and 6 per attention, no more;
 *   - 1 and 2 threads give bit-identical outputs, and so does the program
 *     after serialisation and deserialisation;
 *   - the arena is the memory plan's: as large as its highest value, no
 *     larger, and smaller than the values without reuse; it starts as NaN
 *     (and the output slots too), so a value read before it is written
 *     shows;
 *   - the paths the models do not take (check_edges), against the
 *     reference too;
 *   - errors: an unbound symbol, a split input that is not there, a dtype
 *     the step does not take.
 *
 * Tolerance. The inputs are rounded to f32 first, so both executors see the
 * same numbers; the difference is the f32 rounding of the step's every op
 * (unit roundoff 6e-8) over the model's depth (about 60 dependent ops
 * forward, 120 backward, sums of up to 40 terms). Measured: at most 5e-7
 * of the tensor's largest magnitude (printed below). The test allows 1e-4
 * of that magnitude per element, 200 times more, for other BLAS kernels'
 * summation orders; a wrong stride, operand or missed instruction gives
 * errors of the order of the values themselves. */
#include <stdint.h>

#include "kernels.h"
#include "memplan.h"
#include "models.h"
#include "step.h"
#include "stepgen.h"
#include "threadpool.h"
#include "train_graph.h"

#define REL_TOL 1e-4

static const kd_sym_binding bind[2] = {{"B", SG_B}, {"T", SG_T}};

/* Buffers for a program's slots: inputs converted from the reference's
   doubles (logits.grad left NaN: bound after phase 1), outputs NaN. */
typedef struct bufs {
  void **slot;
  void *arena;
  int32_t nslots;
} bufs;

static void *nan_alloc(int64_t bytes) {
  size_t n = ((size_t)bytes + 63) / 64 * 64 + 64;
  void *p = aligned_alloc(64, n);
  if (p) memset(p, 0xff, n); /* f32 NaN, i64 -1, bool true */
  return p;
}

static const kd_ref_input *find_input(const sg_inputs *s, const char *name) {
  for (size_t i = 0; i < s->n; i++)
    if (!strcmp(s->in[i].name, name)) return &s->in[i];
  return NULL;
}

static void fill_input(const kd_step_slot *sl, void *buf, const kd_ref_input *in) {
  size_t n = sg_size(in);
  if (sl->dtype == KD_I64) memcpy(buf, in->data, n * sizeof(int64_t));
  else
    for (size_t k = 0; k < n; k++) ((float *)buf)[k] = (float)((const double *)in->data)[k];
}

static bufs bufs_make(const kd_step_prog *p, const sg_inputs *s) {
  bufs b = {calloc((size_t)p->nslots + 1, sizeof(void *)), nan_alloc(p->arena_bytes), p->nslots};
  for (int32_t k = 0; k < p->nslots; k++) {
    const kd_step_slot *sl = &p->slots[k];
    int64_t e = 1;
    for (int d = 0; d < sl->rank; d++) e *= sl->shape[d];
    b.slot[k] = nan_alloc(e * (int64_t)kd_dtype_size(sl->dtype));
    const kd_ref_input *in = find_input(s, sl->name);
    TU_CHECK(sl->output || in, "slot %s is no input", sl->name);
    if (!sl->output && in && strcmp(sl->name, "logits.grad")) fill_input(sl, b.slot[k], in);
  }
  return b;
}

static void bufs_free(bufs *b) {
  for (int32_t k = 0; k < b->nslots; k++) free(b->slot[k]);
  free(b->slot);
  free(b->arena);
}

/* Both phases (or the whole program when there is one), logits.grad bound
   between them. */
static kd_status run(const kd_step_prog *p, const sg_inputs *s, bufs *b, kd_pool *pool) {
  char err[256] = "";
  kd_status st = kd_step_run(p, b->arena, b->slot, 0, p->split, pool, err, sizeof err);
  TU_CHECK(st == KD_OK, "phase 1: %s", err);
  int32_t lg = kd_step_find_slot(p, "logits.grad");
  if (lg >= 0) fill_input(&p->slots[lg], b->slot[lg], find_input(s, "logits.grad"));
  if (st == KD_OK)
    st = kd_step_run(p, b->arena, b->slot, p->split, p->ninstr, pool, err, sizeof err);
  TU_CHECK(st == KD_OK, "phase 2: %s", err);
  return st;
}

/* Every output slot against the reference's output of the same name; the
   largest error relative to each tensor's largest magnitude. */
static double compare_outputs(const char *what, const kd_step_prog *p, const bufs *b,
                              const kd_graph *g, const sg_inputs *s) {
  size_t nout = kd_graph_noutputs(g);
  kd_ref_value *ref = calloc(nout + 1, sizeof *ref);
  char err[256] = "";
  double worst = 0;
  bool ref_ok = kd_ref_exec(g, s->in, s->n, ref, err, sizeof err) == KD_OK;
  TU_CHECK(ref_ok, "%s: %s", what, err);
  for (size_t o = 0; o < nout && ref_ok; o++) {
    const char *name = kd_graph_output_name(g, o);
    int32_t k = kd_step_find_slot(p, name);
    TU_CHECK(k >= 0 && p->slots[k].output, "%s: no output slot %s", what, name);
    if (k < 0) continue;
    const void *got = b->slot[k];
    kd_dtype t = p->slots[k].dtype;
    double scale = 0, err_max = 0;
    for (size_t i = 0; i < ref[o].size; i++) scale = fmax(scale, fabs(ref[o].data[i]));
    int bad = 0;
    for (size_t i = 0; i < ref[o].size; i++) {
      double x = t == KD_F32 ? ((const float *)got)[i]
                 : t == KD_I64 ? (double)((const int64_t *)got)[i]
                               : ((const uint8_t *)got)[i];
      double e = fabs(x - ref[o].data[i]);
      if (!(e <= REL_TOL * scale) && bad++ < 3)
        TU_CHECK(0, "%s: %s[%zu] = %.9g, reference %.9g", what, name, i, x, ref[o].data[i]);
      err_max = fmax(err_max, isnan(e) ? INFINITY : e);
    }
    if (scale > 0) worst = fmax(worst, err_max / scale);
    kd_ref_value_free(&ref[o]);
  }
  free(ref);
  return worst;
}

static bool outputs_equal(const kd_step_prog *p, const bufs *a, const bufs *b) {
  for (int32_t k = 0; k < p->nslots; k++) {
    const kd_step_slot *sl = &p->slots[k];
    int64_t e = 1;
    for (int d = 0; d < sl->rank; d++) e *= sl->shape[d];
    if (sl->output && memcmp(a->slot[k], b->slot[k], (size_t)e * kd_dtype_size(sl->dtype)))
      return false;
  }
  return true;
}

/* The arena is its highest value's end (64-byte aligned), and reuse makes
   it smaller than all arena values side by side. */
static void check_arena(const char *what, const kd_step_prog *p) {
  int64_t top = 0, sum = 0;
  for (int32_t v = 0; v < p->nvalues; v++) {
    const kd_step_value *val = &p->values[v];
    if (val->loc != KD_LOC_ARENA) continue;
    int64_t bytes = (val->elems * (int64_t)kd_dtype_size(val->dtype) + 63) / 64 * 64;
    top = val->offset + bytes > top ? val->offset + bytes : top;
    sum += bytes;
  }
  TU_CHECK(p->arena_bytes == top && top < sum, "%s: arena %lld, highest value ends at %lld, "
           "values %lld", what, (long long)p->arena_bytes, (long long)top, (long long)sum);
  printf("%s: %d instructions (split %d), %d slots, arena %lld bytes (values without reuse %lld)\n",
         what, p->ninstr, p->split, p->nslots, (long long)p->arena_bytes, (long long)sum);
}

/* One GEMM per linear weight's gradient, 3 per linear layer and 6 per
   attention in all, and 3 for a tied head (unembed: no linear.weight). */
static void check_gemms(const char *what, const kd_step_prog *p, const kd_model *m, int nattn) {
  int gemms = 0, linears = 0;
  for (int32_t i = 0; i < p->ninstr; i++) gemms += p->instr[i].kind == KD_STEP_GEMM;
  for (size_t i = 0; i < m->layers.nparams; i++) {
    const char *name = m->layers.params[i].name;
    const kd_node *n = kd_graph_node(m->g, m->layers.params[i].id);
    if (n->rank != 2 || !strncmp(name, "embed", 5)) continue;
    linears++;
    char gname[200];
    snprintf(gname, sizeof gname, "grad.%s", name);
    int32_t slot = kd_step_find_slot(p, gname), writers = 0;
    const kd_step_instr *w = NULL;
    for (int32_t k = 0; k < p->ninstr; k++) {
      const kd_step_instr *in = &p->instr[k];
      if (in->dst.value >= 0 && p->values[in->dst.value].loc == KD_LOC_SLOT &&
          p->values[in->dst.value].slot == slot)
        writers++, w = in;
    }
    TU_CHECK(writers == 1 && w->kind == KD_STEP_GEMM && w->gemm.batch == 1 &&
                 w->gemm.k == SG_B * SG_T && w->gemm.m == n->shape[0] &&
                 w->gemm.n == n->shape[1] && w->gemm.trans_a && !w->gemm.trans_b,
             "%s: %s is not one [K, B*T] x [B*T, N] product (%d writers)", what, gname, writers);
  }
  int tied = kd_layers_find(&m->layers, "linear.weight") == NULL;
  TU_CHECK(gemms == 3 * linears + 6 * nattn + 3 * tied,
           "%s: %d GEMMs for %d linear layers, %d attentions and %d tied heads", what, gemms,
           linears, nattn, tied);
}

/* Rounds every float input to f32, so the reference sees the step's numbers. */
static void round_inputs(sg_inputs *s) {
  for (size_t i = 0; i < s->n; i++) {
    if (s->in[i].dtype != KD_F64) continue;
    double *x = (double *)s->in[i].data;
    for (size_t k = 0; k < sg_size(&s->in[i]); k++) x[k] = (float)x[k];
  }
}

/* The program's FUSED instructions (codegen/stepfuse.h). */
static int count_fused(const kd_step_prog *p) {
  int n = 0;
  for (int32_t i = 0; i < p->ninstr; i++) n += p->instr[i].kind == KD_STEP_FUSED;
  return n;
}

/* In a forward program (no split), the MLP's whole elementwise part between
   its two products (bias, GELU) is one FUSED instruction: each instruction
   computing an exp (only the GELU has one) is a FUSED between two GEMMs.
   Returns their number. */
static int check_gelu(const char *what, const kd_step_prog *p) {
  int n = 0;
  for (int32_t i = 0; i < p->ninstr; i++) {
    const kd_step_instr *in = &p->instr[i];
    bool exp = in->kind == KD_STEP_MAP && in->fn == KD_SF_EXP;
    for (int32_t t = 0; in->kind == KD_STEP_FUSED && t < p->exprs[in->expr].nop; t++)
      exp = exp || p->exprs[in->expr].op[t].fn == KD_SF_EXP;
    if (!exp) continue;
    n++;
    TU_CHECK(in->kind == KD_STEP_FUSED && i > 0 && i + 1 < p->ninstr &&
                 p->instr[i - 1].kind == KD_STEP_GEMM && p->instr[i + 1].kind == KD_STEP_GEMM,
             "%s: instruction %d's exp is not one FUSED between the MLP's products", what, i);
  }
  return n;
}

/* Generates and checks a program, and the same unfused (KDC_NO_FUSE=1),
   which must give the same bits; returns the unfused split (-1 on
   failure). */
static int32_t check_program(const char *what, const kd_graph *g, const char *split,
                             const sg_inputs *s, const kd_model *m, int nattn, kd_pool *pool2) {
  kd_step_prog *p = NULL, *u = NULL;
  char err[256] = "";
  TU_CHECK(kd_stepgen(g, bind, 2, split, &p, err, sizeof err) == KD_OK, "%s: %s", what, err);
  setenv("KDC_NO_FUSE", "1", 1);
  TU_CHECK(kd_stepgen(g, bind, 2, split, &u, err, sizeof err) == KD_OK, "%s: %s", what, err);
  unsetenv("KDC_NO_FUSE");
  if (!p || !u) {
    kd_step_free(p);
    kd_step_free(u);
    return -1;
  }
  int32_t first = u->split;
  printf("%s: %d instructions unfused, %d fused (%d FUSED)\n", what, u->ninstr, p->ninstr,
         count_fused(p));
  TU_CHECK(count_fused(u) == 0 && count_fused(p) > 0 && p->ninstr < u->ninstr,
           "%s: fusion did nothing", what);
  if (!split && strstr(what, "tiny")) /* a gpt of 1 layer: one GELU */
    TU_CHECK(check_gelu(what, p) == 1, "%s: the GELU is not one instruction", what);
  check_arena(what, p);
  if (split) {
    TU_CHECK(p->split > 0 && p->split < p->ninstr, "%s: split %d of %d", what, p->split,
             p->ninstr);
    check_gemms(what, p, m, nattn);
  } else {
    TU_CHECK(p->split == p->ninstr, "%s: split %d of %d", what, p->split, p->ninstr);
  }
  bufs one = bufs_make(p, s), two = bufs_make(p, s), again = bufs_make(p, s);
  kd_blas_set_threads(1);
  if (run(p, s, &one, NULL) == KD_OK)
    printf("%s: largest error %.2g of the tensor's largest magnitude\n", what,
           compare_outputs(what, p, &one, g, s));
  kd_blas_set_threads(2);
  if (run(p, s, &two, pool2) == KD_OK)
    TU_CHECK(outputs_equal(p, &one, &two), "%s: 1 and 2 threads differ", what);
  uint8_t *buf = NULL;
  size_t len = 0;
  kd_step_prog *q = NULL;
  TU_CHECK(kd_step_serialize(p, &buf, &len) == KD_OK &&
               kd_step_deserialize(buf, len, &q, err, sizeof err) == KD_OK,
           "%s: serialisation: %s", what, err);
  if (q && run(q, s, &again, pool2) == KD_OK)
    TU_CHECK(outputs_equal(p, &one, &again), "%s: the deserialised program differs", what);
  bufs plain = bufs_make(u, s);
  if (run(u, s, &plain, pool2) == KD_OK)
    TU_CHECK(outputs_equal(p, &one, &plain), "%s: fused and unfused differ", what);
  bufs_free(&plain);
  kd_step_free(u);
  kd_blas_set_threads(1);
  free(buf);
  kd_step_free(q);
  bufs_free(&one);
  bufs_free(&two);
  bufs_free(&again);
  kd_step_free(p);
  return first;
}

static void check_model(const kd_program *prog, const char *inst, int nattn, kd_pool *pool2) {
  kd_model m;
  if (mt_lower(prog, inst, &m) != KD_OK) return;
  kd_graph *tg = NULL, *fg = NULL;
  char err[256] = "", what[64];
  TU_CHECK(kd_train_graph(&m, &tg, err, sizeof err) == KD_OK, "%s: %s", inst, err);
  TU_CHECK(kd_forward_graph(&m, &fg, err, sizeof err) == KD_OK, "%s: %s", inst, err);
  sg_inputs s;
  sg_inputs_make(&m, 0xfeedbeefull, &s);
  round_inputs(&s);
  int32_t fwd = -1, train = -2;
  snprintf(what, sizeof what, "%s forward", inst);
  if (fg) fwd = check_program(what, fg, NULL, &s, &m, nattn, pool2);
  snprintf(what, sizeof what, "%s train", inst);
  if (tg) train = check_program(what, tg, KD_LOGITS_GRAD, &s, &m, nattn, pool2);
  /* the first phase is the forward pass and nothing else */
  TU_CHECK(fwd == train, "%s: the first phase has %d instructions, the forward %d", inst, train,
           fwd);
  sg_inputs_free(&s);
  kd_graph_free(tg);
  kd_graph_free(fg);
  kd_model_free(&m);
}

/* The paths the models do not take, each an output compared with the
   reference: an input as an output (copied), a constant (filled), a
   strided view (copied), a second name of a node, reductions over every
   axis of a strided view and of a broadcast, a reduction and a
   log-softmax over the first axis, products of a broadcast (copied first)
   and of two transposes (GEMM flags), comparisons (bool) and iota (i64),
   rank-0 values, a one-hot sum as a slice. */
static void check_edges(kd_pool *pool2) {
  kd_graph *g = kd_graph_new();
  kd_dim n4[2] = {kd_graph_sym(g, "N"), 4}, s45[2] = {4, 5}, n1[2] = {n4[0], 1};
  static const int tr[2] = {1, 0};
  kd_node_id x = kd_input(g, "x", KD_F32, 2, n4), w = kd_input(g, "w", KD_F32, 2, s45);
  kd_node_id ex = kd_unary(g, KD_IR_EXP, x), xt = kd_permute(g, x, tr);
  kd_node_id r = kd_reduce(g, KD_IR_RMAX, x, 0); /* [1, 4] */
  kd_node_id mm = kd_matmul(g, x, w);
  kd_graph_add_output(g, "x.copy", x);
  kd_graph_add_output(g, "c", kd_expand(g, kd_const(g, 2.5, KD_F32), 2, n4));
  kd_graph_add_output(g, "c0", kd_const(g, -1.5, KD_F32));
  kd_graph_add_output(g, "t", xt);
  kd_graph_add_output(g, "sum.all", kd_reduce(g, KD_IR_SUM, kd_permute(g, ex, tr), KD_AXIS_ALL));
  kd_graph_add_output(g, "sum.bcast", kd_reduce(g, KD_IR_SUM, kd_expand(g, r, 2, n4), KD_AXIS_ALL));
  kd_graph_add_output(g, "lse0", kd_reduce(g, KD_IR_LSE, x, 0));
  kd_graph_add_output(g, "max.all", kd_reduce(g, KD_IR_RMAX, ex, KD_AXIS_ALL));
  kd_graph_add_output(g, "logsm0", kd_row(g, KD_IR_LOG_SOFTMAX, x, 0));
  kd_graph_add_output(g, "mm", mm);
  kd_graph_add_output(g, "mm.again", mm);
  kd_graph_add_output(g, "mm.bcast", kd_matmul(g, kd_expand(g, r, 2, n4), w));
  kd_graph_add_output(g, "mm.trans", kd_matmul(g, kd_permute(g, w, tr), xt)); /* [5, N] */
  kd_node_id pos = kd_binary(g, KD_IR_GT, x, kd_const(g, 0, KD_F32));
  kd_graph_add_output(g, "pos", pos);
  kd_graph_add_output(g, "sel", kd_select(g, pos, x, kd_const(g, -1, KD_F32)));
  kd_graph_add_output(g, "idx", kd_iota(g, 2, n1, 0));
  /* y[:, 2, :] as layers.c writes it (a view), read by a product through
     its leading dimension (rows 12 floats apart: no copy); the same sum
     where the product is an output too (computed) */
  kd_dim n34[3] = {n4[0], 3, 4}, s31[2] = {3, 1};
  kd_node_id y = kd_input(g, "y", KD_F32, 3, n34);
  kd_node_id iota3 = kd_iota(g, 2, s31, 0);
  kd_node_id hot2 = kd_cast(g, kd_binary(g, KD_IR_EQ, iota3, kd_const(g, 2, KD_I64)), KD_F32);
  kd_node_id hot1 = kd_cast(g, kd_binary(g, KD_IR_EQ, iota3, kd_const(g, 1, KD_I64)), KD_F32);
  kd_node_id slice = kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, y, hot2), 1); /* [N, 1, 4] */
  kd_graph_add_output(g, "slice", slice);
  kd_graph_add_output(g, "slice.mm", kd_matmul(g, kd_reshape(g, slice, 2, n4), w));
  kd_node_id prod = kd_binary(g, KD_IR_MUL, y, hot1);
  kd_graph_add_output(g, "prod", prod);
  kd_graph_add_output(g, "sum.kept", kd_reduce(g, KD_IR_SUM, prod, 1));
  TU_CHECK(!kd_graph_error(g), "edges: %s", kd_graph_error(g));
  unsigned long long seed = 77;
  double xd[3 * 4], wd[4 * 5], yd[3 * 3 * 4];
  for (int i = 0; i < 12; i++) xd[i] = (float)tu_uniform(&seed, -2, 2);
  for (int i = 0; i < 20; i++) wd[i] = (float)tu_uniform(&seed, -1, 1);
  for (int i = 0; i < 36; i++) yd[i] = (float)tu_uniform(&seed, -1, 1);
  int64_t xs[2] = {3, 4}, ws[2] = {4, 5}, ys[3] = {3, 3, 4};
  kd_ref_input in[3] = {tu_input("x", 2, xs, xd), tu_input("w", 2, ws, wd),
                        tu_input("y", 3, ys, yd)};
  sg_inputs s = {.n = 3, .in = in};
  kd_sym_binding nb = {"N", 3};
  kd_step_prog *p = NULL;
  char err[256] = "";
  TU_CHECK(kd_stepgen(g, &nb, 1, NULL, &p, err, sizeof err) == KD_OK, "edges: %s", err);
  if (p) {
    int copies = 0, trans = 0, reduces = 0;
    for (int32_t i = 0; i < p->ninstr; i++) {
      copies += p->instr[i].kind == KD_STEP_MAP && p->instr[i].fn == KD_SF_COPY;
      trans += p->instr[i].kind == KD_STEP_GEMM && p->instr[i].gemm.trans_a &&
               p->instr[i].gemm.trans_b;
      reduces += p->instr[i].kind == KD_STEP_REDUCE;
    }
    /* copies: x.copy, t, mm.again, the strided sum's and the broadcast
       product's operands, the broadcast sum's, slice (an output view), and
       the two one-hot casts; the transposes: none; reductions: r, sum.all,
       sum.bcast, lse0, max.all, sum.kept */
    TU_CHECK(copies == 9 && trans == 1 && reduces == 6,
             "edges: %d copies, %d GEMMs with two transposes, %d reductions", copies, trans,
             reduces);
    bufs b1 = bufs_make(p, &s), b2 = bufs_make(p, &s);
    if (run(p, &s, &b1, NULL) == KD_OK) compare_outputs("edges", p, &b1, g, &s);
    if (run(p, &s, &b2, pool2) == KD_OK)
      TU_CHECK(outputs_equal(p, &b1, &b2), "edges: 1 and 2 threads differ");
    bufs_free(&b1);
    bufs_free(&b2);
    kd_step_free(p);
  }
  kd_graph_free(g);
}

static void check_errors(void) {
  kd_graph *g = kd_graph_new();
  kd_dim n[2] = {kd_graph_sym(g, "N"), 4};
  kd_node_id x = kd_input(g, "x", KD_F32, 2, n);
  kd_graph_add_output(g, "a", kd_unary(g, KD_IR_EXP, x));
  kd_step_prog *p = NULL;
  char err[256] = "";
  kd_sym_binding nb = {"N", 3};
  TU_CHECK(kd_stepgen(g, bind, 2, NULL, &p, err, sizeof err) == KD_ERR_INVALID && !p &&
               strstr(err, "symbol N has no size"),
           "unbound: %s", err);
  TU_CHECK(kd_stepgen(g, &nb, 1, "z", &p, err, sizeof err) == KD_ERR_INVALID && !p &&
               strstr(err, "no input \"z\""),
           "split: %s", err);
  TU_CHECK(kd_stepgen(g, &nb, 1, NULL, &p, err, sizeof err) == KD_OK && p && p->ninstr == 1 &&
               p->nslots == 2 && p->arena_bytes == 0,
           "exp: %s", err);
  kd_step_free(p);
  p = NULL;
  kd_node_id y = kd_input(g, "y", KD_F64, 2, n); /* read or not, a slot the step cannot take */
  TU_CHECK(kd_stepgen(g, &nb, 1, NULL, &p, err, sizeof err) == KD_ERR_UNSUPPORTED && !p &&
               strstr(err, "input") && strstr(err, "f64"),
           "f64: %s", err);
  kd_graph_add_output(g, "b", kd_binary(g, KD_IR_ADD, y, y));
  TU_CHECK(kd_stepgen(g, &nb, 1, NULL, &p, err, sizeof err) == KD_ERR_UNSUPPORTED && !p &&
               strstr(err, "input") && strstr(err, "f64"),
           "f64: %s", err);
  kd_graph_free(g);
}

int main(void) {
  kd_pool *pool2 = NULL;
  TU_CHECK(kd_pool_new(2, &pool2) == KD_OK, "a pool of 2 threads");
  kd_program *p = sg_load();
  if (p) {
    check_model(p, "tiny", 1, pool2);
    check_model(p, "small", 2, pool2);
    kd_program_free(p);
  }
  check_edges(pool2);
  check_errors();
  kd_pool_free(pool2);
  return tu_done("test_stepgen");
}
