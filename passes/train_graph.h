/* The graphs a training step runs, built from a lowered model
 * (lower_model.h): what codegen/stepgen.c turns into a step program.
 *
 * The training graph does not contain the loss. The distillation loss is a
 * fused row kernel of its own (runtime/lossrun.h) that reads the logits and
 * writes d loss / d logits; the backward pass starts from that gradient:
 *
 *   inputs   "tokens" i64 [B, T], every parameter (its name), and
 *            "logits.grad" f32 [B, T, V]
 *   outputs  "logits" f32 [B, T, V] and, for every parameter P in the order
 *            the model made them, "grad.P" = d L / d P for
 *            L = sum(logits * stop_gradient(logits.grad)),
 *
 * so grad.P is the vector-Jacobian product of logits.grad with the model:
 * exactly d loss / d P whenever logits.grad = d loss / d logits. Built by
 * kd_autodiff_many, then simplify, cse and dce (passes.h), so the graph
 * holds no STOPGRAD and no node that no output needs; nothing in the
 * forward part reads logits.grad (stepgen splits the step there).
 *
 * The forward graph is the model's graph after simplify, cse and dce:
 * "tokens" and the parameters to "logits" (a teacher's logits, evaluation). */
#ifndef KD_TRAIN_GRAPH_H
#define KD_TRAIN_GRAPH_H

#include <stddef.h>

#include "lower_model.h"

#define KD_LOGITS_GRAD "logits.grad" /* the backward's input */

kd_status kd_train_graph(const kd_model *m, kd_graph **out, char *err, size_t errlen);
kd_status kd_forward_graph(const kd_model *m, kd_graph **out, char *err, size_t errlen);

#endif /* KD_TRAIN_GRAPH_H */
