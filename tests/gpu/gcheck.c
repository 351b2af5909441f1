/* See gcheck.h.
 *
 * Tolerances, with eps = FLT_EPSILON and scale = 1 + max |logit| (T = 1 in
 * the specs): the kernel forms log-probabilities in f32 (a few eps * scale
 * of absolute error each, as tests/codegen/kcheck.c argues) and sums a row
 * in f32: each of B threads adds at most ceil(V / B) terms, then 5 shuffle
 * merges and B / 32 warp merges: a random-walk error of sqrt(b) eps with
 * b = ceil(V / B) + 5 + B / 32, relative to the terms' magnitudes; so
 *   loss: |k - r| <= 8 eps scale (1 + sqrt(b))
 *   grad: max |k - r| <= 8 eps scale (1 + sqrt(b)) max(max |r|, 1 / (count V))
 * (8: four roundings of a log-probability on each of two distributions, as
 * the CPU kernels' table). A gradient stored as bf16 is the kernel's f32
 * value k rounded to nearest even: half a unit in the last of bf16's 8
 * significant bits, |bf16(k) - k| <= 2^-8 |k| <= 2^-8 (|r| + tol); each
 * element may be off by that much more. Masked rows must give
 * exactly 0. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gcheck.h"
#include "lower.h"
#include "passes.h"
#include "refexec.h"

#ifndef KDC_EXAMPLES_DIR
#define KDC_EXAMPLES_DIR "examples/losses"
#endif

static const char *specs[] = {"fkl", "rkl", "jsd", "tvd", "sym_kl", "skew_fkl", "skew_rkl", "abkd", "ce"};

static uint64_t rng = 0x243f6a8885a308d3ull;

static double uniform(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (double)(rng >> 11) * 0x1p-53;
}

static kd_graph *lower_spec(const char *name, kd_dtype dtype) {
  char path[1024], err[512];
  snprintf(path, sizeof path, "%s/%s.kd", KDC_EXAMPLES_DIR, name);
  kd_diag *diag = kd_diag_new(stdout);
  kd_program *prog = NULL;
  kd_graph *g = NULL, *out = NULL;
  kd_lower_options lo = {.teacher_dtype = dtype, .student_dtype = dtype, .labels = true};
  kd_status st = kd_check_file(path, NULL, diag, &prog);
  if (!st) st = kd_lower(prog, &lo, diag, &g, NULL);
  if (!st && (st = kd_pipeline_run(g, NULL, &out, err, sizeof err))) printf("FAIL %s: %s\n", path, err);
  else if (st) printf("FAIL %s: %s\n", path, kd_status_str(st));
  kd_graph_free(g);
  kd_program_free(prog);
  kd_diag_free(diag);
  return st ? NULL : out;
}

/* logits in [-6, 6), as f32 or bf16 (the upper half of the f32, rounded
 * down: the reference reads the same bits) */
static void *logits(size_t n, kd_dtype dt, double *maxabs) {
  void *p = malloc(n * (dt == KD_BF16 ? 2 : 4));
  for (size_t i = 0; p && i < n; i++) {
    float x = (float)(12 * uniform() - 6);
    if (dt == KD_BF16) {
      uint32_t u;
      memcpy(&u, &x, 4);
      ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
    } else {
      ((float *)p)[i] = x;
    }
    if (fabs(x) > *maxabs) *maxabs = fabs(x);
  }
  return p;
}

static int run_case(const gc_runner *run, void *h, const char *what, const kd_graph *g, kd_dtype dt,
                    kd_dtype gdt, int64_t N, int64_t V) {
  char err[8192];
  size_t nv = (size_t)(N * V);
  double maxabs = 0;
  void *t = logits(nv, dt, &maxabs), *s = logits(nv, dt, &maxabs);
  int64_t *labels = malloc((size_t)N * sizeof *labels);
  float *grad = malloc(nv * sizeof *grad); /* room for either dtype; bf16 widened in place below */
  int64_t count = 0;
  for (int64_t i = 0; i < N; i++) {
    labels[i] = i % 3 == 1 ? -100 : (int64_t)(uniform() * (double)V); /* every third row masked */
    count += labels[i] != -100;
  }
  kd_ref_input in[3] = {{"teacher", dt, 2, {N, V}, t}, {"student", dt, 2, {N, V}, s}, {"labels", KD_I64, 2, {N, 1}, labels}};
  size_t nout = kd_graph_noutputs(g);
  kd_ref_value out[4] = {{0}};
  double loss = NAN;
  int bad = 0;
  kd_status st = kd_ref_exec(g, in, 3, out, err, sizeof err);
  kd_loss_io io = {t, dt, s, dt, labels, N, V, grad, &loss, gdt};
  if (!st) st = run->eval(h, &io, err, sizeof err);
  for (size_t k = nv; !st && gdt == KD_BF16 && k-- > 0;) { /* from the end: no bf16 is overwritten unread */
    uint16_t h16;
    memcpy(&h16, (const char *)grad + 2 * k, 2);
    grad[k] = kd_bf16_to_f32(h16);
  }
  if (st) {
    printf("FAIL %s: %s\n", what, err);
    bad = 1;
  }
  double b = (double)((V + run->block - 1) / run->block) + 5 + run->block / 32;
  double eps = FLT_EPSILON, scale = 1 + maxabs, walk = 1 + sqrt(b);
  for (size_t i = 0; !bad && i < nout; i++) {
    const char *name = kd_graph_output_name(g, i);
    if (!strcmp(name, "loss")) {
      double r = out[i].data[0], tol = 8 * eps * scale * walk;
      if (!(fabs(loss - r) <= tol) && !(isinf(r) && loss == r)) {
        printf("FAIL %s: loss %.9g, reference %.9g (tolerance %.3g)\n", what, loss, r, tol);
        bad = 1;
      }
    } else if (!strcmp(name, "grad")) {
      double gmax = count ? 1.0 / ((double)count * (double)V) : 0, worst = 0;
      for (size_t k = 0; k < nv; k++) gmax = fmax(gmax, fabs(out[i].data[k]));
      for (size_t k = 0; k < nv; k++) {
        int64_t row = (int64_t)k / V;
        if (labels[row] == -100 && grad[k] != 0) {
          printf("FAIL %s: masked row %lld has gradient %g\n", what, (long long)row, grad[k]);
          bad = 1;
          break;
        }
        double d = fabs(grad[k] - out[i].data[k]);
        if (gdt == KD_BF16) d -= 0x1p-8 * (fabs(out[i].data[k]) + 8 * eps * scale * walk * gmax);
        worst = fmax(worst, d);
        if (isnan(grad[k]) != isnan(out[i].data[k])) worst = INFINITY;
      }
      double tol = 8 * eps * scale * walk * gmax;
      if (!bad && !(worst <= tol)) {
        printf("FAIL %s: gradient error %.3g > %.3g\n", what, worst, tol);
        bad = 1;
      }
    }
  }
  if (!bad) printf("ok %s: loss %.9g\n", what, loss);
  for (size_t i = 0; i < nout; i++) kd_ref_value_free(&out[i]);
  free(t);
  free(s);
  free(labels);
  free(grad);
  return bad;
}

int gc_run_all(const gc_runner *run, void *ctx, const int64_t (*shapes)[2], size_t nshapes) {
  int failures = 0;
  char err[8192];
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
    for (int v = 0; v < 3; v++) { /* logits f32, bf16; f32 with a bf16 gradient */
      kd_dtype dt = v == 1 ? KD_BF16 : KD_F32, gdt = v == 2 ? KD_BF16 : KD_F32;
      kd_graph *g = lower_spec(specs[i], dt);
      void *h = NULL;
      const char *gname = gdt == KD_BF16 ? " grad bf16" : "";
      if (g && run->compile(ctx, g, gdt, &h, err, sizeof err)) {
        printf("FAIL %s %s%s: %s\n", specs[i], kd_dtype_name(dt), gname, err);
        kd_graph_free(g);
        g = NULL;
      }
      if (!g) {
        failures++;
        continue;
      }
      for (size_t k = 0; k < nshapes; k++) {
        char what[128];
        snprintf(what, sizeof what, "%s %s%s N=%lld V=%lld", specs[i], kd_dtype_name(dt), gname,
                 (long long)shapes[k][0], (long long)shapes[k][1]);
        failures += run_case(run, h, what, g, dt, gdt, shapes[k][0], shapes[k][1]);
      }
      run->release(h);
      kd_graph_free(g);
    }
  printf(failures ? "FAILED (%d)\n" : "ok\n", failures);
  return failures;
}
