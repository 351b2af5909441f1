/* The thread pool: every index runs exactly once, chunks respect the grain,
 * worker indices are in range, nested calls and NULL pools run serially,
 * and many back-to-back calls neither hang nor lose work. */
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "check.h"
#include "threadpool.h"

typedef struct cover_ctx {
  atomic_int *hits;    /* [n] times each index ran */
  atomic_int bad;      /* chunks shorter than grain (the last excepted) or bad worker */
  int64_t n, grain;
  int size;
} cover_ctx;

static void cover_fn(void *p, int64_t begin, int64_t end, int worker) {
  cover_ctx *c = p;
  /* Chunks are even pieces of [0, n), so each is at least the grain unless
     the whole range is shorter than one grain. */
  if (end - begin < c->grain && end - begin != c->n) atomic_fetch_add(&c->bad, 1);
  if (worker < 0 || worker >= c->size) atomic_fetch_add(&c->bad, 1);
  for (int64_t i = begin; i < end; i++) atomic_fetch_add(&c->hits[i], 1);
}

static void check_cover(kd_pool *pool, int64_t n, int64_t grain) {
  cover_ctx c = {.n = n, .grain = grain < 1 ? 1 : grain, .size = kd_pool_size(pool)};
  c.hits = calloc((size_t)(n > 0 ? n : 1), sizeof *c.hits);
  atomic_init(&c.bad, 0);
  kd_pool_parallel_for(pool, n, grain, cover_fn, &c);
  int wrong = 0;
  for (int64_t i = 0; i < n; i++) wrong += atomic_load(&c.hits[i]) != 1;
  CHECK(wrong == 0);
  CHECK(atomic_load(&c.bad) == 0);
  free(c.hits);
}

/* Nested: each outer chunk runs an inner parallel_for, which must run
   serially under the outer worker's index. */
typedef struct nest_ctx {
  kd_pool *pool;
  atomic_int total;
  atomic_int bad;
} nest_ctx;

typedef struct inner_ctx {
  nest_ctx *outer;
  int worker;
} inner_ctx;

static void inner_fn(void *p, int64_t begin, int64_t end, int worker) {
  inner_ctx *c = p;
  if (worker != c->worker) atomic_fetch_add(&c->outer->bad, 1);
  atomic_fetch_add(&c->outer->total, (int)(end - begin));
}

static void outer_fn(void *p, int64_t begin, int64_t end, int worker) {
  nest_ctx *c = p;
  for (int64_t i = begin; i < end; i++) {
    inner_ctx ic = {c, worker};
    kd_pool_parallel_for(c->pool, 100, 1, inner_fn, &ic);
  }
}

static void sum_fn(void *p, int64_t begin, int64_t end, int worker) {
  atomic_long *sum = p;
  long s = 0;
  for (int64_t i = begin; i < end; i++) s += (long)i;
  atomic_fetch_add(sum, s);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(void) {
  static const int sizes[] = {1, 2, 3, 8};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    kd_pool *pool = NULL;
    CHECK(kd_pool_new(sizes[s], &pool) == KD_OK);
    if (!pool) continue;
    CHECK(kd_pool_size(pool) == sizes[s]);
    static const int64_t ns[] = {0, 1, 2, 7, 33, 1000, 100003};
    static const int64_t grains[] = {0, 1, 5, 64, 1 << 20};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
      for (size_t g = 0; g < sizeof grains / sizeof grains[0]; g++) check_cover(pool, ns[i], grains[g]);

    nest_ctx nc = {.pool = pool};
    atomic_init(&nc.total, 0);
    atomic_init(&nc.bad, 0);
    kd_pool_parallel_for(pool, 64, 1, outer_fn, &nc);
    CHECK(atomic_load(&nc.total) == 64 * 100);
    CHECK(atomic_load(&nc.bad) == 0);

    /* Back-to-back calls: a lost wake-up would hang here (ctest's timeout
       turns that into a failure), a lost chunk shows in the sum. */
    enum { CALLS = 5000, N = 64 };
    atomic_long sum;
    atomic_init(&sum, 0);
    double t0 = now_s();
    for (int c = 0; c < CALLS; c++) kd_pool_parallel_for(pool, N, 1, sum_fn, &sum);
    double dt = now_s() - t0;
    CHECK(atomic_load(&sum) == (long)CALLS * (N * (N - 1) / 2));
    printf("pool of %d: %.2f us per parallel_for\n", sizes[s], 1e6 * dt / CALLS);
    kd_pool_free(pool);
  }

  /* A NULL pool runs serially; a default pool has at least one worker. */
  check_cover(NULL, 1000, 1);
  kd_pool *pool = NULL;
  CHECK(kd_pool_new(0, &pool) == KD_OK);
  CHECK(pool && kd_pool_size(pool) >= 1);
  kd_pool_free(pool);
  kd_pool_free(NULL);
  CHECK(kd_pool_new(1 << 20, &pool) == KD_ERR_INVALID && pool == NULL);
  return check_exit("test_threadpool");
}
