/* The reference executor (see refexec.h): one value per node, computed in
 * topological order with plain loops, freed after its last use. */
#include "refexec.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct kd_ref {
  const kd_graph *g;
  int64_t *syms;   /* a symbol's size, or -1 while unbound */
  kd_ref_value *v; /* one per node */
  char *err;
  size_t errlen;
} kd_ref;

static kd_status kd_ref_fail(kd_ref *r, kd_status st, const char *fmt, ...) {
  if (r->err && r->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, r->errlen, fmt, ap);
    va_end(ap);
  }
  return st;
}

void kd_ref_value_free(kd_ref_value *v) {
  if (!v) return;
  free(v->data);
  memset(v, 0, sizeof *v);
}

/* ---- shapes ------------------------------------------------------------- */

/* The concrete shape of node n under the bound symbols. */
static kd_status kd_ref_shape(kd_ref *r, kd_node_id id, const kd_node *n, kd_ref_value *v) {
  size_t size = 1;
  v->rank = n->rank;
  for (int i = 0; i < n->rank; i++) {
    int64_t d = n->shape[i];
    if (KD_DIM_IS_SYM(d)) {
      d = r->syms[KD_DIM_SYM_INDEX(d)];
      if (d < 0)
        return kd_ref_fail(r, KD_ERR_INVALID, "%%%d: symbol %s is bound by no input", (int)id,
                           kd_graph_sym_name(r->g, n->shape[i]));
    }
    v->shape[i] = d;
    if (d > 0 && size > SIZE_MAX / sizeof(double) / (size_t)d)
      return kd_ref_fail(r, KD_ERR_INVALID, "%%%d: too many elements", (int)id);
    size *= (size_t)d;
  }
  v->size = size;
  return KD_OK;
}

static kd_status kd_ref_alloc(kd_ref *r, kd_node_id id, kd_ref_value *v) {
  v->data = malloc((v->size ? v->size : 1) * sizeof(double));
  return v->data ? KD_OK : kd_ref_fail(r, KD_ERR_NOMEM, "%%%d: out of memory", (int)id);
}

/* Strides for reading `src` broadcast to `out`'s shape: right-aligned, and 0
 * along dimensions where src has size 1 or does not exist. */
static void kd_ref_bstrides(const kd_ref_value *src, const kd_ref_value *out, int64_t *st) {
  int64_t s = 1;
  for (int i = out->rank - 1; i >= 0; i--) {
    int k = src->rank - out->rank + i;
    if (k < 0) {
      st[i] = 0;
      continue;
    }
    st[i] = src->shape[k] == 1 ? 0 : s;
    s *= src->shape[k];
  }
}

/* The offset into a broadcast source of element `lin` of out. */
static size_t kd_ref_offset(const kd_ref_value *out, const int64_t *st, size_t lin) {
  size_t off = 0;
  for (int i = out->rank - 1; i >= 0; i--) {
    size_t d = (size_t)out->shape[i];
    off += (lin % d) * (size_t)st[i];
    lin /= d;
  }
  return off;
}

/* ---- inputs ------------------------------------------------------------- */

static double kd_ref_load(kd_dtype t, const void *data, size_t i) {
  switch (t) {
  case KD_F32: return ((const float *)data)[i];
  case KD_BF16: return kd_bf16_to_f32(((const uint16_t *)data)[i]);
  case KD_F64: return ((const double *)data)[i];
  case KD_I32: return ((const int32_t *)data)[i];
  case KD_I64: return (double)((const int64_t *)data)[i];
  case KD_BOOL: return ((const uint8_t *)data)[i] != 0;
  default: return NAN;
  }
}

static kd_status kd_ref_bind(kd_ref *r, kd_node_id id, const kd_node *n,
                             const kd_ref_input *in, size_t nin, kd_ref_value *v) {
  const kd_ref_input *a = NULL;
  for (size_t i = 0; i < nin && !a; i++)
    if (in[i].name && !strcmp(in[i].name, n->name)) a = &in[i];
  if (!a) return kd_ref_fail(r, KD_ERR_INVALID, "input \"%s\" is not bound", n->name);
  if ((unsigned)a->dtype >= KD_DTYPE_COUNT ||
      kd_dtype_is_float(a->dtype) != kd_dtype_is_float(n->dtype) ||
      (a->dtype == KD_BOOL) != (n->dtype == KD_BOOL))
    return kd_ref_fail(r, KD_ERR_INVALID, "input \"%s\": %s data for a %s input", n->name,
                       kd_dtype_name(a->dtype), kd_dtype_name(n->dtype));
  if (a->rank != n->rank)
    return kd_ref_fail(r, KD_ERR_INVALID, "input \"%s\": rank %d given, %d expected", n->name,
                       a->rank, n->rank);
  for (int i = 0; i < n->rank; i++) {
    int64_t want = n->shape[i], got = a->shape[i];
    if (got < 0)
      return kd_ref_fail(r, KD_ERR_INVALID, "input \"%s\": negative dimension", n->name);
    if (KD_DIM_IS_SYM(want)) {
      int64_t *bound = &r->syms[KD_DIM_SYM_INDEX(want)];
      if (*bound < 0) *bound = got;
      want = *bound;
    }
    if (want != got)
      return kd_ref_fail(r, KD_ERR_INVALID,
                         "input \"%s\": dimension %d is %lld, but %lld elsewhere (%s)",
                         n->name, i, (long long)got, (long long)want,
                         KD_DIM_IS_SYM(n->shape[i]) ? kd_graph_sym_name(r->g, n->shape[i])
                                                    : "the graph");
  }
  kd_status st = kd_ref_shape(r, id, n, v);
  if (st == KD_OK && v->size && !a->data)
    st = kd_ref_fail(r, KD_ERR_INVALID, "input \"%s\": no data", n->name);
  if (st == KD_OK) st = kd_ref_alloc(r, id, v);
  if (st != KD_OK) return st;
  for (size_t i = 0; i < v->size; i++) v->data[i] = kd_ref_load(a->dtype, a->data, i);
  return KD_OK;
}

/* ---- ops ---------------------------------------------------------------- */

/* exp, its subnormal results flushed to 0 (refexec.h): a probability is
 * then 0 or at least DBL_MIN, so a positive multiple of it (0.1 p in a skew
 * KL's mixture) cannot round to 0 while p does not, which made log of the
 * mixture -inf and p (log p - log m) inf where the value is about 1e-323. */
static double kd_ref_exp(double x) {
  double e = exp(x);
  return e < DBL_MIN ? 0.0 : e;
}

static double kd_ref_unary(kd_opcode op, kd_dtype dtype, double x) {
  switch (op) {
  case KD_IR_NEG: return -x;
  case KD_IR_EXP: return kd_ref_exp(x);
  case KD_IR_LOG: return log(x);
  case KD_IR_SQRT: return sqrt(x);
  case KD_IR_ABS: return fabs(x);
  case KD_IR_SIGN: return x > 0 ? 1.0 : x < 0 ? -1.0 : x; /* keeps 0 and nan */
  case KD_IR_CAST:
    if (dtype == KD_BOOL) return x != 0;
    if (dtype == KD_I32 || dtype == KD_I64) return trunc(x);
    return x;
  case KD_IR_STOPGRAD: return x;
  case KD_IR_TANH: return tanh(x);
  default: return NAN;
  }
}

static double kd_ref_binary(kd_opcode op, double a, double b) {
  switch (op) {
  case KD_IR_ADD: return a + b;
  case KD_IR_SUB: return a - b;
  case KD_IR_MUL: return a * b;
  case KD_IR_MULZ: return a == 0 ? 0.0 : a * b;
  case KD_IR_DIV: return a / b;
  case KD_IR_POW: return pow(a, b);
  case KD_IR_MAX: return isnan(a) || isnan(b) ? NAN : a > b ? a : b;
  case KD_IR_MIN: return isnan(a) || isnan(b) ? NAN : a < b ? a : b;
  case KD_IR_LT: return a < b;
  case KD_IR_LE: return a <= b;
  case KD_IR_GT: return a > b;
  case KD_IR_GE: return a >= b;
  case KD_IR_EQ: return a == b;
  case KD_IR_NE: return a != b;
  default: return NAN;
  }
}

double kd_ref_scalar(kd_opcode op, kd_dtype dtype, const double *x) {
  switch (kd_opcode_class(op)) {
  case KD_CLASS_UNARY: return kd_ref_unary(op, dtype, x[0]);
  case KD_CLASS_BINARY: return kd_ref_binary(op, x[0], x[1]);
  case KD_CLASS_SELECT: return x[0] != 0 ? x[1] : x[2];
  default: return NAN;
  }
}

/* One row along `axis` of x: elements x[base + k * stride], k < len. */
typedef struct kd_ref_row {
  const double *x;
  size_t base, stride, len;
} kd_ref_row;

static double kd_ref_at(const kd_ref_row *w, size_t k) { return w->x[w->base + k * w->stride]; }

static double kd_ref_rmax(const kd_ref_row *w) {
  double m = -INFINITY;
  for (size_t k = 0; k < w->len; k++) {
    double x = kd_ref_at(w, k);
    if (isnan(x)) return NAN;
    if (x > m) m = x;
  }
  return m;
}

/* log(sum(exp(x))) shifted by the maximum: exp(x - m) <= 1 never
 * overflows, and the term at the maximum contributes 1, so the sum is >= 1
 * and its log is exact to rounding even for logits of magnitude 1e4. */
static double kd_ref_lse(const kd_ref_row *w) {
  double m = kd_ref_rmax(w);
  if (isnan(m) || isinf(m)) return m; /* all -inf (or empty) rows, +inf, nan */
  double s = 0;
  for (size_t k = 0; k < w->len; k++) s += exp(kd_ref_at(w, k) - m);
  return m + log(s);
}

static double kd_ref_reduce(kd_opcode op, const kd_ref_row *w) {
  switch (op) {
  case KD_IR_SUM: {
    double s = 0;
    for (size_t k = 0; k < w->len; k++) s += kd_ref_at(w, k);
    return s;
  }
  case KD_IR_RMAX: return kd_ref_rmax(w);
  case KD_IR_LSE: return kd_ref_lse(w);
  default: return NAN;
  }
}

/* ---- model ops ---------------------------------------------------------- */

/* The strides of a C-order array of shape v. */
static void kd_ref_strides(const kd_ref_value *v, size_t *st) {
  size_t s = 1;
  for (int i = v->rank - 1; i >= 0; i--) {
    st[i] = s;
    s *= (size_t)v->shape[i];
  }
}

/* out dim i is a's dim perm[i]: walk out in order, read a through strides. */
static void kd_ref_permute(const kd_node *n, const kd_ref_value *a, kd_ref_value *v) {
  int perm[KD_MAX_RANK];
  size_t ast[KD_MAX_RANK];
  kd_perm_unpack(n->axis, perm); /* valid: the graph was verified */
  kd_ref_strides(a, ast);
  for (size_t i = 0; i < v->size; i++) {
    size_t lin = i, off = 0;
    for (int k = v->rank - 1; k >= 0; k--) {
      off += (lin % (size_t)v->shape[k]) * ast[perm[k]];
      lin /= (size_t)v->shape[k];
    }
    v->data[i] = a->data[off];
  }
}

/* The oracle's matmul is a triple loop per batch index; b [K, N] is shared
 * by every batch index, b [.., K, N] has one matrix per index. */
static void kd_ref_matmul(const kd_ref_value *a, const kd_ref_value *b, kd_ref_value *v) {
  size_t M = (size_t)a->shape[a->rank - 2], K = (size_t)a->shape[a->rank - 1];
  size_t N = (size_t)b->shape[b->rank - 1];
  size_t batch = M && N ? v->size / (M * N) : 0;
  for (size_t p = 0; p < batch; p++) {
    const double *A = a->data + p * M * K, *B = b->data + (b->rank == 2 ? 0 : p * K * N);
    double *C = v->data + p * M * N;
    for (size_t i = 0; i < M; i++)
      for (size_t j = 0; j < N; j++) {
        double acc = 0;
        for (size_t k = 0; k < K; k++) acc += A[i * K + k] * B[k * N + j];
        C[i * N + j] = acc;
      }
  }
}

/* GATHER_ROWS (table a, ids b) and SCATTER_ADD_ROWS (rows a, ids b). */
static kd_status kd_ref_rows(kd_ref *r, kd_node_id id, const kd_node *n, const kd_ref_value *a,
                             const kd_ref_value *b, kd_ref_value *v) {
  bool gather = n->op == KD_IR_GATHER_ROWS;
  size_t D = (size_t)v->shape[v->rank - 1];
  int64_t V = gather ? a->shape[0] : v->shape[0];
  if (!gather) memset(v->data, 0, v->size * sizeof(double));
  for (size_t i = 0; i < b->size; i++) {
    double x = b->data[i];
    if (!(x >= 0 && x < (double)V))
      return kd_ref_fail(r, KD_ERR_INVALID, "%%%d: %s: id %g at %zu is outside 0..%lld", (int)id,
                         kd_opcode_name(n->op), x, i, (long long)V - 1);
    size_t row = (size_t)x;
    for (size_t k = 0; k < D; k++) {
      if (gather) v->data[i * D + k] = a->data[row * D + k];
      else v->data[row * D + k] += a->data[i * D + k];
    }
  }
  return KD_OK;
}

static kd_status kd_ref_other(kd_ref *r, kd_node_id id, const kd_node *n, kd_ref_value *v) {
  const kd_ref_value *a = &r->v[n->src[0]], *b = n->nsrc > 1 ? &r->v[n->src[1]] : NULL;
  int64_t st0[KD_MAX_RANK];
  switch (n->op) {
  case KD_IR_EXPAND:
    kd_ref_bstrides(a, v, st0);
    for (size_t i = 0; i < v->size; i++) v->data[i] = a->data[kd_ref_offset(v, st0, i)];
    return KD_OK;
  case KD_IR_RESHAPE:
    memcpy(v->data, a->data, v->size * sizeof(double));
    return KD_OK;
  case KD_IR_PERMUTE: kd_ref_permute(n, a, v); return KD_OK;
  case KD_IR_MATMUL: kd_ref_matmul(a, b, v); return KD_OK;
  case KD_IR_GATHER_ROWS:
  case KD_IR_SCATTER_ADD_ROWS: return kd_ref_rows(r, id, n, a, b, v);
  default:
    return kd_ref_fail(r, KD_ERR_UNSUPPORTED, "%%%d: %s has no reference semantics", (int)id,
                       kd_opcode_name(n->op));
  }
}

/* Computes node n into v, its sources' values being ready. */
static kd_status kd_ref_node(kd_ref *r, kd_node_id id, const kd_node *n, kd_ref_value *v) {
  kd_status st = kd_ref_shape(r, id, n, v);
  if (st == KD_OK) st = kd_ref_alloc(r, id, v);
  if (st != KD_OK) return st;
  const kd_ref_value *a = n->nsrc > 0 ? &r->v[n->src[0]] : NULL;
  int64_t st0[KD_MAX_RANK], st1[KD_MAX_RANK], st2[KD_MAX_RANK];
  switch (kd_opcode_class(n->op)) {
  case KD_CLASS_INPUT: /* CONST and IOTA; INPUT is bound elsewhere */
    for (size_t i = 0; i < v->size; i++) {
      if (n->op == KD_IR_CONST) {
        v->data[i] = n->value;
        continue;
      }
      size_t lin = i; /* iota: the index along n->axis */
      for (int k = v->rank - 1; k > n->axis; k--) lin /= (size_t)v->shape[k];
      v->data[i] = (double)(lin % (size_t)v->shape[n->axis]);
    }
    return KD_OK;
  case KD_CLASS_UNARY:
    for (size_t i = 0; i < v->size; i++) v->data[i] = kd_ref_unary(n->op, n->dtype, a->data[i]);
    return KD_OK;
  case KD_CLASS_BINARY: {
    const kd_ref_value *b = &r->v[n->src[1]];
    kd_ref_bstrides(a, v, st0);
    kd_ref_bstrides(b, v, st1);
    for (size_t i = 0; i < v->size; i++)
      v->data[i] = kd_ref_binary(n->op, a->data[kd_ref_offset(v, st0, i)],
                                 b->data[kd_ref_offset(v, st1, i)]);
    return KD_OK;
  }
  case KD_CLASS_SELECT: {
    const kd_ref_value *b = &r->v[n->src[1]], *c = &r->v[n->src[2]];
    kd_ref_bstrides(a, v, st0);
    kd_ref_bstrides(b, v, st1);
    kd_ref_bstrides(c, v, st2);
    for (size_t i = 0; i < v->size; i++)
      v->data[i] = a->data[kd_ref_offset(v, st0, i)] != 0 ? b->data[kd_ref_offset(v, st1, i)]
                                                          : c->data[kd_ref_offset(v, st2, i)];
    return KD_OK;
  }
  case KD_CLASS_REDUCE:
  case KD_CLASS_ROW: {
    kd_ref_row w = {a->data, 0, 1, a->size};
    size_t inner = 1, outer = 1;
    if (n->axis != KD_AXIS_ALL) {
      for (int k = n->axis + 1; k < a->rank; k++) inner *= (size_t)a->shape[k];
      for (int k = 0; k < n->axis; k++) outer *= (size_t)a->shape[k];
      w.stride = inner;
      w.len = (size_t)a->shape[n->axis];
    }
    for (size_t o = 0; o < outer; o++)
      for (size_t in = 0; in < inner; in++) {
        w.base = o * inner * w.len + in;
        if (kd_opcode_class(n->op) == KD_CLASS_REDUCE) {
          v->data[o * inner + in] = kd_ref_reduce(n->op, &w);
          continue;
        }
        double lse = kd_ref_lse(&w); /* SOFTMAX, LOG_SOFTMAX */
        for (size_t k = 0; k < w.len; k++) {
          double y = kd_ref_at(&w, k) - lse;
          v->data[w.base + k * w.stride] = n->op == KD_IR_SOFTMAX ? kd_ref_exp(y) : y;
        }
      }
    return KD_OK;
  }
  case KD_CLASS_OTHER:
    return kd_ref_other(r, id, n, v);
  }
  return kd_ref_fail(r, KD_ERR_UNSUPPORTED, "%%%d: %s has no reference semantics", (int)id,
                     kd_opcode_name(n->op));
}

/* ---- the run ------------------------------------------------------------ */

kd_status kd_ref_exec(const kd_graph *g, const kd_ref_input *inputs, size_t ninputs,
                      kd_ref_value *out, char *errbuf, size_t errlen) {
  size_t nn = kd_graph_size(g), nout = kd_graph_noutputs(g);
  kd_ref r = {g, NULL, NULL, errbuf, errlen};
  for (size_t i = 0; i < nout; i++) memset(&out[i], 0, sizeof out[i]);
  kd_status st = kd_graph_verify(g, errbuf, errlen);
  if (st != KD_OK) return st;
  r.syms = malloc((kd_graph_nsyms(g) + 1) * sizeof(int64_t));
  r.v = calloc(nn + 1, sizeof(kd_ref_value));
  kd_node_id *last = malloc((nn + 1) * sizeof(kd_node_id)); /* a value's last reader */
  if (!r.syms || !r.v || !last) {
    st = kd_ref_fail(&r, KD_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < kd_graph_nsyms(g); i++) r.syms[i] = -1;
  /* Symbols are bound by the inputs first, so that an IOTA or EXPAND that
   * precedes an input in the graph still sees the sizes. */
  for (size_t i = 0; i < nn && st == KD_OK; i++) {
    const kd_node *n = kd_graph_node(g, (kd_node_id)i);
    if (n->op == KD_IR_INPUT) st = kd_ref_bind(&r, (kd_node_id)i, n, inputs, ninputs, &r.v[i]);
  }
  for (size_t i = 0; i < nn; i++) {
    last[i] = (kd_node_id)i;
    const kd_node *n = kd_graph_node(g, (kd_node_id)i);
    for (int k = 0; k < n->nsrc; k++) last[n->src[k]] = (kd_node_id)i;
  }
  for (size_t i = 0; i < nout; i++) last[kd_graph_output(g, i)] = (kd_node_id)nn; /* kept */
  for (size_t i = 0; i < nn && st == KD_OK; i++) {
    const kd_node *n = kd_graph_node(g, (kd_node_id)i);
    if (n->op != KD_IR_INPUT) st = kd_ref_node(&r, (kd_node_id)i, n, &r.v[i]);
    for (int k = 0; k < n->nsrc; k++)
      if (last[n->src[k]] == (kd_node_id)i) kd_ref_value_free(&r.v[n->src[k]]);
    if (last[i] == (kd_node_id)i) kd_ref_value_free(&r.v[i]); /* never read */
  }
  if (st == KD_OK) {
    /* Outputs take their values over; one listed twice gets a copy. */
    for (size_t i = 0; i < nout && st == KD_OK; i++) {
      kd_ref_value *v = &r.v[kd_graph_output(g, i)];
      size_t j = 0;
      while (j < i && kd_graph_output(g, j) != kd_graph_output(g, i)) j++;
      if (j == i) {
        out[i] = *v;
        v->data = NULL;
        continue;
      }
      out[i] = out[j];
      out[i].data = malloc((out[j].size ? out[j].size : 1) * sizeof(double));
      if (!out[i].data) st = kd_ref_fail(&r, KD_ERR_NOMEM, "out of memory");
      else memcpy(out[i].data, out[j].data, out[j].size * sizeof(double));
    }
    if (st != KD_OK)
      for (size_t i = 0; i < nout; i++) kd_ref_value_free(&out[i]);
  }
done:
  if (r.v)
    for (size_t i = 0; i < nn; i++) kd_ref_value_free(&r.v[i]);
  free(r.v);
  free(r.syms);
  free(last);
  return st;
}
