/* Running a PTX loss (codegen/ptx.h) on an NVIDIA GPU through the CUDA
 * driver (runtime/cuda.h, dlopen'd: nothing here links CUDA or LLVM).
 *
 * The PTX text carries its own description in its first line,
 *   // kdc-program: name=kd_loss nstages=2 nslots=1 nglobals=40 loss=37 grad=1
 *   //   teacher=0 student=0 labels=0 block=256 rows=3   (one line in the file)
 * so a .ptx file written by `kdc compile-loss --target ptx` runs with no
 * other input. A run, like the CPU's (runtime/lossrun.h): step 0; row
 * kernel 0 (one block of `block` threads per row); step 1; ...; step K.
 * Steps are one-warp kernels (KD_GPU_STEP_THREADS) that sum the per-row
 * values rows[slot * N + i] in double, each thread a contiguous chunk of
 * rows in order and then the chunks in order: the loss is deterministic (no
 * atomics).
 *
 * Legend: N = rows (tokens), V = vocabulary. */
#ifndef KD_GPULOSS_H
#define KD_GPULOSS_H

#include <stddef.h>
#include <stdint.h>

#include "cuda.h"
#include "lossrun.h"
#include "status.h"

#define KD_GPU_HEADER "// kdc-program:"
#define KD_GPU_STEP_THREADS 32 /* one warp runs each step */

typedef struct kd_gpu_program {
  char name[64];      /* kernel prefix: <name>_row<k>, <name>_step<k> */
  int nstages;        /* row kernels; steps are nstages + 1 */
  int nslots;         /* per-row arrays [nslots, N] (double) */
  int nglobals;       /* globals [nglobals] (double), indexed by graph node */
  int loss_index;     /* globals[loss_index] is the loss after the last step */
  int has_grad;
  int grad_dtype;     /* kd_dtype of grad: KD_F32 or KD_BF16 */
  int teacher_dtype;  /* kd_dtype, or -1 */
  int student_dtype;
  int has_labels;
  int block;          /* threads per block of a row kernel (the code assumes it) */
  unsigned rows_mask; /* bit k: stage k has a row kernel */
} kd_gpu_program;

/* The header line (without a newline) into buf; returns snprintf's count. */
int kd_gpu_program_format(const kd_gpu_program *p, char *buf, size_t cap);
/* Reads the header line at the start of ptx. */
kd_status kd_gpu_program_parse(const char *ptx, kd_gpu_program *p, char *err, size_t errlen);

typedef struct kd_gpu_loss kd_gpu_loss;

/* JIT-loads the PTX (the driver's log in err on failure) on the current
 * device of cu (kd_cuda_use_device first) and finds its kernels. */
kd_status kd_gpu_loss_load(kd_cuda *cu, const char *ptx, kd_gpu_loss **out, char *err, size_t errlen);
void kd_gpu_loss_free(kd_gpu_loss *l);
const kd_gpu_program *kd_gpu_loss_program(const kd_gpu_loss *l);

/* Device arrays already in place (the benchmark, a training step). */
typedef struct kd_gpu_args {
  kd_cu_devptr teacher, student, labels, grad; /* 0 where the loss has none */
  int64_t N, V;
} kd_gpu_args;

/* Enqueues every step and row kernel on stream; the work arrays grow to
 * N x nslots as needed (that allocation synchronises). */
kd_status kd_gpu_loss_launch(kd_gpu_loss *l, const kd_gpu_args *a, kd_cu_stream stream, char *err,
                             size_t errlen);
/* After a launch has completed: the loss. */
kd_status kd_gpu_loss_value(kd_gpu_loss *l, double *loss, char *err, size_t errlen);

/* Host arrays: checks io against the program (as kd_loss_run does), copies
 * in, launches, copies loss and grad back. */
kd_status kd_gpu_loss_eval(kd_gpu_loss *l, const kd_loss_io *io, char *err, size_t errlen);

#endif /* KD_GPULOSS_H */
