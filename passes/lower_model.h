/* Lowering of `model` blocks: an instance (`student = gpt(layers = 1,
 * dim = 32, heads = 4)`) becomes a graph from token ids to logits.
 *
 *   input   "tokens"  i64 [B, T]
 *           one f32 input per parameter, named by its place in the model
 *   output  "logits"  f32 [B, T, V]
 * Legend: B = batch, T = sequence (symbols), V = the last linear's width.
 *
 * The body is evaluated, not translated node by node: the model's
 * parameters are numbers (the instance's arguments, defaults filled in),
 * arithmetic on numbers folds, `repeat n { }` is unrolled n times, `tokens`
 * is the input and `positions` is 0 .. T-1 ([1, T], broadcast over the
 * batch). Each layer call builds its ops with passes/layers.h.
 *
 * Parameter names: a layer's name is its short name (embed, linear, ln for
 * layernorm, norm for rmsnorm, attn, mlp for mlp and swiglu), numbered _1,
 * _2, ... in source order when its scope calls that kind more than once; the
 * scope is the model's body or one iteration of a repeat, whose prefix is
 * `blocks.I.` (`blocks_1.I.`, ... when a body has several repeats). So the
 * example GPT has embed_1.weight (tokens), embed_2.weight (positions),
 * blocks.0.ln_1.{weight,bias}, blocks.0.attn.qkv.weight, blocks.0.attn.proj.weight,
 * blocks.0.ln_2, blocks.0.mlp.fc, blocks.0.mlp.proj, ..., ln.weight,
 * linear.weight and linear.bias: the safetensors keys of a checkpoint.
 * Initialisation as layers.h says; the projections into the residual
 * stream take std 0.02 / sqrt(2 n) for a repeat of n blocks, as GPT-2. */
#ifndef KD_LOWER_MODEL_H
#define KD_LOWER_MODEL_H

#include "../frontend/check.h"
#include "../ir/ir.h"
#include "layers.h"

typedef struct kd_model {
  kd_graph *g;      /* the graph described above */
  kd_layers layers; /* its parameters: names, input nodes, init specs, in order made */
  int64_t vocab;    /* V */
} kd_model;

/* Lowers `instance` (a KD_SYM_INSTANCE of a model) of a checked program.
 * Errors (a dimension that is not a positive integer, a layer that cannot
 * take its input, logits that are not [B, T, V]) go to diag at the
 * offending source and give KD_ERR_SEMANTIC; *out is then empty. */
kd_status kd_lower_model(const kd_program *prog, const kd_symbol *instance, kd_diag *diag,
                         kd_model *out);
void kd_model_free(kd_model *m);

#endif /* KD_LOWER_MODEL_H */
