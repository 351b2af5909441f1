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
 * Target-neutral on purpose: the expression emitter (rowemit.h) knows nothing
 * of loops; the loop structure lives in emit_pass and emit_row_kernel. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loss.h"
#include "elementwise.h"
#include "mathlib.h"
#include "rowemit.h"
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
 * floats a value) instead of being recomputed, when they cost an exp, a
 * log or a division (costly). The later pass loads them. */
typedef struct cache_plan {
  int nslots;
  kd_node_id node[MAX_CACHE]; /* the value in slot s */
  int save_pass[MAX_CACHE];   /* the pass that writes it */
  int nloads;
  struct {
    int pass, slot;
  } load[MAX_CACHE * KD_FUSE_MAX_PASSES];
} cache_plan;


/* The CPU emitter: the shared core (rowemit.h; first, so the hooks can
 * cast it back) and what only the CPU kernels have. */
typedef struct emitter {
  kd_rowemit r;    /* W: f32 lanes of the host's widest vector */
  int nontemporal; /* gradient stores bypass the caches */
  int grad_bf16;   /* the gradient is stored as bf16 (else f32) */
  int avx512;      /* the row's f32 exps and logs through AVX-512 instructions (mathlib.h) */
  int aligned;     /* in a main loop whose gradient stores are vector-aligned */
  LLVMTypeRef ptr, args_ty, row_ty, step_ty;

  /* per function */
  LLVMValueRef args, mask;
  LLVMValueRef ptr_teacher, ptr_student, ptr_grad;
  LLVMValueRef scratch; /* the row kernel's [nscratch, V] floats */
  LLVMValueRef row_end; /* the row kernel's end: the rows it runs are [begin, row_end) */
  int *slot_load;       /* [n] the slot a node is loaded from in this pass, or -1 */
  cache_plan cache;     /* of the stage being emitted */
  int nscratch;         /* max slots over the stages */
  int pass;

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

/* ---- small IR helpers ------------------------------------------------------ */

/* An intrinsic overloaded on two types (masked loads and stores). */
static LLVMValueRef intrinsic2(emitter *e, const char *name, LLVMTypeRef t0, LLVMTypeRef t1,
                               LLVMValueRef *args, unsigned nargs) {
  LLVMTypeRef tys[2] = {t0, t1};
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(e->r.M, id, tys, t1 ? 2 : 1);
  LLVMTypeRef fty = LLVMIntrinsicGetType(e->r.C, id, tys, t1 ? 2 : 1);
  return LLVMBuildCall2(e->r.b, fty, f, args, nargs, "");
}

static LLVMValueRef intrinsic1(emitter *e, const char *name, LLVMValueRef x) {
  return kd_ir_intrinsic(e->r.b, name, LLVMTypeOf(x), &x, 1);
}

static LLVMValueRef vreduce(emitter *e, const char *name, LLVMValueRef v) {
  return intrinsic2(e, name, LLVMTypeOf(v), NULL, &v, 1);
}

static LLVMValueRef load_field(emitter *e, int i, LLVMTypeRef ty) {
  LLVMValueRef p = LLVMBuildStructGEP2(e->r.be, e->args_ty, e->args, (unsigned)i, "");
  return LLVMBuildLoad2(e->r.be, ty, p, "");
}

/* ---- the expression emitter's hooks (scalar or vector) ------------------------ */

/* f32 lanes through the mathlib, a double scalar through libm */
static LLVMValueRef emit_exp(kd_rowemit *r, LLVMValueRef x) {
  return LLVMGetTypeKind(LLVMTypeOf(x)) == LLVMVectorTypeKind ? kd_emit_exp(r->b, x)
                                                              : intrinsic1((emitter *)r, "llvm.exp", x);
}

static LLVMValueRef emit_log(kd_rowemit *r, LLVMValueRef x) {
  if (LLVMGetTypeKind(LLVMTypeOf(x)) != LLVMVectorTypeKind) return intrinsic1((emitter *)r, "llvm.log", x);
  return ((emitter *)r)->avx512 ? kd_emit_log_avx512(r->b, x) : kd_emit_log(r->b, x);
}

/* ---- global, row and element values ------------------------------------------ */

/* teacher or student at [row, j .. j + W), widened to f32 */
static LLVMValueRef load_logits(kd_rowemit *r, kd_node_id id) {
  emitter *e = (emitter *)r;
  const kd_node *n = kd_re_gnode(r, id);
  int bf16 = n->dtype == KD_BF16;
  LLVMTypeRef et = bf16 ? r->i16 : r->f32;
  LLVMTypeRef vt = LLVMVectorType(et, (unsigned)r->W);
  LLVMValueRef base = id == r->s->teacher ? e->ptr_teacher : e->ptr_student;
  LLVMValueRef off = LLVMBuildAdd(r->b, LLVMBuildMul(r->b, r->row, r->V, ""), r->j, "");
  LLVMValueRef p = LLVMBuildGEP2(r->b, et, base, &off, 1, "");
  LLVMValueRef x;
  if (e->mask) {
    LLVMValueRef args[4] = {p, LLVMConstInt(r->i32, bf16 ? 2 : 4, 0), e->mask, LLVMConstNull(vt)};
    x = intrinsic2(e, "llvm.masked.load", vt, e->ptr, args, 4);
  } else {
    x = LLVMBuildLoad2(r->b, vt, p, "");
    LLVMSetAlignment(x, bf16 ? 2 : 4);
  }
  return bf16 ? kd_re_bf16_to_f32(r, x) : x;
}

static LLVMValueRef elem_value(emitter *e, kd_node_id id);

/* > 0, not >= 0: 0 * -inf would be a NaN that exp_row does not keep */
static int is_pos_const(const emitter *e, kd_node_id id) {
  const kd_node *n = kd_re_gnode(&e->r, id);
  return n->op == KD_IR_CONST && n->value > 0 && n->value <= FLT_MAX;
}

/* Whether an element value is <= 0 up to rounding by construction: a -
 * lse(a), a - max(a), a positive constant times one, a sum of two (the
 * log-probabilities of a softmax, p^a q^b's exponent). */
static int is_nonpos(const emitter *e, kd_node_id id) {
  const kd_node *n = kd_re_gnode(&e->r, id);
  switch (n->op) {
  case KD_IR_SUB: {
    const kd_node *r = kd_re_gnode(&e->r, n->src[1]);
    return kd_re_fnode(&e->r, n->src[1])->role == KD_ROLE_ROWRED &&
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
  const kd_node *n = kd_re_gnode(&e->r, id);
  switch (n->op) {
  case KD_IR_EXP: return is_softmax_exp(e, n);
  case KD_IR_ADD: return is_prob_mix(e, n->src[0]) && is_prob_mix(e, n->src[1]);
  case KD_IR_MUL:
    for (int i = 0; i < 2; i++) {
      const kd_node *c = kd_re_gnode(&e->r, n->src[i]);
      if (c->op == KD_IR_CONST && c->value > 0 && c->value <= 1e6 && is_prob_mix(e, n->src[1 - i]))
        return 1;
    }
    return 0;
  default: return 0;
  }
}

static LLVMValueRef scratch_ptr(emitter *e, int slot, LLVMValueRef col) {
  LLVMValueRef off = LLVMBuildAdd(e->r.b, LLVMBuildMul(e->r.b, kd_re_i64c(&e->r, slot), e->r.V, ""), col, "");
  return LLVMBuildGEP2(e->r.b, e->r.f32, e->scratch, &off, 1, "");
}

static LLVMValueRef load_cached(emitter *e, int slot) {
  LLVMValueRef p = scratch_ptr(e, slot, e->r.j);
  if (e->mask) {
    LLVMValueRef args[4] = {p, LLVMConstInt(e->r.i32, 4, 0), e->mask, LLVMConstNull(e->r.vf)};
    return intrinsic2(e, "llvm.masked.load", e->r.vf, e->ptr, args, 4);
  }
  LLVMValueRef x = LLVMBuildLoad2(e->r.b, e->r.vf, p, "");
  LLVMSetAlignment(x, 4);
  return x;
}

static void save_cached(emitter *e, int slot, LLVMValueRef v) {
  LLVMValueRef p = scratch_ptr(e, slot, e->r.j);
  if (e->mask) {
    LLVMValueRef args[4] = {v, p, LLVMConstInt(e->r.i32, 4, 0), e->mask};
    intrinsic2(e, "llvm.masked.store", e->r.vf, e->ptr, args, 4);
    return;
  }
  LLVMSetAlignment(LLVMBuildStore(e->r.b, v, p), 4);
}

/* The keep[] index of schedule group k, or -1. */
static int keep_index(const emitter *e, int k) {
  for (int i = 0; i < e->nkeep; i++)
    if (e->keep[i] == k) return i;
  return -1;
}

static LLVMValueRef elem_value(emitter *e, kd_node_id id) {
  if (e->r.vval[id]) return e->r.vval[id];
  if (e->slot_load[id] >= 0) return e->r.vval[id] = load_cached(e, e->slot_load[id]);
  if (e->xscale[id]) { /* exp(a - c) = exp(a - m) exp(m - c) */
    int k = keep_index(e, kd_re_fnode(&e->r, id)->exp_group);
    return e->r.vval[id] = LLVMBuildFMul(e->r.b, load_cached(e, e->cache.nslots + k), e->xscale[id], "");
  }
  return kd_re_elem_value(&e->r, id);
}

/* The per-logit exp of x - m or x - lse (mathlib.h), *zero where it is 0. */
static LLVMValueRef exp_row(emitter *e, LLVMValueRef x, LLVMValueRef *zero) {
  return e->avx512 ? kd_emit_exp_row_avx512(e->r.b, x, zero) : kd_emit_exp_row(e->r.b, x, zero);
}

/* The cheaper exp of a value <= 0 (noting the lanes where it is 0), the
 * cheaper log of a mixture of probabilities. */
static LLVMValueRef elem_special(kd_rowemit *r, kd_node_id id) {
  emitter *e = (emitter *)r;
  const kd_node *n = kd_re_gnode(r, id);
  if (is_softmax_exp(e, n)) return exp_row(e, elem_value(e, n->src[0]), &r->vzero[id]);
  if (n->op == KD_IR_LOG && kd_vclass_of(n->dtype) == KD_CL_F && is_prob_mix(e, n->src[0])) {
    /* A mixture below FLT_MIN reads as FLT_MIN: 0.1 q can round to 0 (or
     * flush to 0 under the AVX-512 kernels' FTZ, enter_ftz) while q does not,
     * and q (log q - log(0.1 q)) would be inf instead of about 0. (Not the
     * least subnormal: DAZ reads that as 0.) Every use of such a log is
     * weighted by a probability below FLT_MIN / c, c the mixture's least
     * weight, so the clamp moves the loss by that times |log c| at most. */
    LLVMValueRef args[2] = {elem_value(e, n->src[0]), kd_ir_fconst(e->r.vf, FLT_MIN)};
    LLVMValueRef x = kd_ir_intrinsic(r->b, "llvm.maxnum", e->r.vf, args, 2);
    return e->avx512 ? kd_emit_log_avx512(r->b, x) : kd_emit_log_finite(r->b, x);
  }
  return NULL;
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

/* The one [N, V] output the ABI has a place for: "grad" (emit_module
 * refuses graphs with others). */
static int is_elem_output(const emitter *e, kd_node_id id) {
  return kd_re_fnode(&e->r, id)->kind == KD_FUSE_ELEM && kd_graph_find_output(e->r.g, "grad") == id;
}

/* The keep[] index of the group of a in this pass, or -1 (not kept, or the
 * row loop recomputes). */
static int keep_of(const emitter *e, kd_node_id a, int pass) {
  for (int i = 0; e->expc && i < e->nkeep; i++) {
    const kd_fuse_group *g = &e->r.s->group[e->keep[i]];
    if (g->a == a && g->pass == pass) return i;
  }
  return -1;
}

static void plan_pass(emitter *e, int pass, pass_plan *pl) {
  memset(pl, 0, sizeof *pl);
  for (kd_node_id id = 0; id < (kd_node_id)e->r.n; id++) {
    const kd_fuse_node *f = kd_re_fnode(&e->r, id);
    if (!kd_fuse_in_stage(e->r.s, id, e->r.stage)) continue;
    if (is_elem_output(e, id) && f->avail == pass && pl->nstore < MAX_STATE)
      pl->store[pl->nstore++] = id;
    if ((f->role != KD_ROLE_ROWRED && f->role != KD_ROLE_FOLDED) || f->pass != pass) continue;
    if (pl->ng + pl->nr + 1 >= MAX_STATE) {
      kd_re_fail(&e->r, KD_ERR_UNSUPPORTED, "codegen: more than %d reductions in one pass", MAX_STATE);
      return;
    }
    kd_opcode op = kd_re_gnode(&e->r, id)->op;
    int gi = -1;
    /* a max needs no exp: a plain running max (the groups' references are
     * not maxima) */
    if (f->role == KD_ROLE_FOLDED || op == KD_IR_LSE) {
      kd_node_id a = kd_re_online_a(&e->r, id);
      for (gi = 0; gi < pl->ng && pl->ga[gi] != a; gi++) {}
      if (gi == pl->ng) pl->gkeep[pl->ng++] = keep_of(e, a, pass);
      pl->ga[gi] = a;
    }
    pl->red[pl->nr] = id;
    pl->rgroup[pl->nr++] = gi;
  }
}

static LLVMValueRef masked(emitter *e, LLVMValueRef v, LLVMValueRef neutral) {
  return e->mask ? LLVMBuildSelect(e->r.b, e->mask, v, neutral, "") : v;
}

/* The kept exps of the block so far, columns [jblock, j) of the slot, times
 * sc (whole vectors: the main loop's). */
static void fixup_kept(emitter *e, int slot, LLVMValueRef sc) {
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef loop = kd_re_block(&e->r, "fixup"), done = kd_re_block(&e->r, "fixup.done");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, e->jblock, e->r.j, ""), loop, done);
  LLVMPositionBuilderAtEnd(e->r.b, loop);
  LLVMValueRef jj = LLVMBuildPhi(e->r.b, e->r.i64, "jj");
  LLVMValueRef p = scratch_ptr(e, slot, jj);
  LLVMValueRef x = LLVMBuildLoad2(e->r.b, e->r.vf, p, "");
  LLVMSetAlignment(x, 4);
  LLVMSetAlignment(LLVMBuildStore(e->r.b, LLVMBuildFMul(e->r.b, x, sc, ""), p), 4);
  LLVMValueRef jn = LLVMBuildAdd(e->r.b, jj, kd_re_i64c(&e->r, e->r.W), "");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, jn, e->r.j, ""), loop, done);
  LLVMAddIncoming(jj, &e->jblock, &pre, 1);
  LLVMAddIncoming(jj, &jn, &loop, 1);
  LLVMPositionBuilderAtEnd(e->r.b, done);
}

/* Group gi's reference m moves to x in the lanes where x - m > LAZY (a few
 * times a row): its sums, and the block's kept exps so far, are rescaled by
 * exp(m - m_new), in a branch. Returns x - m for the reference in force
 * (at most LAZY). */
static LLVMValueRef rescale(emitter *e, const pass_plan *pl, int gi, LLVMValueRef x,
                            LLVMValueRef *m, LLVMValueRef *acc) {
  LLVMValueRef d = LLVMBuildFSub(e->r.b, x, *m, "");
  LLVMValueRef grew = LLVMBuildFCmp(e->r.b, LLVMRealOGT, d, kd_ir_fconst(e->r.vf, LAZY), "");
  LLVMValueRef any = vreduce(e, "llvm.vector.reduce.or", grew);
  LLVMBasicBlockRef from = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef bscale = kd_re_block(&e->r, "rescale"), bjoin = kd_re_block(&e->r, "rescaled");
  LLVMBuildCondBr(e->r.b, any, bscale, bjoin);
  LLVMPositionBuilderAtEnd(e->r.b, bscale);
  LLVMValueRef m_new = LLVMBuildSelect(e->r.b, grew, x, *m, "");
  /* lanes that did not move get exp(0) = 1 */
  LLVMValueRef sc = kd_emit_exp_nonpos(e->r.b, LLVMBuildFSub(e->r.b, *m, m_new, ""));
  LLVMValueRef d_new = LLVMBuildFSub(e->r.b, x, m_new, "");
  LLVMValueRef scaled[MAX_STATE];
  for (int r = 0; r < pl->nr; r++)
    if (pl->rgroup[r] == gi) scaled[r] = LLVMBuildFMul(e->r.b, acc[r], sc, "");
  if (pl->gkeep[gi] >= 0 && e->jblock) fixup_kept(e, e->cache.nslots + pl->gkeep[gi], sc);
  LLVMBasicBlockRef bend = LLVMGetInsertBlock(e->r.b);
  LLVMBuildBr(e->r.b, bjoin);
  LLVMPositionBuilderAtEnd(e->r.b, bjoin);
  *m = kd_re_phi(&e->r, e->r.vf, *m, from, m_new, bend);
  for (int r = 0; r < pl->nr; r++)
    if (pl->rgroup[r] == gi) acc[r] = kd_re_phi(&e->r, e->r.vf, acc[r], from, scaled[r], bend);
  return kd_re_phi(&e->r, e->r.vf, d, from, d_new, bend);
}

static int is_max(const emitter *e, const pass_plan *pl, int r) {
  return kd_re_gnode(&e->r, pl->red[r])->op == KD_IR_RMAX;
}

/* The size in bytes of a gradient element. */
static unsigned grad_size(const emitter *e) { return e->grad_bf16 ? 2 : 4; }

/* &grad[row, j] */
static LLVMValueRef grad_ptr(emitter *e, LLVMValueRef j) {
  LLVMValueRef off = LLVMBuildAdd(e->r.b, LLVMBuildMul(e->r.b, e->r.row, e->r.V, ""), j, "");
  return LLVMBuildGEP2(e->r.b, e->grad_bf16 ? e->r.i16 : e->r.f32, e->ptr_grad, &off, 1, "");
}

static void store_output(emitter *e, kd_node_id id) {
  LLVMValueRef v = kd_re_elem_f(&e->r, id);
  if (e->grad_bf16) v = kd_re_f32_to_bf16(&e->r, v);
  unsigned size = grad_size(e);
  LLVMValueRef p = grad_ptr(e, e->r.j);
  if (e->mask) {
    LLVMValueRef args[4] = {v, p, LLVMConstInt(e->r.i32, size, 0), e->mask};
    intrinsic2(e, "llvm.masked.store", LLVMTypeOf(v), e->ptr, args, 4);
    return;
  }
  LLVMValueRef st = LLVMBuildStore(e->r.b, v, p);
  LLVMSetAlignment(st, e->aligned ? (unsigned)e->r.W * size : size);
  if (e->aligned) {
    LLVMMetadataRef one = LLVMValueAsMetadata(LLVMConstInt(e->r.i32, 1, 0));
    LLVMSetMetadata(st, LLVMGetMDKindIDInContext(e->r.C, "nontemporal", 11),
                    LLVMMetadataAsValue(e->r.C, LLVMMDNodeInContext2(e->r.C, &one, 1)));
  }
}

/* acc + a * b as one FMA in the lanes of live (NULL: all) and of the
 * tail's mask, acc elsewhere: a sum of products (MULZ's with live its a != 0
 * lanes) costs one masked FMA (merge-masked vfmadd231ps) instead of a
 * multiply, a select and an add. */
static LLVMValueRef accumulate_product(emitter *e, LLVMValueRef acc, LLVMValueRef a, LLVMValueRef b,
                                       LLVMValueRef live) {
  LLVMValueRef r = kd_ir_fma(e->r.b, a, b, acc);
  if (e->mask) live = live ? LLVMBuildAnd(e->r.b, live, e->mask, "") : e->mask;
  return live ? LLVMBuildSelect(e->r.b, live, r, acc, "") : r;
}

/* The lanes where a MULZ's first factor w is not 0 (une: a NaN counts, as
 * in MULZ), from wz, its zero lanes, when known. */
static LLVMValueRef nonzero_lanes(emitter *e, LLVMValueRef w, LLVMValueRef wz) {
  return wz ? LLVMBuildNot(e->r.b, wz, "") : LLVMBuildFCmp(e->r.b, LLVMRealUNE, w, LLVMConstNull(e->r.vf), "");
}

/* acc + the element value src of a sum. A product (MUL, or MULZ, 0 where
 * its first factor is) that nothing has computed yet and that does not
 * come from the row cache goes through accumulate_product. */
static LLVMValueRef accumulate(emitter *e, LLVMValueRef acc, kd_node_id src) {
  const kd_node *n = kd_re_gnode(&e->r, src);
  if ((n->op == KD_IR_MUL || n->op == KD_IR_MULZ) && kd_vclass_of(n->dtype) == KD_CL_F && !e->r.vval[src] &&
      e->slot_load[src] < 0) {
    LLVMValueRef a = kd_re_elem_f(&e->r, n->src[0]), b = kd_re_elem_f(&e->r, n->src[1]);
    return accumulate_product(e, acc, a, b, n->op == KD_IR_MULZ ? nonzero_lanes(e, a, e->r.vzero[n->src[0]]) : NULL);
  }
  return LLVMBuildFAdd(e->r.b, acc, masked(e, kd_re_elem_f(&e->r, src), LLVMConstNull(e->r.vf)), "");
}

/* One vector of the row at column j (under e->mask in the tail): updates
 * state (maxes then accumulators) in place and stores outputs. */
static void emit_body(emitter *e, const pass_plan *pl, LLVMValueRef *state) {
  memset(e->r.vval, 0, e->r.n * sizeof *e->r.vval);
  memset(e->r.vzero, 0, e->r.n * sizeof *e->r.vzero);
  LLVMValueRef *m = state, *acc = state + pl->ng;
  LLVMValueRef ninf = kd_ir_fconst(e->r.vf, -INFINITY), zero = LLVMConstNull(e->r.vf);
  for (int gi = 0; gi < pl->ng; gi++) {
    LLVMValueRef x = masked(e, kd_re_elem_f(&e->r, pl->ga[gi]), ninf);
    /* x - m <= LAZY; x = -inf (masked lanes, -inf logits) gives exactly 0 */
    LLVMValueRef wz, w = exp_row(e, rescale(e, pl, gi, x, &m[gi], acc), &wz);
    if (pl->gkeep[gi] >= 0) save_cached(e, e->cache.nslots + pl->gkeep[gi], w);
    for (int r = 0; r < pl->nr; r++) {
      if (pl->rgroup[r] != gi) continue;
      const kd_fuse_node *f = kd_re_fnode(&e->r, pl->red[r]);
      if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE) { /* exp(a - c) f, 0 where the exp is (MULZ) */
        acc[r] = accumulate_product(e, acc[r], w, kd_re_elem_f(&e->r, f->fold_f),
                                    f->mulz ? nonzero_lanes(e, w, wz) : NULL);
      } else {
        acc[r] = LLVMBuildFAdd(e->r.b, acc[r], masked(e, w, zero), "");
      }
    }
  }
  for (int r = 0; r < pl->nr; r++) {
    if (pl->rgroup[r] >= 0) continue;
    kd_node_id src = kd_re_gnode(&e->r, pl->red[r])->src[0];
    if (!is_max(e, pl, r)) {
      acc[r] = accumulate(e, acc[r], src);
      continue;
    }
    /* x > acc ? x : acc: one max instruction (maxnum's NaN rule costs three) */
    LLVMValueRef x = masked(e, kd_re_elem_f(&e->r, src), ninf);
    acc[r] = LLVMBuildSelect(e->r.b, LLVMBuildFCmp(e->r.b, LLVMRealOGT, x, acc[r], ""), x, acc[r], "");
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

static LLVMTypeRef vf64(const emitter *e) { return LLVMVectorType(e->r.f64, (unsigned)e->r.W); }

static void dstate_init(emitter *e, const pass_plan *pl, dstate *d) {
  for (int gi = 0; gi < pl->ng; gi++) d->mref[gi] = kd_ir_fconst(e->r.vf, -FLT_MAX);
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
    LLVMValueRef sc = kd_emit_exp_nonpos(e->r.b, LLVMBuildFSub(e->r.b, d->mref[gi], m[gi], ""));
    scd[gi] = LLVMBuildFPExt(e->r.b, sc, vf64(e), "");
    d->mref[gi] = m[gi];
  }
  for (int r = 0; r < pl->nr; r++) {
    int gi = pl->rgroup[r];
    if (is_max(e, pl, r)) continue; /* stays in its f32 lanes */
    LLVMValueRef x = LLVMBuildFPExt(e->r.b, acc[r], vf64(e), "");
    d->dacc[r] = gi >= 0 ? kd_ir_fma(e->r.b, d->dacc[r], scd[gi], x) : LLVMBuildFAdd(e->r.b, d->dacc[r], x, "");
    acc[r] = LLVMConstNull(e->r.vf);
  }
}

static LLVMValueRef hsum(emitter *e, LLVMValueRef d) {
  LLVMValueRef args[2] = {LLVMConstReal(e->r.f64, 0.0), d};
  return intrinsic2(e, "llvm.vector.reduce.fadd", LLVMTypeOf(d), NULL, args, 2);
}

/* Lanes to row scalars, in double, after the last flush. */
static void finalize(emitter *e, const pass_plan *pl, LLVMValueRef *state, const dstate *d) {
  LLVMValueRef *m = state;
  LLVMValueRef gmax[MAX_STATE], gmaxd[MAX_STATE];
  for (int gi = 0; gi < pl->ng; gi++) {
    gmax[gi] = vreduce(e, "llvm.vector.reduce.fmax", m[gi]);
    gmaxd[gi] = LLVMBuildFPExt(e->r.b, gmax[gi], e->r.f64, "");
  }
  for (int r = 0; r < pl->nr; r++) {
    kd_node_id id = pl->red[r];
    const kd_node *n = kd_re_gnode(&e->r, id);
    int gi = pl->rgroup[r];
    LLVMValueRef v;
    if (is_max(e, pl, r)) {
      /* the running max starts at -FLT_MAX: an all -inf row is -inf */
      LLVMValueRef mx =
          LLVMBuildFPExt(e->r.b, vreduce(e, "llvm.vector.reduce.fmax", state[pl->ng + r]), e->r.f64, "");
      LLVMValueRef empty = LLVMBuildFCmp(e->r.b, LLVMRealOLE, mx, LLVMConstReal(e->r.f64, -FLT_MAX), "");
      v = LLVMBuildSelect(e->r.b, empty, LLVMConstReal(e->r.f64, -INFINITY), mx, "");
    } else if (gi < 0) {
      v = hsum(e, d->dacc[r]);
    } else {
      LLVMValueRef sc = kd_emit_exp_nonpos(e->r.b, LLVMBuildFSub(e->r.b, m[gi], kd_re_splat(&e->r, gmax[gi]), ""));
      LLVMValueRef total = hsum(e, LLVMBuildFMul(e->r.b, d->dacc[r], LLVMBuildFPExt(e->r.b, sc, vf64(e), ""), ""));
      if (n->op == KD_IR_LSE) {
        v = LLVMBuildFAdd(e->r.b, gmaxd[gi], intrinsic1(e, "llvm.log", total), "");
      } else {
        /* folded: sum exp(a - c) f = exp(max - c) sum exp(a - max) f */
        LLVMValueRef c = kd_re_row_f(&e->r, kd_re_fnode(&e->r, id)->fold_c);
        LLVMValueRef sh = emit_exp(&e->r, LLVMBuildFSub(e->r.b, gmaxd[gi], c, ""));
        LLVMValueRef z = LLVMBuildFCmp(e->r.b, LLVMRealOEQ, total, LLVMConstReal(e->r.f64, 0), "");
        v = LLVMBuildSelect(e->r.b, z, total, LLVMBuildFMul(e->r.b, total, sh, ""), "");
      }
    }
    e->r.rval[id] = kd_re_convert(&e->r, v, KD_CL_F, kd_vclass_of(n->dtype));
  }
}

/* ---- the row cache ---------------------------------------------------------------- */

/* Whether the row loop being emitted reads id from kept exps. */
static int kept_exp(const emitter *e, kd_node_id id) {
  return e->expc && kd_re_fnode(&e->r, id)->exp_group >= 0 && keep_index(e, kd_re_fnode(&e->r, id)->exp_group) >= 0;
}

static void mark_elem(const emitter *e, kd_node_id id, char *seen) {
  if (seen[id] || kd_re_fnode(&e->r, id)->kind != KD_FUSE_ELEM) return;
  seen[id] = 1;
  if (kept_exp(e, id)) return;
  const kd_node *n = kd_re_gnode(&e->r, id);
  for (int i = 0; i < n->nsrc; i++) mark_elem(e, n->src[i], seen);
}

/* The element values a pass computes: from its roots (online maxima, folded
 * and plain reduction arguments, stored outputs) down to inputs and row
 * scalars. */
static void mark_pass(emitter *e, int pass, char *seen) {
  pass_plan pl;
  plan_pass(e, pass, &pl);
  memset(seen, 0, e->r.n);
  for (int gi = 0; gi < pl.ng; gi++) mark_elem(e, pl.ga[gi], seen);
  for (int r = 0; r < pl.nr; r++) {
    const kd_fuse_node *f = kd_re_fnode(&e->r, pl.red[r]);
    if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE) mark_elem(e, f->fold_f, seen);
    if (f->role == KD_ROLE_ROWRED) mark_elem(e, kd_re_gnode(&e->r, pl.red[r])->src[0], seen);
  }
  for (int i = 0; i < pl.nstore; i++) mark_elem(e, pl.store[i], seen);
}

/* Whether an element value costs an exp, a log or a division to recompute
 * (a kept exp costs a multiply). A division counts: vdivps on 16 lanes
 * issues once every 6.5 cycles on Zen 4, which bounds a gradient pass of a
 * dozen other instructions (skew_fkl's: 0.93 -> 0.85 ns per logit in L2
 * with its quotient cached, no different from memory at 1 and 2 threads). */
static int costly(const emitter *e, kd_node_id id, char *seen) {
  if (seen[id] || kd_re_fnode(&e->r, id)->kind != KD_FUSE_ELEM || kept_exp(e, id)) return 0;
  seen[id] = 1;
  const kd_node *n = kd_re_gnode(&e->r, id);
  if (n->op == KD_IR_EXP || n->op == KD_IR_LOG || n->op == KD_IR_POW || n->op == KD_IR_DIV) return 1;
  for (int i = 0; i < n->nsrc; i++)
    if (costly(e, n->src[i], seen)) return 1;
  return 0;
}

/* Walks pass p's values from its roots; the first costly f32 value on each
 * path that pass p - 1 computed too is loaded from the cache instead (and
 * nothing below it is recomputed). */
static void choose_cached(emitter *e, int pass, kd_node_id id, const char *prev, char *seen,
                          char *tmp) {
  if (seen[id] || kd_re_fnode(&e->r, id)->kind != KD_FUSE_ELEM) return;
  seen[id] = 1;
  const kd_node *n = kd_re_gnode(&e->r, id);
  cache_plan *c = &e->cache;
  memset(tmp, 0, e->r.n);
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
  int np = e->r.s->stage[e->r.stage].npasses;
  char *prev = calloc(e->r.n, 1), *seen = calloc(e->r.n, 1), *tmp = calloc(e->r.n, 1);
  if (!prev || !seen || !tmp) {
    kd_re_fail(&e->r, KD_ERR_NOMEM, "out of memory");
  } else {
    /* pass 0's values are relative to the running max: nothing to reuse */
    for (int p = 2; p < np; p++) {
      mark_pass(e, p - 1, prev);
      pass_plan pl;
      plan_pass(e, p, &pl);
      memset(seen, 0, e->r.n);
      for (int r = 0; r < pl.nr; r++) {
        const kd_fuse_node *f = kd_re_fnode(&e->r, pl.red[r]);
        if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE)
          choose_cached(e, p, f->fold_f, prev, seen, tmp);
        if (f->role == KD_ROLE_ROWRED) choose_cached(e, p, kd_re_gnode(&e->r, pl.red[r])->src[0], prev, seen, tmp);
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
  for (kd_node_id id = 0; id < (kd_node_id)e->r.n; id++) {
    int k = kd_re_fnode(&e->r, id)->exp_group;
    if (k < 0 || !kd_fuse_in_stage(e->r.s, id, e->r.stage) || keep_index(e, k) >= 0) continue;
    if (e->nkeep == MAX_STATE) break;
    e->keep[e->nkeep++] = k;
  }
  if (!e->nkeep) return;
  e->keep_maxv = KEEP_BYTES / (4LL * e->nkeep);
  LLVMTypeRef t = LLVMArrayType(e->r.vf, (unsigned)(e->keep_maxv / ((long long)BLOCK * e->r.W) + 2));
  for (int i = 0; i < e->nkeep; i++) e->blockref[i] = LLVMBuildAlloca(e->r.be, t, "blockref");
}

static LLVMValueRef blockref_ptr(emitter *e, int i, LLVMValueRef bi) {
  return LLVMBuildGEP2(e->r.b, e->r.vf, e->blockref[i], &bi, 1, "");
}

/* Each kept group of the pass: its reference for block bi. */
static void save_refs(emitter *e, const pass_plan *pl, const LLVMValueRef *m, LLVMValueRef bi) {
  for (int gi = 0; gi < pl->ng; gi++)
    if (pl->gkeep[gi] >= 0) LLVMBuildStore(e->r.b, m[gi], blockref_ptr(e, pl->gkeep[gi], bi));
}

/* Block bi's exp(ref - c) for every kept exp exp(a - c) the pass reads
 * (xs[0 .. nx)); ref - c in double, then one f32 exp a block. */
static void block_scales(emitter *e, const kd_node_id *xs, int nx, LLVMValueRef bi) {
  for (int i = 0; i < nx; i++) {
    kd_node_id c = kd_re_gnode(&e->r, kd_re_gnode(&e->r, xs[i])->src[0])->src[1];
    LLVMValueRef ref = LLVMBuildLoad2(
        e->r.b, e->r.vf, blockref_ptr(e, keep_index(e, kd_re_fnode(&e->r, xs[i])->exp_group), bi), "");
    LLVMValueRef dif = LLVMBuildFSub(e->r.b, LLVMBuildFPExt(e->r.b, ref, vf64(e), ""),
                                     kd_re_splat(&e->r, kd_re_row_value(&e->r, c)), "");
    e->xscale[xs[i]] = kd_emit_exp_nonpos(e->r.b, LLVMBuildFPTrunc(e->r.b, dif, e->r.vf, ""));
  }
}

/* The columns [j, limit), fewer than W, as one vector under a mask, when
 * there are any; the state flows through phis either way. */
static void masked_step(emitter *e, const pass_plan *pl, LLVMValueRef *st, LLVMValueRef j,
                        LLVMValueRef limit) {
  int ns = pl->ng + pl->nr;
  LLVMBasicBlockRef from = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef bb = kd_re_block(&e->r, "masked"), join = kd_re_block(&e->r, "masked.done");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, j, limit, ""), bb, join);
  LLVMPositionBuilderAtEnd(e->r.b, bb);
  LLVMValueRef in[MAX_STATE];
  memcpy(in, st, (size_t)ns * sizeof *st);
  e->r.j = j;
  e->mask = LLVMBuildICmp(e->r.b, LLVMIntSLT, kd_re_lane_index(&e->r), kd_re_splat(&e->r, limit), "mask");
  emit_body(e, pl, st);
  e->mask = NULL;
  LLVMBasicBlockRef end = LLVMGetInsertBlock(e->r.b);
  LLVMBuildBr(e->r.b, join);
  LLVMPositionBuilderAtEnd(e->r.b, join);
  for (int i = 0; i < ns; i++) st[i] = kd_re_phi(&e->r, e->r.vf, in[i], from, st[i], end);
}

/* One pass over the row:
 *   [head:  masked vector up to the gradient row's alignment (non-temporal only)]
 *   block:  blocks of BLOCK vectors:
 *     body:   j, state = phi; emit_body; br j + W < bend, body, flush
 *     flush:  f32 lanes into double lanes; br bend < jend, block, after
 *   after:  state = phi
 *   tail:   masked vector for the last V mod W columns; a last flush
 *   then the double lanes are finalised into row scalars. */
/* Whether element value id, as pass `pass` computes it, reads the logits
 * (not only kept exps and the row cache). */
static int reads_logits(const emitter *e, int pass, kd_node_id id, char *seen) {
  if (seen[id] || kd_re_fnode(&e->r, id)->kind != KD_FUSE_ELEM || kept_exp(e, id)) return 0;
  seen[id] = 1;
  if (id == e->r.s->teacher || id == e->r.s->student) return 1;
  for (int i = 0; i < e->cache.nloads; i++)
    if (e->cache.load[i].pass == pass && e->cache.node[e->cache.load[i].slot] == id) return 0;
  const kd_node *n = kd_re_gnode(&e->r, id);
  for (int i = 0; i < n->nsrc; i++)
    if (reads_logits(e, pass, n->src[i], seen)) return 1;
  return 0;
}

/* What a pass fetches ahead (prefetch_rows): the next row's logits (PF_NEXT)
 * and this row's gradient for writing (PF_GRAD), in a stage of three passes
 * (jsd's, tvd's, the skew KLs') whose last pass reads only the row cache
 * and kept exps, not the logits:
 * - the middle pass reads only what pass 0 brought into L2 and computes
 *   (a log per logit for jsd), so the memory is idle while pass 0, which
 *   streams the logits, waits on it: fetched there, the next row's pass 0
 *   reads L2 (jsd 1.35-1.45 -> 1.25-1.28 CPU ns per logit at 4096 x 50257);
 * - pass 0 computes two exps per logit in the shadow of the gradient's
 *   lines coming in: the gradient pass's stores then find their lines
 *   owned instead of each waiting on a read for ownership. (Fetched in the
 *   middle pass with the next row's logits instead, as before, they took
 *   its memory parallelism: 4 rounds alternating, CPU ns per logit best of
 *   each, 1 and 2 threads, 2048 x 32000 and 4096 x 50257: tvd 1.10-1.35 ->
 *   0.99-1.10, jsd 1.19-1.43 -> 1.08-1.23, skew_fkl 1.37-1.51 -> 1.31-1.38.)
 * Nothing when the last pass reads this row's logits again (abkd's): the
 * next row's would push them out of L2, and its gradient's lines fetched in
 * pass 0 measured no better. Nothing in a stage of two (fkl's): its
 * gradient pass streams its stores and computes little; fetching the next
 * row there lost (fkl 0.92 -> 1.05), and the gradient in pass 0 too (fkl
 * 0.84-0.91 -> 0.89-0.97). */
enum { PF_NEXT = 1, PF_GRAD = 2 };
static int prefetches(emitter *e, int pass) {
  int np = e->r.s->stage[e->r.stage].npasses;
  if (np < 3 || (pass != 0 && pass != np - 2)) return 0;
  pass_plan pl;
  plan_pass(e, np - 1, &pl);
  char *seen = calloc(e->r.n, 1);
  if (!seen) return 0;
  int r = 0;
  for (int gi = 0; gi < pl.ng && !r; gi++) r = reads_logits(e, np - 1, pl.ga[gi], seen);
  for (int k = 0; k < pl.nr && !r; k++) {
    const kd_fuse_node *f = kd_re_fnode(&e->r, pl.red[k]);
    if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE) r = reads_logits(e, np - 1, f->fold_f, seen);
    if (f->role == KD_ROLE_ROWRED && !r) r = reads_logits(e, np - 1, kd_re_gnode(&e->r, pl.red[k])->src[0], seen);
  }
  for (int i = 0; i < pl.nstore && !r; i++) r = reads_logits(e, np - 1, pl.store[i], seen);
  free(seen);
  if (r) return 0;
  return pass == 0 ? (pl.nstore && !e->nontemporal ? PF_GRAD : 0) : PF_NEXT;
}

/* The next row's teacher and student logits at columns [j, j + W), into L2
 * (PF_NEXT; the last row of the kernel's range fetches its own again, which
 * is cached: the row after it is another call's, and a prefetch never
 * faults but its address must stay inside the array for the IR to be
 * defined), and this row's gradient for writing (PF_GRAD, prefetchw). */
static void prefetch_rows(emitter *e, int what) {
  kd_rowemit *r = &e->r;
  if (what & PF_GRAD) {
    LLVMValueRef args[4] = {grad_ptr(e, r->j),
                            LLVMConstInt(r->i32, 1, 0),  /* write: prefetchw */
                            LLVMConstInt(r->i32, 3, 0), LLVMConstInt(r->i32, 1, 0)};
    kd_ir_intrinsic(r->b, "llvm.prefetch", e->ptr, args, 4);
  }
  if (!(what & PF_NEXT)) return;
  LLVMValueRef nx = LLVMBuildAdd(r->b, r->row, kd_re_i64c(r, 1), "");
  LLVMValueRef row = LLVMBuildSelect(r->b, LLVMBuildICmp(r->b, LLVMIntSLT, nx, e->row_end, ""), nx,
                                     r->row, "");
  kd_node_id ids[2] = {r->s->teacher, r->s->student};
  for (int k = 0; k < 2; k++) {
    if (ids[k] == KD_NONE) continue;
    int bf16 = kd_re_gnode(r, ids[k])->dtype == KD_BF16;
    LLVMValueRef base = k == 0 ? e->ptr_teacher : e->ptr_student;
    LLVMValueRef off = LLVMBuildAdd(r->b, LLVMBuildMul(r->b, row, r->V, ""), r->j, "");
    LLVMValueRef args[4] = {LLVMBuildGEP2(r->b, bf16 ? r->i16 : r->f32, base, &off, 1, ""),
                            LLVMConstInt(r->i32, 0, 0),  /* read */
                            LLVMConstInt(r->i32, 2, 0),  /* locality 2: prefetcht1, into L2 */
                            LLVMConstInt(r->i32, 1, 0)}; /* data */
    kd_ir_intrinsic(r->b, "llvm.prefetch", e->ptr, args, 4);
  }
}

static void emit_pass(emitter *e, int pass) {
  pass_plan pl;
  plan_pass(e, pass, &pl);
  if (e->r.st) return;
  e->pass = pass;
  for (size_t i = 0; i < e->r.n; i++) e->slot_load[i] = -1;
  for (int i = 0; i < e->cache.nloads; i++)
    if (e->cache.load[i].pass == pass)
      e->slot_load[e->cache.node[e->cache.load[i].slot]] = e->cache.load[i].slot;
  /* row scalars and globals the pass reads, before the loop */
  char *seen = calloc(e->r.n, 1);
  if (!seen) {
    kd_re_fail(&e->r, KD_ERR_NOMEM, "out of memory");
    return;
  }
  kd_re_prepare_pass(&e->r, pl.ga, pl.ng, pl.red, pl.nr, pl.store, pl.nstore, seen);
  /* the kept exps it reads */
  kd_node_id xs[MAX_STATE];
  int nx = 0;
  mark_pass(e, pass, seen);
  memset(e->xscale, 0, e->r.n * sizeof *e->xscale);
  for (kd_node_id id = 0; id < (kd_node_id)e->r.n && nx < MAX_STATE; id++)
    if (seen[id] && kept_exp(e, id)) xs[nx++] = id;
  free(seen);

  int ns = pl.ng + pl.nr;
  LLVMValueRef st[MAX_STATE], phis[MAX_STATE];
  for (int i = 0; i < ns; i++)
    st[i] = i < pl.ng || is_max(e, &pl, i - pl.ng) ? kd_ir_fconst(e->r.vf, -FLT_MAX) : LLVMConstNull(e->r.vf);

  /* With non-temporal gradient stores the main loop starts where the
   * gradient row is aligned to a whole vector (W * 4 bytes): an unaligned
   * non-temporal store would be split into 8-byte pieces. (The head
   * depends on where the gradient is: only its pass has one, so no sum
   * depends on it; kept exps, whose blocks must line up, are off.) */
  LLVMValueRef j0 = kd_re_i64c(&e->r, 0);
  e->aligned = e->nontemporal && pl.nstore > 0;
  if (e->aligned) {
    LLVMValueRef addr = LLVMBuildPtrToInt(e->r.b, grad_ptr(e, kd_re_i64c(&e->r, 0)), e->r.i64, "");
    LLVMValueRef mis = LLVMBuildAnd(e->r.b, LLVMBuildLShr(e->r.b, addr, kd_re_i64c(&e->r, grad_size(e) == 2 ? 1 : 2), ""),
                                    kd_re_i64c(&e->r, e->r.W - 1), "");
    LLVMValueRef head = LLVMBuildAnd(e->r.b, LLVMBuildSub(e->r.b, kd_re_i64c(&e->r, e->r.W), mis, ""),
                                     kd_re_i64c(&e->r, e->r.W - 1), "");
    j0 = LLVMBuildSelect(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, head, e->r.V, ""), head, e->r.V, "j0");
    masked_step(e, &pl, st, kd_re_i64c(&e->r, 0), j0);
  }
  LLVMValueRef jend = LLVMBuildAdd(e->r.b, j0,
                                   LLVMBuildAnd(e->r.b, LLVMBuildSub(e->r.b, e->r.V, j0, ""),
                                                kd_re_i64c(&e->r, -(long long)e->r.W), ""), "jend");
  dstate d;
  dstate_init(e, &pl, &d);
  LLVMValueRef init[MAX_STATE], dinit[2 * MAX_STATE];
  memcpy(init, st, (size_t)ns * sizeof *st);
  for (int i = 0; i < pl.ng; i++) dinit[i] = d.mref[i];
  for (int r = 0; r < pl.nr; r++) dinit[pl.ng + r] = d.dacc[r];

  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef outer = kd_re_block(&e->r, "block"), body = kd_re_block(&e->r, "body"),
                    bflush = kd_re_block(&e->r, "flush"), bafter = kd_re_block(&e->r, "after");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, j0, jend, ""), outer, bafter);

  /* block: jb, state, double lanes = phi; bend = min(jb + BLOCK W, jend) */
  LLVMPositionBuilderAtEnd(e->r.b, outer);
  LLVMValueRef jb = LLVMBuildPhi(e->r.b, e->r.i64, "jb");
  LLVMValueRef ophi[MAX_STATE], dphi[2 * MAX_STATE];
  for (int i = 0; i < ns; i++) ophi[i] = LLVMBuildPhi(e->r.b, e->r.vf, "");
  for (int i = 0; i < pl.ng; i++) d.mref[i] = dphi[i] = LLVMBuildPhi(e->r.b, e->r.vf, "");
  for (int r = 0; r < pl.nr; r++) d.dacc[r] = dphi[pl.ng + r] = LLVMBuildPhi(e->r.b, vf64(e), "");
  LLVMValueRef bend = LLVMBuildAdd(e->r.b, jb, kd_re_i64c(&e->r, (long long)BLOCK * e->r.W), "");
  bend = LLVMBuildSelect(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, bend, jend, ""), bend, jend, "bend");
  LLVMValueRef bi = LLVMBuildAdd(e->r.b,
                                 LLVMBuildUDiv(e->r.b, LLVMBuildSub(e->r.b, jb, j0, ""),
                                               kd_re_i64c(&e->r, (long long)BLOCK * e->r.W), ""),
                                 kd_re_i64c(&e->r, 1), "bi");
  block_scales(e, xs, nx, bi);
  LLVMBuildBr(e->r.b, body);

  /* body: j, state = phi; emit_body; br j + W < bend, body, flush */
  LLVMPositionBuilderAtEnd(e->r.b, body);
  LLVMValueRef j = LLVMBuildPhi(e->r.b, e->r.i64, "j");
  for (int i = 0; i < ns; i++) st[i] = phis[i] = LLVMBuildPhi(e->r.b, e->r.vf, "");
  e->r.j = j;
  e->mask = NULL;
  e->jblock = jb;
  emit_body(e, &pl, st);
  int pf = prefetches(e, pass);
  if (pf) prefetch_rows(e, pf);
  e->jblock = NULL;
  LLVMValueRef jn = LLVMBuildAdd(e->r.b, j, kd_re_i64c(&e->r, e->r.W), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->r.b);
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, jn, bend, ""), body, bflush);
  LLVMAddIncoming(j, &jb, &outer, 1);
  LLVMAddIncoming(j, &jn, &latch, 1);
  for (int i = 0; i < ns; i++) {
    LLVMAddIncoming(phis[i], &ophi[i], &outer, 1);
    LLVMAddIncoming(phis[i], &st[i], &latch, 1);
  }

  /* flush: the block's f32 lanes into the double lanes; next block */
  LLVMPositionBuilderAtEnd(e->r.b, bflush);
  flush(e, &pl, st, &d);
  save_refs(e, &pl, st, bi);
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, bend, jend, ""), outer, bafter);
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

  LLVMPositionBuilderAtEnd(e->r.b, bafter);
  for (int i = 0; i < ns; i++) st[i] = kd_re_phi(&e->r, e->r.vf, init[i], pre, st[i], bflush);
  for (int i = 0; i < pl.ng; i++) d.mref[i] = kd_re_phi(&e->r, e->r.vf, dinit[i], pre, dnew[i], bflush);
  for (int r = 0; r < pl.nr; r++)
    d.dacc[r] = kd_re_phi(&e->r, vf64(e), dinit[pl.ng + r], pre, dnew[pl.ng + r], bflush);
  e->aligned = 0;
  block_scales(e, xs, nx, kd_re_i64c(&e->r, 0));
  masked_step(e, &pl, st, jend, e->r.V);
  save_refs(e, &pl, st, kd_re_i64c(&e->r, 0));
  flush(e, &pl, st, &d);
  finalize(e, &pl, st, &d);
}

/* ---- functions ----------------------------------------------------------------- */

static void begin_function(emitter *e, const char *suffix, LLVMTypeRef ty) {
  kd_re_begin_function(&e->r, suffix, ty);
  LLVMSetLinkage(e->r.fn, LLVMInternalLinkage); /* reached through the program only */
  e->args = LLVMGetParam(e->r.fn, 0);
  e->ptr_teacher = load_field(e, 0, e->ptr);
  e->ptr_student = load_field(e, 1, e->ptr);
  e->r.p_labels = load_field(e, 2, e->ptr);
  e->ptr_grad = load_field(e, 3, e->ptr);
  e->r.p_rows = load_field(e, 4, e->ptr);
  e->r.p_globals = load_field(e, 5, e->ptr);
  e->r.N = load_field(e, 6, e->r.i64);
  e->r.V = load_field(e, 7, e->r.i64);
}

/* for r in [begin, end): the stage's passes, then the rows of its
 * reductions over rows; on to `done`. */
static void emit_row_loop(emitter *e, LLVMValueRef begin, LLVMValueRef end, LLVMBasicBlockRef done) {
  plan_cache(e);
  LLVMBasicBlockRef start = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef head = kd_re_block(&e->r, "row"), rbody = kd_re_block(&e->r, "row.body");
  LLVMBuildBr(e->r.b, head);
  LLVMPositionBuilderAtEnd(e->r.b, head);
  e->r.row = LLVMBuildPhi(e->r.b, e->r.i64, "r");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, e->r.row, end, ""), rbody, done);
  LLVMPositionBuilderAtEnd(e->r.b, rbody);
  memset(e->r.rval, 0, e->r.n * sizeof *e->r.rval);
  for (int p = 0; p < e->r.s->stage[e->r.stage].npasses && !e->r.st; p++) emit_pass(e, p);
  kd_re_store_row_reds(&e->r);
  LLVMValueRef next = LLVMBuildAdd(e->r.b, e->r.row, kd_re_i64c(&e->r, 1), "");
  LLVMBasicBlockRef last = LLVMGetInsertBlock(e->r.b);
  LLVMBuildBr(e->r.b, head);
  LLVMAddIncoming(e->r.row, &begin, &start, 1);
  LLVMAddIncoming(e->r.row, &next, &last, 1);
}

static void mxcsr_call(emitter *e, const char *name, LLVMValueRef slot) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(e->r.M, id, NULL, 0);
  LLVMBuildCall2(e->r.b, LLVMIntrinsicGetType(e->r.C, id, NULL, 0), f, &slot, 1, "");
}

/* On AVX-512 hosts a row kernel runs with MXCSR's flush-to-zero and
 * denormals-are-zero bits set, and puts the caller's MXCSR back on the way
 * out. The AVX-512 exp gives subnormal results (e^x for x in [-104, -87]),
 * and kept exps times their block's scale can be subnormal; some x86 cores
 * take a microcode assist of about a hundred cycles for each instruction
 * that reads or writes one (Intel's optimization manual; AMD's Zen 4, this
 * machine, does not, so nothing here measures it). The bits also make the
 * results the same whatever the caller's own MXCSR (test_fpenv). Returns the
 * slot that holds the caller's MXCSR. */
static LLVMValueRef enter_ftz(emitter *e) {
  LLVMValueRef old = LLVMBuildAlloca(e->r.be, e->r.i32, "mxcsr");
  LLVMValueRef mine = LLVMBuildAlloca(e->r.be, e->r.i32, "mxcsr.ftz");
  mxcsr_call(e, "llvm.x86.sse.stmxcsr", old);
  LLVMValueRef v = LLVMBuildLoad2(e->r.b, e->r.i32, old, "");
  LLVMBuildStore(e->r.b, LLVMBuildOr(e->r.b, v, LLVMConstInt(e->r.i32, 0x8040, 0), ""), mine);
  mxcsr_call(e, "llvm.x86.sse.ldmxcsr", mine);
  return old;
}

/* row<k>: the row loop; with kept exps, two: one that keeps them for rows
 * that fit the cache, one that recomputes them. */
static LLVMValueRef emit_row_kernel(emitter *e, int k) {
  char suffix[16];
  snprintf(suffix, sizeof suffix, "row%d", k);
  e->r.stage = k;
  begin_function(e, suffix, e->row_ty);
  LLVMValueRef mxcsr = e->avx512 ? enter_ftz(e) : NULL;
  plan_keep(e);
  LLVMValueRef begin = LLVMGetParam(e->r.fn, 1), end = LLVMGetParam(e->r.fn, 2);
  e->row_end = end;
  e->scratch = LLVMGetParam(e->r.fn, 3);
  LLVMBasicBlockRef done = kd_re_block(&e->r, "done");
  if (e->nkeep) {
    LLVMBasicBlockRef kept = kd_re_block(&e->r, "rows.kept"), recompute = kd_re_block(&e->r, "rows.recompute");
    LLVMValueRef fits = LLVMBuildICmp(e->r.b, LLVMIntSLE, e->r.V, kd_re_i64c(&e->r, e->keep_maxv), "");
    LLVMBuildCondBr(e->r.b, fits, kept, recompute);
    LLVMPositionBuilderAtEnd(e->r.b, kept);
    e->expc = 1;
    emit_row_loop(e, begin, end, done);
    LLVMPositionBuilderAtEnd(e->r.b, recompute);
  }
  e->expc = 0;
  emit_row_loop(e, begin, end, done);
  LLVMPositionBuilderAtEnd(e->r.b, done);
  if (mxcsr) mxcsr_call(e, "llvm.x86.sse.ldmxcsr", mxcsr);
  LLVMBuildRetVoid(e->r.b);
  return e->r.fn;
}

/* sum_i rows[slot * N + i], in row order (deterministic) */
static LLVMValueRef emit_row_sum(emitter *e, int slot) {
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef loop = kd_re_block(&e->r, "sum"), done = kd_re_block(&e->r, "sum.done");
  LLVMValueRef base = LLVMBuildMul(e->r.b, kd_re_i64c(&e->r, slot), e->r.N, "");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSGT, e->r.N, kd_re_i64c(&e->r, 0), ""), loop, done);
  LLVMPositionBuilderAtEnd(e->r.b, loop);
  LLVMValueRef i = LLVMBuildPhi(e->r.b, e->r.i64, "i");
  LLVMValueRef acc = LLVMBuildPhi(e->r.b, e->r.f64, "acc");
  LLVMValueRef idx = LLVMBuildAdd(e->r.b, base, i, "");
  LLVMValueRef x = LLVMBuildLoad2(e->r.b, e->r.f64, LLVMBuildGEP2(e->r.b, e->r.f64, e->r.p_rows, &idx, 1, ""), "");
  LLVMValueRef acc2 = LLVMBuildFAdd(e->r.b, acc, x, "");
  LLVMValueRef i2 = LLVMBuildAdd(e->r.b, i, kd_re_i64c(&e->r, 1), "");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, i2, e->r.N, ""), loop, done);
  LLVMValueRef z = kd_re_i64c(&e->r, 0), zf = LLVMConstReal(e->r.f64, 0);
  LLVMAddIncoming(i, &z, &pre, 1);
  LLVMAddIncoming(i, &i2, &loop, 1);
  LLVMAddIncoming(acc, &zf, &pre, 1);
  LLVMAddIncoming(acc, &acc2, &loop, 1);
  LLVMPositionBuilderAtEnd(e->r.b, done);
  return kd_re_phi(&e->r, e->r.f64, zf, pre, acc2, loop);
}

/* A reduction over rows in a step: the sum of its rows. */
static LLVMValueRef step_row_sum(kd_rowemit *r, kd_node_id id) {
  LLVMValueRef sum = emit_row_sum((emitter *)r, kd_re_fnode(r, id)->slot);
  return kd_re_convert(r, sum, KD_CL_F, kd_vclass_of(kd_re_gnode(r, id)->dtype));
}

/* step<k>: the global scalars of phase k, stored to a->globals as doubles;
 * the last step also stores outputs that are plain constants. */
static LLVMValueRef emit_step(emitter *e, int k) {
  char suffix[16];
  snprintf(suffix, sizeof suffix, "step%d", k);
  begin_function(e, suffix, e->step_ty);
  kd_re_emit_globals(&e->r, k, 1, step_row_sum);
  LLVMBuildRetVoid(e->r.b);
  return e->r.fn;
}

/* The kd_loss_program constant (runtime/lossrun.h; field order is the ABI). */
static void emit_program(emitter *e, LLVMValueRef *rows, LLVMValueRef *steps) {
  const kd_schedule *s = e->r.s;
  LLVMTypeRef rt = LLVMArrayType(e->ptr, KD_LOSS_MAX_STAGES);
  LLVMTypeRef st = LLVMArrayType(e->ptr, KD_LOSS_MAX_STAGES + 1);
  LLVMTypeRef fields[14] = {e->r.i32, e->r.i32, e->r.i32, e->r.i32, e->r.i32, e->r.i32, e->r.i32,
                            e->r.i32, e->r.i32, e->r.i32, e->r.i32, e->r.i32, rt,     st};
  LLVMTypeRef pt = LLVMStructTypeInContext(e->r.C, fields, 14, 0);
  LLVMValueRef rv[KD_LOSS_MAX_STAGES], sv[KD_LOSS_MAX_STAGES + 1];
  for (int k = 0; k < KD_LOSS_MAX_STAGES; k++) rv[k] = rows[k] ? rows[k] : LLVMConstNull(e->ptr);
  for (int k = 0; k <= KD_LOSS_MAX_STAGES; k++) sv[k] = steps[k] ? steps[k] : LLVMConstNull(e->ptr);
  kd_node_id loss = kd_graph_find_output(e->r.g, "loss");
  const kd_node *t = s->teacher == KD_NONE ? NULL : kd_re_gnode(&e->r, s->teacher);
  int32_t vals[12] = {(int32_t)KD_LOSS_MAGIC, KD_LOSS_ABI_VERSION, s->nstages, s->nslots,
                      (int32_t)e->r.n, loss, kd_graph_find_output(e->r.g, "grad") != KD_NONE,
                      t ? (int32_t)t->dtype : -1, (int32_t)kd_re_gnode(&e->r, s->student)->dtype,
                      s->labels != KD_NONE, e->nscratch, e->grad_bf16 ? KD_BF16 : KD_F32};
  LLVMValueRef init[14];
  for (int i = 0; i < 12; i++) init[i] = LLVMConstInt(e->r.i32, (unsigned long long)(uint32_t)vals[i], 0);
  init[12] = LLVMConstArray2(e->ptr, rv, KD_LOSS_MAX_STAGES);
  init[13] = LLVMConstArray2(e->ptr, sv, KD_LOSS_MAX_STAGES + 1);
  char name[160];
  snprintf(name, sizeof name, "%s_program", e->r.name);
  LLVMValueRef gv = LLVMAddGlobal(e->r.M, pt, name);
  LLVMSetInitializer(gv, LLVMConstNamedStruct(pt, init, 14));
  LLVMSetGlobalConstant(gv, 1);
}

/* The CPU's types beyond the shared scalars (kd_re_init). */
static void init_types(emitter *e) {
  LLVMContextRef C = e->r.C;
  e->ptr = LLVMPointerTypeInContext(C, 0);
  e->r.vf = LLVMVectorType(e->r.f32, (unsigned)e->r.W);
  LLVMTypeRef f[8] = {e->ptr, e->ptr, e->ptr, e->ptr, e->ptr, e->ptr, e->r.i64, e->r.i64};
  e->args_ty = LLVMStructTypeInContext(C, f, 8, 0);
  LLVMTypeRef rp[4] = {e->ptr, e->r.i64, e->r.i64, e->ptr};
  e->row_ty = LLVMFunctionType(LLVMVoidTypeInContext(C), rp, 4, 0);
  e->step_ty = LLVMFunctionType(LLVMVoidTypeInContext(C), rp, 1, 0);
}

static LLVMValueRef elem_hook(kd_rowemit *r, kd_node_id id) { return elem_value((emitter *)r, id); }

/* Fills module m with the loss's functions and program, for a host CPU
 * with these LLVM features. */
static kd_status emit_module(const kd_schedule *s, const kd_loss_options *o, int width,
                             const char *features, kd_module *m, char *err, size_t errlen) {
  emitter e = {0};
  kd_re_init(&e.r, s, o->name ? o->name : "kd_loss", "codegen", m->mod, err, errlen);
  e.r.W = width;
  e.r.elem_value = elem_hook;
  e.r.load_logits = load_logits;
  e.r.elem_special = elem_special;
  e.r.exp = emit_exp;
  e.r.log = emit_log;
  e.nontemporal = o->nontemporal > 0;
  e.grad_bf16 = o->grad_dtype == KD_BF16;
  e.slot_load = malloc((e.r.n + 1) * sizeof *e.slot_load);
  e.xscale = calloc(e.r.n + 1, sizeof *e.xscale);
  e.r.vzero = calloc(e.r.n + 1, sizeof *e.r.vzero);
  if (!e.r.vzero || !e.slot_load || !e.xscale) kd_re_fail(&e.r, KD_ERR_NOMEM, "codegen: out of memory");
  for (size_t i = 0; !e.r.st && i < e.r.n; i++) e.slot_load[i] = -1;
  init_types(&e);
  e.avx512 = kd_avx512_fits(features, e.r.vf);
  if (kd_graph_find_output(e.r.g, "loss") == KD_NONE)
    kd_re_fail(&e.r, KD_ERR_INVALID, "codegen: the graph has no output \"loss\"");
  for (size_t i = 0; i < kd_graph_noutputs(e.r.g); i++) {
    kd_fuse_kind kind = s->node[kd_graph_output(e.r.g, i)].kind;
    const char *name = kd_graph_output_name(e.r.g, i);
    int ok = kind == KD_FUSE_GLOBAL ? strcmp(name, "grad") != 0
                                    : !strcmp(name, "grad") && kind == KD_FUSE_ELEM;
    if (!ok)
      kd_re_fail(&e.r, KD_ERR_UNSUPPORTED,
                 "codegen: output \"%s\": a compiled loss has scalar outputs and one [N, V] \"grad\"", name);
  }
  LLVMValueRef rows[KD_LOSS_MAX_STAGES] = {0}, steps[KD_LOSS_MAX_STAGES + 1] = {0};
  for (int k = 0; k <= s->nstages && !e.r.st; k++) {
    steps[k] = emit_step(&e, k);
    if (k < s->nstages && s->stage[k].has_rows) rows[k] = emit_row_kernel(&e, k);
  }
  if (!e.r.st) emit_program(&e, rows, steps);
  kd_re_dispose(&e.r);
  free(e.slot_load);
  free(e.xscale);
  free(e.r.vzero);
  return e.r.st;
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
  if (o->grad_dtype != KD_F32 && o->grad_dtype != KD_BF16) {
    snprintf(err, errlen, "codegen: the gradient is stored as f32 or bf16, not %s", kd_dtype_name(o->grad_dtype));
    return KD_ERR_INVALID;
  }
  int w = o->vector_width > 0 ? o->vector_width : kd_session_vector_width(s);
  if (w > 64 || (w & (w - 1))) {
    snprintf(err, errlen, "codegen: vector width %d is not a power of 2 up to 64", w);
    return KD_ERR_INVALID;
  }
  if ((st = kd_session_module_new(s, o->name ? o->name : "kd_loss", m))) return st;
  if ((st = emit_module(*sched, o, w, kd_session_features(s), m, err, errlen))) return st;
  return kd_session_optimize(s, m, err, errlen);
}

kd_status kd_loss_compile(const kd_graph *g, const kd_loss_options *o, kd_loss **out, char *err,
                          size_t errlen) {
  static const kd_loss_options defaults = {0};
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
  static const kd_loss_options defaults = {0};
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
