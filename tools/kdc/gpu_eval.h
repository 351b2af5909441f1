/* `kdc eval-loss --device cuda`: a loss graph compiled to PTX (codegen/ptx.h)
 * and run on GPU 0 through the CUDA driver (runtime/gpuloss.h). */
#ifndef KDC_GPU_EVAL_H
#define KDC_GPU_EVAL_H

#include "ir.h"
#include "lossrun.h"

/* Compiles g for the GPU it finds and evaluates io. Errors go to stderr
 * prefixed by cmd ("no CUDA driver (libcuda.so.1 not found)" where there
 * is none); returns a KDC_EXIT_* status. Times in seconds. */
int kdc_eval_cuda(const char *cmd, const kd_graph *g, const kd_loss_io *io, double *t_compile,
                  double *t_run);

#endif /* KDC_GPU_EVAL_H */
