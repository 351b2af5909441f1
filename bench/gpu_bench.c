/* kdc_gpu_bench: times kdc's PTX losses on an NVIDIA GPU with the CUDA
 * driver alone (runtime/gpuloss.h; no LLVM, no CUDA toolkit), next to the
 * device-to-device copy bandwidth of the same GPU.
 *
 *   kdc compile-loss examples/losses/fkl.kd --target ptx --gpu sm_90 -o fkl.ptx
 *   kdc_gpu_bench fkl.ptx jsd.ptx [--shape 16384x131072] [--repeats 20]
 *
 * Logits: uniform in [-6, 6), 64 distinct rows tiled over N (generated on
 * the host, copied device to device: the kernels read every byte either
 * way). Per loss it prints the median time of a full call (every step and
 * row kernel) over the repeats, measured with CUDA events after 3 warm-up
 * calls, and the bandwidth of the least traffic a loss with a gradient
 * needs: teacher and student read once, the gradient written once,
 * (2 s + g) N V bytes with s the logits' element size and g the gradient's
 * (4, or 2 for PTX compiled with --grad-dtype bf16), as a fraction of the
 * copy's (read + write bytes / time of a cuMemcpyDtoD of 1 GiB). docs/gpu.md
 * says how to run it with the PyTorch and Liger-Kernel baselines. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda.h"
#include "fileio.h"
#include "gpuloss.h"

#define TILE_ROWS 64

typedef struct bench {
  kd_cuda *cu;
  kd_cu_event start, stop;
  int repeats;
  char err[8192];
} bench;

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static void *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
    free(s);
    s = NULL;
  }
  if (s) s[n] = 0;
  fclose(f);
  return s;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float uniform_logit(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((double)(rng >> 11) * 0x1p-53 * 12 - 6);
}

/* N x V logits of element size es (4: f32, 2: bf16) on the device */
static kd_status fill_logits(bench *b, kd_cu_devptr *d, int64_t N, int64_t V, size_t es) {
  size_t row = (size_t)V * es, tile = TILE_ROWS * row;
  unsigned char *h = malloc(tile);
  if (!h) return KD_ERR_NOMEM;
  for (size_t i = 0; i < (size_t)TILE_ROWS * (size_t)V; i++) {
    float x = uniform_logit();
    if (es == 4) memcpy(h + 4 * i, &x, 4);
    else memcpy(h + 2 * i, (unsigned char *)&x + 2, 2); /* bf16: the upper half (little endian) */
  }
  kd_status st = kd_cuda_malloc(b->cu, (size_t)N * row, d, b->err, sizeof b->err);
  for (int64_t r = 0; !st && r < N; r += TILE_ROWS) {
    size_t rows = (size_t)(N - r < TILE_ROWS ? N - r : TILE_ROWS);
    if (r == 0) st = kd_cuda_htod(b->cu, *d, h, rows * row, NULL, b->err, sizeof b->err);
    else st = kd_cuda_dtod(b->cu, *d + (size_t)r * row, *d, rows * row, b->err, sizeof b->err);
  }
  free(h);
  return st;
}

/* median milliseconds of the repeats of what (0: the loss, 1: the copy) */
typedef kd_status (*bench_fn)(bench *b, void *ctx);

static kd_status time_it(bench *b, bench_fn fn, void *ctx, float *median) {
  float *ms = calloc((size_t)b->repeats, sizeof *ms);
  if (!ms) return KD_ERR_NOMEM;
  kd_status st = KD_OK;
  for (int i = 0; i < 3 && !st; i++) st = fn(b, ctx);
  for (int i = 0; i < b->repeats && !st; i++) {
    st = kd_cuda_event_record(b->cu, b->start, NULL, b->err, sizeof b->err);
    if (!st) st = fn(b, ctx);
    if (!st) st = kd_cuda_event_record(b->cu, b->stop, NULL, b->err, sizeof b->err);
    if (!st) st = kd_cuda_event_elapsed(b->cu, b->start, b->stop, &ms[i], b->err, sizeof b->err);
  }
  qsort(ms, (size_t)b->repeats, sizeof *ms, cmp_float);
  *median = ms[b->repeats / 2];
  free(ms);
  return st;
}

typedef struct copy_ctx {
  kd_cu_devptr src, dst;
  size_t bytes;
} copy_ctx;

static kd_status run_copy(bench *b, void *ctx) {
  copy_ctx *c = ctx;
  return kd_cuda_dtod(b->cu, c->dst, c->src, c->bytes, b->err, sizeof b->err);
}

typedef struct loss_ctx {
  kd_gpu_loss *l;
  kd_gpu_args a;
} loss_ctx;

static kd_status run_loss(bench *b, void *ctx) {
  loss_ctx *c = ctx;
  return kd_gpu_loss_launch(c->l, &c->a, NULL, b->err, sizeof b->err);
}

static kd_status copy_bandwidth(bench *b, double *gbs) {
  copy_ctx c = {0, 0, (size_t)1 << 30};
  float ms = 0;
  kd_status st = kd_cuda_malloc(b->cu, c.bytes, &c.src, b->err, sizeof b->err);
  if (!st) st = kd_cuda_malloc(b->cu, c.bytes, &c.dst, b->err, sizeof b->err);
  if (!st) st = kd_cuda_memset(b->cu, c.src, 1, c.bytes, b->err, sizeof b->err);
  if (!st) st = time_it(b, run_copy, &c, &ms);
  if (!st) *gbs = 2.0 * (double)c.bytes / (ms * 1e-3) / 1e9;
  kd_cuda_free(b->cu, c.src);
  kd_cuda_free(b->cu, c.dst);
  return st;
}

static kd_status bench_loss(bench *b, const char *path, int64_t N, int64_t V, double copy_gbs) {
  char *ptx = read_text(path);
  if (!ptx) return kd_errf(b->err, sizeof b->err, KD_ERR_IO, "cannot read %s", path);
  loss_ctx c = {NULL, {0, 0, 0, 0, N, V}};
  kd_status st = kd_gpu_loss_load(b->cu, ptx, &c.l, b->err, sizeof b->err);
  free(ptx);
  const kd_gpu_program *p = st ? NULL : kd_gpu_loss_program(c.l);
  size_t es = p && p->student_dtype == KD_BF16 ? 2 : 4;
  if (!st && p->teacher_dtype >= 0) st = fill_logits(b, &c.a.teacher, N, V, es);
  if (!st) st = fill_logits(b, &c.a.student, N, V, es);
  if (!st && p->has_labels) {
    int64_t *lab = malloc((size_t)N * sizeof *lab);
    for (int64_t i = 0; lab && i < N; i++) lab[i] = i % V;
    st = lab ? kd_cuda_malloc(b->cu, (size_t)N * 8, &c.a.labels, b->err, sizeof b->err) : KD_ERR_NOMEM;
    if (!st) st = kd_cuda_htod(b->cu, c.a.labels, lab, (size_t)N * 8, NULL, b->err, sizeof b->err);
    free(lab);
  }
  size_t gs = p && p->grad_dtype == KD_BF16 ? 2 : 4;
  if (!st && p->has_grad) st = kd_cuda_malloc(b->cu, (size_t)(N * V) * gs, &c.a.grad, b->err, sizeof b->err);
  float ms = 0;
  double loss = 0;
  if (!st) st = time_it(b, run_loss, &c, &ms);
  if (!st) st = kd_gpu_loss_value(c.l, &loss, b->err, sizeof b->err);
  if (!st) {
    double bytes = (double)(2 * es + (p->has_grad ? gs : 0)) * (double)N * (double)V;
    double gbs = bytes / (ms * 1e-3) / 1e9;
    printf("%-24s %s%s N=%lld V=%lld  %9.3f ms  %7.1f GB/s  %5.1f%% of copy  (loss %.6g)\n", path,
           es == 2 ? "bf16" : "f32", gs == 2 ? " grad bf16" : "", (long long)N, (long long)V, ms, gbs,
           100 * gbs / copy_gbs, loss);
  }
  kd_cuda_free(b->cu, c.a.teacher);
  kd_cuda_free(b->cu, c.a.student);
  kd_cuda_free(b->cu, c.a.labels);
  kd_cuda_free(b->cu, c.a.grad);
  kd_gpu_loss_free(c.l);
  return st;
}

static int usage(void) {
  fprintf(stderr, "usage: kdc_gpu_bench LOSS.ptx... [--shape NxV] [--repeats R]\n");
  return 2;
}

int main(int argc, char **argv) {
  bench b = {.repeats = 20};
  long long N = 16384, V = 131072;
  const char *paths[64];
  int npaths = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
      if (sscanf(argv[++i], "%lldx%lld", &N, &V) != 2 || N < 1 || V < 1) return usage();
    } else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) {
      b.repeats = atoi(argv[++i]);
      if (b.repeats < 1) return usage();
    } else if (argv[i][0] == '-' || npaths == 64) {
      return usage();
    } else {
      paths[npaths++] = argv[i];
    }
  }
  if (!npaths) return usage();
  kd_cuda_device_info info;
  kd_status st = kd_cuda_open(&b.cu, b.err, sizeof b.err);
  if (!st) st = kd_cuda_use_device(b.cu, 0, b.err, sizeof b.err);
  if (!st) st = kd_cuda_device_info_get(b.cu, 0, &info, b.err, sizeof b.err);
  if (!st) st = kd_cuda_event_new(b.cu, &b.start, b.err, sizeof b.err);
  if (!st) st = kd_cuda_event_new(b.cu, &b.stop, b.err, sizeof b.err);
  double copy_gbs = 0;
  if (!st) st = copy_bandwidth(&b, &copy_gbs);
  if (!st)
    printf("device: %s (sm_%d%d, %d SMs); cuMemcpyDtoD 1 GiB: %.1f GB/s (read + write)\n", info.name,
           info.cc_major, info.cc_minor, info.sm_count, copy_gbs);
  for (int i = 0; i < npaths && !st; i++) st = bench_loss(&b, paths[i], N, V, copy_gbs);
  if (st) fprintf(stderr, "kdc_gpu_bench: %s\n", b.err);
  if (b.cu) {
    kd_cuda_event_free(b.cu, b.start);
    kd_cuda_event_free(b.cu, b.stop);
    kd_cuda_close(b.cu);
  }
  return st ? 1 : 0;
}
