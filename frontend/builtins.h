/* The builtin table: every name the language knows without a definition.
 *
 * One row per builtin function, model layer, optimizer, schedule, context
 * name (labels, tokens, positions) and block setting. The checker reads it to
 * check calls and settings; the lowering to IR reads the same rows (through
 * kd_builtin_find and the `id` field) to pick the op and the defaults of
 * arguments that were left out. docs/language.md lists the same rows; a new
 * builtin is one row here and one line there. */
#ifndef KD_BUILTINS_H
#define KD_BUILTINS_H

#include <stdbool.h>
#include <stddef.h>

/* What an expression is. The checker computes one kind per expression. */
typedef enum kd_kind {
  KD_KIND_ERROR,      /* already reported: checks stay silent about it */
  KD_KIND_INTEGER,    /* a constant written with digits only (or computed from such) */
  KD_KIND_NUMBER,     /* a real constant */
  KD_KIND_STRING,
  KD_KIND_IDS,        /* per-token integers: labels, tokens, positions   [B, T] */
  KD_KIND_SCALAR,     /* a per-token scalar (a divergence's result)       [B, T] */
  KD_KIND_TENSOR,     /* per-token values over the vocabulary (logits)    [B, T, V] */
  KD_KIND_DIST,       /* a per-token distribution over the vocabulary     [B, T, V] */
  KD_KIND_HIDDEN,     /* activations inside a model                       [B, T, dim] */
  KD_KIND_DATA,       /* a data block */
  KD_KIND_MODEL,      /* a model definition */
  KD_KIND_INSTANCE,   /* a bound model: student, teacher */
  KD_KIND_DIVERGENCE, /* a divergence definition */
  KD_KIND_OBJECTIVE,  /* a named objective */
  KD_KIND_BUILTIN,    /* a builtin function or layer, named without a call */
  KD_KIND_COUNT
} kd_kind;

#define KD_KM(k) (1u << (k))
/* Sets of kinds accepted by an argument. */
#define KD_KM_NUM (KD_KM(KD_KIND_INTEGER) | KD_KM(KD_KIND_NUMBER))
#define KD_KM_INT KD_KM(KD_KIND_INTEGER)
#define KD_KM_VOCAB (KD_KM(KD_KIND_TENSOR) | KD_KM(KD_KIND_DIST))
#define KD_KM_VALUE (KD_KM_NUM | KD_KM(KD_KIND_IDS) | KD_KM(KD_KIND_SCALAR) | \
                     KD_KM_VOCAB | KD_KM(KD_KIND_HIDDEN))

/* "a distribution", "a model definition", ... for messages. */
const char *kd_kind_phrase(kd_kind k);

/* Where a builtin may be used. */
enum {
  KD_CTX_MODEL = 1u << 0,      /* a model body */
  KD_CTX_DIVERGENCE = 1u << 1, /* a divergence body */
  KD_CTX_OBJECTIVE = 1u << 2,  /* an objective's bindings */
  KD_CTX_TOP = 1u << 3,        /* a top-level binding's right side, a block setting */
  KD_CTX_EXPR = KD_CTX_MODEL | KD_CTX_DIVERGENCE | KD_CTX_OBJECTIVE,
};

typedef enum kd_builtin_class {
  KD_BI_FUNCTION,  /* softmax, log, sum, cross_entropy, ... */
  KD_BI_LAYER,     /* embed, linear, attention, ...: model bodies only */
  KD_BI_NAME,      /* labels, tokens, positions: a value, not a call */
  KD_BI_OPTIMIZER, /* adamw, adam, sgd: the `optimizer` setting */
  KD_BI_SCHEDULE,  /* constant, linear, cosine: the `schedule` setting */
  KD_BI_CLASS_COUNT
} kd_builtin_class;

/* How the result kind follows from the arguments. */
typedef enum kd_result_rule {
  KD_RES_FIXED, /* always `result` */
  KD_RES_JOIN,  /* the join of the positional arguments' kinds (log(p) is a tensor) */
  KD_RES_SAME,  /* the first argument's kind, distributions kept (stop_gradient) */
  KD_RES_JOIN_TAIL /* the join of every argument but the first (where) */
} kd_result_rule;

/* Identifies a builtin for the passes that lower it, so they switch on an
 * enum rather than compare strings. */
typedef enum kd_builtin_id {
  /* functions */
  KD_BUILTIN_SOFTMAX, KD_BUILTIN_LOG_SOFTMAX, KD_BUILTIN_LOG, KD_BUILTIN_EXP,
  KD_BUILTIN_SQRT, KD_BUILTIN_ABS, KD_BUILTIN_MAX, KD_BUILTIN_MIN, KD_BUILTIN_WHERE,
  KD_BUILTIN_SUM, KD_BUILTIN_CROSS_ENTROPY, KD_BUILTIN_STOP_GRADIENT, KD_BUILTIN_LOGITS,
  /* names */
  KD_BUILTIN_LABELS, KD_BUILTIN_TOKENS, KD_BUILTIN_POSITIONS,
  /* layers */
  KD_BUILTIN_EMBED, KD_BUILTIN_LINEAR, KD_BUILTIN_LAYERNORM, KD_BUILTIN_RMSNORM,
  KD_BUILTIN_ATTENTION, KD_BUILTIN_MLP, KD_BUILTIN_GELU, KD_BUILTIN_SILU, KD_BUILTIN_SWIGLU,
  KD_BUILTIN_UNEMBED,
  /* optimizers */
  KD_BUILTIN_ADAMW, KD_BUILTIN_ADAM, KD_BUILTIN_SGD,
  /* schedules */
  KD_BUILTIN_CONSTANT, KD_BUILTIN_LINEAR_SCHEDULE, KD_BUILTIN_COSINE,
  KD_BUILTIN_COUNT
} kd_builtin_id;

#define KD_MAX_NAMED 6

/* A named parameter with its default. */
typedef struct kd_named_param {
  const char *name;
  unsigned kinds;  /* KD_KM_* of accepted values */
  double def;      /* the default value */
} kd_named_param;

typedef struct kd_builtin {
  kd_builtin_id id;
  const char *name;
  kd_builtin_class cls;
  unsigned contexts;           /* KD_CTX_* where the name may be used */
  int npos;                    /* positional arguments, all required */
  unsigned pos[3];             /* KD_KM_* accepted by each positional argument */
  kd_named_param named[KD_MAX_NAMED]; /* optional named arguments; name NULL ends */
  kd_result_rule rule;
  kd_kind result;              /* KD_RES_FIXED: the result; KD_BI_NAME: the value's kind */
  const char *doc;             /* one line, for docs and --help */
} kd_builtin;

/* The whole table, indexed by kd_builtin_id. */
extern const kd_builtin kd_builtins[KD_BUILTIN_COUNT];

/* By name and class (KD_BI_CLASS_COUNT: any class); NULL when unknown. */
const kd_builtin *kd_builtin_find(const char *name, kd_builtin_class cls);
/* How many named parameters b has. */
int kd_builtin_nnamed(const kd_builtin *b);

/* ---- block settings ---------------------------------------------------- */

typedef enum kd_block { KD_BLOCK_DATA, KD_BLOCK_TRAIN, KD_BLOCK_COUNT } kd_block;

/* What a setting's value must be. */
typedef enum kd_setting_value {
  KD_SV_NONE,      /* no value: `eval every 200` */
  KD_SV_PATH,      /* a string naming an input file, relative to the .kd file */
  KD_SV_OUTPUT,    /* a string naming an output file */
  KD_SV_INT_POS,   /* an integer > 0 */
  KD_SV_INT,       /* an integer >= 0 */
  KD_SV_FRACTION,  /* a number in (0, 1) */
  KD_SV_NUM_POS,   /* a number > 0 */
  KD_SV_OPTIMIZER, /* an optimizer: a name or a call with named arguments */
  KD_SV_SCHEDULE,  /* a schedule: a name or a call with named arguments */
  KD_SV_OBJECTIVE, /* the name of an objective */
} kd_setting_value;

typedef enum kd_every { KD_EVERY_NO, KD_EVERY_OPTIONAL, KD_EVERY_REQUIRED } kd_every;

typedef struct kd_setting_spec {
  kd_block block;
  const char *key;
  kd_setting_value value;
  kd_every every;
  bool required;
  const char *doc;
} kd_setting_spec;

extern const kd_setting_spec kd_settings[];
extern const size_t kd_nsettings;

const kd_setting_spec *kd_setting_find(kd_block block, const char *key);
const char *kd_block_name(kd_block block); /* "data", "train" */

#endif /* KD_BUILTINS_H */
