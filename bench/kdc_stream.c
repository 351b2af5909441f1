/* kdc_stream: prints the machine's STREAM-like bandwidth for 1 and 2
 * threads (or the counts given), the figure kdc's loss benchmarks are
 * measured against.
 *
 *   kdc_stream [--threads 1,2,...] [--mb MiB per array] [--repeats R] [--json] [--cuda]
 *
 * --json prints one object per thread count, for harnesses in Python;
 * --cuda adds GPU 0's device-to-device copy bandwidth (1 GiB arrays), or
 * says why there is none. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"

static int usage(void) {
  fprintf(stderr, "usage: kdc_stream [--threads 1,2,...] [--mb MIB] [--repeats R] [--json] [--cuda]\n");
  return 2;
}

/* GPU 0's device-to-device copy bandwidth; no GPU is not an error. */
static int cuda_copy(int json, int repeats) {
  enum { BYTES = 1 << 30 };
  char err[512] = "";
  kd_cuda *cu = NULL;
  kd_cuda_device_info info;
  double gbs = 0;
  kd_status st = kd_cuda_open(&cu, err, sizeof err);
  if (st == KD_ERR_UNSUPPORTED) {
    if (json) printf("{\"cuda\": null, \"why\": \"%s\"}\n", err);
    else printf("cuda: none (%s)\n", err);
    return 0;
  }
  if (!st) st = kd_cuda_device_info_get(cu, 0, &info, err, sizeof err);
  if (!st) st = kd_cuda_use_device(cu, 0, err, sizeof err);
  if (!st) st = kd_stream_cuda_copy(cu, BYTES, repeats, &gbs, err, sizeof err);
  kd_cuda_close(cu);
  if (st) {
    fprintf(stderr, "kdc_stream: cuda: %s\n", err);
    return 1;
  }
  if (json) printf("{\"cuda\": \"%s\", \"array_bytes\": %d, \"copy_gbs\": %.3f}\n", info.name, BYTES, gbs);
  else printf("cuda %s: device-to-device copy %.1f GB/s (1024 MiB arrays, best of %d)\n", info.name, gbs, repeats);
  return 0;
}

int main(int argc, char **argv) {
  int threads[16] = {1, 2}, nthreads = 2, repeats = 10, json = 0, cuda = 0;
  size_t bytes = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      nthreads = 0;
      for (char *p = argv[++i]; *p && nthreads < 16;) {
        char *end;
        long t = strtol(p, &end, 10);
        if (end == p || t < 1 || t > 1024) return usage();
        threads[nthreads++] = (int)t;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return usage();
      }
    } else if (strcmp(argv[i], "--mb") == 0 && i + 1 < argc) {
      long mb = atol(argv[++i]);
      if (mb < 1) return usage();
      bytes = (size_t)mb << 20;
    } else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = atoi(argv[++i]);
      if (repeats < 1) return usage();
    } else if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (strcmp(argv[i], "--cuda") == 0) {
      cuda = 1;
    } else {
      return usage();
    }
  }
  if (!bytes) bytes = kd_stream_default_bytes();
  if (!json)
    printf("STREAM-like bandwidth: %zu MiB per array, best of %d, GB/s = (read + write bytes) / 1e9 / s\n"
           "threads  copy GB/s  triad GB/s  copy-nt GB/s  copy ms  triad ms\n",
           bytes >> 20, repeats);
  for (int k = 0; k < nthreads; k++) {
    kd_pool *pool;
    kd_stream_result r;
    kd_status st = kd_pool_new(threads[k], &pool);
    if (!st) st = kd_stream_measure(pool, bytes, repeats, &r);
    kd_pool_free(pool);
    if (st) {
      fprintf(stderr, "kdc_stream: %d threads: %s\n", threads[k], kd_status_str(st));
      return 1;
    }
    if (json)
      printf("{\"threads\": %d, \"array_bytes\": %zu, \"repeats\": %d, \"copy_gbs\": %.3f, "
             "\"triad_gbs\": %.3f, \"copy_nt_gbs\": %.3f, \"copy_ms\": %.4f, \"triad_ms\": %.4f}\n",
             r.threads, r.array_bytes, r.repeats, r.copy_gbs, r.triad_gbs, r.copy_nt_gbs, r.copy_ms, r.triad_ms);
    else
      printf("%7d  %9.1f  %10.1f  %12.1f  %7.2f  %8.2f\n", r.threads, r.copy_gbs, r.triad_gbs, r.copy_nt_gbs,
             r.copy_ms, r.triad_ms);
  }
  return cuda ? cuda_copy(json, repeats) : 0;
}
