/* Gradient checks for graphs with several float inputs (a layer's input and
 * its parameters): kd_autodiff_many gives every gradient in one backward
 * walk; each is compared, through the reference executor, with central
 * finite differences of the scalar output "loss" (step: tu_fd's, relative
 * 1e-5), straight out of autodiff, again after simplify, cse and dce
 * (which must not change a value), and on the canonicalised graph. A tensor of more than GC_SAMPLES elements
 * is checked at GC_SAMPLES spread positions, so a whole model stays within a
 * second; a wrong rule shows in every element it touches, not in one. */
#ifndef KD_GRADCHECK_H
#define KD_GRADCHECK_H

#include "passes.h"
#include "testutil.h"

enum { GC_SAMPLES = 40, GC_MAXWRT = 32 };

static inline size_t gc_size(const kd_ref_input *in) {
  size_t n = 1;
  for (int i = 0; i < in->rank; i++) n *= (size_t)in->shape[i];
  return n;
}

/* Element j of the positions checked in a tensor of n elements. */
static inline size_t gc_pos(size_t j, size_t n) {
  return n <= GC_SAMPLES ? j : (j * 7919u) % n; /* 7919 is prime: distinct */
}

static inline double gc_fd(const kd_graph *g, kd_ref_input *in, size_t nin, size_t k, size_t i) {
  double *x = (double *)in[k].data; /* tests own their arrays */
  double x0 = x[i], h = 1e-5 * fmax(1.0, fabs(x0));
  x[i] = x0 + h;
  double up = tu_scalar(g, in, nin, "loss");
  x[i] = x0 - h;
  double dn = tu_scalar(g, in, nin, "loss");
  x[i] = x0;
  return (up - dn) / (2 * h);
}

/* Runs d (a graph with outputs "d.NAME") and compares each with fd. */
static inline void gc_compare(const char *what, const char *stage, const kd_graph *d,
                              kd_ref_input *in, size_t nin, const size_t *wrt, size_t nwrt,
                              double *const *fd, double atol, double rtol) {
  char name[96];
  for (size_t w = 0; w < nwrt; w++) {
    const kd_ref_input *x = &in[wrt[w]];
    snprintf(name, sizeof name, "d.%s", x->name);
    kd_ref_value v = tu_run(d, in, nin, name);
    size_t n = gc_size(x), m = n < GC_SAMPLES ? n : GC_SAMPLES;
    TU_CHECK(v.size == n, "%s (%s): %s has %zu elements, want %zu", what, stage, name, v.size, n);
    for (size_t j = 0; j < m && v.size == n; j++) {
      size_t i = gc_pos(j, n);
      TU_CHECK(tu_close(v.data[i], fd[w][j], atol, rtol),
               "%s (%s): d loss/d %s[%zu] = %.12g, finite differences %.12g", what, stage,
               x->name, i, v.data[i], fd[w][j]);
    }
    kd_ref_value_free(&v);
  }
}

/* Checks d loss / d in[wrt[w]] for every w. */
static inline void gc_check(const char *what, const kd_graph *g, kd_ref_input *in, size_t nin,
                            const size_t *wrt, size_t nwrt, double atol, double rtol) {
  char names[GC_MAXWRT][96];
  const char *wn[GC_MAXWRT], *gn[GC_MAXWRT];
  double *fd[GC_MAXWRT];
  if (nwrt > GC_MAXWRT) {
    TU_CHECK(0, "%s: more than %d inputs to check", what, GC_MAXWRT);
    return;
  }
  for (size_t w = 0; w < nwrt; w++) {
    snprintf(names[w], sizeof names[w], "d.%s", in[wrt[w]].name);
    wn[w] = in[wrt[w]].name;
    gn[w] = names[w];
    size_t n = gc_size(&in[wrt[w]]), m = n < GC_SAMPLES ? n : GC_SAMPLES;
    fd[w] = malloc(GC_SAMPLES * sizeof(double));
    for (size_t j = 0; j < m && fd[w]; j++) fd[w][j] = gc_fd(g, in, nin, wrt[w], gc_pos(j, n));
  }
  char err[256] = "";
  kd_graph *d = NULL, *s = NULL, *c = NULL, *dd = NULL;
  TU_CHECK(kd_autodiff_many(g, "loss", nwrt, wn, gn, &d, err, sizeof err) == KD_OK, "%s: %s",
           what, err);
  if (d) {
    gc_compare(what, "autodiff", d, in, nin, wrt, nwrt, fd, atol, rtol);
    TU_CHECK(kd_pass_simplify(d, &s, err, sizeof err) == KD_OK, "%s: %s", what, err);
  }
  if (s) TU_CHECK(kd_pass_cse(s, &c, err, sizeof err) == KD_OK, "%s: %s", what, err);
  if (c) TU_CHECK(kd_pass_dce(c, &dd, err, sizeof err) == KD_OK, "%s: %s", what, err);
  if (dd) gc_compare(what, "simplified", dd, in, nin, wrt, nwrt, fd, atol, rtol);
  kd_graph *cg = NULL, *cd = NULL; /* canonicalised first, as the pipeline does */
  TU_CHECK(kd_pass_canonicalize(g, &cg, err, sizeof err) == KD_OK, "%s: %s", what, err);
  if (cg)
    TU_CHECK(kd_autodiff_many(cg, "loss", nwrt, wn, gn, &cd, err, sizeof err) == KD_OK,
             "%s: %s", what, err);
  if (cd) gc_compare(what, "canonicalised", cd, in, nin, wrt, nwrt, fd, atol, rtol);
  kd_graph_free(cg);
  kd_graph_free(cd);
  kd_graph_free(d);
  kd_graph_free(s);
  kd_graph_free(c);
  kd_graph_free(dd);
  for (size_t w = 0; w < nwrt; w++) free(fd[w]);
}

#endif /* KD_GRADCHECK_H */
