/* Model layers as functions that build graphs (as ggml's and llm.c's layers
 * are sequences of ops, not ops): each adds its parameters as graph INPUTs
 * and the ops that compute it. A parameter's input name is its place in the
 * model, `PREFIX.weight` / `PREFIX.bias` with the prefix the caller gives
 * ("blocks.0.attn.qkv"), which is also its safetensors key; its
 * initialisation is recorded next to it for the trainer.
 *
 * Legend: B = batch, T = sequence (both may be symbols), D = model width,
 * H = heads, Dh = D / H, V = vocabulary. Weights are [in, out] (y = x W, as
 * GPT-2's Conv1D stores them), so a linear layer is one MATMUL with no
 * transpose.
 *
 * Errors: a layer given KD_NONE, or a shape it cannot take, returns KD_NONE;
 * the graph's error (kd_graph_error) or, for the layer's own checks,
 * kd_layers_error says why. */
#ifndef KD_LAYERS_H
#define KD_LAYERS_H

#include <stdbool.h>
#include <stddef.h>

#include "../ir/ir.h"

typedef enum kd_init_kind {
  KD_INIT_NORMAL, /* normal(mean, std), from the trainer's seeded generator */
  KD_INIT_ZEROS,
  KD_INIT_ONES,
} kd_init_kind;

typedef struct kd_init {
  kd_init_kind kind;
  double mean, std; /* NORMAL only */
} kd_init;

typedef struct kd_model_param {
  char *name;    /* "blocks.0.attn.qkv.weight": the input's name and the safetensors key */
  kd_node_id id; /* its INPUT node */
  kd_init init;
} kd_model_param;

typedef struct kd_layers {
  kd_graph *g;      /* not owned */
  kd_dtype dtype;   /* of the parameters (f32) */
  double std;       /* weights' and embeddings' init std: 0.02, as GPT-2 */
  double resid_std; /* the std of projections into the residual stream (attention's and
                       the MLP's last linear); GPT-2 takes 0.02 / sqrt(2 * layers) */
  double eps;       /* layernorm's and rmsnorm's epsilon: 1e-5 */
  kd_model_param *params; /* in the order they were made */
  size_t nparams, cap;
  char err[256];    /* the layers' own first error; "" if none */
} kd_layers;

/* Defaults as above; g stays the caller's. */
void kd_layers_init(kd_layers *L, kd_graph *g);
/* Frees the parameter table (not the graph). */
void kd_layers_free(kd_layers *L);
/* The first error of the layers or of the graph, or NULL. */
const char *kd_layers_error(const kd_layers *L);
const kd_model_param *kd_layers_find(const kd_layers *L, const char *name);

/* A parameter input named `prefix.suffix` of the given constant shape. */
kd_node_id kd_layer_param(kd_layers *L, const char *prefix, const char *suffix, int rank,
                          const kd_dim *shape, kd_init init);

/* ids [B, T] (integers) -> [B, T, dim]; PREFIX.weight [vocab, dim]. */
kd_node_id kd_layer_embedding(kd_layers *L, const char *prefix, kd_node_id ids, int64_t vocab,
                              int64_t dim);
/* Tied embeddings: x [.., dim] -> [.., vocab], x @ table^T with table
 * [vocab, dim] an embedding's weight (no new parameter, no bias). */
kd_node_id kd_layer_unembed(kd_layers *L, kd_node_id x, kd_node_id table);
/* x [.., in] -> [.., out]; PREFIX.weight [in, out] normal(0, std), PREFIX.bias
 * [out] zeros when bias is set. */
kd_node_id kd_layer_linear(kd_layers *L, const char *prefix, kd_node_id x, int64_t out,
                           bool bias);
/* Over the last axis: (x - mean) / sqrt(var + eps) * weight + bias, the
 * biased variance (as torch.nn.LayerNorm); weight ones, bias zeros. */
kd_node_id kd_layer_layernorm(kd_layers *L, const char *prefix, kd_node_id x);
/* x / sqrt(mean(x^2) + eps) * weight; weight ones. */
kd_node_id kd_layer_rmsnorm(kd_layers *L, const char *prefix, kd_node_id x);
/* GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
 * computed as x / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3))), the same
 * function. */
kd_node_id kd_layer_gelu(kd_layers *L, kd_node_id x);
/* x sigmoid(x) = x / (1 + exp(-x)). */
kd_node_id kd_layer_silu(kd_layers *L, kd_node_id x);
/* GPT-2's MLP: PREFIX.proj(gelu(PREFIX.fc(x))), fc to `hidden`, with biases. */
kd_node_id kd_layer_mlp(kd_layers *L, const char *prefix, kd_node_id x, int64_t hidden);
/* LLaMA's: PREFIX.down(silu(PREFIX.gate(x)) * PREFIX.up(x)), no biases. */
kd_node_id kd_layer_swiglu(kd_layers *L, const char *prefix, kd_node_id x, int64_t hidden);
/* Causal multi-head self-attention of x [B, T, D]: PREFIX.qkv (D -> 3D, the
 * q, k and v columns in that order, as GPT-2's c_attn), softmax(q k^T /
 * sqrt(Dh)) over keys at positions <= the query's, PREFIX.proj (D -> D). */
kd_node_id kd_layer_attention(kd_layers *L, const char *prefix, kd_node_id x, int64_t heads);
/* x + f(x), the residual connection. */
kd_node_id kd_layer_residual(kd_layers *L, kd_node_id x, kd_node_id fx);

#endif /* KD_LAYERS_H */
