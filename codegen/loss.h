/* The loss-kernel API: a differentiated, simplified loss graph in, a fused
 * native kernel out (JIT), or an object file exporting the same program
 * (AOT, see docs/abi.md).
 *
 * The graph follows the loss-graph contract: inputs "student" [N, V] (f32 or
 * bf16), optional "teacher" [N, V] and "labels" i64 [N, 1]; outputs "loss"
 * (rank 0) and optionally "grad" ([N, V], stored as f32 or, with
 * kd_loss_options.grad_dtype, bf16). The input dtypes in the graph
 * are the dtypes the kernel reads; kd_loss_eval checks the arrays against
 * them. Names no LLVM type. */
#ifndef KD_LOSS_H
#define KD_LOSS_H

#include <stddef.h>
#include <stdio.h>

#include "../ir/ir.h"
#include "../passes/fuse.h"
#include "../runtime/lossrun.h"
#include "../runtime/status.h"
#include "../runtime/threadpool.h"

typedef struct kd_loss kd_loss;

typedef struct kd_loss_options {
  const char *name;   /* symbol prefix ("kd_loss" when NULL): <name>_program, ... */
  int vector_width;   /* f32 lanes; 0: the host's widest */
  int nontemporal;    /* 1: gradient stores bypass the caches (aligned non-temporal
                         stores: less traffic when N x V is far beyond the last-level
                         cache, slower when the caller reads the gradient right back
                         from cache); 0: ordinary stores */
  kd_dtype grad_dtype; /* the stored gradient's: KD_F32 (zero-initialised) or KD_BF16
                          (computed in f32, rounded to nearest even when stored) */
} kd_loss_options;

/* Schedules g (kd_fuse), emits the kernels and JIT-compiles them. g must
 * outlive the kd_loss (the schedule points into it). o may be NULL. */
kd_status kd_loss_compile(const kd_graph *g, const kd_loss_options *o, kd_loss **out, char *err,
                          size_t errlen);
void kd_loss_free(kd_loss *l);

/* Computes io->loss and io->grad. Deterministic: the same result whatever
 * pool's thread count. pool may be NULL. */
kd_status kd_loss_eval(kd_loss *l, const kd_loss_io *io, kd_pool *pool, char *err, size_t errlen);

const kd_schedule *kd_loss_schedule(const kd_loss *l);
const kd_loss_program *kd_loss_program_of(const kd_loss *l);

/* AOT: writes the loss's module as an object file (or, with asm != 0,
 * assembly) for the host, exporting <name>_program (a kd_loss_program). */
kd_status kd_loss_emit_file(const kd_graph *g, const kd_loss_options *o, const char *path,
                            int asm_text, char *err, size_t errlen);

/* AOT: the C header for that object: the program's declaration and a
 * wrapper `kd_status NAME(teacher, student, labels, N, V, grad, loss, pool,
 * err, errlen)` taking only the inputs the loss has, in its dtypes. */
kd_status kd_loss_write_header(const kd_graph *g, const kd_loss_options *o, FILE *out);

/* AOT, a loss library (libNAME.so or .a: the object, the glue and the
 * embedded runtime, runtime/lossapi.h): its self-contained header, declaring
 * NAME_eval and NAME_info with plain C types (docs/abi.md), and the C glue
 * that defines those two over the runtime. */
kd_status kd_loss_write_abi_header(const kd_graph *g, const kd_loss_options *o, FILE *out);
kd_status kd_loss_write_abi_glue(const kd_loss_options *o, FILE *out);

#endif /* KD_LOSS_H */
