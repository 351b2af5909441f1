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

int kd_avx512_fits(const char *features, LLVMTypeRef ty) {
  if (LLVMGetTypeKind(ty) != LLVMVectorTypeKind) return 0;
  if (LLVMGetTypeKind(LLVMGetElementType(ty)) != LLVMFloatTypeKind || !has_feature(features, "avx512f"))
    return 0;
  unsigned w = LLVMGetVectorSize(ty);
  return w == 16 || ((w == 8 || w == 4) && has_feature(features, "avx512vl"));
}

/* One of the masked AVX-512 intrinsics (llvm.x86.avx512.mask.<op>.ps.<bits>)
 * with an all-ones mask: (x[, y][, imm], passthrough, mask[, rounding]). The
 * 512-bit forms take a rounding argument, 4: the current direction (MXCSR),
 * as _MM_FROUND_CUR_DIRECTION. */
static LLVMValueRef avx512_ps(LLVMBuilderRef b, const char *op, LLVMValueRef x, LLVMValueRef y, int imm) {
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
  if (y) args[n++] = y;
  if (imm >= 0) args[n++] = LLVMConstInt(i32, (unsigned)imm, 0);
  args[n++] = LLVMConstNull(ty);
  args[n++] = LLVMConstAllOnes(LLVMIntTypeInContext(c, w < 8 ? 8 : w));
  if (w == 16) args[n++] = LLVMConstInt(i32, 4, 0);
  return LLVMBuildCall2(b, fty, fn, args, n, "");
}

/* An intrinsic that is not overloaded (the x86 ones), called with args. */
static LLVMValueRef x86_call(LLVMBuilderRef b, const char *name, LLVMValueRef *args, unsigned n) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(module_of(b), id, NULL, 0);
  LLVMTypeRef fty = LLVMIntrinsicGetType(LLVMGetTypeContext(LLVMTypeOf(args[0])), id, NULL, 0);
  return LLVMBuildCall2(b, fty, fn, args, n, "");
}

static LLVMValueRef const_floats(LLVMContextRef c, const float *v, unsigned n) {
  LLVMValueRef lanes[16];
  for (unsigned i = 0; i < n; i++) lanes[i] = LLVMConstReal(LLVMFloatTypeInContext(c), v[i]);
  return LLVMConstVector(lanes, n);
}

/* tab[idx & 15] in every lane of idx (<16|8|4 x i32>): one vpermps over the
 * 16 floats in a zmm register at width 16 (it reads only the low 4 bits of
 * each index); at widths 8 and 4 (the latter widened to 8) one vpermt2ps
 * over the table's two halves in ymm registers, so those widths stay off
 * zmm. */
static LLVMValueRef lookup16(LLVMBuilderRef b, const float *tab, LLVMValueRef idx) {
  LLVMTypeRef ity = LLVMTypeOf(idx);
  LLVMContextRef c = LLVMGetTypeContext(ity);
  unsigned w = LLVMGetVectorSize(ity);
  if (w == 16) {
    LLVMValueRef args[2] = {const_floats(c, tab, 16), idx};
    return x86_call(b, "llvm.x86.avx512.permvar.sf.512", args, 2);
  }
  LLVMTypeRef i32 = LLVMInt32TypeInContext(c);
  LLVMValueRef lanes[8];
  for (unsigned i = 0; i < 8; i++) lanes[i] = i < w ? LLVMConstInt(i32, i, 0) : LLVMGetUndef(i32);
  LLVMValueRef idx8 = idx;
  LLVMValueRef widen = LLVMConstVector(lanes, 8);
  if (w < 8) idx8 = LLVMBuildShuffleVector(b, idx, LLVMGetUndef(ity), widen, "");
  LLVMValueRef args[3] = {const_floats(c, tab, 8), idx8, const_floats(c, tab + 8, 8)};
  LLVMValueRef y = x86_call(b, "llvm.x86.avx512.vpermi2var.ps.256", args, 3);
  if (w == 8) return y;
  return LLVMBuildShuffleVector(b, y, LLVMGetUndef(LLVMTypeOf(y)), LLVMConstVector(lanes, w), "");
}

/* kd_emit_log_avx512's cells: i = the top 4 mantissa bits of m in [0.75,
 * 1.5), so cells 0-7 are [1 + i/16, 1 + (i+1)/16) and cells 8-15 are
 * [0.5 + i/32, 0.5 + (i+1)/32). Cells 0 and 15 touch 1: c = 1 there, so
 * that r = m - 1 exactly and log x is as accurate as log1p(r) where it is
 * near 0. In every other cell c is, of the 2e5 floats nearest 1 / (cell
 * centre) that keep |r| <= 1/32 on the whole cell, the one whose table
 * value, -log(c) (cells 0-7) or ln2f - log(c) (cells 8-15, see below; ln2f
 * = ln2 rounded to f32), lies nearest a float (Gal's accurate tables; a
 * one-off search in long double): each value below is within 1.2e-5 of its
 * ulp of the exact one, so the tables round nothing that matters. */
static const float log_tab_c[16] = {
    1.0f,           0x1.d3ac8ap-1f, 0x1.bb8fcap-1f, 0x1.a64792p-1f, 0x1.90ed0ap-1f, 0x1.7e7fa8p-1f,
    0x1.69e2dap-1f, 0x1.5a35dp-1f,  0x1.4f5c0cp+0f, 0x1.417adap+0f, 0x1.330eb6p+0f, 0x1.2932aap+0f,
    0x1.20b8acp+0f, 0x1.170488p+0f, 0x1.0b56b2p+0f, 1.0f};
static const float log_tab_l[16] = {
    0.0f,           0x1.72e7e8p-4f, 0x1.25dceap-3f, 0x1.8a8fc6p-3f, 0x1.f4d58ap-3f, 0x1.2a990ep-2f,
    0x1.6352a8p-2f, 0x1.90ab5p-2f,  0x1.b146bap-2f, 0x1.dc8f1ap-2f, 0x1.05c7c4p-1f, 0x1.167d84p-1f,
    0x1.254e3cp-1f, 0x1.36cf2ep-1f, 0x1.4cb3bp-1f,  0x1.62e43p-1f};

/* log(x) = e ln2 + log(m), x = m 2^e, m in [0.75, 1.5) (Intel SDM, VGETMANTPS
 * and VGETEXPPS). getmant's imm8 = 0b1011: interval [0.75, 1.5) (bits 1:0 =
 * 11), sign control "NaN if the source is negative" (bits 3:2 = 10); it maps
 * +-0 to +-1 and inf to 1. getexp gives g = floor(log2 |x|) as a float,
 * exact for subnormals, -inf for +-0, inf for +-inf. Where m < 1 getmant
 * has halved the significand (x = m 2^(g+1)); instead of adding 1 to g
 * there, the cells below 1 hold ln2f + log(1/c) (ln2f: the same f32 ln2
 * that multiplies g). Then log(m) = log(1/c_i) + log1p(r), r = m c_i - 1
 * (one FMA: rounded once, |r| <= 1/32, or in [-1/32, 1/16) where c = 1),
 * from a 16-entry table lookup on m's top mantissa bits (lookup16, the cells
 * at log_tab_c). log1p(r) = r + r^2 P(r), P of degree 3 fitted for least
 * maximum relative error over [-1/32, 1/16] (Lawson iterations on 600
 * Chebyshev nodes, in 40 digits; coefficients rounded to f32 from the lowest
 * degree up, the others refitted after each rounding): 2.9e-9 relative (0.05
 * ulp). Then log x = (g ln2f + L_i) + log1p(r). Error bound:
 *   x in [0.75, 1.5): the bracket is exact (g = 0, or g = -1 and L_i in
 *   [ln2f/2, ln2f]: Sterbenz; -ln2f + ln2f = 0 in cell 15); r's and
 *   log1p's roundings are 2^-30 absolute at most, 0.25 ulp each of a result
 *   whose ulp is 2^-28 or more (cell 1: |log x| >= 0.06; cells 0 and 15: r
 *   is exact and log1p is the result), the final add 0.5 ulp: 1 ulp;
 *   elsewhere |log x| >= 0.28: the bracket rounds once, 0.5 ulp of it but 1
 *   ulp of the result where log1p(r) takes the sum below a power of 2; the
 *   final add 0.5 ulp, ln2f (1.9e-9 per unit of the exponent) 0.06 ulp,
 *   r's and log1p's roundings 0.03 ulp each: 1.65 ulp.
 * Measured at width 16 on all 2^32 inputs against double log: 1.43 ulp at
 * most (x = 0x1.5fc20ap-12, log x = -8.0), 0.1% of the positive floats over
 * 1 ulp, every special value right. 13 instructions, 7 of them on the FMA
 * pipes; the special values need no select:
 *   x = +-0: g = -inf, m = +-1, r in {0, -2}: -inf + finite = -inf;
 *   x = inf: g = inf, m = 1, r = 0: inf;  x < 0 or -inf: m = NaN: NaN;
 *   NaN: NaN. */
LLVMValueRef kd_emit_log_avx512(LLVMBuilderRef b, LLVMValueRef x) {
  static const double p[] = {0x1.825c78p-3, -0x1.001312p-2, 0x1.555836p-2, -0x1p-1};
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMTypeRef ity = kd_ir_int_like(ty, 32);
  LLVMValueRef m = avx512_ps(b, "getmant", x, NULL, 0xb);
  LLVMValueRef g = avx512_ps(b, "getexp", x, NULL, -1);
  LLVMValueRef i = LLVMBuildLShr(b, LLVMBuildBitCast(b, m, ity, ""), kd_ir_iconst(ity, 19), "");
  LLVMValueRef fa[3] = {m, lookup16(b, log_tab_c, i), kd_ir_fconst(ty, -1.0)};
  LLVMValueRef r = kd_ir_intrinsic(b, "llvm.fma", ty, fa, 3); /* fused, not fmuladd: one rounding */
  LLVMValueRef z = LLVMBuildFMul(b, r, r, "");
  LLVMValueRef y = kd_ir_fma(b, z, horner(b, r, p, 4), r);
  LLVMValueRef l = lookup16(b, log_tab_l, i);
  LLVMValueRef t = kd_ir_fma(b, g, kd_ir_fconst(ty, 0.69314718055994531), l);
  return LLVMBuildFAdd(b, t, y, "log");
}

/* 2^(i/16) rounded to f32, i = 0..15 */
static const float exp2_tab[16] = {
    1.0f,           0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fep+0f,  0x1.3dea64p+0f,
    0x1.4bfdaep+0f, 0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};

/* exp(x) = 2^q 2^(i/16) e^r, k = 16 q + i = rint(16 x log2 e), |r| <= ln2 / 32.
 * The magic-number rounding with 1.5 * 2^19, whose ulp is 1/16: t = x log2 e
 * + 1.5 * 2^19 is k/16 + 1.5 * 2^19 (|k/16| <= 217 keeps t in its binade),
 * so kf = t - 1.5 * 2^19 = k/16 exactly and the low 4 bits of t's encoding
 * are i = k mod 16: the index for the table (lookup16 reads only those bits)
 * and what vscalefps's floor(kf) = q leaves. r = x - kf ln2f, one FMA as in
 * exp_row (ln2f = ln2 rounded to f32, 1.9e-9 off: |kf| 1.9e-9 relative).
 * e^r - 1 = r (1 + c2 r + c3 r^2), c2 and c3 fitted for least maximum
 * relative error on |r| <= ln2 / 32 (Lawson iterations on 2001 Chebyshev
 * nodes, rounded to f32): 1.6e-9 (0.013 ulp). Then y = T_i + T_i (e^r - 1):
 * T_i's rounding (0.5 ulp at most) and the FMA's (0.5 ulp) are the error;
 * vscalefps scales y by 2^q exactly, rounding once where the result is
 * subnormal and giving 0 below 2^-150. Measured at width 16 on every float
 * in [-104, 16]: relative error at most 0.97 2^-23 + |x| 2.8e-9; results
 * below FLT_MIN within 2.8 2^-149 absolute.
 * x < -150 (and -inf) are clamped to -150 first, where exp is 0 anyway, so
 * that no inf reaches the reduction; a NaN passes the clamp (olt is false:
 * a vmaxps with x second) and comes out NaN. 10 instructions, 7 of them on
 * Zen 4's FMA pipes, which bound the row loops (llvm-mca -mcpu=znver4: a
 * loop of two exps 19.2 -> 16.2 cycles a vector), against exp_row's 13 and
 * 9.5: in that model the subtraction, the permute and vscalefps run on
 * other pipes. *zero, when asked for, is one compare more. */
LLVMValueRef kd_emit_exp_row_avx512(LLVMBuilderRef b, LLVMValueRef x, LLVMValueRef *zero) {
  static const double p[] = {0x1.55559cp-3, 0x1.00021ep-1, 1.0};
  LLVMTypeRef ty = LLVMTypeOf(x);
  LLVMValueRef lo = kd_ir_fconst(ty, -150.0);
  LLVMValueRef xc = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, lo, ""), lo, x, "");
  LLVMValueRef magic = kd_ir_fconst(ty, 786432.0);
  LLVMValueRef t = kd_ir_fma(b, xc, kd_ir_fconst(ty, 1.44269504088896341), magic);
  LLVMValueRef kf = LLVMBuildFSub(b, t, magic, "");
  LLVMValueRef ra[3] = {kf, kd_ir_fconst(ty, -0.69314718055994531), xc};
  LLVMValueRef r = kd_ir_intrinsic(b, "llvm.fma", ty, ra, 3); /* fused: kf ln2f exact */
  LLVMValueRef tab = lookup16(b, exp2_tab, LLVMBuildBitCast(b, t, kd_ir_int_like(ty, 32), ""));
  LLVMValueRef s = LLVMBuildFMul(b, r, horner(b, r, p, 3), "");
  LLVMValueRef res = avx512_ps(b, "scalef", kd_ir_fma(b, tab, s, tab), kf, -1);
  if (zero) *zero = LLVMBuildFCmp(b, LLVMRealOEQ, res, LLVMConstNull(ty), "");
  return res;
}
