/* Reverse-mode automatic differentiation as a graph pass (as ggml's
 * ggml_build_backward_expand): the forward graph is copied, then a reverse
 * walk from the output visits every node that depends on the input and, in
 * one switch on its op, adds the forward ops that compute its operands'
 * adjoints. An op without a rule is an error naming it.
 *
 * Broadcasting: an operand that was broadcast (an [N, 1] row scalar in an
 * [N, V] op) receives the adjoint summed over the broadcast axes. An adjoint
 * may stay smaller than its node (the [N, 1] adjoint of a row sum's
 * operand): it broadcasts lazily, and the final gradient is EXPANDed to the
 * input's shape. */
#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "passes.h"
#include "rewrite.h"

static_assert(KD_OPCODE_COUNT == 38, "a new op needs a gradient rule in kd_ad_node");

typedef struct kd_ad {
  kd_rw rw;
  const kd_graph *in;
  kd_node_id *map; /* old id -> the forward copy in rw.g */
  kd_node_id *adj; /* old id -> its adjoint in rw.g, or KD_NONE */
  bool *dep;       /* old id depends on an input differentiated */
  kd_node_id *x;   /* the inputs differentiated (old ids) */
  char msg[200];
} kd_ad;

/* Sums g over the axes along which `target` was broadcast. */
static kd_node_id kd_ad_unbroadcast(kd_ad *ad, kd_node_id g, kd_node_id target) {
  const kd_node *t = kd_rw_node(&ad->rw, target);
  int trank = t->rank;
  kd_dim tshape[KD_MAX_RANK];
  for (int i = 0; i < trank; i++) tshape[i] = t->shape[i];
  const kd_node *gn = kd_rw_node(&ad->rw, g);
  if (!gn) return KD_NONE;
  if (trank == 0) return gn->rank == 0 ? g : kd_rw_reduce(&ad->rw, KD_IR_SUM, g, KD_AXIS_ALL);
  int grank = gn->rank, lead = grank - trank;
  for (int i = 0; i < grank; i++) {
    gn = kd_rw_node(&ad->rw, g); /* a reduce below may move the nodes */
    if (!gn) return KD_NONE;
    bool broadcast = i < lead || tshape[i - lead] == 1;
    if (broadcast && gn->shape[i] != 1) g = kd_rw_reduce(&ad->rw, KD_IR_SUM, g, i);
  }
  return g;
}

/* Adds contribution c to the adjoint of old node `src`. */
static void kd_ad_acc(kd_ad *ad, kd_node_id src, kd_node_id c) {
  if (!ad->dep[src]) return;
  c = kd_ad_unbroadcast(ad, c, ad->map[src]);
  ad->adj[src] = ad->adj[src] == KD_NONE ? c : kd_rw_binary(&ad->rw, KD_IR_ADD, ad->adj[src], c);
}

/* G at exactly the shape of node y: the shape-changing rules below and the
 * final gradients need it. An adjoint may have stayed smaller (see the top
 * of the file), or be of a higher rank when y (a bias [D]) was broadcast
 * into [B, T, D]: kd_ad_unbroadcast sums the leading axes to 1, and a
 * reshape drops them. */
static kd_node_id kd_ad_full(kd_ad *ad, kd_node_id G, kd_node_id y) {
  const kd_node *gn = kd_rw_node(&ad->rw, G), *yn = kd_rw_node(&ad->rw, y);
  if (!gn || !yn || kd_shape_eq(gn, yn)) return G;
  kd_node t = *yn; /* a copy: the nodes move as the graph grows */
  if (gn->rank > t.rank) {
    G = kd_ad_unbroadcast(ad, G, y);
    gn = kd_rw_node(&ad->rw, G);
    if (!gn) return KD_NONE;
    kd_dim shape[KD_MAX_RANK];
    for (int i = 0; i < t.rank; i++) shape[i] = gn->shape[gn->rank - t.rank + i];
    G = kd_rw_op(&ad->rw, KD_IR_RESHAPE, 1, &G, 0, t.rank, shape);
    gn = kd_rw_node(&ad->rw, G);
    if (!gn || kd_shape_eq(gn, &t)) return G;
  }
  return kd_rw_expand(&ad->rw, G, t.rank, t.shape);
}

static kd_node_id kd_ad_permute(kd_rw *rw, kd_node_id x, int rank, const int *perm) {
  return kd_rw_op(rw, KD_IR_PERMUTE, 1, &x, kd_perm_pack(rank, perm), 0, NULL);
}

/* x with its last two axes swapped. */
static kd_node_id kd_ad_transpose(kd_rw *rw, kd_node_id x) {
  int perm[KD_MAX_RANK], r = kd_rw_node(rw, x)->rank;
  for (int i = 0; i < r; i++) perm[i] = i;
  perm[r - 2] = r - 1;
  perm[r - 1] = r - 2;
  return kd_ad_permute(rw, x, r, perm);
}

/* y = a b: da = G b^T; db = a^T G, summed over the batch axes when one b
 * [K, N] is shared by all of them. */
static void kd_ad_matmul(kd_ad *ad, kd_node_id s0, kd_node_id s1, kd_node_id G, kd_node_id y) {
  kd_rw *rw = &ad->rw;
  kd_node_id a = ad->map[s0], b = ad->map[s1];
  G = kd_ad_full(ad, G, y);
  kd_node_id da[2] = {G, kd_ad_transpose(rw, b)};
  kd_ad_acc(ad, s0, kd_rw_op(rw, KD_IR_MATMUL, 2, da, 0, 0, NULL));
  if (!ad->dep[s1]) return;
  kd_node_id db[2] = {kd_ad_transpose(rw, a), G};
  kd_node_id d = kd_rw_op(rw, KD_IR_MATMUL, 2, db, 0, 0, NULL);
  kd_node bn = *kd_rw_node(rw, b);
  int ra = kd_rw_node(rw, a)->rank;
  if (bn.rank == 2 && ra > 2) {
    for (int i = 0; i + 2 < ra; i++) d = kd_rw_reduce(rw, KD_IR_SUM, d, i);
    d = kd_rw_op(rw, KD_IR_RESHAPE, 1, &d, 0, 2, bn.shape);
  }
  kd_ad_acc(ad, s1, d);
}

/* The adjoint rules: node i of the old graph, with adjoint G. */
static bool kd_ad_node(kd_ad *ad, kd_node_id i) {
  kd_rw *rw = &ad->rw;
  const kd_node *n = kd_graph_node(ad->in, i);
  kd_node_id G = ad->adj[i], y = ad->map[i];
  kd_node_id s0 = n->nsrc > 0 ? n->src[0] : KD_NONE, s1 = n->nsrc > 1 ? n->src[1] : KD_NONE;
  kd_node_id a = s0 != KD_NONE ? ad->map[s0] : KD_NONE, b = s1 != KD_NONE ? ad->map[s1] : KD_NONE;
  kd_node_id zero = kd_rw_const(rw, 0, KD_F32);
#define B(op, l, r) kd_rw_binary(rw, KD_IR_##op, l, r)
#define U(op, x) kd_rw_unary(rw, KD_IR_##op, x)
  switch (n->op) {
  case KD_IR_INPUT: case KD_IR_CONST: case KD_IR_IOTA:
  case KD_IR_SIGN:     /* zero almost everywhere */
  case KD_IR_STOPGRAD: /* zero by definition */
    return true;
  case KD_IR_NEG: kd_ad_acc(ad, s0, U(NEG, G)); return true;
  case KD_IR_EXP: kd_ad_acc(ad, s0, B(MULZ, y, G)); return true; /* y = 0 stops an inf */
  case KD_IR_LOG: kd_ad_acc(ad, s0, B(DIV, G, a)); return true;
  case KD_IR_SQRT: kd_ad_acc(ad, s0, B(DIV, G, B(MUL, kd_rw_const(rw, 2, KD_F32), y))); return true;
  case KD_IR_ABS: kd_ad_acc(ad, s0, B(MUL, G, U(SIGN, a))); return true; /* abs'(0) = 0 */
  case KD_IR_CAST: kd_ad_acc(ad, s0, G); return true;
  case KD_IR_TANH: /* G (1 - y^2) */
    kd_ad_acc(ad, s0, B(MUL, G, B(SUB, kd_rw_const(rw, 1, KD_F32), B(MUL, y, y))));
    return true;
  case KD_IR_RESHAPE: {
    kd_node an = *kd_rw_node(rw, a);
    kd_node_id gf = kd_ad_full(ad, G, y);
    kd_ad_acc(ad, s0, kd_rw_op(rw, KD_IR_RESHAPE, 1, &gf, 0, an.rank, an.shape));
    return true;
  }
  case KD_IR_PERMUTE: { /* permuted back: inv[perm[i]] = i */
    int perm[KD_MAX_RANK], inv[KD_MAX_RANK], r = kd_perm_unpack(n->axis, perm);
    for (int k = 0; k < r; k++) inv[perm[k]] = k;
    kd_ad_acc(ad, s0, kd_ad_permute(rw, kd_ad_full(ad, G, y), r, inv));
    return true;
  }
  case KD_IR_MATMUL: kd_ad_matmul(ad, s0, s1, G, y); return true;
  case KD_IR_GATHER_ROWS: { /* the ids (integers) get none */
    kd_node_id src[2] = {kd_ad_full(ad, G, y), b};
    kd_node an = *kd_rw_node(rw, a);
    kd_ad_acc(ad, s0, kd_rw_op(rw, KD_IR_SCATTER_ADD_ROWS, 2, src, 0, 2, an.shape));
    return true;
  }
  case KD_IR_SCATTER_ADD_ROWS: {
    kd_node_id src[2] = {kd_ad_full(ad, G, y), b};
    kd_ad_acc(ad, s0, kd_rw_op(rw, KD_IR_GATHER_ROWS, 2, src, 0, 0, NULL));
    return true;
  }
  case KD_IR_EXPAND: kd_ad_acc(ad, s0, G); return true;
  case KD_IR_ADD: kd_ad_acc(ad, s0, G); kd_ad_acc(ad, s1, G); return true;
  case KD_IR_SUB: kd_ad_acc(ad, s0, G); kd_ad_acc(ad, s1, U(NEG, G)); return true;
  case KD_IR_MUL: kd_ad_acc(ad, s0, B(MUL, G, b)); kd_ad_acc(ad, s1, B(MUL, G, a)); return true;
  case KD_IR_MULZ: kd_ad_acc(ad, s0, B(MUL, G, b)); kd_ad_acc(ad, s1, B(MULZ, a, G)); return true;
  case KD_IR_DIV:
    kd_ad_acc(ad, s0, B(DIV, G, b));
    kd_ad_acc(ad, s1, U(NEG, B(MUL, G, B(DIV, y, b))));
    return true;
  case KD_IR_POW: /* d/da = b a^(b-1); d/db = y log a, 0 where y = 0 */
    kd_ad_acc(ad, s0, B(MUL, G, B(MUL, b, B(POW, a, B(SUB, b, kd_rw_const(rw, 1, KD_F32))))));
    kd_ad_acc(ad, s1, B(MUL, G, B(MULZ, y, U(LOG, a))));
    return true;
  case KD_IR_MAX: case KD_IR_MIN: { /* ties go to the first operand */
    kd_node_id first = B(GE, a, b);
    if (n->op == KD_IR_MIN) first = B(LE, a, b);
    kd_ad_acc(ad, s0, kd_rw_select(rw, first, G, zero));
    kd_ad_acc(ad, s1, kd_rw_select(rw, first, zero, G));
    return true;
  }
  case KD_IR_SELECT: {
    kd_node_id c = a, s2 = n->src[2];
    kd_ad_acc(ad, s1, kd_rw_select(rw, c, G, zero));
    kd_ad_acc(ad, s2, kd_rw_select(rw, c, zero, G));
    return true;
  }
  case KD_IR_SUM: kd_ad_acc(ad, s0, G); return true; /* G broadcasts over the axis */
  case KD_IR_LSE: kd_ad_acc(ad, s0, B(MUL, G, U(EXP, B(SUB, a, y)))); return true;
  case KD_IR_RMAX: {
    /* The first maximal element along the axis gets G: the candidates hold
     * -index, so the row max of the candidates is -(first index). */
    const kd_node *x = kd_rw_node(rw, a);
    int axis = n->axis, rank = x->rank;
    if (axis == KD_AXIS_ALL && rank <= 1) axis = 0;
    if (rank == 0) {
      kd_ad_acc(ad, s0, G);
      return true;
    }
    if (axis == KD_AXIS_ALL) break;
    kd_dim shape[KD_MAX_RANK];
    for (int k = 0; k < rank; k++) shape[k] = k == axis ? x->shape[k] : 1;
    kd_node_id nidx = U(NEG, kd_rw_iota(rw, rank, shape, axis));
    kd_node_id none = kd_rw_const(rw, -4611686018427387904.0, KD_I64); /* -2^62 */
    kd_node_id m = kd_rw_reduce(rw, KD_IR_RMAX, kd_rw_select(rw, B(EQ, a, y), nidx, none), axis);
    kd_ad_acc(ad, s0, kd_rw_select(rw, B(EQ, nidx, m), G, zero));
    return true;
  }
  case KD_IR_SOFTMAX: /* y (G - sum(G y)) */
    kd_ad_acc(ad, s0, B(MUL, y, B(SUB, G, kd_rw_reduce(rw, KD_IR_SUM, B(MUL, G, y), n->axis))));
    return true;
  case KD_IR_LOG_SOFTMAX: /* G - exp(y) sum(G) */
    kd_ad_acc(ad, s0, B(SUB, G, B(MUL, U(EXP, y), kd_rw_reduce(rw, KD_IR_SUM, G, n->axis))));
    return true;
  default:
    break;
  }
#undef B
#undef U
  snprintf(ad->msg, sizeof ad->msg, "no gradient rule for %s (%%%d)", kd_opcode_name(n->op),
           (int)i);
  return false;
}

static kd_node_id kd_ad_copy_rule(kd_rw *rw, kd_node *proto, void *ctx) {
  return kd_rw_emit(rw, proto);
}

static kd_status kd_ad_fail(kd_ad *ad, kd_status st, char *err, size_t errlen) {
  if (err && errlen) snprintf(err, errlen, "autodiff: %s", ad->msg);
  return st;
}

static kd_status kd_ad_run(kd_ad *ad, const char *of, size_t nwrt, const char *const *wrt,
                           const char *const *grad_names, kd_graph **out, char *err,
                           size_t errlen) {
  const kd_graph *in = ad->in;
  size_t n = kd_graph_size(in);
  kd_node_id lo = kd_graph_find_output(in, of);
  if (lo == KD_NONE) {
    snprintf(ad->msg, sizeof ad->msg, "the graph has no output named \"%s\"", of);
    return kd_ad_fail(ad, KD_ERR_INVALID, err, errlen);
  }
  if (kd_graph_node(in, lo)->rank != 0) {
    snprintf(ad->msg, sizeof ad->msg, "output \"%s\" is not a scalar (rank 0)", of);
    return kd_ad_fail(ad, KD_ERR_INVALID, err, errlen);
  }
  for (size_t w = 0; w < nwrt; w++) {
    ad->x[w] = kd_graph_find_input(in, wrt[w]);
    if (ad->x[w] == KD_NONE) {
      snprintf(ad->msg, sizeof ad->msg, "the graph has no input named \"%s\"", wrt[w]);
      return kd_ad_fail(ad, KD_ERR_INVALID, err, errlen);
    }
    if (kd_graph_find_output(in, grad_names[w]) != KD_NONE) {
      snprintf(ad->msg, sizeof ad->msg, "the graph already has an output \"%s\"",
               grad_names[w]);
      return kd_ad_fail(ad, KD_ERR_INVALID, err, errlen);
    }
  }
  kd_status st = kd_rw_copy(&ad->rw, in, ad->map, kd_ad_copy_rule, NULL);
  if (st != KD_OK) {
    snprintf(ad->msg, sizeof ad->msg, "%s", kd_graph_error(ad->rw.g));
    return kd_ad_fail(ad, st, err, errlen);
  }
  for (size_t i = 0; i < n; i++) {
    const kd_node *nd = kd_graph_node(in, (kd_node_id)i);
    ad->adj[i] = KD_NONE;
    ad->dep[i] = false;
    for (size_t w = 0; w < nwrt; w++) ad->dep[i] = ad->dep[i] || (kd_node_id)i == ad->x[w];
    if (nd->op == KD_IR_STOPGRAD || !kd_dtype_is_float(nd->dtype)) continue;
    for (int k = 0; k < nd->nsrc; k++) ad->dep[i] = ad->dep[i] || ad->dep[nd->src[k]];
  }
  const kd_node *loss = kd_graph_node(in, lo);
  ad->adj[lo] = kd_rw_const(&ad->rw, 1, loss->dtype);
  for (kd_node_id i = lo; i >= 0; i--) {
    if (!ad->dep[i] || ad->adj[i] == KD_NONE) continue;
    if (!kd_ad_node(ad, i)) return kd_ad_fail(ad, KD_ERR_UNSUPPORTED, err, errlen);
  }
  for (size_t i = 0; i < kd_graph_noutputs(in); i++)
    kd_graph_add_output(ad->rw.g, kd_graph_output_name(in, i), ad->map[kd_graph_output(in, i)]);
  /* Each gradient has its input's shape (and a float dtype). */
  for (size_t w = 0; w < nwrt; w++) {
    kd_node_id g = ad->adj[ad->x[w]];
    if (g == KD_NONE) g = kd_rw_const(&ad->rw, 0, KD_F32);
    g = kd_ad_full(ad, g, ad->map[ad->x[w]]);
    kd_set_name(ad->rw.g, g, grad_names[w]);
    if (g == KD_NONE || kd_graph_add_output(ad->rw.g, grad_names[w], g) != KD_OK) {
      snprintf(ad->msg, sizeof ad->msg, "%s",
               kd_graph_error(ad->rw.g) ? kd_graph_error(ad->rw.g)
                                        : "a gradient output is named twice");
      return kd_ad_fail(ad, KD_ERR_INVALID, err, errlen);
    }
  }
  return kd_rw_finish(&ad->rw, in, ad->map, "autodiff", out, err, errlen);
}

kd_status kd_autodiff_many(const kd_graph *in, const char *of, size_t nwrt,
                           const char *const *wrt, const char *const *grad_names,
                           kd_graph **out, char *err, size_t errlen) {
  kd_ad ad = {.in = in};
  size_t n = kd_graph_size(in) + 1;
  *out = NULL;
  ad.map = malloc(n * sizeof *ad.map);
  ad.adj = malloc(n * sizeof *ad.adj);
  ad.dep = malloc(n * sizeof *ad.dep);
  ad.x = malloc((nwrt + 1) * sizeof *ad.x);
  kd_status st = ad.map && ad.adj && ad.dep && ad.x ? kd_rw_begin(&ad.rw, in) : KD_ERR_NOMEM;
  if (st == KD_OK) {
    st = kd_ad_run(&ad, of, nwrt, wrt, grad_names, out, err, errlen);
    if (st != KD_OK) kd_rw_abort(&ad.rw); /* kd_rw_finish frees on its own */
  } else if (err && errlen) {
    snprintf(err, errlen, "autodiff: out of memory");
  }
  free(ad.map);
  free(ad.adj);
  free(ad.dep);
  free(ad.x);
  return st;
}

kd_status kd_autodiff(const kd_graph *in, const char *of, const char *wrt, const char *grad_name,
                      kd_graph **out, char *err, size_t errlen) {
  return kd_autodiff_many(in, of, 1, &wrt, &grad_name, out, err, errlen);
}

kd_status kd_pass_autodiff(const kd_graph *in, kd_graph **out, char *err, size_t errlen) {
  return kd_autodiff(in, "loss", "student", "grad", out, err, errlen);
}
