/* The fused-loss benchmark: for each shape, divergence and thread count, the
 * time of kdc's compiled loss + gradient, its effective bandwidth, the copy
 * bandwidth of the same minutes (bench/stream.h: a copy timed before each of
 * the row's runs, the best of them) and the fraction of it reached, and
 * PyTorch eager for the same shape and threads (bench/torch_losses.py, when
 * the Python interpreter can import torch).
 *
 *   kdc_loss_bench [--shapes 512x32000,2048x32000,4096x50257,512x128256]
 *                  [--threads 1,2] [--loss fkl,rkl,...] [--repeats 5]
 *                  [--specs DIR] [--no-torch] [--python PY] [--torch-repeats R]
 *                  [--nontemporal 0|1] [--grad-dtype f32|bf16] [--in-cache]
 *
 * The baseline's interpreter is --python, else $KDC_PYTHON, else python3
 * from PATH (Debian's python3-torch is importable from /usr/bin/python3
 * only, not from a pyenv or venv python3 that comes first on PATH).
 *
 * Each divergence is the spec examples/losses/<name>.kd taken through the
 * whole compiler (check, lower, pipeline, fuse, LLVM), so the figures are
 * those of `kdc eval-loss`. Inputs: f32 logits, normal with sigma 3.
 * Effective GB/s = 3 x N x V x 4 bytes / time (read t, read s, write the
 * gradient once each: the floor); (4 + 4 + 2) x N x V with --grad-dtype
 * bf16, whose kernels store the gradient in bfloat16. Times are the best of the repeats after
 * one warm-up run. With --in-cache the copy runs before the warm-up only, so a shape whose
 * rows fit in L2 (4x8192) times the kernels' arithmetic alone (the cpu ns column); compare
 * two builds by running them in turn. The machine may be shared: run it when it is quiet. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "loss.h"
#include "lower.h"
#include "passes.h"
#include "stream.h"
#include "threadpool.h"

#ifndef KDC_EXAMPLES_DIR
#define KDC_EXAMPLES_DIR "examples/losses"
#endif
#ifndef KDC_BENCH_DIR
#define KDC_BENCH_DIR "bench"
#endif

#define MAX_ITEMS 16

typedef struct options {
  int64_t n[MAX_ITEMS], v[MAX_ITEMS];
  int nshapes;
  int threads[MAX_ITEMS], nthreads;
  char *loss[MAX_ITEMS];
  int nloss;
  int repeats, torch_repeats; /* PyTorch eager is 10-50 times slower: fewer repeats */
  const char *specs;
  int torch;
  const char *python; /* the interpreter that runs torch_losses.py */
  int nontemporal;
  int grad_bf16;     /* --grad-dtype bf16: the kernels store the gradient in bf16 */
  int in_cache;      /* --in-cache: one copy before the warm-up only, so rows that fit
                        stay in cache and the times are the kernels' arithmetic */
} options;

/* kdc's spec name -> bench/torch_losses.py's name (NULL: no baseline) */
static const char *torch_name(const char *kd) {
  static const char *map[][2] = {{"fkl", "fkl"},         {"rkl", "rkl"},
                                 {"jsd", "jsd"},         {"tvd", "tvd"},
                                 {"sym_kl", "skl"},      {"skew_fkl", "sfkl"},
                                 {"skew_rkl", "srkl"},   {"ce", "ce"}};
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (!strcmp(map[i][0], kd)) return map[i][1];
  return NULL;
}

static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int split_list(char *s, char **items, int max) {
  int n = 0;
  for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ",")) items[n++] = tok;
  return n;
}

static int parse_args(int argc, char **argv, options *o) {
  static char shapes[] = "512x32000,2048x32000,4096x50257,512x128256";
  static char threads[] = "1,2";
  static char losses[] = "fkl,rkl,jsd,tvd,sym_kl,skew_fkl,skew_rkl,abkd,ce";
  char *sh = shapes, *th = threads, *lo = losses;
  o->repeats = 5;
  o->specs = KDC_EXAMPLES_DIR;
  o->torch = 1;
  o->python = getenv("KDC_PYTHON") && *getenv("KDC_PYTHON") ? getenv("KDC_PYTHON") : "python3";
  o->nontemporal = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--no-torch")) {
      o->torch = 0;
      continue;
    }
    if (!strcmp(a, "--in-cache")) {
      o->in_cache = 1;
      continue;
    }
    if (!val) return 0;
    if (!strcmp(a, "--shapes")) sh = argv[++i];
    else if (!strcmp(a, "--threads")) th = argv[++i];
    else if (!strcmp(a, "--loss")) lo = argv[++i];
    else if (!strcmp(a, "--repeats")) o->repeats = atoi(argv[++i]);
    else if (!strcmp(a, "--specs")) o->specs = argv[++i];
    else if (!strcmp(a, "--python")) o->python = argv[++i];
    else if (!strcmp(a, "--torch-repeats")) o->torch_repeats = atoi(argv[++i]);
    else if (!strcmp(a, "--nontemporal")) o->nontemporal = atoi(argv[++i]);
    else if (!strcmp(a, "--grad-dtype") && (!strcmp(val, "f32") || !strcmp(val, "bf16")))
      o->grad_bf16 = !strcmp(argv[++i], "bf16");
    else return 0;
  }
  char *items[MAX_ITEMS];
  o->nshapes = split_list(sh, items, MAX_ITEMS);
  for (int i = 0; i < o->nshapes; i++)
    if (sscanf(items[i], "%" SCNd64 "x%" SCNd64, &o->n[i], &o->v[i]) != 2 || o->n[i] < 1 || o->v[i] < 1)
      return 0;
  int nt = split_list(th, items, MAX_ITEMS);
  for (int i = 0; i < nt; i++) o->threads[i] = atoi(items[i]);
  o->nthreads = nt;
  o->nloss = split_list(lo, o->loss, MAX_ITEMS);
  if (!o->torch_repeats) o->torch_repeats = o->repeats;
  /* it goes into a shell command in single quotes */
  return o->repeats >= 1 && o->torch_repeats >= 1 && o->nshapes && o->nthreads && o->nloss && !strchr(o->python, '\'');
}

/* The spec's objective through the whole pipeline; NULL on error (printed). */
static kd_graph *compile_spec(const char *dir, const char *name) {
  char path[1024], err[512];
  snprintf(path, sizeof path, "%s/%s.kd", dir, name);
  kd_diag *diag = kd_diag_new(stderr);
  kd_program *prog = NULL;
  kd_graph *g = NULL, *out = NULL;
  kd_lower_options lo = {0};
  kd_status st = kd_check_file(path, NULL, diag, &prog);
  if (!st) st = kd_lower(prog, &lo, diag, &g, NULL);
  if (!st && (st = kd_pipeline_run(g, NULL, &out, err, sizeof err)))
    fprintf(stderr, "%s: %s\n", path, err);
  else if (st)
    fprintf(stderr, "%s: %s\n", path, kd_status_str(st));
  kd_graph_free(g);
  kd_program_free(prog);
  kd_diag_free(diag);
  return st ? NULL : out;
}

/* PyTorch eager for one row, in a fresh process (torch_losses.py --one);
 * 0 when torch is unavailable. */
static int torch_row(const options *o, const char *name, int64_t n, int64_t v, int threads,
                     double *ms, double *gbs) {
  char cmd[2048], line[4096] = "";
  snprintf(cmd, sizeof cmd,
           "'%s' '%s/torch_losses.py' --one %s --shape %lldx%lld --threads %d --repeats %d 2>/dev/null",
           o->python, KDC_BENCH_DIR, name, (long long)n, (long long)v, threads, o->torch_repeats);
  FILE *p = popen(cmd, "r");
  if (!p) return 0;
  while (fgets(line, sizeof line, p)) {}
  int rc = pclose(p);
  const char *a = strstr(line, "\"ms\": "), *b = strstr(line, "\"gbs\": ");
  if (rc != 0 || !a || !b) return 0;
  *ms = atof(a + 6);
  *gbs = atof(b + 7);
  return 1;
}

static int torch_available(const options *o) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' -c 'import torch' >/dev/null 2>&1", o->python);
  return system(cmd) == 0;
}

static void fill(float *x, size_t n, uint64_t seed) {
  uint64_t r = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; i++) {
    /* sum of 4 uniforms: close enough to normal for logits, and fast */
    double u = 0;
    for (int k = 0; k < 4; k++) {
      r ^= r << 13, r ^= r >> 7, r ^= r << 17;
      u += (double)(r >> 11) * 0x1p-53;
    }
    x[i] = (float)(3.0 * (u - 2.0) * 1.7320508);
  }
}

int main(int argc, char **argv) {
  options o;
  memset(&o, 0, sizeof o);
  if (!parse_args(argc, argv, &o)) {
    fprintf(stderr, "usage: kdc_loss_bench [--shapes NxV,...] [--threads 1,2] [--loss fkl,...] "
                    "[--repeats R] [--specs DIR] [--no-torch] [--python PY] [--torch-repeats R]\n"
                    "       [--nontemporal 0|1] [--grad-dtype f32|bf16] [--in-cache]\n"
                    "  PY: the interpreter for the PyTorch baseline (default $KDC_PYTHON, else "
                    "python3)\n");
    return 2;
  }
  if (o.torch && !torch_available(&o)) {
    printf("# PyTorch baseline: n/a (%s cannot import torch: --python or KDC_PYTHON names the\n"
           "# interpreter; see bench/torch_losses.py)\n", o.python);
    o.torch = 0;
  } else if (o.torch) {
    printf("# PyTorch baseline: %s bench/torch_losses.py, eager forward + backward, same shape and "
           "threads, best of %d\n", o.python, o.torch_repeats);
  }
  size_t maxn = 0;
  for (int i = 0; i < o.nshapes; i++)
    if ((size_t)(o.n[i] * o.v[i]) > maxn) maxn = (size_t)(o.n[i] * o.v[i]);
  int64_t maxrows = 0;
  for (int i = 0; i < o.nshapes; i++)
    if (o.n[i] > maxrows) maxrows = o.n[i];
  float *t = malloc(maxn * sizeof *t), *s = malloc(maxn * sizeof *s), *g = malloc(maxn * sizeof *g);
  int64_t *labels = malloc((size_t)maxrows * sizeof *labels);
  if (!t || !s || !g || !labels) {
    fprintf(stderr, "kdc_loss_bench: cannot allocate %zu MB of logits\n", 3 * maxn * 4 >> 20);
    return 1;
  }
  fill(t, maxn, 1);
  fill(s, maxn, 2);
  memset(g, 0, maxn * sizeof *g);

  kd_pool *pools[MAX_ITEMS];
  kd_stream_probe *probes[MAX_ITEMS];
  for (int k = 0; k < o.nthreads; k++) {
    if (kd_pool_new(o.threads[k], &pools[k]) || kd_stream_report(stdout, pools[k], NULL) ||
        kd_stream_probe_new(pools[k], 0, &probes[k])) {
      fprintf(stderr, "kdc_loss_bench: no thread pool / stream failed\n");
      return 1;
    }
  }
  printf("# kdc fused loss + gradient, f32 logits, %s gradient, best of %d; GB/s = %s N V bytes /\n"
         "# time; copy = the best of a STREAM copy timed before each of the row's runs (the\n"
         "# bandwidth of the same minutes); fraction = GB/s / that copy GB/s\n",
         o.grad_bf16 ? "bf16" : "f32", o.repeats, o.grad_bf16 ? "(4 + 4 + 2)" : "3 x 4");
  printf("# cpu ns = CPU seconds of all threads per logit (contention-proof: a busy machine\n"
         "# stretches the wall time, not this)\n");
  printf("%-9s %-11s %3s %5s %5s %9s %7s %7s %6s %6s %9s %8s %7s\n", "loss", "shape", "thr", "pass",
         "exp", "ms", "GB/s", "copy", "frac", "cpu ns", "torch ms", "torch GB", "speedup");
  for (int li = 0; li < o.nloss; li++) {
    kd_graph *gr = compile_spec(o.specs, o.loss[li]);
    char err[512];
    kd_loss_options lo = {.nontemporal = o.nontemporal, .grad_dtype = o.grad_bf16 ? KD_BF16 : KD_F32};
    kd_loss *l = NULL;
    if (!gr || kd_loss_compile(gr, &lo, &l, err, sizeof err)) {
      fprintf(stderr, "%s: %s\n", o.loss[li], gr ? err : "cannot compile the spec");
      kd_graph_free(gr);
      continue;
    }
    const kd_schedule *sc = kd_loss_schedule(l);
    const kd_loss_program *prog = kd_loss_program_of(l);
    for (int si = 0; si < o.nshapes; si++) {
      int64_t N = o.n[si], V = o.v[si];
      for (int64_t i = 0; i < N; i++) labels[i] = (i * 7919) % V;
      for (int k = 0; k < o.nthreads; k++) {
        double loss = 0, best = INFINITY, best_cpu = INFINITY, copy = 0;
        kd_loss_io io = {t, KD_F32, s, KD_F32, prog->has_labels ? labels : NULL, N, V, g, &loss,
                         o.grad_bf16 ? KD_BF16 : KD_F32};
        for (int r = 0; r <= o.repeats; r++) {
          /* --in-cache: the copy would evict the rows; its figure is the warm-up's */
          double c = !o.in_cache || r == 0 ? kd_stream_probe_copy(probes[k]) : 0;
          if ((r > 0 || o.in_cache) && c > copy) copy = c;
          double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
          kd_status st = kd_loss_eval(l, &io, pools[k], err, sizeof err);
          double dt = clock_s(CLOCK_MONOTONIC) - t0, dc = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
          if (st) {
            fprintf(stderr, "%s: %s\n", o.loss[li], err);
            break;
          }
          if (r > 0 && dt < best) best = dt; /* run 0 warms up caches and page tables */
          if (r > 0 && dc < best_cpu) best_cpu = dc;
        }
        double gbs = (8.0 + (o.grad_bf16 ? 2 : 4)) * (double)N * (double)V / best / 1e9;
        char shape[32];
        snprintf(shape, sizeof shape, "%lldx%lld", (long long)N, (long long)V);
        printf("%-9s %-11s %3d %5d %5d %9.2f %7.1f %7.1f %5.0f%% %6.2f", o.loss[li], shape,
               o.threads[k], kd_schedule_passes(sc), kd_schedule_exps(sc), best * 1e3, gbs, copy,
               100 * gbs / copy, best_cpu * 1e9 / ((double)N * (double)V));
        double tms, tgbs;
        const char *tn = torch_name(o.loss[li]);
        if (o.torch && tn && torch_row(&o, tn, N, V, o.threads[k], &tms, &tgbs))
          printf(" %9.1f %8.2f %6.1fx\n", tms, tgbs, tms / (best * 1e3));
        else
          printf(" %9s %8s %7s\n", "n/a", "n/a", "");
        fflush(stdout);
      }
    }
    kd_loss_free(l);
    kd_graph_free(gr);
  }
  for (int k = 0; k < o.nthreads; k++) kd_stream_probe_free(probes[k]), kd_pool_free(pools[k]);
  free(t), free(s), free(g), free(labels);
  return 0;
}
