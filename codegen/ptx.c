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
 * The expression emitter repeats cpu.c's (static there) for these types.
 *
 * kd_ptx_host_compile builds the same kernels for the host JIT, with the
 * ids, shuffles and barriers as calls (tests/gpu/test_ptx_emu.c runs them
 * a thread per GPU thread): the kernels' logic is tested without a GPU.
 *
 * Legend: N = rows, V = vocabulary, B = threads per block, W = lanes. */
#include "ptx.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
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
#include "session.h"

#define MAX_STATE 64 /* online groups + reductions in one pass */
#define MAX_WARPS 32 /* 1024 threads */
#define TRIPLE "nvptx64-nvidia-cuda"


typedef struct emitter {
  const kd_schedule *s;
  const kd_graph *g;
  size_t n;
  int W;     /* lanes of the body being emitted: 4 or 1 */
  int block; /* B */
  int emu;   /* host emulation: ids, shuffles and barriers are kd_emu_* calls */
  const char *name;
  kd_status st;
  char *err;
  size_t errlen;

  LLVMContextRef C;
  LLVMModuleRef M;
  LLVMBuilderRef b;
  LLVMBuilderRef be; /* before the entry block's terminator */
  LLVMTypeRef f32, f64, i1, i16, i32, i64, gptr, vf, kern_ty;
  LLVMValueRef shared;   /* [MAX_WARPS * MAX_STATE] f32 in addrspace(3): row kernels */
  LLVMValueRef shared_d; /* [KD_GPU_STEP_THREADS] f64 in addrspace(3): steps */

  /* per kernel */
  LLVMValueRef fn, N, V, row, j, tid, lane, warp, vend;
  LLVMValueRef p_teacher, p_student, p_labels, p_grad, p_rows, p_globals;
  LLVMValueRef t_row, s_row, g_row; /* teacher, student, grad + row * V */
  LLVMValueRef *gval, *rval, *vval;
  int stage;
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
  LLVMTypeRef t = c == KD_CL_F ? (vec ? e->f32 : e->f64) : c == KD_CL_I ? e->i64 : e->i1;
  return vec ? LLVMVectorType(t, (unsigned)e->W) : t;
}

static LLVMValueRef i64c(const emitter *e, long long v) {
  return LLVMConstInt(e->i64, (unsigned long long)v, 1);
}

static LLVMValueRef i32c(const emitter *e, long long v) {
  return LLVMConstInt(e->i32, (unsigned long long)v, 1);
}

static void set_width(emitter *e, int w) {
  e->W = w;
  e->vf = LLVMVectorType(e->f32, (unsigned)w);
}

/* ---- small IR helpers ------------------------------------------------------ */

static int is_vec(LLVMValueRef v) { return LLVMGetTypeKind(LLVMTypeOf(v)) == LLVMVectorTypeKind; }

static LLVMValueRef splat(emitter *e, LLVMValueRef x) {
  LLVMTypeRef vt = LLVMVectorType(LLVMTypeOf(x), (unsigned)e->W);
  LLVMValueRef v = LLVMBuildInsertElement(e->b, LLVMGetPoison(vt), x, i64c(e, 0), "");
  LLVMValueRef zeros = LLVMConstNull(LLVMVectorType(e->i32, (unsigned)e->W));
  return LLVMBuildShuffleVector(e->b, v, LLVMGetPoison(vt), zeros, "");
}

static LLVMValueRef lane_of(emitter *e, LLVMValueRef v, int i) {
  return LLVMBuildExtractElement(e->b, v, i64c(e, i), "");
}

/* A call of a non-overloaded NVVM intrinsic, declared on first use. */
static LLVMValueRef nvvm(emitter *e, const char *name, LLVMTypeRef ret, LLVMValueRef *args,
                         unsigned nargs) {
  LLVMTypeRef pt[4];
  for (unsigned i = 0; i < nargs; i++) pt[i] = LLVMTypeOf(args[i]);
  LLVMTypeRef fty = LLVMFunctionType(ret, pt, nargs, 0);
  LLVMValueRef f = LLVMGetNamedFunction(e->M, name);
  if (!f) f = LLVMAddFunction(e->M, name, fty);
  return LLVMBuildCall2(e->b, fty, f, args, nargs, "");
}

/* threadIdx.x or blockIdx.x ("tid", "ctaid") */
static LLVMValueRef sreg(emitter *e, const char *which) {
  char name[64];
  snprintf(name, sizeof name, e->emu ? "kd_emu_%s" : "llvm.nvvm.read.ptx.sreg.%s.x", which);
  return LLVMBuildZExt(e->b, nvvm(e, name, e->i32, NULL, 0), e->i64, which);
}

static void barrier(emitter *e) {
  nvvm(e, e->emu ? "kd_emu_barrier" : "llvm.nvvm.barrier0", LLVMVoidTypeInContext(e->C), NULL, 0);
}

/* x from the lane whose id is this lane's xor off (all 32 lanes take part) */
static LLVMValueRef shfl_xor(emitter *e, LLVMValueRef x, int off) {
  if (e->emu) {
    LLVMValueRef args[2] = {x, i32c(e, off)};
    return nvvm(e, "kd_emu_shfl_bfly", e->f32, args, 2);
  }
  LLVMValueRef args[4] = {i32c(e, -1), x, i32c(e, off), i32c(e, 0x1f)};
  return nvvm(e, "llvm.nvvm.shfl.sync.bfly.f32", e->f32, args, 4);
}

/* ---- conversions ----------------------------------------------------------- */

static LLVMValueRef convert(emitter *e, LLVMValueRef v, kd_vclass from, kd_vclass to) {
  if (from == to) return v;
  LLVMTypeRef vt = LLVMTypeOf(v);
  LLVMTypeRef t = type_of(e, to, is_vec(v));
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

/* A row or global scalar (double / i64 / i1) broadcast into W lanes. */
static LLVMValueRef widen(emitter *e, LLVMValueRef x, kd_vclass c) {
  if (c == KD_CL_F) x = LLVMBuildFPTrunc(e->b, x, e->f32, "");
  return splat(e, x);
}

/* ---- the expression emitter -------------------------------------------------- */

/* f32 lanes through the mathlib; a double through f32 too, since NVPTX has
 * no libm to call (a row or global value: ~1 ulp of f32 relative). */
static LLVMValueRef emit_math(emitter *e, LLVMValueRef (*fn)(LLVMBuilderRef, LLVMValueRef),
                              LLVMValueRef x) {
  if (LLVMTypeOf(x) != e->f64) return fn(e->b, x);
  LLVMValueRef y = fn(e->b, LLVMBuildFPTrunc(e->b, x, e->f32, ""));
  return LLVMBuildFPExt(e->b, y, e->f64, "");
}

static LLVMValueRef emit_exp(emitter *e, LLVMValueRef x) { return emit_math(e, kd_emit_exp, x); }
static LLVMValueRef emit_log(emitter *e, LLVMValueRef x) { return emit_math(e, kd_emit_log, x); }

/* One node from its sources' values (all scalar or all W-lane vectors). */
static LLVMValueRef convert_cb(void *e, LLVMValueRef v, kd_vclass from, kd_vclass to) {
  return convert(e, v, from, to);
}
static LLVMValueRef exp_cb(void *e, LLVMValueRef x) { return emit_exp(e, x); }
static LLVMValueRef log_cb(void *e, LLVMValueRef x) { return emit_log(e, x); }

static LLVMValueRef emit_op(emitter *e, kd_node_id id, LLVMValueRef *v) {
  kd_elem x = {e->b, e->g, e, convert_cb, exp_cb, log_cb, NULL, "ptx", &e->st, e->err, e->errlen};
  return kd_elem_op(&x, id, v, fnode(e, id)->role == KD_ROLE_IDENTITY);
}

/* ---- global, row and element values ------------------------------------------ */

static LLVMValueRef const_value(emitter *e, const kd_node *n) {
  kd_vclass c = kd_vclass_of(n->dtype);
  if (c == KD_CL_F) return LLVMConstReal(e->f64, n->value);
  if (c == KD_CL_B) return LLVMConstInt(e->i1, n->value != 0, 0);
  return i64c(e, (long long)n->value);
}

static LLVMValueRef gep(LLVMBuilderRef b, LLVMTypeRef t, LLVMValueRef p, LLVMValueRef idx) {
  return LLVMBuildGEP2(b, t, p, &idx, 1, "");
}

/* globals[id], loaded and converted in the entry block */
static LLVMValueRef global_value(emitter *e, kd_node_id id) {
  const kd_node *n = gnode(e, id);
  if (n->op == KD_IR_CONST) return const_value(e, n);
  if (!e->gval[id]) {
    LLVMBuilderRef keep = e->b;
    e->b = e->be;
    LLVMValueRef v = LLVMBuildLoad2(e->b, e->f64, gep(e->b, e->f64, e->p_globals, i64c(e, id)), "");
    e->gval[id] = convert(e, v, KD_CL_F, kd_vclass_of(n->dtype));
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
    fail(e, KD_ERR_BACKEND, "ptx: %%%d used before its pass (a scheduler bug)", (int)id);
    return LLVMGetPoison(type_of(e, kd_vclass_of(n->dtype), 0));
  }
  if (n->op == KD_IR_INPUT) {
    if (id != e->s->labels) {
      fail(e, KD_ERR_UNSUPPORTED, "ptx: per-row input \"%s\" is not supported", n->name);
      return LLVMGetPoison(e->i64);
    }
    return e->rval[id] = LLVMBuildLoad2(e->b, e->i64, gep(e->b, e->i64, e->p_labels, e->row), "label");
  }
  LLVMValueRef v[KD_MAX_SRC] = {0};
  for (int i = 0; i < n->nsrc; i++) v[i] = row_value(e, n->src[i]);
  return e->rval[id] = emit_op(e, id, v);
}

/* teacher or student at [row, j .. j + W), widened to f32; W = 4 only on
 * the aligned path, so the wide load is aligned */
static LLVMValueRef load_logits(emitter *e, kd_node_id id) {
  int bf16 = gnode(e, id)->dtype == KD_BF16;
  LLVMTypeRef et = bf16 ? e->i16 : e->f32;
  LLVMTypeRef vt = LLVMVectorType(et, (unsigned)e->W);
  LLVMValueRef base = id == e->s->teacher ? e->t_row : e->s_row;
  LLVMValueRef x = LLVMBuildLoad2(e->b, vt, gep(e->b, et, base, e->j), "");
  LLVMSetAlignment(x, (unsigned)(e->W * (bf16 ? 2 : 4)));
  if (!bf16) return x;
  /* bf16 is the top half of an f32: widening is exact */
  LLVMTypeRef vi32 = LLVMVectorType(e->i32, (unsigned)e->W);
  x = LLVMBuildShl(e->b, LLVMBuildZExt(e->b, x, vi32, ""), kd_ir_iconst(vi32, 16), "");
  return LLVMBuildBitCast(e->b, x, e->vf, "");
}

static LLVMValueRef lane_index(emitter *e) {
  LLVMValueRef lanes[4];
  for (int i = 0; i < e->W; i++) lanes[i] = i64c(e, i);
  return LLVMBuildAdd(e->b, splat(e, e->j), LLVMConstVector(lanes, (unsigned)e->W), "");
}

static LLVMValueRef elem_value(emitter *e, kd_node_id id);

/* x + c or x - c for f32 lanes x and a double row or global scalar c: c is
 * split into c = hi + lo (two floats), as cpu.c does, so a shift by a large
 * log-sum-exp keeps the accuracy of the small difference. NULL when id is
 * not such a node. */
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
  LLVMValueRef lo = LLVMBuildFPTrunc(e->b, LLVMBuildFSub(e->b, c, LLVMBuildFPExt(e->b, hi, e->f64, ""), ""),
                                     e->f32, "");
  LLVMValueRef vh = splat(e, hi), vl = splat(e, lo);
  if (n->op == KD_IR_ADD) return LLVMBuildFAdd(e->b, LLVMBuildFAdd(e->b, x, vh, ""), vl, "");
  if (k == 1) return LLVMBuildFSub(e->b, LLVMBuildFSub(e->b, x, vh, ""), vl, "");
  return LLVMBuildFSub(e->b, LLVMBuildFSub(e->b, vh, x, ""), vl, ""); /* c - x */
}

/* exp(a - lse(a)) or exp(a - max(a)): the argument is <= 0 up to rounding */
static int is_softmax_exp(const emitter *e, const kd_node *n) {
  if (n->op != KD_IR_EXP || kd_vclass_of(n->dtype) != KD_CL_F) return 0;
  const kd_node *d = gnode(e, n->src[0]);
  if (d->op != KD_IR_SUB || fnode(e, d->src[1])->role != KD_ROLE_ROWRED) return 0;
  const kd_node *r = gnode(e, d->src[1]);
  return (r->op == KD_IR_LSE || r->op == KD_IR_RMAX) && r->src[0] == d->src[0];
}

static LLVMValueRef elem_value(emitter *e, kd_node_id id) {
  if (e->vval[id]) return e->vval[id];
  const kd_fuse_node *f = fnode(e, id);
  const kd_node *n = gnode(e, id);
  kd_vclass c = kd_vclass_of(n->dtype);
  if (f->kind != KD_FUSE_ELEM) return e->vval[id] = widen(e, row_value(e, id), c);
  if (n->op == KD_IR_INPUT) {
    if (id != e->s->teacher && id != e->s->student) {
      fail(e, KD_ERR_UNSUPPORTED, "ptx: [N, V] input \"%s\" is not supported", n->name);
      return LLVMGetPoison(e->vf);
    }
    return e->vval[id] = load_logits(e, id);
  }
  if (n->op == KD_IR_IOTA) return e->vval[id] = convert(e, lane_index(e), KD_CL_I, c);
  if (is_softmax_exp(e, n)) return e->vval[id] = kd_emit_exp_nonpos(e->b, elem_value(e, n->src[0]));
  LLVMValueRef shifted = shift_by_scalar(e, id);
  if (shifted) return e->vval[id] = shifted;
  LLVMValueRef v[KD_MAX_SRC] = {0};
  for (int i = 0; i < n->nsrc; i++) v[i] = elem_value(e, n->src[i]);
  return e->vval[id] = emit_op(e, id, v);
}

/* Row scalars that a pass's roots read, computed before its loops (so they
 * dominate both). */
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
  int ng;                   /* online groups: state[0 .. ng) is each running max */
  kd_node_id ga[MAX_STATE]; /* the group's a */
  int gexp[MAX_STATE];
  int nr; /* reductions: state[ng + i] is reduction i's accumulator */
  kd_node_id red[MAX_STATE];
  int rgroup[MAX_STATE]; /* the group of an online reduction, or -1 (plain SUM) */
  int nstore;
  kd_node_id store[MAX_STATE];
} pass_plan;

static int is_output(const emitter *e, kd_node_id id) {
  for (size_t i = 0; i < kd_graph_noutputs(e->g); i++)
    if (kd_graph_output(e->g, i) == id) return 1;
  return 0;
}

static kd_node_id online_a(const emitter *e, kd_node_id id) {
  const kd_fuse_node *f = fnode(e, id);
  return f->role == KD_ROLE_FOLDED ? f->fold_a : gnode(e, id)->src[0];
}

static void plan_pass(emitter *e, int pass, pass_plan *pl) {
  memset(pl, 0, sizeof *pl);
  for (kd_node_id id = 0; id < (kd_node_id)e->n; id++) {
    const kd_fuse_node *f = fnode(e, id);
    if (!kd_fuse_in_stage(e->s, id, e->stage)) continue;
    if (f->kind == KD_FUSE_ELEM && is_output(e, id) && f->avail == pass && pl->nstore < MAX_STATE)
      pl->store[pl->nstore++] = id;
    if ((f->role != KD_ROLE_ROWRED && f->role != KD_ROLE_FOLDED) || f->pass != pass) continue;
    if (pl->ng + pl->nr + 1 >= MAX_STATE) {
      fail(e, KD_ERR_UNSUPPORTED, "ptx: more than %d reductions in one pass", MAX_STATE);
      return;
    }
    kd_opcode op = gnode(e, id)->op;
    int gi = -1;
    if (f->role == KD_ROLE_FOLDED || op == KD_IR_LSE || op == KD_IR_RMAX) {
      kd_node_id a = online_a(e, id);
      for (gi = 0; gi < pl->ng && pl->ga[gi] != a; gi++) {}
      if (gi == pl->ng) pl->ga[pl->ng++] = a;
      if (op != KD_IR_RMAX) pl->gexp[gi] = 1;
    }
    pl->red[pl->nr] = id;
    pl->rgroup[pl->nr++] = gi;
  }
}

static LLVMBasicBlockRef block(emitter *e, const char *name) {
  return LLVMAppendBasicBlockInContext(e->C, e->fn, name);
}

static LLVMValueRef phi2(emitter *e, LLVMTypeRef t, LLVMValueRef v0, LLVMBasicBlockRef b0,
                         LLVMValueRef v1, LLVMBasicBlockRef b1) {
  LLVMValueRef p = LLVMBuildPhi(e->b, t, "");
  LLVMValueRef in[2] = {v0, v1};
  LLVMBasicBlockRef bb[2] = {b0, b1};
  LLVMAddIncoming(p, in, bb, 2);
  return p;
}

static int online_sum(const emitter *e, const pass_plan *pl, int r, int gi) {
  return pl->rgroup[r] == gi && gnode(e, pl->red[r])->op != KD_IR_RMAX;
}

/* Merges state b into state a (both scalars f32): per group, the larger
 * max wins and each side's sums are rescaled to it; plain sums add. Used
 * in the loop (b: one body's contribution) and across threads. */
static void merge(emitter *e, const pass_plan *pl, LLVMValueRef *a, LLVMValueRef *b) {
  LLVMValueRef *ma = a, *mb = b, *xa = a + pl->ng, *xb = b + pl->ng;
  for (int gi = 0; gi < pl->ng; gi++) {
    LLVMValueRef mn = LLVMBuildSelect(e->b, LLVMBuildFCmp(e->b, LLVMRealOGT, mb[gi], ma[gi], ""), mb[gi],
                                      ma[gi], "");
    if (pl->gexp[gi]) {
      /* both maxima are >= -FLT_MAX: the differences are <= 0, never nan */
      LLVMValueRef sa = kd_emit_exp_nonpos(e->b, LLVMBuildFSub(e->b, ma[gi], mn, ""));
      LLVMValueRef sb = kd_emit_exp_nonpos(e->b, LLVMBuildFSub(e->b, mb[gi], mn, ""));
      for (int r = 0; r < pl->nr; r++)
        if (online_sum(e, pl, r, gi))
          xa[r] = kd_ir_fma(e->b, xa[r], sa, LLVMBuildFMul(e->b, xb[r], sb, ""));
    }
    ma[gi] = mn;
  }
  for (int r = 0; r < pl->nr; r++)
    if (pl->rgroup[r] < 0) xa[r] = LLVMBuildFAdd(e->b, xa[r], xb[r], "");
}

static LLVMValueRef hsum(emitter *e, LLVMValueRef v) {
  LLVMValueRef s = lane_of(e, v, 0);
  for (int i = 1; i < e->W; i++) s = LLVMBuildFAdd(e->b, s, lane_of(e, v, i), "");
  return s;
}

/* the largest lane; NaN lanes never win (x > m is false for them) */
static LLVMValueRef hmax(emitter *e, LLVMValueRef v, LLVMValueRef m) {
  for (int i = 0; i < e->W; i++) {
    LLVMValueRef x = lane_of(e, v, i);
    m = LLVMBuildSelect(e->b, LLVMBuildFCmp(e->b, LLVMRealOGT, x, m, ""), x, m, "");
  }
  return m;
}

/* The running max of group gi moves to m_new: rescale its sums by exp(m -
 * m_new), in a branch taken only when it grew (rarely, once the row's large
 * values have been seen). */
static void rescale(emitter *e, const pass_plan *pl, int gi, LLVMValueRef m, LLVMValueRef m_new,
                    LLVMValueRef *acc) {
  LLVMBasicBlockRef from = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef bscale = block(e, "rescale"), bjoin = block(e, "rescaled");
  LLVMBuildCondBr(e->b, LLVMBuildFCmp(e->b, LLVMRealOGT, m_new, m, ""), bscale, bjoin);
  LLVMPositionBuilderAtEnd(e->b, bscale);
  LLVMValueRef sc = kd_emit_exp_nonpos(e->b, LLVMBuildFSub(e->b, m, m_new, ""));
  LLVMValueRef scaled[MAX_STATE];
  for (int r = 0; r < pl->nr; r++)
    if (online_sum(e, pl, r, gi)) scaled[r] = LLVMBuildFMul(e->b, acc[r], sc, "");
  LLVMBuildBr(e->b, bjoin);
  LLVMPositionBuilderAtEnd(e->b, bjoin);
  for (int r = 0; r < pl->nr; r++)
    if (online_sum(e, pl, r, gi)) acc[r] = phi2(e, e->f32, acc[r], from, scaled[r], bscale);
}

static LLVMValueRef fold_contrib(emitter *e, kd_node_id id, LLVMValueRef w) {
  const kd_fuse_node *f = fnode(e, id);
  if (f->fold_f == KD_NONE) return w;
  LLVMValueRef x = convert(e, elem_value(e, f->fold_f), kd_vclass_of(gnode(e, f->fold_f)->dtype), KD_CL_F);
  LLVMValueRef p = LLVMBuildFMul(e->b, w, x, "");
  if (!f->mulz) return p;
  LLVMValueRef z = LLVMBuildFCmp(e->b, LLVMRealOEQ, w, LLVMConstNull(e->vf), "");
  return LLVMBuildSelect(e->b, z, LLVMConstNull(e->vf), p, "");
}

static void store_output(emitter *e, kd_node_id id) {
  LLVMValueRef v = convert(e, elem_value(e, id), kd_vclass_of(gnode(e, id)->dtype), KD_CL_F);
  LLVMValueRef st = LLVMBuildStore(e->b, v, gep(e->b, e->f32, e->g_row, e->j));
  LLVMSetAlignment(st, (unsigned)e->W * 4);
}

/* W columns at j: updates the thread's state (maxima, then sums) and
 * stores outputs. */
static void emit_body(emitter *e, const pass_plan *pl, LLVMValueRef *state) {
  memset(e->vval, 0, e->n * sizeof *e->vval);
  LLVMValueRef *m = state, *acc = state + pl->ng;
  for (int gi = 0; gi < pl->ng; gi++) {
    LLVMValueRef x = convert(e, elem_value(e, pl->ga[gi]), kd_vclass_of(gnode(e, pl->ga[gi])->dtype), KD_CL_F);
    LLVMValueRef m_new = hmax(e, x, m[gi]);
    if (pl->gexp[gi]) rescale(e, pl, gi, m[gi], m_new, acc);
    m[gi] = m_new;
    if (!pl->gexp[gi]) continue;
    /* x - m_new <= 0; x = -inf gives exactly 0 */
    LLVMValueRef w = kd_emit_exp_nonpos(e->b, LLVMBuildFSub(e->b, x, splat(e, m_new), ""));
    for (int r = 0; r < pl->nr; r++) {
      if (!online_sum(e, pl, r, gi)) continue;
      LLVMValueRef c = fnode(e, pl->red[r])->role == KD_ROLE_FOLDED ? fold_contrib(e, pl->red[r], w) : w;
      acc[r] = LLVMBuildFAdd(e->b, acc[r], hsum(e, c), "");
    }
  }
  for (int r = 0; r < pl->nr; r++) {
    if (pl->rgroup[r] >= 0) continue;
    kd_node_id src = gnode(e, pl->red[r])->src[0];
    LLVMValueRef x = convert(e, elem_value(e, src), kd_vclass_of(gnode(e, src)->dtype), KD_CL_F);
    acc[r] = LLVMBuildFAdd(e->b, acc[r], hsum(e, x), "");
  }
  for (int i = 0; i < pl->nstore; i++) store_output(e, pl->store[i]);
}

/* for (j = j0; j < end; j += step) body, W lanes at a time */
static void emit_loop(emitter *e, const pass_plan *pl, LLVMValueRef *st, int w, LLVMValueRef j0,
                      LLVMValueRef end, LLVMValueRef step) {
  int ns = pl->ng + pl->nr;
  set_width(e, w);
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef body = block(e, w > 1 ? "vloop" : "loop"), after = block(e, "loop.end");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, j0, end, ""), body, after);
  LLVMPositionBuilderAtEnd(e->b, body);
  LLVMValueRef j = LLVMBuildPhi(e->b, e->i64, "j");
  LLVMValueRef init[MAX_STATE], phis[MAX_STATE];
  for (int i = 0; i < ns; i++) {
    init[i] = st[i];
    st[i] = phis[i] = LLVMBuildPhi(e->b, e->f32, "");
  }
  e->j = j;
  emit_body(e, pl, st);
  LLVMValueRef jn = LLVMBuildAdd(e->b, j, step, "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(e->b);
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, jn, end, ""), body, after);
  LLVMAddIncoming(j, &j0, &pre, 1);
  LLVMAddIncoming(j, &jn, &latch, 1);
  for (int i = 0; i < ns; i++) {
    LLVMAddIncoming(phis[i], &init[i], &pre, 1);
    LLVMAddIncoming(phis[i], &st[i], &latch, 1);
  }
  LLVMPositionBuilderAtEnd(e->b, after);
  for (int i = 0; i < ns; i++) st[i] = phi2(e, e->f32, init[i], pre, st[i], latch);
}

static LLVMValueRef shared_at(emitter *e, LLVMValueRef warp, int i, int ns) {
  LLVMValueRef idx = LLVMBuildAdd(e->b, LLVMBuildMul(e->b, warp, i64c(e, ns), ""), i64c(e, i), "");
  LLVMValueRef z[2] = {i64c(e, 0), idx};
  LLVMTypeRef at = LLVMArrayType(e->f32, MAX_WARPS * MAX_STATE);
  return LLVMBuildGEP2(e->b, at, e->shared, z, 2, "");
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
  LLVMBasicBlockRef bw = block(e, "warp.write"), bj = block(e, "warp.written");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, e->lane, i64c(e, 0), ""), bw, bj);
  LLVMPositionBuilderAtEnd(e->b, bw);
  for (int i = 0; i < ns; i++) LLVMBuildStore(e->b, st[i], shared_at(e, e->warp, i, ns));
  LLVMBuildBr(e->b, bj);
  LLVMPositionBuilderAtEnd(e->b, bj);
  barrier(e);
  for (int w = 0; w < nwarps; w++) {
    for (int i = 0; i < ns; i++) o[i] = LLVMBuildLoad2(e->b, e->f32, shared_at(e, i64c(e, w), i, ns), "");
    if (w == 0) memcpy(st, o, (size_t)ns * sizeof *st);
    else merge(e, pl, st, o);
  }
}

/* The block's state to row scalars, in double (as cpu.c's finalize). */
static void finalize(emitter *e, const pass_plan *pl, LLVMValueRef *state) {
  LLVMValueRef *m = state, *acc = state + pl->ng;
  for (int r = 0; r < pl->nr; r++) {
    kd_node_id id = pl->red[r];
    const kd_node *n = gnode(e, id);
    int gi = pl->rgroup[r];
    LLVMValueRef gmax = gi >= 0 ? LLVMBuildFPExt(e->b, m[gi], e->f64, "") : NULL;
    LLVMValueRef total = LLVMBuildFPExt(e->b, acc[r], e->f64, "");
    LLVMValueRef v;
    if (gi < 0) {
      v = total;
    } else if (n->op == KD_IR_RMAX) {
      /* the running max starts at -FLT_MAX: an all -inf row is -inf */
      LLVMValueRef empty = LLVMBuildFCmp(e->b, LLVMRealOLE, gmax, LLVMConstReal(e->f64, -FLT_MAX), "");
      v = LLVMBuildSelect(e->b, empty, LLVMConstReal(e->f64, -INFINITY), gmax, "");
    } else if (n->op == KD_IR_LSE) {
      v = LLVMBuildFAdd(e->b, gmax, LLVMBuildFPExt(e->b, kd_emit_log(e->b, acc[r]), e->f64, ""), "");
    } else {
      /* folded: sum exp(a - c) f = exp(max - c) sum exp(a - max) f */
      kd_node_id c = fnode(e, id)->fold_c;
      LLVMValueRef cv = convert(e, row_value(e, c), kd_vclass_of(gnode(e, c)->dtype), KD_CL_F);
      LLVMValueRef sh = emit_exp(e, LLVMBuildFSub(e->b, gmax, cv, ""));
      LLVMValueRef z = LLVMBuildFCmp(e->b, LLVMRealOEQ, total, LLVMConstReal(e->f64, 0), "");
      v = LLVMBuildSelect(e->b, z, total, LLVMBuildFMul(e->b, total, sh, ""), "");
    }
    e->rval[id] = convert(e, v, KD_CL_F, kd_vclass_of(n->dtype));
  }
}

static void emit_pass(emitter *e, int pass) {
  pass_plan pl;
  plan_pass(e, pass, &pl);
  if (e->st) return;
  char *seen = calloc(e->n + 1, 1);
  if (!seen) {
    fail(e, KD_ERR_NOMEM, "ptx: out of memory");
    return;
  }
  for (int gi = 0; gi < pl.ng; gi++) prepare_rows(e, pl.ga[gi], seen);
  for (int r = 0; r < pl.nr; r++) {
    const kd_fuse_node *f = fnode(e, pl.red[r]);
    if (f->role == KD_ROLE_FOLDED && f->fold_f != KD_NONE) prepare_rows(e, f->fold_f, seen);
    if (f->role == KD_ROLE_ROWRED) prepare_rows(e, gnode(e, pl.red[r])->src[0], seen);
  }
  for (int i = 0; i < pl.nstore; i++) prepare_rows(e, pl.store[i], seen);
  free(seen);

  LLVMValueRef st[MAX_STATE];
  for (int i = 0; i < pl.ng + pl.nr; i++)
    st[i] = i < pl.ng ? LLVMConstReal(e->f32, -FLT_MAX) : LLVMConstNull(e->f32);
  LLVMValueRef B = i64c(e, e->block);
  emit_loop(e, &pl, st, 4, LLVMBuildMul(e->b, e->tid, i64c(e, 4), ""), e->vend,
            LLVMBuildMul(e->b, B, i64c(e, 4), ""));
  emit_loop(e, &pl, st, 1, LLVMBuildAdd(e->b, e->vend, e->tid, ""), e->V, B);
  block_reduce(e, &pl, st);
  finalize(e, &pl, st);
}

/* ---- kernels ---------------------------------------------------------------------- */

static void begin_kernel(emitter *e, const char *suffix) {
  char name[160];
  snprintf(name, sizeof name, "%s_%s", e->name, suffix);
  e->fn = LLVMAddFunction(e->M, name, e->kern_ty);
  if (!e->emu) LLVMSetFunctionCallConv(e->fn, LLVMPTXKernelCallConv);
  /* inputs are read-only and nothing aliases: loads may use the
   * non-coherent (texture) path, ld.global.nc */
  static const char *const attr_names[] = {"noalias", "readonly"};
  for (unsigned i = 0; i < 6; i++)
    for (int a = 0; a < 2; a++) {
      if (a == 1 && i > 2) continue;
      unsigned kind = LLVMGetEnumAttributeKindForName(attr_names[a], strlen(attr_names[a]));
      LLVMAddAttributeAtIndex(e->fn, i + 1, LLVMCreateEnumAttribute(e->C, kind, 0));
    }
  LLVMValueRef *p[6] = {&e->p_teacher, &e->p_student, &e->p_labels, &e->p_grad, &e->p_rows, &e->p_globals};
  for (unsigned i = 0; i < 6; i++) *p[i] = LLVMGetParam(e->fn, i);
  e->N = LLVMGetParam(e->fn, 6);
  e->V = LLVMGetParam(e->fn, 7);
  LLVMBasicBlockRef entry = block(e, "entry"), start = block(e, "start");
  LLVMPositionBuilderAtEnd(e->b, entry);
  LLVMPositionBuilderBefore(e->be, LLVMBuildBr(e->b, start));
  memset(e->gval, 0, e->n * sizeof *e->gval);
  memset(e->rval, 0, e->n * sizeof *e->rval);
  LLVMPositionBuilderAtEnd(e->b, start);
}

/* (p & (bytes - 1)) == 0 */
static LLVMValueRef aligned_to(emitter *e, LLVMValueRef p, int bytes) {
  LLVMValueRef a = LLVMBuildAnd(e->b, LLVMBuildPtrToInt(e->b, p, e->i64, ""), i64c(e, bytes - 1), "");
  return LLVMBuildICmp(e->b, LLVMIntEQ, a, i64c(e, 0), "");
}

/* The 4-wide path needs every row of every [N, V] array to start at a
 * multiple of 4 elements of an aligned base. */
static LLVMValueRef vector_end(emitter *e) {
  LLVMValueRef ok = LLVMBuildICmp(e->b, LLVMIntEQ, LLVMBuildAnd(e->b, e->V, i64c(e, 3), ""), i64c(e, 0), "");
  kd_node_id in[2] = {e->s->teacher, e->s->student};
  LLVMValueRef ptr[2] = {e->p_teacher, e->p_student};
  for (int i = 0; i < 2; i++)
    if (in[i] != KD_NONE)
      ok = LLVMBuildAnd(e->b, ok, aligned_to(e, ptr[i], gnode(e, in[i])->dtype == KD_BF16 ? 8 : 16), "");
  if (kd_graph_find_output(e->g, "grad") != KD_NONE) ok = LLVMBuildAnd(e->b, ok, aligned_to(e, e->p_grad, 16), "");
  return LLVMBuildSelect(e->b, ok, e->V, i64c(e, 0), "vend");
}

static void emit_row_kernel(emitter *e, int k) {
  char suffix[16];
  snprintf(suffix, sizeof suffix, "row%d", k);
  e->stage = k;
  begin_kernel(e, suffix);
  e->row = sreg(e, "ctaid");
  e->tid = sreg(e, "tid");
  e->lane = LLVMBuildAnd(e->b, e->tid, i64c(e, 31), "lane");
  e->warp = LLVMBuildLShr(e->b, e->tid, i64c(e, 5), "warp");
  LLVMValueRef off = LLVMBuildMul(e->b, e->row, e->V, "");
  LLVMTypeRef tt = e->s->teacher != KD_NONE && gnode(e, e->s->teacher)->dtype == KD_BF16 ? e->i16 : e->f32;
  e->t_row = gep(e->b, tt, e->p_teacher, off);
  e->s_row = gep(e->b, gnode(e, e->s->student)->dtype == KD_BF16 ? e->i16 : e->f32, e->p_student, off);
  e->g_row = gep(e->b, e->f32, e->p_grad, off);
  e->vend = vector_end(e);
  for (int p = 0; p < e->s->stage[k].npasses && !e->st; p++) emit_pass(e, p);
  /* per-row values of reductions over rows: thread 0 writes them */
  LLVMBasicBlockRef bw = block(e, "rows.write"), done = block(e, "done");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, e->tid, i64c(e, 0), ""), bw, done);
  LLVMPositionBuilderAtEnd(e->b, bw);
  for (kd_node_id id = 0; id < (kd_node_id)e->n && !e->st; id++) {
    const kd_fuse_node *f = fnode(e, id);
    if (f->role != KD_ROLE_NRED || f->stage != k) continue;
    kd_node_id src = gnode(e, id)->src[0];
    LLVMValueRef v = convert(e, row_value(e, src), kd_vclass_of(gnode(e, src)->dtype), KD_CL_F);
    LLVMValueRef idx = LLVMBuildAdd(e->b, LLVMBuildMul(e->b, i64c(e, f->slot), e->N, ""), e->row, "");
    LLVMBuildStore(e->b, v, gep(e->b, e->f64, e->p_rows, idx));
  }
  LLVMBuildBr(e->b, done);
  LLVMPositionBuilderAtEnd(e->b, done);
  LLVMBuildRetVoid(e->b);
}

/* sum_i rows[slot * N + i] by the step's KD_GPU_STEP_THREADS threads:
 * thread t adds rows [t c, (t + 1) c) in order (c = ceil(N / threads)),
 * then every thread adds the threads' partial sums in thread order, through
 * shared memory. Deterministic for a given N; every thread gets the sum. */
static LLVMValueRef emit_row_sum(emitter *e, int slot) {
  LLVMValueRef T = i64c(e, KD_GPU_STEP_THREADS);
  LLVMValueRef chunk = LLVMBuildSDiv(e->b, LLVMBuildAdd(e->b, e->N, i64c(e, KD_GPU_STEP_THREADS - 1), ""), T, "");
  LLVMValueRef lo = LLVMBuildMul(e->b, e->tid, chunk, "");
  LLVMValueRef hi = LLVMBuildAdd(e->b, lo, chunk, "");
  hi = LLVMBuildSelect(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, hi, e->N, ""), hi, e->N, "");
  LLVMValueRef rows = gep(e->b, e->f64, e->p_rows, LLVMBuildMul(e->b, i64c(e, slot), e->N, ""));
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(e->b);
  LLVMBasicBlockRef loop = block(e, "sum"), done = block(e, "sum.done");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, lo, hi, ""), loop, done);
  LLVMPositionBuilderAtEnd(e->b, loop);
  LLVMValueRef i = LLVMBuildPhi(e->b, e->i64, "i");
  LLVMValueRef acc = LLVMBuildPhi(e->b, e->f64, "acc");
  LLVMValueRef x = LLVMBuildLoad2(e->b, e->f64, gep(e->b, e->f64, rows, i), "");
  LLVMValueRef acc2 = LLVMBuildFAdd(e->b, acc, x, "");
  LLVMValueRef i2 = LLVMBuildAdd(e->b, i, i64c(e, 1), "");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntSLT, i2, hi, ""), loop, done);
  LLVMValueRef zf = LLVMConstReal(e->f64, 0);
  LLVMAddIncoming(i, &lo, &pre, 1);
  LLVMAddIncoming(i, &i2, &loop, 1);
  LLVMAddIncoming(acc, &zf, &pre, 1);
  LLVMAddIncoming(acc, &acc2, &loop, 1);
  LLVMPositionBuilderAtEnd(e->b, done);
  LLVMValueRef part = phi2(e, e->f64, zf, pre, acc2, loop);
  LLVMTypeRef at = LLVMArrayType(e->f64, KD_GPU_STEP_THREADS);
  LLVMValueRef idx[2] = {i64c(e, 0), e->tid};
  LLVMBuildStore(e->b, part, LLVMBuildGEP2(e->b, at, e->shared_d, idx, 2, ""));
  barrier(e);
  LLVMValueRef sum = zf;
  for (int t = 0; t < KD_GPU_STEP_THREADS; t++) {
    idx[1] = i64c(e, t);
    sum = LLVMBuildFAdd(e->b, sum, LLVMBuildLoad2(e->b, e->f64, LLVMBuildGEP2(e->b, at, e->shared_d, idx, 2, ""), ""), "");
  }
  barrier(e); /* everyone has read the partial sums before the next ones */
  return sum;
}

/* step<k>: the global scalars of phase k (as cpu.c's steps) on
 * KD_GPU_STEP_THREADS threads: all of them sum the rows of reductions over
 * rows, then thread 0 alone computes and stores; the last step also stores
 * outputs that are plain constants. */
static void emit_step(emitter *e, int k) {
  char suffix[16];
  snprintf(suffix, sizeof suffix, "step%d", k);
  begin_kernel(e, suffix);
  e->tid = sreg(e, "tid");
  for (kd_node_id id = 0; id < (kd_node_id)e->n && !e->st; id++) {
    const kd_fuse_node *f = fnode(e, id);
    if (f->kind == KD_FUSE_GLOBAL && f->role == KD_ROLE_NRED && f->phase == k)
      e->gval[id] = convert(e, emit_row_sum(e, f->slot), KD_CL_F, kd_vclass_of(gnode(e, id)->dtype));
  }
  LLVMBasicBlockRef work = block(e, "thread0"), done = block(e, "done");
  LLVMBuildCondBr(e->b, LLVMBuildICmp(e->b, LLVMIntEQ, e->tid, i64c(e, 0), ""), work, done);
  LLVMPositionBuilderAtEnd(e->b, done);
  LLVMBuildRetVoid(e->b);
  LLVMPositionBuilderAtEnd(e->b, work);
  for (kd_node_id id = 0; id < (kd_node_id)e->n && !e->st; id++) {
    const kd_fuse_node *f = fnode(e, id);
    const kd_node *n = gnode(e, id);
    int konst = n->op == KD_IR_CONST;
    if (f->kind != KD_FUSE_GLOBAL) continue;
    if (konst ? !(k == e->s->nstages && is_output(e, id)) : f->phase != k) continue;
    LLVMValueRef v;
    if (f->role == KD_ROLE_NRED) {
      v = e->gval[id];
    } else if (konst) {
      v = const_value(e, n);
    } else {
      LLVMValueRef src[KD_MAX_SRC] = {0};
      for (int i = 0; i < n->nsrc; i++) src[i] = global_value(e, n->src[i]);
      v = emit_op(e, id, src);
    }
    e->gval[id] = v;
    LLVMBuildStore(e->b, convert(e, v, kd_vclass_of(n->dtype), KD_CL_F), gep(e->b, e->f64, e->p_globals, i64c(e, id)));
  }
  LLVMBuildRetVoid(e->b);
}

static void init_types(emitter *e) {
  LLVMContextRef C = e->C;
  e->f32 = LLVMFloatTypeInContext(C);
  e->f64 = LLVMDoubleTypeInContext(C);
  e->i1 = LLVMInt1TypeInContext(C);
  e->i16 = LLVMInt16TypeInContext(C);
  e->i32 = LLVMInt32TypeInContext(C);
  e->i64 = LLVMInt64TypeInContext(C);
  e->gptr = LLVMPointerTypeInContext(C, e->emu ? 0 : 1); /* the global address space */
  set_width(e, 1);
  LLVMTypeRef p[8] = {e->gptr, e->gptr, e->gptr, e->gptr, e->gptr, e->gptr, e->i64, e->i64};
  e->kern_ty = LLVMFunctionType(LLVMVoidTypeInContext(C), p, 8, 0);
  LLVMTypeRef at = LLVMArrayType(e->f32, MAX_WARPS * MAX_STATE);
  char name[160];
  snprintf(name, sizeof name, "%s_shared", e->name);
  e->shared = LLVMAddGlobalInAddressSpace(e->M, at, name, e->emu ? 0 : 3);
  LLVMSetLinkage(e->shared, LLVMInternalLinkage);
  LLVMSetInitializer(e->shared, LLVMGetUndef(at));
  LLVMSetAlignment(e->shared, 16);
  LLVMTypeRef dt = LLVMArrayType(e->f64, KD_GPU_STEP_THREADS);
  snprintf(name, sizeof name, "%s_shared_d", e->name);
  e->shared_d = LLVMAddGlobalInAddressSpace(e->M, dt, name, e->emu ? 0 : 3);
  LLVMSetLinkage(e->shared_d, LLVMInternalLinkage);
  LLVMSetInitializer(e->shared_d, LLVMGetUndef(dt));
  LLVMSetAlignment(e->shared_d, 16);
}

static kd_status emit_module(const kd_schedule *s, const char *name, int block_size, int emu,
                             LLVMModuleRef M, kd_gpu_program *prog, char *err, size_t errlen) {
  emitter e = {0};
  e.emu = emu;
  e.s = s;
  e.g = s->g;
  e.n = kd_graph_size(s->g);
  e.block = block_size;
  e.name = name;
  e.err = err;
  e.errlen = errlen;
  e.C = LLVMGetModuleContext(M);
  e.M = M;
  e.gval = calloc(e.n + 1, sizeof *e.gval);
  e.rval = calloc(e.n + 1, sizeof *e.rval);
  e.vval = calloc(e.n + 1, sizeof *e.vval);
  if (!e.gval || !e.rval || !e.vval) fail(&e, KD_ERR_NOMEM, "ptx: out of memory");
  e.b = LLVMCreateBuilderInContext(e.C);
  e.be = LLVMCreateBuilderInContext(e.C);
  init_types(&e);
  kd_node_id loss = kd_graph_find_output(e.g, "loss");
  if (loss == KD_NONE) fail(&e, KD_ERR_INVALID, "ptx: the graph has no output \"loss\"");
  memset(prog, 0, sizeof *prog);
  for (int k = 0; k <= s->nstages && !e.st; k++) {
    emit_step(&e, k);
    if (k < s->nstages && s->stage[k].has_rows) {
      emit_row_kernel(&e, k);
      prog->rows_mask |= 1u << k;
    }
  }
  snprintf(prog->name, sizeof prog->name, "%s", name);
  prog->nstages = s->nstages;
  prog->nslots = s->nslots;
  prog->nglobals = (int)e.n;
  prog->loss_index = loss;
  prog->has_grad = kd_graph_find_output(e.g, "grad") != KD_NONE;
  prog->teacher_dtype = s->teacher == KD_NONE ? -1 : (int)gnode(&e, s->teacher)->dtype;
  prog->student_dtype = (int)gnode(&e, s->student)->dtype;
  prog->has_labels = s->labels != KD_NONE;
  prog->block = block_size;
  LLVMDisposeBuilder(e.b);
  LLVMDisposeBuilder(e.be);
  free(e.gval);
  free(e.rval);
  free(e.vval);
  return e.st;
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
  static const kd_ptx_options defaults = {NULL, NULL, 0};
  *out = o ? *o : defaults;
  if (!out->name) out->name = "kd_loss";
  if (!out->sm) out->sm = "sm_80";
  if (!out->block) out->block = 256;
  if (out->block < 32 || out->block > 1024 || out->block % 32)
    return kd_errf(err, errlen, KD_ERR_INVALID, "ptx: block size %d is not a multiple of 32 up to 1024", out->block);
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
  const char *name = o.name;
  int block_size = o.block;
  LLVMContextRef C = LLVMContextCreate();
  LLVMModuleRef M = LLVMModuleCreateWithNameInContext(name, C);
  LLVMSetTarget(M, TRIPLE);
  LLVMTargetDataRef td = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(M, td);
  LLVMDisposeTargetData(td);
  kd_gpu_program p;
  if (!st) st = emit_module(s, name, block_size, 0, M, &p, err, errlen);
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
  if (!st) st = emit_module(s, o.name, o.block, 1, m.mod, &h->prog, err, errlen);
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
