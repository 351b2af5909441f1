/* What `kdc run` and `kdc build` share: a train block of a checked spec made
 * into everything the trainer (runtime/train.h) needs except the compiled
 * loss kernels, which run JIT-compiles and build writes as object code.
 *
 *   student    the trained instance lowered (passes/lower_model.h), its
 *              forward + backward graph (passes/train_graph.h) lowered to a
 *              step program (codegen/stepgen.h) at the data block's B and T
 *   teacher    the instance the objective reads, forward only, and the file
 *              its weights are loaded from when the run starts
 *   objective  the loss graph of the objective the block minimises, through
 *              the pass pipeline; eval_ce the validation cross-entropy's
 *   files      where the weights, the checkpoint and the metrics go
 *
 * Files: with an output folder, every file the run writes goes there under
 * its own name (`save "student.safetensors"` -> OUT/student.safetensors),
 * and a teacher's relative `load` file is looked for there first (where an
 * earlier run saved it), then beside the spec. Without one, `save` paths are
 * beside the spec as written and the checkpoint and metrics go to the same
 * folder: INSTANCE.ckpt.safetensors, INSTANCE.metrics.jsonl. */
#ifndef KDC_TRAIN_PLAN_H
#define KDC_TRAIN_PLAN_H

#include "check.h"
#include "diag.h"
#include "ir.h"
#include "lower.h"
#include "lower_model.h"
#include "train.h"

typedef struct kdc_plan_options {
  const char *cmd;     /* "kdc run", for messages */
  const char *spec;    /* the .kd file's path */
  kd_diag *diag;       /* the one the spec was checked with: lowering errors go there */
  const char *out_dir; /* NULL: see above */
  int64_t steps;       /* > 0: instead of the block's */
} kdc_plan_options;

typedef struct kdc_train_plan {
  const kd_symbol *train, *student_sym, *teacher_sym;
  kd_model student, teacher;
  kd_params params, teacher_params;
  kd_step_prog *student_prog, *teacher_prog;
  kd_graph *objective, *eval_ce; /* after the pass pipeline */
  kd_lower_info info;
  char *teacher_file;            /* the weights the teacher loads (resolved) */
  char *save_path, *ckpt_path, *metrics_path, *data_path;
  kd_train_config config;        /* all but the loss programs, threads, log, resume */
} kdc_train_plan;

/* Builds the plan for train block `train` of prog. Messages go to stderr
 * prefixed by o->cmd; returns a KDC_EXIT_* status. need_teacher: the
 * teacher's weights file must exist now (run; a build only records it). */
int kdc_train_plan_make(const kd_program *prog, const kd_symbol *train, const kdc_plan_options *o,
                        bool need_teacher, kdc_train_plan *p);
void kdc_train_plan_free(kdc_train_plan *p);

#endif /* KDC_TRAIN_PLAN_H */
