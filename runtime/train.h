/* The training loop: what `kdc run` runs in process and what a binary from
 * `kdc build` runs, over compiled parts handed in by the caller.
 *
 * The caller (the kdc tool, or a built binary's generated main) supplies:
 *   student    a step program (runtime/step.h) with slots "tokens" (i64
 *              [B, T]), one per parameter (by name), "logits" (f32 [B, T, V],
 *              written by the first phase), "logits.grad" (read by the
 *              second) and "grad.<name>" per parameter (written by it);
 *   teacher    a forward step program ("tokens", its parameters -> "logits"),
 *              or NULL when the objective reads no teacher;
 *   objective  the fused loss kernel (runtime/lossrun.h): teacher logits,
 *              student logits, labels -> loss, d loss / d student logits;
 *   eval_ce    the student's cross-entropy on labels, the validation metric.
 *
 * One step: `accumulate` micro-batches of random windows [B, T + 1] (tokens
 * are the first T of a window, labels the last T); for each: the teacher's
 * forward, the student's forward, the objective, the student's backward.
 * With reduction "mean" a micro-batch's loss and gradient are weighted by its
 * share of the step's valid tokens (labels != ignore_index), so the step
 * minimises the mean over all its valid tokens, not a mean of means; with
 * "sum" they add. Then the global norm is clipped (a non-finite norm skips
 * the update and says so), the learning rate read from the schedule, the
 * optimiser stepped, a metrics line written and the progress line drawn.
 * Every eval_every steps and at the end the validation split's windows are
 * all read once (kd_loader_eval_batch) and the cross-entropy over their
 * tokens reported.
 *
 * Files (paths given by the caller; NULL: not written):
 *   save_path   the weights alone (kd_params_save), every save_every steps
 *               and at the end: what a teacher `load`s and `kdc sample` reads
 *   ckpt_path   a checkpoint (runtime/checkpoint.h: weights, optimiser
 *               state, step, generator), written with save_path, at the end
 *               and on Ctrl-C; resume continues from it and gives the same
 *               losses as a run that was never stopped
 *   metrics_path  JSON lines (runtime/metrics.h), appended to when resuming
 * Ctrl-C (SIGINT) ends the current step, writes the checkpoint and returns
 * KD_OK with interrupted set. */
#ifndef KD_TRAIN_H
#define KD_TRAIN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "lossrun.h"
#include "optim.h"
#include "params.h"
#include "schedule.h"
#include "status.h"
#include "step.h"

typedef struct kd_train_config {
  const char *model_name;             /* the trained instance, for messages and metadata */
  const kd_step_prog *student;
  kd_params *params;                  /* the student's: init specs; values drawn here from seed */
  const kd_step_prog *teacher;        /* NULL: no teacher */
  const kd_params *teacher_params;    /* loaded by the caller */
  const kd_loss_program *objective;
  const kd_loss_program *eval_ce;     /* NULL: no evaluation */
  bool sum_reduction;                 /* the objective's reduction is "sum" */
  int64_t ignore_index;

  const char *data_path;              /* text (bytes) or a .bin token file */
  double split;                       /* the training fraction */
  int batch, seq;                     /* B, T: the programs' sizes */

  kd_optim_config optim;
  kd_lr_schedule schedule;               /* total = steps */
  int64_t steps, eval_every, save_every; /* 0: never (save: only at the end) */
  int64_t eval_batches;               /* at most this many validation batches; 0: all */
  double clip;                        /* 0: none */
  int accumulate;                     /* >= 1 */
  uint64_t seed;                      /* init and data */

  const char *save_path, *ckpt_path, *metrics_path;
  bool resume;                        /* continue from ckpt_path */
  int threads;                        /* <= 0: every core */
  FILE *log;                          /* progress and notes; NULL: silent */
} kd_train_config;

typedef struct kd_train_result {
  int64_t steps;         /* completed, in total (a resumed run counts the earlier ones) */
  double loss;           /* the last step's */
  double val_loss;       /* the last evaluation's; NaN when none ran */
  double tokens_per_s;   /* training tokens (B x T x accumulate per step) over this run's time */
  bool interrupted;      /* stopped by Ctrl-C */
  int64_t skipped;       /* steps whose gradient norm was not finite */
} kd_train_result;

/* Trains. Errors (a data file too short for one window, a slot the program
 * names that the trainer does not know, vocabularies that differ, an I/O
 * failure) are returned with a message; the files written before the error
 * stay valid (every write is atomic). */
kd_status kd_train_run(const kd_train_config *c, kd_train_result *r, char *err, size_t errlen);

#endif /* KD_TRAIN_H */
