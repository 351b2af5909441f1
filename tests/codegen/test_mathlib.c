/* The IR exp and log against libm (double, rounded to float), at vector
 * widths 1, 4 and 16: a dense sweep of the input range plus the special
 * values; prints the max error in ulps and relative terms. Also reads the
 * generated assembly: no libm call, and vector instructions for width 16.
 * On an AVX-512 host also the getmant/getexp log (kd_emit_log_avx512) and
 * the table-and-vscalefps exp (kd_emit_exp_row_avx512) at widths 16 and,
 * with AVX-512VL, 8 and 4. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mathlib.h"
#include "session.h"

/* Cephes documents about 1 ulp peak for expf/logf on the reduced ranges; the
 * bound allows 2 (FMA contraction and the two-step range reduction each
 * round once) and nothing more. Relative error 2.4e-7 is 2 ulp at the
 * bottom of a binade. */
#define MAX_ULP 2.0
/* exp_row's one-step range reduction is off by |n| 1.9e-9 relative, |n| <=
 * 1.443 |x| + 0.5, and an ulp is at least 2^-24 = 6e-8 relative: at most
 * 0.046 |x| + 0.016 ulp more (mathlib.h); the bound allows 0.05 |x|. */
#define ROW_ULP_PER_X 0.05
/* The AVX-512 log: 1.65 ulp at most by mathlib.c's count (where e ln2 +
 * log(1/c) rounds: 1 ulp of the result when the polynomial's term takes the
 * sum below a power of 2, 0.5 for the last add, a few hundredths for the
 * rest), 1.43 measured over all 2^32 floats, 1.27 on these points (the
 * log_avx512 lines of the output; the generic log: 0.82). The bound is the
 * generic log's 2, not looser. */
#define LOG512_ULP 2.0
/* The AVX-512 exp_row: T_i's rounding is at most 2^-24 relative, under 1
 * ulp of the result, the last FMA's 0.5 ulp, the polynomial's 0.013 ulp:
 * 1.52 ulp (plus the one-step reduction's 0.05 |x|, as for exp_row). */
#define EXPR512_ULP 1.52
/* The AVX-512 exp_row below FLT_MIN: y's relative error (1 ulp + 104 x
 * 2.8e-9 = 4.1e-7 at x = -104) times a result below 2^-126 = 2^23 2^-149 is
 * 3.44 2^-149, and vscalefps rounds once more (0.5): 4 units of 2^-149. (2.8
 * measured on every float in [-104, -87.3].) */
#define EXPR512_SUB 4.0

static int failures;

typedef void (*apply_fn)(const float *x, float *y, int64_t n);

/* void NAME(const float *x, float *y, i64 n): y = f(x), n a multiple of w */
/* exp, log, exp for x <= 0, the row kernels' exp, log for finite x >= 0,
 * the AVX-512 log, the AVX-512 row exp */
enum { EXP, LOG, EXPN, EXPR, LOGF, LOG512, EXPR512 };
static const char *fname[] = {"exp",        "log",        "exp_nonpos",    "exp_row",
                              "log_finite", "log_avx512", "exp_row_avx512"};

static void build_apply(kd_module *m, const char *name, int w, int kind) {
  LLVMContextRef c = m->ctx;
  LLVMTypeRef f32 = LLVMFloatTypeInContext(c), i64 = LLVMInt64TypeInContext(c);
  LLVMTypeRef ptr = LLVMPointerTypeInContext(c, 0);
  LLVMTypeRef vt = w == 1 ? f32 : LLVMVectorType(f32, (unsigned)w);
  LLVMTypeRef params[3] = {ptr, ptr, i64};
  LLVMValueRef fn = LLVMAddFunction(m->mod, name, LLVMFunctionType(LLVMVoidTypeInContext(c), params, 3, 0));
  LLVMBuilderRef b = LLVMCreateBuilderInContext(c);
  LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(c, fn, "entry");
  LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c, fn, "loop");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c, fn, "done");
  LLVMPositionBuilderAtEnd(b, entry);
  LLVMValueRef n = LLVMGetParam(fn, 2);
  LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSGT, n, LLVMConstInt(i64, 0, 0), ""), loop, done);
  LLVMPositionBuilderAtEnd(b, loop);
  LLVMValueRef i = LLVMBuildPhi(b, i64, "i");
  LLVMValueRef px = LLVMBuildGEP2(b, f32, LLVMGetParam(fn, 0), &i, 1, "");
  LLVMValueRef py = LLVMBuildGEP2(b, f32, LLVMGetParam(fn, 1), &i, 1, "");
  LLVMValueRef x = LLVMBuildLoad2(b, vt, px, "");
  LLVMSetAlignment(x, 4);
  LLVMValueRef y = kind == LOG    ? kd_emit_log(b, x)
                   : kind == LOGF ? kd_emit_log_finite(b, x)
                   : kind == EXP  ? kd_emit_exp(b, x)
                   : kind == EXPN ? kd_emit_exp_nonpos(b, x)
                   : kind == EXPR ? kd_emit_exp_row(b, x, NULL)
                   : kind == EXPR512 ? kd_emit_exp_row_avx512(b, x, NULL)
                                     : kd_emit_log_avx512(b, x);
  LLVMSetAlignment(LLVMBuildStore(b, y, py), 4);
  LLVMValueRef next = LLVMBuildAdd(b, i, LLVMConstInt(i64, (unsigned)w, 0), "");
  LLVMValueRef zero = LLVMConstInt(i64, 0, 0);
  LLVMAddIncoming(i, &zero, &entry, 1);
  LLVMAddIncoming(i, &next, &loop, 1);
  LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, next, n, ""), loop, done);
  LLVMPositionBuilderAtEnd(b, done);
  LLVMBuildRetVoid(b);
  LLVMDisposeBuilder(b);
}

/* Distance in units in the last place of the correctly rounded result. */
static double ulp_error(float got, double want) {
  float wf = (float)want;
  if (isnan(want)) return isnan(got) ? 0 : INFINITY;
  if (isinf(wf) || isinf(got)) return got == wf ? 0 : INFINITY;
  double ulp = wf == 0 ? FLT_TRUE_MIN : fabs((double)nextafterf(wf, INFINITY) - wf);
  if (fabs(want) < FLT_MIN) ulp = FLT_TRUE_MIN; /* subnormal results: absolute */
  return fabs((double)got - want) / ulp;
}

typedef struct sweep {
  double max_ulp, max_rel, worst_x;
} sweep;

/* bound: the ulps allowed, plus per_x per unit of |x|; sub: the absolute
 * error allowed, in units of 2^-149, where exp is below FLT_MIN (0: only
 * that the result be in [0, FLT_MIN), for the exps that flush to 0) */
static void check(const char *what, int w, const float *x, const float *y, size_t n, int is_log,
                  double bound, double per_x, double sub) {
  sweep s = {0, 0, 0};
  int over = 0;
  for (size_t i = 0; i < n; i++) {
    double want = is_log ? log((double)x[i]) : exp((double)x[i]);
    /* exp flushes results below FLT_MIN to zero (mathlib.h): absolute error
     * below FLT_MIN is all that is promised there. */
    if (!is_log && want < FLT_MIN && !isnan(x[i])) {
      if (!(y[i] >= 0 && y[i] < FLT_MIN) || (sub > 0 && !(fabs(y[i] - want) <= sub * FLT_TRUE_MIN))) {
        printf("FAIL %s w=%d: exp(%a) = %a, want %s\n", what, w, x[i], y[i],
               sub > 0 ? "within 4 2^-149 of exp" : "< FLT_MIN");
        failures++;
      }
      continue;
    }
    double u = ulp_error(y[i], want);
    if (!(u <= bound + per_x * fabs(x[i])) && !over++)
      printf("FAIL %s w=%d: %s(%.9g) off by %.3g ulp > %.2f + %.2f |x|\n", what, w,
             is_log ? "log" : "exp", x[i], u, bound, per_x);
    if (u > s.max_ulp) {
      s.max_ulp = u;
      s.worst_x = x[i];
    }
    if (want != 0 && fabs(want) <= FLT_MAX) {
      double rel = fabs(y[i] - want) / fabs(want);
      if (rel > s.max_rel) s.max_rel = rel;
    }
  }
  printf("%s w=%-2d: %zu points, max %.2f ulp (at x = %.9g), max rel %.3g\n", what, w, n,
         s.max_ulp, s.worst_x, s.max_rel);
  failures += over != 0;
}

static void expect_exact(const char *fn, int w, const char *arg, float got, float want) {
  if (!(got == want || (isnan(got) && isnan(want)))) {
    printf("FAIL %s%s w=%d = %a, want %a\n", fn, arg, w, got, want);
    failures++;
  }
}

enum { NSPECIAL = 16 };

/* exp: [lo, hi] densely (2^22 points): [-104, 89], or [-104, 0] for the
 * non-positive variant, [-104, 16] for the row kernels'. */
static size_t exp_inputs(float *x, size_t cap, double hi) {
  size_t n = cap - NSPECIAL;
  for (size_t i = 0; i < n; i++) x[i] = (float)(-104.0 + (hi + 104.0) * (double)i / (double)n);
  return n;
}

static size_t put_bits(float *x, size_t n, uint32_t u) {
  memcpy(&x[n], &u, 4);
  return n + 1;
}

/* log: every power of two (subnormal ones too), the 4096 floats either side
 * of 1 (where log is small and only f's own accuracy counts), the edges
 * where the reductions switch intervals: 3 floats either side of sqrt(2) 2^k
 * (the generic frexp's) in every binade, and of (1 + j/16) 2^k for j = 0..15
 * and every k from -145 (the lowest binade where those are floats): the
 * AVX-512 log's table cells, indexed by the top 4 bits of the significand
 * (j = 8 is getmant's 1.5 edge; 0.75 2^k is 1.5 2^(k-1)); then every 509th
 * float bit pattern from +0 to +inf: all binades, subnormals included. */
static size_t log_inputs(float *x, size_t cap) {
  size_t n = 0;
  for (uint32_t u = 1; u < 0x7f800000u; u = u < 0x00800000u ? u << 1 : u + 0x00800000u)
    n = put_bits(x, n, u);
  for (uint32_t u = 0x3f800000u - 4096; u <= 0x3f800000u + 4096; u++) n = put_bits(x, n, u);
  for (uint32_t ex = 0; ex < 0xffu; ex++)
    for (uint32_t u = (ex << 23 | 0x003504f3u) - 3; u <= (ex << 23 | 0x003504f3u) + 3; u++)
      n = put_bits(x, n, u);
  for (int ex = -145; ex < 128; ex++)
    for (int j = 0; j < 16; j++) {
      float edge = ldexpf(1.0f + (float)j / 16, ex);
      uint32_t e;
      memcpy(&e, &edge, 4);
      for (uint32_t u = e - 3; u <= e + 3; u++) n = put_bits(x, n, u);
    }
  for (uint32_t u = 1; u < 0x7f800000u && n < cap - NSPECIAL; u += 509) n = put_bits(x, n, u);
  return n;
}

int main(void) {
  char err[512];
  kd_session *s;
  if (kd_session_new(&s, err, sizeof err)) {
    printf("FAIL session: %s\n", err);
    return 1;
  }
  printf("host: %s, f32 lanes %d\n", kd_session_cpu(s), kd_session_vector_width(s));

  kd_module m;
  kd_session_module_new(s, "test_mathlib", &m);
  /* widths[kind][k]: 0 where the host cannot run it */
  int widths[EXPR512 + 1][3], n512 = 0;
  for (int kind = EXP; kind <= EXPR512; kind++)
    for (int k = 0; k < 3; k++) {
      static const int generic[3] = {1, 4, 16}, avx512[3] = {16, 8, 4};
      int is512 = kind == LOG512 || kind == EXPR512;
      int w = is512 ? avx512[k] : generic[k];
      if (is512) {
        LLVMTypeRef vt = LLVMVectorType(LLVMFloatTypeInContext(m.ctx), (unsigned)w);
        w = kd_avx512_fits(kd_session_features(s), vt) ? w : 0;
        n512 += w != 0;
      }
      widths[kind][k] = w;
      char name[32];
      snprintf(name, sizeof name, "%s_%d", fname[kind], w);
      if (w) build_apply(&m, name, w, kind);
    }
  if (!n512) printf("log_avx512, exp_row_avx512: skipped: no avx512f\n");
  if (kd_session_optimize(s, &m, err, sizeof err)) {
    printf("FAIL optimize: %s\n", err);
    return 1;
  }
  /* The assembly: no call into libm, and (with AVX-512) zmm registers in the
   * width-16 loops. */
  char *as = NULL;
  if (kd_session_emit_string(s, &m, LLVMAssemblyFile, &as, err, sizeof err)) {
    printf("FAIL emit: %s\n", err);
    return 1;
  }
  if (strstr(as, "expf") || strstr(as, "logf") || strstr(as, "call")) {
    printf("FAIL: the generated code calls out (libm?)\n");
    failures++;
  }
  if (kd_session_vector_width(s) == 16 && !strstr(as, "zmm")) {
    printf("FAIL: no zmm register in the AVX-512 code\n");
    failures++;
  }
  if (n512 && !(strstr(as, "vgetmantps") && strstr(as, "vgetexpps") && strstr(as, "vperm") &&
                 strstr(as, "vscalefps"))) {
    printf("FAIL: log_avx512 without vgetmantps, vgetexpps and a table permute, or exp_row_avx512 "
           "without vscalefps\n");
    failures++;
  }
  free(as);
  LLVMOrcResourceTrackerRef rt;
  if (kd_session_jit(s, &m, &rt, err, sizeof err)) {
    printf("FAIL jit: %s\n", err);
    return 1;
  }

  /* exp's 2^22 points; log's 4.2 million sweep points and 41k edges */
  size_t cap = ((size_t)1 << 22) + ((size_t)1 << 17);
  float *x = malloc(cap * sizeof *x), *y = malloc(cap * sizeof *y);
  for (int kind = EXP; kind <= EXPR512; kind++) {
    int is_log = kind == LOG || kind == LOGF || kind == LOG512;
    /* exp_row's arguments go up to the lazy reference's 16 (codegen/cpu.c) */
    size_t n = is_log ? log_inputs(x, cap)
                      : exp_inputs(x, (size_t)1 << 22, kind == EXP ? 89.0 : kind == EXPN ? 0.0 : 16.0);
    n -= n % 16;
    for (int k = 0; k < 3; k++) {
      int w = widths[kind][k];
      if (!w) continue;
      char name[32];
      snprintf(name, sizeof name, "%s_%d", fname[kind], w);
      apply_fn f;
      if (kd_session_lookup(s, name, (void **)&f, err, sizeof err)) {
        printf("FAIL lookup %s: %s\n", name, err);
        return 1;
      }
      f(x, y, (int64_t)n);
      check(fname[kind], w, x, y, n, is_log,
            kind == LOG512 ? LOG512_ULP : kind == EXPR512 ? EXPR512_ULP : MAX_ULP,
            kind == EXPR || kind == EXPR512 ? ROW_ULP_PER_X : 0, kind == EXPR512 ? EXPR512_SUB : 0);

      /* special values, one vector of 16 */
      float sx[16] = {-INFINITY, INFINITY, NAN, 0.0f, -0.0f, 1.0f, -1.0f, 200.0f, -200.0f,
                      FLT_MIN, FLT_TRUE_MIN, FLT_MAX, 88.0f, -87.0f, 1e-30f, 2.0f};
      float sy[16];
      f(sx, sy, 16);
      if (kind == EXPN || kind == EXPR || kind == EXPR512) {
        expect_exact(fname[kind], w, "(-inf)", sy[0], 0.0f);
        expect_exact(fname[kind], w, "(0)", sy[3], 1.0f);
        expect_exact(fname[kind], w, "(-200)", sy[8], 0.0f);
        if (kind == EXPR512) {
          expect_exact(fname[kind], w, "(nan)", sy[2], NAN);
          expect_exact(fname[kind], w, "(-0)", sy[4], 1.0f);
        }
      } else if (!is_log) {
        expect_exact(fname[kind], w, "(-inf)", sy[0], 0.0f);
        expect_exact(fname[kind], w, "(inf)", sy[1], INFINITY);
        expect_exact(fname[kind], w, "(nan)", sy[2], NAN);
        expect_exact(fname[kind], w, "(0)", sy[3], 1.0f);
        expect_exact(fname[kind], w, "(-0)", sy[4], 1.0f);
        expect_exact(fname[kind], w, "(200)", sy[7], INFINITY);
        expect_exact(fname[kind], w, "(-200)", sy[8], 0.0f);
      } else if (kind == LOGF) { /* finite x >= 0 only */
        expect_exact(fname[kind], w, "(0)", sy[3], -INFINITY);
        expect_exact(fname[kind], w, "(-0)", sy[4], -INFINITY);
        expect_exact(fname[kind], w, "(1)", sy[5], 0.0f);
        check("log_finite special", w, sx + 9, sy + 9, 4, 1, MAX_ULP, 0, 0);
      } else {
        expect_exact(fname[kind], w, "(-inf)", sy[0], NAN);
        expect_exact(fname[kind], w, "(inf)", sy[1], INFINITY);
        expect_exact(fname[kind], w, "(nan)", sy[2], NAN);
        expect_exact(fname[kind], w, "(0)", sy[3], -INFINITY);
        expect_exact(fname[kind], w, "(-0)", sy[4], -INFINITY);
        expect_exact(fname[kind], w, "(1)", sy[5], 0.0f);
        expect_exact(fname[kind], w, "(-1)", sy[6], NAN);
        check(kind == LOG512 ? "log_avx512 special" : "log special", w, sx + 9, sy + 9, 7, 1,
              kind == LOG512 ? LOG512_ULP : MAX_ULP, 0, 0);
      }
    }
  }
  free(x);
  free(y);
  kd_session_unload(s, rt);
  kd_session_free(s);
  printf(failures ? "FAILED (%d)\n" : "ok\n", failures);
  return failures != 0;
}
