/* The CPU row-kernel emitter: a kd_schedule becomes LLVM functions.
 *
 * For a loss with K stages it emits
 *   <name>_row<k>(const kd_loss_args *a, i64 begin, i64 end)   k < K, stages with rows
 *   <name>_step<k>(const kd_loss_args *a)                      k <= K
 *   <name>_program                                             a kd_loss_program
 * (runtime/lossrun.h). A row kernel, for each row in [begin, end), runs the
 * stage's passes: each pass is a loop over the row in vectors of W f32 lanes
 * plus one masked tail vector (so any V works; with non-temporal stores also
 * a masked head up to the gradient row's alignment), accumulating the pass's
 * reductions in f32 lanes that move to double lanes every BLOCK vectors;
 * after the loop the double lanes are combined into row scalars.
 * Row scalars are computed in double between passes; global scalars are
 * computed in double by the steps and read from a->globals. Costly element
 * values that a later pass needs again go through a per-thread row cache,
 * and so do the exps of the online groups that the schedule keeps (fuse.h,
 * "Cached exps").
 *
 * Value classes: every node computes as F (f32 lanes in loops, double in row
 * and global code), I (i64) or B (i1), by its dtype. Element values are
 * recomputed in every pass that needs them and memoised within one vector
 * body only, so no N x V temporary exists.
 *
 * Target-neutral on purpose: the expression emitter (emit_op) knows nothing
 * of loops; the loop structure lives in emit_pass and emit_row_kernel. */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loss.h"
#include "elementwise.h"
#include "mathlib.h"
#include "session.h"

#define MAX_STATE 64 /* online groups + reductions in one pass */
#define MAX_CACHE 8  /* row-cache slots: [MAX_CACHE, V] floats per thread at most */
#define BLOCK 64     /* vectors summed in f32 lanes before they move to double lanes */
/* An online group's reference m moves only when a value exceeds it by more
 * than LAZY (then to that value), so exp(x - m) <= e^LAZY: the rescale branch
 * is taken a few times a row instead of whenever a lane's max grows, and the
 * kept exps of a block rarely need a fix-up. e^16 * BLOCK sums far below
 * FLT_MAX. */
#define LAZY 16.0
/* Kept exps (fuse.h, "Cached exps") take V floats of row cache per group; a
 * row whose kept exps exceed KEEP_BYTES (about an L2) recomputes them. */
#define KEEP_BYTES (1 << 20)

/* The row cache of a stage: element values that a pass computes and a later
 * pass needs again are written to a per-thread scratch row (L2-resident, V
 * floats a value) instead of being recomputed, when they cost an exp or a
 * log. The later pass loads them. */
typedef struct cache_plan {
  int nslots;
  kd_node_id node[MAX_CACHE]; /* the value in slot s */
  int save_pass[MAX_CACHE];   /* the pass that writes it */
  int nloads;
  struct {
    int pass, slot;
  } load[MAX_CACHE * KD_FUSE_MAX_PASSES];
} cache_plan;


typedef struct emitter {
  const kd_schedule *s;
  const kd_graph *g;
  size_t n;
  int W;
  int nontemporal; /* gradient stores bypass the caches */
  int aligned;     /* in a main loop whose gradient stores are vector-aligned */
  const char *name;
  kd_status st;
  char *err;
  size_t errlen;

  LLVMContextRef C;
  LLVMModuleRef M;
  LLVMBuilderRef b;
  LLVMBuilderRef be; /* positioned before the entry block's terminator */
  LLVMTypeRef f32, f64, i1, i16, i32, i64, ptr, vf, vi64, vi1, args_ty, row_ty, step_ty;

  /* per function */
  LLVMValueRef fn, args, N, V, row, j, mask;
  LLVMValueRef ptr_teacher, ptr_student, ptr_labels, ptr_grad, ptr_rows, ptr_globals;
  LLVMValueRef *gval; /* [n] global scalars */
  LLVMValueRef *rval; /* [n] row scalars of the current row */
  LLVMValueRef *vval; /* [n] element vectors of the current vector body */
  LLVMValueRef *vzero; /* [n] lanes where vval is 0, when known for free (exps), else NULL */
  LLVMValueRef scratch; /* the row kernel's [nscratch, V] floats */
  int *slot_load;       /* [n] the slot a node is loaded from in this pass, or -1 */
  cache_plan cache;     /* of the stage being emitted */
  int nscratch;         /* max slots over the stages */
  int stage, pass;

  /* kept exps of the stage (fuse.h): group keep[i] of the schedule writes
   * its exps to scratch slot cache.nslots + i and its reference of each
   * block to blockref[i] (vectors: the tail 0, block b of the main loop
   * 1 + b); a later pass reads exp(a - c) as the slot times
   * exp(ref - c), xscale[node] in the current block */
  int nkeep, keep[MAX_STATE];
  LLVMValueRef blockref[MAX_STATE];
  long long keep_maxv;  /* the longest row whose kept exps fit KEEP_BYTES */
  int expc;             /* the row loop being emitted uses the kept exps */
  LLVMValueRef *xscale; /* [n] */
  LLVMValueRef jblock;  /* the current block's first column (NULL in masked steps) */
} emitter;

static void fail(emitter *e, kd_status st, const char *fmt, ...) {
  if (e->st) return;
  e->st = st;
  if (e->err && e->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, e->errlen, fmt, ap);
    va_end(ap);
  }
}

static const kd_node *gnode(const emitter *e, kd_node_id id) { return kd_graph_node(e->g, id); }
static const kd_fuse_node *fnode(const emitter *e, kd_node_id id) { return &e->s->node[id]; }

static LLVMTypeRef type_of(const emitter *e, kd_vclass c, int vec) {
  if (vec) return c == KD_CL_F ? e->vf : c == KD_CL_I ? e->vi64 : e->vi1;
  return c == KD_CL_F ? e->f64 : c == KD_CL_I ? e->i64 : e->i1;
}

static LLVMValueRef i64c(const emitter *e, long long v) {
  return LLVMConstInt(e->i64, (unsigned long long)v, 1);
}

/* ---- small IR helpers ------------------------------------------------------ */

static LLVMValueRef splat(emitter *e, LLVMValueRef x) {
  LLVMTypeRef vt = LLVMVectorType(LLVMTypeOf(x), (unsigned)e->W);
  LLVMValueRef v = LLVMBuildInsertElement(e->b, LLVMGetPoison(vt), x, i64c(e, 0), "");
  LLVMValueRef zeros = LLVMConstNull(LLVMVectorType(e->i32, (unsigned)e->W));
  return LLVMBuildShuffleVector(e->b, v, LLVMGetPoison(vt), zeros, "");
}

/* An intrinsic overloaded on two types (masked loads and stores). */
static LLVMValueRef intrinsic2(emitter *e, const char *name, LLVMTypeRef t0, LLVMTypeRef t1,
                               LLVMValueRef *args, unsigned nargs) {
  LLVMTypeRef tys[2] = {t0, t1};
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(e->M, id, tys, t1 ? 2 : 1);
  LLVMTypeRef fty = LLVMIntrinsicGetType(e->C, id, tys, t1 ? 2 : 1);
  return LLVMBuildCall2(e->b, fty, f, args, nargs, "");
}

static LLVMValueRef intrinsic1(emitter *e, const char *name, LLVMValueRef x) {
  return kd_ir_intrinsic(e->b, name, LLVMTypeOf(x), &x, 1);
}

static LLVMValueRef vreduce(emitter *e, const char *name, LLVMValueRef v) {
  return intrinsic2(e, name, LLVMTypeOf(v), NULL, &v, 1);
}

static LLVMValueRef load_field(emitter *e, int i, LLVMTypeRef ty) {
  LLVMValueRef p = LLVMBuildStructGEP2(e->be, e->args_ty, e->args, (unsigned)i, "");
  return LLVMBuildLoad2(e->be, ty, p, "");
}

/* ---- conversions ----------------------------------------------------------- */

static LLVMValueRef convert(emitter *e, LLVMValueRef v, kd_vclass from, kd_vclass to) {
  if (from == to) return v;
  LLVMTypeRef vt = LLVMTypeOf(v);
  int vec = LLVMGetTypeKind(vt) == LLVMVectorTypeKind;
  LLVMTypeRef t = type_of(e, to, vec);
  if (to == KD_CL_F) return from == KD_CL_I ? LLVMBuildSIToFP(e->b, v, t, "") : LLVMBuildUIToFP(e->b, v, t, "");
  if (to == KD_CL_B)
    return from == KD_CL_F ? LLVMBuildFCmp(e->b, LLVMRealUNE, v, LLVMConstNull(vt), "")
                        : LLVMBuildICmp(e->b, LLVMIntNE, v, LLVMConstNull(vt), "");
  if (from == KD_CL_B) return LLVMBuildZExt(e->b, v, t, "");
  /* F -> I truncates toward zero; NaN gives 0 and the range is clamped, so
   * fptosi never sees a value it would turn into poison */
  LLVMValueRef ok = LLVMBuildFCmp(e->b, LLVMRealORD, v, v, "");
  v = LLVMBuildSelect(e->b, ok, v, LLVMConstNull(vt), "");
  LLVMValueRef lim[2] = {v, kd_ir_fconst(vt, 9.2e18)};
  v = kd_ir_intrinsic(e->b, "llvm.minnum", vt, lim, 2);
  LLVMValueRef lim2[2] = {v, kd_ir_fconst(vt, -9.2e18)};
  v = kd_ir_intrinsic(e->b, "llvm.maxnum", vt, lim2, 2);
  return LLVMBuildFPToSI(e->b, v, t, "");
}

/* A scalar (double / i64 / i1) broadcast into a vector of the loop's class. */
static LLVMValueRef widen(emitter *e, LLVMValueRef x, kd_vclass c) {
  if (c == KD_CL_F) x = LLVMBuildFPTrunc(e->b, x, e->f32, "");
  return splat(e, x);
}

/* ---- the expression emitter (scalar or vector) ------------------------------ */

static LLVMValueRef emit_exp(emitter *e, LLVMValueRef x) {
  return LLVMGetTypeKind(LLVMTypeOf(x)) == LLVMVectorTypeKind ? kd_emit_exp(e->b, x)
                                                              : intrinsic1(e, "llvm.exp", x);
}

static LLVMValueRef emit_log(emitter *e, LLVMValueRef x) {
  return LLVMGetTypeKind(LLVMTypeOf(x)) == LLVMVectorTypeKind ? kd_emit_log(e->b, x)
                                                              : intrinsic1(e, "llvm.log", x);
}

/* One node from its sources' values (all scalar or all vector). */
static LLVMValueRef convert_cb(void *e, LLVMValueRef v, kd_vclass from, kd_vclass to) {
  return convert(e, v, from, to);
}
static LLVMValueRef exp_cb(void *e, LLVMValueRef x) { return emit_exp(e, x); }
static LLVMValueRef log_cb(void *e, LLVMValueRef x) { return emit_log(e, x); }

static LLVMValueRef emit_op(emitter *e, kd_node_id id, LLVMValueRef *v) {
  kd_elem x = {e->b, e->g, e, convert_cb, exp_cb, log_cb, e->vzero, "codegen", &e->st, e->err, e->errlen};
  return kd_elem_op(&x, id, v, fnode(e, id)->role == KD_ROLE_IDENTITY);
}

/* ---- global, row and element values ------------------------------------------ */

static LLVMValueRef const_value(emitter *e, const kd_node *n) {
  kd_vclass c = kd_vclass_of(n->dtype);
  if (c == KD_CL_F) return LLVMConstReal(e->f64, n->value);
  if (c == KD_CL_B) return LLVMConstInt(e->i1, n->value != 0, 0);
  return i64c(e, (long long)n->value);
}

/* globals[id] as a double, loaded in the entry block. */
static LLVMValueRef load_global(emitter *e, kd_node_id id) {
  LLVMValueRef idx = i64c(e, id);
  LLVMValueRef p = LLVMBuildGEP2(e->be, e->f64, e->ptr_globals, &idx, 1, "");
  return LLVMBuildLoad2(e->be, e->f64, p, "");
}

static LLVMValueRef global_value(emitter *e, kd_node_id id) {
  const kd_node *n = gnode(e, id);
  if (n->op == KD_IR_CONST) return const_value(e, n);
  if (!e->gval[id]) {
    /* load in the entry block, convert there too */
    LLVMBuilderRef keep = e->b;
    e->b = e->be;
    e->gval[id] = convert(e, load_global(e, id), KD_CL_F, kd_vclass_of(n->dtype));
    e->b = keep;
  }
  return e->gval[id];
}

static LLVMValueRef row_value(emitter *e, kd_node_id id) {
  const kd_fuse_node *f = fnode(e, id);
  if (f->kind == KD_FUSE_GLOBAL) return global_value(e, id);
  if (e->rval[id]) return e->rval[id];
  const kd_node *n = gnode(e, id);
  if (f->kind != KD_FUSE_ROW || f->role == KD_ROLE_ROWRED || f->role == KD_ROLE_FOLDED) {
    fail(e, KD_ERR_BACKEND, "codegen: %%%d used before its pass (a scheduler bug)", (int)id);
    return LLVMGetPoison(type_of(e, kd_vclass_of(n->dtype), 0));
  }
  if (n->op == KD_IR_INPUT) {
    if (id != e->s->labels) {
      fail(e, KD_ERR_UNSUPPORTED, "codegen: per-row input \"%s\" is not supported", n->name);
      return LLVMGetPoison(e->i64);
    }
    LLVMValueRef p = LLVMBuildGEP2(e->b, e->i64, e->ptr_labels, &e->row, 1, "");
    return e->rval[id] = LLVMBuildLoad2(e->b, e->i64, p, "label");
  }
  LLVMValueRef v[KD_MAX_SRC] = {0};
  for (int i = 0; i < n->nsrc; i++) v[i] = row_value(e, n->src[i]);
  return e->rval[id] = emit_op(e, id, v);
}

/* teacher or student at [row, j .. j + W), widened to f32 */
static LLVMValueRef load_logits(emitter *e, kd_node_id id) {
  const kd_node *n = gnode(e, id);
  int bf16 = n->dtype == KD_BF16;
  LLVMTypeRef et = bf16 ? e->i16 : e->f32;
  LLVMTypeRef vt = LLVMVectorType(et, (unsigned)e->W);
  LLVMValueRef base = id == e->s->teacher ? e->ptr_teacher : e->ptr_student;
  LLVMValueRef off = LLVMBuildAdd(e->b, LLVMBuildMul(e->b, e->row, e->V, ""), e->j, "");
  LLVMValueRef p = LLVMBuildGEP2(e->b, et, base, &off, 1, "");
  LLVMValueRef x;
  if (e->mask) {
    LLVMValueRef args[4] = {p, LLVMConstInt(e->i32, bf16 ? 2 : 4, 0), e->mask, LLVMConstNull(vt)};
    x = intrinsic2(e, "llvm.masked.load", vt, e->ptr, args, 4);
  } else {
    x = LLVMBuildLoad2(e->b, vt, p, "");
    LLVMSetAlignment(x, bf16 ? 2 : 4);
  }
  if (!bf16) return x;
  /* bf16 is the top half of an f32: widening is exact */
  LLVMTypeRef vi32 = LLVMVectorType(e->i32, (unsigned)e->W);
  x = LLVMBuildShl(e->b, LLVMBuildZExt(e->b, x, vi32, ""), kd_ir_iconst(vi32, 16), "");
  return LLVMBuildBitCast(e->b, x, e->vf, "");
}

static LLVMValueRef lane_index(emitter *e) {
  LLVMValueRef lanes[64];
  for (int i = 0; i < e->W; i++) lanes[i] = i64c(e, i);
  return LLVMBuildAdd(e->b, splat(e, e->j), LLVMConstVector(lanes, (unsigned)e->W), "");
}

static LLVMValueRef elem_value(emitter *e, kd_node_id id);

/* x + c or x - c for f32 lanes x and a row or global scalar c (double): c is
 * split into two floats, c = hi + lo, and x - c = (x - hi) - lo. A shift by
 * the log-sum-exp of logits of size 1e4 then stays accurate to the f32
 * rounding of the (small) difference, not of c: with c rounded to f32, p =
 * exp(t - lse) would be off by 5e-4 and sum(p * t) - lse by units. NULL
 * when id is not such a node. */
static LLVMValueRef shift_by_scalar(emitter *e, kd_node_id id) {
  const kd_node *n = gnode(e, id);
  if ((n->op != KD_IR_ADD && n->op != KD_IR_SUB) || kd_vclass_of(n->dtype) != KD_CL_F) return NULL;
  int k = fnode(e, n->src[0])->kind == KD_FUSE_ELEM ? 1 : 0; /* the scalar operand */
  kd_node_id xs = n->src[1 - k], cs = n->src[k];
  if (fnode(e, xs)->kind != KD_FUSE_ELEM || fnode(e, cs)->kind == KD_FUSE_ELEM ||
      kd_vclass_of(gnode(e, cs)->dtype) != KD_CL_F || kd_vclass_of(gnode(e, xs)->dtype) != KD_CL_F ||
      gnode(e, cs)->op == KD_IR_CONST)
    return NULL;
  LLVMValueRef x = elem_value(e, xs), c = row_value(e, cs);
  LLVMValueRef hi = LLVMBuildFPTrunc(e->b, c, e->f32, "");
  LLVMValueRef lo = LLVMBuildFPTrunc(e->b, LLVMBuildFSub(e->b, c, LLVMBuildFPExt(e->b, hi, e->f64, ""), ""), e->f32, "");
  LLVMValueRef vh = splat(e, hi), vl = splat(e, lo);
  if (n->op == KD_IR_ADD) return LLVMBuildFAdd(e->b, LLVMBuildFAdd(e->b, x, vh, ""), vl, "");
  if (k == 1) return LLVMBuildFSub(e->b, LLVMBuildFSub(e->b, x, vh, ""), vl, "");
  return LLVMBuildFSub(e->b, LLVMBuildFSub(e->b, vh, x, ""), vl, ""); /* c - x */
}

/* > 0, not >= 0: 0 * -inf would be a NaN that exp_row does not keep */
static int is_pos_const(const emitter *e, kd_node_id id) {
  const kd_node *n = gnode(e, id);
  return n->op == KD_IR_CONST && n->value > 0 && n->value <= FLT_MAX;
}

/* Whether an element value is <= 0 up to rounding by construction: a -
 * lse(a), a - max(a), a positive constant times one, a sum of two (the
 * log-probabilities of a softmax, p^a q^b's exponent). */
static int is_nonpos(const emitter *e, kd_node_id id) {
  const kd_node *n = gnode(e, id);
  switch (n->op) {
  case KD_IR_SUB: {
    const kd_node *r = gnode(e, n->src[1]);
    return fnode(e, n->src[1])->role == KD_ROLE_ROWRED &&
           (r->op == KD_IR_LSE || r->op == KD_IR_RMAX) && r->src[0] == n->src[0];
  }
  case KD_IR_ADD: return is_nonpos(e, n->src[0]) && is_nonpos(e, n->src[1]);
  case KD_IR_MUL:
    return (is_pos_const(e, n->src[0]) && is_nonpos(e, n->src[1])) ||
           (is_pos_const(e, n->src[1]) && is_nonpos(e, n->src[0]));
  default: return 0;
  }
}

/* exp of a value <= 0 (softmax probabilities and their powers): the cheaper
 * exp applies. */
static int is_softmax_exp(const emitter *e, const kd_node *n) {
  return n->op == KD_IR_EXP && kd_vclass_of(n->dtype) == KD_CL_F && is_nonpos(e, n->src[0]);
}

/* Whether an element value is >= 0 and finite by construction: such an exp
 * (at most 1), a moderate positive constant times one, a sum of two (a
 * mixture of probabilities): its log needs no inf, negative or NaN case. */
static int is_prob_mix(const emitter *e, kd_node_id id) {
  const kd_node *n = gnode(e, id);
  switch (n->op) {
  case KD_IR_EXP: return is_softmax_exp(e, n);
  case KD_IR_ADD: return is_prob_mix(e, n->src[0]) && is_prob_mix(e, n->src[1]);
  case KD_IR_MUL:
    for (int i = 0; i < 2; i++) {
      const kd_node *c = gnode(e, n->src[i]);
      if (c->op == KD_IR_CONST && c->value > 0 && c->value <= 1e6 && is_prob_mix(e, n->src[1 - i]))
        return 1;
    }
    return 0;
  default: return 0;
  }
}

static LLVMValueRef scratch_ptr(emitter *e, int slot, LLVMValueRef col) {
  LLVMValueRef off = LLVMBuildAdd(e->b, LLVMBuildMul(e->b, i64c(e, slot), e->V, ""), col, "");
  return LLVMBuildGEP2(e->b, e->f32, e->scratch, &off, 1, "");
}

static LLVMValueRef load_cached(emitter *e, int slot) {
  LLVMValueRef p = scratch_ptr(e, slot, e->j);
  if (e->mask) {
    LLVMValueRef args[4] = {p, LLVMConstInt(e->i32, 4, 0), e->mask, LLVMConstNull(e->vf)};
    return intrinsic2(e, "llvm.masked.load", e->vf, e->ptr, args, 4);
  }
  LLVMValueRef x = LLVMBuildLoad2(e->b, e->vf, p, "");
  LLVMSetAlignment(x, 4);
  return x;
}

static void save_cached(emitter *e, int slot, LLVMValueRef v) {
  LLVMValueRef p = scratch_ptr(e, slot, e->j);
  if (e->mask) {
    LLVMValueRef args[4] = {v, p, LLVMConstInt(e->i32, 4, 0), e->mask};
    intrinsic2(e, "llvm.masked.store", e->vf, e->ptr, args, 4);
    return;
  }
  LLVMSetAlignment(LLVMBuildStore(e->b, v, p), 4);
}

/* The keep[] index of schedule group k, or -1. */
static int keep_index(const emitter *e, int k) {
  for (int i = 0; i < e->nkeep; i++)
    if (e->keep[i] == k) return i;
  return -1;
}

static LLVMValueRef elem_value(emitter *e, kd_node_id id) {
  if (e->vval[id]) return e->vval[id];
  if (e->slot_load[id] >= 0) return e->vval[id] = load_cached(e, e->slot_load[id]);
  if (e->xscale[id]) { /* exp(a - c) = exp(a - m) exp(m - c) */
    int k = keep_index(e, fnode(e, id)->exp_group);
    return e->vval[id] = LLVMBuildFMul(e->b, load_cached(e, e->cache.nslots + k), e->xscale[id], "");
  }
  const kd_fuse_node *f = fnode(e, id);
  const kd_node *n = gnode(e, id);
  kd_vclass c = kd_vclass_of(n->dtype);
  if (f->kind != KD_FUSE_ELEM) return e->vval[id] = widen(e, row_value(e, id), c);
  if (n->op == KD_IR_INPUT) {
    if (id != e->s->teacher && id != e->s->student) {
      fail(e, KD_ERR_UNSUPPORTED, "codegen: [N, V] input \"%s\" is not supported", n->name);
      return LLVMGetPoison(e->vf);
    }
    return e->vval[id] = load_logits(e, id);
  }
  if (n->op == KD_IR_IOTA) return e->vval[id] = convert(e, lane_index(e), KD_CL_I, c);
  if (is_softmax_exp(e, n))
    return e->vval[id] = kd_emit_exp_row(e->b, elem_value(e, n->src[0]), &e->vzero[id]);
  if (n->op == KD_IR_LOG && kd_vclass_of(n->dtype) == KD_CL_F && is_prob_mix(e, n->src[0]))
    return e->vval[id] = kd_emit_log_finite(e->b, elem_value(e, n->src[0]));
  LLVMValueRef shifted = shift_by_scalar(e, id);
  if (shifted) return e->vval[id] = shifted;
  LLVMValueRef v[KD_MAX_SRC] = {0};
  for (int i = 0; i < n->nsrc; i++) v[i] = elem_value(e, n->src[i]);
  return e->vval[id] = emit_op(e, id, v);
}

/* Row scalars that pass roots read, computed before the loop. */
static void prepare_rows(emitter *e, kd_node_id id, char *seen) {
  if (seen[id]) return;
  seen[id] = 1;
  const kd_fuse_node *f = fnode(e, id);
  if (f->kind == KD_FUSE_ROW) {
    row_value(e, id);
    return;
  }
  if (f->kind == KD_FUSE_GLOBAL) {
    global_value(e, id);
    return;
  }
  const kd_node *n = gnode(e, id);
  for (int i = 0; i < n->nsrc; i++) prepare_rows(e, n->src[i], seen);
}

/* ---- one pass over the row ------------------------------------------------------- */

typedef struct pass_plan {
  int ng;                     /* online groups: state[0 .. ng) is each reference m */
  kd_node_id ga[MAX_STATE];   /* the group's a */
  int gkeep[MAX_STATE];       /* the group's keep[] index when its exps are kept, else -1 */
  int nr;                     /* reductions: state[ng + i] is reduction i's accumulator */
  kd_node_id red[MAX_STATE];
  int rgroup[MAX_STATE];      /* the group of an online reduction, or -1 (SUM, RMAX) */
  int nstore;
  kd_node_id store[MAX_STATE];
} pass_plan;

static int is_output(const emitter *e, kd_node_id id) {
  for (size_t i = 0; i < kd_graph_noutputs(e->g); i++)
    if (kd_graph_output(e->g, i) == id) return 1;
  return 0;
}

/* The one [N, V] output the ABI has a place for: "grad" (emit_module
 * refuses graphs with others). */
static int is_elem_output(const emitter *e, kd_node_id id) {
  return fnode(e, id)->kind == KD_FUSE_ELEM && kd_graph_find_output(e->g, "grad") == id;
}

static kd_node_id online_a(const emitter *e, kd_node_id id) {
  const kd_fuse_node *f = fnode(e, id);
  return f->role == KD_ROLE_FOLDED ? f->fold_a : gnode(e, id)->src[0];
}

/* The keep[] index of the group of a in this pass, or -1 (not kept, or the
 * row loop recomputes). */
static int keep_of(const emitter *e, kd_node_id a, int pass) {
  for (int i = 0; e->expc && i < e->nkeep; i++) {
    const kd_fuse_group *g = &e->s->group[e->keep[i]];
    if (g->a == a && g->pass == pass) return i;
  }
  return -1;
}

static void plan_pass(emitter *e, int pass, pass_plan *pl) {
  memset(pl, 0, sizeof *pl);
  for (kd_node_id id = 0; id < (kd_node_id)e->n; id++) {
    const kd_fuse_node *f = fnode(e, id);
    if (!kd_fuse_in_stage(e->s, id, e->stage)) continue;
    if (is_elem_output(e, id) && f->avail == pass && pl->nstore < MAX_STATE)
      pl->store[pl->nstore++] = id;
    if ((f->role != KD_ROLE_ROWRED && f->role != KD_ROLE_FOLDED) || f->pass != pass) continue;
    if (pl->ng + pl->nr + 1 >= MAX_STATE) {
      fail(e, KD_ERR_UNSUPPORTED, "codegen: more than %d reductions in one pass", MAX_STATE);
      return;
    }
    kd_opcode op = gnode(e, id)->op;
    int gi = -1;
    /* a max needs no exp: a plain running max (the groups' references are
     * not maxima) */
    if (f->role == KD_ROLE_FOLDED || op == KD_IR_LSE) {
      kd_node_id a = online_a(e, id);
      for (gi = 0; gi < pl->ng && pl->ga[gi] != a; gi++) {}
      if (gi == pl->ng) pl->gkeep[pl->ng++] = keep_of(e, a, pass);
      pl->ga[gi] = a;
    }
    pl->red[pl->nr] = id;
    pl->rgroup[pl->nr++] = gi;
  }
}

static LLVMBasicBlockRef block(emitter *e, const char *name) {
  return LLVMAppendBasicBlockInContext(e->C, e->fn, name);
}

static LLVMValueRef phi(emitter *e, LLVMTypeRef t, LLVMValueRef v0, LLVMBasicBlockRef b0,
                        LLVMValueRef v1, LLVMBasicBlockRef b1) {
  LLVMValueRef p = LLVMBuildPhi(e->b, t, "");
  LLVMValueRef in[2] = {v0, v1};
  LLVMBasicBlockRef bb[2] = {b0, b1};
  LLVMAddIncoming(p, in, bb, 2);
  return p;
}

/* w * f for a folded sum; under MULZ 0 where w is (wz: the lanes where w
 * is 0). */
static LLVMValueRef fold_contrib(emitter *e, kd_node_id id, LLVMValueRef w, LLVMValueRef wz) {
  const kd_fuse_node *f = fnode(e, id);
  if (f->fold_f == KD_NONE) return w;
  LLVMValueRef x = elem_value(e, f->fold_f);
  x = convert(e, x, kd_vclass_of(gnode(e, f->fold_f)->dtype), KD_CL_F);
  LLVMValueRef p = LLVMBuildFMul(e->b, w, x, "");
  if (!f->mulz) return p;
  return LLVMBuildSelect(e->b, wz, LLVMConstNull(e->vf), p, "");
}

static LLVMValueRef masked(emitter *e, LLVMValueRef v, LLVMValueRef neutral) {
  return e->mask ? LLVMBuildSelect(e->b, e->mask, v, neutral, "") : v;
}

/* The kept exps of the block so far, columns [jblock, j) of the slot, times
 * sc (whole vectors: the main loop's). */
static void fixup_kept(emitter *e, int slot, LLVMValueRef sc) {
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef loop = block(e, "fixup"), done = block(e, "fixup.done");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, e->jblock, e->j, ""), loop, done);
  LLVMPositionBuilderAtEnd(e->b, loop);
  LLVMValueRef jj = LLVMBuildPhi(e->b, e->i64, "jj");
  LLVMValueRef p = scratch_ptr(e, slot, jj);
  LLVMValueRef x = LLVMBuildLoad2(e->b, e->vf, p, "");
  LLVMSetAlignment(x, 4);
  LLVMSetAlignment(LLVMBuildStore(e->b, LLVMBuildFMul(e->b, x, sc, ""), p), 4);
  LLVMValueRef jn = LLVMBuildAdd(e->b, jj, i64c(e, e->W), "");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, jn, e->j, ""), loop, done);
  LLVMAddIncoming(jj, &e->jblock, &pre, 1);
  LLVMAddIncoming(jj, &jn, &loop, 1);
  LLVMPositionBuilderAtEnd(e->b, done);
}

/* Group gi's reference m moves to x in the lanes where x - m > LAZY (a few
 * times a row): its sums, and the block's kept exps so far, are rescaled by
 * exp(m - m_new), in a branch. Returns x - m for the reference in force
 * (at most LAZY). */
static LLVMValueRef rescale(emitter *e, const pass_plan *pl, int gi, LLVMValueRef x,
                            LLVMValueRef *m, LLVMValueRef *acc) {
  LLVMValueRef d = LLVMBuildFSub(e->b, x, *m, "");
  LLVMValueRef grew = LLVMBuildFCmp(e->b, LLVMRealOGT, d, kd_ir_fconst(e->vf, LAZY), "");
  LLVMValueRef any = vreduce(e, "llvm.vector.reduce.or", grew);
  LLVMBasicBlockRef from = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef bscale = block(e, "rescale"), bjoin = block(e, "rescaled");
  LLVMBuildCondBr(e->b, any, bscale, bjoin);
  LLVMPositionBuilderAtEnd(e->b, bscale);
  LLVMValueRef m_new = LLVMBuildSelect(e->b, grew, x, *m, "");
  /* lanes that did not move get exp(0) = 1 */
  LLVMValueRef sc = kd_emit_exp_nonpos(e->b, LLVMBuildFSub(e->b, *m, m_new, ""));
  LLVMValueRef d_new = LLVMBuildFSub(e->b, x, m_new, "");
  LLVMValueRef scaled[MAX_STATE];
  for (int r = 0; r < pl->nr; r++)
    if (pl->rgroup[r] == gi) scaled[r] = LLVMBuildFMul(e->b, acc[r], sc, "");
  if (pl->gkeep[gi] >= 0 && e->jblock) fixup_kept(e, e->cache.nslots + pl->gkeep[gi], sc);
  LLVMBasicBlockRef bend = LLVMGetInsertBlock(e->b);
  LLVMBuildBr(e->b, bjoin);
  LLVMPositionBuilderAtEnd(e->b, bjoin);
  *m = phi(e, e->vf, *m, from, m_new, bend);
  for (int r = 0; r < pl->nr; r++)
    if (pl->rgroup[r] == gi) acc[r] = phi(e, e->vf, acc[r], from, scaled[r], bend);
  return phi(e, e->vf, d, from, d_new, bend);
}

static int is_max(const emitter *e, const pass_plan *pl, int r) {
  return gnode(e, pl->red[r])->op == KD_IR_RMAX;
}

static void store_output(emitter *e, kd_node_id id) {
  LLVMValueRef v = convert(e, elem_value(e, id), kd_vclass_of(gnode(e, id)->dtype), KD_CL_F);
  LLVMValueRef off = LLVMBuildAdd(e->b, LLVMBuildMul(e->b, e->row, e->V, ""), e->j, "");
  LLVMValueRef p = LLVMBuildGEP2(e->b, e->f32, e->ptr_grad, &off, 1, "");
  if (e->mask) {
    LLVMValueRef args[4] = {v, p, LLVMConstInt(e->i32, 4, 0), e->mask};
    intrinsic2(e, "llvm.masked.store", e->vf, e->ptr, args, 4);
    return;
  }
  LLVMValueRef st = LLVMBuildStore(e->b, v, p);
  LLVMSetAlignment(st, e->aligned ? (unsigned)e->W * 4 : 4);
  if (e->aligned) {
    LLVMMetadataRef one = LLVMValueAsMetadata(LLVMConstInt(e->i32, 1, 0));
    LLVMSetMetadata(st, LLVMGetMDKindIDInContext(e->C, "nontemporal", 11),
                    LLVMMetadataAsValue(e->C, LLVMMDNodeInContext2(e->C, &one, 1)));
  }
}

/* One vector of the row at column j (under e->mask in the tail): updates
 * state (maxes then accumulators) in place and stores outputs. */
static void emit_body(emitter *e, const pass_plan *pl, LLVMValueRef *state) {
  memset(e->vval, 0, e->n * sizeof *e->vval);
  memset(e->vzero, 0, e->n * sizeof *e->vzero);
  LLVMValueRef *m = state, *acc = state + pl->ng;
  LLVMValueRef ninf = kd_ir_fconst(e->vf, -INFINITY), zero = LLVMConstNull(e->vf);
  for (int gi = 0; gi < pl->ng; gi++) {
    LLVMValueRef x = masked(e, convert(e, elem_value(e, pl->ga[gi]),
                                       kd_vclass_of(gnode(e, pl->ga[gi])->dtype), KD_CL_F), ninf);
    /* x - m <= LAZY; x = -inf (masked lanes, -inf logits) gives exactly 0 */
    LLVMValueRef wz, w = kd_emit_exp_row(e->b, rescale(e, pl, gi, x, &m[gi], acc), &wz);
    if (pl->gkeep[gi] >= 0) save_cached(e, e->cache.nslots + pl->gkeep[gi], w);
    for (int r = 0; r < pl->nr; r++) {
      if (pl->rgroup[r] != gi) continue;
      LLVMValueRef c = fnode(e, pl->red[r])->role == KD_ROLE_FOLDED ? fold_contrib(e, pl->red[r], w, wz) : w;
      acc[r] = LLVMBuildFAdd(e->b, acc[r], masked(e, c, zero), "");
    }
  }
  for (int r = 0; r < pl->nr; r++) {
    if (pl->rgroup[r] >= 0) continue;
    kd_node_id src = gnode(e, pl->red[r])->src[0];
    LLVMValueRef x = convert(e, elem_value(e, src), kd_vclass_of(gnode(e, src)->dtype), KD_CL_F);
    if (!is_max(e, pl, r)) {
      acc[r] = LLVMBuildFAdd(e->b, acc[r], masked(e, x, zero), "");
      continue;
    }
    /* x > acc ? x : acc: one max instruction (maxnum's NaN rule costs three) */
    x = masked(e, x, ninf);
    acc[r] = LLVMBuildSelect(e->b, LLVMBuildFCmp(e->b, LLVMRealOGT, x, acc[r], ""), x, acc[r], "");
  }
  for (int i = 0; i < pl->nstore; i++) store_output(e, pl->store[i]);
  for (int sl = 0; sl < e->cache.nslots; sl++)
    if (e->cache.save_pass[sl] == e->pass)
      save_cached(e, sl, elem_value(e, e->cache.node[sl]));
}

/* The row's double lanes of a pass (see emit_pass): per online group the
 * running max they are relative to, per reduction the accumulated lanes. */
typedef struct dstate {
  LLVMValueRef mref[MAX_STATE], dacc[MAX_STATE];
} dstate;

static LLVMTypeRef vf64(const emitter *e) { return LLVMVectorType(e->f64, (unsigned)e->W); }

static void dstate_init(emitter *e, const pass_plan *pl, dstate *d) {
  for (int gi = 0; gi < pl->ng; gi++) d->mref[gi] = kd_ir_fconst(e->vf, -FLT_MAX);
  for (int r = 0; r < pl->nr; r++) d->dacc[r] = LLVMConstNull(vf64(e));
}

/* Moves the f32 accumulators into the double lanes and zeroes them. An
 * online group's double lanes stay relative to the max at the last flush
 * (mref) and are rescaled here, once a block, not in the loop. Summing at
 * most BLOCK vectors in f32 keeps a row sum's error near BLOCK^(1/2) eps
 * instead of (V / W)^(1/2) eps. */
static void flush(emitter *e, const pass_plan *pl, LLVMValueRef *st, dstate *d) {
  LLVMValueRef *m = st, *acc = st + pl->ng, scd[MAX_STATE];
  for (int gi = 0; gi < pl->ng; gi++) {
    LLVMValueRef sc = kd_emit_exp_nonpos(e->b, LLVMBuildFSub(e->b, d->mref[gi], m[gi], ""));
    scd[gi] = LLVMBuildFPExt(e->b, sc, vf64(e), "");
    d->mref[gi] = m[gi];
  }
  for (int r = 0; r < pl->nr; r++) {
    int gi = pl->rgroup[r];
    if (is_max(e, pl, r)) continue; /* stays in its f32 lanes */
    LLVMValueRef x = LLVMBuildFPExt(e->b, acc[r], vf64(e), "");
    d->dacc[r] = gi >= 0 ? kd_ir_fma(e->b, d->dacc[r], scd[gi], x) : LLVMBuildFAdd(e->b, d->dacc[r], x, "");
    acc[r] = LLVMConstNull(e->vf);
  }
}

static LLVMValueRef hsum(emitter *e, LLVMValueRef d) {
  LLVMValueRef args[2] = {LLVMConstReal(e->f64, 0.0), d};
  return intrinsic2(e, "llvm.vector.reduce.fadd", LLVMTypeOf(d), NULL, args, 2);
}

/* Lanes to row scalars, in double, after the last flush. */
static void finalize(emitter *e, const pass_plan *pl, LLVMValueRef *state, const dstate *d) {
  LLVMValueRef *m = state;
  LLVMValueRef gmax[MAX_STATE], gmaxd[MAX_STATE];
  for (int gi = 0; gi < pl->ng; gi++) {
    gmax[gi] = vreduce(e, "llvm.vector.reduce.fmax", m[gi]);
    gmaxd[gi] = LLVMBuildFPExt(e->b, gmax[gi], e->f64, "");
  }
  for (int r = 0; r < pl->nr; r++) {
    kd_node_id id = pl->red[r];
    const kd_node *n = gnode(e, id);
    int gi = pl->rgroup[r];
    LLVMValueRef v;
    if (is_max(e, pl, r)) {
      /* the running max starts at -FLT_MAX: an all -inf row is -inf */
      LLVMValueRef mx = LLVMBuildFPExt(e->b, vreduce(e, "llvm.vector.reduce.fmax", state[pl->ng + r]), e->f64, "");
      LLVMValueRef empty = LLVMBuildFCmp(e->b, LLVMRealOLE, mx, LLVMConstReal(e->f64, -FLT_MAX), "");
      v = LLVMBuildSelect(e->b, empty, LLVMConstReal(e->f64, -INFINITY), mx, "");
    } else if (gi < 0) {
      v = hsum(e, d->dacc[r]);
    } else {
      LLVMValueRef sc = kd_emit_exp_nonpos(e->b, LLVMBuildFSub(e->b, m[gi], splat(e, gmax[gi]), ""));
      LLVMValueRef total = hsum(e, LLVMBuildFMul(e->b, d->dacc[r], LLVMBuildFPExt(e->b, sc, vf64(e), ""), ""));
      if (n->op == KD_IR_LSE) {
        v = LLVMBuildFAdd(e->b, gmaxd[gi], intrinsic1(e, "llvm.log", total), "");
      } else {
        /* folded: sum exp(a - c) f = exp(max - c) sum exp(a - max) f */
        LLVMValueRef c = convert(e, row_value(e, fnode(e, id)->fold_c),
                                 kd_vclass_of(gnode(e, fnode(e, id)->fold_c)->dtype), KD_CL_F);
        LLVMValueRef sh = emit_exp(e, LLVMBuildFSub(e->b, gmaxd[gi], c, ""));
        LLVMValueRef z = LLVMBuildFCmp(e->b, LLVMRealOEQ, total, LLVMConstReal(e->f64, 0), "");
        v = LLVMBuildSelect(e->b, z, total, LLVMBuildFMul(e->b, total, sh, ""), "");
      }
    }
    e->rval[id] = convert(e, v, KD_CL_F, kd_vclass_of(n->dtype));
  }
}

/* ---- the row cache ---------------------------------------------------------------- */

/* Whether the row loop being emitted reads id from kept exps. */
static int kept_exp(const emitter *e, kd_node_id id) {
  return e->expc && fnode(e, id)->exp_group >= 0 && keep_index(e, fnode(e, id)->exp_group) >= 0;
}

static void mark_elem(const emitter *e, kd_node_id id, char *seen) {
  if (seen[id] || fnode(e, id)->kind != KD_FUSE_ELEM) return;
  seen[id] = 1;
  if (kept_exp(e, id)) return;
  const kd_node *n = gnode(e, id);
  for (int i = 0; i < n->nsrc; i++) mark_elem(e, n->src[i], seen);
}

/* The element values a pass computes: from its roots (online maxima, folded
 * and plain reduction arguments, stored outputs) down to inputs and row
 * scalars. */
static void mark_pass(emitter *e, int pass, char *seen) {
  pass_plan pl;
  plan_pass(e, pass, &pl);
  memset(seen, 0, e->n);
  for (int gi = 0; gi < pl.ng; gi++) mark_elem(e, pl.ga[gi], seen);
  for (int r = 0; r < pl.nr; r++) {
    const kd_fuse_node *f = fnode(e, pl.red[r]);
    if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE) mark_elem(e, f->fold_f, seen);
    if (f->role == KD_ROLE_ROWRED) mark_elem(e, gnode(e, pl.red[r])->src[0], seen);
  }
  for (int i = 0; i < pl.nstore; i++) mark_elem(e, pl.store[i], seen);
}

/* Whether an element value costs an exp or a log to recompute (a kept exp
 * costs a multiply). */
static int costly(const emitter *e, kd_node_id id, char *seen) {
  if (seen[id] || fnode(e, id)->kind != KD_FUSE_ELEM || kept_exp(e, id)) return 0;
  seen[id] = 1;
  const kd_node *n = gnode(e, id);
  if (n->op == KD_IR_EXP || n->op == KD_IR_LOG || n->op == KD_IR_POW) return 1;
  for (int i = 0; i < n->nsrc; i++)
    if (costly(e, n->src[i], seen)) return 1;
  return 0;
}

/* Walks pass p's values from its roots; the first costly f32 value on each
 * path that pass p - 1 computed too is loaded from the cache instead (and
 * nothing below it is recomputed). */
static void choose_cached(emitter *e, int pass, kd_node_id id, const char *prev, char *seen,
                          char *tmp) {
  if (seen[id] || fnode(e, id)->kind != KD_FUSE_ELEM) return;
  seen[id] = 1;
  const kd_node *n = gnode(e, id);
  cache_plan *c = &e->cache;
  memset(tmp, 0, e->n);
  if (prev[id] && kd_vclass_of(n->dtype) == KD_CL_F && costly(e, id, tmp) &&
      c->nloads < MAX_CACHE * KD_FUSE_MAX_PASSES) {
    int sl = 0;
    while (sl < c->nslots && c->node[sl] != id) sl++;
    if (sl == c->nslots && c->nslots < MAX_CACHE) {
      c->node[sl] = id;
      c->save_pass[sl] = pass - 1;
      c->nslots++;
    }
    if (sl < c->nslots) {
      c->load[c->nloads].pass = pass;
      c->load[c->nloads++].slot = sl;
      return;
    }
  }
  for (int i = 0; i < n->nsrc; i++) choose_cached(e, pass, n->src[i], prev, seen, tmp);
}

static void plan_cache(emitter *e) {
  memset(&e->cache, 0, sizeof e->cache);
  int np = e->s->stage[e->stage].npasses;
  char *prev = calloc(e->n, 1), *seen = calloc(e->n, 1), *tmp = calloc(e->n, 1);
  if (!prev || !seen || !tmp) {
    fail(e, KD_ERR_NOMEM, "out of memory");
  } else {
    /* pass 0's values are relative to the running max: nothing to reuse */
    for (int p = 2; p < np; p++) {
      mark_pass(e, p - 1, prev);
      pass_plan pl;
      plan_pass(e, p, &pl);
      memset(seen, 0, e->n);
      for (int r = 0; r < pl.nr; r++) {
        const kd_fuse_node *f = fnode(e, pl.red[r]);
        if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE)
          choose_cached(e, p, f->fold_f, prev, seen, tmp);
        if (f->role == KD_ROLE_ROWRED) choose_cached(e, p, gnode(e, pl.red[r])->src[0], prev, seen, tmp);
      }
      for (int i = 0; i < pl.nstore; i++) choose_cached(e, p, pl.store[i], prev, seen, tmp);
    }
  }
  free(prev), free(seen), free(tmp);
  int used = e->cache.nslots + (e->expc ? e->nkeep : 0);
  if (used > e->nscratch) e->nscratch = used;
}

/* The groups of the stage whose exps a later pass reads (fuse.h), and
 * their blocks' references on the stack: a row that fits has at most
 * keep_maxv / (BLOCK W) + 1 blocks in the main loop, and the tail. Off with
 * non-temporal stores: the storing pass's blocks start after a head that
 * pass 0 does not have. */
static void plan_keep(emitter *e) {
  e->nkeep = 0;
  if (e->nontemporal) return;
  for (kd_node_id id = 0; id < (kd_node_id)e->n; id++) {
    int k = fnode(e, id)->exp_group;
    if (k < 0 || !kd_fuse_in_stage(e->s, id, e->stage) || keep_index(e, k) >= 0) continue;
    if (e->nkeep == MAX_STATE) break;
    e->keep[e->nkeep++] = k;
  }
  if (!e->nkeep) return;
  e->keep_maxv = KEEP_BYTES / (4LL * e->nkeep);
  LLVMTypeRef t = LLVMArrayType(e->vf, (unsigned)(e->keep_maxv / ((long long)BLOCK * e->W) + 2));
  for (int i = 0; i < e->nkeep; i++) e->blockref[i] = LLVMBuildAlloca(e->be, t, "blockref");
}

static LLVMValueRef blockref_ptr(emitter *e, int i, LLVMValueRef bi) {
  return LLVMBuildGEP2(e->b, e->vf, e->blockref[i], &bi, 1, "");
}

/* Each kept group of the pass: its reference for block bi. */
static void save_refs(emitter *e, const pass_plan *pl, const LLVMValueRef *m, LLVMValueRef bi) {
  for (int gi = 0; gi < pl->ng; gi++)
    if (pl->gkeep[gi] >= 0) LLVMBuildStore(e->b, m[gi], blockref_ptr(e, pl->gkeep[gi], bi));
}

/* Block bi's exp(ref - c) for every kept exp exp(a - c) the pass reads
 * (xs[0 .. nx)); ref - c in double, then one f32 exp a block. */
static void block_scales(emitter *e, const kd_node_id *xs, int nx, LLVMValueRef bi) {
  for (int i = 0; i < nx; i++) {
    kd_node_id c = gnode(e, gnode(e, xs[i])->src[0])->src[1];
    LLVMValueRef ref = LLVMBuildLoad2(e->b, e->vf, blockref_ptr(e, keep_index(e, fnode(e, xs[i])->exp_group), bi), "");
    LLVMValueRef dif = LLVMBuildFSub(e->b, LLVMBuildFPExt(e->b, ref, vf64(e), ""), splat(e, row_value(e, c)), "");
    e->xscale[xs[i]] = kd_emit_exp_nonpos(e->b, LLVMBuildFPTrunc(e->b, dif, e->vf, ""));
  }
}

/* The columns [j, limit), fewer than W, as one vector under a mask, when
 * there are any; the state flows through phis either way. */
static void masked_step(emitter *e, const pass_plan *pl, LLVMValueRef *st, LLVMValueRef j,
                        LLVMValueRef limit) {
  int ns = pl->ng + pl->nr;
  LLVMBasicBlockRef from = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef bb = block(e, "masked"), join = block(e, "masked.done");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, j, limit, ""), bb, join);
  LLVMPositionBuilderAtEnd(e->b, bb);
  LLVMValueRef in[MAX_STATE];
  memcpy(in, st, (size_t)ns * sizeof *st);
  e->j = j;
  e->mask = LLVMBuildICmp(e->b, LLVMIntSLT, lane_index(e), splat(e, limit), "mask");
  emit_body(e, pl, st);
  e->mask = NULL;
  LLVMBasicBlockRef end = LLVMGetInsertBlock(e->b);
  LLVMBuildBr(e->b, join);
  LLVMPositionBuilderAtEnd(e->b, join);
  for (int i = 0; i < ns; i++) st[i] = phi(e, e->vf, in[i], from, st[i], end);
}

/* One pass over the row:
 *   [head:  masked vector up to the gradient row's alignment (non-temporal only)]
 *   block:  blocks of BLOCK vectors:
 *     body:   j, state = phi; emit_body; br j + W < bend, body, flush
 *     flush:  f32 lanes into double lanes; br bend < jend, block, after
 *   after:  state = phi
 *   tail:   masked vector for the last V mod W columns; a last flush
 *   then the double lanes are finalised into row scalars. */
static void emit_pass(emitter *e, int pass) {
  pass_plan pl;
  plan_pass(e, pass, &pl);
  if (e->st) return;
  e->pass = pass;
  for (size_t i = 0; i < e->n; i++) e->slot_load[i] = -1;
  for (int i = 0; i < e->cache.nloads; i++)
    if (e->cache.load[i].pass == pass)
      e->slot_load[e->cache.node[e->cache.load[i].slot]] = e->cache.load[i].slot;
  /* row scalars and globals the pass reads, before the loop */
  char *seen = calloc(e->n, 1);
  if (!seen) {
    fail(e, KD_ERR_NOMEM, "out of memory");
    return;
  }
  for (int gi = 0; gi < pl.ng; gi++) prepare_rows(e, pl.ga[gi], seen);
  for (int r = 0; r < pl.nr; r++) {
    const kd_fuse_node *f = fnode(e, pl.red[r]);
    if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE) prepare_rows(e, f->fold_f, seen);
    if (f->role == KD_ROLE_ROWRED) prepare_rows(e, gnode(e, pl.red[r])->src[0], seen);
  }
  for (int i = 0; i < pl.nstore; i++) prepare_rows(e, pl.store[i], seen);
  /* the kept exps it reads */
  kd_node_id xs[MAX_STATE];
  int nx = 0;
  mark_pass(e, pass, seen);
  memset(e->xscale, 0, e->n * sizeof *e->xscale);
  for (kd_node_id id = 0; id < (kd_node_id)e->n && nx < MAX_STATE; id++)
    if (seen[id] && kept_exp(e, id)) xs[nx++] = id;
  free(seen);

  int ns = pl.ng + pl.nr;
  LLVMValueRef st[MAX_STATE], phis[MAX_STATE];
  for (int i = 0; i < ns; i++)
    st[i] = i < pl.ng || is_max(e, &pl, i - pl.ng) ? kd_ir_fconst(e->vf, -FLT_MAX) : LLVMConstNull(e->vf);

  /* With non-temporal gradient stores the main loop starts where the
   * gradient row is aligned to a whole vector (W * 4 bytes): an unaligned
   * non-temporal store would be split into 8-byte pieces. (The head
   * depends on where the gradient is: only its pass has one, so no sum
   * depends on it; kept exps, whose blocks must line up, are off.) */
  LLVMValueRef j0 = i64c(e, 0);
  e->aligned = e->nontemporal && pl.nstore > 0;
  if (e->aligned) {
    LLVMValueRef off = LLVMBuildMul(e->b, e->row, e->V, "");
    LLVMValueRef addr = LLVMBuildPtrToInt(e->b, LLVMBuildGEP2(e->b, e->f32, e->ptr_grad, &off, 1, ""), e->i64, "");
    LLVMValueRef mis = LLVMBuildAnd(e->b, LLVMBuildLShr(e->b, addr, i64c(e, 2), ""), i64c(e, e->W - 1), "");
    LLVMValueRef head = LLVMBuildAnd(e->b, LLVMBuildSub(e->b, i64c(e, e->W), mis, ""), i64c(e, e->W - 1), "");
    j0 = LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, head, e->V, ""), head, e->V, "j0");
    masked_step(e, &pl, st, i64c(e, 0), j0);
  }
  LLVMValueRef jend = LLVMBuildAdd(e->b, j0,
                                   LLVMBuildAnd(e->b, LLVMBuildSub(e->b, e->V, j0, ""),
                                                i64c(e, -(long long)e->W), ""), "jend");
  dstate d;
  dstate_init(e, &pl, &d);
  LLVMValueRef init[MAX_STATE], dinit[2 * MAX_STATE];
  memcpy(init, st, (size_t)ns * sizeof *st);
  for (int i = 0; i < pl.ng; i++) dinit[i] = d.mref[i];
  for (int r = 0; r < pl.nr; r++) dinit[pl.ng + r] = d.dacc[r];

  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef outer = block(e, "block"), body = block(e, "body"), bflush = block(e, "flush"),
                    bafter = block(e, "after");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, j0, jend, ""), outer, bafter);

  /* block: jb, state, double lanes = phi; bend = min(jb + BLOCK W, jend) */
  LLVMPositionBuilderAtEnd(e->b, outer);
  LLVMValueRef jb = LLVMBuildPhi(e->b, e->i64, "jb");
  LLVMValueRef ophi[MAX_STATE], dphi[2 * MAX_STATE];
  for (int i = 0; i < ns; i++) ophi[i] = LLVMBuildPhi(e->b, e->vf, "");
  for (int i = 0; i < pl.ng; i++) d.mref[i] = dphi[i] = LLVMBuildPhi(e->b, e->vf, "");
  for (int r = 0; r < pl.nr; r++) d.dacc[r] = dphi[pl.ng + r] = LLVMBuildPhi(e->b, vf64(e), "");
  LLVMValueRef bend = LLVMBuildAdd(e->b, jb, i64c(e, (long long)BLOCK * e->W), "");
  bend = LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, bend, jend, ""), bend, jend, "bend");
  LLVMValueRef bi = LLVMBuildAdd(e->b, LLVMBuildUDiv(e->b, LLVMBuildSub(e->b, jb, j0, ""),
                                                     i64c(e, (long long)BLOCK * e->W), ""), i64c(e, 1), "bi");
  block_scales(e, xs, nx, bi);
  LLVMBuildBr(e->b, body);

  /* body: j, state = phi; emit_body; br j + W < bend, body, flush */
  LLVMPositionBuilderAtEnd(e->b, body);
  LLVMValueRef j = LLVMBuildPhi(e->b, e->i64, "j");
  for (int i = 0; i < ns; i++) st[i] = phis[i] = LLVMBuildPhi(e->b, e->vf, "");
  e->j = j;
  e->mask = NULL;
  e->jblock = jb;
  emit_body(e, &pl, st);
  e->jblock = NULL;
  LLVMValueRef jn = LLVMBuildAdd(e->b, j, i64c(e, e->W), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->b);
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, jn, bend, ""), body, bflush);
  LLVMAddIncoming(j, &jb, &outer, 1);
  LLVMAddIncoming(j, &jn, &latch, 1);
  for (int i = 0; i < ns; i++) {
    LLVMAddIncoming(phis[i], &ophi[i], &outer, 1);
    LLVMAddIncoming(phis[i], &st[i], &latch, 1);
  }

  /* flush: the block's f32 lanes into the double lanes; next block */
  LLVMPositionBuilderAtEnd(e->b, bflush);
  flush(e, &pl, st, &d);
  save_refs(e, &pl, st, bi);
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, bend, jend, ""), outer, bafter);
  LLVMAddIncoming(jb, &j0, &pre, 1);
  LLVMAddIncoming(jb, &bend, &bflush, 1);
  for (int i = 0; i < ns; i++) {
    LLVMAddIncoming(ophi[i], &init[i], &pre, 1);
    LLVMAddIncoming(ophi[i], &st[i], &bflush, 1);
  }
  LLVMValueRef dnew[2 * MAX_STATE];
  for (int i = 0; i < pl.ng; i++) dnew[i] = d.mref[i];
  for (int r = 0; r < pl.nr; r++) dnew[pl.ng + r] = d.dacc[r];
  for (int i = 0; i < pl.ng + pl.nr; i++) {
    LLVMAddIncoming(dphi[i], &dinit[i], &pre, 1);
    LLVMAddIncoming(dphi[i], &dnew[i], &bflush, 1);
  }

  LLVMPositionBuilderAtEnd(e->b, bafter);
  for (int i = 0; i < ns; i++) st[i] = phi(e, e->vf, init[i], pre, st[i], bflush);
  for (int i = 0; i < pl.ng; i++) d.mref[i] = phi(e, e->vf, dinit[i], pre, dnew[i], bflush);
  for (int r = 0; r < pl.nr; r++)
    d.dacc[r] = phi(e, vf64(e), dinit[pl.ng + r], pre, dnew[pl.ng + r], bflush);
  e->aligned = 0;
  block_scales(e, xs, nx, i64c(e, 0));
  masked_step(e, &pl, st, jend, e->V);
  save_refs(e, &pl, st, i64c(e, 0));
  flush(e, &pl, st, &d);
  finalize(e, &pl, st, &d);
}

/* ---- functions ----------------------------------------------------------------- */

static void begin_function(emitter *e, const char *suffix, LLVMTypeRef ty) {
  char name[160];
  snprintf(name, sizeof name, "%s_%s", e->name, suffix);
  e->fn = LLVMAddFunction(e->M, name, ty);
  LLVMSetLinkage(e->fn, LLVMInternalLinkage); /* reached through the program only */
  e->args = LLVMGetParam(e->fn, 0);
  /* entry: argument loads and global loads (through e->be, appended before
   * its branch whenever code needs one); start: everything else */
  LLVMBasicBlockRef entry = block(e, "entry"), start = block(e, "start");
  LLVMPositionBuilderAtEnd(e->b, entry);
  LLVMPositionBuilderBefore(e->be, LLVMBuildBr(e->b, start));
  e->ptr_teacher = load_field(e, 0, e->ptr);
  e->ptr_student = load_field(e, 1, e->ptr);
  e->ptr_labels = load_field(e, 2, e->ptr);
  e->ptr_grad = load_field(e, 3, e->ptr);
  e->ptr_rows = load_field(e, 4, e->ptr);
  e->ptr_globals = load_field(e, 5, e->ptr);
  e->N = load_field(e, 6, e->i64);
  e->V = load_field(e, 7, e->i64);
  memset(e->gval, 0, e->n * sizeof *e->gval);
  memset(e->rval, 0, e->n * sizeof *e->rval);
  LLVMPositionBuilderAtEnd(e->b, start);
}

/* for r in [begin, end): the stage's passes, then the rows of its
 * reductions over rows; on to `done`. */
static void emit_row_loop(emitter *e, LLVMValueRef begin, LLVMValueRef end, LLVMBasicBlockRef done) {
  plan_cache(e);
  LLVMBasicBlockRef start = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef head = block(e, "row"), rbody = block(e, "row.body");
  LLVMBuildBr(e->b, head);
  LLVMPositionBuilderAtEnd(e->b, head);
  e->row = LLVMBuildPhi(e->b, e->i64, "r");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, e->row, end, ""), rbody, done);
  LLVMPositionBuilderAtEnd(e->b, rbody);
  memset(e->rval, 0, e->n * sizeof *e->rval);
  for (int p = 0; p < e->s->stage[e->stage].npasses && !e->st; p++) emit_pass(e, p);
  for (kd_node_id id = 0; id < (kd_node_id)e->n && !e->st; id++) {
    const kd_fuse_node *f = fnode(e, id);
    if (f->role != KD_ROLE_NRED || f->stage != e->stage) continue;
    kd_node_id src = gnode(e, id)->src[0];
    LLVMValueRef v = convert(e, row_value(e, src), kd_vclass_of(gnode(e, src)->dtype), KD_CL_F);
    LLVMValueRef idx = LLVMBuildAdd(e->b, LLVMBuildMul(e->b, i64c(e, f->slot), e->N, ""), e->row, "");
    LLVMBuildStore(e->b, v, LLVMBuildGEP2(e->b, e->f64, e->ptr_rows, &idx, 1, ""));
  }
  LLVMValueRef next = LLVMBuildAdd(e->b, e->row, i64c(e, 1), "");
  LLVMBasicBlockRef last = LLVMGetInsertBlock(e->b);
  LLVMBuildBr(e->b, head);
  LLVMAddIncoming(e->row, &begin, &start, 1);
  LLVMAddIncoming(e->row, &next, &last, 1);
}

/* row<k>: the row loop; with kept exps, two: one that keeps them for rows
 * that fit the cache, one that recomputes them. */
static LLVMValueRef emit_row_kernel(emitter *e, int k) {
  char suffix[16];
  snprintf(suffix, sizeof suffix, "row%d", k);
  e->stage = k;
  begin_function(e, suffix, e->row_ty);
  plan_keep(e);
  LLVMValueRef begin = LLVMGetParam(e->fn, 1), end = LLVMGetParam(e->fn, 2);
  e->scratch = LLVMGetParam(e->fn, 3);
  LLVMBasicBlockRef done = block(e, "done");
  if (e->nkeep) {
    LLVMBasicBlockRef kept = block(e, "rows.kept"), recompute = block(e, "rows.recompute");
    LLVMValueRef fits = LLVMBuildICmp(e->b, LLVMIntSLE, e->V, i64c(e, e->keep_maxv), "");
    LLVMBuildCondBr(e->b, fits, kept, recompute);
    LLVMPositionBuilderAtEnd(e->b, kept);
    e->expc = 1;
    emit_row_loop(e, begin, end, done);
    LLVMPositionBuilderAtEnd(e->b, recompute);
  }
  e->expc = 0;
  emit_row_loop(e, begin, end, done);
  LLVMPositionBuilderAtEnd(e->b, done);
  LLVMBuildRetVoid(e->b);
  return e->fn;
}

/* sum_i rows[slot * N + i], in row order (deterministic) */
static LLVMValueRef emit_row_sum(emitter *e, int slot) {
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef loop = block(e, "sum"), done = block(e, "sum.done");
  LLVMValueRef base = LLVMBuildMul(e->b, i64c(e, slot), e->N, "");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSGT, e->N, i64c(e, 0), ""), loop, done);
  LLVMPositionBuilderAtEnd(e->b, loop);
  LLVMValueRef i = LLVMBuildPhi(e->b, e->i64, "i");
  LLVMValueRef acc = LLVMBuildPhi(e->b, e->f64, "acc");
  LLVMValueRef idx = LLVMBuildAdd(e->b, base, i, "");
  LLVMValueRef x = LLVMBuildLoad2(e->b, e->f64, LLVMBuildGEP2(e->b, e->f64, e->ptr_rows, &idx, 1, ""), "");
  LLVMValueRef acc2 = LLVMBuildFAdd(e->b, acc, x, "");
  LLVMValueRef i2 = LLVMBuildAdd(e->b, i, i64c(e, 1), "");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, i2, e->N, ""), loop, done);
  LLVMValueRef z = i64c(e, 0), zf = LLVMConstReal(e->f64, 0);
  LLVMAddIncoming(i, &z, &pre, 1);
  LLVMAddIncoming(i, &i2, &loop, 1);
  LLVMAddIncoming(acc, &zf, &pre, 1);
  LLVMAddIncoming(acc, &acc2, &loop, 1);
  LLVMPositionBuilderAtEnd(e->b, done);
  return phi(e, e->f64, zf, pre, acc2, loop);
}

/* step<k>: the global scalars of phase k, stored to a->globals as doubles;
 * the last step also stores outputs that are plain constants. */
static LLVMValueRef emit_step(emitter *e, int k) {
  char suffix[16];
  snprintf(suffix, sizeof suffix, "step%d", k);
  begin_function(e, suffix, e->step_ty);
  for (kd_node_id id = 0; id < (kd_node_id)e->n && !e->st; id++) {
    const kd_fuse_node *f = fnode(e, id);
    const kd_node *n = gnode(e, id);
    /* constants are inlined where used; the last step stores the outputs
     * that are plain constants too */
    int konst = n->op == KD_IR_CONST;
    if (f->kind != KD_FUSE_GLOBAL || !f->live) continue;
    if (konst ? !(k == e->s->nstages && is_output(e, id)) : f->phase != k) continue;
    LLVMValueRef v;
    if (f->role == KD_ROLE_NRED) {
      v = convert(e, emit_row_sum(e, f->slot), KD_CL_F, kd_vclass_of(n->dtype));
    } else if (n->op == KD_IR_CONST) {
      v = const_value(e, n);
    } else {
      LLVMValueRef src[KD_MAX_SRC] = {0};
      for (int i = 0; i < n->nsrc; i++) src[i] = global_value(e, n->src[i]);
      v = emit_op(e, id, src);
    }
    e->gval[id] = v;
    LLVMValueRef idx = i64c(e, id);
    LLVMBuildStore(e->b, convert(e, v, kd_vclass_of(n->dtype), KD_CL_F),
                   LLVMBuildGEP2(e->b, e->f64, e->ptr_globals, &idx, 1, ""));
  }
  LLVMBuildRetVoid(e->b);
  return e->fn;
}

/* The kd_loss_program constant (runtime/lossrun.h; field order is the ABI). */
static void emit_program(emitter *e, LLVMValueRef *rows, LLVMValueRef *steps) {
  const kd_schedule *s = e->s;
  LLVMTypeRef rt = LLVMArrayType(e->ptr, KD_LOSS_MAX_STAGES);
  LLVMTypeRef st = LLVMArrayType(e->ptr, KD_LOSS_MAX_STAGES + 1);
  LLVMTypeRef fields[13] = {e->i32, e->i32, e->i32, e->i32, e->i32, e->i32, e->i32,
                            e->i32, e->i32, e->i32, e->i32, rt,     st};
  LLVMTypeRef pt = LLVMStructTypeInContext(e->C, fields, 13, 0);
  LLVMValueRef rv[KD_LOSS_MAX_STAGES], sv[KD_LOSS_MAX_STAGES + 1];
  for (int k = 0; k < KD_LOSS_MAX_STAGES; k++) rv[k] = rows[k] ? rows[k] : LLVMConstNull(e->ptr);
  for (int k = 0; k <= KD_LOSS_MAX_STAGES; k++) sv[k] = steps[k] ? steps[k] : LLVMConstNull(e->ptr);
  kd_node_id loss = kd_graph_find_output(e->g, "loss");
  const kd_node *t = s->teacher == KD_NONE ? NULL : gnode(e, s->teacher);
  int32_t vals[11] = {(int32_t)KD_LOSS_MAGIC, KD_LOSS_ABI_VERSION, s->nstages, s->nslots,
                      (int32_t)e->n, loss, kd_graph_find_output(e->g, "grad") != KD_NONE,
                      t ? (int32_t)t->dtype : -1, (int32_t)gnode(e, s->student)->dtype,
                      s->labels != KD_NONE, e->nscratch};
  LLVMValueRef init[13];
  for (int i = 0; i < 11; i++) init[i] = LLVMConstInt(e->i32, (unsigned long long)(uint32_t)vals[i], 0);
  init[11] = LLVMConstArray2(e->ptr, rv, KD_LOSS_MAX_STAGES);
  init[12] = LLVMConstArray2(e->ptr, sv, KD_LOSS_MAX_STAGES + 1);
  char name[160];
  snprintf(name, sizeof name, "%s_program", e->name);
  LLVMValueRef gv = LLVMAddGlobal(e->M, pt, name);
  LLVMSetInitializer(gv, LLVMConstNamedStruct(pt, init, 13));
  LLVMSetGlobalConstant(gv, 1);
}

static void init_types(emitter *e) {
  LLVMContextRef C = e->C;
  e->f32 = LLVMFloatTypeInContext(C);
  e->f64 = LLVMDoubleTypeInContext(C);
  e->i1 = LLVMInt1TypeInContext(C);
  e->i16 = LLVMInt16TypeInContext(C);
  e->i32 = LLVMInt32TypeInContext(C);
  e->i64 = LLVMInt64TypeInContext(C);
  e->ptr = LLVMPointerTypeInContext(C, 0);
  e->vf = LLVMVectorType(e->f32, (unsigned)e->W);
  e->vi64 = LLVMVectorType(e->i64, (unsigned)e->W);
  e->vi1 = LLVMVectorType(e->i1, (unsigned)e->W);
  LLVMTypeRef f[8] = {e->ptr, e->ptr, e->ptr, e->ptr, e->ptr, e->ptr, e->i64, e->i64};
  e->args_ty = LLVMStructTypeInContext(C, f, 8, 0);
  LLVMTypeRef rp[4] = {e->ptr, e->i64, e->i64, e->ptr};
  e->row_ty = LLVMFunctionType(LLVMVoidTypeInContext(C), rp, 4, 0);
  e->step_ty = LLVMFunctionType(LLVMVoidTypeInContext(C), rp, 1, 0);
}

/* Fills module m with the loss's functions and program. */
static kd_status emit_module(const kd_schedule *s, const kd_loss_options *o, int width,
                             kd_module *m, char *err, size_t errlen) {
  emitter e = {0};
  e.s = s;
  e.g = s->g;
  e.n = kd_graph_size(s->g);
  e.W = width;
  e.nontemporal = o->nontemporal > 0;
  e.name = o->name ? o->name : "kd_loss";
  e.err = err;
  e.errlen = errlen;
  e.C = m->ctx;
  e.M = m->mod;
  e.gval = calloc(e.n + 1, sizeof *e.gval);
  e.rval = calloc(e.n + 1, sizeof *e.rval);
  e.vval = calloc(e.n + 1, sizeof *e.vval);
  e.slot_load = malloc((e.n + 1) * sizeof *e.slot_load);
  e.xscale = calloc(e.n + 1, sizeof *e.xscale);
  e.vzero = calloc(e.n + 1, sizeof *e.vzero);
  if (!e.gval || !e.rval || !e.vval || !e.vzero || !e.slot_load || !e.xscale) e.st = KD_ERR_NOMEM;
  for (size_t i = 0; !e.st && i < e.n; i++) e.slot_load[i] = -1;
  e.b = LLVMCreateBuilderInContext(e.C);
  e.be = LLVMCreateBuilderInContext(e.C);
  init_types(&e);
  if (kd_graph_find_output(e.g, "loss") == KD_NONE)
    fail(&e, KD_ERR_INVALID, "codegen: the graph has no output \"loss\"");
  for (size_t i = 0; i < kd_graph_noutputs(e.g); i++) {
    kd_fuse_kind kind = s->node[kd_graph_output(e.g, i)].kind;
    const char *name = kd_graph_output_name(e.g, i);
    int ok = kind == KD_FUSE_GLOBAL ? strcmp(name, "grad") != 0
                                    : !strcmp(name, "grad") && kind == KD_FUSE_ELEM;
    if (!ok)
      fail(&e, KD_ERR_UNSUPPORTED,
           "codegen: output \"%s\": a compiled loss has scalar outputs and one [N, V] \"grad\"", name);
  }
  LLVMValueRef rows[KD_LOSS_MAX_STAGES] = {0}, steps[KD_LOSS_MAX_STAGES + 1] = {0};
  for (int k = 0; k <= s->nstages && !e.st; k++) {
    steps[k] = emit_step(&e, k);
    if (k < s->nstages && s->stage[k].has_rows) rows[k] = emit_row_kernel(&e, k);
  }
  if (!e.st) emit_program(&e, rows, steps);
  LLVMDisposeBuilder(e.b);
  LLVMDisposeBuilder(e.be);
  free(e.gval);
  free(e.rval);
  free(e.vval);
  free(e.slot_load);
  free(e.xscale);
  free(e.vzero);
  return e.st;
}

/* ---- the loss API -------------------------------------------------------------- */

struct kd_loss {
  kd_session *session;
  LLVMOrcResourceTrackerRef rt;
  kd_schedule *sched;
  const kd_loss_program *program;
};

static kd_status build(const kd_graph *g, const kd_loss_options *o, kd_session *s,
                       kd_schedule **sched, kd_module *m, char *err, size_t errlen) {
  kd_status st = kd_fuse(g, sched, err, errlen);
  if (st) return st;
  if ((*sched)->nstages > KD_LOSS_MAX_STAGES) {
    snprintf(err, errlen, "codegen: %d stages > %d", (*sched)->nstages, KD_LOSS_MAX_STAGES);
    return KD_ERR_UNSUPPORTED;
  }
  int w = o->vector_width > 0 ? o->vector_width : kd_session_vector_width(s);
  if (w > 64 || (w & (w - 1))) {
    snprintf(err, errlen, "codegen: vector width %d is not a power of 2 up to 64", w);
    return KD_ERR_INVALID;
  }
  if ((st = kd_session_module_new(s, o->name ? o->name : "kd_loss", m))) return st;
  if ((st = emit_module(*sched, o, w, m, err, errlen))) return st;
  return kd_session_optimize(s, m, err, errlen);
}

kd_status kd_loss_compile(const kd_graph *g, const kd_loss_options *o, kd_loss **out, char *err,
                          size_t errlen) {
  static const kd_loss_options defaults = {NULL, 0, 0};
  if (!o) o = &defaults;
  *out = NULL;
  kd_loss *l = calloc(1, sizeof *l);
  if (!l) return KD_ERR_NOMEM;
  kd_module m = {0};
  kd_status st = kd_session_new(&l->session, err, errlen);
  if (!st) st = build(g, o, l->session, &l->sched, &m, err, errlen);
  if (!st) st = kd_session_jit(l->session, &m, &l->rt, err, errlen); /* owned by LLJIT from here */
  char sym[160];
  snprintf(sym, sizeof sym, "%s_program", o->name ? o->name : "kd_loss");
  void *addr = NULL;
  if (!st) st = kd_session_lookup(l->session, sym, &addr, err, errlen);
  kd_module_dispose(&m);
  if (st) {
    kd_loss_free(l);
    return st;
  }
  l->program = addr;
  *out = l;
  return KD_OK;
}

void kd_loss_free(kd_loss *l) {
  if (!l) return;
  if (l->session) {
    kd_session_unload(l->session, l->rt);
    kd_session_free(l->session);
  }
  kd_schedule_free(l->sched);
  free(l);
}

kd_status kd_loss_eval(kd_loss *l, const kd_loss_io *io, kd_pool *pool, char *err, size_t errlen) {
  return kd_loss_run(l->program, io, pool, err, errlen);
}

const kd_schedule *kd_loss_schedule(const kd_loss *l) { return l->sched; }
const kd_loss_program *kd_loss_program_of(const kd_loss *l) { return l->program; }

kd_status kd_loss_emit_file(const kd_graph *g, const kd_loss_options *o, const char *path,
                            int asm_text, char *err, size_t errlen) {
  static const kd_loss_options defaults = {NULL, 0, 0};
  if (!o) o = &defaults;
  kd_session *s;
  kd_status st = kd_session_new(&s, err, errlen);
  if (st) return st;
  kd_schedule *sched = NULL;
  kd_module m = {0};
  st = build(g, o, s, &sched, &m, err, errlen);
  if (!st)
    st = kd_session_emit(s, &m, asm_text ? LLVMAssemblyFile : LLVMObjectFile, path, err, errlen);
  kd_module_dispose(&m);
  kd_schedule_free(sched);
  kd_session_free(s);
  return st;
}
