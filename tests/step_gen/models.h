/* The models the step-generation tests run: a tiny GPT (1 layer, width 8,
 * 2 heads, vocabulary 11, context 5) and a 2-layer model with rmsnorm,
 * SwiGLU, no position embedding and tied embeddings (the token table is
 * the output projection too), lowered from .kd text, with random
 * parameters, tokens and a random logits gradient. Header-only, as
 * testutil.h. */
#ifndef KD_STEPGEN_MODELS_H
#define KD_STEPGEN_MODELS_H


#include "check.h"
#include "lower_model.h"
#include "modeltest.h"
#include "testutil.h"

static const char sg_spec[] =
    "model gpt(layers, dim, heads, vocab = 11, ctx = 5) {\n"
    "  x = embed(tokens, vocab, dim) + embed(positions, ctx, dim)\n"
    "  repeat layers {\n"
    "    x = x + attention(layernorm(x), heads)\n"
    "    x = x + mlp(layernorm(x), 4 * dim)\n"
    "  }\n"
    "  logits = linear(layernorm(x), vocab)\n"
    "}\n"
    "model llama(layers, dim, heads, vocab = 11) {\n"
    "  x = embed(tokens, vocab, dim)\n"
    "  repeat layers {\n"
    "    x = x + attention(rmsnorm(x), heads)\n"
    "    x = x + swiglu(rmsnorm(x), 2 * dim)\n"
    "  }\n"
    "  logits = unembed(rmsnorm(x), tokens)\n"
    "}\n"
    "tiny = gpt(layers = 1, dim = 8, heads = 2)\n"
    "small = llama(layers = 2, dim = 8, heads = 2)\n"
    "objective {\n"
    "  loss = cross_entropy(tiny.logits, labels)\n"
    "}\n";

enum { SG_B = 2, SG_T = 5, SG_V = 11 };

/* The spec checked. */
static kd_program *sg_load(void) { return mt_load_text(sg_spec, "models.kd"); }

/* A model's inputs for the reference executor: every parameter uniform in
 * [-0.5, 0.5] (attention and the norms far from degenerate, logits of order
 * 1), tokens in [0, V), and "logits.grad" uniform in [-1, 1]. in[] holds
 * nparams + 2 entries; the arrays are the caller's to free (sg_free). */
typedef struct sg_inputs {
  size_t n;
  kd_ref_input *in;
  double **data; /* [nparams + 1]: the parameters, then logits.grad */
  int64_t tokens[SG_B * SG_T];
} sg_inputs;

static void sg_inputs_make(const kd_model *m, unsigned long long seed, sg_inputs *s) {
  size_t np = m->layers.nparams;
  s->n = np + 2;
  s->in = calloc(np + 2, sizeof *s->in);
  s->data = calloc(np + 1, sizeof *s->data);
  for (size_t i = 0; i < np; i++) {
    const kd_node *n = kd_graph_node(m->g, m->layers.params[i].id);
    int64_t shape[KD_MAX_RANK];
    size_t size = 1;
    for (int d = 0; d < n->rank; d++) size *= (size_t)(shape[d] = n->shape[d]);
    s->data[i] = malloc(size * sizeof(double));
    for (size_t k = 0; k < size; k++) s->data[i][k] = tu_uniform(&seed, -0.5, 0.5);
    s->in[i] = tu_input(m->layers.params[i].name, n->rank, shape, s->data[i]);
  }
  int64_t bt[2] = {SG_B, SG_T}, btv[3] = {SG_B, SG_T, SG_V};
  for (int i = 0; i < SG_B * SG_T; i++) s->tokens[i] = (int64_t)tu_uniform(&seed, 0, SG_V);
  s->in[np] = tu_input_i64("tokens", 2, bt, s->tokens);
  s->data[np] = malloc(SG_B * SG_T * SG_V * sizeof(double));
  for (int k = 0; k < SG_B * SG_T * SG_V; k++) s->data[np][k] = tu_uniform(&seed, -1, 1);
  s->in[np + 1] = tu_input("logits.grad", 3, btv, s->data[np]);
}

static void sg_inputs_free(sg_inputs *s) {
  for (size_t i = 0; s->data && i + 1 < s->n; i++) free(s->data[i]);
  free(s->data);
  free(s->in);
  memset(s, 0, sizeof *s);
}

/* Elements of an input. */
static size_t sg_size(const kd_ref_input *in) {
  size_t n = 1;
  for (int i = 0; i < in->rank; i++) n *= (size_t)in->shape[i];
  return n;
}

#endif /* KD_STEPGEN_MODELS_H */
