/* The step-program executor (runtime/step.h) against naive loops in double,
 * on odd sizes (1, 3, 17, 33, 65: never a multiple of a vector width) with
 * contiguous, broadcast (stride 0), permuted and constant operands at every
 * source position, mixed dtypes, 1 and 2 threads, and the byte format's
 * round trip, rejections and corruption (a bit flipped at every byte).
 *
 * Tolerances. The executor computes every map in double and rounds once, so
 * +, -, *, /, sqrt, pow, comparisons and casts must equal the reference
 * (the same double operations on the same inputs, rounded the same way):
 * 0 ulps. Its f32 fast path takes exp, log and tanh from runtime/vmath.h,
 * within 1.5, 1.5 and 2 ulps (tests/step/test_vmath); we allow 4 ulps of
 * the f32 result, which still fails any wrong operand or index (those are
 * off by far more). Reductions and log-softmax sum in double in index
 * order, as the reference does, so they must match bit for bit, except
 * f32 sums of contiguous rows (8 double chains: 1 ulp); softmax is
 * e_k / s with e_k vmath's exp of x - m corrected for its low part (2.5
 * ulps: 1.5 for the exp, 1 for the correction's roundings) where the
 * reference has exp(x - lse): 3 ulps after the final rounding (step.c says
 * why; 2 is the most seen). Products are checked against the
 * worst-case bound of a float dot product, (K + 2) u sum |a_i b_i| (as
 * tests/kernels). Gathers and scatters copy and add in a fixed order:
 * exact. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "progbuild.h"
#include "step.h"


static void *new_arena(const kd_step_prog *p) {
  size_t n = (size_t)(p->arena_bytes + 64);
  void *a = aligned_alloc(64, n);
  memset(a, 0, n);
  return a;
}

static char *vptr(const kd_step_prog *p, void *arena, int v) {
  return (char *)arena + p->values[v].offset;
}

static double load(const kd_step_prog *p, void *arena, int v, int64_t i) {
  char *b = vptr(p, arena, v);
  switch (p->values[v].dtype) {
  case KD_F32: return ((float *)b)[i];
  case KD_I64: return (double)((int64_t *)b)[i];
  default: return ((uint8_t *)b)[i];
  }
}

/* Random contents by dtype: f32 in [-2, 2), i64 in -5..5, bool 0/1. */
static void fill_value(const kd_step_prog *p, void *arena, int v) {
  char *b = vptr(p, arena, v);
  for (int64_t i = 0; i < p->values[v].elems; i++) switch (p->values[v].dtype) {
    case KD_F32: ((float *)b)[i] = (float)(4 * urand() - 2); break;
    case KD_I64: ((int64_t *)b)[i] = (int64_t)(next() % 11) - 5; break;
    default: ((uint8_t *)b)[i] = (uint8_t)(next() & 1); break;
    }
}

enum { L_CONTIG, L_BCAST, L_PERM, L_CONST, L_COUNT };

/* A ref of `value` over shape with the given layout at element `offset`;
   returns the elements its value needs. Broadcast: a random non-empty set
   of dims has stride 0; permuted: a random storage order of the dims. */
static int64_t make_ref(kd_step_ref *r, int value, int rank, const int64_t *shape, int layout,
                        int64_t offset) {
  memset(r, 0, sizeof *r);
  if (layout == L_CONST) {
    r->value = -1;
    r->imm = 4 * urand() - 2;
    return 0;
  }
  r->value = value;
  r->offset = offset;
  int order[KD_STEP_MAX_RANK];
  for (int d = 0; d < rank; d++) order[d] = d;
  unsigned mask = 0;
  if (layout == L_BCAST) mask = 1 + (unsigned)(next() % ((1u << rank) - 1)); /* non-empty */
  if (layout == L_PERM)
    for (int d = rank - 1; d > 0; d--) {
      int j = (int)(next() % (uint64_t)(d + 1)), t = order[d];
      order[d] = order[j], order[j] = t;
    }
  int64_t acc = 1;
  for (int i = rank - 1; i >= 0; i--) {
    int d = order[i];
    if (mask & (1u << d)) continue;
    r->stride[d] = acc;
    acc *= shape[d];
  }
  return offset + acc;
}

static int64_t ref_offset(const kd_step_ref *r, int rank, const int64_t *idx) {
  int64_t o = r->offset;
  for (int d = 0; d < rank; d++) o += idx[d] * r->stride[d];
  return o;
}

static bool next_index(int rank, const int64_t *shape, int64_t *idx) {
  for (int d = rank - 1; d >= 0; d--) {
    if (++idx[d] < shape[d]) return true;
    idx[d] = 0;
  }
  return false;
}

/* ---- the reference ---------------------------------------------------------------- */

/* ir/refexec.c's scalar semantics, written out again. */
static double ref_fn(kd_step_fn fn, const double *x) {
  double a = x[0], b = x[1];
  switch (fn) {
  case KD_SF_COPY: case KD_SF_FILL: case KD_SF_IOTA: return a;
  case KD_SF_NEG: return -a;
  case KD_SF_EXP: return exp(a);
  case KD_SF_LOG: return log(a);
  case KD_SF_SQRT: return sqrt(a);
  case KD_SF_ABS: return fabs(a);
  case KD_SF_SIGN: return a > 0 ? 1.0 : a < 0 ? -1.0 : a;
  case KD_SF_TANH: return tanh(a);
  case KD_SF_ADD: return a + b;
  case KD_SF_SUB: return a - b;
  case KD_SF_MUL: return a * b;
  case KD_SF_MULZ: return a == 0 ? 0.0 : a * b;
  case KD_SF_DIV: return a / b;
  case KD_SF_POW: return pow(a, b);
  case KD_SF_MAX: return isnan(a) || isnan(b) ? NAN : a > b ? a : b;
  case KD_SF_MIN: return isnan(a) || isnan(b) ? NAN : a < b ? a : b;
  case KD_SF_LT: return a < b;
  case KD_SF_LE: return a <= b;
  case KD_SF_GT: return a > b;
  case KD_SF_GE: return a >= b;
  case KD_SF_EQ: return a == b;
  case KD_SF_NE: return a != b;
  case KD_SF_SELECT: return a != 0 ? b : x[2];
  default: return NAN;
  }
}

/* Ordered distance in ulps between two floats; NaN only matches NaN. */
static int64_t ulps(float a, float b) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) ? 0 : INT64_MAX;
  int32_t ia, ib;
  memcpy(&ia, &a, 4), memcpy(&ib, &b, 4);
  int64_t oa = ia < 0 ? (int64_t)INT32_MIN - ia : ia, ob = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
  return oa > ob ? oa - ob : ob - oa;
}

/* dst element i of value v against the reference x, rounded as a store of
   dst's dtype; tol ulps for f32. */
static bool matches(const kd_step_prog *p, void *arena, int v, int64_t i, double x, int tol) {
  char *b = vptr(p, arena, v);
  switch (p->values[v].dtype) {
  case KD_F32: return ulps(((float *)b)[i], (float)x) <= tol;
  case KD_I64: /* NaN 0, saturated, as step.c documents (C leaves it undefined) */
    return ((int64_t *)b)[i] == (isnan(x) ? 0 : x >= 0x1p63 ? INT64_MAX : x < -0x1p63 ? INT64_MIN
                                                                                     : (int64_t)x);
  default: return ((uint8_t *)b)[i] == (x != 0);
  }
}

static int fn_arity(kd_step_fn fn) {
  if (fn == KD_SF_IOTA) return 0;
  if (fn <= KD_SF_TANH) return 1;
  return fn == KD_SF_SELECT ? 3 : 2;
}

static int fn_tol(kd_step_fn fn) {
  return fn == KD_SF_EXP || fn == KD_SF_LOG || fn == KD_SF_TANH ? 4 : 0;
}

/* One MAP of fn over shape with the given layouts and dtypes (dt[0] dst),
   run on pool and checked element by element. Returns the mismatches. */
static int map_case(kd_step_fn fn, int rank, const int64_t *shape, const int *layout,
                    const kd_dtype *dt, int axis, kd_pool *pool) {
  int nsrc = fn_arity(fn);
  kd_step_prog *p = kd_step_alloc(1 + nsrc, 1, 0);
  kd_step_instr *in = &p->instr[0];
  in->kind = KD_STEP_MAP, in->fn = fn, in->rank = rank, in->nsrc = nsrc, in->axis = axis;
  in->node = -1;
  memcpy(in->shape, shape, (size_t)rank * sizeof *shape);
  p->values[0].dtype = dt[0];
  p->values[0].elems = make_ref(&in->dst, 0, rank, shape, layout[0], 5) + 3; /* slack at the end */
  for (int s = 0; s < nsrc; s++) {
    p->values[1 + s].dtype = dt[1 + s];
    int64_t n = make_ref(&in->src[s], 1 + s, rank, shape, layout[1 + s], 2);
    p->values[1 + s].elems = n > 0 ? n : 1;
  }
  place_values(p);
  char err[256] = "";
  kd_status st = kd_step_validate(p, err, sizeof err);
  CHECK(st == KD_OK);
  if (st != KD_OK) fprintf(stderr, "map %d: %s\n", fn, err);
  void *arena = new_arena(p);
  for (int v = 0; v < p->nvalues; v++) fill_value(p, arena, v);
  /* keep the dst's slack: it must come out unwritten */
  float before[3];
  memcpy(before, vptr(p, arena, 0) + (p->values[0].elems - 3) * (int64_t)kd_dtype_size(dt[0]),
         dt[0] == KD_F32 ? sizeof before : 0);
  CHECK(kd_step_run(p, arena, NULL, 0, 1, pool, err, sizeof err) == KD_OK);
  int bad = 0;
  bool f32_path = dt[0] == KD_F32 && fn != KD_SF_IOTA && fn != KD_SF_SELECT;
  for (int s = 0; s < nsrc; s++) f32_path &= in->src[s].value < 0 || dt[1 + s] == KD_F32;
  int64_t idx[KD_STEP_MAX_RANK] = {0};
  bool more = true;
  for (int d = 0; d < rank; d++) more &= shape[d] > 0;
  while (more) {
    double x[3] = {0, 0, 0};
    for (int s = 0; s < nsrc; s++)
      x[s] = in->src[s].value < 0 ? in->src[s].imm
                                  : load(p, arena, 1 + s, ref_offset(&in->src[s], rank, idx));
    /* the f32 path rounds constants to f32 (step.h) */
    if (f32_path)
      for (int s = 0; s < nsrc; s++) x[s] = (float)x[s];
    if (fn == KD_SF_IOTA) x[0] = (double)idx[axis];
    double want = ref_fn(fn, x);
    int64_t o = ref_offset(&in->dst, rank, idx);
    if (!matches(p, arena, 0, o, want, fn_tol(fn))) {
      if (!bad)
        fprintf(stderr, "map %s dst %s rank %d layouts %d %d %d %d: at %lld: %.9g vs %.9g\n",
                kd_dtype_name(dt[0]), fn == KD_SF_IOTA ? "iota" : "", rank, layout[0],
                layout[1], layout[2], layout[3], (long long)o, load(p, arena, 0, o), want);
      bad++;
    }
    more = next_index(rank, shape, idx);
  }
  if (dt[0] == KD_F32)
    CHECK(memcmp(before, vptr(p, arena, 0) + (p->values[0].elems - 3) * 4, sizeof before) == 0);
  free(arena);
  kd_step_free(p);
  return bad;
}

static const int64_t shapes[][KD_STEP_MAX_RANK + 1] = {
    {1, 1}, {1, 17}, {2, 3, 33}, {3, 2, 3, 17}, {4, 3, 1, 5, 17}, {4, 2, 2, 3, 65}, {2, 1, 1}};

/* Every map fn on f32, every layout at every source position. */
static void test_map_f32(kd_pool *pool) {
  for (int fn = KD_SF_COPY; fn <= KD_SF_SELECT; fn++) {
    if (fn == KD_SF_FILL || fn == KD_SF_IOTA) continue;
    int nsrc = fn_arity((kd_step_fn)fn), bad = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int pos = 0; pos < nsrc; pos++)
        for (int lay = 0; lay < L_COUNT; lay++)
          for (int dl = 0; dl < 2; dl++) { /* dst contiguous or permuted */
            int layout[4] = {dl ? L_PERM : L_CONTIG, L_CONTIG, L_PERM, L_CONTIG};
            layout[1 + pos] = lay;
            kd_dtype dt[4] = {KD_F32, KD_F32, KD_F32, KD_F32};
            bad += map_case((kd_step_fn)fn, (int)shapes[s][0], &shapes[s][1], layout, dt, 0,
                            pool);
          }
    CHECK(bad == 0);
    if (bad) fprintf(stderr, "map f32 fn %d: %d bad\n", fn, bad);
  }
  /* long rows over several chunks, split mid-row; a bias [D] and a
     layernorm-like mean [.., 1] broadcast */
  const int64_t big[3] = {3, 5, 4099};
  for (int fn = KD_SF_EXP; fn <= KD_SF_DIV; fn++) {
    int layout[4] = {L_CONTIG, L_CONTIG, L_BCAST, L_CONTIG};
    kd_dtype dt[4] = {KD_F32, KD_F32, KD_F32, KD_F32};
    CHECK(map_case((kd_step_fn)fn, 3, big, layout, dt, 0, pool) == 0);
  }
}

/* Any mix of f32, i64 and bool through the general path. */
static void test_map_dtypes(kd_pool *pool) {
  const kd_dtype types[3] = {KD_F32, KD_I64, KD_BOOL};
  const kd_step_fn fns[] = {KD_SF_COPY, KD_SF_NEG, KD_SF_EXP, KD_SF_ABS, KD_SF_SIGN, KD_SF_ADD,
                            KD_SF_MUL, KD_SF_MULZ, KD_SF_DIV, KD_SF_MAX, KD_SF_LT, KD_SF_GE,
                            KD_SF_EQ, KD_SF_NE, KD_SF_SELECT};
  int bad = 0;
  for (size_t f = 0; f < sizeof fns / sizeof fns[0]; f++)
    for (int combo = 0; combo < 81; combo++) {
      kd_dtype dt[4] = {types[combo % 3], types[combo / 3 % 3], types[combo / 9 % 3],
                        types[combo / 27 % 3]};
      int layout[4] = {L_CONTIG, L_CONTIG, L_BCAST, L_PERM};
      bad += map_case(fns[f], 2, &shapes[2][1], layout, dt, 0, pool);
    }
  /* IOTA along each axis into every dtype; FILL */
  for (int axis = 0; axis < 4; axis++)
    for (int t = 0; t < 3; t++) {
      int layout[4] = {axis & 1 ? L_PERM : L_CONTIG, 0, 0, 0};
      kd_dtype dt[4] = {types[t], KD_F32, KD_F32, KD_F32};
      bad += map_case(KD_SF_IOTA, 4, &shapes[5][1], layout, dt, axis, pool);
    }
  CHECK(bad == 0);
  if (bad) fprintf(stderr, "map dtypes: %d bad\n", bad);
}

/* Every map fn on the special values (0, -0, +-inf, NaN, +-1, 2, 0.5) in
   both sources, through the fast path (inner strides 0 and 1) and the
   general one (an inner stride of 2): MULZ's 0 * inf = 0, log(0) = -inf,
   SIGN of -0 and NaN, MAX and MIN of NaN, POW's corner cases. */
static void test_map_specials(void) {
  enum { S = 9 };
  const float sp[S] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1.0f, -1.0f, 2.0f, 0.5f};
  int bad = 0;
  for (int fn = KD_SF_COPY; fn <= KD_SF_NE; fn++)
    for (int general = 0; general < 2; general++) {
      if (fn == KD_SF_FILL || fn == KD_SF_IOTA) continue;
      int nsrc = fn_arity((kd_step_fn)fn);
      kd_step_prog *p = kd_step_alloc(3, 1, 0);
      kd_step_instr *in = &p->instr[0];
      *in = (kd_step_instr){.kind = KD_STEP_MAP, .fn = (kd_step_fn)fn, .rank = 2,
                            .shape = {S, S}, .nsrc = nsrc, .dst = {.value = 0, .stride = {S, 1}},
                            .src = {{.value = 1, .stride = {general ? 2 : 1, 0}},
                                    {.value = 2, .stride = {0, general ? 2 : 1}}}};
      if (nsrc == 1) in->src[0].stride[0] = 0, in->src[0].stride[1] = general ? 2 : 1;
      p->values[0] = (kd_step_value){.dtype = KD_F32, .elems = S * S};
      p->values[1] = (kd_step_value){.dtype = KD_F32, .elems = 2 * S};
      p->values[2] = (kd_step_value){.dtype = KD_F32, .elems = 2 * S};
      place_values(p);
      char err[256] = "";
      CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
      void *arena = new_arena(p);
      for (int v = 1; v < 3; v++) /* element i at i (stride 1) and at 2 i (stride 2) */
        for (int i = S - 1; i >= 0; i--) {
          float *x = (float *)vptr(p, arena, v);
          if (general) x[2 * i] = sp[i], x[2 * i + 1] = 7.0f;
          else x[i] = sp[i];
        }
      CHECK(kd_step_run(p, arena, NULL, 0, 1, NULL, err, sizeof err) == KD_OK);
      const float *y = (const float *)vptr(p, arena, 0);
      for (int i = 0; i < S; i++)
        for (int j = 0; j < S; j++) {
          double x[3] = {sp[nsrc == 1 ? j : i], sp[j], 0};
          double want = ref_fn((kd_step_fn)fn, x);
          if (ulps(y[i * S + j], (float)want) > fn_tol((kd_step_fn)fn)) {
            if (bad < 5) fprintf(stderr, "special fn %d general %d: f(%g, %g) = %g, not %g\n",
                                 fn, general, x[0], x[1], (double)y[i * S + j], want);
            bad++;
          }
        }
      free(arena);
      kd_step_free(p);
    }
  CHECK(bad == 0);
}

/* A causal mask as codegen writes it: i64 IOTAs compared into a bool,
   SELECT(mask, x, -inf), CAST bool -> f32; FILL with a double constant;
   an in-place add. */
static void test_map_program(void) {
  enum { T = 5 };
  kd_step_prog *p = kd_step_alloc(6, 6, 0);
  kd_dtype dts[6] = {KD_I64, KD_I64, KD_BOOL, KD_F32, KD_F32, KD_F32};
  for (int v = 0; v < 6; v++) p->values[v].dtype = dts[v], p->values[v].elems = T * T;
  place_values(p);
  const int64_t shape[2] = {T, T};
  kd_step_ref c[6];
  for (int v = 0; v < 6; v++) make_ref(&c[v], v, 2, shape, L_CONTIG, 0);
  kd_step_ref ninf = {.value = -1, .imm = -INFINITY}, tenth = {.value = -1, .imm = 0.1};
  kd_step_instr *in = p->instr;
  for (int i = 0; i < 6; i++) {
    in[i].kind = KD_STEP_MAP, in[i].rank = 2, in[i].node = -1;
    memcpy(in[i].shape, shape, sizeof shape);
  }
  in[0].fn = KD_SF_IOTA, in[0].axis = 0, in[0].dst = c[0];
  in[1].fn = KD_SF_IOTA, in[1].axis = 1, in[1].dst = c[1];
  in[2].fn = KD_SF_GE, in[2].nsrc = 2, in[2].dst = c[2], in[2].src[0] = c[0], in[2].src[1] = c[1];
  in[3].fn = KD_SF_FILL, in[3].nsrc = 1, in[3].dst = c[3], in[3].src[0] = tenth;
  in[4].fn = KD_SF_SELECT, in[4].nsrc = 3, in[4].dst = c[4], in[4].src[0] = c[2];
  in[4].src[1] = c[3], in[4].src[2] = ninf;
  in[5].fn = KD_SF_ADD, in[5].nsrc = 2, in[5].dst = c[4], in[5].src[0] = c[4];
  in[5].src[1] = c[2]; /* in place, + the mask as 0/1 */
  char err[256];
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  void *arena = new_arena(p);
  CHECK(kd_step_run(p, arena, NULL, 0, 6, NULL, err, sizeof err) == KD_OK);
  const float *y = (const float *)vptr(p, arena, 4), *f = (const float *)vptr(p, arena, 3);
  const uint8_t *m = (const uint8_t *)vptr(p, arena, 2);
  int bad = 0;
  for (int i = 0; i < T; i++)
    for (int j = 0; j < T; j++) {
      bad += m[i * T + j] != (i >= j) || f[i * T + j] != 0.1f;
      bad += j <= i ? y[i * T + j] != (float)(0.1 + 1) : y[i * T + j] != -INFINITY;
    }
  CHECK(bad == 0);
  free(arena);
  kd_step_free(p);

  /* rank 0: one element, dst = x * 0.25 */
  p = kd_step_alloc(2, 1, 0);
  p->values[0] = p->values[1] = (kd_step_value){.dtype = KD_F32, .elems = 1};
  place_values(p);
  p->instr[0] = (kd_step_instr){.kind = KD_STEP_MAP, .fn = KD_SF_MUL, .nsrc = 2,
                                .dst = {.value = 0},
                                .src = {{.value = 1}, {.value = -1, .imm = 0.25}}};
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  arena = new_arena(p);
  *(float *)vptr(p, arena, 1) = 3.0f;
  CHECK(kd_step_run(p, arena, NULL, 0, 1, NULL, err, sizeof err) == KD_OK);
  CHECK(*(float *)vptr(p, arena, 0) == 0.75f);
  free(arena);
  kd_step_free(p);

  /* in place through refs that differ only in a size-1 dim's stride */
  p = kd_step_alloc(1, 1, 0);
  p->values[0] = (kd_step_value){.dtype = KD_F32, .elems = 5};
  place_values(p);
  p->instr[0] = (kd_step_instr){.kind = KD_STEP_MAP, .fn = KD_SF_NEG, .nsrc = 1, .rank = 2,
                                .shape = {5, 1}, .dst = {.value = 0, .stride = {1, 0}},
                                .src = {{.value = 0, .stride = {1, 3}}}};
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  arena = new_arena(p);
  for (int i = 0; i < 5; i++) ((float *)vptr(p, arena, 0))[i] = (float)i;
  CHECK(kd_step_run(p, arena, NULL, 0, 1, NULL, err, sizeof err) == KD_OK);
  CHECK(((float *)vptr(p, arena, 0))[4] == -4.0f && ((float *)vptr(p, arena, 0))[1] == -1.0f);
  free(arena);
  kd_step_free(p);
}

/* ---- reductions and softmax ---------------------------------------------------------- */

/* REDUCE fn along axis of src [shape] (contiguous or permuted) into a
   contiguous dst over the other dims, against the same double loop. */
static int reduce_case(kd_step_fn fn, int rank, const int64_t *shape, int axis, int layout,
                       kd_dtype sdt, kd_dtype ddt, bool specials, kd_pool *pool) {
  kd_step_prog *p = kd_step_alloc(2, 1, 0);
  kd_step_instr *in = &p->instr[0];
  in->kind = KD_STEP_REDUCE, in->fn = fn, in->rank = rank, in->nsrc = 1, in->axis = axis;
  memcpy(in->shape, shape, (size_t)rank * sizeof *shape);
  p->values[1].dtype = sdt;
  p->values[1].elems = make_ref(&in->src[0], 1, rank, shape, layout, 1);
  int64_t dshape[KD_STEP_MAX_RANK] = {0};
  memcpy(dshape, shape, (size_t)rank * sizeof *shape);
  dshape[axis] = 1;
  p->values[0].dtype = ddt;
  p->values[0].elems = make_ref(&in->dst, 0, rank, dshape, L_CONTIG, 0);
  in->dst.stride[axis] = 0;
  place_values(p);
  char err[256] = "";
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  void *arena = new_arena(p);
  fill_value(p, arena, 1);
  if (specials && sdt == KD_F32) { /* row 0 all -inf, a NaN in the last row */
    float *x = (float *)vptr(p, arena, 1);
    int64_t idx[KD_STEP_MAX_RANK] = {0};
    for (idx[axis] = 0; idx[axis] < shape[axis]; idx[axis]++)
      x[ref_offset(&in->src[0], rank, idx)] = -INFINITY;
    for (int d = 0; d < rank; d++) idx[d] = shape[d] - 1;
    x[ref_offset(&in->src[0], rank, idx)] = NAN;
  }
  CHECK(kd_step_run(p, arena, NULL, 0, 1, pool, err, sizeof err) == KD_OK);
  int bad = 0;
  int64_t idx[KD_STEP_MAX_RANK] = {0};
  do {
    if (idx[axis] != 0) continue; /* one row per dst element */
    double m = -INFINITY, s = 0;
    int64_t j[KD_STEP_MAX_RANK];
    memcpy(j, idx, sizeof j);
    for (j[axis] = 0; j[axis] < shape[axis]; j[axis]++) {
      double x = load(p, arena, 1, ref_offset(&in->src[0], rank, j));
      s += x;
      m = isnan(x) || isnan(m) ? NAN : x > m ? x : m;
    }
    double want = fn == KD_SF_SUM ? s : m;
    if (fn == KD_SF_LSE && isfinite(m)) {
      double e = 0;
      for (j[axis] = 0; j[axis] < shape[axis]; j[axis]++)
        e += exp(load(p, arena, 1, ref_offset(&in->src[0], rank, j)) - m);
      want = m + log(e);
    }
    /* f32 sums of contiguous rows run 8 chains (step.c's row_sum_f32): both
       orders are within a double rounding of the exact sum, 1 ulp apart at
       most once rounded to float; everything else in index order: exact */
    int tol = fn == KD_SF_SUM && p->values[0].dtype == KD_F32 ? 1 : 0;
    if (!matches(p, arena, 0, ref_offset(&in->dst, rank, idx), want, tol)) {
      if (!bad) fprintf(stderr, "reduce fn %d axis %d: %.9g vs %.9g\n", fn, axis,
                        load(p, arena, 0, ref_offset(&in->dst, rank, idx)), want);
      bad++;
    }
  } while (next_index(rank, shape, idx));
  free(arena);
  kd_step_free(p);
  return bad;
}

static void test_reduce(kd_pool *pool) {
  const int64_t shape[4] = {3, 4, 17, 33}, tall[2] = {1000, 67};
  int bad = 0;
  for (int fn = KD_SF_SUM; fn <= KD_SF_LSE; fn++)
    for (int axis = 0; axis < 4; axis++)
      for (int lay = 0; lay < 2; lay++)
        bad += reduce_case((kd_step_fn)fn, 4, shape, axis, lay ? L_PERM : L_CONTIG, KD_F32,
                           KD_F32, lay, pool);
  for (int axis = 0; axis < 2; axis++) /* a bias gradient: many rows, blocks of columns */
    bad += reduce_case(KD_SF_SUM, 2, tall, axis, L_CONTIG, KD_F32, KD_F32, false, pool);
  bad += reduce_case(KD_SF_SUM, 2, &shapes[2][1], 1, L_CONTIG, KD_BOOL, KD_I64, false, pool);
  bad += reduce_case(KD_SF_RMAX, 2, &shapes[2][1], 0, L_PERM, KD_I64, KD_F32, false, pool);
  CHECK(bad == 0);
}

static int softmax_case(kd_step_fn fn, int rank, const int64_t *shape, int axis, int layout,
                        bool in_place, kd_pool *pool) {
  kd_step_prog *p = kd_step_alloc(2, 1, 0);
  kd_step_instr *in = &p->instr[0];
  in->kind = KD_STEP_SOFTMAX, in->fn = fn, in->rank = rank, in->nsrc = 1, in->axis = axis;
  memcpy(in->shape, shape, (size_t)rank * sizeof *shape);
  p->values[0].dtype = p->values[1].dtype = KD_F32;
  p->values[1].elems = make_ref(&in->src[0], 1, rank, shape, layout, 0);
  p->values[0].elems = make_ref(&in->dst, 0, rank, shape, L_CONTIG, 0);
  if (in_place) in->dst = in->src[0], p->values[0].elems = 1; /* value 0 unused */
  place_values(p);
  char err[256] = "";
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  void *arena = new_arena(p);
  fill_value(p, arena, 1);
  float *x = (float *)vptr(p, arena, 1);
  /* causal mask: -inf where the axis index passes the previous dim's; and
     the whole first row -inf (NaN out, as refexec) */
  int64_t idx[KD_STEP_MAX_RANK] = {0};
  do {
    bool first = true;
    for (int d = 0; d < rank; d++) first &= d == axis || idx[d] == 0;
    int prev = axis > 0 ? axis - 1 : 1;
    if (first || idx[axis] > idx[prev]) x[ref_offset(&in->src[0], rank, idx)] = -INFINITY;
  } while (next_index(rank, shape, idx));
  float *copy = malloc((size_t)p->values[1].elems * sizeof *copy);
  memcpy(copy, x, (size_t)p->values[1].elems * sizeof *copy);
  CHECK(kd_step_run(p, arena, NULL, 0, 1, pool, err, sizeof err) == KD_OK);
  int bad = 0;
  memset(idx, 0, sizeof idx);
  do {
    if (idx[axis] != 0) continue;
    int64_t j[KD_STEP_MAX_RANK];
    memcpy(j, idx, sizeof j);
    double m = -INFINITY, s = 0;
    for (j[axis] = 0; j[axis] < shape[axis]; j[axis]++) {
      double v = copy[ref_offset(&in->src[0], rank, j)];
      m = isnan(v) || isnan(m) ? NAN : v > m ? v : m;
    }
    double lse = m;
    if (isfinite(m)) {
      for (j[axis] = 0; j[axis] < shape[axis]; j[axis]++)
        s += exp(copy[ref_offset(&in->src[0], rank, j)] - m);
      lse = m + log(s);
    }
    for (j[axis] = 0; j[axis] < shape[axis]; j[axis]++) {
      double y = copy[ref_offset(&in->src[0], rank, j)] - lse;
      if (fn == KD_SF_SOFTMAX) y = exp(y);
      bad += !matches(p, arena, in->dst.value, ref_offset(&in->dst, rank, j), y,
                      fn == KD_SF_SOFTMAX ? 3 : 0);
    }
  } while (next_index(rank, shape, idx));
  free(copy);
  free(arena);
  kd_step_free(p);
  return bad;
}

static void test_softmax(kd_pool *pool) {
  const int64_t shape[3] = {2, 17, 33}, att[4] = {2, 3, 65, 65}, wide[2] = {3, 2100};
  int bad = 0;
  for (int fn = KD_SF_SOFTMAX; fn <= KD_SF_LOG_SOFTMAX; fn++) {
    for (int axis = 0; axis < 3; axis++)
      for (int lay = 0; lay < 2; lay++)
        bad += softmax_case((kd_step_fn)fn, 3, shape, axis, lay ? L_PERM : L_CONTIG, false, pool);
    bad += softmax_case((kd_step_fn)fn, 4, att, 3, L_CONTIG, true, pool);
    bad += softmax_case((kd_step_fn)fn, 2, wide, 1, L_CONTIG, false, pool); /* > SOFT_KEEP */
  }
  CHECK(bad == 0);
  if (bad) fprintf(stderr, "softmax: %d bad\n", bad);
}

/* ---- products, gathers, scatters ------------------------------------------------------- */

static const double U = 1.0 / (1 << 24);

static void test_gemm(void) {
  const int64_t mkn[][3] = {{1, 1, 1}, {3, 17, 1}, {17, 3, 33}, {33, 65, 17}};
  int bad = 0;
  for (size_t s = 0; s < sizeof mkn / sizeof mkn[0]; s++)
    for (int flags = 0; flags < 8; flags++) {
      int64_t B = 3, m = mkn[s][0], k = mkn[s][1], n = mkn[s][2];
      bool shared = flags & 4;
      kd_step_prog *p = kd_step_alloc(3, 1, 0);
      kd_step_instr *in = &p->instr[0];
      in->kind = KD_STEP_GEMM, in->nsrc = 2;
      in->gemm = (kd_gemm){.batch = B, .m = m, .n = n, .k = k, .trans_a = flags & 1,
                           .trans_b = flags & 2, .alpha = 0.5f, .beta = 2.0f,
                           .stride_a = m * k, .stride_b = shared ? 0 : k * n, .stride_c = m * n};
      /* a, b and c at element offsets 3, 5 and 7 of their values */
      in->src[0].value = 0, in->src[0].offset = 3;
      in->src[1].value = 1, in->src[1].offset = 5;
      in->dst.value = 2, in->dst.offset = 7;
      p->values[0] = (kd_step_value){.dtype = KD_F32, .elems = 3 + B * m * k};
      p->values[1] = (kd_step_value){.dtype = KD_F32, .elems = 5 + (shared ? 1 : B) * k * n};
      p->values[2] = (kd_step_value){.dtype = KD_F32, .elems = 7 + B * m * n};
      place_values(p);
      char err[256];
      CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
      void *arena = new_arena(p);
      for (int v = 0; v < 3; v++) fill_value(p, arena, v);
      float *c0 = malloc((size_t)(B * m * n) * 4);
      const float *A = (float *)vptr(p, arena, 0) + 3, *Bm = (float *)vptr(p, arena, 1) + 5;
      float *C = (float *)vptr(p, arena, 2) + 7;
      memcpy(c0, C, (size_t)(B * m * n) * 4);
      CHECK(kd_step_run(p, arena, NULL, 0, 1, NULL, err, sizeof err) == KD_OK);
      for (int64_t t = 0; t < B; t++)
        for (int64_t i = 0; i < m; i++)
          for (int64_t j = 0; j < n; j++) {
            double sum = 0, sabs = 0;
            for (int64_t l = 0; l < k; l++) {
              const float *a = A + t * m * k, *b = Bm + (shared ? 0 : t * k * n);
              double x = (double)(flags & 1 ? a[l * m + i] : a[i * k + l]) *
                         (flags & 2 ? b[j * k + l] : b[l * n + j]);
              sum += x, sabs += fabs(x);
            }
            double old = c0[t * m * n + i * n + j], want = 0.5 * sum + 2.0 * old;
            double tol = (double)(k + 2) * U * (0.5 * sabs + fabs(2.0 * old));
            bad += !(fabs(C[t * m * n + i * n + j] - want) <= tol);
          }
      free(c0);
      free(arena);
      kd_step_free(p);
    }
  CHECK(bad == 0);
}

/* A product reading its operands in place (lda, ldb, two batch levels):
   validation takes the last row of the last item as the extent, so one
   float less is refused and the exact size runs; an ld under a stored
   row's length and a batch that batch2 does not divide are refused. */
static void test_gemm_strided_bounds(void) {
  enum { B1 = 2, B2 = 3, M = 4, K = 5, N = 6, LDA = 11, SA2 = 2 * K, SA1 = B2 * SA2 + 7 };
  /* A's extent: (B1 - 1) SA1 + (B2 - 1) SA2 + (M - 1) LDA + K */
  const int64_t need = (B1 - 1) * SA1 + (B2 - 1) * SA2 + (M - 1) * LDA + K;
  for (int less = 1; less >= 0; less--) {
    kd_step_prog *p = kd_step_alloc(3, 1, 0);
    kd_step_instr *in = &p->instr[0];
    in->kind = KD_STEP_GEMM, in->nsrc = 2;
    in->gemm = (kd_gemm){.batch = B1 * B2, .m = M, .n = N, .k = K, .alpha = 1,
                         .stride_a = SA1, .stride_c = B2 * M * N, .lda = LDA, .batch2 = B2,
                         .stride2_a = SA2, .stride2_c = M * N};
    in->src[0].value = 0, in->src[1].value = 1, in->dst.value = 2;
    p->values[0] = (kd_step_value){.dtype = KD_F32, .elems = need - less};
    p->values[1] = (kd_step_value){.dtype = KD_F32, .elems = K * N};
    p->values[2] = (kd_step_value){.dtype = KD_F32, .elems = B1 * B2 * M * N};
    place_values(p);
    char err[256] = "";
    kd_status st = kd_step_validate(p, err, sizeof err);
    CHECK(less ? st == KD_ERR_FORMAT : st == KD_OK);
    if (!less) {
      in->gemm.lda = K - 1;
      CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
      CHECK(strcmp(err, "instruction 0: gemm lda 4, ldb 6 or batch2 3 do not fit the sizes") == 0);
      in->gemm.lda = LDA, in->gemm.batch = 5;
      CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
    }
    kd_step_free(p);
  }
}

/* table [V, D] gathered at ids [n]; the rows scattered back, with and
   without accumulate; an id outside the table. */
static void test_rows(kd_pool *pool) {
  enum { V = 7, D = 5, N = 11 };
  kd_step_prog *p = kd_step_alloc(4, 2, 0);
  p->values[0] = (kd_step_value){.dtype = KD_F32, .elems = V * D};
  p->values[1] = (kd_step_value){.dtype = KD_I64, .elems = N + 2};
  p->values[2] = (kd_step_value){.dtype = KD_F32, .elems = N * D};
  p->values[3] = (kd_step_value){.dtype = KD_F32, .elems = V * D};
  place_values(p);
  kd_step_instr *g = &p->instr[0], *s = &p->instr[1];
  g->kind = KD_STEP_GATHER, g->nsrc = 2, g->rank = 2, g->shape[0] = N, g->shape[1] = D;
  g->rows = V, g->src[0].value = 0, g->src[1].value = 1, g->src[1].offset = 2, g->dst.value = 2;
  *s = *g;
  s->kind = KD_STEP_SCATTER_ADD, s->src[0].value = 2, s->dst.value = 3;
  char err[256] = "";
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  void *arena = new_arena(p);
  fill_value(p, arena, 0);
  fill_value(p, arena, 3);
  int64_t *ids = (int64_t *)vptr(p, arena, 1) + 2;
  for (int i = 0; i < N; i++) ids[i] = (int64_t)(next() % V);
  const float *table = (float *)vptr(p, arena, 0), *out = (float *)vptr(p, arena, 2);
  float *acc = (float *)vptr(p, arena, 3);
  for (int accumulate = 0; accumulate < 2; accumulate++) {
    s->accumulate = accumulate;
    float want[V * D];
    for (int i = 0; i < V * D; i++) want[i] = accumulate ? acc[i] : 0;
    CHECK(kd_step_run(p, arena, NULL, 0, 2, pool, err, sizeof err) == KD_OK);
    int bad = 0;
    for (int i = 0; i < N; i++)
      for (int d = 0; d < D; d++) {
        bad += out[i * D + d] != table[ids[i] * D + d];
        want[ids[i] * D + d] += table[ids[i] * D + d]; /* in id order, as promised */
      }
    for (int i = 0; i < V * D; i++) bad += acc[i] != want[i];
    CHECK(bad == 0);
  }
  ids[3] = V;
  CHECK(kd_step_run(p, arena, NULL, 0, 2, pool, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strcmp(err, "instruction 0: gather: id 7 at position 3 is outside the table's 7 rows") ==
        0);
  ids[3] = -1;
  CHECK(kd_step_run(p, arena, NULL, 1, 2, pool, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strcmp(err, "instruction 1: scatter_add: id -1 at position 3 is outside the table's 7 "
                    "rows") == 0);
  free(arena);
  kd_step_free(p);
}

/* ---- a whole program: threads, slots, the byte format ------------------------------------ */

/* x [R, C] (slot "x") -> exp -> + bias [C] -> sum over rows and over
   columns -> softmax over columns -> a product with a [C, 3] slot ->
   gather of the product's rows at ids (slot). */
enum { R = 64, C = 1031 };
static kd_step_prog *sample_prog_sized(int64_t rows, int64_t cols) {
  kd_step_prog *p = kd_step_alloc(10, 7, 3);
  p->slots[0] = (kd_step_slot){.name = "x", .dtype = KD_F32, .rank = 2, .shape = {rows, cols}};
  p->slots[1] = (kd_step_slot){.name = "w", .dtype = KD_F32, .rank = 2, .shape = {cols, 3}};
  p->slots[2] = (kd_step_slot){.name = "ids", .dtype = KD_I64, .rank = 1, .shape = {5}};
  p->values[0] = (kd_step_value){.loc = KD_LOC_SLOT, .dtype = KD_F32, .elems = rows * cols, .slot = 0};
  p->values[1] = (kd_step_value){.dtype = KD_F32, .elems = cols};          /* bias */
  p->values[2] = (kd_step_value){.dtype = KD_F32, .elems = rows * cols};      /* exp(x) + bias */
  p->values[3] = (kd_step_value){.dtype = KD_F32, .elems = cols};          /* column sums */
  p->values[4] = (kd_step_value){.dtype = KD_F32, .elems = rows};          /* row sums */
  p->values[5] = (kd_step_value){.dtype = KD_F32, .elems = rows * cols};      /* softmax */
  p->values[6] = (kd_step_value){.loc = KD_LOC_SLOT, .dtype = KD_F32, .elems = cols * 3, .slot = 1};
  p->values[7] = (kd_step_value){.dtype = KD_F32, .elems = rows * 3};
  p->values[8] = (kd_step_value){.loc = KD_LOC_SLOT, .dtype = KD_I64, .elems = 5, .slot = 2};
  p->values[9] = (kd_step_value){.dtype = KD_F32, .elems = 5 * 3};
  place_values(p);
  const int64_t shape[2] = {rows, cols};
  kd_step_ref x, b, y, cs, rs, sm;
  make_ref(&x, 0, 2, shape, L_CONTIG, 0);
  make_ref(&y, 2, 2, shape, L_CONTIG, 0);
  make_ref(&sm, 5, 2, shape, L_CONTIG, 0);
  b = (kd_step_ref){.value = 1, .stride = {0, 1}};
  cs = (kd_step_ref){.value = 3, .stride = {0, 1}};
  rs = (kd_step_ref){.value = 4, .stride = {1, 0}};
  kd_step_instr *in = p->instr;
  in[0] = (kd_step_instr){.kind = KD_STEP_MAP, .fn = KD_SF_EXP, .rank = 2, .shape = {rows, cols},
                          .nsrc = 1, .dst = y, .src = {x}, .node = 0};
  in[1] = (kd_step_instr){.kind = KD_STEP_MAP, .fn = KD_SF_ADD, .rank = 2, .shape = {rows, cols},
                          .nsrc = 2, .dst = y, .src = {y, b}, .node = 1};
  in[2] = (kd_step_instr){.kind = KD_STEP_REDUCE, .fn = KD_SF_SUM, .rank = 2, .shape = {rows, cols},
                          .axis = 0, .nsrc = 1, .dst = cs, .src = {y}, .node = 2};
  in[3] = (kd_step_instr){.kind = KD_STEP_REDUCE, .fn = KD_SF_LSE, .rank = 2, .shape = {rows, cols},
                          .axis = 1, .nsrc = 1, .dst = rs, .src = {y}, .node = 3};
  in[4] = (kd_step_instr){.kind = KD_STEP_SOFTMAX, .fn = KD_SF_SOFTMAX, .rank = 2,
                          .shape = {rows, cols}, .axis = 1, .nsrc = 1, .dst = sm, .src = {y},
                          .node = -1};
  in[5] = (kd_step_instr){.kind = KD_STEP_GEMM, .nsrc = 2, .dst = {.value = 7},
                          .src = {{.value = 5}, {.value = 6}},
                          .gemm = {.batch = 1, .m = rows, .n = 3, .k = cols, .alpha = 1}, .node = 5};
  in[6] = (kd_step_instr){.kind = KD_STEP_GATHER, .rank = 2, .shape = {5, 3}, .nsrc = 2,
                          .dst = {.value = 9}, .src = {{.value = 7}, {.value = 8}}, .rows = rows,
                          .node = 6};
  p->split = 4;
  return p;
}

static kd_step_prog *sample_prog(void) { return sample_prog_sized(R, C); }

static void test_threads_and_slots(kd_pool *pool2) {
  kd_step_prog *p = sample_prog();
  char err[256] = "";
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  if (err[0]) fprintf(stderr, "sample: %s\n", err);
  float *x = malloc(R * C * sizeof *x), *w = malloc(C * 3 * sizeof *w);
  int64_t ids[5] = {0, 63, 5, 5, 17};
  for (int i = 0; i < R * C; i++) x[i] = (float)(4 * urand() - 2);
  for (int i = 0; i < C * 3; i++) w[i] = (float)(2 * urand() - 1);
  void *slots[3] = {x, w, ids};
  void *a1 = new_arena(p), *a2 = new_arena(p);
  for (int64_t i = 0; i < C; i++) ((float *)vptr(p, a1, 1))[i] = ((float *)vptr(p, a2, 1))[i] =
      (float)i / C;
  CHECK(kd_step_run(p, a1, slots, 0, p->split, NULL, err, sizeof err) == KD_OK);
  CHECK(kd_step_run(p, a1, slots, p->split, p->ninstr, NULL, err, sizeof err) == KD_OK);
  CHECK(kd_step_run(p, a2, slots, 0, p->ninstr, pool2, err, sizeof err) == KD_OK);
  CHECK(memcmp(a1, a2, (size_t)p->arena_bytes) == 0); /* bit for bit, 1 and 2 threads */
  /* spot checks of the whole chain: the softmax rows sum to 1, the gather
     copies the product's rows */
  const float *sm = (float *)vptr(p, a1, 5), *prod = (float *)vptr(p, a1, 7);
  const float *gat = (float *)vptr(p, a1, 9);
  double s = 0;
  for (int j = 0; j < C; j++) s += sm[17 * C + j];
  CHECK(fabs(s - 1) < 1e-5);
  CHECK(memcmp(gat + 3, prod + 63 * 3, 3 * sizeof *gat) == 0);
  /* an unbound slot, a bad range */
  void *missing[3] = {x, NULL, ids};
  CHECK(kd_step_run(p, a1, missing, 0, p->ninstr, NULL, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strcmp(err, "instruction 5: slot 1 (w) is not bound") == 0);
  CHECK(kd_step_run(p, a1, missing, 0, 5, NULL, err, sizeof err) == KD_OK);
  CHECK(kd_step_run(p, a1, slots, 3, 8, NULL, err, sizeof err) == KD_ERR_INVALID);
  CHECK(kd_step_find_slot(p, "ids") == 2 && kd_step_find_slot(p, "nope") == -1);
  free(a1), free(a2), free(x), free(w);
  kd_step_free(p);
}

static void test_serialize(void) {
  kd_step_prog *p = sample_prog();
  p->instr[1].src[1].imm = -0.0; /* bits kept */
  uint8_t *b1 = NULL, *b2 = NULL;
  size_t n1 = 0, n2 = 0;
  CHECK(kd_step_serialize(p, &b1, &n1) == KD_OK);
  kd_step_prog *q = NULL;
  char err[256] = "";
  CHECK(kd_step_deserialize(b1, n1, &q, err, sizeof err) == KD_OK);
  if (!q) {
    fprintf(stderr, "deserialize: %s\n", err);
    kd_step_free(p);
    free(b1);
    return;
  }
  CHECK(kd_step_serialize(q, &b2, &n2) == KD_OK);
  CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0);
  CHECK(q->split == 4 && q->nslots == 3 && strcmp(q->slots[2].name, "ids") == 0);
  kd_step_free(q);
  free(b2);

  /* every truncation, one byte too many */
  int accepted = 0;
  for (size_t len = 0; len < n1; len++) {
    uint8_t *t = malloc(len ? len : 1); /* exactly len bytes: ASan sees any overread */
    memcpy(t, b1, len);
    q = NULL;
    accepted += kd_step_deserialize(t, len, &q, err, sizeof err) != KD_ERR_FORMAT || q;
    free(t);
  }
  CHECK(accepted == 0);
  CHECK(kd_step_deserialize(b1, n1 - 1, &q, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strstr(err, "step program truncated") == err);
  uint8_t *longer = calloc(n1 + 1, 1);
  memcpy(longer, b1, n1);
  CHECK(kd_step_deserialize(longer, n1 + 1, &q, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strstr(err, "step program too long") == err);
  free(longer);

  /* a flipped magic, a future version, a flag byte of 2 */
  b1[0] ^= 1;
  CHECK(kd_step_deserialize(b1, n1, &q, err, sizeof err) == KD_ERR_FORMAT && !q);
  CHECK(strcmp(err, "not a step program (magic 0x5044534a)") == 0);
  b1[0] ^= 1;
  b1[4] = 4;
  CHECK(kd_step_deserialize(b1, n1, &q, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "step program version 4; this runtime reads version 3 (rebuild it with this "
                    "kdc)") == 0);
  b1[4] = 3;
  free(b1);

  /* a ref past its value's end: the column sums' broadcast bias read one
     element further */
  p->instr[1].src[1].offset = 1;
  CHECK(kd_step_serialize(p, &b1, &n1) == KD_OK);
  CHECK(kd_step_deserialize(b1, n1, &q, err, sizeof err) == KD_ERR_FORMAT && !q);
  CHECK(strcmp(err, "instruction 1: src 1: element 1031 is outside value 1's 1031 elements") == 0);
  free(b1);
  kd_step_free(p);
}

/* About how many elements a program touches: a corrupted size can ask a
   valid, in-bounds program for 2^40 iterations (a reduction reading one
   element again and again). */
static double prog_work(const kd_step_prog *q) {
  double w = 0;
  for (int i = 0; i < q->ninstr; i++) {
    const kd_step_instr *in = &q->instr[i];
    double e = 1;
    for (int d = 0; d < in->rank; d++) e *= (double)in->shape[d];
    if (in->kind == KD_STEP_GEMM)
      e = (double)in->gemm.batch * (double)in->gemm.m * (double)in->gemm.n * (double)in->gemm.k;
    if (in->kind == KD_STEP_GATHER || in->kind == KD_STEP_SCATTER_ADD)
      e += (double)in->rows * (double)in->shape[1];
    w += e;
  }
  return w;
}

/* Corruption never reads or writes out of bounds: one bit flipped at every
   byte of a small valid program, the result either refused or run on an
   arena and slots of exactly the sizes it declares (ASan catches any
   access outside them). */
static void test_corruption(kd_pool *pool) {
  kd_step_prog *p = sample_prog_sized(4, 9);
  uint8_t *b = NULL;
  size_t n = 0;
  CHECK(kd_step_serialize(p, &b, &n) == KD_OK);
  kd_step_free(p);
  int ran = 0, refused = 0;
  for (size_t at = 0; at < n; at++) {
    uint8_t bit = (uint8_t)(1u << (next() % 8));
    b[at] ^= bit;
    kd_step_prog *q = NULL;
    char err[256];
    if (kd_step_deserialize(b, n, &q, err, sizeof err) != KD_OK) {
      refused++;
    } else if (q->arena_bytes <= (1 << 24) && prog_work(q) < 1e6) {
      void *arena = aligned_alloc(64, (size_t)(q->arena_bytes + 63) / 64 * 64 + 64);
      memset(arena, 0, (size_t)q->arena_bytes);
      void *slots[3] = {NULL, NULL, NULL};
      bool small = q->nslots <= 3;
      for (int k = 0; k < q->nslots && small; k++) {
        double e = (double)kd_dtype_size(q->slots[k].dtype);
        for (int d = 0; d < q->slots[k].rank; d++) e *= (double)q->slots[k].shape[d];
        small = e <= (1 << 24);
        if (small) slots[k] = calloc((size_t)e + 1, 1); /* + 1: malloc(0) */
      }
      if (small) {
        kd_step_run(q, arena, slots, 0, q->ninstr, pool, err, sizeof err);
        ran++;
      }
      for (int k = 0; k < 3; k++) free(slots[k]);
      free(arena);
    }
    kd_step_free(q);
    b[at] ^= bit;
  }
  CHECK(ran > 0 && refused > 0); /* both outcomes happen */
  free(b);
}

/* Validation's other refusals, each with its message. */
static void test_validate(void) {
  char err[256];
  kd_step_prog *p = sample_prog();
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  p->instr[0].src[0].stride[1] = -1;
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "instruction 0: src 0: negative stride") == 0);
  p->instr[0].src[0].stride[1] = 1;
  p->instr[0].dst.stride[1] = 0; /* writes an element C times */
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "instruction 0: dst's strides write an element twice") == 0);
  p->instr[0].dst.stride[1] = 1;
  p->instr[1].src[0].stride[0] = 0; /* reads y broadcast while writing it */
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "instruction 1: dst overlaps src 0 without being the same elements") == 0);
  p->instr[1].src[0].stride[0] = C;
  p->instr[2].dst.stride[0] = 1;
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "instruction 2: dst's stride along axis 0 is 1, not 0") == 0);
  p->instr[2].dst.stride[0] = 0;
  p->instr[5].dst.value = 5; /* a product into its own source */
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "instruction 5: dst overlaps src 0 without being the same elements") == 0);
  p->instr[5].dst.value = 7;
  p->instr[6].nsrc = 1;
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "instruction 6: gather takes 2 sources, not 1") == 0);
  p->instr[6].nsrc = 2;
  p->values[9].elems = 14;
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "instruction 6: dst: element 14 is outside value 9's 14 elements") == 0);
  p->values[9].elems = 15;
  p->values[2].offset += 4;
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strstr(err, "value 2: bytes ") == err && strstr(err, "64-byte aligned"));
  p->values[2].offset -= 4;
  p->values[0].dtype = KD_I64;
  CHECK(kd_step_validate(p, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strcmp(err, "value 0: i64 [65984] does not fit slot 0 (f32, 65984 elements)") == 0);
  p->values[0].dtype = KD_F32;
  CHECK(kd_step_validate(p, err, sizeof err) == KD_OK);
  kd_step_free(p);
}

static void test_print(void) {
  kd_step_prog *p = sample_prog();
  FILE *f = tmpfile();
  kd_step_print(p, f);
  rewind(f);
  char text[8192] = "";
  size_t n = fread(text, 1, sizeof text - 1, f);
  text[n] = 0;
  fclose(f);
  CHECK(strstr(text, "step: 7 instructions (split 4), 3 slots, arena ") == text);
  CHECK(strstr(text, "  [1] map add f32 [64, 1031] %2 +0 [1031 1 0 0] <- %2 +0 [1031 1 0 0], "
                     "%1 +0 [0 1 0 0] (node 1)\n"));
  CHECK(strstr(text, "  slot 2 ids i64 [5] in\n"));
  kd_step_free(p);
}

int main(void) {
  kd_pool *pool = NULL;
  CHECK(kd_pool_new(2, &pool) == KD_OK);
  test_map_f32(pool);
  test_map_dtypes(pool);
  test_map_specials();
  test_map_program();
  test_reduce(pool);
  test_softmax(pool);
  test_gemm();
  test_gemm_strided_bounds();
  test_rows(pool);
  test_threads_and_slots(pool);
  test_serialize();
  test_corruption(pool);
  test_validate();
  test_print();
  kd_pool_free(pool);
  return check_exit("test_step");
}
