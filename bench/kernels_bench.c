/* kdc_kernels_bench: sgemm GFLOP/s (runtime/kernels.h) for the matrix
 * products of examples/distill.kd's student and teacher at B*T = 2048 rows,
 * forward and both adjoints, next to the machine's copy bandwidth, for 1 and
 * 2 threads (the kd_pool's, OpenBLAS on one thread, as a step runs them;
 * --blas: OpenBLAS's own threads, one call a product, for comparison), and
 * the gather, scatter and head split in GB/s on the kd_pool of that size.
 *
 *   kdc_kernels_bench [--threads 1,2] [--blas] [--quick]
 *
 * The models (distill.kd): gpt(layers, dim, heads, vocab = 256, ctx = 128);
 * student dim 128, 4 heads; teacher dim 256, 8 heads. B = 16, T = 128.
 * GFLOP/s counts 2 M N K per product over the best of the repeats.
 * --quick runs a few small repeats (the ctest smoke run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "stream.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *buf(int64_t n) {
  float *p = malloc((size_t)n * sizeof *p);
  if (!p) {
    fprintf(stderr, "kdc_kernels_bench: out of memory\n");
    exit(1);
  }
  for (int64_t i = 0; i < n; i++) p[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
  return p;
}

static int repeats = 10;
static kd_pool *gemm_pool; /* the products' pool; NULL with --blas */

/* Best seconds of `repeats` runs of p after one warm-up. */
static double time_gemm(kd_pool *pool, const kd_gemm *p, const float *a, const float *b, float *c) {
  double best = 1e30;
  for (int r = 0; r <= repeats; r++) {
    double t0 = now();
    if (kd_gemm_run(pool, p, a, b, c) != KD_OK) exit(1);
    double t = now() - t0;
    if (r && t < best) best = t;
  }
  return best;
}

/* A linear layer x [R, in] @ w [in, out]: forward, dx = dy w^T, dw = x^T dy. */
static void bench_linear(const char *name, int64_t R, int64_t in, int64_t out) {
  float *x = buf(R * in), *w = buf(in * out), *y = buf(R * out), *dx = buf(R * in),
        *dw = buf(in * out);
  kd_gemm fw = {.batch = 1, .m = R, .n = out, .k = in, .alpha = 1};
  kd_gemm ga = {.batch = 1, .m = R, .n = in, .k = out, .trans_b = true, .alpha = 1};
  kd_gemm gb = {.batch = 1, .m = in, .n = out, .k = R, .trans_a = true, .alpha = 1, .beta = 1};
  double flop = 2.0 * (double)R * (double)in * (double)out * 1e-9;
  double t[3] = {time_gemm(gemm_pool, &fw, x, w, y), time_gemm(gemm_pool, &ga, y, w, dx), time_gemm(gemm_pool, &gb, x, y, dw)};
  printf("  %-22s [%5lld, %4lld] x [%4lld, %4lld]  fwd %6.1f  dA %6.1f  dB %6.1f GFLOP/s\n", name,
         (long long)R, (long long)in, (long long)in, (long long)out, flop / t[0], flop / t[1],
         flop / t[2]);
  free(x), free(w), free(y), free(dx), free(dw);
}

/* Attention's scores q k^T ([B*H] of [T, Dh] x [Dh, T]) and att v. */
static void bench_attention(const char *name, int64_t BH, int64_t T, int64_t Dh) {
  float *q = buf(BH * T * Dh), *k = buf(BH * T * Dh), *v = buf(BH * T * Dh), *s = buf(BH * T * T);
  float *o = buf(BH * T * Dh);
  kd_gemm qk = {.batch = BH, .m = T, .n = T, .k = Dh, .trans_b = true, .alpha = 1,
                .stride_a = T * Dh, .stride_b = T * Dh, .stride_c = T * T};
  kd_gemm av = {.batch = BH, .m = T, .n = Dh, .k = T, .alpha = 1,
                .stride_a = T * T, .stride_b = T * Dh, .stride_c = T * Dh};
  double flop = 2.0 * (double)(BH * T * T * Dh) * 1e-9;
  printf("  %-22s %lld x [%lld, %lld]: q k^T %6.1f  att v %6.1f GFLOP/s\n", name, (long long)BH,
         (long long)T, (long long)Dh, flop / time_gemm(gemm_pool, &qk, q, k, s), flop / time_gemm(gemm_pool, &av, s, v, o));
  free(q), free(k), free(v), free(s), free(o);
}

/* Gather, scatter and head split: GB/s counting bytes read + written. */
static void bench_rows(kd_pool *pool, int64_t R, int64_t V, int64_t D, int64_t H) {
  float *table = buf(V * D), *rows = buf(R * D), *out = buf(R * D);
  int64_t *ids = malloc((size_t)R * sizeof *ids);
  for (int64_t i = 0; i < R; i++) ids[i] = (i * 131) % V;
  double tg = 1e30, ts = 1e30, tp = 1e30;
  for (int r = 0; r <= repeats; r++) {
    double t0 = now();
    kd_gather_rows_f32(pool, table, V, D, ids, R, out, NULL, 0);
    double t1 = now();
    kd_scatter_add_rows_f32(pool, rows, ids, R, V, D, false, table, NULL, 0);
    double t2 = now();
    kd_split_heads(pool, rows, R / 128, 128, H, D / H, out);
    double t3 = now();
    if (r) {
      tg = t1 - t0 < tg ? t1 - t0 : tg;
      ts = t2 - t1 < ts ? t2 - t1 : ts;
      tp = t3 - t2 < tp ? t3 - t2 : tp;
    }
  }
  double gb = 2.0 * (double)(R * D) * 4 * 1e-9; /* read a row, write a row */
  printf("  rows [%lld, %lld], V %lld: gather %.1f  scatter-add %.1f  split heads (H %lld) %.1f GB/s\n",
         (long long)R, (long long)D, (long long)V, gb / tg, gb / ts, (long long)H, gb / tp);
  free(table), free(rows), free(out), free(ids);
}

int main(int argc, char **argv) {
  int threads[2] = {1, 2}, nthreads = 2;
  bool blas = false;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0) repeats = 1;
    else if (strcmp(argv[i], "--blas") == 0) blas = true;
    else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
      nthreads = sscanf(argv[++i], "%d,%d", &threads[0], &threads[1]);
    else {
      fprintf(stderr, "usage: kdc_kernels_bench [--threads 1,2] [--blas] [--quick]\n");
      return 2;
    }
  }
  if (nthreads < 1) return 2;
  const int64_t R = 2048, T = 128, V = 256;
  for (int k = 0; k < nthreads; k++) {
    kd_pool *pool = NULL;
    if (kd_pool_new(threads[k], &pool) != KD_OK) return 1;
    kd_blas_set_threads(blas ? threads[k] : 1);
    gemm_pool = blas ? NULL : pool;
    printf("# %d thread(s), products on %s (OpenBLAS threads %d), B*T = %lld rows\n", threads[k],
           blas ? "OpenBLAS's threads" : "the pool", kd_blas_threads(), (long long)R);
    if (repeats > 1 && kd_stream_report(stdout, pool, NULL) != KD_OK) return 1;
    static const struct { const char *name; int64_t D, H; } m[] = {
        {"student (dim 128)", 128, 4}, {"teacher (dim 256)", 256, 8}};
    for (int i = 0; i < 2; i++) {
      int64_t D = m[i].D;
      printf(" %s\n", m[i].name);
      bench_linear("qkv", R, D, 3 * D);
      bench_linear("attn.proj", R, D, D);
      bench_linear("mlp.fc", R, D, 4 * D);
      bench_linear("mlp.proj", R, 4 * D, D);
      bench_linear("lm head", R, D, V);
      bench_attention("attention", R / T * m[i].H, T, D / m[i].H);
      bench_rows(pool, R, V, D, m[i].H);
    }
    kd_pool_free(pool);
  }
  return 0;
}
