/* Persistent pthread workers driven by a generation counter.
 *
 * One call of kd_pool_parallel_for:
 *   caller: publish the job, bump `gen` (release), wake sleepers, run chunks
 *           as worker 0, wait until `pending` (the other workers) reaches 0.
 *   worker: see `gen` move (spin a little, then sleep on `wake`), run chunks
 *           until `next` passes the last one, decrement `pending`; the last
 *           one wakes the caller.
 * Both sides spin briefly before sleeping: back-to-back calls (one per
 * kernel launch) then cost a few microseconds, while an idle pool sleeps. */
#include "threadpool.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* Chunks per worker: a few, so a worker slowed by the shared machine does
   not hold up the call, but few enough that each chunk stays long. */
enum { KD_POOL_CHUNKS_PER_WORKER = 4, KD_POOL_SPIN = 1 << 12, KD_POOL_MAX = 1024 };

#if defined(__x86_64__) || defined(__i386__)
#define kd_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define kd_cpu_relax() __asm__ __volatile__("yield")
#else
#define kd_cpu_relax() ((void)0)
#endif

typedef struct kd_pool_worker {
  kd_pool *pool;
  int index;
  pthread_t thread;
} kd_pool_worker;

struct kd_pool {
  int size;               /* workers, the caller included */
  int spin;               /* spins before sleeping; 0 when oversubscribed */
  kd_pool_worker *workers; /* [size]; entry 0 is the caller, no thread */

  pthread_mutex_t mu;
  pthread_cond_t wake; /* workers sleep here for a new generation */
  pthread_cond_t done; /* the caller sleeps here for pending == 0 */
  pthread_mutex_t call_mu; /* serialises callers from different threads */
  atomic_uint_fast64_t gen;
  atomic_int pending;
  int quit; /* under mu */

  /* The current job, written by the caller before gen moves. */
  kd_pool_fn fn;
  void *ctx;
  int64_t n, nchunks;
  atomic_int_fast64_t next;
};

/* The pool whose job this thread is running, and its worker index there, so
   that a nested call runs serially, under the same index (the same scratch),
   instead of waiting on workers that are busy running its parent. */
static _Thread_local const kd_pool *kd_pool_running;
static _Thread_local int kd_pool_running_worker;

/* Chunk c of nchunks even pieces of [0, n): sizes differ by at most one. */
static void kd_pool_chunk(int64_t n, int64_t nchunks, int64_t c, int64_t *begin, int64_t *end) {
  int64_t base = n / nchunks, rem = n % nchunks;
  *begin = c * base + (c < rem ? c : rem);
  *end = *begin + base + (c < rem ? 1 : 0);
}

static void kd_pool_run_chunks(kd_pool *pool, int worker) {
  kd_pool_running = pool;
  kd_pool_running_worker = worker;
  for (;;) {
    int64_t c = atomic_fetch_add_explicit(&pool->next, 1, memory_order_relaxed);
    if (c >= pool->nchunks) break;
    int64_t begin, end;
    kd_pool_chunk(pool->n, pool->nchunks, c, &begin, &end);
    pool->fn(pool->ctx, begin, end, worker);
  }
  kd_pool_running = NULL;
}

/* Waits until gen differs from seen; returns the new generation. */
static uint64_t kd_pool_wait_gen(kd_pool *pool, uint64_t seen) {
  for (int i = 0; i < pool->spin; i++) {
    uint64_t g = atomic_load_explicit(&pool->gen, memory_order_acquire);
    if (g != seen) return g;
    kd_cpu_relax();
  }
  pthread_mutex_lock(&pool->mu);
  uint64_t g;
  while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen)
    pthread_cond_wait(&pool->wake, &pool->mu);
  pthread_mutex_unlock(&pool->mu);
  return g;
}

static void *kd_pool_main(void *arg) {
  kd_pool_worker *w = arg;
  kd_pool *pool = w->pool;
  uint64_t seen = 0;
  for (;;) {
    seen = kd_pool_wait_gen(pool, seen);
    pthread_mutex_lock(&pool->mu);
    int quit = pool->quit;
    pthread_mutex_unlock(&pool->mu);
    if (quit) return NULL;
    kd_pool_run_chunks(pool, w->index);
    if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock(&pool->mu);
      pthread_cond_signal(&pool->done);
      pthread_mutex_unlock(&pool->mu);
    }
  }
}

static void kd_pool_wait_done(kd_pool *pool) {
  for (int i = 0; i < pool->spin; i++) {
    if (atomic_load_explicit(&pool->pending, memory_order_acquire) == 0) return;
    kd_cpu_relax();
  }
  pthread_mutex_lock(&pool->mu);
  while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0)
    pthread_cond_wait(&pool->done, &pool->mu);
  pthread_mutex_unlock(&pool->mu);
}

/* Wakes every worker for a new generation (a job, or quit). */
static void kd_pool_publish(kd_pool *pool) {
  pthread_mutex_lock(&pool->mu);
  atomic_fetch_add_explicit(&pool->gen, 1, memory_order_release);
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->mu);
}

/* Stops and joins workers 1..started. */
static void kd_pool_stop(kd_pool *pool, int started) {
  pthread_mutex_lock(&pool->mu);
  pool->quit = 1;
  pthread_mutex_unlock(&pool->mu);
  kd_pool_publish(pool);
  for (int i = 1; i <= started; i++) pthread_join(pool->workers[i].thread, NULL);
}

static int kd_online_cpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > KD_POOL_MAX ? KD_POOL_MAX : (int)n;
}

kd_status kd_pool_new(int nthreads, kd_pool **out) {
  *out = NULL;
  if (nthreads > KD_POOL_MAX) return KD_ERR_INVALID;
  if (nthreads <= 0) nthreads = kd_online_cpus();
  kd_pool *pool = calloc(1, sizeof *pool);
  if (!pool) return KD_ERR_NOMEM;
  pool->size = nthreads;
  /* With more workers than CPUs a spinning thread takes the CPU from the one
     it waits for; there, sleep at once. */
  pool->spin = nthreads <= kd_online_cpus() ? KD_POOL_SPIN : 0;
  pool->workers = calloc((size_t)nthreads, sizeof *pool->workers);
  if (!pool->workers) {
    free(pool);
    return KD_ERR_NOMEM;
  }
  pthread_mutex_init(&pool->mu, NULL);
  pthread_mutex_init(&pool->call_mu, NULL);
  pthread_cond_init(&pool->wake, NULL);
  pthread_cond_init(&pool->done, NULL);
  atomic_init(&pool->gen, 0);
  atomic_init(&pool->pending, 0);
  atomic_init(&pool->next, 0);

  /* Workers start with every signal blocked (they inherit the mask), so a
     SIGINT reaches the main thread, where a training loop handles it. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  kd_status st = KD_OK;
  int started = 0;
  for (int i = 0; i < nthreads; i++) {
    pool->workers[i].pool = pool;
    pool->workers[i].index = i;
    if (i == 0) continue;
    if (pthread_create(&pool->workers[i].thread, NULL, kd_pool_main, &pool->workers[i]) != 0) {
      st = KD_ERR_NOMEM;
      break;
    }
    started = i;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (st != KD_OK) {
    kd_pool_stop(pool, started);
    pool->size = 1; /* only the caller is left; free the rest */
    kd_pool_free(pool);
    return st;
  }
  *out = pool;
  return KD_OK;
}

void kd_pool_free(kd_pool *pool) {
  if (!pool) return;
  if (pool->size > 1) kd_pool_stop(pool, pool->size - 1);
  pthread_cond_destroy(&pool->done);
  pthread_cond_destroy(&pool->wake);
  pthread_mutex_destroy(&pool->call_mu);
  pthread_mutex_destroy(&pool->mu);
  free(pool->workers);
  free(pool);
}

int kd_pool_size(const kd_pool *pool) { return pool ? pool->size : 1; }

void kd_pool_parallel_for(kd_pool *pool, int64_t n, int64_t grain, kd_pool_fn fn, void *ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int64_t nchunks = n / grain;
  int size = kd_pool_size(pool);
  if (nchunks > (int64_t)size * KD_POOL_CHUNKS_PER_WORKER)
    nchunks = (int64_t)size * KD_POOL_CHUNKS_PER_WORKER;
  /* One chunk, one worker, or a nested call: no one to hand work to. */
  if (nchunks <= 1 || size == 1 || kd_pool_running) {
    fn(ctx, 0, n, kd_pool_running ? kd_pool_running_worker : 0);
    return;
  }
  pthread_mutex_lock(&pool->call_mu);
  pool->fn = fn;
  pool->ctx = ctx;
  pool->n = n;
  pool->nchunks = nchunks;
  atomic_store_explicit(&pool->next, 0, memory_order_relaxed);
  atomic_store_explicit(&pool->pending, size - 1, memory_order_relaxed);
  kd_pool_publish(pool);
  kd_pool_run_chunks(pool, 0);
  kd_pool_wait_done(pool);
  pthread_mutex_unlock(&pool->call_mu);
}
