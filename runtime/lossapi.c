/* The plain C ABI of a compiled-loss library (see lossapi.h). */
#include "lossapi.h"

#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

/* Pools kept per library, one per distinct thread count asked for; a caller
 * that cycles through more counts than this gets a pool for the call only. */
enum { KD_LOSSAPI_POOLS = 4, KD_LOSSAPI_MAX_THREADS = 256 };

static pthread_mutex_t kd_lossapi_lock = PTHREAD_MUTEX_INITIALIZER;
static kd_pool *kd_lossapi_pools[KD_LOSSAPI_POOLS];

/* Runs when the library is unloaded (dlclose) or the program exits; no call
 * may be running then. */
__attribute__((destructor)) static void kd_lossapi_unload(void) {
  for (int i = 0; i < KD_LOSSAPI_POOLS; i++) {
    kd_pool_free(kd_lossapi_pools[i]);
    kd_lossapi_pools[i] = NULL;
  }
}

/* The pool for n workers: *owned is set when the caller must free it. */
static kd_status get_pool(int n, kd_pool **pool, int *owned) {
  *pool = NULL;
  *owned = 0;
  if (n == 1) return KD_OK;
  kd_status st = KD_OK;
  pthread_mutex_lock(&kd_lossapi_lock);
  int i = 0;
  while (i < KD_LOSSAPI_POOLS && kd_lossapi_pools[i] && kd_pool_size(kd_lossapi_pools[i]) != n)
    i++;
  if (i < KD_LOSSAPI_POOLS && !kd_lossapi_pools[i]) st = kd_pool_new(n, &kd_lossapi_pools[i]);
  if (i < KD_LOSSAPI_POOLS) *pool = kd_lossapi_pools[i];
  pthread_mutex_unlock(&kd_lossapi_lock);
  if (i < KD_LOSSAPI_POOLS || st) return st;
  *owned = 1;
  return kd_pool_new(n, pool);
}

static int fail(char *err, size_t errlen, kd_status st, const char *msg) {
  if (err && errlen) snprintf(err, errlen, "%s", msg);
  return (int)st;
}

int kd_lossapi_eval(const kd_loss_program *p, const void *teacher, const void *student,
                    const int64_t *labels, int64_t N, int64_t V, void *grad, double *loss,
                    int threads, char *err, size_t errlen) {
  if (err && errlen) err[0] = 0;
  if (N < 0 || V < 1) return fail(err, errlen, KD_ERR_INVALID, "n_rows must be >= 0 and vocab >= 1");
  /* the arrays are N x V elements of at most 4 bytes: the byte count must fit */
  if (N > INT64_MAX / 4 / V || (uint64_t)N * (uint64_t)V > SIZE_MAX / 4)
    return fail(err, errlen, KD_ERR_INVALID, "n_rows x vocab is too large");
  if (threads > KD_LOSSAPI_MAX_THREADS)
    return fail(err, errlen, KD_ERR_INVALID, "threads must be at most 256");
  if (threads <= 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cpus < 1 ? 1 : cpus > KD_LOSSAPI_MAX_THREADS ? KD_LOSSAPI_MAX_THREADS : (int)cpus;
  }
  kd_pool *pool;
  int owned;
  kd_status st = get_pool(threads, &pool, &owned);
  if (st) return fail(err, errlen, st, "cannot start the worker threads");
  kd_loss_io io = {teacher, p->teacher_dtype < 0 ? KD_F32 : (kd_dtype)p->teacher_dtype,
                   student, (kd_dtype)p->student_dtype, labels, N, V, grad, loss,
                   (kd_dtype)p->grad_dtype};
  st = kd_loss_run(p, &io, pool, err, errlen);
  if (owned) kd_pool_free(pool);
  return (int)st;
}

int kd_lossapi_info_of(const kd_loss_program *p, kd_lossapi_info *out) {
  if (!out) return KD_ERR_INVALID;
  *out = (kd_lossapi_info){KD_LOSSAPI_VERSION, p->teacher_dtype, p->student_dtype,
                           p->has_labels, p->has_grad ? 1 + (p->grad_dtype == KD_BF16) : 0,
                           KD_LOSSAPI_MAX_THREADS};
  return KD_OK;
}
