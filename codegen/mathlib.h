/* exp and log built in LLVM IR, for f32 scalars and f32 vectors of any width.
 *
 * `llvm.exp` on a vector is usually expanded into one libm call per lane;
 * these are range reduction + polynomial (exp: a degree-6 fit of our own;
 * log: Cephes' logf coefficients) in plain IR, so they vectorise on every
 * CPU and lower to NVPTX as well.
 *
 * Accuracy (tests/codegen/test_mathlib.c measures it against libm):
 * about 1 ulp over the normal range. Special values:
 *   exp(-inf) = 0, exp(x) = 0 for x < -87.33654 (results below FLT_MIN flush to
 *   zero), exp(x) = inf for x > 88.72283 (ln FLT_MAX), exp(nan) = nan;
 *   log(0) = -inf, log(x < 0) = nan, log(inf) = inf, log(nan) = nan,
 *   subnormal inputs are exact-scaled, not flushed.
 *
 * Also the small IR helpers the emitters share. */
#ifndef KD_MATHLIB_H
#define KD_MATHLIB_H

#include <llvm-c/Core.h>

/* x: float or <W x float>. */
LLVMValueRef kd_emit_exp(LLVMBuilderRef b, LLVMValueRef x);
LLVMValueRef kd_emit_log(LLVMBuilderRef b, LLVMValueRef x);
/* log for x known to be >= 0 and finite (a mixture of probabilities):
 * log(0) = -inf, subnormals exact-scaled; no inf, negative or NaN handling,
 * so 6 instructions fewer. Anything else gives an unspecified value. */
LLVMValueRef kd_emit_log_finite(LLVMBuilderRef b, LLVMValueRef x);
/* log through AVX-512's getmant and getexp: x = m 2^e with m in [0.75, 1.5)
 * straight from the hardware (subnormals included), log(m) = log(1/c) +
 * log1p(m c - 1) with c and log(1/c) from two 16-entry tables indexed by m's
 * top mantissa bits (a permute each, off the FMA pipes) and log1p a degree-5
 * polynomial: no subnormal scaling, no int-to-float, no select; 13
 * instructions, 7 of them FMAs or multiplies. The special values come from
 * the instructions themselves (getexp(+-0) = -inf, getexp(inf) = inf,
 * getmant set to give NaN for a negative x), so it keeps kd_emit_log's
 * contract in full and serves kd_emit_log_finite's too. Accuracy: 1.43 ulp
 * at most over all floats, mathlib.c says why (kd_emit_log: 0.82 on the
 * test's points); tests/codegen/test_mathlib.c holds it to 2.
 * x: <16 x float>, or <8 x float> and <4 x float> with AVX-512VL; only for
 * x86 targets whose features (LLVM's "+avx512f,+avx512vl,..." form)
 * kd_avx512_fits admits for x's type (the same for the AVX-512 exp below). */
int kd_avx512_fits(const char *features, LLVMTypeRef ty);
LLVMValueRef kd_emit_log_avx512(LLVMBuilderRef b, LLVMValueRef x);
/* exp for x <= 88.7 (x - max or x - logsumexp of a row, a shift by the
 * running max): no overflow handling and no NaN select, so 4 instructions
 * fewer; exp(-inf) is still exactly 0. A NaN or a larger x gives an
 * unspecified value. */
LLVMValueRef kd_emit_exp_nonpos(LLVMBuilderRef b, LLVMValueRef x);
/* The same for the row kernels' per-logit exps of x - m or x - lse, with
 * the range reduction in one step: one FMA of ten less, at a relative error
 * of 2 ulp + |x| 2.8e-9 (the second term is 4e-8 at x = -15, where a term
 * is 3e-7 of its row's largest, and 2.4e-7 at the flush to 0): far below
 * what the sums and gradients are held to; tests/codegen/test_mathlib.c
 * holds it to that bound. *zero (unless NULL) = (result == 0), for free:
 * the underflow test it makes anyway, for a MULZ that would compare with 0
 * again. */
LLVMValueRef kd_emit_exp_row(LLVMBuilderRef b, LLVMValueRef x, LLVMValueRef *zero);
/* exp_row through AVX-512: 2^(i/16) from a 16-entry table in a register
 * (vpermps), a degree-3 polynomial, and vscalefps for 2^q, so results below
 * FLT_MIN come out subnormal instead of 0 and there is no underflow select:
 * 7 of its 10 instructions on the FMA pipes against exp_row's 9.5 of 13.
 * Relative error at most 0.97 2^-23 + |x| 2.8e-9 (mathlib.c; the test holds
 * it to 1.52 ulp + 0.05 |x|), within exp_row's bound; exp(-inf) = 0 and
 * exp(NaN) = NaN. The same widths and targets as kd_emit_log_avx512
 * (kd_avx512_fits). */
LLVMValueRef kd_emit_exp_row_avx512(LLVMBuilderRef b, LLVMValueRef x, LLVMValueRef *zero);

/* A constant of type ty (a scalar or a vector, splatted). */
LLVMValueRef kd_ir_fconst(LLVMTypeRef ty, double v);
LLVMValueRef kd_ir_iconst(LLVMTypeRef ty, long long v);
/* ty with float elements replaced by i32 (same shape). */
LLVMTypeRef kd_ir_int_like(LLVMTypeRef ty, unsigned bits);

/* Calls an overloaded intrinsic ("llvm.maxnum") whose overload type is ty. */
LLVMValueRef kd_ir_intrinsic(LLVMBuilderRef b, const char *name, LLVMTypeRef ty,
                             LLVMValueRef *args, unsigned nargs);
/* fmuladd(a, b, c) = a * b + c, fused where the target has FMA. */
LLVMValueRef kd_ir_fma(LLVMBuilderRef b, LLVMValueRef a, LLVMValueRef x, LLVMValueRef c);

#endif /* KD_MATHLIB_H */
