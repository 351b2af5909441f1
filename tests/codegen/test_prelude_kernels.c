/* Every divergence of the prelude, as its spec in examples/losses/ is
 * lowered (with labels, so some rows are masked) and taken through the whole
 * pipeline, compiled to a fused kernel and compared with the reference
 * executor: f32 and bf16, a vocabulary that is no multiple of the vector
 * width and one that is, at the host's width, and (f32) at 4 lanes and at
 * 1, where the generic exp and log of codegen/mathlib.c run on any host.
 * Tolerances: the table in kcheck.c (the specs use T = 1). */
#include <stdio.h>

#include "check.h"
#include "kcheck.h"
#include "lower.h"
#include "passes.h"
#include "threadpool.h"

#ifndef KDC_EXAMPLES_DIR
#define KDC_EXAMPLES_DIR "examples/losses"
#endif

static const char *specs[] = {"fkl",      "rkl",      "jsd",  "tvd", "sym_kl",
                              "skew_fkl", "skew_rkl", "abkd", "ce"};

static kd_graph *lower_spec(const char *name, kd_dtype dtype) {
  char path[1024], err[512];
  snprintf(path, sizeof path, "%s/%s.kd", KDC_EXAMPLES_DIR, name);
  kd_diag *diag = kd_diag_new(stdout);
  kd_program *prog = NULL;
  kd_graph *g = NULL, *out = NULL;
  kd_lower_options lo = {.teacher_dtype = dtype, .student_dtype = dtype, .labels = true};
  kd_status st = kd_check_file(path, NULL, diag, &prog);
  if (!st) st = kd_lower(prog, &lo, diag, &g, NULL);
  if (!st && (st = kd_pipeline_run(g, NULL, &out, err, sizeof err)))
    printf("FAIL %s: %s\n", path, err);
  else if (st)
    printf("FAIL %s: %s\n", path, kd_status_str(st));
  kd_graph_free(g);
  kd_program_free(prog);
  kd_diag_free(diag);
  return st ? NULL : out;
}

int main(void) {
  kd_pool *pool;
  if (kd_pool_new(2, &pool)) {
    printf("FAIL: no thread pool\n");
    return 1;
  }
  int failures = 0;
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
    for (int bf = 0; bf < 2; bf++) {
      kd_dtype dt = bf ? KD_BF16 : KD_F32;
      kd_graph *g = lower_spec(specs[i], dt);
      if (!g) {
        failures++;
        continue;
      }
      /* one compile per width: the shapes of a width share it; 4 and 1 lanes on f32
       * only (1 lane takes mathlib's generic exp and log even on an AVX-512 host,
       * whose 4 and 8 lanes still take the AVX-512 ones); logits of magnitude 1e4
       * (distributions that are nearly one-hot, where a divergence that cancels
       * row scalars such as lse loses its digits) */
      static const struct { int64_t n, v; int width; double mag; } shapes[] = {
          {5, 37, 0, 0}, {3, 1024, 0, 0}, {4, 1000, 0, 1e4}, /* then f32 only: */
          {3, 37, 4, 0}, {3, 1000, 1, 0},  {4, 1000, 1, 1e4}};
      for (size_t k = 0; k < (bf ? 3 : sizeof shapes / sizeof shapes[0]); k++) {
        char what[128];
        snprintf(what, sizeof what, "%s N=%lld V=%lld %s w=%d mag=%g", specs[i], (long long)shapes[k].n,
                 (long long)shapes[k].v, kd_dtype_name(dt), shapes[k].width, shapes[k].mag);
        kd_kc_case c = {g, shapes[k].n, shapes[k].v, 1.0, shapes[k].mag, 0, 1, dt, shapes[k].width, 0, 1};
        failures += kd_kc_run(what, &c, pool);
      }
      kd_kc_done();
      kd_graph_free(g);
    }
  }
  kd_pool_free(pool);
  kd_kc_report();
  printf(failures ? "FAILED (%d)\n" : "ok\n", failures);
  return failures != 0;
}
