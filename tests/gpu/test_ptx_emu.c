/* The GPU kernels' logic checked without a GPU: codegen/ptx.c's kernels
 * JIT-compiled for the host (kd_ptx_host_compile) and run the way a GPU
 * runs them, one POSIX thread per GPU thread, a block of 64 (2 warps, so
 * both the warp shuffles and the cross-warp merge through shared memory
 * run) per row, rows one after another; against the reference executor
 * (gcheck.h). Shapes: V = 37 (the one-column loop only), 1024 (the 4-wide
 * loop only; 4 columns x 64 threads = 256 a step, 4 steps), 1030 (V % 4
 * != 0 again, one column per step) and 256000 (the largest vocabulary the
 * issue names). Only PTX-level details (the
 * instruction selection, ptxas) are left to gpu.ptx.* and gpu.run. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gcheck.h"
#include "ptx.h"

#define BLOCK 64

/* ---- the emulated GPU: what the kernels call --------------------------------------- */

static _Thread_local int emu_tid, emu_ctaid;
static pthread_barrier_t emu_bar;
static float emu_slot[BLOCK];

/* Called from JIT code (declared in ptx.h); prototypes for -Wmissing-prototypes. */
int kd_emu_tid(void);
int kd_emu_ctaid(void);
void kd_emu_barrier(void);
float kd_emu_shfl_bfly(float x, int lane_xor);

int kd_emu_tid(void) { return emu_tid; }
int kd_emu_ctaid(void) { return emu_ctaid; }
void kd_emu_barrier(void) { pthread_barrier_wait(&emu_bar); }

/* Every thread of the block calls it together (the kernels shuffle in
 * uniform control flow), so a block-wide barrier stands in for the warp's. */
float kd_emu_shfl_bfly(float x, int lane_xor) {
  emu_slot[emu_tid] = x;
  pthread_barrier_wait(&emu_bar);
  float y = emu_slot[(emu_tid & ~31) | ((emu_tid & 31) ^ lane_xor)];
  pthread_barrier_wait(&emu_bar);
  return y;
}

typedef struct launch {
  kd_ptx_host_kernel fn;
  const kd_loss_io *io;
  double *rows, *globals;
  int64_t blocks;
  int tid;
} launch;

/* One GPU thread through every block, the blocks one after another (a
 * barrier between them: they share emu_slot and the shared array). */
static void *thread_main(void *arg) {
  launch *l = arg;
  emu_tid = l->tid;
  for (int64_t b = 0; b < l->blocks; b++) {
    emu_ctaid = (int)b;
    l->fn(l->io->teacher, l->io->student, l->io->labels, l->io->grad, l->rows, l->globals, l->io->N, l->io->V);
    pthread_barrier_wait(&emu_bar);
  }
  return NULL;
}

/* fn over `blocks` blocks of `threads` threads */
static void grid(kd_ptx_host_kernel fn, const kd_loss_io *io, double *rows, double *globals, int64_t blocks,
                 int threads) {
  launch l[BLOCK > KD_GPU_STEP_THREADS ? BLOCK : KD_GPU_STEP_THREADS];
  pthread_t th[sizeof l / sizeof l[0]];
  pthread_barrier_init(&emu_bar, NULL, (unsigned)threads);
  for (int t = 0; t < threads; t++) {
    l[t] = (launch){fn, io, rows, globals, blocks, t};
    if (pthread_create(&th[t], NULL, thread_main, &l[t])) {
      /* the started threads would wait at the barrier forever */
      fprintf(stderr, "cannot start %d threads\n", threads);
      abort();
    }
  }
  for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
  pthread_barrier_destroy(&emu_bar);
}

/* ---- the runner ---------------------------------------------------------------- */

static kd_status emu_compile(void *ctx, const kd_graph *g, kd_dtype grad_dtype, void **h, char *err,
                             size_t errlen) {
  (void)ctx;
  kd_ptx_options o = {.block = BLOCK, .grad_dtype = grad_dtype};
  return kd_ptx_host_compile(g, &o, (kd_ptx_host **)h, err, errlen);
}

/* As runtime/gpuloss.c's launch: step 0, rows 0, step 1, ..., step K. */
static kd_status emu_eval(void *hp, const kd_loss_io *io, char *err, size_t errlen) {
  const kd_ptx_host *h = hp;
  const kd_gpu_program *p = kd_ptx_host_program(h);
  double *rows = calloc((size_t)(io->N * p->nslots) + 1, sizeof *rows);
  double *globals = calloc((size_t)p->nglobals, sizeof *globals);
  kd_status st = rows && globals ? KD_OK : KD_ERR_NOMEM;
  for (int k = 0; !st && k <= p->nstages; k++) {
    grid(kd_ptx_host_step(h, k), io, rows, globals, 1, KD_GPU_STEP_THREADS);
    if (k < p->nstages && kd_ptx_host_row(h, k)) grid(kd_ptx_host_row(h, k), io, rows, globals, io->N, BLOCK);
  }
  if (st) snprintf(err, errlen, "out of memory");
  if (!st) *io->loss = globals[p->loss_index];
  free(rows);
  free(globals);
  return st;
}

static void emu_release(void *h) { kd_ptx_host_free(h); }

int main(void) {
  static const int64_t shapes[][2] = {{5, 37}, {3, 1024}, {3, 1030}, {2, 256000}};
  static const gc_runner run = {emu_compile, emu_eval, emu_release, BLOCK};
  return gc_run_all(&run, NULL, shapes, sizeof shapes / sizeof shapes[0]) != 0;
}
