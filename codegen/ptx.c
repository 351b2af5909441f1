/* The NVPTX row-kernel emitter: a kd_schedule becomes PTX kernels.
 *
 * For a loss with K stages it emits, in an nvptx64-nvidia-cuda module,
 *   <name>_row<k>(teacher, student, labels, grad, rows, globals, N, V)
 *       one block of B threads per row (blockIdx.x is the row)
 *   <name>_step<k>(same arguments)      one block of KD_GPU_STEP_THREADS threads:
 *                                       the global scalars of phase k
 * with the PTX kernel calling convention. A row kernel runs the stage's
 * passes; each pass is two loops over the row with a stride of the block:
 *   - 4 columns per thread per iteration with 16-byte loads (8 for bf16)
 *     and stores, when V % 4 == 0 and the rows are aligned (checked at run
 *     time: a [N, V] tensor from PyTorch is), over [0, V);
 *   - one column per iteration over the rest (all of the row otherwise).
 * Each thread keeps its reductions in f32 registers: a running max per
 * online group and sums rescaled when it moves (the CPU kernels' online
 * folding, codegen/cpu.c). After the loops the threads' states are merged
 * with the max-and-rescale rule, first across the warp with
 * shfl.sync.bfly, then across warps through shared memory in warp order,
 * so every thread ends with the same, deterministic, row scalars. Row
 * scalars are computed in double, like the CPU's; exp and log of a double
 * (rare: once a row) go through the f32 mathlib (about 1 ulp of f32).
 * Per-row values of reductions over rows go to rows[slot * N + row]; the
 * steps sum them in double in a fixed order (contiguous chunks, then the
 * chunks in order). No row cache: a later pass
 * recomputes what it needs (a GPU recomputes an exp faster than it reloads
 * a float).
 *
 * Value classes as in cpu.c: F (f32 lanes in loops, double in row and step
 * code), I (i64), B (i1). Element values are vectors of W = 4 or 1 lanes.
 * Scalar values and the expression emitter are shared with cpu.c (rowemit.h).
 *
 * kd_ptx_host_compile builds the same kernels for the host JIT, with the
 * ids, shuffles and barriers as calls (tests/gpu/test_ptx_emu.c runs them
 * a thread per GPU thread): the kernels' logic is tested without a GPU.
 *
 * Legend: N = rows, V = vocabulary, B = threads per block, W = lanes. */
#include "ptx.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "../passes/fuse.h"
#include "../runtime/fileio.h"
#include "elementwise.h"
#include "mathlib.h"
#include "rowemit.h"
#include "session.h"

#define MAX_STATE 64 /* online groups + reductions in one pass */
#define MAX_WARPS 32 /* 1024 threads */
#define TRIPLE "nvptx64-nvidia-cuda"


/* The PTX emitter: the shared core (rowemit.h; first, so the hooks can
 * cast it back; W: lanes of the body being emitted, 4 or 1) and what only
 * the kernels have. */
typedef struct emitter {
  kd_rowemit r;
  int block; /* B */
  int emu;   /* host emulation: ids, shuffles and barriers are kd_emu_* calls */
  int grad_bf16; /* the gradient is stored as bf16 (else f32) */
  LLVMTypeRef gptr, kern_ty;
  LLVMValueRef shared;   /* [MAX_WARPS * MAX_STATE] f32 in addrspace(3): row kernels */
  LLVMValueRef shared_d; /* [KD_GPU_STEP_THREADS] f64 in addrspace(3): steps */

  /* per kernel */
  LLVMValueRef tid, lane, warp, vend;
  LLVMValueRef p_teacher, p_student, p_grad;
  LLVMValueRef t_row, s_row, g_row; /* teacher, student, grad + row * V */
} emitter;

static LLVMValueRef i32c(const emitter *e, long long v) {
  return LLVMConstInt(e->r.i32, (unsigned long long)v, 1);
}

static void set_width(emitter *e, int w) {
  e->r.W = w;
  e->r.vf = LLVMVectorType(e->r.f32, (unsigned)w);
}

/* ---- small IR helpers ------------------------------------------------------ */

static LLVMValueRef lane_of(emitter *e, LLVMValueRef v, int i) {
  return LLVMBuildExtractElement(e->r.b, v, kd_re_i64c(&e->r, i), "");
}

/* A call of a non-overloaded NVVM intrinsic, declared on first use. */
static LLVMValueRef nvvm(emitter *e, const char *name, LLVMTypeRef ret, LLVMValueRef *args,
                         unsigned nargs) {
  LLVMTypeRef pt[4];
  for (unsigned i = 0; i < nargs; i++) pt[i] = LLVMTypeOf(args[i]);
  LLVMTypeRef fty = LLVMFunctionType(ret, pt, nargs, 0);
  LLVMValueRef f = LLVMGetNamedFunction(e->r.M, name);
  if (!f) f = LLVMAddFunction(e->r.M, name, fty);
  return LLVMBuildCall2(e->r.b, fty, f, args, nargs, "");
}

/* threadIdx.x or blockIdx.x ("tid", "ctaid") */
static LLVMValueRef sreg(emitter *e, const char *which) {
  char name[64];
  snprintf(name, sizeof name, e->emu ? "kd_emu_%s" : "llvm.nvvm.read.ptx.sreg.%s.x", which);
  return LLVMBuildZExt(e->r.b, nvvm(e, name, e->r.i32, NULL, 0), e->r.i64, which);
}

static void barrier(emitter *e) {
  nvvm(e, e->emu ? "kd_emu_barrier" : "llvm.nvvm.barrier0", LLVMVoidTypeInContext(e->r.C), NULL, 0);
}

/* x from the lane whose id is this lane's xor off (all 32 lanes take part) */
static LLVMValueRef shfl_xor(emitter *e, LLVMValueRef x, int off) {
  if (e->emu) {
    LLVMValueRef args[2] = {x, i32c(e, off)};
    return nvvm(e, "kd_emu_shfl_bfly", e->r.f32, args, 2);
  }
  LLVMValueRef args[4] = {i32c(e, -1), x, i32c(e, off), i32c(e, 0x1f)};
  return nvvm(e, "llvm.nvvm.shfl.sync.bfly.f32", e->r.f32, args, 4);
}

/* ---- the expression emitter's hooks ------------------------------------------ */

/* f32 lanes through the mathlib; a double through f32 too, since NVPTX has
 * no libm to call (a row or global value: ~1 ulp of f32 relative). */
static LLVMValueRef emit_math(kd_rowemit *r, LLVMValueRef (*fn)(LLVMBuilderRef, LLVMValueRef),
                              LLVMValueRef x) {
  if (LLVMTypeOf(x) != r->f64) return fn(r->b, x);
  LLVMValueRef y = fn(r->b, LLVMBuildFPTrunc(r->b, x, r->f32, ""));
  return LLVMBuildFPExt(r->b, y, r->f64, "");
}

static LLVMValueRef emit_exp(kd_rowemit *r, LLVMValueRef x) { return emit_math(r, kd_emit_exp, x); }
static LLVMValueRef emit_log(kd_rowemit *r, LLVMValueRef x) { return emit_math(r, kd_emit_log, x); }

/* ---- global, row and element values ------------------------------------------ */

static LLVMValueRef gep(LLVMBuilderRef b, LLVMTypeRef t, LLVMValueRef p, LLVMValueRef idx) {
  return LLVMBuildGEP2(b, t, p, &idx, 1, "");
}

/* teacher or student at [row, j .. j + W), widened to f32; W = 4 only on
 * the aligned path, so the wide load is aligned */
static LLVMValueRef load_logits(kd_rowemit *r, kd_node_id id) {
  emitter *e = (emitter *)r;
  int bf16 = kd_re_gnode(r, id)->dtype == KD_BF16;
  LLVMTypeRef et = bf16 ? r->i16 : r->f32;
  LLVMTypeRef vt = LLVMVectorType(et, (unsigned)r->W);
  LLVMValueRef base = id == r->s->teacher ? e->t_row : e->s_row;
  LLVMValueRef x = LLVMBuildLoad2(r->b, vt, gep(r->b, et, base, r->j), "");
  LLVMSetAlignment(x, (unsigned)(r->W * (bf16 ? 2 : 4)));
  return bf16 ? kd_re_bf16_to_f32(r, x) : x;
}

/* exp(a - lse(a)) or exp(a - max(a)): the argument is <= 0 up to rounding */
static int is_softmax_exp(const emitter *e, const kd_node *n) {
  if (n->op != KD_IR_EXP || kd_vclass_of(n->dtype) != KD_CL_F) return 0;
  const kd_node *d = kd_re_gnode(&e->r, n->src[0]);
  if (d->op != KD_IR_SUB || kd_re_fnode(&e->r, d->src[1])->role != KD_ROLE_ROWRED) return 0;
  const kd_node *r = kd_re_gnode(&e->r, d->src[1]);
  return (r->op == KD_IR_LSE || r->op == KD_IR_RMAX) && r->src[0] == d->src[0];
}

/* The cheaper exp of a value <= 0. */
static LLVMValueRef elem_special(kd_rowemit *r, kd_node_id id) {
  const kd_node *n = kd_re_gnode(r, id);
  if (!is_softmax_exp((emitter *)r, n)) return NULL;
  return kd_emit_exp_nonpos(r->b, kd_re_elem_value(r, n->src[0]));
}

/* ---- one pass over the row ------------------------------------------------------- */

typedef struct pass_plan {
  int ng;                   /* online groups: state[0 .. ng) is each running max */
  kd_node_id ga[MAX_STATE]; /* the group's a */
  int gexp[MAX_STATE];
  int nr; /* reductions: state[ng + i] is reduction i's accumulator */
  kd_node_id red[MAX_STATE];
  int rgroup[MAX_STATE]; /* the group of an online reduction, or -1 (plain SUM) */
  int nstore;
  kd_node_id store[MAX_STATE];
} pass_plan;

static void plan_pass(emitter *e, int pass, pass_plan *pl) {
  memset(pl, 0, sizeof *pl);
  for (kd_node_id id = 0; id < (kd_node_id)e->r.n; id++) {
    const kd_fuse_node *f = kd_re_fnode(&e->r, id);
    if (!kd_fuse_in_stage(e->r.s, id, e->r.stage)) continue;
    if (f->kind == KD_FUSE_ELEM && kd_re_is_output(&e->r, id) && f->avail == pass && pl->nstore < MAX_STATE)
      pl->store[pl->nstore++] = id;
    if ((f->role != KD_ROLE_ROWRED && f->role != KD_ROLE_FOLDED) || f->pass != pass) continue;
    if (pl->ng + pl->nr + 1 >= MAX_STATE) {
      kd_re_fail(&e->r, KD_ERR_UNSUPPORTED, "ptx: more than %d reductions in one pass", MAX_STATE);
      return;
    }
    kd_opcode op = kd_re_gnode(&e->r, id)->op;
    int gi = -1;
    if (f->role == KD_ROLE_FOLDED || op == KD_IR_LSE || op == KD_IR_RMAX) {
      kd_node_id a = kd_re_online_a(&e->r, id);
      for (gi = 0; gi < pl->ng && pl->ga[gi] != a; gi++) {}
      if (gi == pl->ng) pl->ga[pl->ng++] = a;
      if (op != KD_IR_RMAX) pl->gexp[gi] = 1;
    }
    pl->red[pl->nr] = id;
    pl->rgroup[pl->nr++] = gi;
  }
}

static int online_sum(const emitter *e, const pass_plan *pl, int r, int gi) {
  return pl->rgroup[r] == gi && kd_re_gnode(&e->r, pl->red[r])->op != KD_IR_RMAX;
}

/* Merges state b into state a (both scalars f32): per group, the larger
 * max wins and each side's sums are rescaled to it; plain sums add. Used
 * in the loop (b: one body's contribution) and across threads. */
static void merge(emitter *e, const pass_plan *pl, LLVMValueRef *a, LLVMValueRef *b) {
  LLVMValueRef *ma = a, *mb = b, *xa = a + pl->ng, *xb = b + pl->ng;
  for (int gi = 0; gi < pl->ng; gi++) {
    LLVMValueRef mn = LLVMBuildSelect(e->r.b, LLVMBuildFCmp(e->r.b, LLVMRealOGT, mb[gi], ma[gi], ""), mb[gi],
                                      ma[gi], "");
    if (pl->gexp[gi]) {
      /* both maxima are >= -FLT_MAX: the differences are <= 0, never nan */
      LLVMValueRef sa = kd_emit_exp_nonpos(e->r.b, LLVMBuildFSub(e->r.b, ma[gi], mn, ""));
      LLVMValueRef sb = kd_emit_exp_nonpos(e->r.b, LLVMBuildFSub(e->r.b, mb[gi], mn, ""));
      for (int r = 0; r < pl->nr; r++)
        if (online_sum(e, pl, r, gi))
          xa[r] = kd_ir_fma(e->r.b, xa[r], sa, LLVMBuildFMul(e->r.b, xb[r], sb, ""));
    }
    ma[gi] = mn;
  }
  for (int r = 0; r < pl->nr; r++)
    if (pl->rgroup[r] < 0) xa[r] = LLVMBuildFAdd(e->r.b, xa[r], xb[r], "");
}

static LLVMValueRef hsum(emitter *e, LLVMValueRef v) {
  LLVMValueRef s = lane_of(e, v, 0);
  for (int i = 1; i < e->r.W; i++) s = LLVMBuildFAdd(e->r.b, s, lane_of(e, v, i), "");
  return s;
}

/* the largest lane; NaN lanes never win (x > m is false for them) */
static LLVMValueRef hmax(emitter *e, LLVMValueRef v, LLVMValueRef m) {
  for (int i = 0; i < e->r.W; i++) {
    LLVMValueRef x = lane_of(e, v, i);
    m = LLVMBuildSelect(e->r.b, LLVMBuildFCmp(e->r.b, LLVMRealOGT, x, m, ""), x, m, "");
  }
  return m;
}

/* The running max of group gi moves to m_new: rescale its sums by exp(m -
 * m_new), in a branch taken only when it grew (rarely, once the row's large
 * values have been seen). */
static void rescale(emitter *e, const pass_plan *pl, int gi, LLVMValueRef m, LLVMValueRef m_new,
                    LLVMValueRef *acc) {
  LLVMBasicBlockRef from = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef bscale = kd_re_block(&e->r, "rescale"), bjoin = kd_re_block(&e->r, "rescaled");
  LLVMBuildCondBr(e->r.b, LLVMBuildFCmp(e->r.b, LLVMRealOGT, m_new, m, ""), bscale, bjoin);
  LLVMPositionBuilderAtEnd(e->r.b, bscale);
  LLVMValueRef sc = kd_emit_exp_nonpos(e->r.b, LLVMBuildFSub(e->r.b, m, m_new, ""));
  LLVMValueRef scaled[MAX_STATE];
  for (int r = 0; r < pl->nr; r++)
    if (online_sum(e, pl, r, gi)) scaled[r] = LLVMBuildFMul(e->r.b, acc[r], sc, "");
  LLVMBuildBr(e->r.b, bjoin);
  LLVMPositionBuilderAtEnd(e->r.b, bjoin);
  for (int r = 0; r < pl->nr; r++)
    if (online_sum(e, pl, r, gi)) acc[r] = kd_re_phi(&e->r, e->r.f32, acc[r], from, scaled[r], bscale);
}

static void store_output(emitter *e, kd_node_id id) {
  LLVMValueRef v = kd_re_elem_f(&e->r, id);
  if (e->grad_bf16) v = kd_re_f32_to_bf16(&e->r, v);
  LLVMValueRef st = LLVMBuildStore(e->r.b, v, gep(e->r.b, e->grad_bf16 ? e->r.i16 : e->r.f32, e->g_row, e->r.j));
  LLVMSetAlignment(st, (unsigned)e->r.W * (e->grad_bf16 ? 2 : 4));
}

/* W columns at j: updates the thread's state (maxima, then sums) and
 * stores outputs. */
static void emit_body(emitter *e, const pass_plan *pl, LLVMValueRef *state) {
  memset(e->r.vval, 0, e->r.n * sizeof *e->r.vval);
  LLVMValueRef *m = state, *acc = state + pl->ng;
  for (int gi = 0; gi < pl->ng; gi++) {
    LLVMValueRef x = kd_re_elem_f(&e->r, pl->ga[gi]);
    LLVMValueRef m_new = hmax(e, x, m[gi]);
    if (pl->gexp[gi]) rescale(e, pl, gi, m[gi], m_new, acc);
    m[gi] = m_new;
    if (!pl->gexp[gi]) continue;
    /* x - m_new <= 0; x = -inf gives exactly 0 */
    LLVMValueRef w = kd_emit_exp_nonpos(e->r.b, LLVMBuildFSub(e->r.b, x, kd_re_splat(&e->r, m_new), ""));
    for (int r = 0; r < pl->nr; r++) {
      if (!online_sum(e, pl, r, gi)) continue;
      LLVMValueRef c = kd_re_fnode(&e->r, pl->red[r])->role == KD_ROLE_FOLDED
                           ? kd_re_fold_contrib(&e->r, pl->red[r], w, NULL)
                           : w;
      acc[r] = LLVMBuildFAdd(e->r.b, acc[r], hsum(e, c), "");
    }
  }
  for (int r = 0; r < pl->nr; r++) {
    if (pl->rgroup[r] >= 0) continue;
    kd_node_id src = kd_re_gnode(&e->r, pl->red[r])->src[0];
    LLVMValueRef x = kd_re_elem_f(&e->r, src);
    acc[r] = LLVMBuildFAdd(e->r.b, acc[r], hsum(e, x), "");
  }
  for (int i = 0; i < pl->nstore; i++) store_output(e, pl->store[i]);
}

/* for (j = j0; j < end; j += step) body, W lanes at a time */
static void emit_loop(emitter *e, const pass_plan *pl, LLVMValueRef *st, int w, LLVMValueRef j0,
                      LLVMValueRef end, LLVMValueRef step) {
  int ns = pl->ng + pl->nr;
  set_width(e, w);
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef body = kd_re_block(&e->r, w > 1 ? "vloop" : "loop"), after = kd_re_block(&e->r, "loop.end");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, j0, end, ""), body, after);
  LLVMPositionBuilderAtEnd(e->r.b, body);
  LLVMValueRef j = LLVMBuildPhi(e->r.b, e->r.i64, "j");
  LLVMValueRef init[MAX_STATE], phis[MAX_STATE];
  for (int i = 0; i < ns; i++) {
    init[i] = st[i];
    st[i] = phis[i] = LLVMBuildPhi(e->r.b, e->r.f32, "");
  }
  e->r.j = j;
  emit_body(e, pl, st);
  LLVMValueRef jn = LLVMBuildAdd(e->r.b, j, step, "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->r.b);
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, jn, end, ""), body, after);
  LLVMAddIncoming(j, &j0, &pre, 1);
  LLVMAddIncoming(j, &jn, &latch, 1);
  for (int i = 0; i < ns; i++) {
    LLVMAddIncoming(phis[i], &init[i], &pre, 1);
    LLVMAddIncoming(phis[i], &st[i], &latch, 1);
  }
  LLVMPositionBuilderAtEnd(e->r.b, after);
  for (int i = 0; i < ns; i++) st[i] = kd_re_phi(&e->r, e->r.f32, init[i], pre, st[i], latch);
}

static LLVMValueRef shared_at(emitter *e, LLVMValueRef warp, int i, int ns) {
  LLVMValueRef idx =
      LLVMBuildAdd(e->r.b, LLVMBuildMul(e->r.b, warp, kd_re_i64c(&e->r, ns), ""), kd_re_i64c(&e->r, i), "");
  LLVMValueRef z[2] = {kd_re_i64c(&e->r, 0), idx};
  LLVMTypeRef at = LLVMArrayType(e->r.f32, MAX_WARPS * MAX_STATE);
  return LLVMBuildGEP2(e->r.b, at, e->shared, z, 2, "");
}

/* Every thread's state merged in a fixed order: butterfly within the warp,
 * then warps 0, 1, ... through shared memory; all threads get the result. */
static void block_reduce(emitter *e, const pass_plan *pl, LLVMValueRef *st) {
  int ns = pl->ng + pl->nr, nwarps = e->block / 32;
  if (ns == 0) return;
  LLVMValueRef o[MAX_STATE];
  for (int off = 16; off >= 1; off /= 2) {
    for (int i = 0; i < ns; i++) o[i] = shfl_xor(e, st[i], off);
    merge(e, pl, st, o);
  }
  if (nwarps == 1) return;
  barrier(e); /* the previous pass's readers are done with shared memory */
  LLVMBasicBlockRef bw = kd_re_block(&e->r, "warp.write"), bj = kd_re_block(&e->r, "warp.written");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntEQ, e->lane, kd_re_i64c(&e->r, 0), ""), bw, bj);
  LLVMPositionBuilderAtEnd(e->r.b, bw);
  for (int i = 0; i < ns; i++) LLVMBuildStore(e->r.b, st[i], shared_at(e, e->warp, i, ns));
  LLVMBuildBr(e->r.b, bj);
  LLVMPositionBuilderAtEnd(e->r.b, bj);
  barrier(e);
  for (int w = 0; w < nwarps; w++) {
    for (int i = 0; i < ns; i++)
      o[i] = LLVMBuildLoad2(e->r.b, e->r.f32, shared_at(e, kd_re_i64c(&e->r, w), i, ns), "");
    if (w == 0) memcpy(st, o, (size_t)ns * sizeof *st);
    else merge(e, pl, st, o);
  }
}

/* The block's state to row scalars, in double (as cpu.c's finalize). */
static void finalize(emitter *e, const pass_plan *pl, LLVMValueRef *state) {
  LLVMValueRef *m = state, *acc = state + pl->ng;
  for (int r = 0; r < pl->nr; r++) {
    kd_node_id id = pl->red[r];
    const kd_node *n = kd_re_gnode(&e->r, id);
    int gi = pl->rgroup[r];
    LLVMValueRef gmax = gi >= 0 ? LLVMBuildFPExt(e->r.b, m[gi], e->r.f64, "") : NULL;
    LLVMValueRef total = LLVMBuildFPExt(e->r.b, acc[r], e->r.f64, "");
    LLVMValueRef v;
    if (gi < 0) {
      v = total;
    } else if (n->op == KD_IR_RMAX) {
      /* the running max starts at -FLT_MAX: an all -inf row is -inf */
      LLVMValueRef empty = LLVMBuildFCmp(e->r.b, LLVMRealOLE, gmax, LLVMConstReal(e->r.f64, -FLT_MAX), "");
      v = LLVMBuildSelect(e->r.b, empty, LLVMConstReal(e->r.f64, -INFINITY), gmax, "");
    } else if (n->op == KD_IR_LSE) {
      v = LLVMBuildFAdd(e->r.b, gmax, LLVMBuildFPExt(e->r.b, kd_emit_log(e->r.b, acc[r]), e->r.f64, ""), "");
    } else {
      /* folded: sum exp(a - c) f = exp(max - c) sum exp(a - max) f */
      kd_node_id c = kd_re_fnode(&e->r, id)->fold_c;
      LLVMValueRef cv = kd_re_row_f(&e->r, c);
      LLVMValueRef sh = emit_exp(&e->r, LLVMBuildFSub(e->r.b, gmax, cv, ""));
      LLVMValueRef z = LLVMBuildFCmp(e->r.b, LLVMRealOEQ, total, LLVMConstReal(e->r.f64, 0), "");
      v = LLVMBuildSelect(e->r.b, z, total, LLVMBuildFMul(e->r.b, total, sh, ""), "");
    }
    e->r.rval[id] = kd_re_convert(&e->r, v, KD_CL_F, kd_vclass_of(n->dtype));
  }
}

static void emit_pass(emitter *e, int pass) {
  pass_plan pl;
  plan_pass(e, pass, &pl);
  if (e->r.st) return;
  char *seen = calloc(e->r.n + 1, 1);
  if (!seen) {
    kd_re_fail(&e->r, KD_ERR_NOMEM, "ptx: out of memory");
    return;
  }
  kd_re_prepare_pass(&e->r, pl.ga, pl.ng, pl.red, pl.nr, pl.store, pl.nstore, seen);
  free(seen);

  LLVMValueRef st[MAX_STATE];
  for (int i = 0; i < pl.ng + pl.nr; i++)
    st[i] = i < pl.ng ? LLVMConstReal(e->r.f32, -FLT_MAX) : LLVMConstNull(e->r.f32);
  LLVMValueRef B = kd_re_i64c(&e->r, e->block);
  emit_loop(e, &pl, st, 4, LLVMBuildMul(e->r.b, e->tid, kd_re_i64c(&e->r, 4), ""), e->vend,
            LLVMBuildMul(e->r.b, B, kd_re_i64c(&e->r, 4), ""));
  emit_loop(e, &pl, st, 1, LLVMBuildAdd(e->r.b, e->vend, e->tid, ""), e->r.V, B);
  block_reduce(e, &pl, st);
  finalize(e, &pl, st);
}

/* ---- kernels ---------------------------------------------------------------------- */

static void begin_kernel(emitter *e, const char *suffix) {
  kd_re_begin_function(&e->r, suffix, e->kern_ty);
  if (!e->emu) LLVMSetFunctionCallConv(e->r.fn, LLVMPTXKernelCallConv);
  /* inputs are read-only and nothing aliases: loads may use the
   * non-coherent (texture) path, ld.global.nc */
  static const char *const attr_names[] = {"noalias", "readonly"};
  for (unsigned i = 0; i < 6; i++)
    for (int a = 0; a < 2; a++) {
      if (a == 1 && i > 2) continue;
      unsigned kind = LLVMGetEnumAttributeKindForName(attr_names[a], strlen(attr_names[a]));
      LLVMAddAttributeAtIndex(e->r.fn, i + 1, LLVMCreateEnumAttribute(e->r.C, kind, 0));
    }
  LLVMValueRef *p[6] = {&e->p_teacher, &e->p_student, &e->r.p_labels, &e->p_grad, &e->r.p_rows, &e->r.p_globals};
  for (unsigned i = 0; i < 6; i++) *p[i] = LLVMGetParam(e->r.fn, i);
  e->r.N = LLVMGetParam(e->r.fn, 6);
  e->r.V = LLVMGetParam(e->r.fn, 7);
}

/* (p & (bytes - 1)) == 0 */
static LLVMValueRef aligned_to(emitter *e, LLVMValueRef p, int bytes) {
  LLVMValueRef a = LLVMBuildAnd(e->r.b, LLVMBuildPtrToInt(e->r.b, p, e->r.i64, ""), kd_re_i64c(&e->r, bytes - 1), "");
  return LLVMBuildICmp(e->r.b, LLVMIntEQ, a, kd_re_i64c(&e->r, 0), "");
}

/* The 4-wide path needs every row of every [N, V] array to start at a
 * multiple of 4 elements of an aligned base. */
static LLVMValueRef vector_end(emitter *e) {
  LLVMValueRef ok = LLVMBuildICmp(e->r.b, LLVMIntEQ, LLVMBuildAnd(e->r.b, e->r.V, kd_re_i64c(&e->r, 3), ""),
                                  kd_re_i64c(&e->r, 0), "");
  kd_node_id in[2] = {e->r.s->teacher, e->r.s->student};
  LLVMValueRef ptr[2] = {e->p_teacher, e->p_student};
  for (int i = 0; i < 2; i++)
    if (in[i] != KD_NONE)
      ok = LLVMBuildAnd(e->r.b, ok, aligned_to(e, ptr[i], kd_re_gnode(&e->r, in[i])->dtype == KD_BF16 ? 8 : 16), "");
  if (kd_graph_find_output(e->r.g, "grad") != KD_NONE)
    ok = LLVMBuildAnd(e->r.b, ok, aligned_to(e, e->p_grad, e->grad_bf16 ? 8 : 16), "");
  return LLVMBuildSelect(e->r.b, ok, e->r.V, kd_re_i64c(&e->r, 0), "vend");
}

static void emit_row_kernel(emitter *e, int k) {
  char suffix[16];
  snprintf(suffix, sizeof suffix, "row%d", k);
  e->r.stage = k;
  begin_kernel(e, suffix);
  e->r.row = sreg(e, "ctaid");
  e->tid = sreg(e, "tid");
  e->lane = LLVMBuildAnd(e->r.b, e->tid, kd_re_i64c(&e->r, 31), "lane");
  e->warp = LLVMBuildLShr(e->r.b, e->tid, kd_re_i64c(&e->r, 5), "warp");
  LLVMValueRef off = LLVMBuildMul(e->r.b, e->r.row, e->r.V, "");
  LLVMTypeRef tt = e->r.s->teacher != KD_NONE && kd_re_gnode(&e->r, e->r.s->teacher)->dtype == KD_BF16
                       ? e->r.i16
                       : e->r.f32;
  e->t_row = gep(e->r.b, tt, e->p_teacher, off);
  e->s_row = gep(e->r.b, kd_re_gnode(&e->r, e->r.s->student)->dtype == KD_BF16 ? e->r.i16 : e->r.f32,
                 e->p_student, off);
  e->g_row = gep(e->r.b, e->grad_bf16 ? e->r.i16 : e->r.f32, e->p_grad, off);
  e->vend = vector_end(e);
  for (int p = 0; p < e->r.s->stage[k].npasses && !e->r.st; p++) emit_pass(e, p);
  /* per-row values of reductions over rows: thread 0 writes them */
  LLVMBasicBlockRef bw = kd_re_block(&e->r, "rows.write"), done = kd_re_block(&e->r, "done");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntEQ, e->tid, kd_re_i64c(&e->r, 0), ""), bw, done);
  LLVMPositionBuilderAtEnd(e->r.b, bw);
  kd_re_store_row_reds(&e->r);
  LLVMBuildBr(e->r.b, done);
  LLVMPositionBuilderAtEnd(e->r.b, done);
  LLVMBuildRetVoid(e->r.b);
}

/* sum_i rows[slot * N + i] by the step's KD_GPU_STEP_THREADS threads:
 * thread t adds rows [t c, (t + 1) c) in order (c = ceil(N / threads)),
 * then every thread adds the threads' partial sums in thread order, through
 * shared memory. Deterministic for a given N; every thread gets the sum. */
static LLVMValueRef emit_row_sum(emitter *e, int slot) {
  LLVMValueRef T = kd_re_i64c(&e->r, KD_GPU_STEP_THREADS);
  LLVMValueRef chunk = LLVMBuildSDiv(
      e->r.b, LLVMBuildAdd(e->r.b, e->r.N, kd_re_i64c(&e->r, KD_GPU_STEP_THREADS - 1), ""), T, "");
  LLVMValueRef lo = LLVMBuildMul(e->r.b, e->tid, chunk, "");
  LLVMValueRef hi = LLVMBuildAdd(e->r.b, lo, chunk, "");
  hi = LLVMBuildSelect(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, hi, e->r.N, ""), hi, e->r.N, "");
  LLVMValueRef rows = gep(e->r.b, e->r.f64, e->r.p_rows, LLVMBuildMul(e->r.b, kd_re_i64c(&e->r, slot), e->r.N, ""));
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->r.b);
  LLVMBasicBlockRef loop = kd_re_block(&e->r, "sum"), done = kd_re_block(&e->r, "sum.done");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, lo, hi, ""), loop, done);
  LLVMPositionBuilderAtEnd(e->r.b, loop);
  LLVMValueRef i = LLVMBuildPhi(e->r.b, e->r.i64, "i");
  LLVMValueRef acc = LLVMBuildPhi(e->r.b, e->r.f64, "acc");
  LLVMValueRef x = LLVMBuildLoad2(e->r.b, e->r.f64, gep(e->r.b, e->r.f64, rows, i), "");
  LLVMValueRef acc2 = LLVMBuildFAdd(e->r.b, acc, x, "");
  LLVMValueRef i2 = LLVMBuildAdd(e->r.b, i, kd_re_i64c(&e->r, 1), "");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntSLT, i2, hi, ""), loop, done);
  LLVMValueRef zf = LLVMConstReal(e->r.f64, 0);
  LLVMAddIncoming(i, &lo, &pre, 1);
  LLVMAddIncoming(i, &i2, &loop, 1);
  LLVMAddIncoming(acc, &zf, &pre, 1);
  LLVMAddIncoming(acc, &acc2, &loop, 1);
  LLVMPositionBuilderAtEnd(e->r.b, done);
  LLVMValueRef part = kd_re_phi(&e->r, e->r.f64, zf, pre, acc2, loop);
  LLVMTypeRef at = LLVMArrayType(e->r.f64, KD_GPU_STEP_THREADS);
  LLVMValueRef idx[2] = {kd_re_i64c(&e->r, 0), e->tid};
  LLVMBuildStore(e->r.b, part, LLVMBuildGEP2(e->r.b, at, e->shared_d, idx, 2, ""));
  barrier(e);
  LLVMValueRef sum = zf;
  for (int t = 0; t < KD_GPU_STEP_THREADS; t++) {
    idx[1] = kd_re_i64c(&e->r, t);
    sum = LLVMBuildFAdd(
        e->r.b, sum, LLVMBuildLoad2(e->r.b, e->r.f64, LLVMBuildGEP2(e->r.b, at, e->shared_d, idx, 2, ""), ""),
        "");
  }
  barrier(e); /* everyone has read the partial sums before the next ones */
  return sum;
}

/* A reduction over rows in a step: summed by all threads before. */
static LLVMValueRef summed_rows(kd_rowemit *r, kd_node_id id) { return r->gval[id]; }

/* step<k>: the global scalars of phase k (as cpu.c's steps) on
 * KD_GPU_STEP_THREADS threads: all of them sum the rows of reductions over
 * rows, then thread 0 alone computes and stores; the last step also stores
 * outputs that are plain constants. */
static void emit_step(emitter *e, int k) {
  char suffix[16];
  snprintf(suffix, sizeof suffix, "step%d", k);
  begin_kernel(e, suffix);
  e->tid = sreg(e, "tid");
  for (kd_node_id id = 0; id < (kd_node_id)e->r.n && !e->r.st; id++) {
    const kd_fuse_node *f = kd_re_fnode(&e->r, id);
    if (f->kind == KD_FUSE_GLOBAL && f->role == KD_ROLE_NRED && f->phase == k)
      e->r.gval[id] = kd_re_convert(&e->r, emit_row_sum(e, f->slot), KD_CL_F,
                                    kd_vclass_of(kd_re_gnode(&e->r, id)->dtype));
  }
  LLVMBasicBlockRef work = kd_re_block(&e->r, "thread0"), done = kd_re_block(&e->r, "done");
  LLVMBuildCondBr(e->r.b, LLVMBuildICmp(e->r.b, LLVMIntEQ, e->tid, kd_re_i64c(&e->r, 0), ""), work, done);
  LLVMPositionBuilderAtEnd(e->r.b, done);
  LLVMBuildRetVoid(e->r.b);
  LLVMPositionBuilderAtEnd(e->r.b, work);
  kd_re_emit_globals(&e->r, k, 0, summed_rows);
  LLVMBuildRetVoid(e->r.b);
}

/* The kernels' types beyond the shared scalars (kd_re_init), and the
 * shared-memory arrays. */
static void init_types(emitter *e) {
  LLVMContextRef C = e->r.C;
  e->gptr = LLVMPointerTypeInContext(C, e->emu ? 0 : 1); /* the global address space */
  set_width(e, 1);
  LLVMTypeRef p[8] = {e->gptr, e->gptr, e->gptr, e->gptr, e->gptr, e->gptr, e->r.i64, e->r.i64};
  e->kern_ty = LLVMFunctionType(LLVMVoidTypeInContext(C), p, 8, 0);
  LLVMTypeRef at = LLVMArrayType(e->r.f32, MAX_WARPS * MAX_STATE);
  char name[160];
  snprintf(name, sizeof name, "%s_shared", e->r.name);
  e->shared = LLVMAddGlobalInAddressSpace(e->r.M, at, name, e->emu ? 0 : 3);
  LLVMSetLinkage(e->shared, LLVMInternalLinkage);
  LLVMSetInitializer(e->shared, LLVMGetUndef(at));
  LLVMSetAlignment(e->shared, 16);
  LLVMTypeRef dt = LLVMArrayType(e->r.f64, KD_GPU_STEP_THREADS);
  snprintf(name, sizeof name, "%s_shared_d", e->r.name);
  e->shared_d = LLVMAddGlobalInAddressSpace(e->r.M, dt, name, e->emu ? 0 : 3);
  LLVMSetLinkage(e->shared_d, LLVMInternalLinkage);
  LLVMSetInitializer(e->shared_d, LLVMGetUndef(dt));
  LLVMSetAlignment(e->shared_d, 16);
}

static kd_status emit_module(const kd_schedule *s, const kd_ptx_options *o, int emu, LLVMModuleRef M,
                             kd_gpu_program *prog, char *err, size_t errlen) {
  emitter e = {0};
  kd_re_init(&e.r, s, o->name, "ptx", M, err, errlen);
  e.r.elem_value = kd_re_elem_value;
  e.r.load_logits = load_logits;
  e.r.elem_special = elem_special;
  e.r.exp = emit_exp;
  e.r.log = emit_log;
  e.emu = emu;
  e.block = o->block;
  e.grad_bf16 = o->grad_dtype == KD_BF16;
  init_types(&e);
  kd_node_id loss = kd_graph_find_output(e.r.g, "loss");
  if (loss == KD_NONE) kd_re_fail(&e.r, KD_ERR_INVALID, "ptx: the graph has no output \"loss\"");
  memset(prog, 0, sizeof *prog);
  for (int k = 0; k <= s->nstages && !e.r.st; k++) {
    emit_step(&e, k);
    if (k < s->nstages && s->stage[k].has_rows) {
      emit_row_kernel(&e, k);
      prog->rows_mask |= 1u << k;
    }
  }
  snprintf(prog->name, sizeof prog->name, "%s", o->name);
  prog->nstages = s->nstages;
  prog->nslots = s->nslots;
  prog->nglobals = (int)e.r.n;
  prog->loss_index = loss;
  prog->has_grad = kd_graph_find_output(e.r.g, "grad") != KD_NONE;
  prog->grad_dtype = o->grad_dtype;
  prog->teacher_dtype = s->teacher == KD_NONE ? -1 : (int)kd_re_gnode(&e.r, s->teacher)->dtype;
  prog->student_dtype = (int)kd_re_gnode(&e.r, s->student)->dtype;
  prog->has_labels = s->labels != KD_NONE;
  prog->block = o->block;
  kd_re_dispose(&e.r);
  return e.r.st;
}

/* ---- targets and the public API ----------------------------------------------------- */

static const struct {
  const char *sm;
  int ptx; /* the PTX ISA version LLVM 19 needs for it */
} known_sms[] = {
    {"sm_75", 63}, {"sm_80", 70}, {"sm_86", 71}, {"sm_87", 74},
    {"sm_89", 78}, {"sm_90", 80}, {"sm_90a", 80},
};

int kd_ptx_sm_known(const char *sm, int *ptx) {
  for (size_t i = 0; sm && i < sizeof known_sms / sizeof known_sms[0]; i++)
    if (!strcmp(known_sms[i].sm, sm)) {
      if (ptx) *ptx = known_sms[i].ptx;
      return 1;
    }
  return 0;
}

static void init_nvptx_once(void) {
  static int done;
  if (done) return;
  LLVMInitializeNVPTXTargetInfo();
  LLVMInitializeNVPTXTarget();
  LLVMInitializeNVPTXTargetMC();
  LLVMInitializeNVPTXAsmPrinter();
  done = 1;
}

static kd_status llvm_fail(char *msg, const char *what, kd_status st, char *err, size_t errlen) {
  kd_errf(err, errlen, st, "ptx: %s: %s", what, msg ? msg : "failed");
  if (msg) LLVMDisposeMessage(msg);
  return st;
}

static kd_status target_machine(const char *sm, LLVMTargetMachineRef *tm, char *err, size_t errlen) {
  int ptx;
  if (!kd_ptx_sm_known(sm, &ptx))
    return kd_errf(err, errlen, KD_ERR_INVALID, "ptx: unknown GPU '%s' (sm_75, sm_80, sm_86, sm_87, sm_89, sm_90, sm_90a)", sm);
  init_nvptx_once();
  LLVMTargetRef t;
  char *msg = NULL;
  if (LLVMGetTargetFromTriple(TRIPLE, &t, &msg)) return llvm_fail(msg, "no NVPTX target", KD_ERR_BACKEND, err, errlen);
  char features[16];
  snprintf(features, sizeof features, "+ptx%d", ptx);
  *tm = LLVMCreateTargetMachine(t, TRIPLE, sm, features, LLVMCodeGenLevelAggressive, LLVMRelocDefault,
                                LLVMCodeModelDefault);
  return *tm ? KD_OK : kd_errf(err, errlen, KD_ERR_BACKEND, "ptx: no target machine for %s", sm);
}

/* Verifies and optimises M, then writes PTX or IR text into *out. */
static kd_status finish(LLVMModuleRef M, LLVMTargetMachineRef tm, int ir, char **out, char *err, size_t errlen) {
  char *msg = NULL;
  if (LLVMVerifyModule(M, LLVMReturnStatusAction, &msg)) return llvm_fail(msg, "invalid module", KD_ERR_BACKEND, err, errlen);
  LLVMDisposeMessage(msg);
  LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
  LLVMErrorRef pe = LLVMRunPasses(M, "default<O3>", tm, po);
  LLVMDisposePassBuilderOptions(po);
  if (pe) {
    char *m = LLVMGetErrorMessage(pe); /* consumes pe */
    kd_errf(err, errlen, KD_ERR_BACKEND, "ptx: optimisation: %s", m);
    LLVMDisposeErrorMessage(m);
    return KD_ERR_BACKEND;
  }
  if (ir) {
    char *s = LLVMPrintModuleToString(M);
    *out = strdup(s);
    LLVMDisposeMessage(s);
    return *out ? KD_OK : KD_ERR_NOMEM;
  }
  LLVMMemoryBufferRef buf;
  msg = NULL;
  if (LLVMTargetMachineEmitToMemoryBuffer(tm, M, LLVMAssemblyFile, &msg, &buf))
    return llvm_fail(msg, "PTX emission", KD_ERR_BACKEND, err, errlen);
  size_t len = LLVMGetBufferSize(buf);
  *out = malloc(len + 1);
  if (*out) {
    memcpy(*out, LLVMGetBufferStart(buf), len);
    (*out)[len] = 0;
  }
  LLVMDisposeMemoryBuffer(buf);
  return *out ? KD_OK : KD_ERR_NOMEM;
}

/* header line + "\n" + text */
static kd_status prepend_header(const kd_gpu_program *p, char **text) {
  char line[512];
  int n = kd_gpu_program_format(p, line, sizeof line);
  size_t len = strlen(*text);
  char *s = malloc((size_t)n + 2 + len);
  if (!s) return KD_ERR_NOMEM;
  memcpy(s, line, (size_t)n);
  s[n] = '\n';
  memcpy(s + n + 1, *text, len + 1);
  free(*text);
  *text = s;
  return KD_OK;
}

/* The options with defaults filled in, checked; and the schedule. */
static kd_status prepare(const kd_graph *g, const kd_ptx_options *o, kd_ptx_options *out, kd_schedule **s,
                         char *err, size_t errlen) {
  static const kd_ptx_options defaults = {0};
  *out = o ? *o : defaults;
  if (!out->name) out->name = "kd_loss";
  if (!out->sm) out->sm = "sm_80";
  if (!out->block) out->block = 256;
  if (out->block < 32 || out->block > 1024 || out->block % 32)
    return kd_errf(err, errlen, KD_ERR_INVALID, "ptx: block size %d is not a multiple of 32 up to 1024", out->block);
  if (out->grad_dtype != KD_F32 && out->grad_dtype != KD_BF16)
    return kd_errf(err, errlen, KD_ERR_INVALID, "ptx: the gradient is stored as f32 or bf16, not %s",
                   kd_dtype_name(out->grad_dtype));
  if (strlen(out->name) > 48) return kd_errf(err, errlen, KD_ERR_INVALID, "ptx: name '%s' is too long", out->name);
  kd_status st = kd_fuse(g, s, err, errlen);
  if (!st && (*s)->student == KD_NONE) st = kd_errf(err, errlen, KD_ERR_INVALID, "ptx: the graph has no input \"student\"");
  return st;
}

kd_status kd_ptx_emit(const kd_graph *g, const kd_ptx_options *opt, int ir, char **out, kd_gpu_program *prog,
                      char *err, size_t errlen) {
  *out = NULL;
  kd_ptx_options o;
  kd_schedule *s = NULL;
  LLVMTargetMachineRef tm = NULL;
  kd_status st = prepare(g, opt, &o, &s, err, errlen);
  if (!st) st = target_machine(o.sm, &tm, err, errlen);
  if (st) {
    kd_schedule_free(s);
    return st;
  }
  LLVMContextRef C = LLVMContextCreate();
  LLVMModuleRef M = LLVMModuleCreateWithNameInContext(o.name, C);
  LLVMSetTarget(M, TRIPLE);
  LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(M, td);
  LLVMDisposeTargetData(td);
  kd_gpu_program p;
  if (!st) st = emit_module(s, &o, 0, M, &p, err, errlen);
  if (!st) st = finish(M, tm, ir, out, err, errlen);
  if (!st && !ir) st = prepend_header(&p, out);
  if (!st && prog) *prog = p;
  if (st) {
    free(*out);
    *out = NULL;
  }
  LLVMDisposeModule(M);
  LLVMContextDispose(C);
  LLVMDisposeTargetMachine(tm);
  kd_schedule_free(s);
  return st;
}

/* ---- host emulation (tests) ----------------------------------------------------------- */

struct kd_ptx_host {
  kd_session *session;
  LLVMOrcResourceTrackerRef rt;
  kd_gpu_program prog;
  kd_ptx_host_kernel row[KD_LOSS_MAX_STAGES], step[KD_LOSS_MAX_STAGES + 1];
};

static kd_status host_lookup(kd_ptx_host *h, const char *kind, int k, kd_ptx_host_kernel *f, char *err,
                             size_t errlen) {
  char sym[96];
  void *addr = NULL;
  snprintf(sym, sizeof sym, "%s_%s%d", h->prog.name, kind, k);
  kd_status st = kd_session_lookup(h->session, sym, &addr, err, errlen);
  /* a JIT address to a function pointer: through memcpy, which ISO C allows */
  if (!st) memcpy(f, &addr, sizeof *f);
  return st;
}

kd_status kd_ptx_host_compile(const kd_graph *g, const kd_ptx_options *opt, kd_ptx_host **out, char *err,
                              size_t errlen) {
  *out = NULL;
  kd_ptx_options o;
  kd_schedule *s = NULL;
  kd_status st = prepare(g, opt, &o, &s, err, errlen);
  kd_ptx_host *h = calloc(1, sizeof *h);
  if (!st && !h) st = KD_ERR_NOMEM;
  kd_module m = {0};
  if (!st) st = kd_session_new(&h->session, err, errlen);
  if (!st) st = kd_session_module_new(h->session, o.name, &m);
  if (!st) st = emit_module(s, &o, 1, m.mod, &h->prog, err, errlen);
  if (!st) st = kd_session_optimize(h->session, &m, err, errlen);
  if (!st) st = kd_session_jit(h->session, &m, &h->rt, err, errlen); /* the JIT owns the module from here */
  for (int k = 0; !st && k <= h->prog.nstages; k++) {
    st = host_lookup(h, "step", k, &h->step[k], err, errlen);
    if (!st && k < h->prog.nstages && (h->prog.rows_mask >> k & 1u))
      st = host_lookup(h, "row", k, &h->row[k], err, errlen);
  }
  kd_module_dispose(&m);
  kd_schedule_free(s);
  if (st) {
    kd_ptx_host_free(h);
    return st;
  }
  *out = h;
  return KD_OK;
}

void kd_ptx_host_free(kd_ptx_host *h) {
  if (!h) return;
  if (h->session) {
    kd_session_unload(h->session, h->rt);
    kd_session_free(h->session);
  }
  free(h);
}

const kd_gpu_program *kd_ptx_host_program(const kd_ptx_host *h) { return &h->prog; }
kd_ptx_host_kernel kd_ptx_host_row(const kd_ptx_host *h, int k) { return h->row[k]; }
kd_ptx_host_kernel kd_ptx_host_step(const kd_ptx_host *h, int k) { return h->step[k]; }
