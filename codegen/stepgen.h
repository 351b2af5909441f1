/* Lowering of a model graph to a step program (runtime/step.h): the
 * instructions a training step runs without the IR.
 *
 * The graph (passes/train_graph.h's training or forward graph) is first
 * instantiated: every symbol takes its bound size, STOPGRAD and reshapes to
 * the same shape disappear, and autodiff's gradient of a weight W [K, N]
 * shared by a batch of products,
 *
 *   sum over the batch axes of matmul(transpose(a) [.., K, M], G [.., M, N]),
 *   reshaped to [K, N],
 *
 * becomes matmul(transpose(reshape(a, [rows, K])), reshape(G, [rows, N]))
 * with rows the batch size times M: one [K, rows] x [rows, N] product,
 * never one per batch item plus a reduction.
 *
 * Schedule: the outputs that do not depend on the input `split_input`
 * (NULL: none) and the nodes they need form the first phase (the forward
 * pass: logits), every other node an output needs the second (the
 * backward: also its parts that do not read logits.grad, such as 1 - y^2
 * of a tanh, so an evaluation runs no backward work), each in id order;
 * split is the second phase's first instruction. Memory is planned for
 * that order (passes/memplan.h), so arena_bytes is the plan's arena.
 *
 * Slots: every INPUT of the graph by its name (read only), then every
 * output by its name (output = true). An output computed by an instruction
 * is written straight into its slot, and so is the node under an output
 * that views all of it densely (a bias gradient, a sum reshaped to [N]);
 * any other output (an input, a strided view, a second name of a node) is
 * copied there, a constant filled.
 *
 * Views cost nothing: RESHAPE (where strides can express it), EXPAND
 * (stride 0), PERMUTE and STOPGRAD are refs to their base's memory, and a
 * CONST is an immediate. So is a slice written as a one-hot sum,
 * sum(x * (iota == k), axis), as layers.c takes q, k and v out of the
 * packed qkv: a ref to x at index k, the product never computed. A view a
 * reader cannot take through strides (a product needs each matrix dense,
 * row-major or transposed; gathers, scatters and reductions over every
 * axis need contiguous operands) is copied into memory of its own first,
 * with a MAP COPY.
 *
 * Ops: MATMUL -> GEMM (a [.., M, K] with a shared b [K, N] and a dense a
 * is one product of batch x M rows; a transposed operand, as autodiff's
 * transposes of dense values, sets trans_a / trans_b instead of a copy);
 * GATHER_ROWS, SCATTER_ADD_ROWS -> GATHER, SCATTER_ADD; SOFTMAX,
 * LOG_SOFTMAX -> SOFTMAX; SUM, RMAX, LSE -> REDUCE (over every axis: one
 * reduce of the flattened operand); IOTA -> MAP IOTA; elementwise ops and
 * CAST -> MAP. Values are f32, i64 or bool.
 *
 * Last, chains of maps are fused (codegen/stepfuse.h), unless the
 * environment sets KDC_NO_FUSE=1.
 *
 * Errors: KD_ERR_INVALID for an unbound symbol or a split input the graph
 * does not have; KD_ERR_UNSUPPORTED naming the op (or dtype) the step
 * cannot take; KD_ERR_NOMEM. *out is NULL then. */
#ifndef KD_STEPGEN_H
#define KD_STEPGEN_H

#include <stddef.h>

#include "../ir/ir.h"
#include "../passes/memplan.h"
#include "../runtime/step.h"

kd_status kd_stepgen(const kd_graph *g, const kd_sym_binding *bind, size_t nbind,
                     const char *split_input, kd_step_prog **out, char *err, size_t errlen);

#endif /* KD_STEPGEN_H */
