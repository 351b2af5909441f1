/* Canonicalisation: composites become the ops the rest of the pipeline
 * knows, and the numerically dangerous forms of a divergence become safe
 * ones (see passes.h):
 *
 *   softmax(x)      -> exp(x - lse(x))        log_softmax(x) -> x - lse(x)
 *   log(exp(x))     -> x                      so log(softmax(x)) never takes
 *   log(a / b)      -> log a - log b          the log of an underflowed 0
 *   log(a * b)      -> log a + log b          (a, b >= 0; also for mulz)
 *   p * x           -> mulz(p, x)             p >= 0 and not a constant: a
 *                                             probability that underflows to
 *                                             0 gives 0 even where x = -inf
 *   0 * x, x * 0    -> mulz(0, x)             a weight of exactly 0 removes its
 *                                             term, inf or nan included
 *
 * Every rule keeps the value where both sides are defined; where the left
 * side is nan or inf only because of an underflow the right side gives the
 * limit. The rules apply as each node is copied, to operands already
 * canonical, so nested forms (log(softmax(x) / softmax(y))) resolve in one
 * walk. */
#include <math.h>

#include "passes.h"
#include "rewrite.h"

static kd_node_id kd_canon_log(kd_rw *rw, kd_node_id x) {
  const kd_node *n = kd_rw_node(rw, x);
  if (n->op == KD_IR_EXP) return n->src[0];
  if ((n->op == KD_IR_DIV || n->op == KD_IR_MUL || n->op == KD_IR_MULZ) && kd_rw_nonneg(rw, n->src[0]) &&
      kd_rw_nonneg(rw, n->src[1])) {
    kd_opcode op = n->op == KD_IR_DIV ? KD_IR_SUB : KD_IR_ADD;
    kd_node_id b = n->src[1]; /* n dies with the next node added */
    kd_node_id la = kd_canon_log(rw, n->src[0]);
    return kd_rw_binary(rw, op, la, kd_canon_log(rw, b));
  }
  return kd_rw_unary(rw, KD_IR_LOG, x);
}

/* A value that can be an underflowed probability: >= 0, not a constant. */
static bool kd_canon_prob(kd_rw *rw, kd_node_id x) {
  double v;
  return !kd_rw_const_value(rw, x, &v) && kd_rw_nonneg(rw, x);
}

static bool kd_canon_zero(kd_rw *rw, kd_node_id x) {
  double v;
  return kd_rw_const_value(rw, x, &v) && v == 0;
}

static kd_node_id kd_canon_mul(kd_rw *rw, kd_node_id a, kd_node_id b) {
  double v;
  if (kd_canon_zero(rw, a)) return kd_rw_binary(rw, KD_IR_MULZ, a, b);
  if (kd_canon_zero(rw, b)) return kd_rw_binary(rw, KD_IR_MULZ, b, a);
  /* x * c with c finite cannot be 0 * inf unless x is; no MULZ needed. */
  bool ca = kd_rw_const_value(rw, a, &v) && isfinite(v);
  bool cb = kd_rw_const_value(rw, b, &v) && isfinite(v);
  if (!cb && kd_canon_prob(rw, a)) return kd_rw_binary(rw, KD_IR_MULZ, a, b);
  if (!ca && kd_canon_prob(rw, b)) return kd_rw_binary(rw, KD_IR_MULZ, b, a);
  return kd_rw_binary(rw, KD_IR_MUL, a, b);
}

static kd_node_id kd_canon_rule(kd_rw *rw, kd_node *p, void *ctx) {
  switch (p->op) {
  case KD_IR_SOFTMAX:
  case KD_IR_LOG_SOFTMAX: {
    kd_node_id lse = kd_rw_reduce(rw, KD_IR_LSE, p->src[0], p->axis);
    kd_node_id y = kd_rw_binary(rw, KD_IR_SUB, p->src[0], lse);
    return p->op == KD_IR_SOFTMAX ? kd_rw_unary(rw, KD_IR_EXP, y) : y;
  }
  case KD_IR_LOG:
    return kd_canon_log(rw, p->src[0]);
  case KD_IR_MUL:
    return kd_canon_mul(rw, p->src[0], p->src[1]);
  default:
    return kd_rw_emit(rw, p);
  }
}

kd_status kd_pass_canonicalize(const kd_graph *in, kd_graph **out, char *err, size_t errlen) {
  return kd_rw_run(in, kd_canon_rule, NULL, "canonicalize", out, err, errlen);
}
