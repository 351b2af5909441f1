/* The core that the CPU and PTX back ends (cpu.c, ptx.c) share when they
 * lower a row schedule (passes/fuse.h) to LLVM IR: the builder, schedule,
 * graph, types and value tables in one struct, kd_rowemit, that each back
 * end's emitter embeds as its first member r, and what both emit the same
 * way on it (functions kd_re_*): a function's entry, class conversions and
 * broadcasts, global, row and element values (the walk over the graph, the
 * split shift of f32 lanes by a double scalar, folded contributions), a
 * pass's row prerequisites, a step's global scalars, the rows of the
 * reductions over rows.
 *
 * What differs per target comes in through the hooks below (all required)
 * or stays in cpu.c and ptx.c: the loops and how a pass's reductions and
 * their lanes combine (lazy references, double lanes and a row cache on
 * the CPU; exact maxima, shuffles and shared memory on the GPU), loads and
 * stores, summing the rows, the functions' signatures and the program.
 * Every function here emits exactly the instructions, in the order, that
 * the back ends emitted before they shared it.
 *
 * Value classes (elementwise.h): F is f32 in W-lane vectors and double in
 * scalars, I is i64, B is i1; element values are vectors of r->W lanes. */
#ifndef KD_ROWEMIT_H
#define KD_ROWEMIT_H

#include <stddef.h>

#include <llvm-c/Core.h>

#include "../ir/ir.h"
#include "../passes/fuse.h"
#include "../runtime/status.h"
#include "elementwise.h"

typedef struct kd_rowemit kd_rowemit;

struct kd_rowemit {
  const kd_schedule *s;
  const kd_graph *g;
  size_t n;         /* graph size: the length of the value tables */
  int W;            /* lanes of the element vectors being emitted */
  const char *name; /* symbol prefix */
  const char *who;  /* message prefix: "codegen", "ptx" */
  kd_status st;     /* the first failure, */
  char *err;        /* with its message */
  size_t errlen;

  LLVMContextRef C;
  LLVMModuleRef M;
  LLVMBuilderRef b;
  LLVMBuilderRef be; /* before the entry block's terminator: global loads */
  LLVMTypeRef f32, f64, i1, i16, i32, i64, vf; /* vf: W f32 lanes */

  /* per function */
  LLVMValueRef fn, N, V, row, j; /* j: the first column of the vector */
  LLVMValueRef p_labels, p_rows, p_globals;
  LLVMValueRef *gval;  /* [n] global scalars */
  LLVMValueRef *rval;  /* [n] row scalars of the current row */
  LLVMValueRef *vval;  /* [n] element vectors of the current body */
  LLVMValueRef *vzero; /* [n] lanes known to be 0 (elementwise.h), or NULL */
  int stage;

  /* the back end's element value of node id (memoised in vval):
   * kd_re_elem_value, or values of its own before it */
  LLVMValueRef (*elem_value)(kd_rowemit *r, kd_node_id id);
  /* W lanes of the teacher's or student's logits at [row, j), as f32 */
  LLVMValueRef (*load_logits)(kd_rowemit *r, kd_node_id id);
  /* the back end's own lowering of an element node (a cheaper exp or log
   * where the argument's range is known), or NULL: the generic one */
  LLVMValueRef (*elem_special)(kd_rowemit *r, kd_node_id id);
  /* exp and log of f32 lanes or of a double scalar */
  LLVMValueRef (*exp)(kd_rowemit *r, LLVMValueRef x);
  LLVMValueRef (*log)(kd_rowemit *r, LLVMValueRef x);
};

/* Fills the shared part: the value tables (zeroed, n + 1 entries), two
 * builders and the scalar types; W and vf stay the caller's. Failures are
 * recorded in r->st. kd_re_dispose frees what this allocated. */
void kd_re_init(kd_rowemit *r, const kd_schedule *s, const char *name, const char *who,
                LLVMModuleRef M, char *err, size_t errlen);
void kd_re_dispose(kd_rowemit *r);

/* Records the first failure and its message (printf format). */
void kd_re_fail(kd_rowemit *r, kd_status st, const char *fmt, ...);

static inline const kd_node *kd_re_gnode(const kd_rowemit *r, kd_node_id id) {
  return kd_graph_node(r->g, id);
}
static inline const kd_fuse_node *kd_re_fnode(const kd_rowemit *r, kd_node_id id) {
  return &r->s->node[id];
}

/* ---- IR helpers ---- */

/* The type of class c: W lanes (f32, i64, i1) when vec, else a scalar
 * (double, i64, i1). */
LLVMTypeRef kd_re_type_of(const kd_rowemit *r, kd_vclass c, int vec);
LLVMValueRef kd_re_i64c(const kd_rowemit *r, long long v);
/* x in all W lanes */
LLVMValueRef kd_re_splat(kd_rowemit *r, LLVMValueRef x);
/* j + (0, 1, .., W - 1) as i64 lanes (W <= 64) */
LLVMValueRef kd_re_lane_index(kd_rowemit *r);
LLVMBasicBlockRef kd_re_block(kd_rowemit *r, const char *name);
/* phi [v0, b0], [v1, b1] of type t */
LLVMValueRef kd_re_phi(kd_rowemit *r, LLVMTypeRef t, LLVMValueRef v0, LLVMBasicBlockRef b0,
                       LLVMValueRef v1, LLVMBasicBlockRef b1);

/* Starts function <name>_<suffix> of type ty (r->fn): an entry block, where
 * be stays for argument and global loads, that branches to a start block,
 * where b is left; no global or row value is known yet. */
void kd_re_begin_function(kd_rowemit *r, const char *suffix, LLVMTypeRef ty);

/* ---- values ---- */

/* W bf16 lanes (i16, as loaded) as f32 lanes. */
LLVMValueRef kd_re_bf16_to_f32(kd_rowemit *r, LLVMValueRef x);
/* W f32 lanes as bf16 lanes (i16, to store), rounded to nearest even. */
LLVMValueRef kd_re_f32_to_bf16(kd_rowemit *r, LLVMValueRef x);
/* v of class `from` as class `to`, scalar or vector alike. */
LLVMValueRef kd_re_convert(kd_rowemit *r, LLVMValueRef v, kd_vclass from, kd_vclass to);
/* A row or global scalar (double / i64 / i1) broadcast into W lanes of class c. */
LLVMValueRef kd_re_widen(kd_rowemit *r, LLVMValueRef x, kd_vclass c);
/* Node id from v[] (its sources' values) through kd_elem_op. */
LLVMValueRef kd_re_op(kd_rowemit *r, kd_node_id id, LLVMValueRef *v);
/* A constant node as a scalar of its class. */
LLVMValueRef kd_re_const_value(kd_rowemit *r, const kd_node *n);
/* A global scalar: a constant, or p_globals[id] loaded and converted in the
 * entry block once per function. */
LLVMValueRef kd_re_global_value(kd_rowemit *r, kd_node_id id);
/* A row scalar of the current row (globals, labels[row], row ops); a
 * reduction not computed yet is a scheduler bug (KD_ERR_BACKEND). */
LLVMValueRef kd_re_row_value(kd_rowemit *r, kd_node_id id);
/* The element value of id, memoised in vval: a row scalar broadcast, the
 * logits (load_logits), the column index, elem_special's lowering, the
 * split shift, else kd_re_op over the sources' r->elem_value. */
LLVMValueRef kd_re_elem_value(kd_rowemit *r, kd_node_id id);
/* The element value of id as f32 lanes, and its row value as a double. */
LLVMValueRef kd_re_elem_f(kd_rowemit *r, kd_node_id id);
LLVMValueRef kd_re_row_f(kd_rowemit *r, kd_node_id id);
/* x + c or x - c for f32 lanes x and a double row or global scalar c, with
 * c split into two floats; NULL when id is not such a node. */
LLVMValueRef kd_re_shift_by_scalar(kd_rowemit *r, kd_node_id id);
/* w times a folded sum's f (none: w); under MULZ 0 where w is 0 (wz: those
 * lanes when known, else NULL and they are compared). */
LLVMValueRef kd_re_fold_contrib(kd_rowemit *r, kd_node_id id, LLVMValueRef w, LLVMValueRef wz);
/* Computes the row and global scalars below id (seen: [n] flags). */
void kd_re_prepare_rows(kd_rowemit *r, kd_node_id id, char *seen);
/* kd_re_prepare_rows for a pass's roots: its online groups' a (ga[0 ..
 * ng)), its reductions' arguments (red[0 .. nr)), its stored outputs. */
void kd_re_prepare_pass(kd_rowemit *r, const kd_node_id *ga, int ng, const kd_node_id *red, int nr,
                        const kd_node_id *store, int nstore, char *seen);
/* Stores the current row's values of the stage's reductions over rows to
 * p_rows[slot * N + row]. */
void kd_re_store_row_reds(kd_rowemit *r);

/* The body of step k: each global scalar of phase k (only the live ones
 * when live_only), and in the last step the outputs that are plain
 * constants, computed in double and stored to p_globals[id]. A reduction
 * over rows takes nred's value (the back end sums the rows). */
void kd_re_emit_globals(kd_rowemit *r, int k, int live_only,
                        LLVMValueRef (*nred)(kd_rowemit *r, kd_node_id id));

/* ---- the schedule ---- */

int kd_re_is_output(const kd_rowemit *r, kd_node_id id);
/* The a of an online reduction: exp(a - c) for a folded sum, the LSE's source. */
kd_node_id kd_re_online_a(const kd_rowemit *r, kd_node_id id);

#endif /* KD_ROWEMIT_H */
