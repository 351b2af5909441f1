/* Algebraic simplification (see passes.h). Runs after autodiff, whose raw
 * output is full of x * 1, --x and row sums that algebra removes; the rules
 * that matter most turn forward KL's gradient into (q - p) / T and take
 * the row-scalar parts of softmax-weighted sums out of the row:
 *
 *   sum(exp(x - lse(x)))         = 1                        (a softmax sums to 1)
 *   sum(c * x)                   = c * sum(x)               (c constant along the axis)
 *   sum(mulz(w, c))              = c * sum(w)
 *   sum(mulz(w, f + c))          = sum(mulz(w, f)) + c * sum(w)   (w a softmax)
 *   sum(a + b)                   = sum(a) + sum(b)          (when one of them then needs
 *                                                            no reduction of its own)
 *   sum(-x) = -sum(x)    sum over a size-1 axis = x    constants folded
 *   x + 0, x - 0, x * 1, x / 1, x^1 = x    --x = x    -(a - b) = b - a
 *   a + -b = a - b    a - -b = a + b    (-a) * b = -(a * b)    x c +- y c = (x +- y) c
 *   a - (x +- c) = (a - x) -+ c for a literal c    x / c = x (1/c) for c a power of two
 *   (a + x) - (a + y) = x - y    (z r) s = z (r s) for r, s constant along the row
 *   (x - r) - (y - s) = (x - y) - (r - s)    (x - r) - s = x - (r + s)   (the same r, s)
 *   (x + r) + s = x + (r + s)    (x + r) - s = x + (r - s)    (x - r) + s = x - (r - s)
 *   mulz(0, x) = 0    mulz(a, c) = a * c for c finite (kd_range), mulz(c, b) = c * b for c != 0
 *   stop_gradient(x) = x (autodiff has run)
 *   op(expand(z), y) = op(z, y) when y's shape broadcasts z anyway
 *
 * Each node is made first and then rewritten (kd_simp), so a rule sees its
 * operands' shapes and dtypes; a result that differs from the node in shape
 * is EXPANDed, and a rule whose result would differ in dtype does not fire.
 * Rounds of rewriting and DCE repeat until no rule fires. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../ir/refexec.h"
#include "passes.h"
#include "rewrite.h"

#define KD_SIMP_MAX_ROUNDS 16

static kd_node_id kd_simp(kd_rw *rw, kd_node_id id);

/* Builders that simplify what they build. */
static kd_node_id kd_s2(kd_rw *rw, kd_opcode op, kd_node_id a, kd_node_id b) {
  return kd_simp(rw, kd_rw_binary(rw, op, a, b));
}
static kd_node_id kd_s1(kd_rw *rw, kd_opcode op, kd_node_id a) {
  return kd_simp(rw, kd_rw_unary(rw, op, a));
}
static kd_node_id kd_sr(kd_rw *rw, kd_opcode op, kd_node_id a, int axis) {
  return kd_simp(rw, kd_rw_reduce(rw, op, a, axis));
}

/* x standing in for node n: x itself, or x EXPANDed to n's shape; KD_NONE
 * when the dtypes differ (the rule does not apply). */
static kd_node_id kd_fit(kd_rw *rw, kd_node_id x, const kd_node *n) {
  const kd_node *xn = kd_rw_node(rw, x);
  if (!xn || xn->dtype != n->dtype) return KD_NONE;
  if (kd_shape_eq(xn, n)) return x;
  return kd_rw_expand(rw, x, n->rank, n->shape);
}

/* The constant v in n's dtype and shape. */
static kd_node_id kd_const_like(kd_rw *rw, double v, const kd_node *n) {
  kd_node_id c = kd_rw_const(rw, v, n->dtype);
  return n->rank ? kd_rw_expand(rw, c, n->rank, n->shape) : c;
}

static kd_opcode kd_op(kd_rw *rw, kd_node_id x) { return kd_rw_node(rw, x)->op; }

/* Bounds lo <= x <= hi of every element of a value that is never NaN
 * (known); unknown for anything else. Enough for the scalars a mean over
 * rows builds from constants and labels: count = cast(sum(labels !=
 * ignore)) in [0, inf], 1 / max(count, 1) in [0, 1], times T^2. A factor
 * so bounded is finite, and then mulz(a, c) = a * c (they differ only
 * where c is inf or NaN), so x c - y c can become (x - y) c: forward KL's
 * gradient pass takes neither the compare nor the second multiply. The
 * kernels compute in f32, so "finite" (kd_range_fin) keeps every bound a
 * product or quotient is built from within 1e38, and a divisor at least
 * 1e-37 from 0: no f32 rounding of the bounds makes them inf or 0. */
typedef struct kd_range {
  bool known;
  double lo, hi;
} kd_range;

static bool kd_range_fin(kd_range r) { return r.known && fabs(r.lo) <= 1e38 && fabs(r.hi) <= 1e38; }

static kd_range kd_range_of(kd_rw *rw, kd_node_id id, int depth);

/* min and max of a o b over the corners (finite bounds only, for * and /) */
static kd_range kd_range_corners(kd_range a, kd_range b, bool div) {
  double c[4] = {a.lo, a.lo, a.hi, a.hi}, d[4] = {b.lo, b.hi, b.lo, b.hi};
  kd_range r = {true, INFINITY, -INFINITY};
  for (int i = 0; i < 4; i++) {
    double v = div ? (isinf(d[i]) ? 0.0 : c[i] / d[i]) : c[i] * d[i];
    r.lo = fmin(r.lo, v);
    r.hi = fmax(r.hi, v);
  }
  return r;
}

static kd_range kd_range_of(kd_rw *rw, kd_node_id id, int depth) {
  const kd_range unknown = {false, 0, 0};
  const kd_node *n = kd_rw_node(rw, id);
  if (!n || depth > 32) return unknown;
  if (n->dtype == KD_BOOL) return (kd_range){true, 0, 1};
  kd_range a = n->nsrc > 0 ? kd_range_of(rw, n->src[0], depth + 1) : unknown;
  kd_range b = n->nsrc > 1 ? kd_range_of(rw, n->src[1], depth + 1) : unknown;
  bool fa = kd_range_fin(a), fb = kd_range_fin(b);
  switch (n->op) {
  case KD_IR_CONST: return isnan(n->value) ? unknown : (kd_range){true, n->value, n->value};
  case KD_IR_CAST: /* to an integer: truncated, which is monotone */
    return a.known && !kd_dtype_is_float(n->dtype) ? (kd_range){true, trunc(a.lo), trunc(a.hi)} : a;
  case KD_IR_EXPAND:
  case KD_IR_STOPGRAD: return a;
  case KD_IR_NEG: return a.known ? (kd_range){true, -a.hi, -a.lo} : unknown;
  case KD_IR_SUM: /* any number of terms of one sign */
    if (!a.known || (a.lo < 0 && a.hi > 0)) return unknown;
    return (kd_range){true, a.lo < 0 ? -INFINITY : 0, a.hi > 0 ? INFINITY : 0};
  case KD_IR_MAX:
  case KD_IR_MIN:
    if (!a.known || !b.known) return unknown;
    return n->op == KD_IR_MAX ? (kd_range){true, fmax(a.lo, b.lo), fmax(a.hi, b.hi)}
                              : (kd_range){true, fmin(a.lo, b.lo), fmin(a.hi, b.hi)};
  case KD_IR_ADD: return fa && fb ? (kd_range){true, a.lo + b.lo, a.hi + b.hi} : unknown;
  case KD_IR_SUB: return fa && fb ? (kd_range){true, a.lo - b.hi, a.hi - b.lo} : unknown;
  case KD_IR_MUL: return fa && fb ? kd_range_corners(a, b, false) : unknown;
  case KD_IR_DIV: /* a finite numerator over a denominator bounded away from 0 */
    return fa && b.known && (b.lo >= 1e-37 || b.hi <= -1e-37) ? kd_range_corners(a, b, true) : unknown;
  case KD_IR_SELECT: {
    kd_range c = n->nsrc > 2 ? kd_range_of(rw, n->src[2], depth + 1) : unknown;
    return b.known && c.known ? (kd_range){true, fmin(b.lo, c.lo), fmax(b.hi, c.hi)} : unknown;
  }
  default: return unknown;
  }
}

static bool kd_finite(kd_rw *rw, kd_node_id id) { return kd_range_fin(kd_range_of(rw, id, 0)); }

static kd_node_id kd_src(kd_rw *rw, kd_node_id x, int i) { return kd_rw_node(rw, x)->src[i]; }

/* Whether w is a softmax along axis: exp(u - lse(u, axis)). */
static bool kd_is_softmax(kd_rw *rw, kd_node_id w, int axis) {
  if (kd_op(rw, w) != KD_IR_EXP) return false;
  kd_node_id d = kd_src(rw, w, 0);
  if (kd_op(rw, d) != KD_IR_SUB) return false;
  const kd_node *l = kd_rw_node(rw, kd_src(rw, d, 1));
  return l->op == KD_IR_LSE && l->axis == axis && l->src[0] == kd_src(rw, d, 0);
}

/* Whether x depends on a reduction along `axis` of a rank-`rank` tensor
 * (counted from the right, as broadcasting aligns) over a value that spans
 * it: a row's logsumexp, say. seen: [graph size] marks, zeroed by the caller. */
static bool kd_late_at(kd_rw *rw, kd_node_id x, int from_right, char *seen) {
  if (seen[x]) return false;
  seen[x] = 1;
  const kd_node *n = kd_rw_node(rw, x);
  if (kd_opcode_class(n->op) == KD_CLASS_REDUCE) {
    const kd_node *s = kd_rw_node(rw, n->src[0]);
    int k = s->rank - 1 - from_right; /* the axis of s that lines up */
    if (k >= 0 && s->shape[k] != 1 && (n->axis == KD_AXIS_ALL || n->axis == k)) return true;
  }
  for (int i = 0; i < n->nsrc; i++)
    if (kd_late_at(rw, n->src[i], from_right, seen)) return true;
  return false;
}

static bool kd_late(kd_rw *rw, kd_node_id x, int rank, int axis) {
  char *seen = calloc(kd_graph_size(rw->g), 1);
  if (!seen) return true; /* the conservative answer: no split */
  bool r = kd_late_at(rw, x, rank - 1 - axis, seen);
  free(seen);
  return r;
}

/* Splits x (a tree of +, -, neg) into a part that varies along `axis` of a
 * rank-`rank` tensor and a part constant along it: x = *var + *cst, either
 * KD_NONE when empty. With `keep_late`, a constant part that is itself late
 * (kd_late: a row's logsumexp) stays in *var. */
static void kd_split(kd_rw *rw, kd_node_id x, int rank, int axis, bool keep_late,
                     kd_node_id *var, kd_node_id *cst) {
  const kd_node *n = kd_rw_node(rw, x);
  kd_opcode op = n->op;
  if (kd_const_along(n, rank, axis) && !(keep_late && kd_late(rw, x, rank, axis))) {
    *var = KD_NONE;
    *cst = x;
    return;
  }
  if (op != KD_IR_ADD && op != KD_IR_SUB && op != KD_IR_NEG) {
    *var = x;
    *cst = KD_NONE;
    return;
  }
  kd_node_id va, ca, vb = KD_NONE, cb = KD_NONE, b = n->nsrc > 1 ? n->src[1] : KD_NONE;
  kd_split(rw, n->src[0], rank, axis, keep_late, &va, &ca);
  if (b != KD_NONE) kd_split(rw, b, rank, axis, keep_late, &vb, &cb);
  kd_node_id *part[2] = {var, cst};
  kd_node_id l[2] = {va, ca}, r[2] = {vb, cb};
  for (int k = 0; k < 2; k++) {
    if (op == KD_IR_NEG) *part[k] = l[k] == KD_NONE ? KD_NONE : kd_s1(rw, KD_IR_NEG, l[k]);
    else if (r[k] == KD_NONE) *part[k] = l[k];
    else if (l[k] == KD_NONE) *part[k] = op == KD_IR_ADD ? r[k] : kd_s1(rw, KD_IR_NEG, r[k]);
    else *part[k] = kd_s2(rw, op, l[k], r[k]);
  }
}

/* A linear form: sum of k[i] * term[i], each times one factor node common
 * to the whole form (KD_NONE: none), as a / b below reads it. */
#define KD_LIN_MAX 8
typedef struct kd_lin {
  int n;
  kd_node_id term[KD_LIN_MAX];
  double k[KD_LIN_MAX];
  kd_node_id factor;
  bool fail;
} kd_lin;

static void kd_lin_add(kd_lin *f, kd_node_id term, double k, kd_node_id factor) {
  if (f->n && factor != f->factor) f->fail = true;
  f->factor = factor;
  for (int i = 0; i < f->n; i++)
    if (f->term[i] == term) {
      f->k[i] += k;
      return;
    }
  if (f->n == KD_LIN_MAX) f->fail = true;
  else f->term[f->n] = term, f->k[f->n++] = k;
}

/* x as a linear form over +, -, neg and products with a literal or with a
 * value constant along `axis` (of a rank-`rank` result), the factor. A
 * MULZ reads as a product: the two differ only where one side is 0 and the
 * other infinite or NaN. */
static void kd_lin_of(kd_rw *rw, kd_node_id x, double k, kd_node_id factor, int rank, int axis,
                      kd_lin *f, int depth) {
  const kd_node *n = kd_rw_node(rw, x);
  double c;
  if (f->fail || depth > 16) {
    f->fail = true;
    return;
  }
  switch (n->op) {
  case KD_IR_ADD:
  case KD_IR_SUB:
    kd_lin_of(rw, n->src[0], k, factor, rank, axis, f, depth + 1);
    kd_lin_of(rw, n->src[1], n->op == KD_IR_SUB ? -k : k, factor, rank, axis, f, depth + 1);
    return;
  case KD_IR_NEG:
    kd_lin_of(rw, n->src[0], -k, factor, rank, axis, f, depth + 1);
    return;
  case KD_IR_MUL:
  case KD_IR_MULZ:
    for (int s = 0; s < 2; s++) {
      kd_node_id a = n->src[s], b = n->src[1 - s];
      if (kd_rw_const_value(rw, b, &c)) {
        kd_lin_of(rw, a, k * c, factor, rank, axis, f, depth + 1);
        return;
      }
      if (factor == KD_NONE && !kd_const_along(kd_rw_node(rw, a), rank, axis) &&
          kd_const_along(kd_rw_node(rw, b), rank, axis)) {
        /* the factor's own literals join k (jsd at beta 0.3: c 0.7 q + c 0.3 p) */
        double kb = k;
        while (kd_rw_node(rw, b)->op == KD_IR_MUL && kd_rw_const_value(rw, kd_rw_node(rw, b)->src[1], &c)) {
          kb *= c;
          b = kd_rw_node(rw, b)->src[0];
        }
        kd_lin_of(rw, a, kb, b, rank, axis, f, depth + 1);
        return;
      }
    }
    break;
  default:
    break;
  }
  kd_lin_add(f, x, k, factor);
}

/* a / b = r * factor where a is r times b term by term and b has no
 * factor (jsd's gradient: (-(c q) - c p) / (p/2 + q/2) = -2 c; the skew
 * KLs' p / (alpha p + (1 - alpha) q) is a real quotient). Where b = 0 the
 * quotient was 0/0; the result is its limit. KD_NONE when not so. */
static kd_node_id kd_simp_ratio(kd_rw *rw, const kd_node *n) {
  int axis = n->rank - 1;
  if (axis < 0) return KD_NONE;
  kd_lin la = {0}, lb = {0};
  la.factor = lb.factor = KD_NONE;
  kd_lin_of(rw, n->src[0], 1, KD_NONE, n->rank, axis, &la, 0);
  kd_lin_of(rw, n->src[1], 1, KD_NONE, n->rank, axis, &lb, 0);
  if (la.fail || lb.fail || lb.factor != KD_NONE || la.n != lb.n || la.n < 2) return KD_NONE;
  double r = NAN;
  for (int i = 0; i < la.n; i++) {
    int j = 0;
    while (j < lb.n && lb.term[j] != la.term[i]) j++;
    if (j == lb.n || lb.k[j] == 0 || !isfinite(la.k[i] / lb.k[j])) return KD_NONE;
    double q = la.k[i] / lb.k[j];
    if (i == 0) r = q;
    else if (fabs(q - r) > 4 * FLT_EPSILON * fabs(r)) return KD_NONE;
  }
  kd_node_id c = kd_rw_const(rw, r, n->dtype);
  return kd_fit(rw, la.factor == KD_NONE ? c : kd_s2(rw, KD_IR_MUL, la.factor, c), n);
}

/* sum(x, axis) for x a product: row scalars out (see the file comment).
 * Returns KD_NONE when no rule applies. */
static kd_node_id kd_simp_sum_product(kd_rw *rw, kd_node_id x, int rank, int axis) {
  const kd_node *n = kd_rw_node(rw, x);
  kd_opcode op = n->op;
  kd_node_id a = n->src[0], b = n->src[1];
  if (op == KD_IR_MUL) { /* c * x and x * c */
    for (int k = 0; k < 2; k++) {
      kd_node_id c = k ? a : b, f = k ? b : a;
      if (kd_const_along(kd_rw_node(rw, c), rank, axis))
        return kd_s2(rw, KD_IR_MUL, kd_sr(rw, KD_IR_SUM, f, axis), c);
    }
  }
  if (op != KD_IR_MULZ && op != KD_IR_MUL) return KD_NONE;
  /* w * v: the weight first (mulz's zero test is on its first operand). */
  kd_node_id w = a, v = b;
  if (op == KD_IR_MUL && kd_is_softmax(rw, b, axis)) w = b, v = a;
  const kd_node *vn = kd_rw_node(rw, v);
  if (kd_const_along(vn, rank, axis))
    return kd_s2(rw, KD_IR_MUL, kd_sr(rw, KD_IR_SUM, w, axis), v);
  if (vn->op == KD_IR_MUL)
    for (int k = 0; k < 2; k++) {
      kd_node_id c = vn->src[k], f = vn->src[1 - k];
      if (kd_const_along(kd_rw_node(rw, c), rank, axis))
        return kd_s2(rw, KD_IR_MUL, kd_sr(rw, KD_IR_SUM, kd_s2(rw, op, w, f), axis), c);
    }
  if (!kd_is_softmax(rw, w, axis)) return KD_NONE;
  /* Taking a row scalar such as lse out of the sum lets the rest be folded
   * online in the pass that finds lse (forward KL's sum(p (a - b)) - lse). A
   * rest that is late anyway (jsd's log of the mixture needs both lse's)
   * gains nothing from it and loses accuracy: sum(q (b - lse - L)) is small
   * where q ~ m, sum(q (b - L)) - lse cancels to eps |b| (6.7e-5 at logits
   * of 1e4). So the late row scalars then stay inside; constants still go. */
  kd_node_id var, cst;
  kd_split(rw, v, rank, axis, false, &var, &cst);
  if (var != KD_NONE && cst != KD_NONE && kd_late(rw, var, rank, axis))
    kd_split(rw, v, rank, axis, true, &var, &cst);
  if (cst == KD_NONE) return KD_NONE;
  kd_node_id c = kd_s2(rw, KD_IR_MUL, kd_sr(rw, KD_IR_SUM, w, axis), cst);
  if (var == KD_NONE) return c;
  return kd_s2(rw, KD_IR_ADD, kd_sr(rw, KD_IR_SUM, kd_s2(rw, op, w, var), axis), c);
}

/* sum(a + b) = sum(a) + sum(b), but only where one of the two sums then
 * simplifies (otherwise it would just add a reduction), and only where both
 * a and b span the summed axis (sum(c + f) over V is V c + sum(f) for a
 * row scalar c; that case is left alone). */
/* Whether s, a simplified sum over `axis` of a value shaped like x, is still
 * one full reduction: sum(f) scaled (c * sum(f), -sum(f)) with f as large
 * as x. Taking a factor out is no saving worth a second reduction. */
static bool kd_still_reduces(kd_rw *rw, kd_node_id s, const kd_node *x, int axis) {
  for (;;) {
    const kd_node *n = kd_rw_node(rw, s);
    if (n->op == KD_IR_NEG || n->op == KD_IR_EXPAND) {
      s = n->src[0];
    } else if (n->op == KD_IR_MUL && kd_const_along(kd_rw_node(rw, n->src[1]), x->rank, axis)) {
      s = n->src[0];
    } else if (n->op == KD_IR_MUL && kd_const_along(kd_rw_node(rw, n->src[0]), x->rank, axis)) {
      s = n->src[1];
    } else {
      return n->op == KD_IR_SUM && n->axis == axis && kd_shape_eq(kd_rw_node(rw, n->src[0]), x);
    }
  }
}

static kd_node_id kd_simp_sum_of_sum(kd_rw *rw, kd_node_id x, int axis) {
  const kd_node *n = kd_rw_node(rw, x);
  kd_opcode op = n->op;
  kd_node_id a = n->src[0], b = n->src[1];
  if (!kd_shape_eq(kd_rw_node(rw, a), n) || !kd_shape_eq(kd_rw_node(rw, b), n)) return KD_NONE;
  kd_node xn = *n; /* n moves as the graph grows */
  kd_node_id plain_a = kd_rw_reduce(rw, KD_IR_SUM, a, axis);
  kd_node_id plain_b = kd_rw_reduce(rw, KD_IR_SUM, b, axis);
  kd_node_id sa = kd_simp(rw, plain_a), sb = kd_simp(rw, plain_b);
  if ((sa == plain_a || kd_still_reduces(rw, sa, &xn, axis)) &&
      (sb == plain_b || kd_still_reduces(rw, sb, &xn, axis)))
    return KD_NONE;
  return kd_s2(rw, op, sa, sb);
}

static kd_node_id kd_simp_sum(kd_rw *rw, const kd_node *n) {
  kd_node_id x = n->src[0];
  int rank = kd_rw_node(rw, x)->rank;
  kd_opcode xop = kd_op(rw, x);
  if (xop == KD_IR_NEG) return kd_s1(rw, KD_IR_NEG, kd_sr(rw, KD_IR_SUM, kd_src(rw, x, 0), n->axis));
  if (kd_is_softmax(rw, x, n->axis)) return kd_const_like(rw, 1, n);
  if (xop == KD_IR_ADD || xop == KD_IR_SUB) return kd_simp_sum_of_sum(rw, x, n->axis);
  return kd_simp_sum_product(rw, x, rank, n->axis);
}

/* op(expand(z), y) = op(z, y) where the other operands broadcast z anyway,
 * and op(expand(z), c) = expand(op(z, c)) for c of rank 0. */
static kd_node_id kd_simp_unexpand(kd_rw *rw, const kd_node *n) {
  int ne = 0, k0 = 0;
  for (int k = 0; k < n->nsrc; k++) {
    const kd_node *s = kd_rw_node(rw, n->src[k]);
    if (s->op == KD_IR_EXPAND) ne++;
    else if (s->rank == 0) k0++;
  }
  if (ne && ne + k0 == n->nsrc) {
    kd_node p = *n;
    p.name = NULL;
    for (int k = 0; k < n->nsrc; k++) {
      const kd_node *s = kd_rw_node(rw, n->src[k]);
      if (s->op == KD_IR_EXPAND) p.src[k] = s->src[0];
    }
    kd_node_id id = kd_simp(rw, kd_rw_emit(rw, &p));
    const kd_node *m = kd_rw_node(rw, id);
    if (m && m->dtype == n->dtype && !kd_shape_eq(m, n)) return kd_fit(rw, id, n);
  }
  for (int k = 0; k < n->nsrc; k++) {
    const kd_node *e = kd_rw_node(rw, n->src[k]);
    if (e->op != KD_IR_EXPAND) continue;
    kd_node p = *n;
    p.name = NULL;
    p.src[k] = e->src[0];
    kd_node_id id = kd_rw_emit(rw, &p);
    const kd_node *m = kd_rw_node(rw, id);
    if (m && m->dtype == n->dtype && kd_shape_eq(m, n)) return kd_simp(rw, id);
  }
  return KD_NONE;
}

/* x c +- y c = (x +- y) c, c a literal on both sides or one value (either
 * operand of each product): jsd's mixture p/2 + q/2 and forward KL's
 * gradient q s - p s, s = 1 / count: one multiply per logit instead of two
 * (exact for a power of two, one rounding fewer otherwise). With mulz,
 * whose zero test is on its first operand w: mulz(w, u) +- mulz(w, v) =
 * mulz(w, u +- v), and x w +- mulz(w, v) = mulz(w, x +- v) (where w = 0
 * the left side is 0, or NaN for an infinite x; the right side 0): the
 * gradients of tvd, jsd, the skew KLs and sym_kl, q (a - b) for a row
 * scalar a. */
static bool kd_same_factor(kd_rw *rw, kd_node_id a, kd_node_id b) {
  double ca, cb;
  return a == b || (kd_rw_const_value(rw, a, &ca) && kd_rw_const_value(rw, b, &cb) && ca == cb);
}

static kd_node_id kd_simp_common_factor(kd_rw *rw, const kd_node *n) {
  /* copies: building nodes below may move the graph's node array */
  kd_node x = *kd_rw_node(rw, n->src[0]), y = *kd_rw_node(rw, n->src[1]);
  bool zx = x.op == KD_IR_MULZ, zy = y.op == KD_IR_MULZ;
  if ((x.op != KD_IR_MUL && !zx) || (y.op != KD_IR_MUL && !zy)) return KD_NONE;
  for (int i = 1; i >= 0; i--)
    for (int j = 1; j >= 0; j--) {
      /* a mulz's factor must be its zero-tested operand (src[0]) */
      if ((zx && i) || (zy && j) || !kd_same_factor(rw, x.src[i], y.src[j])) continue;
      kd_node_id rest = kd_s2(rw, n->op, x.src[1 - i], y.src[1 - j]);
      if (zx || zy) return kd_fit(rw, kd_s2(rw, KD_IR_MULZ, x.src[i], rest), n);
      return kd_fit(rw, kd_s2(rw, KD_IR_MUL, rest, x.src[i]), n);
    }
  return KD_NONE;
}

/* One rewrite of node id; returns the node that replaces it, or KD_NONE. */
/* Row scalars gather in additive chains, so a row pays one addition of a
 * split double per element, not one per scalar (jsd's gradient c/2 + (x c/2
 * - c/2) - S c/2 is x c/2 + (c/2 - c/2 - S c/2)): with r and s constant
 * along the row of n and x not,
 *   (x + r) + s = r + (x + s) = x + (r + s)     (x - r) + s = x - (r - s)
 *   (x + r) - s = x + (r - s)
 * (SUB's (x - r) - s is kd_simp_rule's). Literals stay where a - (x + c)
 * = (a - x) - c puts them (the two would undo each other). KD_NONE when
 * none applies. */
static kd_node_id kd_simp_gather(kd_rw *rw, const kd_node *n) {
  if (n->rank == 0 || (n->op != KD_IR_ADD && n->op != KD_IR_SUB)) return KD_NONE;
  int axis = n->rank - 1;
  for (int k = 0; k < (n->op == KD_IR_ADD ? 2 : 1); k++) {
    kd_node_id c = n->src[k], s = n->src[1 - k]; /* the chain, the scalar */
    kd_opcode cop = kd_op(rw, c);
    double lit;
    if ((cop != KD_IR_ADD && cop != KD_IR_SUB) || !kd_const_along(kd_rw_node(rw, s), n->rank, axis) ||
        kd_rw_const_value(rw, s, &lit))
      continue;
    for (int i = 0; i < (cop == KD_IR_ADD ? 2 : 1); i++) {
      kd_node_id x = kd_src(rw, c, i), r = kd_src(rw, c, 1 - i);
      if (kd_const_along(kd_rw_node(rw, x), n->rank, axis) || !kd_const_along(kd_rw_node(rw, r), n->rank, axis) ||
          kd_rw_const_value(rw, r, &lit))
        continue;
      if (cop == KD_IR_ADD) /* (x + r) +- s */
        return kd_fit(rw, kd_s2(rw, KD_IR_ADD, x, kd_s2(rw, n->op, r, s)), n);
      if (n->op == KD_IR_ADD) /* (x - r) + s */
        return kd_fit(rw, kd_s2(rw, KD_IR_SUB, x, kd_s2(rw, KD_IR_SUB, r, s)), n);
    }
  }
  return KD_NONE;
}

static kd_node_id kd_simp_rule(kd_rw *rw, const kd_node *n) {
  kd_node_id a = n->nsrc > 0 ? n->src[0] : KD_NONE, b = n->nsrc > 1 ? n->src[1] : KD_NONE;
  double x[KD_MAX_SRC], ca = NAN, cb = NAN;
  bool ka = a != KD_NONE && kd_rw_const_value(rw, a, &ca);
  bool kb = b != KD_NONE && kd_rw_const_value(rw, b, &cb);
  kd_op_class cls = kd_opcode_class(n->op);
  if (cls == KD_CLASS_UNARY || cls == KD_CLASS_BINARY || cls == KD_CLASS_SELECT) {
    int k = 0;
    while (k < n->nsrc && kd_rw_const_value(rw, n->src[k], &x[k])) k++;
    if (k == n->nsrc) return kd_const_like(rw, kd_ref_scalar(n->op, n->dtype, x), n);
  }
  if (cls == KD_CLASS_BINARY || cls == KD_CLASS_SELECT) {
    kd_node_id r = kd_simp_unexpand(rw, n);
    if (r != KD_NONE) return r;
  }
  kd_opcode aop = a != KD_NONE ? kd_op(rw, a) : KD_IR_INPUT;
  kd_opcode bop = b != KD_NONE ? kd_op(rw, b) : KD_IR_INPUT;
  kd_node_id r0;
  switch (n->op) {
  case KD_IR_STOPGRAD: return kd_fit(rw, a, n);
  case KD_IR_CAST: return kd_fit(rw, a, n);
  case KD_IR_EXPAND: return kd_shape_eq(kd_rw_node(rw, a), n) ? a : KD_NONE;
  case KD_IR_NEG:
    if (aop == KD_IR_NEG) return kd_fit(rw, kd_src(rw, a, 0), n);
    if (aop == KD_IR_SUB) return kd_s2(rw, KD_IR_SUB, kd_src(rw, a, 1), kd_src(rw, a, 0));
    return KD_NONE;
  case KD_IR_LOG: return aop == KD_IR_EXP ? kd_fit(rw, kd_src(rw, a, 0), n) : KD_NONE;
  case KD_IR_ADD:
    if (kb && cb == 0) return kd_fit(rw, a, n);
    if (ka && ca == 0) return kd_fit(rw, b, n);
    if (bop == KD_IR_NEG) return kd_s2(rw, KD_IR_SUB, a, kd_src(rw, b, 0));
    if (aop == KD_IR_NEG) return kd_s2(rw, KD_IR_SUB, b, kd_src(rw, a, 0));
    if ((r0 = kd_simp_common_factor(rw, n)) != KD_NONE) return r0;
    return kd_simp_gather(rw, n);
  case KD_IR_SUB:
    if (kb && cb == 0) return kd_fit(rw, a, n);
    if (ka && ca == 0) return kd_fit(rw, kd_s1(rw, KD_IR_NEG, b), n);
    if (bop == KD_IR_NEG) return kd_s2(rw, KD_IR_ADD, a, kd_src(rw, b, 0));
    if ((bop == KD_IR_ADD || bop == KD_IR_SUB) && kd_rw_const_value(rw, kd_src(rw, b, 1), &cb))
      /* a - (x + c) = (a - x) - c: the literal moves out, so a - x can be the
       * value another use computes (jsd's log q - log(p + q) in the loss
       * and, shifted by log 2, in the gradient) */
      return kd_fit(rw, kd_s2(rw, bop == KD_IR_ADD ? KD_IR_SUB : KD_IR_ADD,
                              kd_s2(rw, KD_IR_SUB, a, kd_src(rw, b, 0)), kd_src(rw, b, 1)), n);
    if (n->rank > 0 && aop == KD_IR_SUB) {
      /* row scalars gather, so a row pays one subtraction of a split double
       * per logit, not one per scalar: (x - r) - (y - s) = (x - y) - (r -
       * s) and (x - r) - s = x - (r + s), r and s constant along the row (a
       * literal stays where the rule above puts it); reverse KL's gradient
       * (log q - log p) - KL with log q = s - lse_s, log p = t - lse_t
       * becomes (s - t) - (lse_s - lse_t + KL) */
      int axis = n->rank - 1;
      double lit;
      kd_node_id ax = kd_src(rw, a, 0), r = kd_src(rw, a, 1);
      bool rrow = kd_const_along(kd_rw_node(rw, r), n->rank, axis) && !kd_rw_const_value(rw, r, &lit) &&
                  !kd_const_along(kd_rw_node(rw, ax), n->rank, axis);
      if (rrow && bop == KD_IR_SUB) {
        kd_node_id by = kd_src(rw, b, 0), t = kd_src(rw, b, 1);
        if (kd_const_along(kd_rw_node(rw, t), n->rank, axis) && !kd_rw_const_value(rw, t, &lit) &&
            !kd_const_along(kd_rw_node(rw, by), n->rank, axis))
          return kd_fit(rw, kd_s2(rw, KD_IR_SUB, kd_s2(rw, KD_IR_SUB, ax, by), kd_s2(rw, KD_IR_SUB, r, t)), n);
      }
      if (rrow && !kb && kd_const_along(kd_rw_node(rw, b), n->rank, axis))
        return kd_fit(rw, kd_s2(rw, KD_IR_SUB, ax, kd_s2(rw, KD_IR_ADD, r, b)), n);
    }
    if (aop == KD_IR_ADD && bop == KD_IR_ADD)
      /* (a + x) - (a + y) = x - y, either operand the shared one: reverse
       * KL's gradient c (1 + log q - log p) - c (1 + KL) becomes c (log q -
       * log p - KL), which is exactly 0 where the two logs are KL (a
       * one-hot q), with no rounding of c + c (log q - log p) first */
      for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
          if (kd_src(rw, a, i) == kd_src(rw, b, j))
            return kd_fit(rw, kd_s2(rw, KD_IR_SUB, kd_src(rw, a, 1 - i), kd_src(rw, b, 1 - j)), n);
    if ((r0 = kd_simp_common_factor(rw, n)) != KD_NONE) return r0;
    return kd_simp_gather(rw, n);
  case KD_IR_MUL:
  case KD_IR_MULZ:
    if (n->op == KD_IR_MULZ && ka && ca == 0) return kd_const_like(rw, 0, n);
    if (n->op == KD_IR_MULZ && ((ka && ca != 0) || kd_finite(rw, b)))
      return kd_s2(rw, KD_IR_MUL, a, b);
    if (kb && cb == 1) return kd_fit(rw, a, n);
    if (ka && ca == 1 && n->op == KD_IR_MUL) return kd_fit(rw, b, n);
    if (aop == KD_IR_NEG) return kd_s1(rw, KD_IR_NEG, kd_s2(rw, n->op, kd_src(rw, a, 0), b));
    if (bop == KD_IR_NEG) return kd_s1(rw, KD_IR_NEG, kd_s2(rw, n->op, a, kd_src(rw, b, 0)));
    if (n->op == KD_IR_MUL && kb && aop == KD_IR_MUL) { /* (z * c1) * c2 = z * (c1 c2) */
      double c1;
      if (kd_rw_const_value(rw, kd_src(rw, a, 1), &c1))
        return kd_s2(rw, KD_IR_MUL, kd_src(rw, a, 0), kd_s2(rw, KD_IR_MUL, kd_src(rw, a, 1), b));
    }
    if (n->op == KD_IR_MUL && aop == KD_IR_MUL && n->rank > 0 &&
        kd_const_along(kd_rw_node(rw, b), n->rank, n->rank - 1))
      /* (z * r) * s = z * (r s) for r and s constant along the row (row
       * weights, 1/T): forward KL's ((q - p) G) / T takes one multiply per
       * logit, G / T one per row */
      for (int i = 0; i < 2; i++)
        if (kd_const_along(kd_rw_node(rw, kd_src(rw, a, i)), n->rank, n->rank - 1) &&
            !kd_const_along(kd_rw_node(rw, kd_src(rw, a, 1 - i)), n->rank, n->rank - 1))
          return kd_fit(rw, kd_s2(rw, KD_IR_MUL, kd_src(rw, a, 1 - i), kd_s2(rw, KD_IR_MUL, kd_src(rw, a, i), b)), n);
    return KD_NONE;
  case KD_IR_DIV:
    if (kb && cb == 1) return kd_fit(rw, a, n);
    if (kb && kd_dtype_is_float(n->dtype) && cb != 0 && isfinite(cb)) {
      /* x / c = x (1/c) exactly when c is a power of two (T = 2, 4, 0.5):
       * a multiply instead of a division per logit */
      int ex;
      if (fabs(frexp(cb, &ex)) == 0.5 && ex - 1 > -126 && ex - 1 < 127)
        return kd_fit(rw, kd_s2(rw, KD_IR_MUL, a, kd_rw_const(rw, 1 / cb, n->dtype)), n);
    }
    if (kd_dtype_is_float(n->dtype)) {
      kd_node_id r = kd_simp_ratio(rw, n);
      if (r != KD_NONE) return r;
    }
    if (aop == KD_IR_NEG) return kd_s1(rw, KD_IR_NEG, kd_s2(rw, KD_IR_DIV, kd_src(rw, a, 0), b));
    return KD_NONE;
  case KD_IR_POW:
    if (kb && cb == 1) return kd_fit(rw, a, n);
    if (kb && cb == 2) return kd_fit(rw, kd_s2(rw, KD_IR_MUL, a, a), n);
    return KD_NONE;
  case KD_IR_MAX:
  case KD_IR_MIN:
    return a == b ? kd_fit(rw, a, n) : KD_NONE;
  case KD_IR_SELECT:
    if (ka) return kd_fit(rw, ca != 0 ? b : n->src[2], n);
    return b == n->src[2] ? kd_fit(rw, b, n) : KD_NONE;
  case KD_IR_SUM:
  case KD_IR_RMAX:
  case KD_IR_LSE:
    if (n->axis != KD_AXIS_ALL && kd_rw_node(rw, a)->shape[n->axis] == 1) return kd_fit(rw, a, n);
    return n->op == KD_IR_SUM ? kd_fit(rw, kd_simp_sum(rw, n), n) : KD_NONE;
  default:
    return KD_NONE;
  }
}

/* Puts a constant operand of a commutative op second, so x * c and c * x
 * merge and the rules above need to look on one side only. */
static kd_node_id kd_simp_order(kd_rw *rw, kd_node_id id) {
  const kd_node *n = kd_rw_node(rw, id);
  double v;
  bool comm = n->op == KD_IR_ADD || n->op == KD_IR_MUL || n->op == KD_IR_MAX ||
              n->op == KD_IR_MIN || n->op == KD_IR_EQ || n->op == KD_IR_NE;
  if (!comm || !kd_rw_const_value(rw, n->src[0], &v) || kd_rw_const_value(rw, n->src[1], &v))
    return id;
  return kd_rw_binary(rw, n->op, n->src[1], n->src[0]);
}

static kd_node_id kd_simp(kd_rw *rw, kd_node_id id) {
  if (id == KD_NONE) return KD_NONE;
  kd_node_id o = kd_simp_order(rw, id);
  kd_node n = *kd_rw_node(rw, o);
  kd_node_id r = kd_simp_rule(rw, &n);
  if (r == KD_NONE || r == o) r = o;
  if (r != id) rw->fired++;
  return r;
}

static kd_node_id kd_simp_copy_rule(kd_rw *rw, kd_node *proto, void *ctx) {
  kd_node_id r = kd_simp(rw, kd_rw_emit(rw, proto));
  *(int *)ctx = rw->fired;
  return r;
}

kd_status kd_pass_simplify(const kd_graph *in, kd_graph **out, char *err, size_t errlen) {
  kd_graph *cur = NULL;
  *out = NULL;
  for (int round = 0; round < KD_SIMP_MAX_ROUNDS; round++) {
    kd_graph *next = NULL, *clean = NULL;
    int fired = 0;
    kd_status st = kd_rw_run(cur ? cur : in, kd_simp_copy_rule, &fired, "simplify", &next, err,
                             errlen);
    if (st == KD_OK) st = kd_pass_dce(next, &clean, err, errlen);
    kd_graph_free(next);
    kd_graph_free(cur);
    if (st != KD_OK) return st;
    cur = clean;
    if (!fired) break;
  }
  *out = cur;
  return KD_OK;
}
