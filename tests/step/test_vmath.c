/* runtime/vmath.h against double libm: every 61st float bit pattern (both
 * signs, subnormals, the ranges where exp overflows and underflows), the
 * first and last 4096 patterns of each binade edge that matters (around 0,
 * the subnormal boundary, exp's overflow and underflow thresholds, tanh's
 * switch at 0.625), and inf, -inf, NaN, -0.
 *
 * Tolerances (in ulps of the correctly rounded result, at its own spacing:
 * 2^-149 for subnormal results) are the bounds vmath.h states: exp and log
 * 1.5, tanh 2: the largest errors seen (0.97, 0.82, 1.30, printed) plus
 * about half an ulp for inputs between the sampled ones. A wrong
 * coefficient or a reduction off by one power of two is off by thousands
 * of ulps. The
 * array pass checks that the loop the compiler vectorises gives the same
 * bits as the scalar calls. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "vmath.h"

static float from_bits(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* The error of got against the exact value ref (a double), in ulps of the
   float nearest ref; non-finite refs must match exactly (as float). */
static double ulps(float got, double ref) {
  float rf = (float)ref;
  if (isnan(ref)) return isnan(got) ? 0 : INFINITY;
  if (isinf(rf)) return got == rf ? 0 : INFINITY;
  if (isnan(got) || isinf(got)) return INFINITY;
  int e;
  frexp(fabs(ref) > 0x1p-126 ? ref : 0x1p-126, &e);
  double ulp = ldexp(1.0, e - 24); /* 2^-149 below the normal range */
  return fabs((double)got - ref) / ulp;
}

typedef struct fn_case {
  const char *name;
  float (*f)(float);
  double (*ref)(double);
  double tol;
  double worst;
  float worst_x;
} fn_case;

static float v_exp(float x) { return kd_expf(x); }
static float v_log(float x) { return kd_logf(x); }
static float v_tanh(float x) { return kd_tanhf(x); }

static void one(fn_case *c, float x) {
  float got = c->f(x);
  double e = ulps(got, c->ref((double)x));
  if (e > c->worst || isnan(e)) c->worst = e, c->worst_x = x;
}

/* 4096 patterns either side of x (same sign). */
static void around(fn_case *c, float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  for (uint32_t d = 0; d < 4096; d++) {
    one(c, from_bits(u + d));
    if (u - d <= u) one(c, from_bits(u - d));
  }
}

static void sweep(fn_case *c) {
  for (uint64_t u = 0; u < (1ull << 32); u += 61) one(c, from_bits((uint32_t)u));
  static const float edges[] = {0.0f,     0x1p-149f, 0x1p-126f, 1.0f,     0.625f,  88.72f,
                                -87.33f,  -103.97f,  -103.28f,  9.01f,    0.5f,    2.0f,
                                1.41421f, 0.70711f,  0x1p-20f,  1e-7f,    3.4e38f, 80.0f};
  for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
    around(c, edges[i]);
    around(c, -edges[i]);
  }
  const float special[] = {INFINITY, -INFINITY, NAN, -NAN, 0.0f, -0.0f};
  for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) one(c, special[i]);
  printf("%-5s largest error %.3f ulp at %a (bound %.1f)\n", c->name, c->worst,
         (double)c->worst_x, c->tol);
  CHECK(c->worst <= c->tol);
}

/* The special values exactly, signs included. */
static void test_specials(void) {
  CHECK(kd_expf(INFINITY) == INFINITY && kd_expf(-INFINITY) == 0.0f && isnan(kd_expf(NAN)));
  CHECK(kd_expf(0.0f) == 1.0f && kd_expf(-0.0f) == 1.0f && kd_expf(89.0f) == INFINITY);
  CHECK(kd_expf(-200.0f) == 0.0f && kd_expf(-100.0f) > 0.0f); /* e^-100 is subnormal */
  CHECK(kd_logf(1.0f) == 0.0f && kd_logf(0.0f) == -INFINITY && kd_logf(-0.0f) == -INFINITY);
  CHECK(isnan(kd_logf(-1.0f)) && isnan(kd_logf(-INFINITY)) && isnan(kd_logf(NAN)));
  CHECK(kd_logf(INFINITY) == INFINITY && fabsf(kd_logf(0x1p-149f) + 103.2789f) < 1e-4f);
  CHECK(kd_tanhf(INFINITY) == 1.0f && kd_tanhf(-INFINITY) == -1.0f && isnan(kd_tanhf(NAN)));
  CHECK(kd_tanhf(0.0f) == 0.0f && signbit(kd_tanhf(-0.0f)) && kd_tanhf(20.0f) == 1.0f);
  CHECK(kd_tanhf(-1e-30f) == -1e-30f);
}

/* A loop over an array (vectorised at -O2 with the cost model step.c uses,
   or not) gives the scalar calls' bits. */
enum { NV = 4099 };
static float xs[NV], ys[NV];

static void test_arrays(void) {
  for (int i = 0; i < NV; i++) xs[i] = (float)(i - NV / 2) * 0.0473f;
  float (*fns[3])(float) = {v_exp, v_log, v_tanh};
  for (int k = 0; k < 3; k++) {
    switch (k) {
    case 0: for (int i = 0; i < NV; i++) ys[i] = kd_expf(xs[i]); break;
    case 1: for (int i = 0; i < NV; i++) ys[i] = kd_logf(xs[i]); break;
    default: for (int i = 0; i < NV; i++) ys[i] = kd_tanhf(xs[i]); break;
    }
    int bad = 0;
    for (int i = 0; i < NV; i++) {
      float s = fns[k](xs[i]);
      bad += memcmp(&s, &ys[i], sizeof s) != 0;
    }
    CHECK(bad == 0);
  }
}

int main(void) {
  test_specials();
  test_arrays();
  fn_case cases[] = {{"exp", v_exp, exp, 1.5, 0, 0},
                     {"log", v_log, log, 1.5, 0, 0},
                     {"tanh", v_tanh, tanh, 2, 0, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) sweep(&cases[i]);
  return check_exit("test_vmath");
}
