/* FUSED expressions compiled by LLVM (fusedgen.h).
 *
 * Every op is emitted as the expression step.c's map_f32 evaluates for it,
 * operation for operation: a C `a * b + c` is an fmul then an fadd, a
 * `c ? x : y` a select, kd_vm_bits a bitcast. The function body is emitted
 * twice from the same code, once over <W x float> for the vector loop and
 * once over float for the tail, so the two cannot disagree. */
#include "fusedgen.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Error.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "../runtime/fileio.h"
#include "session.h"

/* ---- the emitter ---------------------------------------------------------- */

typedef struct fgen {
  LLVMContextRef ctx;
  LLVMModuleRef M;
  LLVMBuilderRef b;
  LLVMTypeRef f32, i8, i32, i64, ptr;
  LLVMTypeRef ft, it; /* the float and i32 types being emitted: scalar or <W x> */
  int lanes;          /* ft's lanes; 0 for a scalar */
} fgen;

static LLVMValueRef splat(const fgen *g, LLVMValueRef scalar) {
  if (!g->lanes) return scalar;
  LLVMValueRef v[16];
  for (int k = 0; k < g->lanes; k++) v[k] = scalar;
  return LLVMConstVector(v, (unsigned)g->lanes);
}

/* A float constant: v is a float, so its double is exact. */
static LLVMValueRef cf(const fgen *g, float v) { return splat(g, LLVMConstReal(g->f32, v)); }
static LLVMValueRef ci(const fgen *g, uint32_t v) { return splat(g, LLVMConstInt(g->i32, v, 0)); }

static LLVMValueRef fadd(const fgen *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFAdd(g->b, a, b, "");
}
static LLVMValueRef fsub(const fgen *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFSub(g->b, a, b, "");
}
static LLVMValueRef fmul(const fgen *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFMul(g->b, a, b, "");
}
static LLVMValueRef fcmp(const fgen *g, LLVMRealPredicate p, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFCmp(g->b, p, a, b, "");
}
static LLVMValueRef sel(const fgen *g, LLVMValueRef c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(g->b, c, a, b, "");
}
static LLVMValueRef bits(const fgen *g, LLVMValueRef x) { return LLVMBuildBitCast(g->b, x, g->it, ""); }
static LLVMValueRef flt(const fgen *g, LLVMValueRef u) { return LLVMBuildBitCast(g->b, u, g->ft, ""); }

/* `p * x + c` (c >= 0) or `p * x - |c|` as the C source writes it. */
static LLVMValueRef horner(const fgen *g, LLVMValueRef p, LLVMValueRef x, float c) {
  LLVMValueRef t = fmul(g, p, x);
  return c < 0 ? fsub(g, t, cf(g, -c)) : fadd(g, t, cf(g, c));
}

static LLVMValueRef intrinsic1(const fgen *g, const char *name, LLVMValueRef x) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMTypeRef t = g->ft;
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(g->M, id, &t, 1);
  return LLVMBuildCall2(g->b, LLVMIntrinsicGetType(g->ctx, id, &t, 1), f, &x, 1, "");
}

/* kd_vm_pow2: the float with exponent field k + 127. */
static LLVMValueRef pow2(const fgen *g, LLVMValueRef k) {
  return flt(g, LLVMBuildShl(g->b, LLVMBuildAdd(g->b, k, ci(g, 127), ""), ci(g, 23), ""));
}

/* vmath.h's kd_expf. */
static LLVMValueRef emit_exp(const fgen *g, LLVMValueRef x0) {
  LLVMBuilderRef b = g->b;
  LLVMValueRef u = bits(g, x0), ax = LLVMBuildAnd(b, u, ci(g, 0x7fffffffu), "");
  LLVMValueRef neg = LLVMBuildICmp(b, LLVMIntNE, LLVMBuildLShr(b, u, ci(g, 31), ""), ci(g, 0), "");
  LLVMValueRef lim = sel(g, neg, ci(g, 0x42d00000u), ci(g, 0x42b20000u));
  LLVMValueRef cl = sel(g, LLVMBuildICmp(b, LLVMIntUGT, ax, lim, ""), lim, ax);
  LLVMValueRef x = flt(g, LLVMBuildOr(b, cl, LLVMBuildAnd(b, u, ci(g, 0x80000000u), ""), ""));
  LLVMValueRef n =
      fsub(g, fadd(g, fmul(g, x, cf(g, 1.44269504088896341f)), cf(g, 0x1.8p23f)), cf(g, 0x1.8p23f));
  LLVMValueRef r = fsub(g, x, fmul(g, n, cf(g, 0.693359375f)));
  r = fsub(g, r, fmul(g, n, cf(g, -2.12194440e-4f)));
  LLVMValueRef z = fmul(g, r, r);
  LLVMValueRef p = horner(g, cf(g, 1.9875691500e-4f), r, 1.3981999507e-3f);
  p = horner(g, p, r, 8.3334519073e-3f);
  p = horner(g, p, r, 4.1665795894e-2f);
  p = horner(g, p, r, 1.6666665459e-1f);
  p = horner(g, p, r, 5.0000001201e-1f);
  p = fadd(g, fadd(g, fmul(g, p, z), r), cf(g, 1.0f));
  /* kd_vm_int(n), then k1 = floor(k / 2) through an unsigned shift */
  LLVMValueRef k = LLVMBuildSub(b, bits(g, fadd(g, n, cf(g, 0x1.8p23f))), ci(g, 0x4b400000u), "");
  LLVMValueRef k1 = LLVMBuildSub(
      b, LLVMBuildLShr(b, LLVMBuildAdd(b, k, ci(g, 256), ""), ci(g, 1), ""), ci(g, 128), "");
  LLVMValueRef s2 = sel(g, fcmp(g, LLVMRealOLT, x, cf(g, -103.972076f)), cf(g, 0.0f),
                        pow2(g, LLVMBuildSub(b, k, k1, "")));
  LLVMValueRef y = fmul(g, fmul(g, p, pow2(g, k1)), s2);
  return sel(g, fcmp(g, LLVMRealUNE, x0, x0), x0, y);
}

/* vmath.h's kd_logf. */
static LLVMValueRef emit_log(const fgen *g, LLVMValueRef x) {
  LLVMBuilderRef b = g->b;
  LLVMValueRef small = fcmp(g, LLVMRealOLT, x, cf(g, 0x1p-126f));
  LLVMValueRef xs = fmul(g, x, sel(g, small, cf(g, 0x1p25f), cf(g, 1.0f)));
  LLVMValueRef ebias = sel(g, small, cf(g, -25.0f), cf(g, 0.0f));
  LLVMValueRef u = bits(g, xs), mant = LLVMBuildAnd(b, u, ci(g, 0x007fffffu), "");
  LLVMValueRef top = sel(g, LLVMBuildICmp(b, LLVMIntUGE, mant, ci(g, 0x003504f3u), ""), ci(g, 1),
                         ci(g, 0));
  LLVMValueRef m =
      flt(g, LLVMBuildOr(b, mant, LLVMBuildShl(b, LLVMBuildSub(b, ci(g, 127), top, ""), ci(g, 23), ""), ""));
  LLVMValueRef ex = LLVMBuildAdd(
      b, LLVMBuildAnd(b, LLVMBuildLShr(b, u, ci(g, 23), ""), ci(g, 0xff), ""), top, "");
  LLVMValueRef e = fadd(g, fsub(g, LLVMBuildSIToFP(b, ex, g->ft, ""), cf(g, 127.0f)), ebias);
  LLVMValueRef f = fsub(g, m, cf(g, 1.0f)), z = fmul(g, f, f);
  static const float P[] = {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f,
                            1.4249322787e-1f,  -1.6668057665e-1f, 2.0000714765e-1f,
                            -2.4999993993e-1f, 3.3333331174e-1f};
  LLVMValueRef y = cf(g, 7.0376836292e-2f);
  for (size_t k = 0; k < sizeof P / sizeof P[0]; k++) y = horner(g, y, f, P[k]);
  y = fmul(g, fmul(g, y, f), z);
  y = fadd(g, y, fmul(g, e, cf(g, -2.12194440e-4f)));
  y = fsub(g, y, fmul(g, cf(g, 0.5f), z));
  LLVMValueRef r = fadd(g, f, y);
  r = fadd(g, r, fmul(g, e, cf(g, 0.693359375f)));
  r = sel(g, fcmp(g, LLVMRealOEQ, x, cf(g, 0.0f)), cf(g, -__builtin_inff()), r);
  r = sel(g, fcmp(g, LLVMRealOLT, x, cf(g, 0.0f)), cf(g, __builtin_nanf("")), r);
  r = sel(g, fcmp(g, LLVMRealOEQ, x, cf(g, __builtin_inff())), x, r);
  return sel(g, fcmp(g, LLVMRealUNE, x, x), x, r);
}

/* vmath.h's kd_tanhf. */
static LLVMValueRef emit_tanh(const fgen *g, LLVMValueRef x) {
  LLVMBuilderRef b = g->b;
  LLVMValueRef a = flt(g, LLVMBuildAnd(b, bits(g, x), ci(g, 0x7fffffffu), ""));
  LLVMValueRef z = fmul(g, a, a);
  LLVMValueRef p = horner(g, cf(g, -5.70498872745e-3f), z, 2.06390887954e-2f);
  p = horner(g, p, z, -5.37397155531e-2f);
  p = horner(g, p, z, 1.33314422036e-1f);
  p = horner(g, p, z, -3.33332819422e-1f);
  p = fadd(g, fmul(g, fmul(g, p, z), a), a);
  LLVMValueRef q = fsub(
      g, cf(g, 1.0f),
      LLVMBuildFDiv(b, cf(g, 2.0f), fadd(g, emit_exp(g, fadd(g, a, a)), cf(g, 1.0f)), ""));
  LLVMValueRef r = sel(g, fcmp(g, LLVMRealOLT, a, cf(g, 0.625f)), p, q);
  return flt(g, LLVMBuildOr(b, bits(g, r), LLVMBuildAnd(b, bits(g, x), ci(g, 0x80000000u), ""), ""));
}

/* A comparison's 1.0f or 0.0f. */
static LLVMValueRef cmp01(const fgen *g, LLVMRealPredicate p, LLVMValueRef x, LLVMValueRef y) {
  return sel(g, fcmp(g, p, x, y), cf(g, 1.0f), cf(g, 0.0f));
}

/* map_f32's element expression for fn at operands x, y (map_double's for
   SELECT, x ? y : z, x an i1 when it is a bool leaf). */
static LLVMValueRef emit_op(const fgen *g, kd_step_fn fn, LLVMValueRef x, LLVMValueRef y,
                            LLVMValueRef z) {
  switch (fn) {
  case KD_SF_SELECT:
    if (LLVMTypeOf(x) != g->ft) return sel(g, x, y, z);
    return sel(g, fcmp(g, LLVMRealUNE, x, cf(g, 0.0f)), y, z);
  case KD_SF_COPY:
  case KD_SF_FILL: return x;
  case KD_SF_NEG: return LLVMBuildFNeg(g->b, x, "");
  case KD_SF_EXP: return emit_exp(g, x);
  case KD_SF_LOG: return emit_log(g, x);
  case KD_SF_SQRT: return intrinsic1(g, "llvm.sqrt", x);
  case KD_SF_ABS: return intrinsic1(g, "llvm.fabs", x);
  case KD_SF_SIGN:
    return sel(g, fcmp(g, LLVMRealOGT, x, cf(g, 0.0f)), cf(g, 1.0f),
               sel(g, fcmp(g, LLVMRealOLT, x, cf(g, 0.0f)), cf(g, -1.0f), x));
  case KD_SF_TANH: return emit_tanh(g, x);
  case KD_SF_ADD: return fadd(g, x, y);
  case KD_SF_SUB: return fsub(g, x, y);
  case KD_SF_MUL: return fmul(g, x, y);
  case KD_SF_MULZ: return sel(g, fcmp(g, LLVMRealOEQ, x, cf(g, 0.0f)), cf(g, 0.0f), fmul(g, x, y));
  case KD_SF_DIV: return LLVMBuildFDiv(g->b, x, y, "");
  case KD_SF_MAX:
  case KD_SF_MIN:
    return sel(g, fcmp(g, LLVMRealUNO, x, y), cf(g, __builtin_nanf("")),
               sel(g, fcmp(g, fn == KD_SF_MAX ? LLVMRealOGT : LLVMRealOLT, x, y), x, y));
  case KD_SF_LT: return cmp01(g, LLVMRealOLT, x, y);
  case KD_SF_LE: return cmp01(g, LLVMRealOLE, x, y);
  case KD_SF_GT: return cmp01(g, LLVMRealOGT, x, y);
  case KD_SF_GE: return cmp01(g, LLVMRealOGE, x, y);
  case KD_SF_EQ: return cmp01(g, LLVMRealOEQ, x, y);
  case KD_SF_NE: return cmp01(g, LLVMRealUNE, x, y);
  default: return NULL; /* not compilable: kd_fused_compilable said no */
  }
}

static bool op_compilable(kd_step_fn fn) {
  switch (fn) {
  case KD_SF_SELECT:
  case KD_SF_COPY: case KD_SF_FILL: case KD_SF_NEG: case KD_SF_EXP: case KD_SF_LOG:
  case KD_SF_SQRT: case KD_SF_ABS: case KD_SF_SIGN: case KD_SF_TANH: case KD_SF_ADD:
  case KD_SF_SUB: case KD_SF_MUL: case KD_SF_MULZ: case KD_SF_DIV: case KD_SF_MAX:
  case KD_SF_MIN: case KD_SF_LT: case KD_SF_LE: case KD_SF_GT: case KD_SF_GE: case KD_SF_EQ:
  case KD_SF_NE: return true;
  default: return false; /* IOTA (no f32 map), POW (libm in double) */
  }
}

static bool is_binary(kd_step_fn fn) { return fn >= KD_SF_ADD && fn <= KD_SF_NE; }
static int op_arity(kd_step_fn fn) { return fn == KD_SF_SELECT ? 3 : is_binary(fn) ? 2 : 1; }

/* Leaf k of expression x is bool memory. */
static bool bool_leaf(const kd_step_prog *p, const kd_step_expr *x, int32_t k) {
  return x->leaf[k].value >= 0 && p->values[x->leaf[k].value].dtype == KD_BOOL;
}

/* SELECT takes the interpreter's general path, in double: a choice between
   its f32 operands (exact in double, and back) or a constant (rounded to
   float once, as the f32 path rounds it), on a condition that is a bool
   leaf or a float compared with 0. So it is compiled too, with bool leaves
   as its conditions only; any other op reading a bool or i64 leaf computes
   in double, and is left to the interpreter. */
bool kd_fused_compilable(const kd_step_prog *p, int32_t e) {
  const kd_step_expr *x = &p->exprs[e];
  for (int32_t k = 0; k < x->nleaf; k++)
    if (x->leaf[k].value >= 0 && !bool_leaf(p, x, k) &&
        p->values[x->leaf[k].value].dtype != KD_F32)
      return false;
  for (int32_t t = 0; t < x->nop; t++) {
    kd_step_fn fn = x->op[t].fn;
    if (!op_compilable(fn)) return false;
    for (int q = 0; q < op_arity(fn); q++) {
      int32_t a = x->op[t].a[q];
      if (a < 0 && bool_leaf(p, x, -1 - a) && !(fn == KD_SF_SELECT && q == 0)) return false;
    }
  }
  return x->nop >= 1;
}

/* The expression at element j (a vector of lanes from j when g->lanes):
   leaves loaded from lp[k] + j (bytes for a bool leaf, isbool[k], made an
   i1), constants as immediates ((float)imm, as the interpreter rounds
   them), the last op's value returned. */
static LLVMValueRef emit_expr(const fgen *g, const kd_step_expr *e, const bool *isbool,
                              LLVMValueRef const *lp, LLVMValueRef j, LLVMValueRef *lv,
                              LLVMValueRef *reg) {
  for (int32_t k = 0; k < e->nleaf; k++) {
    if (e->leaf[k].value < 0) {
      lv[k] = cf(g, (float)e->leaf[k].imm);
      continue;
    }
    LLVMTypeRef et = isbool[k] ? g->i8 : g->f32;
    LLVMTypeRef t = g->lanes ? LLVMVectorType(et, (unsigned)g->lanes) : et;
    lv[k] = LLVMBuildLoad2(g->b, t, LLVMBuildGEP2(g->b, et, lp[k], &j, 1, ""), "");
    LLVMSetAlignment(lv[k], isbool[k] ? 1 : 4);
    if (isbool[k]) lv[k] = LLVMBuildICmp(g->b, LLVMIntNE, lv[k], LLVMConstNull(t), "");
  }
  for (int32_t t = 0; t < e->nop; t++) {
    LLVMValueRef v[3] = {NULL, NULL, NULL};
    for (int q = 0; q < op_arity(e->op[t].fn); q++) {
      int32_t a = e->op[t].a[q];
      v[q] = a >= 0 ? reg[a] : lv[-1 - a];
    }
    reg[t] = emit_op(g, e->op[t].fn, v[0], v[1], v[2]);
  }
  return reg[e->nop - 1];
}

/* One loop over [from, to) in steps of g->lanes (1 when scalar), from the
   current block; leaves the builder in the exit block. lv and reg: room for
   the leaves' and the ops' values. */
static void emit_loop(fgen *g, LLVMValueRef fn, const kd_step_expr *e, const bool *isbool,
                      LLVMValueRef const *lp, LLVMValueRef dst, LLVMValueRef from,
                      LLVMValueRef to, LLVMValueRef *lv, LLVMValueRef *reg) {
  LLVMBuilderRef b = g->b;
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(b);
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(g->ctx, fn, "");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(g->ctx, fn, "");
  LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, from, to, ""), body, done);
  LLVMPositionBuilderAtEnd(b, body);
  LLVMValueRef j = LLVMBuildPhi(b, g->i64, "j");
  LLVMValueRef r = emit_expr(g, e, isbool, lp, j, lv, reg);
  LLVMValueRef st = LLVMBuildStore(b, r, LLVMBuildGEP2(b, g->f32, dst, &j, 1, ""));
  LLVMSetAlignment(st, 4);
  LLVMValueRef jn = LLVMBuildAdd(b, j, LLVMConstInt(g->i64, g->lanes ? (unsigned)g->lanes : 1, 0), "");
  LLVMBasicBlockRef end = LLVMGetInsertBlock(b);
  LLVMValueRef in[2] = {from, jn};
  LLVMBasicBlockRef bb[2] = {pre, end};
  LLVMAddIncoming(j, in, bb, 2);
  LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, jn, to, ""), body, done);
  LLVMPositionBuilderAtEnd(b, done);
}

/* void name(i64 m, ptr dst, ptr leaf): a vector loop over the first
   m - m % W elements, then a scalar loop over the rest. Internal: reached
   through the table only. */
static kd_status emit_fn(fgen *g, const kd_step_prog *p, const kd_step_expr *e, const char *name,
                         int W, LLVMValueRef *out) {
  LLVMTypeRef params[3] = {g->i64, g->ptr, g->ptr};
  LLVMTypeRef ty = LLVMFunctionType(LLVMVoidTypeInContext(g->ctx), params, 3, 0);
  LLVMValueRef fn = LLVMAddFunction(g->M, name, ty);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  LLVMValueRef m = LLVMGetParam(fn, 0), dst = LLVMGetParam(fn, 1), leafp = LLVMGetParam(fn, 2);
  LLVMPositionBuilderAtEnd(g->b, LLVMAppendBasicBlockInContext(g->ctx, fn, "entry"));
  LLVMValueRef *lp = calloc((size_t)e->nleaf + 1, sizeof *lp);
  LLVMValueRef *lv = calloc((size_t)e->nleaf + 1, sizeof *lv);
  LLVMValueRef *reg = calloc((size_t)e->nop, sizeof *reg);
  bool *isbool = calloc((size_t)e->nleaf + 1, sizeof *isbool);
  if (!lp || !lv || !reg || !isbool) {
    free(lp), free(lv), free(reg), free(isbool);
    return KD_ERR_NOMEM;
  }
  for (int32_t k = 0; k < e->nleaf; k++) isbool[k] = bool_leaf(p, e, k);
  for (int32_t k = 0; k < e->nleaf; k++) {
    if (e->leaf[k].value < 0) continue;
    LLVMValueRef idx = LLVMConstInt(g->i64, (unsigned long long)k, 0);
    lp[k] = LLVMBuildLoad2(g->b, g->ptr, LLVMBuildGEP2(g->b, g->ptr, leafp, &idx, 1, ""), "");
  }
  LLVMValueRef zero = LLVMConstInt(g->i64, 0, 0);
  LLVMValueRef nv = LLVMBuildSub(
      g->b, m, LLVMBuildURem(g->b, m, LLVMConstInt(g->i64, (unsigned)W, 0), ""), ""); /* m >= 0 */
  g->lanes = W;
  g->ft = LLVMVectorType(g->f32, (unsigned)W);
  g->it = LLVMVectorType(g->i32, (unsigned)W);
  emit_loop(g, fn, e, isbool, lp, dst, zero, nv, lv, reg);
  g->lanes = 0, g->ft = g->f32, g->it = g->i32;
  emit_loop(g, fn, e, isbool, lp, dst, nv, m, lv, reg);
  LLVMBuildRetVoid(g->b);
  free(lp), free(lv), free(reg), free(isbool);
  *out = fn;
  return KD_OK;
}

/* Program p's functions and its table `name` into g's module; *ncompiled
   counts the functions. */
static kd_status emit_prog(fgen *g, const kd_step_prog *p, const char *name, int W,
                           int32_t *ncompiled) {
  *ncompiled = 0;
  if (p->nexprs == 0) return KD_OK;
  LLVMValueRef *fns = calloc((size_t)p->nexprs, sizeof *fns);
  if (!fns) return KD_ERR_NOMEM;
  kd_status st = KD_OK;
  for (int32_t e = 0; e < p->nexprs && st == KD_OK; e++) {
    if (!kd_fused_compilable(p, e)) {
      fns[e] = LLVMConstNull(g->ptr);
      continue;
    }
    char fname[192];
    snprintf(fname, sizeof fname, "%s_%d", name, e);
    st = emit_fn(g, p, &p->exprs[e], fname, W, &fns[e]);
    if (st == KD_OK) ++*ncompiled;
  }
  if (st == KD_OK) {
    LLVMTypeRef at = LLVMArrayType(g->ptr, (unsigned)p->nexprs);
    LLVMValueRef gv = LLVMAddGlobal(g->M, at, name);
    LLVMSetInitializer(gv, LLVMConstArray(g->ptr, fns, (unsigned)p->nexprs));
    LLVMSetGlobalConstant(gv, 1);
  }
  free(fns);
  return st;
}

/* The IR is vectorised and in SSA form already: CSE and a CFG clean-up,
   then the backend. default<O3> (kd_session_optimize) took 0.9 s instead of
   0.13 s for examples/fkl.kd's 60 expressions, for no speed measurable,
   mostly vectorising and unrolling the scalar tails again. */
static kd_status optimize(kd_session *s, kd_module *m, char *err, size_t errlen) {
  char *msg = NULL;
  if (LLVMVerifyModule(m->mod, LLVMReturnStatusAction, &msg)) {
    kd_status st = kd_errf(err, errlen, KD_ERR_BACKEND, "invalid LLVM module (a kdc bug): %s", msg);
    LLVMDisposeMessage(msg);
    return st;
  }
  LLVMDisposeMessage(msg);
  LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
  LLVMErrorRef e = LLVMRunPasses(m->mod, "function(early-cse,simplifycfg)",
                                 kd_session_target_machine(s), opts);
  LLVMDisposePassBuilderOptions(opts);
  if (!e) return KD_OK;
  msg = LLVMGetErrorMessage(e); /* consumes e */
  kd_status st = kd_errf(err, errlen, KD_ERR_BACKEND, "the fused maps' passes failed: %s", msg);
  LLVMDisposeErrorMessage(msg);
  return st;
}

/* A module of the programs' functions and tables, optimised. */
static kd_status build(kd_session *s, const kd_step_prog *const *progs, const char *const *names,
                       int n, int W, kd_module *mod, int32_t *counts, char *err, size_t errlen) {
  kd_status st = kd_session_module_new(s, "kdc_fused", mod);
  if (st) return kd_errf(err, errlen, st, "out of memory");
  fgen g = {.ctx = mod->ctx, .M = mod->mod};
  g.b = LLVMCreateBuilderInContext(g.ctx);
  g.f32 = LLVMFloatTypeInContext(g.ctx);
  g.i8 = LLVMInt8TypeInContext(g.ctx);
  g.i32 = LLVMInt32TypeInContext(g.ctx);
  g.i64 = LLVMInt64TypeInContext(g.ctx);
  g.ptr = LLVMPointerTypeInContext(g.ctx, 0);
  for (int k = 0; k < n && st == KD_OK; k++) st = emit_prog(&g, progs[k], names[k], W, &counts[k]);
  LLVMDisposeBuilder(g.b);
  if (st) return kd_errf(err, errlen, st, "out of memory");
  return optimize(s, mod, err, errlen);
}

static int width(const kd_session *s, int vector_width) {
  int w = vector_width > 0 ? vector_width : kd_session_vector_width(s);
  return w > 16 ? 16 : w;
}

/* ---- JIT ------------------------------------------------------------------ */

struct kd_fused_jit {
  kd_session *session;
  LLVMOrcResourceTrackerRef rt;
  const kd_step_fused_fn **table; /* into the JIT's memory */
  int32_t *count;
};

kd_status kd_fused_jit_new(const kd_step_prog *const *progs, int n, int vector_width,
                           kd_fused_jit **out, char *err, size_t errlen) {
  *out = NULL;
  kd_fused_jit *j = calloc(1, sizeof *j);
  char **names = calloc((size_t)n + 1, sizeof *names);
  if (j) j->table = calloc((size_t)n + 1, sizeof *j->table);
  if (j) j->count = calloc((size_t)n + 1, sizeof *j->count);
  kd_status st = j && names && j->table && j->count ? KD_OK : KD_ERR_NOMEM;
  for (int k = 0; k < n && st == KD_OK; k++) {
    if (!(names[k] = malloc(32))) st = KD_ERR_NOMEM;
    else snprintf(names[k], 32, "kdc_fused_%d", k);
  }
  if (st) {
    st = kd_errf(err, errlen, st, "out of memory");
  } else {
    st = kd_session_new(&j->session, err, errlen);
  }
  kd_module m = {0};
  if (!st)
    st = build(j->session, progs, (const char *const *)names, n, width(j->session, vector_width),
               &m, j->count, err, errlen);
  if (!st) st = kd_session_jit(j->session, &m, &j->rt, err, errlen); /* owned by LLJIT from here */
  kd_module_dispose(&m);
  for (int k = 0; k < n && st == KD_OK; k++) {
    void *addr = NULL;
    if (progs[k]->nexprs == 0) continue;
    st = kd_session_lookup(j->session, names[k], &addr, err, errlen);
    j->table[k] = addr;
  }
  for (int k = 0; k < n && names; k++) free(names[k]);
  free(names);
  if (st) {
    kd_fused_jit_free(j);
    return st;
  }
  *out = j;
  return KD_OK;
}

void kd_fused_jit_free(kd_fused_jit *j) {
  if (!j) return;
  if (j->session) {
    kd_session_unload(j->session, j->rt);
    kd_session_free(j->session);
  }
  free(j->table);
  free(j->count);
  free(j);
}

const kd_step_fused_fn *kd_fused_jit_table(const kd_fused_jit *j, int k) { return j->table[k]; }
int32_t kd_fused_jit_count(const kd_fused_jit *j, int k) { return j->count[k]; }

/* ---- AOT ------------------------------------------------------------------ */

kd_status kd_fused_emit_file(const kd_step_prog *const *progs, const char *const *names, int n,
                             const char *path, char *err, size_t errlen) {
  kd_session *s = NULL;
  kd_status st = kd_session_new(&s, err, errlen);
  if (st) return st;
  int32_t *counts = calloc((size_t)n + 1, sizeof *counts);
  kd_module m = {0};
  if (!counts) st = kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  if (!st) st = build(s, progs, names, n, width(s, 0), &m, counts, err, errlen);
  if (!st) st = kd_session_emit(s, &m, LLVMObjectFile, path, err, errlen);
  kd_module_dispose(&m);
  free(counts);
  kd_session_free(s);
  return st;
}
