/* PTX for a loss, through LLVM's NVPTX back end, from the same row schedule
 * as the CPU kernels (passes/fuse.h). docs/gpu.md describes the kernels.
 *
 * The graph follows the loss-graph contract (codegen/loss.h). The result is
 * PTX text whose first line describes the program (runtime/gpuloss.h), so
 * runtime/gpuloss.c runs it with the CUDA driver alone. Names no LLVM type. */
#ifndef KD_PTX_H
#define KD_PTX_H

#include <stddef.h>
#include <stdint.h>

#include "../ir/ir.h"
#include "../runtime/gpuloss.h"
#include "../runtime/status.h"

typedef struct kd_ptx_options {
  const char *name; /* kernel prefix ("kd_loss" when NULL) */
  const char *sm;   /* "sm_80" (default), "sm_86", "sm_89", "sm_90", ... */
  int block;        /* threads per row block: a multiple of 32 up to 1024; 0: 256 */
  kd_dtype grad_dtype; /* the stored gradient's: KD_F32 (zero-initialised) or KD_BF16 */
} kd_ptx_options;

/* Whether sm names a GPU the emitter knows ("sm_80" ...); the PTX ISA
 * version it gets in *ptx (e.g. 80 for sm_90), when not NULL. */
int kd_ptx_sm_known(const char *sm, int *ptx);

/* Schedules g (kd_fuse) and emits PTX into *out (malloc'd, free() it).
 * With ir != 0, the optimised LLVM module as text instead. prog may be NULL. */
kd_status kd_ptx_emit(const kd_graph *g, const kd_ptx_options *o, int ir, char **out,
                      kd_gpu_program *prog, char *err, size_t errlen);

/* For tests on machines without a GPU: the same kernels JIT-compiled for
 * the host CPU, where the thread and block index, the warp shuffle and the
 * barrier are calls to functions the process defines (found by the JIT):
 *   int kd_emu_tid(void);  int kd_emu_ctaid(void);  void kd_emu_barrier(void);
 *   float kd_emu_shfl_bfly(float x, int lane_xor);
 * The caller runs a row kernel on `block` threads per row, as a GPU would
 * (tests/gpu/test_ptx_emu.c). o->sm is ignored. */
typedef void (*kd_ptx_host_kernel)(const void *teacher, const void *student, const int64_t *labels,
                                   void *grad, double *rows, double *globals, int64_t N, int64_t V);
typedef struct kd_ptx_host kd_ptx_host;

kd_status kd_ptx_host_compile(const kd_graph *g, const kd_ptx_options *o, kd_ptx_host **out, char *err,
                              size_t errlen);
void kd_ptx_host_free(kd_ptx_host *h);
const kd_gpu_program *kd_ptx_host_program(const kd_ptx_host *h);
kd_ptx_host_kernel kd_ptx_host_row(const kd_ptx_host *h, int k);  /* NULL: the stage has no rows */
kd_ptx_host_kernel kd_ptx_host_step(const kd_ptx_host *h, int k);

#endif /* KD_PTX_H */
