/* Lowering: a checked program's objective becomes a loss graph.
 *
 * The graph follows the loss-graph contract (codegen/loss.h, passes/passes.h):
 *   inputs   "student" f32|bf16 [N, V]   always present
 *            "teacher" f32|bf16 [N, V]   when the objective reads a teacher; when
 *                                        it reads several, one "teacher.NAME"
 *                                        per teacher instance NAME
 *            "labels"  i64 [N, 1]        when the objective reads labels, or
 *                                        when the caller asks for masking
 *   output   "loss"    f32 []            the objective reduced over tokens
 * Legend: N = tokens (rows), V = vocabulary.
 *
 * An expression is evaluated by the lowering, not translated node by node:
 * numbers (hyperparameters, T, mixing weights) are folded while lowering, a
 * divergence call is inlined with its distributions bound to graph nodes and
 * its hyperparameters to numbers, and where(c, a, b) whose condition is a
 * number lowers only the branch taken (how jsd's endpoints beta = 0 and 1
 * become exactly fkl and rkl, with no 0 / 0 anywhere in the graph).
 *
 * Reduction: with labels, valid = labels != ignore_index and a masked row's
 * per-token loss is replaced by 0 with SELECT (a NaN in a masked row cannot
 * leak, and the row's gradient is 0); "mean" divides the sum by
 * max(number of valid rows, 1), so an all-masked batch gives loss 0 and
 * gradient 0; "sum" does not divide. Without labels every row is valid.
 *
 * The objective's reserved bindings: loss (required), reduction ("mean" or
 * "sum"), ignore_index (an integer, -100 by default), vocab_align ("error",
 * "pad" or "truncate": what eval-loss does when the teacher's and the
 * student's vocabularies differ). Every other binding is a local let. */
#ifndef KD_LOWER_H
#define KD_LOWER_H

#include <stdbool.h>

#include "../frontend/ast.h"
#include "../frontend/check.h"
#include "../ir/ir.h"

typedef enum kd_vocab_align {
  KD_ALIGN_ERROR,    /* teacher and student vocabularies must agree */
  KD_ALIGN_PAD,      /* the shorter one is padded with -inf logits (probability 0) */
  KD_ALIGN_TRUNCATE, /* the longer one is cut to the shorter */
} kd_vocab_align;

#define KD_LOWER_MAX_TEACHERS 8

typedef struct kd_lower_options {
  const char *objective;  /* the objective's name; NULL: the one `train` (else the first
                             train block) minimises, else the unnamed one, else the only one */
  kd_dtype teacher_dtype; /* KD_F32 or KD_BF16 (zero-initialised: KD_F32) */
  kd_dtype student_dtype;
  bool labels;            /* add "labels" and mask rows even if the objective reads no labels */
  const kd_symbol *train; /* the train block whose instance is the student; NULL: the first */
} kd_lower_options;

/* What the caller needs to know beyond the graph. */
typedef struct kd_lower_info {
  int nteachers;          /* teacher inputs: 0, 1 ("teacher") or more ("teacher.NAME") */
  const kd_symbol *teachers[KD_LOWER_MAX_TEACHERS]; /* their instances, in that order */
  bool uses_labels;       /* the objective itself reads labels (cross_entropy(..., labels)) */
  bool sum;               /* reduction = "sum" (else "mean") */
  long long ignore_index;
  kd_vocab_align vocab_align;
} kd_lower_info;

/* Lowers the objective. Errors (an objective that is missing, a loss that is
 * not a per-token scalar, a construct the loss compiler cannot lower yet)
 * go to diag with the offending source location,
 * and return KD_ERR_SEMANTIC. The instance a train block trains is the
 * student (without a train block, the instance named `student`); every other
 * instance whose .logits the objective reads is a teacher. info may be
 * NULL. */
kd_status kd_lower(const kd_program *prog, const kd_lower_options *opt, kd_diag *diag,
                   kd_graph **out, kd_lower_info *info);

/* The loss graph of `loss = cross_entropy(student.logits, labels)` with
 * reduction "mean" and the given ignore_index, whatever a spec says: the
 * trainer's validation metric. KD_ERR_NOMEM is the only failure. */
kd_status kd_lower_cross_entropy(long long ignore_index, kd_graph **out);

#endif /* KD_LOWER_H */
