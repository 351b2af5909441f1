/* Loss graphs built by hand as the lowering builds them (the loss-graph
 * contract in passes.h and lower.h), so the passes are tested without the
 * front end: inputs teacher, student f32 [N, V] and labels i64 [N, 1];
 * per-row divergences at temperature T; rows whose label is ignore_index
 * masked with SELECT; the mean over valid rows, max(count, 1) so an
 * all-masked batch gives 0; output "loss" f32 []. */
#ifndef KD_TEST_LOSSES_H
#define KD_TEST_LOSSES_H

#include "ir.h"

typedef enum { L_FKL, L_RKL, L_JSD, L_TVD, L_CE, L_COUNT } l_kind;
static const char *const l_names[L_COUNT] = {"fkl", "rkl", "jsd", "tvd", "ce"};

#define B(op, a, b) kd_binary(g, KD_IR_##op, a, b)
#define K(v) kd_const(g, v, KD_F32)

/* sum_i p_i log(p_i / q_i) over the row, written as a user writes it. */
static inline kd_node_id l_kl(kd_graph *g, kd_node_id p, kd_node_id q) {
  return kd_reduce(g, KD_IR_SUM, B(MUL, p, kd_unary(g, KD_IR_LOG, B(DIV, p, q))), 1);
}

/* The graph of divergence `kind` (jsd with weight beta), times T^2 for the
 * soft losses; ce reads the labels. */
static inline kd_graph *l_build(l_kind kind, double T, double beta, long long ignore_index) {
  kd_graph *g = kd_graph_new();
  kd_dim n = kd_graph_sym(g, "N"), v = kd_graph_sym(g, "V");
  kd_dim nv[2] = {n, v}, n1[2] = {n, 1}, onev[2] = {1, v};
  kd_node_id t = kd_input(g, "teacher", KD_F32, 2, nv);
  kd_node_id s = kd_input(g, "student", KD_F32, 2, nv);
  kd_node_id lab = kd_input(g, "labels", KD_I64, 2, n1);
  kd_node_id p = kd_row(g, KD_IR_SOFTMAX, B(DIV, t, K(T)), 1);
  kd_node_id q = kd_row(g, KD_IR_SOFTMAX, B(DIV, s, K(T)), 1);
  kd_node_id row = KD_NONE;
  switch (kind) {
  case L_FKL: row = l_kl(g, p, q); break;
  case L_RKL: row = l_kl(g, q, p); break;
  case L_JSD: {
    kd_node_id m = B(ADD, B(MUL, K(beta), p), B(MUL, K(1 - beta), q));
    row = B(ADD, B(MUL, K(beta), l_kl(g, p, m)), B(MUL, K(1 - beta), l_kl(g, q, m)));
    break;
  }
  case L_TVD:
    row = B(MUL, K(0.5), kd_reduce(g, KD_IR_SUM, kd_unary(g, KD_IR_ABS, B(SUB, p, q)), 1));
    break;
  case L_CE: { /* -log_softmax(s)[label]: T does not apply */
    kd_node_id hit = B(EQ, kd_iota(g, 2, onev, 1), lab);
    kd_node_id ls = kd_row(g, KD_IR_LOG_SOFTMAX, s, 1);
    row = kd_unary(g, KD_IR_NEG, kd_reduce(g, KD_IR_SUM, kd_select(g, hit, ls, K(0)), 1));
    break;
  }
  default: break;
  }
  if (kind != L_CE) row = B(MUL, row, K(T * T));
  kd_node_id valid = B(NE, lab, kd_const(g, (double)ignore_index, KD_I64));
  kd_node_id masked = kd_select(g, valid, row, K(0));
  kd_node_id count = kd_reduce(g, KD_IR_SUM, kd_cast(g, valid, KD_F32), KD_AXIS_ALL);
  kd_node_id loss = B(DIV, kd_reduce(g, KD_IR_SUM, masked, KD_AXIS_ALL), B(MAX, count, K(1)));
  kd_graph_add_output(g, "loss", loss);
  return g;
}

#undef B
#undef K

#endif /* KD_TEST_LOSSES_H */
