/* Semantic checks: from parsed files to a checked program.
 *
 * kd_check_file parses a user's .kd file, the files it imports (transitively,
 * each path relative to the importing file) and the prelude (the .kd files of prelude/,
 * embedded in the binary), merges their top-level items into one namespace,
 * resolves every name and checks kinds, arities, settings and ranges
 * (docs/language.md lists every check). The result is a kd_program, which is
 * what the lowering to IR reads:
 *
 *   - symbols: every top-level definition (data, model, divergence, binding,
 *     objective, train), prelude first, then imports, then the user's file;
 *   - for every expression node, a kd_ref (kd_program_ref): its kind and, for
 *     names and calls, what the name resolved to;
 *   - the data, objective and train blocks, with their settings evaluated and
 *     defaults filled in (kd_data_info, kd_objective_info, kd_train_info).
 *
 * Resolution rules, in order: a block's locals (parameters, earlier bindings),
 * then the top-level namespace (the user's file shadows the prelude), then
 * the builtins (frontend/builtins.h). */
#ifndef KD_CHECK_H
#define KD_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ast.h"
#include "builtins.h"
#include "diag.h"

typedef enum kd_sym_kind {
  KD_SYM_DATA,       /* node: DATA; data: settings */
  KD_SYM_MODEL,      /* node: MODEL */
  KD_SYM_DIVERGENCE, /* node: DIVERGENCE */
  KD_SYM_INSTANCE,   /* node: BIND; model, args, file */
  KD_SYM_CONST,      /* node: BIND of a constant (`T = 2.0`); value_kind, value or str */
  KD_SYM_OBJECTIVE,  /* node: OBJECTIVE; objective */
  KD_SYM_TRAIN,      /* node: TRAIN; train */
} kd_sym_kind;

typedef struct kd_symbol kd_symbol;

typedef struct kd_data_info {
  char *path;      /* the text or tokens file, joined to the .kd file's folder */
  bool is_tokens;  /* `tokens "f.bin"` rather than `text "f.txt"` */
  int64_t vocab;   /* 256 for text unless given; 65536 for tokens unless given */
  double split;    /* default 0.9 */
  int64_t seq, batch, seed; /* defaults 128, 16, 1 */
} kd_data_info;

typedef struct kd_objective_info {
  const kd_ast *loss;   /* the right side of `loss = ...`, a per-token scalar */
  bool reduce_sum;      /* reduction = "sum"; false: "mean" over valid tokens */
  int64_t ignore_index; /* tokens whose label equals it do not count (default -100) */
} kd_objective_info;

typedef struct kd_train_info {
  const kd_symbol *instance;  /* the instance trained (KD_SYM_INSTANCE) */
  const kd_symbol *objective; /* the objective minimised */
  const kd_symbol *data;      /* the program's data block */
  const kd_builtin *optimizer;         /* KD_BI_OPTIMIZER */
  double optimizer_args[KD_MAX_NAMED]; /* in the order of optimizer->named, defaults filled in */
  const kd_builtin *schedule;          /* KD_BI_SCHEDULE */
  double schedule_args[KD_MAX_NAMED];
  int64_t steps;
  int64_t eval_every;   /* 0: never */
  char *save_path;      /* NULL: not saved; joined to the .kd file's folder */
  int64_t save_every;   /* 0: only at the end */
  int64_t seed;         /* default 1 */
  double clip;          /* 0: no clipping */
  int64_t accumulate;   /* default 1 */
} kd_train_info;

struct kd_symbol {
  kd_sym_kind kind;
  const char *name;   /* NULL for an unnamed objective */
  const kd_ast *node; /* the definition */
  bool in_prelude;
  /* KD_SYM_INSTANCE */
  const kd_symbol *model; /* the model instantiated; NULL for logits("file") */
  double *args;           /* one value per model parameter (defaults filled in) */
  char *file;             /* the `load` or logits() file joined to the .kd file's folder, or NULL */
  /* KD_SYM_CONST: value_kind INTEGER or NUMBER: value; STRING: str (the
   * bytes of a string literal, owned by the AST); KD_KIND_ERROR after an error */
  kd_kind value_kind;
  double value;
  const char *str;
  /* blocks */
  kd_data_info data;
  kd_objective_info objective;
  kd_train_info train;
};

/* What a name or call resolved to. */
typedef enum kd_ref_kind {
  KD_REF_NONE,    /* not a name (a literal, an operator) */
  KD_REF_SYMBOL,  /* a top-level definition: sym */
  KD_REF_BUILTIN, /* a builtin function, layer or name: builtin */
  KD_REF_LOCAL,   /* a parameter or a local binding: decl (a PARAM or ASSIGN node) */
} kd_ref_kind;

typedef struct kd_ref {
  kd_kind kind;             /* the expression's kind (for a CALL: its result's) */
  kd_ref_kind ref;          /* NAME and CALL nodes (a CALL: its callee's); a MEMBER
                               (teacher.logits): KD_REF_SYMBOL, sym the instance */
  const kd_symbol *sym;
  const kd_builtin *builtin;
  const kd_ast *decl;
} kd_ref;

typedef struct kd_program kd_program;

/* Every symbol, prelude first, in source order. */
size_t kd_program_nsymbols(const kd_program *p);
const kd_symbol *kd_program_symbol(const kd_program *p, size_t i);
/* A top-level name as the user's file sees it (user definitions shadow the
 * prelude), or NULL. */
const kd_symbol *kd_program_lookup(const kd_program *p, const char *name);
/* The data block and the train blocks, or NULL / 0. */
const kd_symbol *kd_program_data(const kd_program *p);
size_t kd_program_ntrains(const kd_program *p);
const kd_symbol *kd_program_train(const kd_program *p, size_t i);
/* The kind and resolution of an expression node of the program; NULL for a
 * node the checker did not visit (a statement, a node of another tree). */
const kd_ref *kd_program_ref(const kd_program *p, const kd_ast *expr);

typedef struct kd_check_options {
  bool no_prelude;    /* do not import the prelude (tests of the prelude itself) */
  bool no_file_check; /* do not warn about input files that do not exist (the loss
                         commands take their inputs from the command line) */
} kd_check_options;

/* Parses and checks `path` and everything it imports. Diagnostics go to
 * diag. Returns KD_OK and *out on success (warnings allowed); KD_ERR_IO when
 * the file cannot be read, KD_ERR_SYNTAX or KD_ERR_SEMANTIC after printing
 * the errors, KD_ERR_NOMEM; *out is NULL then. opts may be NULL. */
kd_status kd_check_file(const char *path, const kd_check_options *opts, kd_diag *diag,
                        kd_program **out);
void kd_program_free(kd_program *p);

#endif /* KD_CHECK_H */
