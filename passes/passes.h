/* The graph passes after lowering, and the named pipeline that runs them.
 *
 *   lower (lower.h) -> canonicalize -> autodiff -> simplify -> cse -> dce
 *   -> fuse/schedule (codegen) -> emit
 *
 * Every pass reads a graph and builds a new one (graphs are append-only);
 * the caller owns and frees both. A pass keeps every input of its graph (the
 * interface stays the same even when an input is no longer read), keeps the
 * outputs by name, and returns a verified graph. On failure *out is NULL and
 * err names the pass and the node at fault.
 *
 * What each pass guarantees:
 *   canonicalize  SOFTMAX(x) -> exp(x - lse(x)); LOG_SOFTMAX(x) -> x - lse(x);
 *                 log(exp(x)) -> x and log(a / b) -> log a - log b,
 *                 log(a * b) -> log a + log b for non-negative a, b, so no
 *                 log of an underflowed probability survives; a product whose
 *                 factor is a non-negative non-constant (a probability)
 *                 becomes MULZ(p, x), so p = 0 gives exactly 0 even where x
 *                 is -inf; a product with a constant 0 becomes an exact 0.
 *   autodiff      adds output "grad" = d loss / d student (shape of the
 *                 student, f32 for f32 or bf16 students); see kd_autodiff.
 *   simplify      constant folding, x*1, x+0, --x, sum over a size-1 axis,
 *                 sum(exp(x - lse(x))) = 1, row scalars out of sums:
 *                 sum(c * x) = c * sum(x) and, for a softmax w,
 *                 sum(w * (f + c)) = sum(w * f) + c * sum(w) with c constant
 *                 along the summed axis; STOPGRAD is dropped (it runs after
 *                 autodiff). Repeats to a fixed point.
 *   cse           hash-consing: equal nodes (op, operands, attributes) merge.
 *   dce           drops nodes no output depends on (inputs stay).
 */
#ifndef KD_PASSES_H
#define KD_PASSES_H

#include <stddef.h>

#include "../ir/ir.h"

typedef kd_status (*kd_pass_fn)(const kd_graph *in, kd_graph **out, char *err, size_t errlen);

kd_status kd_pass_canonicalize(const kd_graph *in, kd_graph **out, char *err, size_t errlen);
kd_status kd_pass_autodiff(const kd_graph *in, kd_graph **out, char *err, size_t errlen);
kd_status kd_pass_simplify(const kd_graph *in, kd_graph **out, char *err, size_t errlen);
kd_status kd_pass_cse(const kd_graph *in, kd_graph **out, char *err, size_t errlen);
kd_status kd_pass_dce(const kd_graph *in, kd_graph **out, char *err, size_t errlen);

/* Reverse-mode autodiff: adds output `grad_name` = d output(`of`) / d
 * input(`wrt`); the output must be rank 0. The gradient is computed for the
 * nodes between wrt and the output only; an op without a rule is an error
 * naming it. Conventions where the derivative is not defined: abs'(0) = 0
 * (so TVD's gradient where p == q is 0); max/min send the gradient to the
 * first operand on ties; reduce_max sends it to the first maximal element;
 * MULZ(a, b) sends a * G to b, exactly 0 where a == 0; exp sends
 * mulz(exp(x), G), so an underflowed probability stops an infinite adjoint.
 * A row masked with SELECT gets a zero adjoint, so its gradient is exactly 0
 * when its logits are finite (a nan or +inf in a masked row still gives nan
 * there: 0 * nan; eval-loss rejects nan logits). kd_pass_autodiff is
 * kd_autodiff(in, "loss", "student", "grad", ...). */
kd_status kd_autodiff(const kd_graph *in, const char *of, const char *wrt, const char *grad_name,
                      kd_graph **out, char *err, size_t errlen);

/* The same for several inputs at once (a model's parameters): one backward
 * walk, output grad_names[i] = d output(`of`) / d input(wrt[i]). */
kd_status kd_autodiff_many(const kd_graph *in, const char *of, size_t nwrt,
                           const char *const *wrt, const char *const *grad_names,
                           kd_graph **out, char *err, size_t errlen);

/* The pipeline after lowering, in order. */
typedef struct kd_pass {
  const char *name; /* what `kdc emit-ir --after NAME` takes */
  const char *summary;
  kd_pass_fn run;
} kd_pass;

const kd_pass *kd_pipeline(size_t *n);
/* The pass named `name`, or NULL ("lower" is no pass: it is the input). */
const kd_pass *kd_pipeline_find(const char *name);

/* Takes a lowered graph through the pipeline, stopping after the pass named
 * `last` ("lower": none, *out is a copy; NULL: every pass). An unknown name
 * is KD_ERR_INVALID. */
kd_status kd_pipeline_run(const kd_graph *lowered, const char *last, kd_graph **out, char *err,
                          size_t errlen);

#endif /* KD_PASSES_H */
