/* Helpers shared by the IR and pass tests: a failure counter, closeness
 * checks, running a graph on double arrays through the reference executor,
 * and central finite differences. Header-only (static inline) so that each
 * test is one .c file. */
#ifndef KD_TESTUTIL_H
#define KD_TESTUTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"
#include "refexec.h"

static int tu_failures;

#define TU_CHECK(cond, ...)                                     \
  do {                                                          \
    if (!(cond)) {                                              \
      tu_failures++;                                            \
      fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);     \
      fprintf(stderr, __VA_ARGS__);                             \
      fputc('\n', stderr);                                      \
    }                                                           \
  } while (0)

/* |got - want| <= atol + rtol |want|, with equal infinities and nan == nan. */
static inline int tu_close(double got, double want, double atol, double rtol) {
  if (isnan(want)) return isnan(got);
  if (isinf(want)) return got == want;
  return fabs(got - want) <= atol + rtol * fabs(want);
}

/* Deterministic uniform numbers in [lo, hi) (xorshift; no libc rand state). */
static inline double tu_uniform(unsigned long long *s, double lo, double hi) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return lo + (hi - lo) * (double)(*s >> 11) / 9007199254740992.0;
}

/* An f64 array bound to an input by name (f64 data feeds any float input;
 * integer inputs take KD_I64 data through tu_input_i64). */
static inline kd_ref_input tu_input(const char *name, int rank, const int64_t *shape,
                                    const double *data) {
  kd_ref_input in;
  memset(&in, 0, sizeof in);
  in.name = name;
  in.dtype = KD_F64;
  in.rank = rank;
  for (int i = 0; i < rank; i++) in.shape[i] = shape[i];
  in.data = data;
  return in;
}

static inline kd_ref_input tu_input_i64(const char *name, int rank, const int64_t *shape,
                                        const int64_t *data) {
  kd_ref_input in = tu_input(name, rank, shape, NULL);
  in.dtype = KD_I64;
  in.data = data;
  return in;
}

/* Runs g and returns the output named `out` (caller frees); on an error
 * counts a failure and returns an empty value. */
static inline kd_ref_value tu_run(const kd_graph *g, const kd_ref_input *in, size_t nin,
                                  const char *out) {
  kd_ref_value res = {0};
  size_t n = kd_graph_noutputs(g);
  kd_ref_value *all = calloc(n + 1, sizeof *all);
  char err[256] = "";
  kd_status st = kd_ref_exec(g, in, nin, all, err, sizeof err);
  TU_CHECK(st == KD_OK, "kd_ref_exec: %s", err);
  for (size_t i = 0; i < n; i++) {
    if (st == KD_OK && !strcmp(kd_graph_output_name(g, i), out)) res = all[i];
    else kd_ref_value_free(&all[i]);
  }
  free(all);
  TU_CHECK(st != KD_OK || res.data, "no output named %s", out);
  return res;
}

/* The rank-0 output `out` of g. */
static inline double tu_scalar(const kd_graph *g, const kd_ref_input *in, size_t nin,
                               const char *out) {
  kd_ref_value v = tu_run(g, in, nin, out);
  double x = v.data && v.size == 1 ? v.data[0] : NAN;
  kd_ref_value_free(&v);
  return x;
}

/* Central differences of the scalar output `out` with respect to input
 * number `k` of in[], into fd[] (one per element). The step is relative,
 * h = 1e-5 max(1, |x|): in double the rounding error of the difference is
 * about eps |L| / h ~ 1e-11 |L| and the truncation error h^2 |L'''| / 6 ~
 * 1e-11 for the smooth, O(1)-scaled losses tested, so 1e-6 tolerances have
 * five orders of magnitude to spare while a wrong rule (an error of O(1)
 * in some element) cannot pass. */
static inline void tu_fd(const kd_graph *g, kd_ref_input *in, size_t nin, size_t k,
                         const char *out, double *fd) {
  double *x = (double *)in[k].data; /* tests own their arrays */
  size_t size = 1;
  for (int i = 0; i < in[k].rank; i++) size *= (size_t)in[k].shape[i];
  for (size_t i = 0; i < size; i++) {
    double x0 = x[i], h = 1e-5 * fmax(1.0, fabs(x0));
    x[i] = x0 + h;
    double up = tu_scalar(g, in, nin, out);
    x[i] = x0 - h;
    double dn = tu_scalar(g, in, nin, out);
    x[i] = x0;
    fd[i] = (up - dn) / (2 * h);
  }
}

static inline int tu_done(const char *name) {
  if (tu_failures) {
    fprintf(stderr, "%s: %d failure(s)\n", name, tu_failures);
    return 1;
  }
  printf("%s: ok\n", name);
  return 0;
}

#endif /* KD_TESTUTIL_H */
