/* FUSED expressions compiled by LLVM (codegen/fusedgen.h) against the
 * interpreter (runtime/step_fused.c), through kd_step_run with and without
 * the compiled table attached:
 *   - random trees of f32 maps (as test_stepfuse's: rows of 37 and of 300,
 *     past one 256-element block; contiguous, transposed, broadcast, per-row
 *     scalar, bool (a mask) and constant leaves, SELECT, some intermediates
 *     read twice), fused, compiled at 4, 8 and 16 lanes, run on 1 and 2
 *     threads; POW, and ops other than SELECT reading a bool, stay
 *     interpreted (the expressions with one must not be compiled);
 *   - every op alone over special values (+-0, +-inf, NaN, subnormals, the
 *     edges of exp's and tanh's ranges and branches, huge values) and
 *     random bit patterns of every exponent;
 *   - a strided dst and an in-place expression (dst is a leaf);
 *   - a rank-3 expression whose dims cannot merge (a scalar per row, a
 *     permuted leaf), split mid-row between two threads, against the same
 *     float operations in a plain loop;
 *   - kd_step_set_compiled's refusals;
 *   - the object file (kd_fused_emit_file) is written.
 *
 * Tolerance: none for numbers. The compiled code performs the interpreter's
 * float operations in the same order, so every result that is not a NaN
 * must be the same bits, and a NaN must be a NaN. A NaN's sign and payload
 * may differ: LLVM folds x * 1 to x and x / -1 to -x, exact for every
 * number, but the multiply would have quietened a signalling NaN and the
 * division kept a NaN's sign (and x86 returns the first NaN operand, which
 * a compiler may commute). No op makes a number of a NaN's sign or payload
 * (compares treat every NaN alike, max and min return the default NaN), so
 * losses cannot see them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "fusedgen.h"
#include "progbuild.h"
#include "step.h"
#include "stepfuse.h"
#include "threadpool.h"
#include "vmath.h"

/* ---- random trees ------------------------------------------------------------ */

/* Leaves: x f32 [R, C]; y f32 [C, R] read transposed; b f32 [C] along rows;
   c f32 [R] along columns (a scalar per row); m bool [C, R] read
   transposed, n bool [R] a scalar per row. Intermediates from NLEAF on. */
enum { VX, VY, VB, VC, VM, VN, NLEAF };

static kd_step_ref leaf_ref(kd_tree *t, bool cond) {
  kd_step_ref r = {.value = -1};
  if (cond && next() % 4) { /* a SELECT's condition: mostly a mask */
    if (next() % 2) r.value = VM, r.stride[0] = 1, r.stride[1] = t->R;
    else r.value = VN, r.stride[0] = 1;
    return r;
  }
  if (next() % 50 == 0) return (kd_step_ref){.value = VM, .stride = {1, t->R}}; /* not compiled */
  static const double imms[] = {0.5,      -2,  0.044715, INFINITY, 0,         1e-5,
                                -INFINITY, NAN, -0.0,     1e-40,    0.7978845608028654, 89.5};
  int k = (int)(next() % 7);
  if (k == 6 && t->nmade > 0) return t->made[next() % (uint64_t)t->nmade]; /* read twice */
  switch (k) {
  case 0: r.value = VX, r.stride[0] = t->C, r.stride[1] = 1; break;
  case 1: r.value = VY, r.stride[0] = 1, r.stride[1] = t->R; break;
  case 2: r.value = VB, r.stride[1] = 1; break;
  case 3: r.value = VC, r.stride[0] = 1; break;
  default: r.imm = imms[next() % (sizeof imms / sizeof imms[0])]; break;
  }
  return r;
}

static const kd_step_fn fns[] = {
    KD_SF_NEG, KD_SF_EXP, KD_SF_LOG, KD_SF_SQRT, KD_SF_ABS, KD_SF_SIGN, KD_SF_TANH,
    KD_SF_ADD, KD_SF_SUB, KD_SF_MUL, KD_SF_MULZ, KD_SF_DIV, KD_SF_MAX,  KD_SF_MIN,
    KD_SF_LT,  KD_SF_LE,  KD_SF_GT,  KD_SF_GE,   KD_SF_EQ,  KD_SF_NE,   KD_SF_COPY,
    KD_SF_EXP, KD_SF_TANH, KD_SF_ADD, KD_SF_MUL, KD_SF_SELECT, KD_SF_SELECT, KD_SF_POW};

static kd_step_ref gen(kd_tree *t, int depth, bool pow_ok, bool cond) {
  if (depth == 0 || urand() < 0.15 || kd_tree_full(t)) return leaf_ref(t, cond);
  size_t nf = sizeof fns / sizeof fns[0] - (pow_ok ? 0 : 1);
  kd_step_fn fn = fns[next() % nf];
  kd_step_ref src[3];
  for (int s = 0; s < kd_tree_arity(fn); s++)
    src[s] = gen(t, depth - 1, pow_ok, fn == KD_SF_SELECT && s == 0);
  return kd_tree_map(t, fn, src);
}

static kd_step_prog *build_tree(uint64_t seed, int64_t R, int64_t C, int depth, bool pow_ok) {
  rng = seed;
  kd_tree t = {kd_step_alloc(KD_TREE_MAXV, KD_TREE_MAXI, 0), R, C, NLEAF, 0, {{0}}, 0};
  kd_step_value f32 = {.loc = KD_LOC_ARENA, .dtype = KD_F32};
  t.p->values[VX] = t.p->values[VY] = t.p->values[VB] = t.p->values[VC] = f32;
  t.p->values[VX].elems = t.p->values[VY].elems = R * C;
  t.p->values[VB].elems = C;
  t.p->values[VC].elems = R;
  t.p->values[VM] = (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_BOOL, .elems = R * C};
  t.p->values[VN] = (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_BOOL, .elems = R};
  while (t.ni == 0) gen(&t, depth, pow_ok, false);
  t.p->nvalues = t.nv, t.p->ninstr = t.p->split = t.ni;
  place_values(t.p);
  char err[256] = "";
  CHECK(kd_step_fuse(t.p, err, sizeof err) == KD_OK);
  CHECK(kd_step_validate(t.p, err, sizeof err) == KD_OK);
  return t.p;
}

/* Special floats: signed zeros, infinities, NaN, subnormals and the
   thresholds of vmath.h's branches and clamps, each side. */
static const float specials[] = {
    0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-45f, -1e-45f, 1e-40f, -1e-40f, 0x1p-126f,
    0x1.fffffcp-127f, 1.0f, -1.0f, 88.72f, 88.73f, 89.0f, 89.5f, 100.0f, -87.0f, -103.97f,
    -103.98f, -104.0f, -110.0f, -150.0f, 0.625f, 0.62499994f, -0.625f, 9.01f, -9.02f, 20.0f,
    1e30f, -1e30f, 3.4e38f, -3.4e38f, 0.70710677f, 1.4142135f, 0.5f, 2.0f, 1e-5f, -1e-5f};

/* A float: a special one, a uniform value in [-12, 12], or (one in four) a
   random bit pattern, so every exponent and NaN payloads appear. */
static float rand_float(void) {
  uint64_t u = next() % 16;
  if (u < 3) return specials[next() % (sizeof specials / sizeof specials[0])];
  if (u < 7) {
    uint32_t b = (uint32_t)next();
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
  }
  return (float)(24 * urand() - 12);
}

static void fill(const kd_step_prog *p, char *arena, uint64_t seed) {
  rng = seed ^ 0xabcdefull;
  for (int v = 0; v < NLEAF; v++) {
    char *base = arena + p->values[v].offset;
    for (int64_t i = 0; i < p->values[v].elems; i++) {
      if (p->values[v].dtype == KD_BOOL) base[i] = (char)(next() % 2);
      else ((float *)base)[i] = rand_float();
    }
  }
}

static char *run(const kd_step_prog *p, uint64_t seed, kd_pool *pool) {
  char *arena = aligned_alloc(64, (size_t)p->arena_bytes + 64);
  memset(arena, 0x5a, (size_t)p->arena_bytes + 64);
  fill(p, arena, seed);
  char err[256] = "";
  kd_status st = kd_step_run(p, arena, NULL, 0, p->ninstr, pool, err, sizeof err);
  CHECK(st == KD_OK);
  if (st != KD_OK) fprintf(stderr, "run: %s\n", err);
  return arena;
}

/* The index of the first of n floats where a and b differ (the bits, or
   one is a NaN and the other is not; see the tolerance above), or -1. */
static int64_t first_diff(const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (memcmp(a + i, b + i, sizeof *a) && !(isnan(a[i]) && isnan(b[i]))) return i;
  return -1;
}

/* Every arena value past the leaves (what the instructions wrote). */
static bool same_values(const kd_step_prog *p, const char *a, const char *b) {
  for (int v = NLEAF; v < p->nvalues; v++) {
    const kd_step_value *val = &p->values[v];
    if (first_diff((const float *)(a + val->offset), (const float *)(b + val->offset),
                   val->elems) >= 0)
      return false;
  }
  return true;
}

static bool has_op(const kd_step_expr *e, kd_step_fn fn) {
  for (int t = 0; t < e->nop; t++)
    if (e->op[t].fn == fn) return true;
  return false;
}

enum { NTREES = 240 };

static void test_random_trees(kd_pool *pool) {
  kd_step_prog *p[NTREES];
  int nexprs = 0, npow = 0, nselect = 0;
  for (int k = 0; k < NTREES; k++) {
    uint64_t seed = (uint64_t)(k + 1) * 0x9E3779B97F4A7C15ull;
    int64_t R = k % 3 == 0 ? 3 : 7, C = k % 3 == 0 ? 300 : 37;
    p[k] = build_tree(seed, R, C, 2 + k % 5, k % 4 == 0);
    nexprs += p[k]->nexprs;
  }
  static const int widths[] = {4, 8, 16};
  for (int w = 0; w < 3; w++) {
    kd_fused_jit *j = NULL;
    char err[512] = "";
    kd_status st = kd_fused_jit_new((const kd_step_prog *const *)p, NTREES, widths[w], &j, err,
                                    sizeof err);
    CHECK(st == KD_OK);
    if (st != KD_OK) {
      fprintf(stderr, "jit: %s\n", err);
      continue;
    }
    int compiled = 0, differ = 0;
    for (int k = 0; k < NTREES; k++) {
      const kd_step_fused_fn *tab = kd_fused_jit_table(j, k);
      compiled += kd_fused_jit_count(j, k);
      for (int32_t e = 0; e < p[k]->nexprs; e++) {
        const kd_step_expr *x = &p[k]->exprs[e];
        CHECK((tab[e] != NULL) == kd_fused_compilable(p[k], e));
        CHECK(!tab[e] || !has_op(x, KD_SF_POW));
        npow += w == 0 && has_op(x, KD_SF_POW);
        nselect += w == 0 && tab[e] && has_op(x, KD_SF_SELECT);
      }
      uint64_t seed = (uint64_t)k * 77 + 5;
      char *a = run(p[k], seed, NULL);
      CHECK(kd_step_set_compiled(p[k], tab, p[k]->nexprs, err, sizeof err) == KD_OK);
      char *b = run(p[k], seed, NULL), *c = run(p[k], seed, pool);
      CHECK(kd_step_set_compiled(p[k], NULL, 0, err, sizeof err) == KD_OK);
      bool same = same_values(p[k], a, b) && same_values(p[k], a, c);
      CHECK(same);
      if (!same && differ++ < 3) {
        fprintf(stderr, "tree %d at %d lanes: compiled and interpreted differ\n", k, widths[w]);
        kd_step_print(p[k], stderr);
      }
      free(a), free(b), free(c);
    }
    printf("random trees, %2d lanes: %d programs, %d expressions, %d compiled\n", widths[w],
           NTREES, nexprs, compiled);
    CHECK(compiled > nexprs / 2 && compiled < nexprs);
    kd_fused_jit_free(j);
  }
  CHECK(npow > 0 && nselect > 0);
  for (int k = 0; k < NTREES; k++) kd_step_free(p[k]);
}

/* ---- one op over special values ----------------------------------------------- */

/* dst = fn(x, y) (SELECT: x ? y : x) over [N] as a one-op FUSED instruction, x and y f32
   values 0 and 1, dst value 2 with stride sd (a strided dst when 2), or
   in place into x when sd is 0. */
static kd_step_prog *one_op(kd_step_fn fn, int64_t N, int sd, bool y_const, float imm) {
  kd_step_prog *p = kd_step_alloc(3, 1, 0);
  for (int v = 0; v < 3; v++)
    p->values[v] = (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_F32, .elems = N * 2};
  place_values(p);
  p->exprs = calloc(1, sizeof *p->exprs);
  p->nexprs = 1;
  kd_step_expr *e = &p->exprs[0];
  e->nleaf = 2, e->nop = 1;
  e->leaf = calloc(2, sizeof *e->leaf);
  e->op = calloc(1, sizeof *e->op);
  e->leaf[0] = (kd_step_ref){.value = 0, .stride = {1}};
  e->leaf[1] = y_const ? (kd_step_ref){.value = -1, .imm = imm} : (kd_step_ref){.value = 1, .stride = {1}};
  e->op[0] = (kd_step_eop){fn, {-1, -2, -1}}; /* SELECT: x ? y : x */
  p->instr[0] = (kd_step_instr){.kind = KD_STEP_FUSED, .rank = 1, .shape = {N}, .node = -1,
                                .dst = {.value = sd ? 2 : 0, .stride = {sd ? sd : 1}}, .expr = 0};
  return p;
}

static void test_ops(kd_pool *pool) {
  static const kd_step_fn ops[] = {
      KD_SF_COPY, KD_SF_NEG, KD_SF_EXP, KD_SF_LOG, KD_SF_SQRT, KD_SF_ABS, KD_SF_SIGN,
      KD_SF_TANH, KD_SF_ADD, KD_SF_SUB, KD_SF_MUL, KD_SF_MULZ, KD_SF_DIV, KD_SF_MAX,
      KD_SF_MIN,  KD_SF_LT,  KD_SF_LE,  KD_SF_GT,  KD_SF_GE,   KD_SF_EQ,  KD_SF_NE,
      KD_SF_SELECT};
  enum { NOPS = sizeof ops / sizeof ops[0], NS = sizeof specials / sizeof specials[0] };
  /* every pair of specials, then random floats; N is odd, so that every
     width's scalar tail runs */
  const int64_t N = NS * NS + 8443;
  kd_step_prog *p[NOPS * 4];
  int np = 0;
  for (int o = 0; o < NOPS; o++) {
    p[np++] = one_op(ops[o], N, 1, false, 0);
    p[np++] = one_op(ops[o], N, 2, false, 0);
    p[np++] = one_op(ops[o], N, 0, false, 0);
    p[np++] = one_op(ops[o], N, 1, true, specials[o % NS]);
  }
  kd_fused_jit *j = NULL;
  char err[512] = "";
  kd_status st = kd_fused_jit_new((const kd_step_prog *const *)p, np, 0, &j, err, sizeof err);
  CHECK(st == KD_OK);
  if (st != KD_OK) fprintf(stderr, "jit: %s\n", err);
  size_t bytes = (size_t)p[0]->arena_bytes;
  int64_t yo = p[0]->values[1].offset / 4; /* y's first element */
  float *in = calloc(bytes, 1);
  rng = 12345;
  for (int64_t i = 0; i < N; i++) {
    in[i] = i < NS * NS ? specials[i / NS] : rand_float();
    in[yo + i] = i < NS * NS ? specials[i % NS] : rand_float();
  }
  for (int k = 0; k < np && j; k++) {
    CHECK(kd_fused_jit_count(j, k) == 1);
    float *a = aligned_alloc(64, bytes), *b = aligned_alloc(64, bytes);
    memcpy(a, in, bytes);
    memcpy(b, in, bytes);
    CHECK(kd_step_run(p[k], a, NULL, 0, 1, pool, err, sizeof err) == KD_OK);
    CHECK(kd_step_set_compiled(p[k], kd_fused_jit_table(j, k), 1, err, sizeof err) == KD_OK);
    CHECK(kd_step_run(p[k], b, NULL, 0, 1, pool, err, sizeof err) == KD_OK);
    int64_t i = first_diff(a, b, (int64_t)(bytes / 4));
    CHECK(i < 0);
    if (i >= 0) {
      uint32_t ua, ub;
      memcpy(&ua, a + i, 4), memcpy(&ub, b + i, 4);
      fprintf(stderr, "%s (program %d): float %lld: interpreted %a (%08x), compiled %a (%08x)\n",
              kd_step_fn_name(p[k]->exprs[0].op[0].fn), k, (long long)i, (double)a[i], ua,
              (double)b[i], ub);
    }
    free(a), free(b);
  }
  free(in);
  kd_fused_jit_free(j);
  for (int k = 0; k < np; k++) kd_step_free(p[k]);
}

/* ---- rank 3 ----------------------------------------------------------------------- */

/* out [A, Bd, C] = tanh(x * s + b) - y: x contiguous, s one scalar per row
   (strides [Bd, 1, 0]), b along the rows, y stored [C, Bd, A] and read
   permuted. A * Bd * C is past the pool's grain (16384), so two threads
   split it, mid-row. */
static void test_rank3(kd_pool *pool) {
  enum { A = 9, Bd = 7, C = 300, N = A * Bd * C };
  enum { X, S, Bv, Y, OUT };
  kd_step_prog *p = kd_step_alloc(5, 1, 0);
  int64_t elems[5] = {N, A * Bd, C, N, N};
  for (int v = 0; v < 5; v++)
    p->values[v] = (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_F32, .elems = elems[v]};
  place_values(p);
  p->exprs = calloc(1, sizeof *p->exprs);
  p->nexprs = 1;
  kd_step_expr *e = &p->exprs[0];
  e->nleaf = 4, e->nop = 4;
  e->leaf = calloc(4, sizeof *e->leaf);
  e->op = calloc(4, sizeof *e->op);
  e->leaf[0] = (kd_step_ref){.value = X, .stride = {Bd * C, C, 1}};
  e->leaf[1] = (kd_step_ref){.value = S, .stride = {Bd, 1, 0}};
  e->leaf[2] = (kd_step_ref){.value = Bv, .stride = {0, 0, 1}};
  e->leaf[3] = (kd_step_ref){.value = Y, .stride = {1, A, A * Bd}};
  e->op[0] = (kd_step_eop){KD_SF_MUL, {-1, -2, 0}};
  e->op[1] = (kd_step_eop){KD_SF_ADD, {0, -3, 0}};
  e->op[2] = (kd_step_eop){KD_SF_TANH, {1, 0, 0}};
  e->op[3] = (kd_step_eop){KD_SF_SUB, {2, -4, 0}};
  p->instr[0] = (kd_step_instr){.kind = KD_STEP_FUSED, .rank = 3, .shape = {A, Bd, C},
                                .node = -1, .dst = {.value = OUT, .stride = {Bd * C, C, 1}}};
  char err[512] = "";
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  const kd_step_prog *ps[1] = {p};
  kd_fused_jit *j = NULL;
  CHECK(kd_fused_jit_new(ps, 1, 0, &j, err, sizeof err) == KD_OK);
  char *arena = aligned_alloc(64, (size_t)p->arena_bytes);
  float *v[5];
  for (int k = 0; k < 5; k++) v[k] = (float *)(arena + p->values[k].offset);
  rng = 99;
  for (int k = 0; k < 4; k++)
    for (int64_t i = 0; i < elems[k]; i++) v[k][i] = (float)(4 * urand() - 2);
  float *want = malloc(N * sizeof *want);
  for (int a = 0; a < A; a++)
    for (int b = 0; b < Bd; b++)
      for (int c = 0; c < C; c++) {
        float t = v[X][(a * Bd + b) * C + c] * v[S][a * Bd + b] + v[Bv][c];
        want[(a * Bd + b) * C + c] = kd_tanhf(t) - v[Y][(c * Bd + b) * A + a];
      }
  for (int compiled = 0; compiled < 2 && j; compiled++) {
    if (compiled) CHECK(kd_step_set_compiled(p, kd_fused_jit_table(j, 0), 1, err, sizeof err) == KD_OK);
    for (int threads = 0; threads < 2; threads++) {
      memset(v[OUT], 0, N * sizeof(float));
      CHECK(kd_step_run(p, arena, NULL, 0, 1, threads ? pool : NULL, err, sizeof err) == KD_OK);
      CHECK(first_diff(want, v[OUT], N) < 0);
    }
  }
  free(want);
  free(arena);
  kd_fused_jit_free(j);
  kd_step_free(p);
}

/* ---- the runtime's checks and the object file ------------------------------------ */

static void dummy(int64_t m, float *dst, const float *const *leaf) {
  (void)m, (void)dst, (void)leaf;
}

static void test_set_compiled(void) {
  char err[256] = "";
  kd_step_prog *p = one_op(KD_SF_ADD, 8, 1, false, 0);
  kd_step_fused_fn f[2] = {dummy, dummy};
  CHECK(kd_step_set_compiled(p, f, 2, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strcmp(err, "compiled expressions: 2 for a program of 1 expressions") == 0);
  p->exprs[0].op[0].fn = KD_SF_POW;
  CHECK(!kd_fused_compilable(p, 0));
  CHECK(kd_step_set_compiled(p, f, 1, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strcmp(err, "compiled expression 0: op 0 is pow") == 0);
  p->exprs[0].op[0].fn = KD_SF_ADD;
  p->values[1].dtype = KD_I64;
  CHECK(!kd_fused_compilable(p, 0));
  CHECK(kd_step_set_compiled(p, f, 1, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strcmp(err, "compiled expression 0: leaf 1 is i64") == 0);
  p->values[1].dtype = KD_BOOL; /* an add of a bool computes in double */
  CHECK(!kd_fused_compilable(p, 0));
  p->values[1].dtype = KD_F32;
  CHECK(kd_fused_compilable(p, 0));
  CHECK(kd_step_set_compiled(p, f, 1, err, sizeof err) == KD_OK && p->compiled[0] == dummy);
  kd_step_free(p);
}

static void test_emit_file(void) {
  char path[] = "/tmp/kdc_fusedgen_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd < 0) return;
  close(fd);
  kd_step_prog *p = one_op(KD_SF_TANH, 8, 1, false, 0);
  const kd_step_prog *ps[1] = {p};
  const char *names[1] = {"kdc_test_fused"};
  char err[512] = "";
  CHECK(kd_fused_emit_file(ps, names, 1, path, err, sizeof err) == KD_OK);
  FILE *f = fopen(path, "rb");
  char head[4] = {0};
  CHECK(f && fread(head, 1, 4, f) == 4 && memcmp(head, "\177ELF", 4) == 0);
  if (f) fclose(f);
  unlink(path);
  kd_step_free(p);
}

int main(void) {
  kd_pool *pool = NULL;
  CHECK(kd_pool_new(2, &pool) == KD_OK);
  test_random_trees(pool);
  test_ops(pool);
  test_rank3(pool);
  test_set_compiled();
  test_emit_file();
  kd_pool_free(pool);
  return check_exit("test_fusedgen");
}
