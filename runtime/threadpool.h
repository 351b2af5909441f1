/* A fixed pool of persistent worker threads for row-parallel kernels.
 *
 * The pool is created once; each kd_pool_parallel_for wakes the sleeping
 * workers through a generation counter (no thread is created per call), the
 * calling thread takes part as worker 0, and the call returns when every chunk
 * has run. Chunks are handed out dynamically, so a worker that is slowed down
 * (the machine is shared) does not hold up the others.
 *
 * The worker index passed to fn is in [0, kd_pool_size(pool)) and is stable
 * for the duration of a call: kernels use it to pick per-thread scratch
 * (threads x V memory, never N x V).
 *
 * A parallel_for issued from inside fn (a nested call) runs serially on the
 * calling worker, under its worker index; a NULL pool runs serially as worker
 * 0; calls from several outside threads on one pool are
 * serialised. */
#ifndef KD_THREADPOOL_H
#define KD_THREADPOOL_H

#include <stdint.h>

#include "status.h"

typedef struct kd_pool kd_pool;

/* nthreads <= 0: as many workers as online CPUs. */
kd_status kd_pool_new(int nthreads, kd_pool **out);
void kd_pool_free(kd_pool *pool);
int kd_pool_size(const kd_pool *pool);

typedef void (*kd_pool_fn)(void *ctx, int64_t begin, int64_t end, int worker);

/* Splits [0, n) into chunks of at least `grain`, runs fn on every chunk across
   the workers (the calling thread is worker 0), returns when all are done. */
void kd_pool_parallel_for(kd_pool *pool, int64_t n, int64_t grain, kd_pool_fn fn, void *ctx);

#endif /* KD_THREADPOOL_H */
