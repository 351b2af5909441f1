/* Fusion of maps (codegen/stepfuse.h) and FUSED instructions (runtime/step.h,
 * step_fused.c): random trees of maps over odd shapes (rows of 37 and of
 * 300, past one 256-element block) with contiguous, transposed, broadcast
 * (a scalar along the row) and constant operands, bool and i64 leaves,
 * SELECT, MULZ against inf, comparisons, NaN, +-inf and zeros in the data,
 * some intermediates read twice (which must stay), run fused and unfused
 * on 1 and 2 threads; hand-built programs where memory reuse forbids a
 * fusion; the byte format's round trip; validation's messages.
 *
 * Tolerance: none. A fused op calls the function the MAP it replaces calls
 * (step_fused.h), on the same f32 inputs (the intermediate a MAP stored is
 * an f32 register), so every output must be the same bits (memcmp). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "progbuild.h"
#include "step.h"
#include "stepfuse.h"
#include "threadpool.h"


/* ---- random trees ------------------------------------------------------------ */

/* Leaves: x f32 [R, C]; y f32 [C, R] read transposed; b f32 [C] along rows;
   m bool [R, C]; k i64 [R] and c f32 [R] along columns (stride 0 in the
   inner dim: a scalar per row). Intermediates from value NLEAF on. */
enum { VX, VY, VB, VM, VK, VC, NLEAF };

static kd_step_ref leaf_ref(kd_tree *t) {
  kd_step_ref r = {.value = -1};
  static const double imms[] = {0.5, -2, 0.044715, INFINITY, 0, 1e-5, 3, -INFINITY};
  int k = (int)(next() % 8);
  if (k == 7 && t->nmade > 0) return t->made[next() % (uint64_t)t->nmade]; /* read twice */
  switch (k) {
  case 0: r.value = VX, r.stride[0] = t->C, r.stride[1] = 1; break;
  case 1: r.value = VY, r.stride[0] = 1, r.stride[1] = t->R; break;
  case 2: r.value = VB, r.stride[1] = 1; break;
  case 3: r.value = VM, r.stride[0] = t->C, r.stride[1] = 1; break;
  case 4: r.value = VK, r.stride[0] = 1; break;
  case 5: r.value = VC, r.stride[0] = 1; break;
  default: r.imm = imms[next() % 8]; break;
  }
  return r;
}

static const kd_step_fn fns[] = {
    KD_SF_NEG, KD_SF_EXP, KD_SF_LOG,  KD_SF_SQRT, KD_SF_ABS, KD_SF_SIGN, KD_SF_TANH,
    KD_SF_ADD, KD_SF_SUB, KD_SF_MUL,  KD_SF_MULZ, KD_SF_DIV, KD_SF_POW,  KD_SF_MAX,
    KD_SF_MIN, KD_SF_LT,  KD_SF_GE,   KD_SF_EQ,   KD_SF_NE,  KD_SF_SELECT, KD_SF_COPY};

/* A subtree of the given depth: a leaf, or a MAP into a new f32 value. */
static kd_step_ref gen(kd_tree *t, int depth) {
  if (depth == 0 || urand() < 0.2 || kd_tree_full(t)) return leaf_ref(t);
  kd_step_fn fn = fns[next() % (sizeof fns / sizeof fns[0])];
  kd_step_ref src[3];
  for (int s = 0; s < kd_tree_arity(fn); s++) src[s] = gen(t, depth - 1);
  return kd_tree_map(t, fn, src);
}

static kd_step_prog *build_tree(uint64_t seed, int64_t R, int64_t C, int depth) {
  rng = seed;
  kd_tree t = {kd_step_alloc(KD_TREE_MAXV, KD_TREE_MAXI, 0), R, C, NLEAF, 0, {{0}}, 0};
  kd_step_value f32 = {.loc = KD_LOC_ARENA, .dtype = KD_F32};
  t.p->values[VX] = t.p->values[VY] = t.p->values[VB] = t.p->values[VC] = f32;
  t.p->values[VX].elems = t.p->values[VY].elems = R * C;
  t.p->values[VB].elems = C;
  t.p->values[VC].elems = R;
  t.p->values[VM] = (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_BOOL, .elems = R * C};
  t.p->values[VK] = (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_I64, .elems = R};
  while (t.ni == 0) gen(&t, depth);
  t.p->nvalues = t.nv, t.p->ninstr = t.p->split = t.ni;
  place_values(t.p);
  return t.p;
}

/* Leaves' data, the same for every program of one seed: NaN, +-inf and
   zeros among normal values. */
static void fill_leaves(const kd_step_prog *p, char *arena, uint64_t seed) {
  rng = seed ^ 0xabcdefull;
  for (int v = 0; v < NLEAF; v++) {
    const kd_step_value *val = &p->values[v];
    char *base = arena + val->offset;
    for (int64_t i = 0; i < val->elems; i++) {
      double u = urand(), x = 4 * urand() - 2;
      if (u < 0.03) x = NAN;
      else if (u < 0.06) x = INFINITY;
      else if (u < 0.09) x = -INFINITY;
      else if (u < 0.15) x = 0;
      if (val->dtype == KD_F32) ((float *)base)[i] = (float)x;
      else if (val->dtype == KD_I64) ((int64_t *)base)[i] = (int64_t)(next() % 7) - 3;
      else ((uint8_t *)base)[i] = next() % 2;
    }
  }
}

static char *run_prog(const kd_step_prog *p, uint64_t seed, kd_pool *pool) {
  char *arena = aligned_alloc(64, (size_t)p->arena_bytes + 64);
  memset(arena, 0x5a, (size_t)p->arena_bytes + 64);
  fill_leaves(p, arena, seed);
  char err[256] = "";
  kd_status st = kd_step_run(p, arena, NULL, 0, p->ninstr, pool, err, sizeof err);
  CHECK(st == KD_OK);
  if (st != KD_OK) fprintf(stderr, "run: %s\n", err);
  return arena;
}

/* The value the last instruction writes, the same bytes in both arenas. */
static bool same_result(const kd_step_prog *p, const char *a, const char *b) {
  const kd_step_value *v = &p->values[p->instr[p->ninstr - 1].dst.value];
  return memcmp(a + v->offset, b + v->offset, (size_t)v->elems * 4) == 0;
}

static int fuse(kd_step_prog *p) {
  char err[256] = "";
  CHECK(kd_step_fuse(p, err, sizeof err) == KD_OK);
  kd_status st = kd_step_validate(p, err, sizeof err);
  CHECK(st == KD_OK);
  if (st != KD_OK) fprintf(stderr, "fused program: %s\n", err);
  int n = 0;
  for (int32_t i = 0; i < p->ninstr; i++) n += p->instr[i].kind == KD_STEP_FUSED;
  return n;
}

static void test_random_trees(kd_pool *pool) {
  int fused = 0, removed = 0, trees = 0;
  for (uint64_t seed = 1; seed <= 300; seed++) {
    int64_t R = seed % 3 == 0 ? 3 : 7, C = seed % 3 == 0 ? 300 : 37;
    kd_step_prog *u = build_tree(seed * 0x9E3779B97F4A7C15ull, R, C, 2 + (int)(seed % 4));
    kd_step_prog *f = build_tree(seed * 0x9E3779B97F4A7C15ull, R, C, 2 + (int)(seed % 4));
    int before = f->ninstr;
    fused += fuse(f);
    removed += before - f->ninstr;
    trees++;
    char *a = run_prog(u, seed, NULL), *b = run_prog(f, seed, NULL), *c = run_prog(f, seed, pool);
    bool same = same_result(u, a, b) && same_result(u, a, c);
    CHECK(same);
    if (!same) {
      fprintf(stderr, "seed %llu: fused and unfused differ; unfused, then fused:\n",
              (unsigned long long)seed);
      kd_step_print(u, stderr);
      kd_step_print(f, stderr);
    }
    /* the byte format keeps an expression table */
    uint8_t *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    kd_step_prog *q = NULL;
    char err[256] = "";
    CHECK(kd_step_serialize(f, &buf, &len) == KD_OK &&
          kd_step_deserialize(buf, len, &q, err, sizeof err) == KD_OK);
    if (q) {
      CHECK(q->nexprs == f->nexprs && kd_step_serialize(q, &buf2, &len2) == KD_OK &&
            len2 == len && memcmp(buf, buf2, len) == 0);
      char *d = run_prog(q, seed, pool);
      CHECK(same_result(u, a, d));
      free(d);
    }
    free(buf);
    free(buf2);
    kd_step_free(q);
    free(a);
    free(b);
    free(c);
    kd_step_free(u);
    kd_step_free(f);
  }
  printf("random trees: %d programs, %d FUSED instructions, %d instructions fewer\n", trees,
         fused, removed);
  CHECK(fused > trees / 2 && removed > trees);
}

/* ---- memory reuse --------------------------------------------------------------- */

/* t = exp(A) into value 1; then value 2 = t + 1. A is value 0 [3, 5],
   read transposed (as [5, 3]) when transposed; value 2 gets A's bytes,
   as memplan gives a dead source's bytes to a later value. Fused, A would
   still be read while value 2 is written: only the same layout may fuse. */
static void test_reuse(bool transposed, kd_pool *pool) {
  kd_step_prog *p[2];
  for (int k = 0; k < 2; k++) {
    kd_step_prog *q = p[k] = kd_step_alloc(3, 2, 0);
    q->values[0] = q->values[1] = q->values[2] =
        (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_F32, .elems = 15};
    q->values[1].offset = 64;
    q->arena_bytes = 128;
    int64_t r = transposed ? 5 : 3, c = transposed ? 3 : 5;
    kd_step_ref a = {.value = 0, .stride = {transposed ? 1 : 5, transposed ? 5 : 1}};
    q->instr[0] = (kd_step_instr){.kind = KD_STEP_MAP, .fn = KD_SF_EXP, .rank = 2,
                                  .shape = {r, c}, .nsrc = 1, .src = {a}, .node = -1,
                                  .dst = {.value = 1, .stride = {c, 1}}};
    q->instr[1] = (kd_step_instr){.kind = KD_STEP_MAP, .fn = KD_SF_ADD, .rank = 2,
                                  .shape = {r, c}, .nsrc = 2, .node = -1,
                                  .src = {{.value = 1, .stride = {c, 1}}, {.value = -1, .imm = 1}},
                                  .dst = {.value = 2, .stride = {c, 1}}};
  }
  char err[256] = "";
  CHECK(kd_step_validate(p[0], err, sizeof err) == KD_OK);
  CHECK(fuse(p[1]) == (transposed ? 0 : 1));
  float *out[2];
  for (int k = 0; k < 2; k++) {
    out[k] = aligned_alloc(64, 128);
    for (int i = 0; i < 15; i++) out[k][i] = (float)i / 4 - 1;
    CHECK(kd_step_run(p[k], out[k], NULL, 0, p[k]->ninstr, pool, err, sizeof err) == KD_OK);
  }
  CHECK(memcmp(out[0], out[1], 15 * sizeof(float)) == 0);
  for (int k = 0; k < 2; k++) {
    free(out[k]);
    kd_step_free(p[k]);
  }
}

/* t = exp(A); W = sum of B over its rows, into A's bytes (A died at the
   exp); then out = t * 2. The exp cannot move down past the sum. */
static void test_between(void) {
  kd_step_prog *p = kd_step_alloc(5, 3, 0);
  kd_step_value f32 = {.loc = KD_LOC_ARENA, .dtype = KD_F32, .elems = 8};
  for (int v = 0; v < 5; v++) p->values[v] = f32, p->values[v].offset = 64 * v;
  p->values[3].offset = 0; /* W: A's bytes */
  p->arena_bytes = 320;
  kd_step_ref dense = {.stride = {1}};
  p->instr[0] = (kd_step_instr){.kind = KD_STEP_MAP, .fn = KD_SF_EXP, .rank = 1, .shape = {8},
                                .nsrc = 1, .node = -1};
  p->instr[0].src[0] = dense, p->instr[0].dst = dense, p->instr[0].dst.value = 1;
  p->instr[1] = (kd_step_instr){.kind = KD_STEP_REDUCE, .fn = KD_SF_SUM, .rank = 2,
                                .shape = {1, 8}, .axis = 1, .nsrc = 1, .node = -1,
                                .src = {{.value = 2, .stride = {0, 1}}},
                                .dst = {.value = 3}};
  p->instr[2] = (kd_step_instr){.kind = KD_STEP_MAP, .fn = KD_SF_MUL, .rank = 1, .shape = {8},
                                .nsrc = 2, .node = -1,
                                .src = {{.value = 1, .stride = {1}}, {.value = -1, .imm = 2}},
                                .dst = {.value = 4, .stride = {1}}};
  char err[256] = "";
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  CHECK(fuse(p) == 0 && p->ninstr == 3);
  kd_step_free(p);
}

/* ---- validation ----------------------------------------------------------------- */

/* out = exp(a + b) over [8], as one FUSED; a mutation, then the message. */
static kd_step_prog *hand_fused(void) {
  kd_step_prog *p = kd_step_alloc(3, 1, 0);
  for (int v = 0; v < 3; v++)
    p->values[v] = (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_F32, .elems = 8,
                                   .offset = 64 * v};
  p->arena_bytes = 192;
  p->exprs = calloc(1, sizeof *p->exprs);
  p->nexprs = 1;
  kd_step_expr *e = &p->exprs[0];
  e->nleaf = 2, e->nop = 2;
  e->leaf = calloc(2, sizeof *e->leaf);
  e->op = calloc(2, sizeof *e->op);
  e->leaf[0] = (kd_step_ref){.value = 0, .stride = {1}};
  e->leaf[1] = (kd_step_ref){.value = 1, .stride = {1}};
  e->op[0] = (kd_step_eop){KD_SF_ADD, {-1, -2, 0}};
  e->op[1] = (kd_step_eop){KD_SF_EXP, {0, 0, 0}};
  p->instr[0] = (kd_step_instr){.kind = KD_STEP_FUSED, .rank = 1, .shape = {8}, .node = -1,
                                .dst = {.value = 2, .stride = {1}}, .expr = 0};
  return p;
}

static void expect_invalid(kd_step_prog *p, const char *want) {
  char err[256] = "";
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, want) == 0);
  if (strcmp(err, want)) fprintf(stderr, "got \"%s\", want \"%s\"\n", err, want);
  kd_step_free(p);
}

static void test_validation(void) {
  kd_step_prog *p = hand_fused();
  char err[256] = "";
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  float *arena = aligned_alloc(64, 192);
  for (int i = 0; i < 8; i++) arena[i] = (float)i / 3, arena[16 + i] = -(float)i;
  CHECK(kd_step_run(p, arena, NULL, 0, 1, NULL, err, sizeof err) == KD_OK);
  for (int i = 0; i < 8; i++) CHECK(arena[32 + i] == expf(arena[i] + arena[16 + i]));
  free(arena);
  kd_step_free(p);

  /* printed with its expression */
  p = hand_fused();
  char *text = NULL;
  size_t tlen = 0;
  FILE *mem = open_memstream(&text, &tlen);
  kd_step_print(p, mem);
  fclose(mem);
  CHECK(strstr(text, "  [0] fused f32 [8] %2 +0 [1 0 0 0] <- expr 0: l0 = %0 +0 [1 0 0 0], l1 = "
                     "%1 +0 [1 0 0 0]; r0 = add l0 l1; r1 = exp r0\n") != NULL);
  free(text);
  /* a leaf in an unbound slot */
  p->values[1] = (kd_step_value){.loc = KD_LOC_SLOT, .dtype = KD_F32, .elems = 8, .slot = 0};
  kd_step_slot *slots = realloc(p->slots, sizeof *slots);
  if (!slots) abort();
  p->slots = slots;
  p->nslots = 1;
  p->slots[0] = (kd_step_slot){.name = "x", .dtype = KD_F32, .rank = 1, .shape = {8}};
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  arena = aligned_alloc(64, 192);
  void *none[1] = {NULL};
  CHECK(kd_step_run(p, arena, none, 0, 1, NULL, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strcmp(err, "instruction 0: slot 0 (x) is not bound") == 0);
  free(arena);
  kd_step_free(p);

  p = hand_fused();
  p->exprs[0].op[1].a[0] = 1; /* its own register */
  expect_invalid(p, "instruction 0: op 1: operand 0 is 1, not in -2..0");
  p = hand_fused();
  p->exprs[0].op[0].a[1] = -3; /* a third leaf */
  expect_invalid(p, "instruction 0: op 0: operand 1 is -3, not in -2..-1");
  p = hand_fused();
  p->exprs[0].leaf[1].offset = 3;
  expect_invalid(p, "instruction 0: leaf 1: element 10 is outside value 1's 8 elements");
  p = hand_fused();
  p->exprs[0].op[1].fn = KD_SF_SUM;
  expect_invalid(p, "instruction 0: op 1: fn 25 (sum) is not a map of operands");
  p = hand_fused();
  p->instr[0].expr = 1;
  expect_invalid(p, "instruction 0: expression 1 is not in 0..0");
  p = hand_fused();
  p->exprs[0].leaf[0].stride[0] = 0; /* dst over leaf 0, reading element 0 everywhere */
  p->values[2].offset = 0;
  expect_invalid(p, "instruction 0: dst overlaps leaf 0 without being the same elements");
}

/* A bit flipped at every byte of a fused program's bytes: refused, or a
   program that runs within its arena (ASan checks the tests' build). */
static void test_corruption(void) {
  kd_step_prog *f = build_tree(7 * 0x9E3779B97F4A7C15ull, 3, 5, 3);
  CHECK(fuse(f) > 0);
  uint8_t *buf = NULL;
  size_t len = 0;
  CHECK(kd_step_serialize(f, &buf, &len) == KD_OK);
  int refused = 0, ran = 0;
  for (size_t at = 0; buf && at < len; at++) {
    buf[at] ^= (uint8_t)(1u << (at % 8));
    kd_step_prog *q = NULL;
    char err[256] = "";
    if (kd_step_deserialize(buf, len, &q, err, sizeof err) != KD_OK) {
      refused++;
    } else {
      size_t bytes = ((size_t)q->arena_bytes + 127) / 64 * 64; /* a flipped size may be huge */
      char *arena = q->arena_bytes < (1 << 24) ? aligned_alloc(64, bytes) : NULL;
      if (arena) {
        memset(arena, 0, bytes);
        kd_step_run(q, arena, NULL, 0, q->ninstr, NULL, err, sizeof err);
      }
      free(arena);
      kd_step_free(q);
      ran++;
    }
    buf[at] ^= (uint8_t)(1u << (at % 8));
  }
  printf("corruption: %zu bytes, %d refused, %d ran\n", len, refused, ran);
  CHECK(refused > 0);
  free(buf);
  kd_step_free(f);
}

int main(void) {
  kd_pool *pool = NULL;
  CHECK(kd_pool_new(2, &pool) == KD_OK);
  test_random_trees(pool);
  test_reuse(true, pool);
  test_reuse(false, pool);
  test_between();
  test_validation();
  test_corruption();
  kd_pool_free(pool);
  return check_exit("test_stepfuse");
}
