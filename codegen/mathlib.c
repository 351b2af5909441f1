/* exp and log in LLVM IR (see mathlib.h). The constants are Cephes'
 * (expf.c, logf.c by Stephen L. Moshier), whose polynomials are minimax fits
 * on the reduced ranges used here. */
#include "mathlib.h"

#include <math.h>
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

static LLVMValueRef minmax(LLVMBuilderRef b, const char *name, LLVMValueRef x, LLVMValueRef y) {
  LLVMValueRef args[2] = {x, y};
  return kd_ir_intrinsic(b, name, LLVMTypeOf(x), args, 2);
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

/* exp(x) = 2^n e^r, n = rint(x log2 e), |r| <= ln2 / 2; e^r by a degree-7
 * polynomial; 2^n added straight into the exponent bits, which cannot
 * overflow or go subnormal because x is clamped to [EXP_LO, EXP_HI]. */
LLVMValueRef kd_emit_exp(LLVMBuilderRef b, LLVMValueRef x) {
  static const double p[] = {1.9875691500E-4, 1.3981999507E-3, 8.3334519073E-3,
                             4.1665795894E-2, 1.6666665459E-1, 5.0000001201E-1};
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMTypeRef ity = kd_ir_int_like(ty, 32);
  LLVMValueRef lo = kd_ir_fconst(ty, EXP_LO), hi = kd_ir_fconst(ty, EXP_HI);
  /* minnum/maxnum return the other operand for a NaN: xc is never NaN, so
   * fptosi below never sees one (it would be poison). */
  LLVMValueRef xc = minmax(b, "llvm.maxnum", minmax(b, "llvm.minnum", x, hi), lo);

  LLVMValueRef t = LLVMBuildFMul(b, xc, kd_ir_fconst(ty, 1.44269504088896341), "");
  LLVMValueRef fn = kd_ir_intrinsic(b, "llvm.rint", ty, &t, 1);
  /* r = x - n ln2 in two steps (ln2 = C1 + C2, C1 exact in 9 bits) */
  LLVMValueRef r = kd_ir_fma(b, fn, kd_ir_fconst(ty, -0.693359375), xc);
  r = kd_ir_fma(b, fn, kd_ir_fconst(ty, 2.12194440e-4), r);
  LLVMValueRef z = LLVMBuildFMul(b, r, r, "");
  LLVMValueRef y = horner(b, r, p, 6);
  y = kd_ir_fma(b, y, z, r);
  y = LLVMBuildFAdd(b, y, kd_ir_fconst(ty, 1.0), "");

  LLVMValueRef n = LLVMBuildFPToSI(b, fn, ity, "");
  LLVMValueRef bits = LLVMBuildAdd(b, LLVMBuildBitCast(b, y, ity, ""),
                                   LLVMBuildShl(b, n, kd_ir_iconst(ity, 23), ""), "");
  LLVMValueRef res = LLVMBuildBitCast(b, bits, ty, "");

  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, lo, ""), kd_ir_fconst(ty, 0.0), res, "");
  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGT, x, hi, ""), kd_ir_fconst(ty, INFINITY),
                        res, "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""), x, res, "exp");
}

/* log(x) = e ln2 + log(m), x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(1 + f)
 * = f - f^2/2 + f^3 P(f). Subnormal x is scaled by 2^23 first. */
LLVMValueRef kd_emit_log(LLVMBuilderRef b, LLVMValueRef x) {
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

  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, x, kd_ir_fconst(ty, INFINITY), ""), x, res,
                        "");
  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOEQ, x, kd_ir_fconst(ty, 0.0), ""),
                        kd_ir_fconst(ty, -INFINITY), res, "");
  res = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, kd_ir_fconst(ty, 0.0), ""),
                        kd_ir_fconst(ty, NAN), res, "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""), x, res, "log");
}
