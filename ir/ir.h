/* The kdc dataflow-graph IR.
 *
 * A graph is an append-only array of nodes in topological order (a node's
 * sources always have smaller ids); passes build new graphs rather than edit
 * old ones. Nodes are typed tensors: a dtype and a shape of up to
 * KD_MAX_RANK dimensions, each a constant size or a symbol such as N or V.
 *
 * Shape rules: elementwise ops broadcast as numpy does (right-aligned, size-1
 * dims stretch); reductions keep the reduced axis with size 1, so a row
 * reduction of [N, V] is [N, 1] and broadcasts back over the row. A symbol
 * broadcasts only against itself or 1 (N against V, or N against 5, is an
 * error: the builder cannot prove them equal).
 *
 * Rank 0: a reduction with axis KD_AXIS_ALL reduces every axis and gives a
 * rank-0 tensor ([]); that is how a loss becomes a scalar:
 *   loss = sum(per_row [N, 1], KD_AXIS_ALL) : f32[]
 * A rank-0 tensor (a CONST, a loss) broadcasts against any shape.
 *
 * Dtype rules: comparisons give KD_BOOL; SELECT needs a KD_BOOL condition.
 * Otherwise the result of an op is the wider of its operands in the order
 * bool < i32 < i64 < f32 < f64, where bf16 is a storage type that computes as
 * f32 (only INPUT and CAST produce bf16: bf16 data gets f32 accumulation).
 * A CONST operand is "weak": f32 tensor * f64 const stays f32, so a graph's
 * hyperparameters do not widen its arithmetic. EXP, LOG, SQRT, POW, DIV,
 * LSE, SOFTMAX and LOG_SOFTMAX of integers give f32; SUM of bool gives i64
 * (a count); arithmetic on two bools is an error.
 *
 * Legend used in comments: N = rows (tokens), V = vocabulary.
 *
 * The IR knows no syntax and no LLVM. */
#ifndef KD_IR_H
#define KD_IR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../runtime/dtype.h"
#include "../runtime/status.h"

/* Opcodes are KD_IR_<NAME> (KD_IR_ADD, KD_IR_LSE, ...): the AST's operator
 * enum (frontend/ast.h) already owns KD_OP_ADD etc., and the lowering pass
 * includes both headers. */
typedef enum kd_opcode {
#define KD_OP(name, spelling, nsrc, cls) KD_IR_##name,
#include "ops.def"
#undef KD_OP
  KD_OPCODE_COUNT
} kd_opcode;

typedef enum kd_op_class {
  KD_CLASS_INPUT, KD_CLASS_UNARY, KD_CLASS_BINARY, KD_CLASS_SELECT,
  KD_CLASS_REDUCE, KD_CLASS_ROW, KD_CLASS_OTHER
} kd_op_class;

const char *kd_opcode_name(kd_opcode op); /* "add", "logsumexp", ... */
bool kd_dtype_is_float(kd_dtype t);        /* f32, bf16, f64 */
int kd_opcode_nsrc(kd_opcode op);
kd_op_class kd_opcode_class(kd_opcode op);

/* A dimension: a size >= 0, or a symbol encoded as a negative number. */
typedef int64_t kd_dim;
#define KD_DIM_SYM(i) (-1 - (int64_t)(i))
#define KD_DIM_IS_SYM(d) ((d) < 0)
#define KD_DIM_SYM_INDEX(d) ((int)(-1 - (d)))

#define KD_MAX_RANK 4
#define KD_AXIS_ALL (-1) /* a reduction over every axis, to rank 0 */
#define KD_MAX_SRC 3

typedef int32_t kd_node_id;
#define KD_NONE ((kd_node_id)-1)

typedef struct kd_node {
  kd_opcode op;
  kd_dtype dtype;
  int rank;
  kd_dim shape[KD_MAX_RANK];
  int nsrc;
  kd_node_id src[KD_MAX_SRC];
  double value;     /* CONST */
  int axis;         /* REDUCE: an axis or KD_AXIS_ALL; ROW, IOTA: an axis;
                       PERMUTE: the permutation, packed (KD_PERM_PACK) */
  const char *name; /* INPUT: the input's name; others: optional, for printing */
} kd_node;

typedef struct kd_graph kd_graph;

kd_graph *kd_graph_new(void);
void kd_graph_free(kd_graph *g);

size_t kd_graph_size(const kd_graph *g);
/* The node, or NULL for an id out of range. The pointer is valid until the
 * next node is added. */
const kd_node *kd_graph_node(const kd_graph *g, kd_node_id id);
/* The same, writable: for tests that break a graph on purpose and for passes
 * that patch a node in place; run kd_graph_verify afterwards. */
kd_node *kd_graph_node_mut(kd_graph *g, kd_node_id id);

/* Symbolic dimensions, found or added by name ("N", "V"). */
kd_dim kd_graph_sym(kd_graph *g, const char *name);
const char *kd_graph_sym_name(const kd_graph *g, kd_dim d);
size_t kd_graph_nsyms(const kd_graph *g);

/* Builders. Each checks its operands, infers dtype and shape, and returns the
 * new node's id. On a bad operand (a shape that does not broadcast, an axis
 * out of range, KD_NONE as a source) it returns KD_NONE and records the
 * first such error in the graph; every later builder call given KD_NONE
 * returns KD_NONE, so a caller may check once, at the end. */
kd_node_id kd_input(kd_graph *g, const char *name, kd_dtype dtype, int rank,
                    const kd_dim *shape);
kd_node_id kd_const(kd_graph *g, double value, kd_dtype dtype);
kd_node_id kd_iota(kd_graph *g, int rank, const kd_dim *shape, int axis);
kd_node_id kd_unary(kd_graph *g, kd_opcode op, kd_node_id a);
kd_node_id kd_cast(kd_graph *g, kd_node_id a, kd_dtype to);
kd_node_id kd_binary(kd_graph *g, kd_opcode op, kd_node_id a, kd_node_id b);
kd_node_id kd_select(kd_graph *g, kd_node_id cond, kd_node_id a, kd_node_id b);
kd_node_id kd_reduce(kd_graph *g, kd_opcode op, kd_node_id a, int axis);
kd_node_id kd_row(kd_graph *g, kd_opcode op, kd_node_id a, int axis);
/* a broadcast to `shape` (numpy rules): what autodiff makes of a gradient
 * that is constant along some axes of its input. */
kd_node_id kd_expand(kd_graph *g, kd_node_id a, int rank, const kd_dim *shape);
/* Model ops (see ops.def). kd_reshape keeps the elements in C order; the
 * sizes must agree: the same symbols, each as often, and the same product of
 * constant dims. kd_permute: out dim i is a's dim perm[i] (perm has a's
 * rank). kd_matmul: a [.., M, K] times b [K, N] (shared by every leading
 * index) or b [.., K, N] with a's leading dims. kd_gather_rows: rows of
 * table [V, D] at integer ids [..] -> [.., D] (an id outside 0..V-1 is an
 * error when run). kd_scatter_add_rows: the adjoint of a gather: a zero
 * table [V, D] (V given) plus row g[i] at ids[i] for every i. */
kd_node_id kd_reshape(kd_graph *g, kd_node_id a, int rank, const kd_dim *shape);
kd_node_id kd_permute(kd_graph *g, kd_node_id a, const int *perm);
kd_node_id kd_matmul(kd_graph *g, kd_node_id a, kd_node_id b);
kd_node_id kd_gather_rows(kd_graph *g, kd_node_id table, kd_node_id ids);
kd_node_id kd_scatter_add_rows(kd_graph *g, kd_node_id rows, kd_node_id ids, kd_dim nrows);

/* A permutation of rank <= KD_MAX_RANK packed into kd_node.axis: 4 bits per
 * axis, plus the rank in bits 16..18 (so [0] differs from no permutation). */
int kd_perm_pack(int rank, const int *perm);
/* Unpacks into perm[KD_MAX_RANK]; returns the rank, or -1 if not valid. */
int kd_perm_unpack(int packed, int *perm);

/* A copy of node `n` of another graph with new sources (for passes that
 * rebuild graphs); shape and dtype are inferred anew. */
kd_node_id kd_clone(kd_graph *g, const kd_node *n, const kd_node_id *src);
/* Gives a node a name for printing (copied). */
void kd_set_name(kd_graph *g, kd_node_id id, const char *name);

/* The first builder error, or NULL. */
const char *kd_graph_error(const kd_graph *g);

/* Named outputs (the loss, gradients). */
kd_status kd_graph_add_output(kd_graph *g, const char *name, kd_node_id id);
size_t kd_graph_noutputs(const kd_graph *g);
kd_node_id kd_graph_output(const kd_graph *g, size_t i);
const char *kd_graph_output_name(const kd_graph *g, size_t i);
kd_node_id kd_graph_find_output(const kd_graph *g, const char *name);
kd_node_id kd_graph_find_input(const kd_graph *g, const char *name);

/* Checks every invariant (topological order, arity, shapes, dtypes); on
 * failure writes a message naming the node into errbuf. */
kd_status kd_graph_verify(const kd_graph *g, char *errbuf, size_t errlen);

/* The textual form printed by `kdc emit-ir`, one node per line, then one
 * line per output; stable (tests compare it as golden text):
 *   %0 : f32[N, V] = input "teacher"
 *   %1 : f32[] = const 2
 *   %7 : f32[N, V] = sub %3, %6  # name
 *   %8 : f32[N, 1] = logsumexp %7, axis=1
 *   %9 : f32[] = sum %8, axis=all
 *   output loss = %9 */
void kd_graph_print(const kd_graph *g, FILE *out);

#endif /* KD_IR_H */
