/* Single-precision exp, log and tanh that compilers vectorise: static
 * inline, branch-free (special cases are selects, not branches), no libm
 * call, no float-to-int conversion (the exponent is read from a float's
 * bits), so a loop applying them to an array runs 4 (SSE2) or 8 (AVX2)
 * lanes at a time where glibc's expf/logf/tanhf are one call an element.
 *
 * Accuracy, measured by tests/step/test_vmath.c against double libm over
 * every 61st float bit pattern (70 million inputs a function) and 8192
 * patterns around each edge (0, the subnormal boundary, the overflow and
 * underflow thresholds, tanh's switch at 0.625), in units in the last place
 * of the correctly rounded result (at the result's own spacing, 2^-149 for
 * subnormal results): largest seen / bound the test holds
 *   kd_expf   0.97 / 1.5 ulp; 0 below -103.97 (and for -inf), inf above
 *             88.72 (and for +inf), subnormal results included
 *   kd_logf   0.82 / 1.5 ulp; subnormal inputs included; log +-0 = -inf,
 *             log of a negative = NaN, log inf = inf
 *   kd_tanhf  1.30 / 2 ulp; odd (tanh -0 = -0), +-1 beyond |x| = 9.01
 * NaN in gives NaN out for all three. The numbers are those of Cephes's
 * expf, logf and tanhf (S. L. Moshier), whose polynomials these evaluate,
 * with the same argument reductions written without branches.
 *
 * Determinism: plain float adds and multiplies in a fixed order (C11 does
 * not contract them into FMAs unless asked), so a vectorised loop gives
 * the same bits as a scalar one, on every thread. */
#ifndef KD_VMATH_H
#define KD_VMATH_H

#include <stdint.h>
#include <string.h>

static inline uint32_t kd_vm_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

static inline float kd_vm_float(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* The integer n (|n| < 2^22) a float holding an integer value: n + 2^23 +
   2^22 puts n in the low mantissa bits, and subtracting the constant's
   bits leaves n as a two's-complement integer. */
static inline int32_t kd_vm_int(float n) {
  return (int32_t)(kd_vm_bits(n + 0x1.8p23f) - kd_vm_bits(0x1.8p23f));
}

/* 2^k for k in [-126, 127]. */
static inline float kd_vm_pow2(int32_t k) { return kd_vm_float((uint32_t)(k + 127) << 23); }

/* e^x. x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2 (ln2 in two
 * parts, so n ln2_hi is exact), e^r by Cephes's degree-6 polynomial, then
 * times 2^n as two factors 2^(n/2) 2^(n - n/2), each a normal float for n
 * in [-150, 128]: the first product is exact, the second rounds once, into
 * the subnormal range or to inf as the true result would. */
static inline float kd_expf(float x0) {
  /* x0 clamped to [-104, 89] on its bits (an integer select: float ones
     let the compiler split the loop into branches on constants); NaN is
     put back at the end */
  uint32_t u = kd_vm_bits(x0), ax = u & 0x7fffffffu;
  uint32_t lim = u >> 31 ? 0x42d00000u /* 104 */ : 0x42b20000u /* 89 */;
  float x = kd_vm_float((ax > lim ? lim : ax) | (u & 0x80000000u));
  float n = (x * 1.44269504088896341f + 0x1.8p23f) - 0x1.8p23f; /* round to nearest */
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  /* k = k1 + k2, k1 = floor(k / 2) (k + 256 > 0: an unsigned shift) */
  int32_t k = kd_vm_int(n), k1 = (int32_t)((uint32_t)(k + 256) >> 1) - 128;
  /* below -150 ln2 the result rounds to 0: chosen, not computed, since a
     product that underflows costs a microcode assist (100+ cycles on x86),
     and softmax's masked -inf lands here on every other element */
  float s2 = x < -103.972076f ? 0.0f : kd_vm_pow2(k - k1);
  float y = p * kd_vm_pow2(k1) * s2;
  return x0 != x0 ? x0 : y;
}

/* log x. x = m 2^e with m in [sqrt(1/2), sqrt(2)) (subnormal x scaled by
 * 2^25 first), log m = f - f^2 / 2 + f^3 P(f), f = m - 1, Cephes's degree-8
 * P; e ln2 added in two parts. Zero, negative, inf and NaN inputs are
 * selected at the end. */
static inline float kd_logf(float x) {
  float xs = x * (x < 0x1p-126f ? 0x1p25f : 1.0f); /* subnormal: scaled, e corrected */
  float ebias = x < 0x1p-126f ? -25.0f : 0.0f;
  uint32_t u = kd_vm_bits(xs);
  /* m in [sqrt(1/2), sqrt(2)): take the mantissa with exponent 0, or -1 when
     the mantissa is at least sqrt(2) / 2 * 2 (0x3504f3 is sqrt(2)'s) */
  uint32_t top = (u & 0x007fffffu) >= 0x003504f3u ? 1u : 0u;
  float m = kd_vm_float((u & 0x007fffffu) | ((127u - top) << 23));
  float e = (float)(int32_t)(((u >> 23) & 0xffu) + top) - 127.0f + ebias;
  float f = m - 1.0f;
  float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  float r = f + y;
  r = r + e * 0.693359375f;
  r = x == 0.0f ? -__builtin_inff() : r;
  r = x < 0.0f ? __builtin_nanf("") : r;
  r = x == __builtin_inff() ? x : r;
  return x != x ? x : r;
}

/* tanh x, odd: for |x| < 0.625 Cephes's x + x^3 P(x^2) (1 - 2 / (e^2x + 1)
 * would cancel there), else 1 - 2 / (e^2|x| + 1), which reaches 1 (e^2x
 * overflowing to inf gives 2 / inf = 0) by itself; the sign copied from x
 * last, so tanh -0 = -0 and NaN stays NaN. */
static inline float kd_tanhf(float x) {
  float a = kd_vm_float(kd_vm_bits(x) & 0x7fffffffu);
  float z = a * a;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  p = p * z * a + a;
  float q = 1.0f - 2.0f / (kd_expf(a + a) + 1.0f);
  float r = a < 0.625f ? p : q;
  return kd_vm_float(kd_vm_bits(r) | (kd_vm_bits(x) & 0x80000000u));
}

#endif /* KD_VMATH_H */
