/* The expression emitter shared by codegen/cpu.c and codegen/ptx.c. */
#include "elementwise.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "mathlib.h"

kd_vclass kd_vclass_of(kd_dtype t) {
  switch (t) {
  case KD_BOOL: return KD_CL_B;
  case KD_I32:
  case KD_I64: return KD_CL_I;
  default: return KD_CL_F;
  }
}

static void fail(kd_elem *x, const char *fmt, ...) {
  if (*x->st) return;
  *x->st = KD_ERR_UNSUPPORTED;
  if (x->err && x->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err, x->errlen, fmt, ap);
    va_end(ap);
  }
}

static LLVMValueRef intrinsic1(kd_elem *x, const char *name, LLVMValueRef v) {
  return kd_ir_intrinsic(x->b, name, LLVMTypeOf(v), &v, 1);
}

/* pow with a small integer or 1/2 constant exponent by multiplications or
 * sqrt; otherwise exp(b log a) (a < 0 gives nan, as the reference does for
 * non-integer b). */
static LLVMValueRef emit_pow(kd_elem *x, const kd_node *n, LLVMValueRef a, LLVMValueRef b) {
  const kd_node *bn = kd_graph_node(x->g, n->src[1]);
  LLVMTypeRef t = LLVMTypeOf(a);
  if (bn->op == KD_IR_CONST) {
    double k = bn->value;
    if (k == 0.5) return intrinsic1(x, "llvm.sqrt", a);
    if (k == floor(k) && fabs(k) <= 4) {
      LLVMValueRef r = kd_ir_fconst(t, 1.0);
      for (int i = 0; i < (int)fabs(k); i++) r = LLVMBuildFMul(x->b, r, a, "");
      return k < 0 ? LLVMBuildFDiv(x->b, kd_ir_fconst(t, 1.0), r, "") : r;
    }
  }
  return x->exp(x->ctx, LLVMBuildFMul(x->b, b, x->log(x->ctx, a), ""));
}

static LLVMValueRef emit_unary(kd_elem *x, kd_opcode op, LLVMValueRef v, kd_vclass c) {
  LLVMBuilderRef b = x->b;
  LLVMTypeRef t = LLVMTypeOf(v);
  LLVMValueRef zero = LLVMConstNull(t);
  switch (op) {
  case KD_IR_NEG: return c == KD_CL_F ? LLVMBuildFNeg(b, v, "") : LLVMBuildNeg(b, v, "");
  case KD_IR_EXP: return x->exp(x->ctx, v);
  case KD_IR_LOG: return x->log(x->ctx, v);
  case KD_IR_SQRT: return intrinsic1(x, "llvm.sqrt", v);
  case KD_IR_ABS:
    if (c == KD_CL_F) return intrinsic1(x, "llvm.fabs", v);
    return LLVMBuildSelect(b, LLVMBuildICmp(b, LLVMIntSLT, v, zero, ""), LLVMBuildNeg(b, v, ""),
                           v, "");
  case KD_IR_SIGN: {
    if (c == KD_CL_F) {
      /* copysign(1, v), but 0 and nan stay themselves: one compare, not two */
      LLVMValueRef args[2] = {kd_ir_fconst(t, 1), v};
      LLVMValueRef s1 = kd_ir_intrinsic(b, "llvm.copysign", t, args, 2);
      return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUEQ, v, zero, ""), v, s1, "");
    }
    LLVMValueRef pos = LLVMBuildICmp(b, LLVMIntSGT, v, zero, "");
    LLVMValueRef neg = LLVMBuildICmp(b, LLVMIntSLT, v, zero, "");
    return LLVMBuildSelect(b, pos, kd_ir_iconst(t, 1),
                           LLVMBuildSelect(b, neg, kd_ir_iconst(t, -1), v, ""), "");
  }
  case KD_IR_CAST: /* already converted */
  case KD_IR_STOPGRAD: return v;
  default: /* TANH: the model ops are not row-kernel ops */
    fail(x, "%s: %s has no emitter", x->who, kd_opcode_name(op));
    return v;
  }
}

static LLVMValueRef emit_compare(kd_elem *x, kd_opcode op, LLVMValueRef a, LLVMValueRef b,
                                 kd_vclass c) {
  static const LLVMRealPredicate fp[] = {LLVMRealOLT, LLVMRealOLE, LLVMRealOGT,
                                         LLVMRealOGE, LLVMRealOEQ, LLVMRealUNE};
  static const LLVMIntPredicate ip[] = {LLVMIntSLT, LLVMIntSLE, LLVMIntSGT,
                                        LLVMIntSGE, LLVMIntEQ,  LLVMIntNE};
  int k = (int)op - (int)KD_IR_LT;
  return c == KD_CL_F ? LLVMBuildFCmp(x->b, fp[k], a, b, "") : LLVMBuildICmp(x->b, ip[k], a, b, "");
}

/* Element arithmetic may fuse into FMAs (LLVM's contract flag): a * b + c
 * rounds once instead of twice, which the kernels' tolerances cover (the
 * reference executor, in double, is the oracle either way). */
static LLVMValueRef contract(LLVMValueRef v) {
  LLVMSetFastMathFlags(v, LLVMFastMathAllowContract);
  return v;
}

static LLVMValueRef emit_binary(kd_elem *x, const kd_node *n, LLVMValueRef a, LLVMValueRef b,
                                kd_vclass c) {
  LLVMBuilderRef B = x->b;
  int f = c == KD_CL_F;
  switch (n->op) {
  case KD_IR_ADD: return f ? contract(LLVMBuildFAdd(B, a, b, "")) : LLVMBuildAdd(B, a, b, "");
  case KD_IR_SUB: return f ? contract(LLVMBuildFSub(B, a, b, "")) : LLVMBuildSub(B, a, b, "");
  case KD_IR_MUL: return f ? contract(LLVMBuildFMul(B, a, b, "")) : LLVMBuildMul(B, a, b, "");
  case KD_IR_MULZ: {
    if (!f) return LLVMBuildMul(B, a, b, "");
    /* exactly 0 where a == 0, even for b = inf or nan */
    LLVMValueRef z = x->vzero ? x->vzero[n->src[0]] : NULL;
    if (!z) z = LLVMBuildFCmp(B, LLVMRealOEQ, a, LLVMConstNull(LLVMTypeOf(a)), "");
    return LLVMBuildSelect(B, z, LLVMConstNull(LLVMTypeOf(a)), contract(LLVMBuildFMul(B, a, b, "")), "");
  }
  case KD_IR_DIV: return LLVMBuildFDiv(B, a, b, "");
  case KD_IR_POW: return emit_pow(x, n, a, b);
  case KD_IR_MAX:
  case KD_IR_MIN:
    if (f) {
      LLVMValueRef args[2] = {a, b};
      return kd_ir_intrinsic(B, n->op == KD_IR_MAX ? "llvm.maximum" : "llvm.minimum",
                             LLVMTypeOf(a), args, 2);
    }
    return LLVMBuildSelect(
        B, LLVMBuildICmp(B, n->op == KD_IR_MAX ? LLVMIntSGE : LLVMIntSLE, a, b, ""), a, b, "");
  default:
    fail(x, "%s: %s has no emitter", x->who, kd_opcode_name(n->op));
    return LLVMGetPoison(LLVMTypeOf(a));
  }
}

LLVMValueRef kd_elem_op(kd_elem *x, kd_node_id id, const LLVMValueRef *v, int identity) {
  const kd_node *n = kd_graph_node(x->g, id);
  kd_vclass c = kd_vclass_of(n->dtype);
  kd_vclass sc[KD_MAX_SRC];
  for (int i = 0; i < n->nsrc; i++) sc[i] = kd_vclass_of(kd_graph_node(x->g, n->src[i])->dtype);
  if (identity) return x->convert(x->ctx, v[0], sc[0], c);
  switch (kd_opcode_class(n->op)) {
  case KD_CLASS_UNARY: return emit_unary(x, n->op, x->convert(x->ctx, v[0], sc[0], c), c);
  case KD_CLASS_BINARY:
    if (n->op >= KD_IR_LT && n->op <= KD_IR_NE) {
      kd_vclass cc = (sc[0] == KD_CL_F || sc[1] == KD_CL_F) ? KD_CL_F : KD_CL_I;
      return emit_compare(x, n->op, x->convert(x->ctx, v[0], sc[0], cc),
                          x->convert(x->ctx, v[1], sc[1], cc), cc);
    }
    return emit_binary(x, n, x->convert(x->ctx, v[0], sc[0], c),
                       x->convert(x->ctx, v[1], sc[1], c), c);
  case KD_CLASS_SELECT:
    return LLVMBuildSelect(x->b, x->convert(x->ctx, v[0], sc[0], KD_CL_B),
                           x->convert(x->ctx, v[1], sc[1], c), x->convert(x->ctx, v[2], sc[2], c),
                           "");
  default:
    fail(x, "%s: %%%d: %s is not supported here", x->who, (int)id, kd_opcode_name(n->op));
    return LLVMGetPoison(LLVMTypeOf(v[0])); /* every op that reaches here has a source */
  }
}
