/* Model layers as graph builders (see layers.h). Every layer is a
 * composite of IR ops, so the reference executor, autodiff and the passes
 * know it without a rule of its own. */
#include "layers.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kd_layers_init(kd_layers *L, kd_graph *g) {
  memset(L, 0, sizeof *L);
  L->g = g;
  L->dtype = KD_F32;
  L->std = 0.02;
  L->resid_std = 0.02;
  L->eps = 1e-5;
}

void kd_layers_free(kd_layers *L) {
  for (size_t i = 0; i < L->nparams; i++) free(L->params[i].name);
  free(L->params);
  L->params = NULL;
  L->nparams = L->cap = 0;
}

const char *kd_layers_error(const kd_layers *L) {
  if (L->err[0]) return L->err;
  return kd_graph_error(L->g);
}

const kd_model_param *kd_layers_find(const kd_layers *L, const char *name) {
  for (size_t i = 0; i < L->nparams; i++)
    if (!strcmp(L->params[i].name, name)) return &L->params[i];
  return NULL;
}

/* Records the layers' first error; returns KD_NONE for the caller to pass on. */
static kd_node_id kd_layers_fail(kd_layers *L, const char *fmt, ...) {
  if (!L->err[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->err, sizeof L->err, fmt, ap);
    va_end(ap);
  }
  return KD_NONE;
}

/* ---- helpers ------------------------------------------------------------ */

#define B(op, a, b) kd_binary(L->g, KD_IR_##op, a, b)
#define U(op, a) kd_unary(L->g, KD_IR_##op, a)
#define C(v) kd_const(L->g, v, KD_F32)

static const kd_node *kd_layers_node(kd_layers *L, kd_node_id x) {
  return kd_graph_node(L->g, x);
}

/* x's last dimension, which a layer needs as a constant (its parameters'
 * shapes); -1 with the error recorded otherwise. */
static int64_t kd_layers_width(kd_layers *L, const char *prefix, kd_node_id x) {
  const kd_node *n = kd_layers_node(L, x);
  if (!n) return -1;
  if (n->rank < 1 || KD_DIM_IS_SYM(n->shape[n->rank - 1])) {
    kd_layers_fail(L, "%s: the input's last dimension is not a constant", prefix);
    return -1;
  }
  return n->shape[n->rank - 1];
}

kd_node_id kd_layer_param(kd_layers *L, const char *prefix, const char *suffix, int rank,
                          const kd_dim *shape, kd_init init) {
  char name[256];
  if (snprintf(name, sizeof name, "%s.%s", prefix, suffix) >= (int)sizeof name)
    return kd_layers_fail(L, "%s.%s: the name is too long", prefix, suffix);
  if (kd_layers_find(L, name)) return kd_layers_fail(L, "parameter %s is made twice", name);
  if (L->nparams == L->cap) {
    size_t cap = L->cap ? 2 * L->cap : 16;
    kd_model_param *p = realloc(L->params, cap * sizeof *p);
    if (!p) return kd_layers_fail(L, "out of memory");
    L->params = p;
    L->cap = cap;
  }
  kd_node_id id = kd_input(L->g, name, L->dtype, rank, shape);
  char *copy = strdup(name);
  if (id == KD_NONE || !copy) {
    free(copy);
    return id == KD_NONE ? KD_NONE : kd_layers_fail(L, "out of memory");
  }
  L->params[L->nparams++] = (kd_model_param){copy, id, init};
  return id;
}

static kd_init kd_normal(double std) { return (kd_init){KD_INIT_NORMAL, 0, std}; }
static const kd_init kd_zeros = {KD_INIT_ZEROS, 0, 0};
static const kd_init kd_ones = {KD_INIT_ONES, 0, 0};

/* A sum over the last axis, divided by its size: [.., D] -> [.., 1]. */
static kd_node_id kd_layers_mean(kd_layers *L, kd_node_id x, int64_t d) {
  const kd_node *n = kd_layers_node(L, x);
  if (!n) return KD_NONE;
  int axis = n->rank - 1; /* n moves when the graph grows */
  return B(DIV, kd_reduce(L->g, KD_IR_SUM, x, axis), C((double)d));
}

/* y = x W (+ b), W with init std `std`. */
static kd_node_id kd_layers_linear_std(kd_layers *L, const char *prefix, kd_node_id x,
                                       int64_t out, bool bias, double std) {
  int64_t in = kd_layers_width(L, prefix, x);
  if (in < 0) return KD_NONE;
  kd_dim ws[2] = {in, out}, bs[1] = {out};
  kd_node_id y = kd_matmul(L->g, x, kd_layer_param(L, prefix, "weight", 2, ws, kd_normal(std)));
  if (bias) y = B(ADD, y, kd_layer_param(L, prefix, "bias", 1, bs, kd_zeros));
  return y;
}

/* `prefix.name` into buf, for a sublayer's prefix. */
static const char *kd_layers_sub(char *buf, size_t len, const char *prefix, const char *name) {
  snprintf(buf, len, "%s.%s", prefix, name);
  return buf;
}

/* ---- layers ------------------------------------------------------------- */

kd_node_id kd_layer_embedding(kd_layers *L, const char *prefix, kd_node_id ids, int64_t vocab,
                              int64_t dim) {
  if (vocab < 1 || dim < 1)
    return kd_layers_fail(L, "%s: an embedding of %lld x %lld", prefix, (long long)vocab,
                          (long long)dim);
  kd_dim shape[2] = {vocab, dim};
  kd_node_id table = kd_layer_param(L, prefix, "weight", 2, shape, kd_normal(L->std));
  return kd_gather_rows(L->g, table, ids);
}

kd_node_id kd_layer_unembed(kd_layers *L, kd_node_id x, kd_node_id table) {
  const kd_node *t = kd_layers_node(L, table);
  int64_t d = kd_layers_width(L, "unembed", x);
  if (!t || d < 0) return KD_NONE;
  if (t->rank != 2 || t->shape[1] != d)
    return kd_layers_fail(L, "unembed: the input has width %lld, the embedding table %lld",
                          (long long)d, t->rank == 2 ? (long long)t->shape[1] : -1LL);
  static const int swap[2] = {1, 0};
  return kd_matmul(L->g, x, kd_permute(L->g, table, swap));
}

kd_node_id kd_layer_linear(kd_layers *L, const char *prefix, kd_node_id x, int64_t out,
                           bool bias) {
  if (out < 1) return kd_layers_fail(L, "%s: %lld outputs", prefix, (long long)out);
  return kd_layers_linear_std(L, prefix, x, out, bias, L->std);
}

kd_node_id kd_layer_layernorm(kd_layers *L, const char *prefix, kd_node_id x) {
  int64_t d = kd_layers_width(L, prefix, x);
  if (d < 0) return KD_NONE;
  kd_dim shape[1] = {d};
  kd_node_id xc = B(SUB, x, kd_layers_mean(L, x, d));       /* [.., D] */
  kd_node_id var = kd_layers_mean(L, B(MUL, xc, xc), d);     /* [.., 1] */
  kd_node_id y = B(DIV, xc, U(SQRT, B(ADD, var, C(L->eps))));
  y = B(MUL, y, kd_layer_param(L, prefix, "weight", 1, shape, kd_ones));
  return B(ADD, y, kd_layer_param(L, prefix, "bias", 1, shape, kd_zeros));
}

kd_node_id kd_layer_rmsnorm(kd_layers *L, const char *prefix, kd_node_id x) {
  int64_t d = kd_layers_width(L, prefix, x);
  if (d < 0) return KD_NONE;
  kd_dim shape[1] = {d};
  kd_node_id ms = kd_layers_mean(L, B(MUL, x, x), d); /* [.., 1] */
  kd_node_id y = B(DIV, x, U(SQRT, B(ADD, ms, C(L->eps))));
  return B(MUL, y, kd_layer_param(L, prefix, "weight", 1, shape, kd_ones));
}

kd_node_id kd_layer_gelu(kd_layers *L, kd_node_id x) {
  kd_node_id x3 = B(MUL, B(MUL, x, x), x);
  kd_node_id inner = B(MUL, C(0.7978845608028654) /* sqrt(2 / pi) */, B(ADD, x, B(MUL, C(0.044715), x3)));
  /* 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): one exp and a division, where
     tanh costs a polynomial, an exp and a division; at u -> -inf the exp
     overflows and x / inf is 0, the limit */
  return B(DIV, x, B(ADD, C(1), U(EXP, B(MUL, C(-2), inner))));
}

kd_node_id kd_layer_silu(kd_layers *L, kd_node_id x) {
  return B(DIV, x, B(ADD, C(1), U(EXP, U(NEG, x))));
}

kd_node_id kd_layer_mlp(kd_layers *L, const char *prefix, kd_node_id x, int64_t hidden) {
  char sub[256];
  int64_t d = kd_layers_width(L, prefix, x);
  if (d < 0) return KD_NONE;
  kd_node_id h = kd_layer_linear(L, kd_layers_sub(sub, sizeof sub, prefix, "fc"), x, hidden, true);
  h = kd_layer_gelu(L, h);
  return kd_layers_linear_std(L, kd_layers_sub(sub, sizeof sub, prefix, "proj"), h, d, true,
                              L->resid_std);
}

kd_node_id kd_layer_swiglu(kd_layers *L, const char *prefix, kd_node_id x, int64_t hidden) {
  char sub[256];
  int64_t d = kd_layers_width(L, prefix, x);
  if (d < 0) return KD_NONE;
  kd_node_id gate =
      kd_layer_linear(L, kd_layers_sub(sub, sizeof sub, prefix, "gate"), x, hidden, false);
  kd_node_id up = kd_layer_linear(L, kd_layers_sub(sub, sizeof sub, prefix, "up"), x, hidden, false);
  kd_node_id h = B(MUL, kd_layer_silu(L, gate), up);
  return kd_layers_linear_std(L, kd_layers_sub(sub, sizeof sub, prefix, "down"), h, d, false,
                              L->resid_std);
}

/* Part k (0: q, 1: k, 2: v) of qkv [B, T, 3, D], as [B, T, H, Dh]: the sum
 * over the axis of three with a one-hot weight. The IR has no slice op; this
 * costs 3 elementwise passes over [B, T, 3D], noise next to the matmuls (a
 * SLICE op is the fast path's business). */
static kd_node_id kd_layers_part(kd_layers *L, kd_node_id qkv4, int k, const kd_dim *bthd) {
  kd_dim three[2] = {3, 1};
  kd_node_id iota = kd_iota(L->g, 2, three, 0);
  kd_node_id hot = kd_cast(L->g, B(EQ, iota, kd_const(L->g, k, KD_I64)), L->dtype); /* [3, 1] */
  kd_node_id part = kd_reduce(L->g, KD_IR_SUM, B(MUL, qkv4, hot), 2); /* [B, T, 1, D] */
  return kd_reshape(L->g, part, 4, bthd);
}

kd_node_id kd_layer_attention(kd_layers *L, const char *prefix, kd_node_id x, int64_t heads) {
  char sub[256];
  const kd_node *xn = kd_layers_node(L, x);
  if (!xn) return KD_NONE;
  int64_t d = kd_layers_width(L, prefix, x);
  if (d < 0) return KD_NONE;
  if (xn->rank != 3) return kd_layers_fail(L, "%s: attention takes [B, T, D]", prefix);
  if (heads < 1 || d % heads)
    return kd_layers_fail(L, "%s: %lld heads do not divide the width %lld", prefix,
                          (long long)heads, (long long)d);
  kd_dim b = xn->shape[0], t = xn->shape[1], dh = d / heads;
  kd_dim bt3d[4] = {b, t, 3, d}, bthd[4] = {b, t, heads, dh}, btd[3] = {b, t, d};
  kd_node_id qkv =
      kd_layer_linear(L, kd_layers_sub(sub, sizeof sub, prefix, "qkv"), x, 3 * d, true);
  qkv = kd_reshape(L->g, qkv, 4, bt3d);
  static const int to_bhtd[4] = {0, 2, 1, 3}, to_bhdt[4] = {0, 2, 3, 1};
  kd_node_id q = kd_permute(L->g, kd_layers_part(L, qkv, 0, bthd), to_bhtd); /* [B, H, T, Dh] */
  kd_node_id kt = kd_permute(L->g, kd_layers_part(L, qkv, 1, bthd), to_bhdt); /* [B, H, Dh, T] */
  kd_node_id v = kd_permute(L->g, kd_layers_part(L, qkv, 2, bthd), to_bhtd); /* [B, H, T, Dh] */
  kd_node_id s = B(MUL, kd_matmul(L->g, q, kt), C(1 / sqrt((double)dh))); /* [B, H, T, T] */
  /* causal: query i sees keys j <= i; the others get -inf, so exp gives an
   * exact 0 and the diagonal keeps every row finite */
  kd_dim col[2] = {t, 1}, row[2] = {1, t};
  kd_node_id seen = B(GE, kd_iota(L->g, 2, col, 0), kd_iota(L->g, 2, row, 1)); /* [T, T] */
  s = kd_select(L->g, seen, s, C(-INFINITY));
  kd_node_id att = kd_row(L->g, KD_IR_SOFTMAX, s, 3);
  kd_node_id o = kd_permute(L->g, kd_matmul(L->g, att, v), to_bhtd); /* [B, T, H, Dh] */
  o = kd_reshape(L->g, o, 3, btd);
  return kd_layers_linear_std(L, kd_layers_sub(sub, sizeof sub, prefix, "proj"), o, d, true,
                              L->resid_std);
}

kd_node_id kd_layer_residual(kd_layers *L, kd_node_id x, kd_node_id fx) { return B(ADD, x, fx); }

#undef B
#undef U
#undef C
