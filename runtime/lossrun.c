/* The host side of a compiled loss (see lossrun.h). */
#include "lossrun.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct row_job {
  kd_loss_row_fn fn;
  const kd_loss_args *args;
  float *scratch;  /* [workers, nscratch, V] */
  size_t per_worker;
} row_job;

static void run_rows(void *ctx, int64_t begin, int64_t end, int worker) {
  const row_job *j = ctx;
  j->fn(j->args, begin, end, j->scratch + (size_t)worker * j->per_worker);
}

static kd_status invalid(char *err, size_t errlen, const char *msg) {
  if (err && errlen) snprintf(err, errlen, "%s", msg);
  return KD_ERR_INVALID;
}

static kd_status check(const kd_loss_program *p, const kd_loss_io *io, char *err, size_t errlen) {
  if (p->magic != KD_LOSS_MAGIC || p->abi_version != KD_LOSS_ABI_VERSION)
    return invalid(err, errlen, "not a kdc loss program of this ABI version (recompile the loss)");
  if (p->nstages < 0 || p->nstages > KD_LOSS_MAX_STAGES || p->nscratch < 0)
    return invalid(err, errlen, "corrupt loss program");
  if (io->N < 0 || io->V < 1) return invalid(err, errlen, "N must be >= 0 and V >= 1");
  if (!io->student) return invalid(err, errlen, "no student logits");
  if ((int)io->student_dtype != p->student_dtype)
    return invalid(err, errlen, "the student's dtype is not the one the loss was compiled for");
  if (p->teacher_dtype >= 0 && !io->teacher) return invalid(err, errlen, "no teacher logits");
  if (p->teacher_dtype >= 0 && (int)io->teacher_dtype != p->teacher_dtype)
    return invalid(err, errlen, "the teacher's dtype is not the one the loss was compiled for");
  if (p->has_labels && !io->labels) return invalid(err, errlen, "the loss needs labels");
  if (p->has_grad && !io->grad) return invalid(err, errlen, "no gradient output array");
  if (p->has_grad && (int)io->grad_dtype != p->grad_dtype)
    return invalid(err, errlen, "the gradient's dtype is not the one the loss was compiled for");
  if (!io->loss) return invalid(err, errlen, "no loss output");
  return KD_OK;
}

kd_status kd_loss_run(const kd_loss_program *p, const kd_loss_io *io, kd_pool *pool, char *err,
                      size_t errlen) {
  kd_status st = check(p, io, err, errlen);
  if (st) return st;
  size_t nrows = (size_t)p->nslots * (size_t)io->N;
  size_t per_worker = (size_t)p->nscratch * (size_t)io->V;
  size_t nscratch = per_worker * (size_t)kd_pool_size(pool);
  double *rows = calloc(nrows ? nrows : 1, sizeof *rows);
  double *globals = calloc(p->nglobals ? (size_t)p->nglobals : 1, sizeof *globals);
  float *scratch = malloc((nscratch ? nscratch : 1) * sizeof *scratch);
  if (!rows || !globals || !scratch) {
    free(rows);
    free(globals);
    free(scratch);
    return KD_ERR_NOMEM;
  }
  kd_loss_args a = {io->teacher, io->student, io->labels, io->grad, rows, globals, io->N, io->V};
  /* about 256 KB of logits per chunk: few enough chunks to be cheap to hand
   * out, enough for two threads to balance */
  int64_t grain = 65536 / io->V + 1;
  for (int k = 0; k <= p->nstages; k++) {
    p->step[k](&a);
    if (k == p->nstages || !p->row[k] || io->N == 0) continue;
    row_job job = {p->row[k], &a, scratch, per_worker};
    kd_pool_parallel_for(pool, io->N, grain, run_rows, &job);
  }
  *io->loss = globals[p->loss_index];
  free(rows);
  free(globals);
  free(scratch);
  return KD_OK;
}
