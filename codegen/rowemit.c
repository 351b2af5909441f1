/* The row emitters' shared core (rowemit.h). */
#include "rowemit.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mathlib.h"

void kd_re_init(kd_rowemit *r, const kd_schedule *s, const char *name, const char *who,
                LLVMModuleRef M, char *err, size_t errlen) {
  r->s = s;
  r->g = s->g;
  r->n = kd_graph_size(s->g);
  r->name = name;
  r->who = who;
  r->err = err;
  r->errlen = errlen;
  r->M = M;
  r->C = LLVMGetModuleContext(M);
  r->gval = calloc(r->n + 1, sizeof *r->gval);
  r->rval = calloc(r->n + 1, sizeof *r->rval);
  r->vval = calloc(r->n + 1, sizeof *r->vval);
  if (!r->gval || !r->rval || !r->vval) kd_re_fail(r, KD_ERR_NOMEM, "%s: out of memory", who);
  r->b = LLVMCreateBuilderInContext(r->C);
  r->be = LLVMCreateBuilderInContext(r->C);
  r->f32 = LLVMFloatTypeInContext(r->C);
  r->f64 = LLVMDoubleTypeInContext(r->C);
  r->i1 = LLVMInt1TypeInContext(r->C);
  r->i16 = LLVMInt16TypeInContext(r->C);
  r->i32 = LLVMInt32TypeInContext(r->C);
  r->i64 = LLVMInt64TypeInContext(r->C);
}

void kd_re_dispose(kd_rowemit *r) {
  LLVMDisposeBuilder(r->b);
  LLVMDisposeBuilder(r->be);
  free(r->gval);
  free(r->rval);
  free(r->vval);
}

void kd_re_fail(kd_rowemit *r, kd_status st, const char *fmt, ...) {
  if (r->st) return;
  r->st = st;
  if (r->err && r->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, r->errlen, fmt, ap);
    va_end(ap);
  }
}

/* ---- IR helpers ------------------------------------------------------------ */

LLVMTypeRef kd_re_type_of(const kd_rowemit *r, kd_vclass c, int vec) {
  LLVMTypeRef t = c == KD_CL_F ? (vec ? r->f32 : r->f64) : c == KD_CL_I ? r->i64 : r->i1;
  return vec ? LLVMVectorType(t, (unsigned)r->W) : t;
}

LLVMValueRef kd_re_i64c(const kd_rowemit *r, long long v) {
  return LLVMConstInt(r->i64, (unsigned long long)v, 1);
}

LLVMValueRef kd_re_splat(kd_rowemit *r, LLVMValueRef x) {
  LLVMTypeRef vt = LLVMVectorType(LLVMTypeOf(x), (unsigned)r->W);
  LLVMValueRef v = LLVMBuildInsertElement(r->b, LLVMGetPoison(vt), x, kd_re_i64c(r, 0), "");
  LLVMValueRef zeros = LLVMConstNull(LLVMVectorType(r->i32, (unsigned)r->W));
  return LLVMBuildShuffleVector(r->b, v, LLVMGetPoison(vt), zeros, "");
}

LLVMValueRef kd_re_lane_index(kd_rowemit *r) {
  LLVMValueRef lanes[64];
  for (int i = 0; i < r->W; i++) lanes[i] = kd_re_i64c(r, i);
  return LLVMBuildAdd(r->b, kd_re_splat(r, r->j), LLVMConstVector(lanes, (unsigned)r->W), "");
}

LLVMBasicBlockRef kd_re_block(kd_rowemit *r, const char *name) {
  return LLVMAppendBasicBlockInContext(r->C, r->fn, name);
}

LLVMValueRef kd_re_phi(kd_rowemit *r, LLVMTypeRef t, LLVMValueRef v0, LLVMBasicBlockRef b0,
                       LLVMValueRef v1, LLVMBasicBlockRef b1) {
  LLVMValueRef p = LLVMBuildPhi(r->b, t, "");
  LLVMValueRef in[2] = {v0, v1};
  LLVMBasicBlockRef bb[2] = {b0, b1};
  LLVMAddIncoming(p, in, bb, 2);
  return p;
}

void kd_re_begin_function(kd_rowemit *r, const char *suffix, LLVMTypeRef ty) {
  char name[160];
  snprintf(name, sizeof name, "%s_%s", r->name, suffix);
  r->fn = LLVMAddFunction(r->M, name, ty);
  /* entry: argument loads and global loads (through be, appended before
   * its branch whenever code needs one); start: everything else */
  LLVMBasicBlockRef entry = kd_re_block(r, "entry"), start = kd_re_block(r, "start");
  LLVMPositionBuilderAtEnd(r->b, entry);
  LLVMPositionBuilderBefore(r->be, LLVMBuildBr(r->b, start));
  memset(r->gval, 0, r->n * sizeof *r->gval);
  memset(r->rval, 0, r->n * sizeof *r->rval);
  LLVMPositionBuilderAtEnd(r->b, start);
}

/* ---- conversions ----------------------------------------------------------- */

LLVMValueRef kd_re_bf16_to_f32(kd_rowemit *r, LLVMValueRef x) {
  /* bf16 is the top half of an f32: widening is exact */
  LLVMTypeRef vi32 = LLVMVectorType(r->i32, (unsigned)r->W);
  x = LLVMBuildShl(r->b, LLVMBuildZExt(r->b, x, vi32, ""), kd_ir_iconst(vi32, 16), "");
  return LLVMBuildBitCast(r->b, x, r->vf, "");
}

LLVMValueRef kd_re_f32_to_bf16(kd_rowemit *r, LLVMValueRef x) {
  /* LLVM's fptrunc to bfloat: round to nearest even, NaN stays NaN
   * (vcvtneps2bf16 with AVX512-BF16, cvt.rn.bf16.f32 on sm_80+, integer
   * rounding elsewhere) */
  LLVMTypeRef vb = LLVMVectorType(LLVMBFloatTypeInContext(r->C), (unsigned)r->W);
  return LLVMBuildBitCast(r->b, LLVMBuildFPTrunc(r->b, x, vb, ""), LLVMVectorType(r->i16, (unsigned)r->W), "");
}

LLVMValueRef kd_re_convert(kd_rowemit *r, LLVMValueRef v, kd_vclass from, kd_vclass to) {
  if (from == to) return v;
  LLVMBuilderRef b = r->b;
  LLVMTypeRef vt = LLVMTypeOf(v);
  LLVMTypeRef t = kd_re_type_of(r, to, LLVMGetTypeKind(vt) == LLVMVectorTypeKind);
  if (to == KD_CL_F) return from == KD_CL_I ? LLVMBuildSIToFP(b, v, t, "") : LLVMBuildUIToFP(b, v, t, "");
  if (to == KD_CL_B)
    return from == KD_CL_F ? LLVMBuildFCmp(b, LLVMRealUNE, v, LLVMConstNull(vt), "")
                           : LLVMBuildICmp(b, LLVMIntNE, v, LLVMConstNull(vt), "");
  if (from == KD_CL_B) return LLVMBuildZExt(b, v, t, "");
  /* F -> I truncates toward zero; NaN gives 0 and the range is clamped, so
   * fptosi never sees a value it would turn into poison */
  LLVMValueRef ok = LLVMBuildFCmp(b, LLVMRealORD, v, v, "");
  v = LLVMBuildSelect(b, ok, v, LLVMConstNull(vt), "");
  LLVMValueRef lim[2] = {v, kd_ir_fconst(vt, 9.2e18)};
  v = kd_ir_intrinsic(b, "llvm.minnum", vt, lim, 2);
  LLVMValueRef lim2[2] = {v, kd_ir_fconst(vt, -9.2e18)};
  v = kd_ir_intrinsic(b, "llvm.maxnum", vt, lim2, 2);
  return LLVMBuildFPToSI(b, v, t, "");
}

LLVMValueRef kd_re_widen(kd_rowemit *r, LLVMValueRef x, kd_vclass c) {
  if (c == KD_CL_F) x = LLVMBuildFPTrunc(r->b, x, r->f32, "");
  return kd_re_splat(r, x);
}

/* ---- the expression emitter ---------------------------------------------------- */

static LLVMValueRef convert_cb(void *r, LLVMValueRef v, kd_vclass from, kd_vclass to) {
  return kd_re_convert(r, v, from, to);
}
static LLVMValueRef exp_cb(void *r, LLVMValueRef x) { return ((kd_rowemit *)r)->exp(r, x); }
static LLVMValueRef log_cb(void *r, LLVMValueRef x) { return ((kd_rowemit *)r)->log(r, x); }

LLVMValueRef kd_re_op(kd_rowemit *r, kd_node_id id, LLVMValueRef *v) {
  kd_elem x = {r->b, r->g, r, convert_cb, exp_cb, log_cb, r->vzero, r->who, &r->st, r->err, r->errlen};
  return kd_elem_op(&x, id, v, kd_re_fnode(r, id)->role == KD_ROLE_IDENTITY);
}

/* ---- global, row and element values ------------------------------------------ */

LLVMValueRef kd_re_const_value(kd_rowemit *r, const kd_node *n) {
  kd_vclass c = kd_vclass_of(n->dtype);
  if (c == KD_CL_F) return LLVMConstReal(r->f64, n->value);
  if (c == KD_CL_B) return LLVMConstInt(r->i1, n->value != 0, 0);
  return kd_re_i64c(r, (long long)n->value);
}

LLVMValueRef kd_re_global_value(kd_rowemit *r, kd_node_id id) {
  const kd_node *n = kd_re_gnode(r, id);
  if (n->op == KD_IR_CONST) return kd_re_const_value(r, n);
  if (!r->gval[id]) {
    /* load in the entry block, convert there too */
    LLVMBuilderRef keep = r->b;
    r->b = r->be;
    LLVMValueRef idx = kd_re_i64c(r, id);
    LLVMValueRef p = LLVMBuildGEP2(r->b, r->f64, r->p_globals, &idx, 1, "");
    r->gval[id] = kd_re_convert(r, LLVMBuildLoad2(r->b, r->f64, p, ""), KD_CL_F, kd_vclass_of(n->dtype));
    r->b = keep;
  }
  return r->gval[id];
}

LLVMValueRef kd_re_row_value(kd_rowemit *r, kd_node_id id) {
  const kd_fuse_node *f = kd_re_fnode(r, id);
  if (f->kind == KD_FUSE_GLOBAL) return kd_re_global_value(r, id);
  if (r->rval[id]) return r->rval[id];
  const kd_node *n = kd_re_gnode(r, id);
  if (f->kind != KD_FUSE_ROW || f->role == KD_ROLE_ROWRED || f->role == KD_ROLE_FOLDED) {
    kd_re_fail(r, KD_ERR_BACKEND, "%s: %%%d used before its pass (a scheduler bug)", r->who, (int)id);
    return LLVMGetPoison(kd_re_type_of(r, kd_vclass_of(n->dtype), 0));
  }
  if (n->op == KD_IR_INPUT) {
    if (id != r->s->labels) {
      kd_re_fail(r, KD_ERR_UNSUPPORTED, "%s: per-row input \"%s\" is not supported", r->who, n->name);
      return LLVMGetPoison(r->i64);
    }
    LLVMValueRef p = LLVMBuildGEP2(r->b, r->i64, r->p_labels, &r->row, 1, "");
    return r->rval[id] = LLVMBuildLoad2(r->b, r->i64, p, "label");
  }
  LLVMValueRef v[KD_MAX_SRC] = {0};
  for (int i = 0; i < n->nsrc; i++) v[i] = kd_re_row_value(r, n->src[i]);
  return r->rval[id] = kd_re_op(r, id, v);
}

LLVMValueRef kd_re_elem_value(kd_rowemit *r, kd_node_id id) {
  if (r->vval[id]) return r->vval[id];
  const kd_fuse_node *f = kd_re_fnode(r, id);
  const kd_node *n = kd_re_gnode(r, id);
  kd_vclass c = kd_vclass_of(n->dtype);
  if (f->kind != KD_FUSE_ELEM) return r->vval[id] = kd_re_widen(r, kd_re_row_value(r, id), c);
  if (n->op == KD_IR_INPUT) {
    if (id != r->s->teacher && id != r->s->student) {
      kd_re_fail(r, KD_ERR_UNSUPPORTED, "%s: [N, V] input \"%s\" is not supported", r->who, n->name);
      return LLVMGetPoison(r->vf);
    }
    return r->vval[id] = r->load_logits(r, id);
  }
  if (n->op == KD_IR_IOTA) return r->vval[id] = kd_re_convert(r, kd_re_lane_index(r), KD_CL_I, c);
  LLVMValueRef own = r->elem_special(r, id);
  if (own) return r->vval[id] = own;
  LLVMValueRef shifted = kd_re_shift_by_scalar(r, id);
  if (shifted) return r->vval[id] = shifted;
  LLVMValueRef v[KD_MAX_SRC] = {0};
  for (int i = 0; i < n->nsrc; i++) v[i] = r->elem_value(r, n->src[i]);
  return r->vval[id] = kd_re_op(r, id, v);
}

LLVMValueRef kd_re_elem_f(kd_rowemit *r, kd_node_id id) {
  return kd_re_convert(r, r->elem_value(r, id), kd_vclass_of(kd_re_gnode(r, id)->dtype), KD_CL_F);
}

LLVMValueRef kd_re_row_f(kd_rowemit *r, kd_node_id id) {
  return kd_re_convert(r, kd_re_row_value(r, id), kd_vclass_of(kd_re_gnode(r, id)->dtype), KD_CL_F);
}

/* c = hi + lo in two floats and x - c = (x - hi) - lo: a shift by the
 * log-sum-exp of logits of size 1e4 then stays accurate to the f32
 * rounding of the (small) difference, not of c. With c rounded to f32, p =
 * exp(t - lse) would be off by 5e-4 and sum(p * t) - lse by units. */
LLVMValueRef kd_re_shift_by_scalar(kd_rowemit *r, kd_node_id id) {
  const kd_node *n = kd_re_gnode(r, id);
  if ((n->op != KD_IR_ADD && n->op != KD_IR_SUB) || kd_vclass_of(n->dtype) != KD_CL_F) return NULL;
  int k = kd_re_fnode(r, n->src[0])->kind == KD_FUSE_ELEM ? 1 : 0; /* the scalar operand */
  kd_node_id xs = n->src[1 - k], cs = n->src[k];
  if (kd_re_fnode(r, xs)->kind != KD_FUSE_ELEM || kd_re_fnode(r, cs)->kind == KD_FUSE_ELEM ||
      kd_vclass_of(kd_re_gnode(r, cs)->dtype) != KD_CL_F ||
      kd_vclass_of(kd_re_gnode(r, xs)->dtype) != KD_CL_F || kd_re_gnode(r, cs)->op == KD_IR_CONST)
    return NULL;
  LLVMBuilderRef b = r->b;
  LLVMValueRef x = r->elem_value(r, xs), c = kd_re_row_value(r, cs);
  LLVMValueRef hi = LLVMBuildFPTrunc(b, c, r->f32, "");
  LLVMValueRef lo =
      LLVMBuildFPTrunc(b, LLVMBuildFSub(b, c, LLVMBuildFPExt(b, hi, r->f64, ""), ""), r->f32, "");
  LLVMValueRef vh = kd_re_splat(r, hi), vl = kd_re_splat(r, lo);
  if (n->op == KD_IR_ADD) return LLVMBuildFAdd(b, LLVMBuildFAdd(b, x, vh, ""), vl, "");
  if (k == 1) return LLVMBuildFSub(b, LLVMBuildFSub(b, x, vh, ""), vl, "");
  return LLVMBuildFSub(b, LLVMBuildFSub(b, vh, x, ""), vl, ""); /* c - x */
}

LLVMValueRef kd_re_fold_contrib(kd_rowemit *r, kd_node_id id, LLVMValueRef w, LLVMValueRef wz) {
  const kd_fuse_node *f = kd_re_fnode(r, id);
  if (f->fold_f == KD_NONE) return w;
  LLVMValueRef p = LLVMBuildFMul(r->b, w, kd_re_elem_f(r, f->fold_f), "");
  if (!f->mulz) return p;
  if (!wz) wz = LLVMBuildFCmp(r->b, LLVMRealOEQ, w, LLVMConstNull(r->vf), "");
  return LLVMBuildSelect(r->b, wz, LLVMConstNull(r->vf), p, "");
}

void kd_re_prepare_rows(kd_rowemit *r, kd_node_id id, char *seen) {
  if (seen[id]) return;
  seen[id] = 1;
  const kd_fuse_node *f = kd_re_fnode(r, id);
  if (f->kind == KD_FUSE_ROW) {
    kd_re_row_value(r, id);
    return;
  }
  if (f->kind == KD_FUSE_GLOBAL) {
    kd_re_global_value(r, id);
    return;
  }
  const kd_node *n = kd_re_gnode(r, id);
  for (int i = 0; i < n->nsrc; i++) kd_re_prepare_rows(r, n->src[i], seen);
}

void kd_re_prepare_pass(kd_rowemit *r, const kd_node_id *ga, int ng, const kd_node_id *red, int nr,
                        const kd_node_id *store, int nstore, char *seen) {
  for (int gi = 0; gi < ng; gi++) kd_re_prepare_rows(r, ga[gi], seen);
  for (int i = 0; i < nr; i++) {
    const kd_fuse_node *f = kd_re_fnode(r, red[i]);
    if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE) kd_re_prepare_rows(r, f->fold_f, seen);
    if (f->role == KD_ROLE_ROWRED) kd_re_prepare_rows(r, kd_re_gnode(r, red[i])->src[0], seen);
  }
  for (int i = 0; i < nstore; i++) kd_re_prepare_rows(r, store[i], seen);
}

void kd_re_store_row_reds(kd_rowemit *r) {
  for (kd_node_id id = 0; id < (kd_node_id)r->n && !r->st; id++) {
    const kd_fuse_node *f = kd_re_fnode(r, id);
    if (f->role != KD_ROLE_NRED || f->stage != r->stage) continue;
    kd_node_id src = kd_re_gnode(r, id)->src[0];
    LLVMValueRef v = kd_re_row_f(r, src);
    LLVMValueRef idx = LLVMBuildAdd(r->b, LLVMBuildMul(r->b, kd_re_i64c(r, f->slot), r->N, ""), r->row, "");
    LLVMBuildStore(r->b, v, LLVMBuildGEP2(r->b, r->f64, r->p_rows, &idx, 1, ""));
  }
}

void kd_re_emit_globals(kd_rowemit *r, int k, int live_only,
                        LLVMValueRef (*nred)(kd_rowemit *r, kd_node_id id)) {
  for (kd_node_id id = 0; id < (kd_node_id)r->n && !r->st; id++) {
    const kd_fuse_node *f = kd_re_fnode(r, id);
    const kd_node *n = kd_re_gnode(r, id);
    /* constants are inlined where used; the last step stores the outputs
     * that are plain constants too */
    int konst = n->op == KD_IR_CONST;
    if (f->kind != KD_FUSE_GLOBAL || (live_only && !f->live)) continue;
    if (konst ? !(k == r->s->nstages && kd_re_is_output(r, id)) : f->phase != k) continue;
    LLVMValueRef v;
    if (f->role == KD_ROLE_NRED) {
      v = nred(r, id);
    } else if (konst) {
      v = kd_re_const_value(r, n);
    } else {
      LLVMValueRef src[KD_MAX_SRC] = {0};
      for (int i = 0; i < n->nsrc; i++) src[i] = kd_re_global_value(r, n->src[i]);
      v = kd_re_op(r, id, src);
    }
    r->gval[id] = v;
    LLVMValueRef idx = kd_re_i64c(r, id);
    LLVMBuildStore(r->b, kd_re_convert(r, v, kd_vclass_of(n->dtype), KD_CL_F),
                   LLVMBuildGEP2(r->b, r->f64, r->p_globals, &idx, 1, ""));
  }
}

/* ---- the schedule ----------------------------------------------------------------- */

int kd_re_is_output(const kd_rowemit *r, kd_node_id id) {
  for (size_t i = 0; i < kd_graph_noutputs(r->g); i++)
    if (kd_graph_output(r->g, i) == id) return 1;
  return 0;
}

kd_node_id kd_re_online_a(const kd_rowemit *r, kd_node_id id) {
  const kd_fuse_node *f = kd_re_fnode(r, id);
  return f->role == KD_ROLE_FOLDED ? f->fold_a : kd_re_gnode(r, id)->src[0];
}
