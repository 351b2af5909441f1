/* The reference executor: interprets any kd_graph in double precision, op by
 * op, unfused. It is the oracle every compiled CPU and GPU kernel is tested
 * against, so it is written to be obviously correct, not fast.
 *
 * Semantics (IEEE double throughout; nothing is rounded to the nodes' f32 or
 * bf16 dtypes, so a comparison with an f32 kernel measures the kernel's
 * rounding):
 *   - elementwise ops broadcast as numpy does; exp(-inf) = 0, and exp's
 *     subnormal results (below DBL_MIN, e^-708) are 0, so that a positive
 *     multiple of a probability is 0 only where the probability is; log(0) = -inf,
 *     log(x < 0) = nan; MULZ(0, b) = 0 even for b = inf or nan; MAX and MIN
 *     propagate nan (as numpy.maximum does); comparisons give 1 or 0, and a
 *     nan compares unequal to everything; SELECT picks by condition != 0, so
 *     a nan in the branch not taken never reaches the result.
 *   - CAST to an integer dtype truncates toward zero, to bool gives x != 0;
 *     to a float dtype it is the identity (double precision is kept).
 *   - LSE shifts by the row's maximum: exact for logits of magnitude 1e4, an
 *     all -inf row gives -inf, a row holding +inf gives +inf, nan gives nan.
 *     SOFTMAX and LOG_SOFTMAX are exp(x - lse) and x - lse, so an all -inf
 *     row gives nan (as torch does): canonicalised graphs mask such rows.
 *   - RMAX of a row is its maximum (nan if any element is nan).
 *   - model ops: MATMUL is a triple loop per batch index (the oracle, not
 *     the fast path); RESHAPE copies in C order; PERMUTE reads through the
 *     permuted strides; GATHER_ROWS and SCATTER_ADD_ROWS give
 *     KD_ERR_INVALID for an id outside 0 .. rows - 1, naming the node.
 *
 * Inputs are bound by name; a symbol (N, V) takes its size from the first
 * bound input that uses it, and any later disagreement is an error. */
#ifndef KD_REFEXEC_H
#define KD_REFEXEC_H

#include "ir.h"

/* An array given to the executor: C order, elements of `dtype` (f32, bf16
 * as uint16_t, f64, i32, i64, bool as uint8_t). Any float dtype may feed a
 * float input and any integer dtype an integer input. */
typedef struct kd_ref_input {
  const char *name;
  kd_dtype dtype;
  int rank;
  int64_t shape[KD_MAX_RANK];
  const void *data;
} kd_ref_input;

/* A computed value: C order, doubles; malloc'd. */
typedef struct kd_ref_value {
  int rank;
  int64_t shape[KD_MAX_RANK];
  size_t size; /* elements */
  double *data;
} kd_ref_value;

/* Runs g. out[i] receives the graph's output i (out holds
 * kd_graph_noutputs(g) values; free each with kd_ref_value_free). On error
 * out is left empty and errbuf names the input or node at fault. */
kd_status kd_ref_exec(const kd_graph *g, const kd_ref_input *inputs, size_t ninputs,
                      kd_ref_value *out, char *errbuf, size_t errlen);

void kd_ref_value_free(kd_ref_value *v);

/* The scalar semantics above for one UNARY, BINARY or SELECT op on x[0..2]
 * (dtype: the result's, which CAST needs): what constant folding uses, so a
 * folded graph computes what the reference computes. */
double kd_ref_scalar(kd_opcode op, kd_dtype dtype, const double *x);

#endif /* KD_REFEXEC_H */
