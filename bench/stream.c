#include "stream.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

enum { KD_STREAM_MIN_MB = 64, KD_STREAM_FALLBACK_CACHE = 32 << 20 };

/* The triad's scalar: with 0.5 the values converge instead of growing. */
static const double kd_stream_scalar = 0.5;

typedef struct kd_stream_arrays {
  double *a, *b, *c; /* [n] each */
  int op;            /* which kernel kd_stream_chunk runs */
} kd_stream_arrays;

enum { KD_STREAM_INIT, KD_STREAM_COPY, KD_STREAM_COPY_NT, KD_STREAM_TRIAD };

/* c[i] = a[i] with non-temporal stores (no read-for-ownership of c): what
   memcpy does on large sizes, and the ceiling for a kernel that streams its
   output. Plain stores where SSE2 is missing. */
static void kd_stream_copy_nt(const double *restrict a, double *restrict c, int64_t begin, int64_t end) {
  int64_t i = begin;
#if defined(__SSE2__)
  for (; i < end && ((uintptr_t)(c + i) & 15); i++) c[i] = a[i];
  for (; i + 2 <= end; i += 2) _mm_stream_pd(c + i, _mm_loadu_pd(a + i));
  _mm_sfence();
#endif
  for (; i < end; i++) c[i] = a[i];
}

static void kd_stream_chunk(void *ctx, int64_t begin, int64_t end, int worker) {
  kd_stream_arrays *s = ctx;
  double *restrict a = s->a, *restrict b = s->b, *restrict c = s->c;
  const double q = kd_stream_scalar;
  switch (s->op) {
  case KD_STREAM_INIT:
    for (int64_t i = begin; i < end; i++) a[i] = 1.0, b[i] = 2.0, c[i] = 0.0;
    break;
  case KD_STREAM_COPY:
    for (int64_t i = begin; i < end; i++) c[i] = a[i];
    break;
  case KD_STREAM_COPY_NT:
    kd_stream_copy_nt(a, c, begin, end);
    break;
  case KD_STREAM_TRIAD:
    for (int64_t i = begin; i < end; i++) a[i] = b[i] + q * c[i];
    break;
  }
}

static double kd_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The largest cache size sysfs lists for cpu0, in bytes; 0 if unknown. */
static size_t kd_largest_cache(void) {
  size_t best = 0;
  for (int i = 0; i < 8; i++) {
    char path[96];
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    unsigned long v = 0;
    char unit = 0;
    if (fscanf(f, "%lu%c", &v, &unit) >= 1) {
      size_t bytes = unit == 'K' ? v << 10 : unit == 'M' ? v << 20 : v;
      if (bytes > best) best = bytes;
    }
    fclose(f);
  }
  return best;
}

size_t kd_stream_default_bytes(void) {
  const char *env = getenv("KDC_STREAM_MB");
  if (env && atol(env) > 0) return (size_t)atol(env) << 20;
  size_t llc = kd_largest_cache();
  size_t bytes = 4 * (llc ? llc : (size_t)KD_STREAM_FALLBACK_CACHE);
  return bytes < ((size_t)KD_STREAM_MIN_MB << 20) ? (size_t)KD_STREAM_MIN_MB << 20 : bytes;
}

/* Times one kernel over all rows; seconds. */
static double kd_stream_time(kd_pool *pool, kd_stream_arrays *s, int op, int64_t n, int64_t grain) {
  s->op = op;
  double t0 = kd_now();
  kd_pool_parallel_for(pool, n, grain, kd_stream_chunk, s);
  return kd_now() - t0;
}

/* Element i holds the scalar replay's values. Same operations in the same
   order, so equal unless the compiler contracted the triad into an FMA,
   which moves the last bit at most (hence the 1e-12 relative bound). */
static int kd_stream_ok_at(const kd_stream_arrays *s, int64_t i, double a, double b, double c) {
  return fabs(s->a[i] - a) <= 1e-12 * fabs(a) && s->b[i] == b && fabs(s->c[i] - c) <= 1e-12 * fabs(c);
}

/* Replays the runs on scalars and compares a sample of elements, as STREAM
   does, so a kernel that skipped work cannot report a figure. */
static int kd_stream_verify(const kd_stream_arrays *s, int64_t n, int runs) {
  double a = 1.0, b = 2.0, c = 0.0;
  for (int r = 0; r < runs; r++) {
    c = a;
    a = b + kd_stream_scalar * c;
  }
  int64_t step = n / 1024 > 0 ? n / 1024 : 1;
  for (int64_t i = 0; i < n; i += step)
    if (!kd_stream_ok_at(s, i, a, b, c)) return 0;
  return kd_stream_ok_at(s, n - 1, a, b, c);
}

kd_status kd_stream_measure(kd_pool *pool, size_t array_bytes, int repeats, kd_stream_result *out) {
  memset(out, 0, sizeof *out);
  if (array_bytes == 0) array_bytes = kd_stream_default_bytes();
  if (repeats < 1) repeats = 1;
  int64_t n = (int64_t)(array_bytes / sizeof(double));
  if (n < 1) return KD_ERR_INVALID;
  size_t bytes = ((size_t)n * sizeof(double) + 63) & ~(size_t)63;
  kd_stream_arrays s = {aligned_alloc(64, bytes), aligned_alloc(64, bytes), aligned_alloc(64, bytes), 0};
  kd_status st = KD_OK;
  if (!s.a || !s.b || !s.c) st = KD_ERR_NOMEM;
  int threads = kd_pool_size(pool);
  /* One contiguous chunk per thread, the same split for the first touch
     and every run (the pool hands chunks out dynamically, so a thread may
     not get the same chunk each time: on one NUMA node that costs nothing). */
  int64_t grain = n / threads > 0 ? n / threads : 1;
  double best_copy = INFINITY, best_copy_nt = INFINITY, best_triad = INFINITY;
  if (!st) {
    kd_stream_time(pool, &s, KD_STREAM_INIT, n, grain);
    /* Run 0 is a warm-up (caches, frequency ramp), not counted. */
    for (int r = 0; r <= repeats; r++) {
      double tn = kd_stream_time(pool, &s, KD_STREAM_COPY_NT, n, grain);
      double tc = kd_stream_time(pool, &s, KD_STREAM_COPY, n, grain);
      double tt = kd_stream_time(pool, &s, KD_STREAM_TRIAD, n, grain);
      if (r > 0 && tn < best_copy_nt) best_copy_nt = tn;
      if (r > 0 && tc < best_copy) best_copy = tc;
      if (r > 0 && tt < best_triad) best_triad = tt;
    }
    if (!kd_stream_verify(&s, n, repeats + 1)) st = KD_ERR_BACKEND;
  }
  free(s.a);
  free(s.b);
  free(s.c);
  if (st) return st;
  out->threads = threads;
  out->array_bytes = (size_t)n * sizeof(double);
  out->repeats = repeats;
  out->copy_ms = 1e3 * best_copy;
  out->triad_ms = 1e3 * best_triad;
  out->copy_gbs = 2.0 * (double)out->array_bytes / best_copy / 1e9;
  out->copy_nt_gbs = 2.0 * (double)out->array_bytes / best_copy_nt / 1e9;
  out->triad_gbs = 3.0 * (double)out->array_bytes / best_triad / 1e9;
  return KD_OK;
}

struct kd_stream_probe {
  kd_pool *pool;
  kd_stream_arrays s;
  int64_t n, grain;
};

kd_status kd_stream_probe_new(kd_pool *pool, size_t array_bytes, kd_stream_probe **out) {
  *out = NULL;
  if (array_bytes == 0) array_bytes = kd_stream_default_bytes();
  int64_t n = (int64_t)(array_bytes / sizeof(double));
  if (n < 1) return KD_ERR_INVALID;
  size_t bytes = ((size_t)n * sizeof(double) + 63) & ~(size_t)63;
  kd_stream_probe *p = calloc(1, sizeof *p);
  if (!p) return KD_ERR_NOMEM;
  p->s = (kd_stream_arrays){aligned_alloc(64, bytes), aligned_alloc(64, bytes), aligned_alloc(64, bytes), 0};
  if (!p->s.a || !p->s.b || !p->s.c) {
    kd_stream_probe_free(p);
    return KD_ERR_NOMEM;
  }
  p->pool = pool;
  p->n = n;
  p->grain = n / kd_pool_size(pool) > 0 ? n / kd_pool_size(pool) : 1;
  kd_stream_time(pool, &p->s, KD_STREAM_INIT, n, p->grain);
  *out = p;
  return KD_OK;
}

double kd_stream_probe_copy(kd_stream_probe *p) {
  double t = kd_stream_time(p->pool, &p->s, KD_STREAM_COPY, p->n, p->grain);
  return 2.0 * (double)p->n * sizeof(double) / t / 1e9;
}

void kd_stream_probe_free(kd_stream_probe *p) {
  if (!p) return;
  free(p->s.a);
  free(p->s.b);
  free(p->s.c);
  free(p);
}

kd_status kd_stream_report(FILE *f, kd_pool *pool, kd_stream_result *out) {
  kd_stream_result r;
  kd_status st = kd_stream_measure(pool, 0, 10, &r);
  if (st) {
    fprintf(f, "# stream: failed (%s)\n", kd_status_str(st));
    return st;
  }
  fprintf(f, "# stream: copy %.1f GB/s, triad %.1f GB/s, copy with non-temporal stores %.1f GB/s "
          "(%d thread%s, %zu MiB arrays, best of %d)\n",
          r.copy_gbs, r.triad_gbs, r.copy_nt_gbs, r.threads, r.threads == 1 ? "" : "s", r.array_bytes >> 20, r.repeats);
  if (out) *out = r;
  return KD_OK;
}

kd_status kd_stream_cuda_copy(kd_cuda *cu, size_t array_bytes, int repeats, double *gbs, char *err,
                              size_t errlen) {
  *gbs = 0;
  if (repeats < 1) repeats = 1;
  kd_cu_devptr src = 0, dst = 0;
  kd_cu_event e0 = NULL, e1 = NULL;
  float best = INFINITY;
  kd_status st = kd_cuda_malloc(cu, array_bytes, &src, err, errlen);
  if (!st) st = kd_cuda_malloc(cu, array_bytes, &dst, err, errlen);
  if (!st) st = kd_cuda_memset(cu, src, 1, array_bytes, err, errlen);
  if (!st) st = kd_cuda_event_new(cu, &e0, err, errlen);
  if (!st) st = kd_cuda_event_new(cu, &e1, err, errlen);
  /* Run 0 warms up, as on the CPU. The copy goes on the default stream,
     where the events are recorded too. */
  for (int r = 0; !st && r <= repeats; r++) {
    float ms = 0;
    st = kd_cuda_event_record(cu, e0, NULL, err, errlen);
    if (!st) st = kd_cuda_dtod(cu, dst, src, array_bytes, err, errlen);
    if (!st) st = kd_cuda_event_record(cu, e1, NULL, err, errlen);
    if (!st) st = kd_cuda_event_elapsed(cu, e0, e1, &ms, err, errlen);
    if (!st && r > 0 && ms < best) best = ms;
  }
  kd_cuda_event_free(cu, e0);
  kd_cuda_event_free(cu, e1);
  kd_cuda_free(cu, src);
  kd_cuda_free(cu, dst);
  if (!st && best > 0) *gbs = 2.0 * (double)array_bytes / (1e-3 * (double)best) / 1e9;
  return st;
}
