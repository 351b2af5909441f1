/* Running a compiled loss: the C ABI between generated code and the host.
 *
 * The code generator (codegen/cpu.c) emits, for a loss, row kernels and
 * global steps plus one constant kd_loss_program that points at them; the
 * JIT hands its address to kd_loss_run, and an AOT object exports it as
 * <name>_program, so a program linked against the runtime alone (no LLVM)
 * runs it the same way. docs/abi.md describes the layout.
 *
 * A run: step 0; rows of stage 0 over the thread pool; step 1; rows of
 * stage 1; ...; step K. Row kernels write one double per row into each of
 * their reductions' row arrays (rows[slot * N + i]); the steps sum those in
 * row order, so the loss does not depend on the thread count.
 *
 * Legend: N = rows (tokens), V = vocabulary. */
#ifndef KD_LOSSRUN_H
#define KD_LOSSRUN_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "status.h"
#include "threadpool.h"

#define KD_LOSS_MAGIC 0x4b444c53u /* "KDLS" */
#define KD_LOSS_ABI_VERSION 3
#define KD_LOSS_MAX_STAGES 8

/* What the generated functions receive. */
typedef struct kd_loss_args {
  const void *teacher;   /* [N, V] f32 or bf16 (uint16_t), rows contiguous; NULL if unused */
  const void *student;   /* [N, V] */
  const int64_t *labels; /* [N]; NULL if unused */
  void *grad;            /* [N, V] d loss / d student, f32 or bf16 (uint16_t); NULL if
                            the loss has none */
  double *rows;          /* [nslots, N] per-row values of reductions over rows */
  double *globals;       /* [nglobals] scalars, indexed by graph node */
  int64_t N, V;
} kd_loss_args;

/* scratch: this thread's [nscratch, V] floats (the row cache), never shared
 * between concurrent calls. */
typedef void (*kd_loss_row_fn)(const kd_loss_args *a, int64_t row_begin, int64_t row_end,
                               float *scratch);
typedef void (*kd_loss_step_fn)(const kd_loss_args *a);

/* Emitted as a constant by the code generator; field order is the ABI. */
typedef struct kd_loss_program {
  uint32_t magic;       /* KD_LOSS_MAGIC */
  uint32_t abi_version; /* KD_LOSS_ABI_VERSION */
  int32_t nstages;      /* row kernels; steps are nstages + 1 */
  int32_t nslots;
  int32_t nglobals;
  int32_t loss_index;   /* globals[loss_index] is the loss after the last step */
  int32_t has_grad;
  int32_t teacher_dtype; /* kd_dtype, or -1 when the loss reads no teacher */
  int32_t student_dtype;
  int32_t has_labels;
  int32_t nscratch;     /* rows of V floats of scratch each thread needs */
  int32_t grad_dtype;   /* kd_dtype of grad: KD_F32, or KD_BF16 (rounded to nearest even) */
  kd_loss_row_fn row[KD_LOSS_MAX_STAGES];       /* NULL: the stage has no row work */
  kd_loss_step_fn step[KD_LOSS_MAX_STAGES + 1];
} kd_loss_program;

/* The caller's arrays. */
typedef struct kd_loss_io {
  const void *teacher;  /* [N, V], C order */
  kd_dtype teacher_dtype;
  const void *student;  /* [N, V] */
  kd_dtype student_dtype;
  const int64_t *labels; /* [N], or NULL when the loss has no labels */
  int64_t N, V;
  void *grad;           /* out [N, V]; required when the loss has a gradient */
  double *loss;         /* out */
  kd_dtype grad_dtype;  /* grad's: KD_F32 (zero-initialised) or KD_BF16, as compiled */
} kd_loss_io;

/* Checks io against p and runs it; the work arrays are N x (slots) and
 * nglobals doubles, and threads x nscratch x V floats: never N x V. pool
 * may be NULL (one thread). */
kd_status kd_loss_run(const kd_loss_program *p, const kd_loss_io *io, kd_pool *pool, char *err,
                      size_t errlen);

#endif /* KD_LOSSRUN_H */
