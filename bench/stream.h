/* A STREAM-like memory bandwidth probe (after McCalpin's STREAM): the
 * floor every kdc benchmark is measured against.
 *
 *   copy:  c[i] = a[i]             16 bytes per element (read a, write c)
 *   triad: a[i] = b[i] + s * c[i]  24 bytes per element (read b, c, write a)
 *   copy-nt: copy with non-temporal stores (no read-for-ownership)
 *
 * GB/s = bytes read + bytes written, in 1e9 bytes per second, over the best
 * (shortest) of several repeats, as STREAM reports it. Stores are ordinary
 * (write-allocate), like the loss kernels' gradient stores, so the copy
 * figure is the one a fused loss (read t, read s, write grad) compares with;
 * copy-nt is the ceiling for a kernel that streams its output past the cache.
 * Arrays of doubles, each at least 4 x the last-level cache, split across
 * the pool's threads, which also first-touch the pages (in parallel, as
 * STREAM does). */
#ifndef KD_BENCH_STREAM_H
#define KD_BENCH_STREAM_H

#include <stddef.h>
#include <stdio.h>

#include "cuda.h"
#include "threadpool.h"

typedef struct kd_stream_result {
  int threads;
  size_t array_bytes; /* bytes per array */
  int repeats;
  double copy_gbs, triad_gbs; /* best of repeats */
  double copy_nt_gbs;         /* copy with non-temporal stores */
  double copy_ms, triad_ms;   /* the best times */
} kd_stream_result;

/* Bytes per array: 4 x the largest CPU cache (from sysfs; 32 MiB when it
   cannot be read), at least 64 MiB. KDC_STREAM_MB in the environment
   overrides it. */
size_t kd_stream_default_bytes(void);

/* Runs copy and triad once to warm up, then `repeats` (at least 1) timed
   times, and checks the arrays' final values. array_bytes 0
   means kd_stream_default_bytes(). KD_ERR_NOMEM if the arrays cannot be
   allocated, KD_ERR_BACKEND if the results are wrong. */
kd_status kd_stream_measure(kd_pool *pool, size_t array_bytes, int repeats, kd_stream_result *out);

/* What every benchmark calls: measures with the pool's threads and prints
   one line, "# stream: copy 36.5 GB/s, triad 37.5 GB/s, copy with
   non-temporal stores 51.8 GB/s (2 threads, 128 MiB arrays, best of 10)", so each run shows the machine's bandwidth next to
   its own figures. out may be NULL. */
kd_status kd_stream_report(FILE *f, kd_pool *pool, kd_stream_result *out);

/* A copy probe that keeps its arrays (first-touched once), so a benchmark
   can time one copy next to each of its own runs: on a shared machine the
   bandwidth moves by a third within minutes, and a kernel's fraction of it
   means something only against a copy taken at the same time. */
typedef struct kd_stream_probe kd_stream_probe;
kd_status kd_stream_probe_new(kd_pool *pool, size_t array_bytes, kd_stream_probe **out);
/* One timed copy with the pool's threads: GB/s (read + write bytes). */
double kd_stream_probe_copy(kd_stream_probe *p);
void kd_stream_probe_free(kd_stream_probe *p);

/* The GPU's copy bandwidth: a device-to-device cuMemcpy of array_bytes,
   timed with events, best of repeats after one warm-up, GB/s counting read
   + write bytes (2 x array_bytes), like copy above. Needs a device made
   current with kd_cuda_use_device. */
kd_status kd_stream_cuda_copy(kd_cuda *cu, size_t array_bytes, int repeats, double *gbs, char *err,
                              size_t errlen);

#endif /* KD_BENCH_STREAM_H */
