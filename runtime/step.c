/* The step-program executor (step.h): allocation, validation, the byte
 * format, printing, and the interpreter that runs instructions over an
 * arena and the caller's slots.
 *
 * Numbers follow ir/refexec.c: every map computes in double and rounds once
 * to dst's dtype, so f32 +, -, *, / and sqrt are bit for bit the float
 * operation (double has more than 2 x 24 + 2 bits: no double rounding) and
 * constants keep their double value; reductions and log softmax
 * accumulate in double in index order. Departures, each within a few ulps
 * of the f32 result and each in a fixed order (the same bits on every
 * thread): the f32 fast path's transcendentals are runtime/vmath.h's
 * (vectorised; exp and log within 1.5 ulps, tanh 2) instead of the double
 * function rounded to float; softmax is exp(x - max) / sum rather than
 * exp(x - lse), its exps vmath's (3 ulps in all; softmax_chunk says why);
 * sums of contiguous f32 rows run 8 double chains (row_sum_f32: 1 ulp);
 * a row maximum of f32 may give -0 where refexec gives +0 or the reverse
 * (row_max_f32). */
#include "step.h"
#include "fileio.h"
#include "step_fused.h"
#include "vmath.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The f32 loops are built for the baseline of the target (SSE2 on x86-64,
   4 floats a vector) and, on x86-64 with gcc or clang, again for AVX2 (8):
   the loader picks the clone the CPU can run (an ifunc), so one binary runs
   everywhere and uses the wider vectors where they exist, with the same
   bits (tests/step_gen/test_stepfuse compares fused and unfused maps bit for
   bit). It halves the time of the models' fused GELU chains and softmax
   exps on this machine. An AVX-512 clone makes attention's softmax about a
   quarter faster but gives one of those random programs a NaN of the other
   sign (-NaN for NaN: the vectoriser commutes an operation whose operands
   are both NaN); the numbers are the same. It stays out while the tests
   hold fused and unfused programs to the same NaN bits.
   Not under AddressSanitizer: ifunc resolvers run before its runtime is up. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KD_NO_CLONES 1
#endif
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(KD_NO_CLONES)
#define KD_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KD_VECTOR_CLONES
#endif

/* ---- names -------------------------------------------------------------- */

static const char *const kd_step_kind_names[] = {"map",  "reduce", "softmax",
                                                 "gemm", "gather", "scatter_add", "fused"};
_Static_assert(sizeof kd_step_kind_names / sizeof kd_step_kind_names[0] == KD_STEP_KIND_COUNT,
               "a name per step kind");

static const char *const kd_step_fn_names[] = {
    "copy", "fill", "iota", "neg", "exp", "log", "sqrt", "abs", "sign", "tanh",
    "add",  "sub",  "mul",  "mulz", "div", "pow", "max", "min",
    "lt",   "le",   "gt",   "ge",  "eq",  "ne",  "select",
    "sum",  "rmax", "lse",  "softmax", "log_softmax"};
_Static_assert(sizeof kd_step_fn_names / sizeof kd_step_fn_names[0] == KD_SF_COUNT,
               "a name per step function");

const char *kd_step_kind_name(kd_step_kind k) {
  return (unsigned)k < KD_STEP_KIND_COUNT ? kd_step_kind_names[k] : "?";
}
const char *kd_step_fn_name(kd_step_fn f) {
  return (unsigned)f < KD_SF_COUNT ? kd_step_fn_names[f] : "?";
}

/* The number of sources fn takes under kind, or -1 when kind has no fn. */
static int fn_arity(kd_step_kind kind, kd_step_fn fn) {
  switch (kind) {
  case KD_STEP_MAP:
    if (fn == KD_SF_IOTA) return 0;
    if (fn == KD_SF_COPY || fn == KD_SF_FILL || (fn >= KD_SF_NEG && fn <= KD_SF_TANH)) return 1;
    if (fn >= KD_SF_ADD && fn <= KD_SF_NE) return 2;
    return fn == KD_SF_SELECT ? 3 : -1;
  case KD_STEP_REDUCE: return fn >= KD_SF_SUM && fn <= KD_SF_LSE ? 1 : -1;
  case KD_STEP_SOFTMAX: return fn == KD_SF_SOFTMAX || fn == KD_SF_LOG_SOFTMAX ? 1 : -1;
  case KD_STEP_GEMM:
  case KD_STEP_GATHER:
  case KD_STEP_SCATTER_ADD: return 2;
  case KD_STEP_FUSED: return 0; /* its leaves are in its expression */
  default: return -1;
  }
}

static bool dtype_ok(kd_dtype t) { return t == KD_F32 || t == KD_I64 || t == KD_BOOL; }

/* ---- allocation --------------------------------------------------------- */

kd_step_prog *kd_step_alloc(int32_t nvalues, int32_t ninstr, int32_t nslots) {
  if (nvalues < 0 || ninstr < 0 || nslots < 0) return NULL;
  kd_step_prog *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->values = calloc((size_t)nvalues + 1, sizeof *p->values);
  p->instr = calloc((size_t)ninstr + 1, sizeof *p->instr);
  p->slots = calloc((size_t)nslots + 1, sizeof *p->slots);
  if (!p->values || !p->instr || !p->slots) {
    kd_step_free(p);
    return NULL;
  }
  p->nvalues = nvalues, p->ninstr = ninstr, p->nslots = nslots, p->split = ninstr;
  return p;
}

void kd_step_free(kd_step_prog *p) {
  if (!p) return;
  for (int32_t e = 0; e < p->nexprs && p->exprs; e++) {
    free(p->exprs[e].leaf);
    free(p->exprs[e].op);
  }
  free(p->exprs);
  free(p->compiled);
  free(p->values);
  free(p->instr);
  free(p->slots);
  free(p);
}

kd_status kd_step_set_compiled(kd_step_prog *p, const kd_step_fused_fn *fns, int32_t n, char *err,
                               size_t errlen) {
  free(p->compiled);
  p->compiled = NULL;
  if (!fns) return KD_OK;
  if (n != p->nexprs)
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "compiled expressions: %d for a program of %d expressions", n, p->nexprs);
  for (int32_t e = 0; e < n; e++) {
    if (!fns[e]) continue;
    const kd_step_expr *x = &p->exprs[e];
    for (int32_t k = 0; k < x->nleaf; k++)
      if (x->leaf[k].value >= 0 && p->values[x->leaf[k].value].dtype == KD_I64)
        return kd_errf(err, errlen, KD_ERR_INVALID, "compiled expression %d: leaf %d is i64", e,
                       k);
    for (int32_t t = 0; t < x->nop; t++) {
      kd_step_fn fn = x->op[t].fn;
      if (fn == KD_SF_POW || fn == KD_SF_IOTA)
        return kd_errf(err, errlen, KD_ERR_INVALID, "compiled expression %d: op %d is %s", e, t,
                       kd_step_fn_name(fn));
    }
  }
  if (n > 0 && !(p->compiled = malloc((size_t)n * sizeof *p->compiled)))
    return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  if (n > 0) memcpy(p->compiled, fns, (size_t)n * sizeof *p->compiled);
  return KD_OK;
}

int32_t kd_step_find_slot(const kd_step_prog *p, const char *name) {
  for (int32_t i = 0; i < p->nslots; i++)
    if (strncmp(p->slots[i].name, name, KD_STEP_NAME_MAX) == 0) return i;
  return -1;
}

/* ---- validation --------------------------------------------------------- */

static const char *const kd_ref_names[] = {"dst", "src 0", "src 1", "src 2"};

/* The elements a strided ref touches over shape: [offset, *hi], *hi the
 * largest offset; *empty when shape has no element. A reason when a stride
 * or the offset is negative or the arithmetic overflows, else NULL. */
static const char *ref_span(const kd_step_ref *r, int32_t rank, const int64_t *shape,
                            int64_t *hi, bool *empty) {
  if (r->offset < 0) return "negative offset";
  int64_t h = r->offset;
  *empty = false;
  for (int32_t d = 0; d < rank; d++) {
    if (r->stride[d] < 0) return "negative stride";
    if (shape[d] == 0) *empty = true;
    int64_t t;
    if (shape[d] > 0 && (__builtin_mul_overflow(shape[d] - 1, r->stride[d], &t) ||
                         __builtin_add_overflow(h, t, &h)))
      return "offset overflows";
  }
  *hi = h;
  return NULL;
}

/* A ref's memory, in bytes: the arena (key -1) or a slot (key = slot). */
typedef struct mem_span {
  int64_t key, lo, hi; /* [lo, hi) */
  bool empty;
} mem_span;

static mem_span value_span(const kd_step_prog *p, int32_t v, int64_t lo_elem, int64_t hi_elem) {
  const kd_step_value *val = &p->values[v];
  int64_t size = (int64_t)kd_dtype_size(val->dtype);
  bool arena = val->loc == KD_LOC_ARENA;
  int64_t base = arena ? val->offset : 0;
  return (mem_span){arena ? -1 : val->slot, base + lo_elem * size, base + (hi_elem + 1) * size,
                    false};
}

static bool spans_overlap(mem_span a, mem_span b) {
  return !a.empty && !b.empty && a.key == b.key && a.lo < b.hi && b.lo < a.hi;
}

/* Checks ref `which` of instruction i over shape; *span gets its memory. */
static kd_status check_ref(const kd_step_prog *p, int32_t i, int which, const kd_step_ref *r,
                           int32_t rank, const int64_t *shape, mem_span *span, char *err,
                           size_t errlen) {
  const char *name = kd_ref_names[which];
  if (r->value < 0 || r->value >= p->nvalues)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: %s: value %d is not in 0..%d", i,
                name, r->value, p->nvalues - 1);
  int64_t hi = 0;
  bool empty = false;
  const char *why = ref_span(r, rank, shape, &hi, &empty);
  if (why)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: %s: %s", i, name, why);
  const kd_step_value *v = &p->values[r->value];
  if (!empty && hi >= v->elems)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                "instruction %d: %s: element %" PRId64 " is outside value %d's %" PRId64
                " elements",
                i, name, hi, r->value, v->elems);
  *span = value_span(p, r->value, r->offset, hi);
  span->empty = empty;
  return KD_OK;
}

/* A contiguous run of n elements at a ref's offset (GEMM, GATHER, SCATTER):
   the shape {n} with stride 1. */
static kd_status check_run(const kd_step_prog *p, int32_t i, int which, const kd_step_ref *r,
                           int64_t n, mem_span *span, char *err, size_t errlen) {
  kd_step_ref flat = *r;
  memset(flat.stride, 0, sizeof flat.stride);
  flat.stride[0] = 1;
  return check_ref(p, i, which, &flat, 1, &n, span, err, errlen);
}

/* dst writes every index of shape once (no two indices on one element, so
   threads never race): sorted by stride, each dim of size > 1 steps past
   the span of the smaller ones. skip: a dim left out (REDUCE's axis). */
static bool writes_once(const kd_step_ref *r, int32_t rank, const int64_t *shape, int32_t skip) {
  int dims[KD_STEP_MAX_RANK], n = 0;
  for (int32_t d = 0; d < rank; d++)
    if (d != skip && shape[d] > 1) dims[n++] = d;
  for (int a = 1; a < n; a++) /* insertion sort by stride */
    for (int b = a; b > 0 && r->stride[dims[b]] < r->stride[dims[b - 1]]; b--) {
      int t = dims[b];
      dims[b] = dims[b - 1], dims[b - 1] = t;
    }
  int64_t span = 0; /* largest offset reached by the dims so far */
  for (int a = 0; a < n; a++) {
    if (r->stride[dims[a]] <= span) return false;
    span += (shape[dims[a]] - 1) * r->stride[dims[a]]; /* no overflow: checked by ref_span */
  }
  return true;
}

/* a and b read and write the same elements at every index of shape (the
   strides of dims of size 1 do not matter). */
static bool same_access(const kd_step_prog *p, const kd_step_ref *a, const kd_step_ref *b,
                        int32_t rank, const int64_t *shape) {
  const kd_step_value *va = &p->values[a->value], *vb = &p->values[b->value];
  if (kd_dtype_size(va->dtype) != kd_dtype_size(vb->dtype)) return false;
  if (value_span(p, a->value, a->offset, a->offset).lo !=
      value_span(p, b->value, b->offset, b->offset).lo)
    return false;
  for (int32_t d = 0; d < rank; d++)
    if (shape[d] > 1 && a->stride[d] != b->stride[d]) return false;
  return true;
}

static kd_status check_dtype(const kd_step_prog *p, int32_t i, int which, const kd_step_ref *r,
                             kd_dtype want, char *err, size_t errlen) {
  kd_dtype got = p->values[r->value].dtype;
  if (got == want) return KD_OK;
  return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: %s is %s, %s expected", i,
              kd_ref_names[which], kd_dtype_name(got), kd_dtype_name(want));
}

static kd_status check_gemm(const kd_step_prog *p, int32_t i, const kd_step_instr *in,
                            mem_span *spans, char *err, size_t errlen) {
  const kd_gemm *g = &in->gemm;
  if (g->batch < 0 || g->m < 0 || g->n < 0 || g->k < 0 || g->m > INT32_MAX ||
      g->n > INT32_MAX || g->k > INT32_MAX)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                "instruction %d: gemm sizes batch %" PRId64 " m %" PRId64 " n %" PRId64
                " k %" PRId64 " out of range",
                i, g->batch, g->m, g->n, g->k);
  if (g->stride_a < 0 || g->stride_b < 0 || g->stride_c < 0 || g->stride2_a < 0 ||
      g->stride2_b < 0 || g->stride2_c < 0 || g->lda < 0 || g->ldb < 0 || g->batch2 < 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: negative gemm stride", i);
  /* the stored matrices: A [m, k] or [k, m], rows lda apart; B [k, n] or
     [n, k], rows ldb apart; C [m, n] packed */
  int64_t ra = g->trans_a ? g->k : g->m, ca = g->trans_a ? g->m : g->k;
  int64_t rb = g->trans_b ? g->n : g->k, cb = g->trans_b ? g->k : g->n;
  int64_t lda = kd_gemm_lda(g), ldb = kd_gemm_ldb(g), inner = kd_gemm_inner(g);
  if ((ra > 1 && lda < ca) || (rb > 1 && ldb < cb) || lda > INT32_MAX || ldb > INT32_MAX ||
      g->batch % inner != 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                   "instruction %d: gemm lda %" PRId64 ", ldb %" PRId64 " or batch2 %" PRId64
                   " do not fit the sizes", i, lda, ldb, g->batch2);
  /* item (o, t) of a matrix of rows x cols floats, rows ld apart, spans
     [o s1 + t s2, o s1 + t s2 + (rows - 1) ld + cols) */
  const int64_t rows[3] = {ra, rb, g->m}, cols[3] = {ca, cb, g->n}, ld[3] = {lda, ldb, g->n};
  const int64_t s1[3] = {g->stride_a, g->stride_b, g->stride_c};
  const int64_t s2[3] = {g->stride2_a, g->stride2_b, g->stride2_c};
  const kd_step_ref *refs[3] = {&in->src[0], &in->src[1], &in->dst};
  const int which[3] = {1, 2, 0};
  for (int r = 0; r < 3; r++) {
    int64_t n = 0, t, u, v;
    if (g->batch > 0 && rows[r] > 0 && cols[r] > 0 &&
        (__builtin_mul_overflow(g->batch / inner - 1, s1[r], &t) ||
         __builtin_mul_overflow(inner - 1, s2[r], &u) || __builtin_add_overflow(t, u, &t) ||
         __builtin_mul_overflow(rows[r] - 1, ld[r], &v) || __builtin_add_overflow(t, v, &t) ||
         __builtin_add_overflow(t, cols[r], &n)))
      return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: %s: gemm extent overflows", i,
                  kd_ref_names[which[r]]);
    kd_status st = check_run(p, i, which[r], refs[r], n, &spans[which[r]], err, errlen);
    if (st == KD_OK) st = check_dtype(p, i, which[r], refs[r], KD_F32, err, errlen);
    if (st != KD_OK) return st;
  }
  return KD_OK;
}

static kd_status check_rows(const kd_step_prog *p, int32_t i, const kd_step_instr *in,
                            mem_span *spans, char *err, size_t errlen) {
  bool gather = in->kind == KD_STEP_GATHER;
  if (in->rank != 2 || in->shape[0] < 0 || in->shape[1] < 0 || in->rows < 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                "instruction %d: %s needs shape {n, D} and rows >= 0", i,
                kd_step_kind_name(in->kind));
  int64_t n = in->shape[0], D = in->shape[1], big, small;
  if (__builtin_mul_overflow(in->rows, D, &big) || __builtin_mul_overflow(n, D, &small))
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: sizes overflow", i);
  /* gather: table src 0 [rows, D], dst [n, D]; scatter: src 0 [n, D], dst [rows, D] */
  kd_status st = check_run(p, i, 1, &in->src[0], gather ? big : small, &spans[1], err, errlen);
  if (st == KD_OK) st = check_run(p, i, 2, &in->src[1], n, &spans[2], err, errlen);
  if (st == KD_OK) st = check_run(p, i, 0, &in->dst, gather ? small : big, &spans[0], err, errlen);
  if (st == KD_OK) st = check_dtype(p, i, 1, &in->src[0], KD_F32, err, errlen);
  if (st == KD_OK) st = check_dtype(p, i, 2, &in->src[1], KD_I64, err, errlen);
  if (st == KD_OK) st = check_dtype(p, i, 0, &in->dst, KD_F32, err, errlen);
  return st;
}

/* FUSED: its expression's operand codes and functions, its leaves as MAP's
   sources (in bounds; overlapping dst only as the same elements), dst f32
   and written once. */
static kd_status check_fused(const kd_step_prog *p, int32_t i, const kd_step_instr *in,
                             char *err, size_t errlen) {
  if (in->expr < 0 || in->expr >= p->nexprs)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: expression %d is not in 0..%d", i,
                in->expr, p->nexprs - 1);
  const kd_step_expr *e = &p->exprs[in->expr];
  if (e->nleaf < 0 || e->nop < 1)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: expression %d has %d leaves and %d "
                "ops", i, in->expr, e->nleaf, e->nop);
  for (int32_t t = 0; t < e->nop; t++) {
    const kd_step_eop *op = &e->op[t];
    int arity = fn_arity(KD_STEP_MAP, op->fn);
    if (arity < 1)
      return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: op %d: fn %d (%s) is not a map "
                  "of operands", i, t, (int)op->fn, kd_step_fn_name(op->fn));
    for (int q = 0; q < arity; q++)
      if (op->a[q] >= t || op->a[q] < -e->nleaf)
        return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: op %d: operand %d is %d, not "
                    "in %d..%d", i, t, q, op->a[q], -e->nleaf, t - 1);
  }
  mem_span dspan, lspan;
  kd_status st = check_ref(p, i, 0, &in->dst, in->rank, in->shape, &dspan, err, errlen);
  if (st == KD_OK) st = check_dtype(p, i, 0, &in->dst, KD_F32, err, errlen);
  if (st != KD_OK) return st;
  if (!writes_once(&in->dst, in->rank, in->shape, -1))
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: dst's strides write an element "
                "twice", i);
  for (int32_t k = 0; k < e->nleaf; k++) {
    const kd_step_ref *r = &e->leaf[k];
    if (r->value == -1) continue;
    char msg[256], pre[64];
    st = check_ref(p, i, 1, r, in->rank, in->shape, &lspan, msg, sizeof msg);
    if (st != KD_OK) { /* check_ref names the ref "src 0": say which leaf */
      int n = snprintf(pre, sizeof pre, "instruction %d: %s: ", i, kd_ref_names[1]);
      const char *why = n > 0 && strncmp(msg, pre, (size_t)n) == 0 ? msg + n : msg;
      return kd_errf(err, errlen, st, "instruction %d: leaf %d: %s", i, k, why);
    }
    if (spans_overlap(dspan, lspan) && !same_access(p, &in->dst, r, in->rank, in->shape))
      return kd_errf(err, errlen, KD_ERR_FORMAT,
                  "instruction %d: dst overlaps leaf %d without being the same elements", i, k);
  }
  return KD_OK;
}

static kd_status check_instr(const kd_step_prog *p, int32_t i, char *err, size_t errlen) {
  const kd_step_instr *in = &p->instr[i];
  if ((unsigned)in->kind >= KD_STEP_KIND_COUNT)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: kind %d is not a step kind", i,
                (int)in->kind);
  int arity = fn_arity(in->kind, in->fn);
  bool uses_fn = in->kind == KD_STEP_MAP || in->kind == KD_STEP_REDUCE ||
                 in->kind == KD_STEP_SOFTMAX;
  if (uses_fn && arity < 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: %s cannot compute fn %d (%s)", i,
                kd_step_kind_name(in->kind), (int)in->fn, kd_step_fn_name(in->fn));
  if (in->nsrc != arity)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: %s%s%s takes %d sources, not %d", i,
                kd_step_kind_name(in->kind), uses_fn ? " " : "",
                uses_fn ? kd_step_fn_name(in->fn) : "", arity, in->nsrc);
  if (in->rank < 0 || in->rank > KD_STEP_MAX_RANK)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: rank %d is not in 0..%d", i,
                in->rank, KD_STEP_MAX_RANK);
  for (int32_t d = 0; d < in->rank; d++)
    if (in->shape[d] < 0)
      return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: negative dimension %d", i, d);
  bool axis_used = in->kind == KD_STEP_REDUCE || in->kind == KD_STEP_SOFTMAX ||
                   (in->kind == KD_STEP_MAP && in->fn == KD_SF_IOTA);
  if (axis_used && (in->axis < 0 || in->axis >= in->rank))
    return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: axis %d is not in 0..%d", i,
                in->axis, in->rank - 1);

  mem_span spans[1 + KD_STEP_MAX_SRC] = {{0}};
  kd_status st = KD_OK;
  switch (in->kind) {
  case KD_STEP_GEMM: st = check_gemm(p, i, in, spans, err, errlen); break;
  case KD_STEP_GATHER:
  case KD_STEP_SCATTER_ADD: st = check_rows(p, i, in, spans, err, errlen); break;
  case KD_STEP_FUSED: st = check_fused(p, i, in, err, errlen); break;
  default: /* MAP, REDUCE, SOFTMAX: strided refs over shape */
    if (in->kind == KD_STEP_REDUCE && in->dst.stride[in->axis] != 0)
      return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: dst's stride along axis %d is "
                  "%" PRId64 ", not 0", i, in->axis, in->dst.stride[in->axis]);
    st = check_ref(p, i, 0, &in->dst, in->rank, in->shape, &spans[0], err, errlen);
    for (int s = 0; s < in->nsrc && st == KD_OK; s++) {
      const kd_step_ref *r = &in->src[s];
      bool constant = r->value == -1 && in->kind == KD_STEP_MAP;
      if (in->kind == KD_STEP_MAP && in->fn == KD_SF_FILL && !constant)
        return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: fill takes a constant", i);
      spans[1 + s].empty = true;
      if (!constant)
        st = check_ref(p, i, 1 + s, r, in->rank, in->shape, &spans[1 + s], err, errlen);
    }
    if (st != KD_OK) return st;
    if (!writes_once(&in->dst, in->rank, in->shape, in->kind == KD_STEP_REDUCE ? in->axis : -1))
      return kd_errf(err, errlen, KD_ERR_FORMAT, "instruction %d: dst's strides write an element "
                  "twice", i);
    if (in->kind == KD_STEP_SOFTMAX) {
      st = check_dtype(p, i, 0, &in->dst, KD_F32, err, errlen);
      if (st == KD_OK) st = check_dtype(p, i, 1, &in->src[0], KD_F32, err, errlen);
    }
    break;
  }
  if (st != KD_OK) return st;
  /* Hazards: a map or softmax may write over a source it reads the same
     way (each element is read before it is written); nothing else may
     overlap its destination. */
  for (int s = 0; s < in->nsrc; s++) {
    if (!spans_overlap(spans[0], spans[1 + s])) continue;
    bool elementwise = in->kind == KD_STEP_MAP || in->kind == KD_STEP_SOFTMAX;
    if (!elementwise || !same_access(p, &in->dst, &in->src[s], in->rank, in->shape))
      return kd_errf(err, errlen, KD_ERR_FORMAT,
                  "instruction %d: dst overlaps %s without being the same elements", i,
                  kd_ref_names[1 + s]);
  }
  return KD_OK;
}

kd_status kd_step_validate(const kd_step_prog *p, char *err, size_t errlen) {
  if (p->nvalues < 0 || p->ninstr < 0 || p->nslots < 0 || p->split < 0 || p->split > p->ninstr ||
      p->arena_bytes < 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "bad counts: %d values, %d instructions, %d slots, "
                "split %d, arena %" PRId64 " bytes", p->nvalues, p->ninstr, p->nslots, p->split,
                p->arena_bytes);
  for (int32_t s = 0; s < p->nslots; s++) {
    const kd_step_slot *sl = &p->slots[s];
    size_t len = strnlen(sl->name, KD_STEP_NAME_MAX);
    if (len == 0 || len == KD_STEP_NAME_MAX)
      return kd_errf(err, errlen, KD_ERR_FORMAT, "slot %d: name empty or not terminated", s);
    if (!dtype_ok(sl->dtype) || sl->rank < 0 || sl->rank > KD_STEP_MAX_RANK)
      return kd_errf(err, errlen, KD_ERR_FORMAT, "slot %d (%s): bad dtype or rank", s, sl->name);
    for (int32_t d = 0; d < sl->rank; d++)
      if (sl->shape[d] < 0)
        return kd_errf(err, errlen, KD_ERR_FORMAT, "slot %d (%s): negative dimension", s, sl->name);
    for (int32_t t = 0; t < s; t++)
      if (strcmp(p->slots[t].name, sl->name) == 0)
        return kd_errf(err, errlen, KD_ERR_FORMAT, "slots %d and %d are both named %s", t, s,
                    sl->name);
  }
  for (int32_t v = 0; v < p->nvalues; v++) {
    const kd_step_value *val = &p->values[v];
    if (!dtype_ok(val->dtype) || val->elems < 0)
      return kd_errf(err, errlen, KD_ERR_FORMAT, "value %d: bad dtype or size", v);
    int64_t bytes;
    if (__builtin_mul_overflow(val->elems, (int64_t)kd_dtype_size(val->dtype), &bytes))
      return kd_errf(err, errlen, KD_ERR_FORMAT, "value %d: size overflows", v);
    if (val->loc == KD_LOC_ARENA) {
      int64_t end;
      if (val->offset < 0 || val->offset % 64 != 0 ||
          __builtin_add_overflow(val->offset, bytes, &end) || end > p->arena_bytes)
        return kd_errf(err, errlen, KD_ERR_FORMAT, "value %d: bytes %" PRId64 "..+%" PRId64
                    " are not a 64-byte aligned part of the %" PRId64 "-byte arena", v,
                    val->offset, bytes, p->arena_bytes);
    } else if (val->loc == KD_LOC_SLOT) {
      if (val->slot < 0 || val->slot >= p->nslots)
        return kd_errf(err, errlen, KD_ERR_FORMAT, "value %d: slot %d is not in 0..%d", v,
                    val->slot, p->nslots - 1);
      const kd_step_slot *sl = &p->slots[val->slot];
      int64_t numel = 1;
      for (int32_t d = 0; d < sl->rank; d++)
        if (__builtin_mul_overflow(numel, sl->shape[d], &numel)) numel = INT64_MAX;
      if (sl->dtype != val->dtype || val->elems > numel)
        return kd_errf(err, errlen, KD_ERR_FORMAT, "value %d: %s [%" PRId64 "] does not fit slot "
                    "%d (%s, %" PRId64 " elements)", v, kd_dtype_name(val->dtype), val->elems,
                    val->slot, kd_dtype_name(sl->dtype), numel);
    } else {
      return kd_errf(err, errlen, KD_ERR_FORMAT, "value %d: location %d", v, (int)val->loc);
    }
  }
  for (int32_t i = 0; i < p->ninstr; i++) {
    kd_status st = check_instr(p, i, err, errlen);
    if (st != KD_OK) return st;
  }
  return KD_OK;
}

/* ---- printing ------------------------------------------------------------ */

static void print_dims(FILE *out, int32_t rank, const int64_t *dims, const char *sep) {
  if (rank < 0 || rank > KD_STEP_MAX_RANK) rank = 0; /* printing an invalid program */
  fputc('[', out);
  for (int32_t d = 0; d < rank; d++)
    fprintf(out, "%s%" PRId64, d ? sep : "", dims[d]);
  fputc(']', out);
}

static void print_ref(FILE *out, const kd_step_ref *r, bool strides) {
  if (r->value < 0) {
    fprintf(out, "imm %.9g", r->imm);
    return;
  }
  fprintf(out, "%%%d +%" PRId64, r->value, r->offset);
  if (strides) {
    fputc(' ', out);
    print_dims(out, KD_STEP_MAX_RANK, r->stride, " ");
  }
}

void kd_step_print(const kd_step_prog *p, FILE *out) {
  fprintf(out, "step: %d instructions (split %d), %d slots, arena %" PRId64 " bytes\n", p->ninstr,
          p->split, p->nslots, p->arena_bytes);
  for (int32_t s = 0; s < p->nslots; s++) {
    const kd_step_slot *sl = &p->slots[s];
    fprintf(out, "  slot %d %.*s %s ", s, KD_STEP_NAME_MAX, sl->name, kd_dtype_name(sl->dtype));
    print_dims(out, sl->rank, sl->shape, ", ");
    fputs(sl->output ? " out\n" : " in\n", out);
  }
  for (int32_t v = 0; v < p->nvalues; v++) {
    const kd_step_value *val = &p->values[v];
    fprintf(out, "  %%%d %s [%" PRId64 "] ", v, kd_dtype_name(val->dtype), val->elems);
    if (val->loc == KD_LOC_ARENA) fprintf(out, "arena +%" PRId64 "\n", val->offset);
    else fprintf(out, "slot %d\n", val->slot);
  }
  for (int32_t i = 0; i < p->ninstr; i++) {
    const kd_step_instr *in = &p->instr[i];
    bool strided = in->kind <= KD_STEP_SOFTMAX || in->kind == KD_STEP_FUSED;
    int32_t dv = in->dst.value;
    fprintf(out, "  [%d] %s", i, kd_step_kind_name(in->kind));
    if (strided && in->kind != KD_STEP_FUSED) fprintf(out, " %s", kd_step_fn_name(in->fn));
    fprintf(out, " %s ", dv >= 0 && dv < p->nvalues ? kd_dtype_name(p->values[dv].dtype) : "?");
    print_dims(out, in->rank, in->shape, ", ");
    fputc(' ', out);
    print_ref(out, &in->dst, strided);
    if (in->kind == KD_STEP_FUSED && in->expr >= 0 && in->expr < p->nexprs) {
      const kd_step_expr *e = &p->exprs[in->expr];
      fprintf(out, " <- expr %d:", in->expr);
      for (int32_t k = 0; k < e->nleaf; k++) {
        fprintf(out, "%s l%d = ", k ? "," : "", k);
        print_ref(out, &e->leaf[k], true);
      }
      for (int32_t t = 0; t < e->nop; t++) {
        fprintf(out, "; r%d = %s", t, kd_step_fn_name(e->op[t].fn));
        for (int q = 0; q < fn_arity(KD_STEP_MAP, e->op[t].fn) && q < KD_STEP_MAX_SRC; q++)
          fprintf(out, e->op[t].a[q] >= 0 ? " r%d" : " l%d",
                  e->op[t].a[q] >= 0 ? e->op[t].a[q] : -1 - e->op[t].a[q]);
      }
    }
    if (in->nsrc > 0) fputs(" <-", out);
    for (int s = 0; s < in->nsrc && s < KD_STEP_MAX_SRC; s++) {
      fputs(s ? ", " : " ", out);
      print_ref(out, &in->src[s], strided);
    }
    if (in->kind == KD_STEP_REDUCE || in->kind == KD_STEP_SOFTMAX ||
        (in->kind == KD_STEP_MAP && in->fn == KD_SF_IOTA))
      fprintf(out, ", axis %d", in->axis);
    const kd_gemm *g = &in->gemm;
    if (in->kind == KD_STEP_GEMM)
      fprintf(out, ", batch %" PRId64 " m %" PRId64 " n %" PRId64 " k %" PRId64 "%s%s alpha %g "
              "beta %g strides %" PRId64 " %" PRId64 " %" PRId64, g->batch, g->m, g->n, g->k,
              g->trans_a ? " ta" : "", g->trans_b ? " tb" : "", (double)g->alpha,
              (double)g->beta, g->stride_a, g->stride_b, g->stride_c);
    if (in->kind == KD_STEP_GEMM && (g->lda || g->ldb))
      fprintf(out, " ld %" PRId64 " %" PRId64, kd_gemm_lda(g), kd_gemm_ldb(g));
    if (in->kind == KD_STEP_GEMM && g->batch2 > 1)
      fprintf(out, " inner %" PRId64 " strides %" PRId64 " %" PRId64 " %" PRId64, g->batch2,
              g->stride2_a, g->stride2_b, g->stride2_c);
    if (in->kind == KD_STEP_GATHER || in->kind == KD_STEP_SCATTER_ADD)
      fprintf(out, ", rows %" PRId64 "%s", in->rows, in->accumulate ? ", accumulate" : "");
    if (in->node >= 0) fprintf(out, " (node %d)", in->node);
    fputc('\n', out);
  }
}

/* ---- the byte format ------------------------------------------------------ */

/* Every field fixed-width little-endian; the counts in the header fix the
 * length exactly, so a reader checks it before reading anything else. */
enum {
  KD_SER_HEADER = 4 + 4 + 4 * 4 + 8 + 3 * 4,
  KD_SER_VALUE = 4 + 4 + 8 + 8 + 4,
  KD_SER_REF = 4 + 8 + 8 * KD_STEP_MAX_RANK + 8,
  KD_SER_GEMM = 4 * 8 + 1 + 1 + 4 + 4 + 3 * 8 + 6 * 8, /* ... strides, ld a b, batch2, strides2 */
  KD_SER_INSTR = 4 + 4 + 4 + 8 * KD_STEP_MAX_RANK + 4 + 4 + (1 + KD_STEP_MAX_SRC) * KD_SER_REF +
                 KD_SER_GEMM + 8 + 1 + 4 + 4,
  KD_SER_SLOT = KD_STEP_NAME_MAX + 4 + 4 + 8 * KD_STEP_MAX_RANK + 1,
  KD_SER_EXPR = 4 + 4, /* then its leaves (refs) and ops */
  KD_SER_EOP = 4 + 4 * KD_STEP_MAX_SRC,
};

typedef struct ser {
  uint8_t *p;
  size_t pos;
} ser;

static void put_u(ser *s, uint64_t v, int bytes) {
  for (int b = 0; b < bytes; b++) s->p[s->pos++] = (uint8_t)(v >> (8 * b));
}
static void put_i32(ser *s, int32_t v) { put_u(s, (uint32_t)v, 4); }
static void put_i64(ser *s, int64_t v) { put_u(s, (uint64_t)v, 8); }
static void put_f64(ser *s, double v) {
  uint64_t u;
  memcpy(&u, &v, 8);
  put_u(s, u, 8);
}
static void put_f32(ser *s, float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  put_u(s, u, 4);
}

static void put_ref(ser *s, const kd_step_ref *r) {
  put_i32(s, r->value);
  put_i64(s, r->offset);
  for (int d = 0; d < KD_STEP_MAX_RANK; d++) put_i64(s, r->stride[d]);
  put_f64(s, r->imm);
}

/* The header's counts: values, instructions, slots, expressions, and the
   expressions' leaves and ops in all. */
typedef struct ser_counts {
  int32_t nv, ni, ns, ne, nleaf, nop;
} ser_counts;

static size_t ser_size(ser_counts c) {
  return (size_t)(KD_SER_HEADER + (int64_t)c.nv * KD_SER_VALUE + (int64_t)c.ni * KD_SER_INSTR +
                  (int64_t)c.ns * KD_SER_SLOT + (int64_t)c.ne * KD_SER_EXPR +
                  (int64_t)c.nleaf * KD_SER_REF + (int64_t)c.nop * KD_SER_EOP);
}

kd_status kd_step_serialize(const kd_step_prog *p, uint8_t **buf, size_t *len) {
  *buf = NULL;
  *len = 0;
  if (p->nvalues < 0 || p->ninstr < 0 || p->nslots < 0 || p->nexprs < 0) return KD_ERR_INVALID;
  ser_counts c = {p->nvalues, p->ninstr, p->nslots, p->nexprs, 0, 0};
  int64_t nleaf = 0, nop = 0;
  for (int32_t e = 0; e < p->nexprs; e++) {
    if (p->exprs[e].nleaf < 0 || p->exprs[e].nop < 0) return KD_ERR_INVALID;
    nleaf += p->exprs[e].nleaf, nop += p->exprs[e].nop;
  }
  if (nleaf > INT32_MAX || nop > INT32_MAX) return KD_ERR_INVALID;
  c.nleaf = (int32_t)nleaf, c.nop = (int32_t)nop;
  size_t n = ser_size(c);
  ser s = {malloc(n), 0};
  if (!s.p) return KD_ERR_NOMEM;
  put_u(&s, KD_STEP_MAGIC, 4);
  put_u(&s, KD_STEP_VERSION, 4);
  put_i32(&s, p->nvalues);
  put_i32(&s, p->ninstr);
  put_i32(&s, p->nslots);
  put_i32(&s, c.ne);
  put_i32(&s, c.nleaf);
  put_i32(&s, c.nop);
  put_i32(&s, p->split);
  put_i64(&s, p->arena_bytes);
  for (int32_t v = 0; v < p->nvalues; v++) {
    const kd_step_value *val = &p->values[v];
    put_i32(&s, (int32_t)val->loc);
    put_i32(&s, (int32_t)val->dtype);
    put_i64(&s, val->elems);
    put_i64(&s, val->offset);
    put_i32(&s, val->slot);
  }
  for (int32_t i = 0; i < p->ninstr; i++) {
    const kd_step_instr *in = &p->instr[i];
    put_i32(&s, (int32_t)in->kind);
    put_i32(&s, (int32_t)in->fn);
    put_i32(&s, in->rank);
    for (int d = 0; d < KD_STEP_MAX_RANK; d++) put_i64(&s, in->shape[d]);
    put_i32(&s, in->axis);
    put_i32(&s, in->nsrc);
    put_ref(&s, &in->dst);
    for (int k = 0; k < KD_STEP_MAX_SRC; k++) put_ref(&s, &in->src[k]);
    const kd_gemm *g = &in->gemm;
    put_i64(&s, g->batch);
    put_i64(&s, g->m);
    put_i64(&s, g->n);
    put_i64(&s, g->k);
    put_u(&s, g->trans_a, 1);
    put_u(&s, g->trans_b, 1);
    put_f32(&s, g->alpha);
    put_f32(&s, g->beta);
    put_i64(&s, g->stride_a);
    put_i64(&s, g->stride_b);
    put_i64(&s, g->stride_c);
    put_i64(&s, g->lda);
    put_i64(&s, g->ldb);
    put_i64(&s, g->batch2);
    put_i64(&s, g->stride2_a);
    put_i64(&s, g->stride2_b);
    put_i64(&s, g->stride2_c);
    put_i64(&s, in->rows);
    put_u(&s, in->accumulate, 1);
    put_i32(&s, in->node);
    put_i32(&s, in->expr);
  }
  for (int32_t k = 0; k < p->nslots; k++) {
    const kd_step_slot *sl = &p->slots[k];
    size_t nl = strnlen(sl->name, KD_STEP_NAME_MAX); /* NUL-padded: no stray bytes */
    memcpy(s.p + s.pos, sl->name, nl);
    memset(s.p + s.pos + nl, 0, KD_STEP_NAME_MAX - nl);
    s.pos += KD_STEP_NAME_MAX;
    put_i32(&s, (int32_t)sl->dtype);
    put_i32(&s, sl->rank);
    for (int d = 0; d < KD_STEP_MAX_RANK; d++) put_i64(&s, sl->shape[d]);
    put_u(&s, sl->output, 1);
  }
  for (int32_t e = 0; e < p->nexprs; e++) {
    const kd_step_expr *x = &p->exprs[e];
    put_i32(&s, x->nleaf);
    put_i32(&s, x->nop);
    for (int32_t k = 0; k < x->nleaf; k++) put_ref(&s, &x->leaf[k]);
    for (int32_t t = 0; t < x->nop; t++) {
      put_i32(&s, (int32_t)x->op[t].fn);
      for (int q = 0; q < KD_STEP_MAX_SRC; q++) put_i32(&s, x->op[t].a[q]);
    }
  }
  *buf = s.p;
  *len = s.pos;
  return KD_OK;
}

typedef struct deser {
  const uint8_t *p;
  size_t pos;
  bool bad_bool; /* a flag byte other than 0 or 1 */
} deser;

static uint64_t get_u(deser *s, int bytes) {
  uint64_t v = 0;
  for (int b = 0; b < bytes; b++) v |= (uint64_t)s->p[s->pos++] << (8 * b);
  return v;
}
static int32_t get_i32(deser *s) { return (int32_t)(uint32_t)get_u(s, 4); }
static int64_t get_i64(deser *s) { return (int64_t)get_u(s, 8); }
static double get_f64(deser *s) {
  uint64_t u = get_u(s, 8);
  double v;
  memcpy(&v, &u, 8);
  return v;
}
static float get_f32(deser *s) {
  uint32_t u = (uint32_t)get_u(s, 4);
  float v;
  memcpy(&v, &u, 4);
  return v;
}
static bool get_bool(deser *s) {
  uint64_t v = get_u(s, 1);
  if (v > 1) s->bad_bool = true;
  return v != 0;
}

static void get_ref(deser *s, kd_step_ref *r) {
  r->value = get_i32(s);
  r->offset = get_i64(s);
  for (int d = 0; d < KD_STEP_MAX_RANK; d++) r->stride[d] = get_i64(s);
  r->imm = get_f64(s);
}

kd_status kd_step_deserialize(const uint8_t *buf, size_t len, kd_step_prog **out, char *err,
                              size_t errlen) {
  *out = NULL;
  deser s = {buf, 0, false};
  uint32_t magic = len >= 4 ? (uint32_t)get_u(&s, 4) : 0;
  if (len >= 4 && magic != KD_STEP_MAGIC)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "not a step program (magic 0x%08" PRIx32 ")", magic);
  if (len < KD_SER_HEADER)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "step program truncated: %zu bytes, the header "
                "alone is %d", len, KD_SER_HEADER);
  uint32_t version = (uint32_t)get_u(&s, 4);
  if (version != KD_STEP_VERSION)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "step program version %" PRIu32 "; this runtime "
                "reads version %d (rebuild it with this kdc)", version, KD_STEP_VERSION);
  ser_counts cnt;
  cnt.nv = get_i32(&s), cnt.ni = get_i32(&s), cnt.ns = get_i32(&s);
  cnt.ne = get_i32(&s), cnt.nleaf = get_i32(&s), cnt.nop = get_i32(&s);
  int32_t nv = cnt.nv, ni = cnt.ni, ns = cnt.ns;
  if (nv < 0 || ni < 0 || ns < 0 || cnt.ne < 0 || cnt.nleaf < 0 || cnt.nop < 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "step program: negative counts");
  size_t want = ser_size(cnt); /* < 2^31 x 6 x 2^10: no overflow in 64 bits */
  if (len != want)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "step program %s: %zu bytes, its counts (%d values, "
                "%d instructions, %d slots, %d expressions of %d leaves and %d ops) need %zu",
                len < want ? "truncated" : "too long", len, nv, ni, ns, cnt.ne, cnt.nleaf, cnt.nop,
                want);
  kd_step_prog *p = kd_step_alloc(nv, ni, ns);
  if (p && cnt.ne > 0 && !(p->exprs = calloc((size_t)cnt.ne, sizeof *p->exprs))) {
    kd_step_free(p);
    p = NULL;
  }
  if (!p) return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  p->nexprs = cnt.ne;
  p->split = get_i32(&s);
  p->arena_bytes = get_i64(&s);
  for (int32_t v = 0; v < nv; v++) {
    kd_step_value *val = &p->values[v];
    val->loc = (kd_step_loc)get_i32(&s);
    val->dtype = (kd_dtype)get_i32(&s);
    val->elems = get_i64(&s);
    val->offset = get_i64(&s);
    val->slot = get_i32(&s);
  }
  for (int32_t i = 0; i < ni; i++) {
    kd_step_instr *in = &p->instr[i];
    in->kind = (kd_step_kind)get_i32(&s);
    in->fn = (kd_step_fn)get_i32(&s);
    in->rank = get_i32(&s);
    for (int d = 0; d < KD_STEP_MAX_RANK; d++) in->shape[d] = get_i64(&s);
    in->axis = get_i32(&s);
    in->nsrc = get_i32(&s);
    get_ref(&s, &in->dst);
    for (int k = 0; k < KD_STEP_MAX_SRC; k++) get_ref(&s, &in->src[k]);
    kd_gemm *g = &in->gemm;
    g->batch = get_i64(&s);
    g->m = get_i64(&s);
    g->n = get_i64(&s);
    g->k = get_i64(&s);
    g->trans_a = get_bool(&s);
    g->trans_b = get_bool(&s);
    g->alpha = get_f32(&s);
    g->beta = get_f32(&s);
    g->stride_a = get_i64(&s);
    g->stride_b = get_i64(&s);
    g->stride_c = get_i64(&s);
    g->lda = get_i64(&s);
    g->ldb = get_i64(&s);
    g->batch2 = get_i64(&s);
    g->stride2_a = get_i64(&s);
    g->stride2_b = get_i64(&s);
    g->stride2_c = get_i64(&s);
    in->rows = get_i64(&s);
    in->accumulate = get_bool(&s);
    in->node = get_i32(&s);
    in->expr = get_i32(&s);
  }
  bool padded = true;
  for (int32_t k = 0; k < ns; k++) {
    kd_step_slot *sl = &p->slots[k];
    memcpy(sl->name, buf + s.pos, KD_STEP_NAME_MAX);
    size_t nl = strnlen(sl->name, KD_STEP_NAME_MAX);
    for (size_t c = nl; c < KD_STEP_NAME_MAX; c++) padded &= sl->name[c] == 0;
    s.pos += KD_STEP_NAME_MAX;
    sl->dtype = (kd_dtype)get_i32(&s);
    sl->rank = get_i32(&s);
    for (int d = 0; d < KD_STEP_MAX_RANK; d++) sl->shape[d] = get_i64(&s);
    sl->output = get_bool(&s);
  }
  kd_status st = KD_OK;
  int64_t leaves = 0, ops = 0; /* read so far: never past the header's totals */
  for (int32_t e = 0; e < cnt.ne && st == KD_OK; e++) {
    kd_step_expr *x = &p->exprs[e];
    int32_t nl = get_i32(&s), no = get_i32(&s);
    if (nl < 0 || no < 0 || nl > cnt.nleaf - leaves || no > cnt.nop - ops) {
      st = kd_errf(err, errlen, KD_ERR_FORMAT, "step program: expression %d's %d leaves and %d ops "
                "are not within the header's %d and %d", e, nl, no, cnt.nleaf, cnt.nop);
      break;
    }
    x->leaf = calloc((size_t)nl + 1, sizeof *x->leaf);
    x->op = calloc((size_t)no + 1, sizeof *x->op);
    if (!x->leaf || !x->op) {
      st = kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
      break;
    }
    x->nleaf = nl, x->nop = no;
    leaves += nl, ops += no;
    for (int32_t k = 0; k < nl; k++) get_ref(&s, &x->leaf[k]);
    for (int32_t t = 0; t < no; t++) {
      x->op[t].fn = (kd_step_fn)get_i32(&s);
      for (int q = 0; q < KD_STEP_MAX_SRC; q++) x->op[t].a[q] = get_i32(&s);
    }
  }
  if (st == KD_OK && (leaves != cnt.nleaf || ops != cnt.nop))
    st = kd_errf(err, errlen, KD_ERR_FORMAT, "step program: the expressions hold %" PRId64
              " leaves and %" PRId64 " ops, the header says %d and %d", leaves, ops, cnt.nleaf,
              cnt.nop);
  if (st == KD_OK && s.bad_bool)
    st = kd_errf(err, errlen, KD_ERR_FORMAT, "step program: a flag byte is not 0 or 1");
  else if (st == KD_OK && !padded)
    st = kd_errf(err, errlen, KD_ERR_FORMAT, "step program: a slot name is not NUL-padded");
  else if (st == KD_OK) st = kd_step_validate(p, err, errlen);
  if (st != KD_OK) {
    kd_step_free(p);
    return st;
  }
  *out = p;
  return KD_OK;
}

/* ---- running: operands ---------------------------------------------------- */

/* Element loads and stores of any dtype through double (the general path). */
static inline double load_elem(const char *base, kd_dtype t, int64_t i) {
  switch (t) {
  case KD_F32: return ((const float *)base)[i];
  case KD_I64: return (double)((const int64_t *)base)[i];
  default: return ((const uint8_t *)base)[i] != 0;
  }
}

/* CAST's rounding (ir/refexec.c): bool is x != 0 (NaN is true), integers
   truncate; NaN gives 0 and out-of-range values saturate, where C leaves
   the conversion undefined. */
static inline void store_elem(char *base, kd_dtype t, int64_t i, double x) {
  switch (t) {
  case KD_F32: ((float *)base)[i] = (float)x; break;
  case KD_I64:
    ((int64_t *)base)[i] = isnan(x) ? 0 : x >= 0x1p63 ? INT64_MAX : x < -0x1p63 ? INT64_MIN
                                                                                 : (int64_t)x;
    break;
  default: ((uint8_t *)base)[i] = x != 0; break;
  }
}

/* An operand of a map or reduction: memory, a constant, or IOTA's index
   (an operand whose element at an index is offset + sum idx[d] stride[d]). */
typedef enum op_kind { OP_MEM, OP_CONST, OP_INDEX } op_kind;

typedef struct operand {
  op_kind kind;
  kd_dtype dtype;
  char *base; /* MEM: the value's element 0 */
  int64_t offset, stride[KD_STEP_MAX_RANK];
  double imm;
} operand;

/* Resolves ref r of instruction i, failing on an unbound slot. */
static kd_status resolve(const kd_step_prog *p, int32_t i, void *arena, void *const *slots,
                         const kd_step_ref *r, operand *o, char *err, size_t errlen) {
  memset(o, 0, sizeof *o);
  if (r->value < 0) {
    o->kind = OP_CONST;
    o->dtype = KD_F32;
    o->imm = r->imm;
    return KD_OK;
  }
  const kd_step_value *val = &p->values[r->value];
  o->kind = OP_MEM;
  o->dtype = val->dtype;
  o->base = val->loc == KD_LOC_ARENA ? (arena ? (char *)arena + val->offset : NULL)
                                     : slots ? slots[val->slot] : NULL;
  if (!o->base && val->loc == KD_LOC_SLOT)
    return kd_errf(err, errlen, KD_ERR_INVALID, "instruction %d: slot %d (%s) is not bound", i,
                val->slot, p->slots[val->slot].name);
  if (!o->base) return kd_errf(err, errlen, KD_ERR_INVALID, "instruction %d: no arena", i);
  o->offset = r->offset;
  memcpy(o->stride, r->stride, sizeof o->stride);
  return KD_OK;
}

/* ---- running: maps ---------------------------------------------------------- */

enum { MAP_GRAIN = 1 << 14, GEN_BLOCK = 256 };

typedef struct map_ctx {
  kd_step_fn fn;
  int nops; /* op[0] is dst, op[1 + s] source s */
  operand op[1 + KD_STEP_MAX_SRC];
  int rank; /* >= 1 after kd_step_merge_dims; the last dim is the inner loop */
  int64_t shape[KD_STEP_MAX_RANK];
  bool fast; /* fn on the fast path, every operand f32 or a constant */
} map_ctx;

int kd_step_merge_dims(int rank, int64_t *shape, int n, int64_t *const *stride) {
  int r = 0;
  for (int d = 0; d < rank; d++) {
    if (shape[d] == 1) continue;
    bool merge = r > 0;
    for (int k = 0; k < n && merge; k++) merge = stride[k][r - 1] == stride[k][d] * shape[d];
    if (merge) {
      shape[r - 1] *= shape[d];
      for (int k = 0; k < n; k++) stride[k][r - 1] = stride[k][d];
      continue;
    }
    shape[r] = shape[d];
    for (int k = 0; k < n; k++) stride[k][r] = stride[k][d];
    r++;
  }
  if (r == 0) {
    shape[0] = 1;
    for (int k = 0; k < n; k++) stride[k][0] = 0;
    r = 1;
  }
  return r;
}

void kd_step_walk(int rank, const int64_t *shape, int n, int64_t *const *stride, int64_t begin,
                  int64_t end, int64_t *row, int64_t *off,
                  void (*seg)(void *ctx, const int64_t *off, int64_t len), void *ctx) {
  int in = rank - 1;
  int64_t inner = shape[in], o = begin / inner, j = begin % inner, idx[KD_STEP_MAX_RANK] = {0};
  for (int d = in - 1; d >= 0; d--) {
    idx[d] = o % shape[d];
    o /= shape[d];
    for (int k = 0; k < n; k++) row[k] += idx[d] * stride[k][d];
  }
  for (int64_t i = begin; i < end;) {
    int64_t len = inner - j < end - i ? inner - j : end - i;
    for (int k = 0; k < n; k++) off[k] = row[k] + j * stride[k][in];
    seg(ctx, off, len);
    i += len;
    j = 0;
    for (int d = in - 1; d >= 0; d--) {
      for (int k = 0; k < n; k++) row[k] += stride[k][d];
      if (++idx[d] < shape[d]) break;
      for (int k = 0; k < n; k++) row[k] -= shape[d] * stride[k][d];
      idx[d] = 0;
    }
  }
}

/* The f32 fast path over one segment: d[j] for j < n, sources a and b
   either vectors (stride 1) or scalars (stride 0 or a constant: xs, ys).
   In place, d equals a or b exactly (validation allows nothing else), and
   each element is read before it is written at the same j, which the
   vectorised loops keep; exp, log and tanh are vmath.h's, which vectorise
   too. */
#define KD_UNARY(EXPR)                                                            \
  do {                                                                            \
    if (va)                                                                       \
      for (int64_t j = 0; j < n; j++) {                                           \
        float x = a[j];                                                           \
        d[j] = (EXPR);                                                            \
      }                                                                           \
    else {                                                                        \
      float x = (float)xs, r = (EXPR);                                            \
      for (int64_t j = 0; j < n; j++) d[j] = r;                                   \
    }                                                                             \
  } while (0)

/* Binary ops compute in float, immediates rounded to float first, as any
   f32 framework does. For + - * / min max, compares and MULZ on float
   operands that gives the very bits of rounding the double result (double
   has more than 2 x 24 + 2 bits, so the double rounding is innocuous), at
   twice the vector width of double. */
#define KD_BINARY(EXPR)                                                           \
  do {                                                                            \
    if (va && vb)                                                                 \
      for (int64_t j = 0; j < n; j++) {                                           \
        float x = a[j], y = b[j];                                                 \
        d[j] = (float)(EXPR);                                                     \
      }                                                                           \
    else if (va)                                                                  \
      for (int64_t j = 0; j < n; j++) {                                           \
        float x = a[j], y = (float)ys;                                            \
        d[j] = (float)(EXPR);                                                     \
      }                                                                           \
    else if (vb)                                                                  \
      for (int64_t j = 0; j < n; j++) {                                           \
        float x = (float)xs, y = b[j];                                            \
        d[j] = (float)(EXPR);                                                     \
      }                                                                           \
    else {                                                                        \
      float x = (float)xs, y = (float)ys, r = (float)(EXPR);                      \
      for (int64_t j = 0; j < n; j++) d[j] = r;                                   \
    }                                                                             \
  } while (0)

KD_VECTOR_CLONES
static void map_f32(kd_step_fn fn, int64_t n, float *restrict d, const float *restrict a,
                    bool va, double xs, const float *restrict b, bool vb, double ys) {
  switch (fn) {
  case KD_SF_COPY:
  case KD_SF_FILL: KD_UNARY(x); break;
  case KD_SF_NEG: KD_UNARY(-x); break;
  case KD_SF_EXP: KD_UNARY(kd_expf(x)); break;
  case KD_SF_LOG: KD_UNARY(kd_logf(x)); break;
  case KD_SF_SQRT: KD_UNARY(sqrtf(x)); break;
  case KD_SF_ABS: KD_UNARY(fabsf(x)); break;
  case KD_SF_SIGN: KD_UNARY(x > 0 ? 1.0f : x < 0 ? -1.0f : x); break;
  case KD_SF_TANH: KD_UNARY(kd_tanhf(x)); break;
  case KD_SF_ADD: KD_BINARY(x + y); break;
  case KD_SF_SUB: KD_BINARY(x - y); break;
  case KD_SF_MUL: KD_BINARY(x * y); break;
  case KD_SF_MULZ: KD_BINARY(x == 0 ? 0.0f : x * y); break;
  case KD_SF_DIV: KD_BINARY(x / y); break;
  case KD_SF_POW: KD_BINARY(pow(x, y)); break; /* in double: exact float arguments */
  case KD_SF_MAX: KD_BINARY(isnan(x) || isnan(y) ? NAN : x > y ? x : y); break;
  case KD_SF_MIN: KD_BINARY(isnan(x) || isnan(y) ? NAN : x < y ? x : y); break;
  case KD_SF_LT: KD_BINARY(x < y); break;
  case KD_SF_LE: KD_BINARY(x <= y); break;
  case KD_SF_GT: KD_BINARY(x > y); break;
  case KD_SF_GE: KD_BINARY(x >= y); break;
  case KD_SF_EQ: KD_BINARY(x == y); break;
  case KD_SF_NE: KD_BINARY(x != y); break;
  default: break; /* IOTA and SELECT take the general path */
  }
}

/* The general path: n <= GEN_BLOCK results of fn from sources x, y, z in
   double, as ir/refexec.c computes them. */
static void map_double(kd_step_fn fn, int n, double *r, const double *x, const double *y,
                       const double *z) {
#define KD_EACH(EXPR)                         \
  for (int j = 0; j < n; j++) r[j] = (EXPR);  \
  break
  switch (fn) {
  case KD_SF_COPY:
  case KD_SF_FILL:
  case KD_SF_IOTA: KD_EACH(x[j]);
  case KD_SF_NEG: KD_EACH(-x[j]);
  case KD_SF_EXP: KD_EACH(exp(x[j]));
  case KD_SF_LOG: KD_EACH(log(x[j]));
  case KD_SF_SQRT: KD_EACH(sqrt(x[j]));
  case KD_SF_ABS: KD_EACH(fabs(x[j]));
  case KD_SF_SIGN: KD_EACH(x[j] > 0 ? 1.0 : x[j] < 0 ? -1.0 : x[j]);
  case KD_SF_TANH: KD_EACH(tanh(x[j]));
  case KD_SF_ADD: KD_EACH(x[j] + y[j]);
  case KD_SF_SUB: KD_EACH(x[j] - y[j]);
  case KD_SF_MUL: KD_EACH(x[j] * y[j]);
  case KD_SF_MULZ: KD_EACH(x[j] == 0 ? 0.0 : x[j] * y[j]);
  case KD_SF_DIV: KD_EACH(x[j] / y[j]);
  case KD_SF_POW: KD_EACH(pow(x[j], y[j]));
  case KD_SF_MAX: KD_EACH(isnan(x[j]) || isnan(y[j]) ? NAN : x[j] > y[j] ? x[j] : y[j]);
  case KD_SF_MIN: KD_EACH(isnan(x[j]) || isnan(y[j]) ? NAN : x[j] < y[j] ? x[j] : y[j]);
  case KD_SF_LT: KD_EACH(x[j] < y[j]);
  case KD_SF_LE: KD_EACH(x[j] <= y[j]);
  case KD_SF_GT: KD_EACH(x[j] > y[j]);
  case KD_SF_GE: KD_EACH(x[j] >= y[j]);
  case KD_SF_EQ: KD_EACH(x[j] == y[j]);
  case KD_SF_NE: KD_EACH(x[j] != y[j]);
  case KD_SF_SELECT: KD_EACH(x[j] != 0 ? y[j] : z[j]);
  default: KD_EACH(NAN);
  }
#undef KD_EACH
}

/* Loads n elements of operand o from element offset off, step s. */
static void load_block(const operand *o, int64_t off, int64_t s, int n, double *buf) {
  if (o->kind == OP_CONST) {
    for (int j = 0; j < n; j++) buf[j] = o->imm;
  } else if (o->kind == OP_INDEX) {
    for (int j = 0; j < n; j++) buf[j] = (double)(off + j * s);
  } else if (o->dtype == KD_F32) {
    const float *f = (const float *)o->base + off;
    for (int j = 0; j < n; j++) buf[j] = f[j * s];
  } else {
    for (int j = 0; j < n; j++) buf[j] = load_elem(o->base, o->dtype, off + j * s);
  }
}

/* The f32 fast path on one segment. Operands with an inner stride other
   than 0 or 1 (a transpose's source or destination) go through a block of
   contiguous floats, gathered before and scattered after. */
static void map_segment_f32(const map_ctx *c, const int64_t *off, int64_t n) {
  int in = c->rank - 1;
  const operand *D = &c->op[0], *A = &c->op[1], *B = c->nops > 2 ? &c->op[2] : NULL;
  int64_t sd = D->stride[in], sa = A->stride[in], sb = B ? B->stride[in] : 0;
  float *d = (float *)D->base + off[0];
  const float *a = A->kind == OP_MEM ? (const float *)A->base + off[1] : NULL;
  const float *b = B && B->kind == OP_MEM ? (const float *)B->base + off[2] : NULL;
  double xs = a ? (double)a[0] : A->imm, ys = B ? (b ? (double)b[0] : B->imm) : 0;
  bool va = a && sa != 0, vb = b && sb != 0;
  if (sd == 1 && (!va || sa == 1) && (!vb || sb == 1)) {
    map_f32(c->fn, n, d, a, va, xs, b, vb, ys);
    return;
  }
  float ta[GEN_BLOCK], tb[GEN_BLOCK], td[GEN_BLOCK];
  for (int64_t j = 0; j < n; j += GEN_BLOCK) {
    int64_t m = n - j < GEN_BLOCK ? n - j : GEN_BLOCK;
    if (va && sa != 1)
      for (int64_t t = 0; t < m; t++) ta[t] = a[(j + t) * sa];
    if (vb && sb != 1)
      for (int64_t t = 0; t < m; t++) tb[t] = b[(j + t) * sb];
    float *dd = sd == 1 ? d + j : td;
    map_f32(c->fn, m, dd, !va ? NULL : sa == 1 ? a + j : ta, va, xs,
            !vb ? NULL : sb == 1 ? b + j : tb, vb, ys);
    if (sd != 1)
      for (int64_t t = 0; t < m; t++) d[(j + t) * sd] = td[t];
  }
}

/* One segment of a row: n elements from element offsets off[k]. */
static void map_segment(const map_ctx *c, const int64_t *off, int64_t n) {
  if (c->fast) {
    map_segment_f32(c, off, n);
    return;
  }
  int in = c->rank - 1;
  double buf[KD_STEP_MAX_SRC][GEN_BLOCK], r[GEN_BLOCK];
  for (int64_t j = 0; j < n; j += GEN_BLOCK) {
    int m = (int)(n - j < GEN_BLOCK ? n - j : GEN_BLOCK);
    for (int k = 1; k < c->nops; k++)
      load_block(&c->op[k], off[k] + j * c->op[k].stride[in], c->op[k].stride[in], m,
                 buf[k - 1]);
    map_double(c->fn, m, r, buf[0], buf[1], buf[2]);
    const operand *d = &c->op[0];
    int64_t ds = d->stride[in], d0 = off[0] + j * ds;
    if (d->dtype == KD_F32) {
      float *f = (float *)d->base + d0;
      for (int t = 0; t < m; t++) f[t * ds] = (float)r[t];
    } else {
      for (int t = 0; t < m; t++) store_elem(d->base, d->dtype, d0 + t * ds, r[t]);
    }
  }
}

static void map_seg(void *ctx, const int64_t *off, int64_t n) { map_segment(ctx, off, n); }

/* Elements [begin, end) of the map's index space (kd_step_walk). */
static void map_chunk(void *vctx, int64_t begin, int64_t end, int worker) {
  (void)worker;
  map_ctx *c = vctx;
  int64_t *st[1 + KD_STEP_MAX_SRC], row[1 + KD_STEP_MAX_SRC], off[1 + KD_STEP_MAX_SRC];
  for (int k = 0; k < c->nops; k++) st[k] = c->op[k].stride, row[k] = c->op[k].offset;
  kd_step_walk(c->rank, c->shape, c->nops, st, begin, end, row, off, map_seg, c);
}

/* step_fused.c takes the f32 path on the same test (kd_step_run_fused):
   change both together, or fused and unfused programs differ. */
static bool fast_fn(kd_step_fn fn) {
  return fn != KD_SF_IOTA && fn != KD_SF_SELECT;
}

/* The product of shape's dims but `skip`, 0 when any is 0 (checked first:
   the others' product is then bounded by dst's size, and cannot overflow). */
static int64_t count(const kd_step_instr *in, int32_t skip) {
  for (int32_t d = 0; d < in->rank; d++)
    if (d != skip && in->shape[d] == 0) return 0;
  int64_t n = 1;
  for (int32_t d = 0; d < in->rank; d++)
    if (d != skip) n *= in->shape[d];
  return n;
}

static kd_status run_map(const kd_step_instr *in, map_ctx *c, kd_pool *pool) {
  int64_t total = count(in, -1);
  if (total == 0) return KD_OK;
  c->fn = in->fn;
  c->rank = in->rank;
  memcpy(c->shape, in->shape, sizeof c->shape);
  if (in->fn == KD_SF_IOTA) { /* the index along axis, as a source */
    c->nops = 2;
    c->op[1] = (operand){.kind = OP_INDEX, .dtype = KD_I64};
    c->op[1].stride[in->axis] = 1;
  }
  int64_t *st[1 + KD_STEP_MAX_SRC] = {0};
  for (int k = 0; k < c->nops; k++) st[k] = c->op[k].stride;
  c->rank = kd_step_merge_dims(c->rank, c->shape, c->nops, st);
  c->fast = fast_fn(c->fn) && c->op[0].dtype == KD_F32;
  for (int k = 1; k < c->nops && c->fast; k++)
    c->fast = c->op[k].kind == OP_CONST || c->op[k].dtype == KD_F32;
  kd_pool_parallel_for(pool, total, MAP_GRAIN, map_chunk, c);
  return KD_OK;
}

/* ---- running: reductions and softmax ---------------------------------------- */

/* Rows along `axis`, several at a time: each row is summed in index order
 * (a chain of dependent double additions, 4 cycles an element), so W
 * neighbouring rows run interleaved, W independent chains. When the
 * source's last dim is contiguous and not the axis (a bias's gradient, a
 * reduction over a leading axis), W = RED_COLS rows read whole cache lines
 * together; else W = RED_ROWS. */
enum { RED_COLS = 64, RED_ROWS = 8 };

typedef struct red_ctx {
  const kd_step_instr *in;
  operand src, dst;
  int64_t len, sa, da; /* along the axis: elements, source and dst stride */
  int nrow;            /* the other dims, in order */
  int64_t rshape[KD_STEP_MAX_RANK], rs[KD_STEP_MAX_RANK], rd[KD_STEP_MAX_RANK];
  int64_t cols;        /* rows taken together along the last row dim (1, RED_ROWS, RED_COLS) */
  int64_t nblocks;     /* ceil(rshape[nrow - 1] / cols) when cols > 1 */
} red_ctx;

static inline __attribute__((always_inline)) double red_at(const operand *src, bool f32,
                                                           int64_t i) {
  return f32 ? (double)((const float *)src->base)[i] : load_elem(src->base, src->dtype, i);
}

/* W <= RED_COLS rows at once: row w's element k is at w * cs + k * sa from
   off. Specialised for f32 sources (f32 a constant after inlining). */
static inline __attribute__((always_inline)) void reduce_impl(kd_step_fn fn, const operand *src,
                                                              bool f32, int64_t off, int64_t cs,
                                                              int64_t sa, int64_t len, int W,
                                                              double *out) {
  double acc[RED_COLS];
  if (fn == KD_SF_SUM) {
    for (int w = 0; w < W; w++) acc[w] = 0;
    for (int64_t k = 0; k < len; k++)
      for (int w = 0; w < W; w++) acc[w] += red_at(src, f32, off + w * cs + k * sa);
    memcpy(out, acc, (size_t)W * sizeof *acc);
    return;
  }
  for (int w = 0; w < W; w++) acc[w] = -INFINITY; /* RMAX: NaN wins, as refexec's early return */
  for (int64_t k = 0; k < len; k++)
    for (int w = 0; w < W; w++) {
      double x = red_at(src, f32, off + w * cs + k * sa);
      acc[w] = isnan(x) || isnan(acc[w]) ? NAN : x > acc[w] ? x : acc[w];
    }
  if (fn == KD_SF_LSE) {
    double s[RED_COLS];
    for (int w = 0; w < W; w++) s[w] = 0;
    for (int64_t k = 0; k < len; k++)
      for (int w = 0; w < W; w++)
        if (isfinite(acc[w])) s[w] += exp(red_at(src, f32, off + w * cs + k * sa) - acc[w]);
    for (int w = 0; w < W; w++)
      if (isfinite(acc[w])) acc[w] += log(s[w]); /* all -inf, +inf, NaN rows: the max */
  }
  memcpy(out, acc, (size_t)W * sizeof *acc);
}

/* The maximum of a contiguous f32 row, 8 lanes at a time (vectorised: a
   float compare and select, NaN noted apart); NaN if any element is. The
   same value as reduce_impl's chain, bar the sign of a zero maximum when
   both -0 and +0 occur (the lanes meet them in another order). */
static inline double row_max_f32(const float *x, int64_t len) {
  enum { L = 8 };
  float acc[L];
  int nan[L];
  for (int w = 0; w < L; w++) acc[w] = -INFINITY, nan[w] = 0;
  int64_t k = 0;
  for (; k + L <= len; k += L)
    for (int w = 0; w < L; w++) {
      float v = x[k + w];
      acc[w] = v > acc[w] ? v : acc[w];
      nan[w] |= v != v;
    }
  for (; k < len; k++) {
    acc[0] = x[k] > acc[0] ? x[k] : acc[0];
    nan[0] |= x[k] != x[k];
  }
  float m = acc[0];
  int any = nan[0];
  for (int w = 1; w < L; w++) m = acc[w] > m ? acc[w] : m, any |= nan[w];
  return any ? NAN : m;
}

/* The sum of a contiguous f32 row in double, 8 chains (element k in chain
   k % 8, vectorised) added pairwise at the end: a fixed order, so the same
   bits on every thread, within a double rounding of reduce_impl's single
   chain (at most 1 ulp apart once rounded to float) and 4 to 8 times as
   fast. */
static inline double row_sum_f32(const float *x, int64_t len) {
  enum { L = 8 };
  double acc[L] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + L <= len; k += L)
    for (int w = 0; w < L; w++) acc[w] += x[k + w];
  for (; k < len; k++) acc[k % L] += x[k];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

KD_VECTOR_CLONES
static void reduce_rows(kd_step_fn fn, const operand *src, int64_t off, int64_t cs, int64_t sa,
                        int64_t len, int W, double *out) {
  if (fn == KD_SF_RMAX && src->dtype == KD_F32 && sa == 1) {
    for (int w = 0; w < W; w++) out[w] = row_max_f32((const float *)src->base + off + w * cs, len);
    return;
  }
  if (fn == KD_SF_SUM && src->dtype == KD_F32 && sa == 1) {
    for (int w = 0; w < W; w++) out[w] = row_sum_f32((const float *)src->base + off + w * cs, len);
    return;
  }
  if (src->dtype == KD_F32) reduce_impl(fn, src, true, off, cs, sa, len, W, out);
  else reduce_impl(fn, src, false, off, cs, sa, len, W, out);
}

/* Row-block t's element offsets into source and dst, and its width. */
static int row_block(const red_ctx *c, int64_t t, int64_t *so, int64_t *dso) {
  int64_t s = c->src.offset, d = c->dst.offset;
  int W = 1;
  int last = c->nrow - 1;
  if (c->cols > 1) { /* the last row dim in blocks */
    int64_t b = t % c->nblocks, j = b * c->cols;
    t /= c->nblocks;
    W = (int)(c->rshape[last] - j < c->cols ? c->rshape[last] - j : c->cols);
    s += j * c->rs[last], d += j * c->rd[last];
    last--;
  }
  for (int r = last; r >= 0; r--) {
    int64_t idx = t % c->rshape[r];
    t /= c->rshape[r];
    s += idx * c->rs[r], d += idx * c->rd[r];
  }
  *so = s, *dso = d;
  return W;
}

static void reduce_chunk(void *vctx, int64_t begin, int64_t end, int worker) {
  (void)worker;
  const red_ctx *c = vctx;
  double out[RED_COLS];
  int64_t cs = c->cols > 1 ? c->rs[c->nrow - 1] : 0, ds = c->cols > 1 ? c->rd[c->nrow - 1] : 0;
  for (int64_t t = begin; t < end; t++) {
    int64_t so, dof;
    int W = row_block(c, t, &so, &dof);
    reduce_rows(c->in->fn, &c->src, so, cs, c->sa, c->len, W, out);
    for (int w = 0; w < W; w++) store_elem(c->dst.base, c->dst.dtype, dof + w * ds, out[w]);
  }
}

/* SOFTMAX and LOG_SOFTMAX, one f32 row at a time, as refexec up to the
 * exps: with m the row's maximum, e_k = exp(x_k - m) and s = sum e_k (in
 * double), log softmax is x - (m + log s) and softmax e_k / s.
 *
 * Softmax's exps are float, vectorised: x_k - m (exact in double) is split
 * into float hi + lo and e_k = kd_expf(hi) (1 + lo), so the rounding of
 * x_k - m to float (|x_k - m| / 2 ulps of e_k, when the row spans tens)
 * does not count; e_k is within about 2.5 ulps, softmax within 3 ulps of
 * refexec's exp(x - lse) (s is summed in four chains and e_k multiplied by
 * 1 / s: double roundings, invisible in float). Rows longer than SOFT_KEEP
 * go through the block twice (the sum, then the output).
 *
 * Log softmax keeps double exps summed in index order: its x - lse is then
 * refexec's to the last bit, and no model runs it per token. A row with no
 * finite maximum (all -inf: NaN, as refexec; +inf; NaN) takes refexec's
 * formula as it stands. */
enum { SOFT_KEEP = 2048 };

/* e[k] = exp(x[k sa] - m) for k < n, lo scratch. m is a float (the row's
   maximum), so hi + lo = x - m exactly comes from float arithmetic alone
   (Knuth's TwoSum: the rounding error of a float subtraction is a float),
   at twice the vector width of double: hi is x - m rounded, lo its exact
   error (a double difference is exact only while x and m are within 29
   binades; beyond, the two lo differ below 2^-53 |hi|, which e cannot
   show). A masked x (-inf) gives hi -inf and lo 0. */
static inline void soft_exps_in(const float *x, int64_t sa, float m, int64_t n,
                                float *restrict e, float *restrict lo) {
  for (int64_t k = 0; k < n; k++) {
    float a = x[k * sa], hi = a - m, bv = hi - a;
    float err = (a - (hi - bv)) + (-m - bv);
    e[k] = hi;
    lo[k] = hi > -INFINITY ? err : 0.0f;
  }
  for (int64_t k = 0; k < n; k++) {
    float v = kd_expf(e[k]);
    e[k] = v + v * lo[k];
  }
}

KD_VECTOR_CLONES
static void soft_exps(const float *x, int64_t sa, float m, int64_t n, float *restrict e,
                      float *restrict lo) {
  soft_exps_in(x, sa, m, n, e, lo);
}

/* The sum of e[0..n) in double, four interleaved chains (element k in
   chain k % 4) added as (c0 + c1) + (c2 + c3): a fixed order, four times
   the throughput of one chain. */
static inline double sum4(const float *e, int64_t n) {
  double c[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    for (int w = 0; w < 4; w++) c[w] += e[k + w];
  for (; k < n; k++) c[k % 4] += e[k];
  return (c[0] + c[1]) + (c[2] + c[3]);
}

/* A contiguous softmax row of at most SOFT_KEEP with a finite maximum, in
   one call: what softmax_chunk does below, operation for operation, with
   one dispatch a row instead of four (attention's rows are 64 long).
   False, with nothing written, when the maximum is not finite. */
KD_VECTOR_CLONES
static bool soft_row(const float *x, float *y, int64_t len, float *restrict e,
                     float *restrict lo) { /* y may be x: read whole before written */
  double m = row_max_f32(x, len);
  if (!isfinite(m)) return false;
  soft_exps_in(x, 1, (float)m, len, e, lo);
  double inv = 1 / sum4(e, len);
  for (int64_t k = 0; k < len; k++) y[k] = (float)(e[k] * inv);
  return true;
}

static void softmax_chunk(void *vctx, int64_t begin, int64_t end, int worker) {
  (void)worker;
  const red_ctx *c = vctx;
  bool soft = c->in->fn == KD_SF_SOFTMAX;
  int64_t sa = c->sa, da = c->da, len = c->len;
  float e[SOFT_KEEP], lo[SOFT_KEEP];
  for (int64_t t = begin; t < end; t++) {
    int64_t so, dof;
    row_block(c, t, &so, &dof);
    const float *x = (const float *)c->src.base + so;
    float *y = (float *)c->dst.base + dof;
    if (soft && sa == 1 && da == 1 && len <= SOFT_KEEP && soft_row(x, y, len, e, lo)) continue;
    double m;
    reduce_rows(KD_SF_RMAX, &c->src, so, 0, sa, len, 1, &m);
    if (!isfinite(m)) {
      for (int64_t k = 0; k < len; k++) {
        double v = (double)x[k * sa] - m;
        y[k * da] = (float)(soft ? exp(v) : v);
      }
      continue;
    }
    double s = 0;
    if (!soft) { /* double exps: x - lse stays exact to the last bit */
      for (int64_t k = 0; k < len; k++) s += exp((double)x[k * sa] - m);
      double lse = m + log(s);
      for (int64_t k = 0; k < len; k++) y[k * da] = (float)((double)x[k * sa] - lse);
      continue;
    }
    for (int64_t k0 = 0; k0 < len; k0 += SOFT_KEEP) {
      int64_t n = len - k0 < SOFT_KEEP ? len - k0 : SOFT_KEEP;
      soft_exps(x + k0 * sa, sa, (float)m, n, e, lo);
      s += sum4(e, n);
    }
    double inv = 1 / s;
    for (int64_t k0 = 0; k0 < len; k0 += SOFT_KEEP) {
      int64_t n = len - k0 < SOFT_KEEP ? len - k0 : SOFT_KEEP;
      if (len > SOFT_KEEP) soft_exps(x + k0 * sa, sa, (float)m, n, e, lo); /* else still there */
      float *yk = y + k0 * da;
      if (da == 1)
        for (int64_t k = 0; k < n; k++) yk[k] = (float)(e[k] * inv);
      else
        for (int64_t k = 0; k < n; k++) yk[k * da] = (float)(e[k] * inv);
    }
  }
}

static kd_status run_rows(const kd_step_instr *in, red_ctx *c, kd_pool *pool) {
  c->in = in;
  c->len = in->shape[in->axis];
  c->sa = c->src.stride[in->axis];
  c->da = c->dst.stride[in->axis];
  c->nrow = 0;
  int64_t rows = count(in, in->axis);
  for (int32_t d = 0; d < in->rank; d++) {
    if (d == in->axis) continue;
    c->rshape[c->nrow] = in->shape[d];
    c->rs[c->nrow] = c->src.stride[d];
    c->rd[c->nrow] = c->dst.stride[d];
    c->nrow++;
  }
  if (rows == 0) return KD_OK;
  c->cols = 1;
  int64_t tasks = rows;
  if (in->kind == KD_STEP_REDUCE && c->nrow > 0 && c->rshape[c->nrow - 1] > 1) {
    c->cols = c->rs[c->nrow - 1] == 1 && c->sa != 1 ? RED_COLS : RED_ROWS;
    c->nblocks = (c->rshape[c->nrow - 1] + c->cols - 1) / c->cols;
    tasks = rows / c->rshape[c->nrow - 1] * c->nblocks;
  }
  int64_t work = c->len * c->cols;
  int64_t grain = work >= MAP_GRAIN ? 1 : MAP_GRAIN / (work > 0 ? work : 1);
  kd_pool_parallel_for(pool, tasks, grain,
                       in->kind == KD_STEP_REDUCE ? reduce_chunk : softmax_chunk, c);
  return KD_OK;
}

/* ---- running ------------------------------------------------------------------ */

static kd_status run_instr(const kd_step_prog *p, int32_t i, void *arena, void *const *slots,
                           kd_pool *pool, char *err, size_t errlen) {
  const kd_step_instr *in = &p->instr[i];
  operand ops[1 + KD_STEP_MAX_SRC];
  kd_status st = resolve(p, i, arena, slots, &in->dst, &ops[0], err, errlen);
  for (int s = 0; s < in->nsrc && st == KD_OK; s++)
    st = resolve(p, i, arena, slots, &in->src[s], &ops[1 + s], err, errlen);
  if (st != KD_OK) return st;
  switch (in->kind) {
  case KD_STEP_MAP: {
    map_ctx c = {.nops = 1 + in->nsrc};
    memcpy(c.op, ops, sizeof ops);
    return run_map(in, &c, pool);
  }
  case KD_STEP_REDUCE:
  case KD_STEP_SOFTMAX: {
    red_ctx c = {.src = ops[1], .dst = ops[0]};
    return run_rows(in, &c, pool);
  }
  case KD_STEP_FUSED: return kd_step_run_fused(p, i, arena, slots, pool, err, errlen);
  case KD_STEP_GEMM: {
    const float *a = (const float *)ops[1].base + ops[1].offset;
    const float *b = (const float *)ops[2].base + ops[2].offset;
    st = kd_gemm_run(pool, &in->gemm, a, b, (float *)ops[0].base + ops[0].offset);
    if (st != KD_OK) return kd_errf(err, errlen, st, "instruction %d: gemm: %s", i, kd_status_str(st));
    return KD_OK;
  }
  case KD_STEP_GATHER:
  case KD_STEP_SCATTER_ADD: {
    const float *x = (const float *)ops[1].base + ops[1].offset;
    const int64_t *ids = (const int64_t *)ops[2].base + ops[2].offset;
    float *y = (float *)ops[0].base + ops[0].offset;
    char msg[256] = "";
    st = in->kind == KD_STEP_GATHER
             ? kd_gather_rows_f32(pool, x, in->rows, in->shape[1], ids, in->shape[0], y, msg,
                                  sizeof msg)
             : kd_scatter_add_rows_f32(pool, x, ids, in->shape[0], in->rows, in->shape[1],
                                       in->accumulate, y, msg, sizeof msg);
    if (st != KD_OK)
      return kd_errf(err, errlen, st, "instruction %d: %s: %s", i, kd_step_kind_name(in->kind),
                  msg[0] ? msg : kd_status_str(st));
    return KD_OK;
  }
  default: return kd_errf(err, errlen, KD_ERR_INVALID, "instruction %d: bad kind", i);
  }
}

kd_status kd_step_run(const kd_step_prog *p, void *arena, void *const *slots, int32_t begin,
                      int32_t end, kd_pool *pool, char *err, size_t errlen) {
  if (begin < 0 || end < begin || end > p->ninstr)
    return kd_errf(err, errlen, KD_ERR_INVALID, "instructions %d..%d are not a range of 0..%d",
                begin, end, p->ninstr);
  for (int32_t i = begin; i < end; i++) {
    kd_status st = run_instr(p, i, arena, slots, pool, err, errlen);
    if (st != KD_OK) return st;
  }
  return KD_OK;
}

/* ---- shared with step_fused.c --------------------------------------------- */

void kd_step_map_f32(kd_step_fn fn, int64_t n, float *restrict d, const float *restrict a,
                     bool va, double xs, const float *restrict b, bool vb, double ys) {
  map_f32(fn, n, d, a, va, xs, b, vb, ys);
}

void kd_step_map_double(kd_step_fn fn, int n, double *r, const double *x, const double *y,
                        const double *z) {
  map_double(fn, n, r, x, y, z);
}

int kd_step_map_arity(kd_step_fn fn) { return fn_arity(KD_STEP_MAP, fn); }
