/* Shared machinery of the graph passes (internal to passes/): a pass copies
 * its input graph node by node into a new graph, through a hash-consing
 * emitter, so that equal nodes merge as they are made and a rule that
 * rebuilds a subterm finds the node that already exists. */
#ifndef KD_REWRITE_H
#define KD_REWRITE_H

#include <stdbool.h>
#include <stddef.h>

#include "../ir/ir.h"

typedef struct kd_rw {
  kd_graph *g;       /* the graph being built */
  kd_node_id *table; /* open addressing over g's node ids; KD_NONE is empty */
  size_t cap, count;
  int fired;         /* rules applied (passes iterate to a fixed point) */
} kd_rw;

/* A new graph with the same symbols (so dims compare equal) as `from`. */
kd_status kd_rw_begin(kd_rw *rw, const kd_graph *from);
/* Frees everything (after a failure, or the graph once taken). */
void kd_rw_abort(kd_rw *rw);
/* Adds from's outputs with ids mapped through map (those not added by the
 * pass already), verifies, and hands the graph over. `pass` prefixes messages. */
kd_status kd_rw_finish(kd_rw *rw, const kd_graph *from, const kd_node_id *map, const char *pass,
                       kd_graph **out, char *err, size_t errlen);

/* A node like `proto` (its sources already ids of rw->g): the existing equal
 * node if there is one, else a new one (kd_clone: dtype and shape inferred). */
kd_node_id kd_rw_emit(kd_rw *rw, const kd_node *proto);

/* Builders over kd_rw_emit. */
kd_node_id kd_rw_const(kd_rw *rw, double v, kd_dtype t);
kd_node_id kd_rw_unary(kd_rw *rw, kd_opcode op, kd_node_id a);
kd_node_id kd_rw_binary(kd_rw *rw, kd_opcode op, kd_node_id a, kd_node_id b);
kd_node_id kd_rw_select(kd_rw *rw, kd_node_id c, kd_node_id a, kd_node_id b);
kd_node_id kd_rw_reduce(kd_rw *rw, kd_opcode op, kd_node_id a, int axis);
kd_node_id kd_rw_expand(kd_rw *rw, kd_node_id a, int rank, const kd_dim *shape);
kd_node_id kd_rw_iota(kd_rw *rw, int rank, const kd_dim *shape, int axis);
/* Any op: sources, the axis attribute (a PERMUTE's packed permutation) and,
 * for ops that take it as given (RESHAPE, SCATTER_ADD_ROWS), the shape. */
kd_node_id kd_rw_op(kd_rw *rw, kd_opcode op, int nsrc, const kd_node_id *src, int axis, int rank,
                    const kd_dim *shape);

static inline const kd_node *kd_rw_node(const kd_rw *rw, kd_node_id id) {
  return kd_graph_node(rw->g, id);
}

/* The value of a CONST, or of an EXPAND of a CONST. */
bool kd_rw_const_value(const kd_rw *rw, kd_node_id id, double *v);

/* Same rank and dims. */
bool kd_shape_eq(const kd_node *a, const kd_node *b);

/* Whether `a` is constant along `axis` of a tensor of rank `rank` that it
 * broadcasts into (its aligned dim is 1 or absent). */
bool kd_const_along(const kd_node *a, int rank, int axis);

/* Whether every element of `id` is >= 0 or nan (exp, abs, a softmax, sums
 * and products of such, constants >= 0, comparisons). Conservative. */
bool kd_rw_nonneg(const kd_rw *rw, kd_node_id id);

/* Gives node id the name of the node it replaces, unless it has one. */
void kd_rw_keep_name(kd_rw *rw, kd_node_id id, const char *name);

/* The copy loop every pass shares: node i of `in` becomes rule(rw, proto, ctx)
 * with the proto's sources already mapped; map receives the ids. */
typedef kd_node_id (*kd_rw_rule)(kd_rw *rw, kd_node *proto, void *ctx);
kd_status kd_rw_copy(kd_rw *rw, const kd_graph *in, kd_node_id *map, kd_rw_rule rule, void *ctx);

/* A whole pass made of one rule: begin, copy, finish. */
kd_status kd_rw_run(const kd_graph *in, kd_rw_rule rule, void *ctx, const char *pass,
                    kd_graph **out, char *err, size_t errlen);

#endif /* KD_REWRITE_H */
