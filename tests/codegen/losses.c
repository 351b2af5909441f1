/* See losses.h. Legend: N = rows, V = vocabulary. */
#include "losses.h"

#include <stdio.h>

#include "passes.h"

const char *kd_tl_name(kd_tl_kind k) {
  static const char *names[] = {"fkl", "rkl", "jsd", "tvd", "ce"};
  return names[k];
}

static kd_node_id bin(kd_graph *g, kd_opcode op, kd_node_id a, kd_node_id b) {
  return kd_binary(g, op, a, b);
}

static kd_node_id cf(kd_graph *g, double v) { return kd_const(g, v, KD_F32); }

/* sum over the row of p * (logp - logq): p, q [N, V] -> [N, 1] */
static kd_node_id kl_row(kd_graph *g, kd_node_id p, kd_node_id logp, kd_node_id logq) {
  return kd_reduce(g, KD_IR_SUM, bin(g, KD_IR_MUL, p, bin(g, KD_IR_SUB, logp, logq)), 1);
}

/* The per-row loss [N, 1]. */
static kd_node_id per_row(kd_graph *g, const kd_tl_spec *sp, kd_node_id t, kd_node_id s,
                          kd_node_id labels) {
  if (sp->kind == TL_CE) {
    kd_dim v = kd_graph_sym(g, "V");
    kd_dim shape[2] = {1, v};
    kd_node_id iota = kd_iota(g, 2, shape, 1);                       /* [1, V] i64 */
    kd_node_id hit = bin(g, KD_IR_EQ, iota, labels);                 /* [N, V] bool */
    kd_node_id picked = kd_reduce(g, KD_IR_SUM, kd_select(g, hit, s, cf(g, 0)), 1);
    return bin(g, KD_IR_SUB, kd_reduce(g, KD_IR_LSE, s, 1), picked);
  }
  kd_node_id ts = bin(g, KD_IR_DIV, t, cf(g, sp->T)), ss = bin(g, KD_IR_DIV, s, cf(g, sp->T));
  kd_node_id p = kd_row(g, KD_IR_SOFTMAX, ts, 1), q = kd_row(g, KD_IR_SOFTMAX, ss, 1);
  kd_node_id logp = kd_row(g, KD_IR_LOG_SOFTMAX, ts, 1), logq = kd_row(g, KD_IR_LOG_SOFTMAX, ss, 1);
  switch (sp->kind) {
  case TL_FKL: return kl_row(g, p, logp, logq);
  case TL_RKL: return kl_row(g, q, logq, logp);
  case TL_JSD: {
    /* beta = 0.5: m = (p + q) / 2; (KL(p || m) + KL(q || m)) / 2 */
    kd_node_id m = bin(g, KD_IR_MUL, cf(g, 0.5), bin(g, KD_IR_ADD, p, q));
    kd_node_id logm = kd_unary(g, KD_IR_LOG, m);
    kd_node_id a = kl_row(g, p, logp, logm), b = kl_row(g, q, logq, logm);
    return bin(g, KD_IR_MUL, cf(g, 0.5), bin(g, KD_IR_ADD, a, b));
  }
  case TL_TVD: {
    kd_node_id d = kd_unary(g, KD_IR_ABS, bin(g, KD_IR_SUB, p, q));
    return bin(g, KD_IR_MUL, cf(g, 0.5), kd_reduce(g, KD_IR_SUM, d, 1));
  }
  default: return KD_NONE;
  }
}

kd_graph *kd_tl_forward(const kd_tl_spec *sp) {
  kd_graph *g = kd_graph_new();
  kd_dim N = kd_graph_sym(g, "N"), V = kd_graph_sym(g, "V");
  kd_dim nv[2] = {N, V}, n1[2] = {N, 1};
  kd_node_id t = sp->kind == TL_CE ? KD_NONE : kd_input(g, "teacher", sp->dtype, 2, nv);
  kd_node_id s = kd_input(g, "student", sp->dtype, 2, nv);
  kd_node_id labels = sp->masked || sp->kind == TL_CE ? kd_input(g, "labels", KD_I64, 2, n1) : KD_NONE;
  kd_node_id row = per_row(g, sp, t, s, labels);
  kd_node_id loss;
  if (labels != KD_NONE) {
    /* the lowering's masked mean: max(count, 1) so an all-masked batch is 0 */
    kd_node_id valid = bin(g, KD_IR_NE, labels, kd_const(g, -100, KD_I64));
    kd_node_id total = kd_reduce(g, KD_IR_SUM, kd_select(g, valid, row, cf(g, 0)), KD_AXIS_ALL);
    kd_node_id count = kd_reduce(g, KD_IR_SUM, valid, KD_AXIS_ALL);
    count = bin(g, KD_IR_MAX, kd_cast(g, count, KD_F32), cf(g, 1));
    loss = bin(g, KD_IR_DIV, total, count);
  } else {
    kd_node_id total = kd_reduce(g, KD_IR_SUM, row, KD_AXIS_ALL);
    kd_node_id count = kd_reduce(g, KD_IR_SUM, kd_expand(g, cf(g, 1), 2, n1), KD_AXIS_ALL);
    loss = bin(g, KD_IR_DIV, total, count);
  }
  if (kd_graph_add_output(g, "loss", loss) != KD_OK) {
    kd_graph_free(g);
    return NULL;
  }
  return g;
}

kd_graph *kd_tl_build(const kd_tl_spec *sp, char *err, size_t errlen) {
  static const kd_pass_fn passes[] = {kd_pass_canonicalize, kd_pass_autodiff, kd_pass_simplify,
                                      kd_pass_cse, kd_pass_dce};
  kd_graph *g = kd_tl_forward(sp);
  if (!g) {
    snprintf(err, errlen, "building the %s graph failed", kd_tl_name(sp->kind));
    return NULL;
  }
  for (size_t i = 0; i < sizeof passes / sizeof passes[0]; i++) {
    if (sp->no_grad && passes[i] == kd_pass_autodiff) continue;
    kd_graph *next = NULL;
    kd_status st = passes[i](g, &next, err, errlen);
    kd_graph_free(g);
    if (st) return NULL;
    g = next;
  }
  return g;
}
