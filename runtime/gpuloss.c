/* A PTX loss on the GPU: the program header, module loading, launches. */
#include "gpuloss.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

struct kd_gpu_loss {
  kd_cuda *cu;
  kd_cu_module mod;
  kd_gpu_program p;
  kd_cu_function row[KD_LOSS_MAX_STAGES];
  kd_cu_function step[KD_LOSS_MAX_STAGES + 1];
  kd_cu_devptr rows, globals; /* [nslots, N] and [nglobals] doubles */
  int64_t rows_n;             /* N that rows has room for */
};

/* ---- the header line -------------------------------------------------------- */

int kd_gpu_program_format(const kd_gpu_program *p, char *buf, size_t cap) {
  return snprintf(buf, cap,
                  KD_GPU_HEADER " name=%s nstages=%d nslots=%d nglobals=%d loss=%d grad=%d gdtype=%d"
                                " teacher=%d student=%d labels=%d block=%d rows=%u",
                  p->name, p->nstages, p->nslots, p->nglobals, p->loss_index, p->has_grad,
                  p->grad_dtype, p->teacher_dtype, p->student_dtype, p->has_labels, p->block, p->rows_mask);
}

kd_status kd_gpu_program_parse(const char *ptx, kd_gpu_program *p, char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  size_t hl = strlen(KD_GPU_HEADER);
  if (strncmp(ptx, KD_GPU_HEADER, hl))
    return kd_errf(err, errlen, KD_ERR_FORMAT, "not a kdc PTX loss (no '%s' first line)", KD_GPU_HEADER);
  int n = sscanf(ptx + hl,
                 " name=%63s nstages=%d nslots=%d nglobals=%d loss=%d grad=%d gdtype=%d teacher=%d"
                 " student=%d labels=%d block=%d rows=%u",
                 p->name, &p->nstages, &p->nslots, &p->nglobals, &p->loss_index, &p->has_grad,
                 &p->grad_dtype, &p->teacher_dtype, &p->student_dtype, &p->has_labels, &p->block,
                 &p->rows_mask);
  if (n != 12 || (p->grad_dtype != KD_F32 && p->grad_dtype != KD_BF16) || p->nstages < 0 ||
      p->nstages > KD_LOSS_MAX_STAGES || p->nslots < 0 || p->nglobals < 1 ||
      p->loss_index < 0 || p->loss_index >= p->nglobals || p->block < 32 || p->block > 1024 ||
      p->block % 32 || (p->rows_mask >> p->nstages))
    return kd_errf(err, errlen, KD_ERR_FORMAT, "corrupt kdc PTX header");
  return KD_OK;
}

/* ---- loading ------------------------------------------------------------------ */

static kd_status find_kernel(kd_gpu_loss *l, const char *kind, int k, kd_cu_function *f, char *err,
                             size_t errlen) {
  char name[96];
  snprintf(name, sizeof name, "%s_%s%d", l->p.name, kind, k);
  return kd_cuda_function(l->cu, l->mod, name, f, err, errlen);
}

kd_status kd_gpu_loss_load(kd_cuda *cu, const char *ptx, kd_gpu_loss **out, char *err, size_t errlen) {
  *out = NULL;
  kd_gpu_loss *l = calloc(1, sizeof *l);
  if (!l) return KD_ERR_NOMEM;
  l->cu = cu;
  kd_status st = kd_gpu_program_parse(ptx, &l->p, err, errlen);
  if (!st) st = kd_cuda_module_load(cu, ptx, &l->mod, err, errlen);
  for (int k = 0; !st && k <= l->p.nstages; k++) {
    st = find_kernel(l, "step", k, &l->step[k], err, errlen);
    if (!st && k < l->p.nstages && (l->p.rows_mask >> k & 1u))
      st = find_kernel(l, "row", k, &l->row[k], err, errlen);
  }
  if (!st) st = kd_cuda_malloc(cu, (size_t)l->p.nglobals * sizeof(double), &l->globals, err, errlen);
  if (st) {
    kd_gpu_loss_free(l);
    return st;
  }
  *out = l;
  return KD_OK;
}

void kd_gpu_loss_free(kd_gpu_loss *l) {
  if (!l) return;
  kd_cuda_free(l->cu, l->rows);
  kd_cuda_free(l->cu, l->globals);
  kd_cuda_module_unload(l->cu, l->mod);
  free(l);
}

const kd_gpu_program *kd_gpu_loss_program(const kd_gpu_loss *l) { return &l->p; }

/* ---- running ------------------------------------------------------------------- */

static kd_status ensure_rows(kd_gpu_loss *l, int64_t N, char *err, size_t errlen) {
  if (N <= l->rows_n || l->p.nslots == 0) return KD_OK;
  kd_cuda_free(l->cu, l->rows);
  l->rows = 0;
  l->rows_n = 0;
  kd_status st = kd_cuda_malloc(l->cu, (size_t)N * (size_t)l->p.nslots * sizeof(double), &l->rows, err, errlen);
  if (!st) l->rows_n = N;
  return st;
}

kd_status kd_gpu_loss_launch(kd_gpu_loss *l, const kd_gpu_args *a, kd_cu_stream stream, char *err,
                             size_t errlen) {
  if (a->N < 0 || a->V < 1) return kd_errf(err, errlen, KD_ERR_INVALID, "N must be >= 0 and V >= 1");
  if (a->N > 0x7fffffff) return kd_errf(err, errlen, KD_ERR_UNSUPPORTED, "more than 2^31 - 1 rows");
  kd_status st = ensure_rows(l, a->N, err, errlen);
  if (st) return st;
  /* the kernels' parameters, in order (codegen/ptx.c) */
  kd_cu_devptr teacher = a->teacher, student = a->student, labels = a->labels, grad = a->grad;
  int64_t N = a->N, V = a->V;
  void *params[8] = {&teacher, &student, &labels, &grad, &l->rows, &l->globals, &N, &V};
  const unsigned one[3] = {1, 1, 1}, rows_grid[3] = {(unsigned)N, 1, 1};
  const unsigned block[3] = {(unsigned)l->p.block, 1, 1}, warp[3] = {KD_GPU_STEP_THREADS, 1, 1};
  for (int k = 0; !st && k <= l->p.nstages; k++) {
    st = kd_cuda_launch(l->cu, l->step[k], one, warp, 0, stream, params, err, errlen);
    if (!st && k < l->p.nstages && l->row[k] && N > 0)
      st = kd_cuda_launch(l->cu, l->row[k], rows_grid, block, 0, stream, params, err, errlen);
  }
  return st;
}

kd_status kd_gpu_loss_value(kd_gpu_loss *l, double *loss, char *err, size_t errlen) {
  return kd_cuda_dtoh(l->cu, loss, l->globals + (kd_cu_devptr)l->p.loss_index * sizeof(double), sizeof *loss,
                      NULL, err, errlen);
}

static kd_status check(const kd_gpu_program *p, const kd_loss_io *io, char *err, size_t errlen) {
  if (io->N < 0 || io->V < 1) return kd_errf(err, errlen, KD_ERR_INVALID, "N must be >= 0 and V >= 1");
  if (!io->student) return kd_errf(err, errlen, KD_ERR_INVALID, "no student logits");
  if ((int)io->student_dtype != p->student_dtype)
    return kd_errf(err, errlen, KD_ERR_INVALID, "the student's dtype is not the one the loss was compiled for");
  if (p->teacher_dtype >= 0 && !io->teacher) return kd_errf(err, errlen, KD_ERR_INVALID, "no teacher logits");
  if (p->teacher_dtype >= 0 && (int)io->teacher_dtype != p->teacher_dtype)
    return kd_errf(err, errlen, KD_ERR_INVALID, "the teacher's dtype is not the one the loss was compiled for");
  if (p->has_labels && !io->labels) return kd_errf(err, errlen, KD_ERR_INVALID, "the loss needs labels");
  if (p->has_grad && !io->grad) return kd_errf(err, errlen, KD_ERR_INVALID, "no gradient output array");
  if (p->has_grad && (int)io->grad_dtype != p->grad_dtype)
    return kd_errf(err, errlen, KD_ERR_INVALID, "the gradient's dtype is not the one the loss was compiled for");
  if (!io->loss) return kd_errf(err, errlen, KD_ERR_INVALID, "no loss output");
  return KD_OK;
}

/* A device copy of host array src (bytes; nothing when src is NULL). */
static kd_status upload(kd_cuda *cu, const void *src, size_t bytes, kd_cu_devptr *d, char *err, size_t errlen) {
  *d = 0;
  if (!src || !bytes) return KD_OK;
  kd_status st = kd_cuda_malloc(cu, bytes, d, err, errlen);
  if (!st) st = kd_cuda_htod(cu, *d, src, bytes, NULL, err, errlen);
  return st;
}

kd_status kd_gpu_loss_eval(kd_gpu_loss *l, const kd_loss_io *io, char *err, size_t errlen) {
  kd_status st = check(&l->p, io, err, errlen);
  if (st) return st;
  size_t nv = (size_t)io->N * (size_t)io->V;
  kd_gpu_args a = {0, 0, 0, 0, io->N, io->V};
  if (l->p.teacher_dtype >= 0)
    st = upload(l->cu, io->teacher, nv * kd_dtype_size((kd_dtype)l->p.teacher_dtype), &a.teacher, err, errlen);
  if (!st) st = upload(l->cu, io->student, nv * kd_dtype_size(io->student_dtype), &a.student, err, errlen);
  if (!st && l->p.has_labels)
    st = upload(l->cu, io->labels, (size_t)io->N * sizeof(int64_t), &a.labels, err, errlen);
  size_t gbytes = nv * kd_dtype_size((kd_dtype)l->p.grad_dtype);
  if (!st && l->p.has_grad && nv) st = kd_cuda_malloc(l->cu, gbytes, &a.grad, err, errlen);
  if (!st) st = kd_gpu_loss_launch(l, &a, NULL, err, errlen);
  if (!st) st = kd_cuda_synchronize(l->cu, err, errlen);
  if (!st) st = kd_gpu_loss_value(l, io->loss, err, errlen);
  if (!st && a.grad) st = kd_cuda_dtoh(l->cu, io->grad, a.grad, gbytes, NULL, err, errlen);
  kd_cuda_free(l->cu, a.teacher);
  kd_cuda_free(l->cu, a.student);
  kd_cuda_free(l->cu, a.labels);
  kd_cuda_free(l->cu, a.grad);
  return st;
}
