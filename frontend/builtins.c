/* The builtin table (see builtins.h). docs/language.md mirrors it. */
#include "builtins.h"

#include <assert.h>
#include <string.h>

static const char *const kind_phrases[KD_KIND_COUNT] = {
  [KD_KIND_ERROR] = "an erroneous expression",
  [KD_KIND_INTEGER] = "an integer",
  [KD_KIND_NUMBER] = "a number",
  [KD_KIND_STRING] = "a string",
  [KD_KIND_IDS] = "token ids",
  [KD_KIND_SCALAR] = "a per-token scalar",
  [KD_KIND_TENSOR] = "a tensor over the vocabulary",
  [KD_KIND_DIST] = "a distribution",
  [KD_KIND_HIDDEN] = "model activations",
  [KD_KIND_DATA] = "a data block",
  [KD_KIND_MODEL] = "a model definition",
  [KD_KIND_INSTANCE] = "a model instance",
  [KD_KIND_DIVERGENCE] = "a divergence",
  [KD_KIND_OBJECTIVE] = "an objective",
  [KD_KIND_BUILTIN] = "a builtin function",
};

const char *kd_kind_phrase(kd_kind k) {
  return k >= 0 && k < KD_KIND_COUNT ? kind_phrases[k] : "?";
}

/* Shorthands for the rows below. */
#define H KD_KM(KD_KIND_HIDDEN)
#define T KD_KM(KD_KIND_TENSOR)
#define S KD_KM(KD_KIND_STRING)
#define IDS KD_KM(KD_KIND_IDS)
#define ANY KD_KM_VALUE
#define NUM KD_KM_NUM
#define FN(id, name, ctx, npos, pos, rule, res, doc) \
  [KD_BUILTIN_##id] = {KD_BUILTIN_##id, name, KD_BI_FUNCTION, ctx, npos, pos, {{0}}, rule, res, doc}
#define LAYER(id, name, npos, pos, doc) \
  [KD_BUILTIN_##id] = {KD_BUILTIN_##id, name, KD_BI_LAYER, KD_CTX_MODEL, npos, pos, {{0}}, \
                       KD_RES_FIXED, KD_KIND_HIDDEN, doc}
#define LAYER_NAMED(id, name, npos, pos, named, doc) \
  [KD_BUILTIN_##id] = {KD_BUILTIN_##id, name, KD_BI_LAYER, KD_CTX_MODEL, npos, pos, named, \
                       KD_RES_FIXED, KD_KIND_HIDDEN, doc}
#define NAME(id, name, ctx, kind, doc) \
  [KD_BUILTIN_##id] = {KD_BUILTIN_##id, name, KD_BI_NAME, ctx, 0, {0}, {{0}}, \
                       KD_RES_FIXED, kind, doc}
#define CALLED(id, name, cls, named, doc) \
  [KD_BUILTIN_##id] = {KD_BUILTIN_##id, name, cls, 0, 0, {0}, named, KD_RES_FIXED, \
                       KD_KIND_ERROR, doc}
#define P(...) {__VA_ARGS__}
#define ADAM_PARAMS {"lr", NUM, 1e-3}, {"beta1", NUM, 0.9}, {"beta2", NUM, 0.999}, \
                    {"eps", NUM, 1e-8}

const kd_builtin kd_builtins[KD_BUILTIN_COUNT] = {
  FN(SOFTMAX, "softmax", KD_CTX_DIVERGENCE | KD_CTX_OBJECTIVE, 1, P(T), KD_RES_FIXED,
     KD_KIND_DIST, "softmax(x): the distribution exp(x) / sum(exp(x)) of logits x"),
  FN(LOG_SOFTMAX, "log_softmax", KD_CTX_DIVERGENCE | KD_CTX_OBJECTIVE, 1, P(T), KD_RES_FIXED,
     KD_KIND_TENSOR, "log_softmax(x): x - log(sum(exp(x))), the log-probabilities of logits x"),
  FN(LOG, "log", KD_CTX_EXPR, 1, P(ANY), KD_RES_JOIN, KD_KIND_ERROR,
     "log(x): natural logarithm, elementwise (log(0) = -inf)"),
  FN(EXP, "exp", KD_CTX_EXPR, 1, P(ANY), KD_RES_JOIN, KD_KIND_ERROR, "exp(x): elementwise"),
  FN(SQRT, "sqrt", KD_CTX_EXPR, 1, P(ANY), KD_RES_JOIN, KD_KIND_ERROR, "sqrt(x): elementwise"),
  FN(ABS, "abs", KD_CTX_EXPR, 1, P(ANY), KD_RES_JOIN, KD_KIND_ERROR, "abs(x): elementwise"),
  FN(MAX, "max", KD_CTX_EXPR, 2, P(ANY, ANY), KD_RES_JOIN, KD_KIND_ERROR,
     "max(a, b): the larger of a and b, elementwise"),
  FN(MIN, "min", KD_CTX_EXPR, 2, P(ANY, ANY), KD_RES_JOIN, KD_KIND_ERROR,
     "min(a, b): the smaller of a and b, elementwise"),
  FN(WHERE, "where", KD_CTX_EXPR, 3, P(ANY, ANY, ANY), KD_RES_JOIN_TAIL, KD_KIND_ERROR,
     "where(c, a, b): a where c is non-zero, else b, elementwise"),
  FN(SUM, "sum", KD_CTX_DIVERGENCE | KD_CTX_OBJECTIVE, 1, P(KD_KM_VOCAB), KD_RES_FIXED,
     KD_KIND_SCALAR, "sum(x): the sum over the vocabulary; a per-token scalar"),
  FN(CROSS_ENTROPY, "cross_entropy", KD_CTX_OBJECTIVE, 2, P(T, IDS), KD_RES_FIXED,
     KD_KIND_SCALAR, "cross_entropy(logits, labels): -log_softmax(logits)[label], per token"),
  FN(STOP_GRADIENT, "stop_gradient", KD_CTX_EXPR, 1, P(ANY), KD_RES_SAME, KD_KIND_ERROR,
     "stop_gradient(x): x, through which no gradient flows"),
  FN(LOGITS, "logits", KD_CTX_TOP, 1, P(S), KD_RES_FIXED, KD_KIND_INSTANCE,
     "logits(\"file.npy\"): a teacher given as precomputed logits [tokens, V]"),

  NAME(LABELS, "labels", KD_CTX_OBJECTIVE, KD_KIND_IDS,
       "labels: the next-token targets of each position"),
  NAME(TOKENS, "tokens", KD_CTX_MODEL, KD_KIND_IDS, "tokens: the input token ids"),
  NAME(POSITIONS, "positions", KD_CTX_MODEL, KD_KIND_IDS,
       "positions: 0, 1, ... along the sequence"),

  LAYER(EMBED, "embed", 3, P(IDS, NUM, NUM),
        "embed(ids, count, dim): a learned table of count rows of width dim"),
  LAYER_NAMED(LINEAR, "linear", 2, P(H, NUM), P({"bias", KD_KM_INT, 1}),
              "linear(x, out, bias = 1): x @ W + b with out columns; bias = 0 leaves b out"),
  LAYER(LAYERNORM, "layernorm", 1, P(H), "layernorm(x): normalise each row, learned scale and shift"),
  LAYER(RMSNORM, "rmsnorm", 1, P(H), "rmsnorm(x): divide each row by its RMS, learned scale"),
  LAYER(ATTENTION, "attention", 2, P(H, NUM),
        "attention(x, heads): causal multi-head self-attention"),
  LAYER(MLP, "mlp", 2, P(H, NUM), "mlp(x, hidden): linear(gelu(linear(x, hidden)), dim of x)"),
  LAYER(GELU, "gelu", 1, P(H), "gelu(x): elementwise (tanh approximation)"),
  LAYER(SILU, "silu", 1, P(H), "silu(x): x * sigmoid(x), elementwise"),
  LAYER(SWIGLU, "swiglu", 2, P(H, NUM),
        "swiglu(x, hidden): the gated MLP linear(silu(linear(x, hidden)) * linear(x, hidden))"),
  LAYER(UNEMBED, "unembed", 2, P(H, IDS),
        "unembed(x, ids): x @ E^T, E the table of the model's embed(ids, ...) (tied embeddings)"),

  CALLED(ADAMW, "adamw", KD_BI_OPTIMIZER, P(ADAM_PARAMS, {"weight_decay", NUM, 0.01}),
         "AdamW (decoupled weight decay)"),
  CALLED(ADAM, "adam", KD_BI_OPTIMIZER, P(ADAM_PARAMS), "Adam"),
  CALLED(SGD, "sgd", KD_BI_OPTIMIZER,
         P({"lr", NUM, 1e-2}, {"momentum", NUM, 0}, {"weight_decay", NUM, 0}),
         "stochastic gradient descent with momentum"),
  CALLED(CONSTANT, "constant", KD_BI_SCHEDULE, P({"warmup", KD_KM_INT, 0}),
         "the learning rate, after a linear warmup of `warmup` steps"),
  CALLED(LINEAR_SCHEDULE, "linear", KD_BI_SCHEDULE, P({"warmup", KD_KM_INT, 0}),
         "warmup, then a linear decay to 0 at the last step"),
  CALLED(COSINE, "cosine", KD_BI_SCHEDULE, P({"warmup", KD_KM_INT, 0}),
         "warmup, then a cosine decay to 0 at the last step"),
};
static_assert(sizeof kd_builtins / sizeof kd_builtins[0] == KD_BUILTIN_COUNT,
              "every builtin id needs a row");

#undef H
#undef T
#undef S
#undef IDS
#undef ANY
#undef NUM

const kd_builtin *kd_builtin_find(const char *name, kd_builtin_class cls) {
  for (int i = 0; i < KD_BUILTIN_COUNT; i++) {
    const kd_builtin *b = &kd_builtins[i];
    if ((cls == KD_BI_CLASS_COUNT || b->cls == cls) && !strcmp(b->name, name)) return b;
  }
  return NULL;
}

int kd_builtin_nnamed(const kd_builtin *b) {
  int n = 0;
  while (n < KD_MAX_NAMED && b->named[n].name) n++;
  return n;
}


/* ---- settings ------------------------------------------------------------ */

const kd_setting_spec kd_settings[] = {
  {KD_BLOCK_DATA, "text", KD_SV_PATH, KD_EVERY_NO, false,
   "a text file whose bytes are the tokens (vocabulary 256)"},
  {KD_BLOCK_DATA, "tokens", KD_SV_PATH, KD_EVERY_NO, false,
   "a binary file of little-endian uint16 token ids"},
  {KD_BLOCK_DATA, "vocab", KD_SV_INT_POS, KD_EVERY_NO, false,
   "the vocabulary size (default 256 for text, 65536 for tokens)"},
  {KD_BLOCK_DATA, "split", KD_SV_FRACTION, KD_EVERY_NO, false,
   "the fraction of the file used for training; the rest validates (default 0.9)"},
  {KD_BLOCK_DATA, "seq", KD_SV_INT_POS, KD_EVERY_NO, false, "tokens per sequence (default 128)"},
  {KD_BLOCK_DATA, "batch", KD_SV_INT_POS, KD_EVERY_NO, false, "sequences per step (default 16)"},
  {KD_BLOCK_DATA, "seed", KD_SV_INT, KD_EVERY_NO, false, "the seed of batch sampling (default 1)"},

  {KD_BLOCK_TRAIN, "optimizer", KD_SV_OPTIMIZER, KD_EVERY_NO, false,
   "adamw, adam or sgd, with named arguments (default adamw)"},
  {KD_BLOCK_TRAIN, "schedule", KD_SV_SCHEDULE, KD_EVERY_NO, false,
   "constant, linear or cosine, with named arguments (default constant)"},
  {KD_BLOCK_TRAIN, "steps", KD_SV_INT_POS, KD_EVERY_NO, true, "optimizer steps to run"},
  {KD_BLOCK_TRAIN, "eval", KD_SV_NONE, KD_EVERY_REQUIRED, false,
   "evaluate on the validation split every N steps"},
  {KD_BLOCK_TRAIN, "save", KD_SV_OUTPUT, KD_EVERY_OPTIONAL, false,
   "write the trained weights (safetensors) at the end, and every N steps if given"},
  {KD_BLOCK_TRAIN, "seed", KD_SV_INT, KD_EVERY_NO, false,
   "the seed of weight initialisation (default 1)"},
  {KD_BLOCK_TRAIN, "clip", KD_SV_NUM_POS, KD_EVERY_NO, false,
   "clip the global gradient norm to this value"},
  {KD_BLOCK_TRAIN, "accumulate", KD_SV_INT_POS, KD_EVERY_NO, false,
   "batches whose gradients add up to one step (default 1)"},
  {KD_BLOCK_TRAIN, "objective", KD_SV_OBJECTIVE, KD_EVERY_NO, false,
   "the objective to minimise, when the program has several"},
};
const size_t kd_nsettings = sizeof kd_settings / sizeof kd_settings[0];

const kd_setting_spec *kd_setting_find(kd_block block, const char *key) {
  for (size_t i = 0; i < kd_nsettings; i++)
    if (kd_settings[i].block == block && !strcmp(kd_settings[i].key, key)) return &kd_settings[i];
  return NULL;
}

const char *kd_block_name(kd_block block) {
  return block == KD_BLOCK_DATA ? "data" : block == KD_BLOCK_TRAIN ? "train" : "?";
}
