/* exp and log in LLVM IR (see mathlib.h). log's constants and both range
 * reductions are Cephes' (expf.c, logf.c by Stephen L. Moshier); exp's
 * polynomial is a least-relative-error fit (Lawson iterations over Chebyshev
 * nodes, coefficients rounded to f32), one FMA shorter than Cephes' form. */
#include "mathlib.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static LLVMModuleRef module_of(LLVMBuilderRef b) {
  return LLVMGetGlobalParent(LLVMGetBasicBlockParent(LLVMGetInsertBlock(b)));
}

static LLVMValueRef splat(LLVMTypeRef ty, LLVMValueRef scalar) {
  if (LLVMGetTypeKind(ty) != LLVMVectorTypeKind) return scalar;
  unsigned n = LLVMGetVectorSize(ty);
  LLVMValueRef lanes[64];
  if (n > 64) n = 64; /* wider vectors than 64 lanes are not used */
  for (unsigned i = 0; i < n; i++) lanes[i] = scalar;
  return LLVMConstVector(lanes, n);
}

static LLVMTypeRef elem_type(LLVMTypeRef ty) {
  return LLVMGetTypeKind(ty) == LLVMVectorTypeKind ? LLVMGetElementType(ty) : ty;
}

LLVMValueRef kd_ir_fconst(LLVMTypeRef ty, double v) {
  return splat(ty, LLVMConstReal(elem_type(ty), v));
}

LLVMValueRef kd_ir_iconst(LLVMTypeRef ty, long long v) {
  return splat(ty, LLVMConstInt(elem_type(ty), (unsigned long long)v, 1));
}

LLVMTypeRef kd_ir_int_like(LLVMTypeRef ty, unsigned bits) {
  LLVMTypeRef it = LLVMIntTypeInContext(LLVMGetTypeContext(ty), bits);
  if (LLVMGetTypeKind(ty) == LLVMVectorTypeKind) return LLVMVectorType(it, LLVMGetVectorSize(ty));
  return it;
}

LLVMValueRef kd_ir_intrinsic(LLVMBuilderRef b, const char *name, LLVMTypeRef ty,
                             LLVMValueRef *args, unsigned nargs) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(module_of(b), id, &ty, 1);
  LLVMTypeRef fty = LLVMIntrinsicGetType(LLVMGetTypeContext(ty), id, &ty, 1);
  return LLVMBuildCall2(b, fty, fn, args, nargs, "");
}

LLVMValueRef kd_ir_fma(LLVMBuilderRef b, LLVMValueRef a, LLVMValueRef x, LLVMValueRef c) {
  LLVMValueRef args[3] = {a, x, c};
  return kd_ir_intrinsic(b, "llvm.fmuladd", LLVMTypeOf(a), args, 3);
}

/* Horner: c[0] x^(n-1) + ... + c[n-1] */
static LLVMValueRef horner(LLVMBuilderRef b, LLVMValueRef x, const double *c, int n) {
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMValueRef y = kd_ir_fconst(ty, c[0]);
  for (int i = 1; i < n; i++) y = kd_ir_fma(b, y, x, kd_ir_fconst(ty, c[i]));
  return y;
}

#define EXP_LO (-87.33654) /* just above ln(FLT_MIN) = -126 ln2: the result stays normal */
#define EXP_HI 88.7228317 /* just below ln(FLT_MAX) = 88.7228391: rint(x log2 e) = 128 with e^r < 1 */

/* exp(x) = 2^n e^r, n = rint(x log2 e), |r| <= ln2 / 2, for x in
 * [EXP_LO, EXP_HI]. n comes from the "magic number" rounding: t = x log2 e +
 * 1.5 * 2^23 holds n in its low mantissa bits, so t - 1.5 * 2^23 is n as a
 * float and bits(t) << 23 is n << 23 (the magic's own bits shift out). e^r
 * is a degree-6 polynomial fitted for relative error on the reduced range
 * (1.7e-8 before rounding); 2^n is added straight into the exponent bits,
 * which cannot overflow or go subnormal in this range. 15 instructions.
 * With `onestep`, r = x - n ln2 with ln2 rounded to f32 once (1.9e-9 off):
 * one FMA less, and r is off by |n| 1.9e-9. */
static LLVMValueRef exp_core(LLVMBuilderRef b, LLVMValueRef xc, int onestep) {
  static const double p[] = {1.3836845755577087e-3, 8.374815806746483e-3, 4.166822507977486e-2,
                             1.6666419804096222e-1, 4.9999991059303284e-1, 1.0, 1.0};
  LLVMTypeRef ty = LLVMTypeOf(xc);
  LLVMTypeRef ity = kd_ir_int_like(ty, 32);
  LLVMValueRef magic = kd_ir_fconst(ty, 12582912.0);
  LLVMValueRef t = kd_ir_fma(b, xc, kd_ir_fconst(ty, 1.44269504088896341), magic);
  LLVMValueRef fn = LLVMBuildFSub(b, t, magic, "");
  /* r = x - n ln2 in two steps (ln2 = C1 + C2, C1 exact in 9 bits) */
  LLVMValueRef r = kd_ir_fma(b, fn, kd_ir_fconst(ty, onestep ? -0.69314718055994531 : -0.693359375), xc);
  if (!onestep) r = kd_ir_fma(b, fn, kd_ir_fconst(ty, 2.12194440e-4), r);
  LLVMValueRef y = horner(b, r, p, 7);
  LLVMValueRef n23 = LLVMBuildShl(b, LLVMBuildBitCast(b, t, ity, ""), kd_ir_iconst(ity, 23), "");
  LLVMValueRef bits = LLVMBuildAdd(b, LLVMBuildBitCast(b, y, ity, ""), n23, "");
  return LLVMBuildBitCast(b, bits, ty, "");
}

/* Outside [EXP_LO, EXP_HI] (and for NaN) exp_core computes garbage (no
 * poison: it has no float-to-int conversion); the selects replace it. */
LLVMValueRef kd_emit_exp(LLVMBuilderRef b, LLVMValueRef x) {
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMValueRef res = exp_core(b, x, 0);
  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, kd_ir_fconst(ty, EXP_LO), ""),
                        kd_ir_fconst(ty, 0.0), res, "");
  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGT, x, kd_ir_fconst(ty, EXP_HI), ""),
                        kd_ir_fconst(ty, INFINITY), res, "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""), x, res, "exp");
}

static LLVMValueRef exp_nonpos(LLVMBuilderRef b, LLVMValueRef x, LLVMValueRef *zero, int onestep) {
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMValueRef small = LLVMBuildFCmp(b, LLVMRealOLT, x, kd_ir_fconst(ty, EXP_LO), "");
  if (zero) *zero = small; /* exp_core is at least FLT_MIN from EXP_LO up */
  return LLVMBuildSelect(b, small, kd_ir_fconst(ty, 0.0), exp_core(b, x, onestep), "exp");
}

LLVMValueRef kd_emit_exp_nonpos(LLVMBuilderRef b, LLVMValueRef x) {
  return exp_nonpos(b, x, NULL, 0);
}

LLVMValueRef kd_emit_exp_row(LLVMBuilderRef b, LLVMValueRef x, LLVMValueRef *zero) {
  return exp_nonpos(b, x, zero, 1);
}

/* log(x) = e ln2 + log(m), x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(1 + f)
 * = f - f^2/2 + f^3 P(f). Subnormal x is scaled by 2^23 first. `finite`: x
 * is known to be >= 0 and finite (no inf, negative or NaN selects). */
static LLVMValueRef log_core(LLVMBuilderRef b, LLVMValueRef x, int finite) {
  static const double p[] = {7.0376836292E-2,  -1.1514610310E-1, 1.1676998740E-1,
                             -1.2420140846E-1, 1.4249322787E-1,  -1.6668057665E-1,
                             2.0000714765E-1,  -2.4999993993E-1, 3.3333331174E-1};
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMTypeRef ity = kd_ir_int_like(ty, 32);
  LLVMValueRef tiny = LLVMBuildFCmp(b, LLVMRealOLT, x, kd_ir_fconst(ty, 1.17549435e-38), "");
  LLVMValueRef xs = LLVMBuildSelect(b, tiny, LLVMBuildFMul(b, x, kd_ir_fconst(ty, 8388608.0), ""),
                                    x, "");
  LLVMValueRef eadj = LLVMBuildSelect(b, tiny, kd_ir_iconst(ity, -23 - 126),
                                      kd_ir_iconst(ity, -126), "");

  /* frexp by bits: m in [0.5, 1) */
  LLVMValueRef bits = LLVMBuildBitCast(b, xs, ity, "");
  LLVMValueRef ei = LLVMBuildAdd(b, LLVMBuildLShr(b, bits, kd_ir_iconst(ity, 23), ""), eadj, "");
  LLVMValueRef mb = LLVMBuildOr(b, LLVMBuildAnd(b, bits, kd_ir_iconst(ity, 0x007fffff), ""),
                                kd_ir_iconst(ity, 0x3f000000), "");
  LLVMValueRef m = LLVMBuildBitCast(b, mb, ty, "");
  LLVMValueRef e = LLVMBuildSIToFP(b, ei, ty, "");

  LLVMValueRef one = kd_ir_fconst(ty, 1.0);
  LLVMValueRef small = LLVMBuildFCmp(b, LLVMRealOLT, m, kd_ir_fconst(ty, 0.707106781186547524), "");
  e = LLVMBuildSelect(b, small, LLVMBuildFSub(b, e, one, ""), e, "");
  LLVMValueRef f = LLVMBuildSelect(b, small, LLVMBuildFSub(b, LLVMBuildFAdd(b, m, m, ""), one, ""),
                                   LLVMBuildFSub(b, m, one, ""), "");

  LLVMValueRef z = LLVMBuildFMul(b, f, f, "");
  LLVMValueRef y = LLVMBuildFMul(b, LLVMBuildFMul(b, horner(b, f, p, 9), f, ""), z, "");
  y = kd_ir_fma(b, e, kd_ir_fconst(ty, -2.12194440e-4), y);
  y = kd_ir_fma(b, z, kd_ir_fconst(ty, -0.5), y);
  LLVMValueRef res = LLVMBuildFAdd(b, f, y, "");
  res = kd_ir_fma(b, e, kd_ir_fconst(ty, 0.693359375), res);

  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, x, kd_ir_fconst(ty, 0.0), ""),
                        kd_ir_fconst(ty, -INFINITY), res, "");
  if (finite) return res;
  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, x, kd_ir_fconst(ty, INFINITY), ""), x, res,
                        "");
  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, kd_ir_fconst(ty, 0.0), ""),
                        kd_ir_fconst(ty, NAN), res, "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""), x, res, "log");
}

LLVMValueRef kd_emit_log(LLVMBuilderRef b, LLVMValueRef x) { return log_core(b, x, 0); }

LLVMValueRef kd_emit_log_finite(LLVMBuilderRef b, LLVMValueRef x) { return log_core(b, x, 1); }

/* Whether the comma-separated LLVM feature list has "+name" (a whole entry:
 * "+avx512f" is not "+avx512fp16"). */
static int has_feature(const char *features, const char *name) {
  size_t n = strlen(name);
  for (const char *p = features; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
    if (p[0] == '+' && !strncmp(p + 1, name, n) && (p[1 + n] == ',' || p[1 + n] == '\0')) return 1;
  return 0;
}

int kd_log_avx512_fits(const char *features, LLVMTypeRef ty) {
  if (LLVMGetTypeKind(ty) != LLVMVectorTypeKind) return 0;
  if (LLVMGetTypeKind(LLVMGetElementType(ty)) != LLVMFloatTypeKind || !has_feature(features, "avx512f"))
    return 0;
  unsigned w = LLVMGetVectorSize(ty);
  return w == 16 || ((w == 8 || w == 4) && has_feature(features, "avx512vl"));
}

/* One of the masked AVX-512 intrinsics (llvm.x86.avx512.mask.<op>.ps.<bits>)
 * with an all-ones mask: (x[, imm], passthrough, mask[, rounding]). The
 * 512-bit forms take a rounding argument, 4: the current direction (MXCSR),
 * as _MM_FROUND_CUR_DIRECTION. */
static LLVMValueRef avx512_ps(LLVMBuilderRef b, const char *op, LLVMValueRef x, int imm) {
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMContextRef c = LLVMGetTypeContext(ty);
  unsigned w = LLVMGetVectorSize(ty);
  char name[64];
  snprintf(name, sizeof name, "llvm.x86.avx512.mask.%s.ps.%u", op, w * 32);
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(module_of(b), id, NULL, 0);
  LLVMTypeRef fty = LLVMIntrinsicGetType(c, id, NULL, 0);
  LLVMTypeRef i32 = LLVMInt32TypeInContext(c);
  LLVMValueRef args[5];
  unsigned n = 0;
  args[n++] = x;
  if (imm >= 0) args[n++] = LLVMConstInt(i32, (unsigned)imm, 0);
  args[n++] = LLVMConstNull(ty);
  args[n++] = LLVMConstAllOnes(LLVMIntTypeInContext(c, w < 8 ? 8 : w));
  if (w == 16) args[n++] = LLVMConstInt(i32, 4, 0);
  return LLVMBuildCall2(b, fty, fn, args, n, "");
}

/* log(x) = e ln2 + log(m), x = m 2^e, m in [0.75, 1.5) (Intel SDM, VGETMANTPS
 * and VGETEXPPS). getmant's imm8 = 0b1011: interval [0.75, 1.5) (bits 1:0 =
 * 11), sign control "NaN if the source is negative" (bits 3:2 = 10); it maps
 * +-0 to +-1 and inf to 1. getexp gives floor(log2 |x|) as a float, exact for
 * subnormals, -inf for +-0, inf for +-inf; where m < 1 getmant has halved the
 * significand (x = 1.s 2^k with 1.s >= 1.5 gives m = 1.s / 2), so e =
 * getexp(x) + 1 there (a compare and a masked add). The special values
 * need no select:
 *   x = +-0: e = -inf, m = +-1, f in {0, -2}: e ln2 + finite = -inf;
 *   x = inf: e = inf, m = 1, f = 0: inf;  x < 0 or -inf: m = NaN: NaN;
 *   NaN: NaN.
 * f = m - 1 is exact (Sterbenz) and in [-0.25, 0.5); log(1 + f) = f + f^2
 * Q(f), Q of degree 8 fitted for least maximum relative error of log1p over
 * [-0.25, 0.5] (Lawson iterations on 1200 Chebyshev nodes, in 40 digits),
 * coefficients rounded to f32 from the lowest degree up, the others refitted
 * after each rounding: 4.9e-9 relative (0.08 ulp) before the f32 arithmetic.
 * ln2 is one f32 constant: off by 1.9e-9 absolute per unit of e, which is at
 * most 0.06 ulp of the result (|e| = 1 with |log x| >= 0.28; at |e| = 149,
 * 3e-7 of a result whose ulp is 7.6e-6). */
LLVMValueRef kd_emit_log_avx512(LLVMBuilderRef b, LLVMValueRef x) {
  static const double q[] = {-0x1.71a206p-5, 0x1.acd728p-4,  -0x1.0d9942p-3,
                             0x1.2883bep-3,  -0x1.54ee28p-3, 0x1.99697ap-3,
                             -0x1.000046p-2, 0x1.5555a4p-2,  -0x1p-1};
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMValueRef one = kd_ir_fconst(ty, 1.0);
  LLVMValueRef m = avx512_ps(b, "getmant", x, 0xb);
  LLVMValueRef e = avx512_ps(b, "getexp", x, -1);
  e = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, m, one, ""), LLVMBuildFAdd(b, e, one, ""), e, "");
  LLVMValueRef f = LLVMBuildFSub(b, m, one, "");
  LLVMValueRef z = LLVMBuildFMul(b, f, f, "");
  LLVMValueRef y = kd_ir_fma(b, z, horner(b, f, q, 9), f);
  return kd_ir_fma(b, e, kd_ir_fconst(ty, 0.69314718055994531), y);
}
