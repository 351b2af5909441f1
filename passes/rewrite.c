/* The hash-consing emitter shared by the passes (see rewrite.h). */
#include "rewrite.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kd_status kd_rw_begin(kd_rw *rw, const kd_graph *from) {
  memset(rw, 0, sizeof *rw);
  rw->g = kd_graph_new();
  if (!rw->g) return KD_ERR_NOMEM;
  for (size_t i = 0; i < kd_graph_nsyms(from); i++)
    kd_graph_sym(rw->g, kd_graph_sym_name(from, KD_DIM_SYM(i)));
  return kd_graph_error(rw->g) ? KD_ERR_NOMEM : KD_OK;
}

void kd_rw_abort(kd_rw *rw) {
  kd_graph_free(rw->g);
  free(rw->table);
  memset(rw, 0, sizeof *rw);
}

kd_status kd_rw_finish(kd_rw *rw, const kd_graph *from, const kd_node_id *map, const char *pass,
                       kd_graph **out, char *err, size_t errlen) {
  char msg[256];
  kd_status st = KD_OK;
  *out = NULL;
  for (size_t i = 0; i < kd_graph_noutputs(from) && st == KD_OK; i++) {
    kd_node_id id = map[kd_graph_output(from, i)];
    if (kd_graph_find_output(rw->g, kd_graph_output_name(from, i)) != KD_NONE) continue;
    st = id == KD_NONE ? KD_ERR_INVALID
                       : kd_graph_add_output(rw->g, kd_graph_output_name(from, i), id);
  }
  if (st == KD_OK) st = kd_graph_verify(rw->g, msg, sizeof msg);
  else snprintf(msg, sizeof msg, "%s", kd_graph_error(rw->g) ? kd_graph_error(rw->g)
                                                            : "an output was lost");
  if (st != KD_OK) {
    if (err && errlen) snprintf(err, errlen, "%s: %s", pass, msg);
    kd_rw_abort(rw);
    return st;
  }
  *out = rw->g;
  rw->g = NULL;
  kd_rw_abort(rw);
  return KD_OK;
}

/* ---- hash-consing ------------------------------------------------------- */

/* Whether op takes its dtype, or its shape, as given rather than inferred. */
static bool kd_given_dtype(kd_opcode op) {
  return op == KD_IR_CONST || op == KD_IR_CAST || op == KD_IR_INPUT;
}
static bool kd_given_shape(kd_opcode op) {
  return op == KD_IR_INPUT || op == KD_IR_IOTA || op == KD_IR_EXPAND || op == KD_IR_RESHAPE ||
         op == KD_IR_SCATTER_ADD_ROWS;
}

static uint64_t kd_mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

/* Hashes the fields that define a node (see kd_node_same). */
static uint64_t kd_node_hash(const kd_node *n) {
  uint64_t h = kd_mix(0, (uint64_t)n->op);
  for (int i = 0; i < n->nsrc; i++) h = kd_mix(h, (uint64_t)(uint32_t)n->src[i]);
  h = kd_mix(h, (uint64_t)(uint32_t)n->axis);
  uint64_t bits;
  memcpy(&bits, &n->value, sizeof bits);
  h = kd_mix(h, bits);
  if (kd_given_dtype(n->op)) h = kd_mix(h, (uint64_t)n->dtype);
  if (kd_given_shape(n->op))
    for (int i = 0; i < n->rank; i++) h = kd_mix(h, (uint64_t)n->shape[i]);
  return h;
}

/* Two nodes are the same when op, operands, attributes and (where given
 * rather than inferred) dtype and shape agree; a constant's value is
 * compared bit for bit, so 0 and -0 stay apart. Names do not count. */
static bool kd_node_same(const kd_node *a, const kd_node *b) {
  if (a->op != b->op || a->nsrc != b->nsrc || a->axis != b->axis) return false;
  for (int i = 0; i < a->nsrc; i++)
    if (a->src[i] != b->src[i]) return false;
  if (memcmp(&a->value, &b->value, sizeof a->value)) return false;
  if (kd_given_dtype(a->op) && a->dtype != b->dtype) return false;
  if (kd_given_shape(a->op) && !kd_shape_eq(a, b)) return false;
  if (a->op == KD_IR_INPUT) return !strcmp(a->name, b->name);
  return true;
}

static bool kd_rw_rehash(kd_rw *rw) {
  size_t cap = rw->cap ? rw->cap * 2 : 256;
  kd_node_id *t = malloc(cap * sizeof *t);
  if (!t) return false;
  for (size_t i = 0; i < cap; i++) t[i] = KD_NONE;
  for (size_t k = 0; k < rw->cap; k++) {
    kd_node_id id = rw->table[k];
    if (id == KD_NONE) continue;
    size_t j = (size_t)kd_node_hash(kd_graph_node(rw->g, id)) & (cap - 1);
    while (t[j] != KD_NONE) j = (j + 1) & (cap - 1);
    t[j] = id;
  }
  free(rw->table);
  rw->table = t;
  rw->cap = cap;
  return true;
}

kd_node_id kd_rw_emit(kd_rw *rw, const kd_node *proto) {
  for (int i = 0; i < proto->nsrc; i++)
    if (proto->src[i] == KD_NONE) return kd_clone(rw->g, proto, proto->src); /* records it */
  if ((rw->count + 1) * 2 > rw->cap && !kd_rw_rehash(rw)) return KD_NONE;
  size_t j = (size_t)kd_node_hash(proto) & (rw->cap - 1);
  for (; rw->table[j] != KD_NONE; j = (j + 1) & (rw->cap - 1))
    if (kd_node_same(kd_graph_node(rw->g, rw->table[j]), proto)) return rw->table[j];
  kd_node_id id = kd_clone(rw->g, proto, proto->src);
  if (id == KD_NONE) return KD_NONE;
  /* kd_clone gives an input that exists already back by name. */
  if ((size_t)id + 1 == kd_graph_size(rw->g)) {
    rw->table[j] = id;
    rw->count++;
  }
  return id;
}

/* ---- builders ----------------------------------------------------------- */

/* A proto for op with sources and an axis (the rest zero). */
static kd_node kd_rw_proto(kd_opcode op, int nsrc, const kd_node_id *src, int axis) {
  kd_node n;
  memset(&n, 0, sizeof n);
  n.op = op;
  n.nsrc = nsrc;
  for (int i = 0; i < KD_MAX_SRC; i++) n.src[i] = i < nsrc ? src[i] : KD_NONE;
  n.axis = axis;
  return n;
}

kd_node_id kd_rw_const(kd_rw *rw, double v, kd_dtype t) {
  kd_node n = kd_rw_proto(KD_IR_CONST, 0, NULL, 0);
  n.value = v;
  n.dtype = t;
  return kd_rw_emit(rw, &n);
}

kd_node_id kd_rw_unary(kd_rw *rw, kd_opcode op, kd_node_id a) {
  kd_node n = kd_rw_proto(op, 1, &a, 0);
  return kd_rw_emit(rw, &n);
}

kd_node_id kd_rw_binary(kd_rw *rw, kd_opcode op, kd_node_id a, kd_node_id b) {
  kd_node_id s[2] = {a, b};
  kd_node n = kd_rw_proto(op, 2, s, 0);
  return kd_rw_emit(rw, &n);
}

kd_node_id kd_rw_select(kd_rw *rw, kd_node_id c, kd_node_id a, kd_node_id b) {
  kd_node_id s[3] = {c, a, b};
  kd_node n = kd_rw_proto(KD_IR_SELECT, 3, s, 0);
  return kd_rw_emit(rw, &n);
}

kd_node_id kd_rw_reduce(kd_rw *rw, kd_opcode op, kd_node_id a, int axis) {
  kd_node n = kd_rw_proto(op, 1, &a, axis);
  return kd_rw_emit(rw, &n);
}

kd_node_id kd_rw_expand(kd_rw *rw, kd_node_id a, int rank, const kd_dim *shape) {
  kd_node n = kd_rw_proto(KD_IR_EXPAND, 1, &a, 0);
  n.rank = rank;
  for (int i = 0; i < rank; i++) n.shape[i] = shape[i];
  return kd_rw_emit(rw, &n);
}

kd_node_id kd_rw_iota(kd_rw *rw, int rank, const kd_dim *shape, int axis) {
  kd_node n = kd_rw_proto(KD_IR_IOTA, 0, NULL, axis);
  n.rank = rank;
  for (int i = 0; i < rank; i++) n.shape[i] = shape[i];
  return kd_rw_emit(rw, &n);
}

kd_node_id kd_rw_op(kd_rw *rw, kd_opcode op, int nsrc, const kd_node_id *src, int axis, int rank,
                    const kd_dim *shape) {
  kd_node n = kd_rw_proto(op, nsrc, src, axis);
  n.rank = rank;
  for (int i = 0; i < rank; i++) n.shape[i] = shape[i];
  return kd_rw_emit(rw, &n);
}

/* ---- queries ------------------------------------------------------------ */

bool kd_rw_const_value(const kd_rw *rw, kd_node_id id, double *v) {
  const kd_node *n = kd_rw_node(rw, id);
  if (n && n->op == KD_IR_EXPAND) n = kd_rw_node(rw, n->src[0]);
  if (!n || n->op != KD_IR_CONST) return false;
  *v = n->value;
  return true;
}

bool kd_shape_eq(const kd_node *a, const kd_node *b) {
  if (a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

bool kd_const_along(const kd_node *a, int rank, int axis) {
  if (axis == KD_AXIS_ALL) {
    for (int i = 0; i < a->rank; i++)
      if (a->shape[i] != 1) return false;
    return true;
  }
  int k = axis - (rank - a->rank);
  return k < 0 || a->shape[k] == 1;
}

static bool kd_nonneg_at(const kd_rw *rw, kd_node_id id, int depth) {
  const kd_node *n = kd_rw_node(rw, id);
  if (!n || depth > 16) return false;
  switch (n->op) {
  case KD_IR_EXP: case KD_IR_SQRT: case KD_IR_ABS: case KD_IR_SOFTMAX: case KD_IR_IOTA:
  case KD_IR_LT: case KD_IR_LE: case KD_IR_GT: case KD_IR_GE: case KD_IR_EQ: case KD_IR_NE:
    return true;
  case KD_IR_CONST:
    return n->value >= 0;
  case KD_IR_EXPAND: case KD_IR_SUM: case KD_IR_RMAX: case KD_IR_CAST: case KD_IR_STOPGRAD:
  case KD_IR_POW:
    return kd_nonneg_at(rw, n->src[0], depth + 1);
  case KD_IR_ADD: case KD_IR_MUL: case KD_IR_MULZ: case KD_IR_DIV: case KD_IR_MIN:
    return kd_nonneg_at(rw, n->src[0], depth + 1) && kd_nonneg_at(rw, n->src[1], depth + 1);
  case KD_IR_MAX:
    return kd_nonneg_at(rw, n->src[0], depth + 1) || kd_nonneg_at(rw, n->src[1], depth + 1);
  case KD_IR_SELECT:
    return kd_nonneg_at(rw, n->src[1], depth + 1) && kd_nonneg_at(rw, n->src[2], depth + 1);
  default:
    return false;
  }
}

bool kd_rw_nonneg(const kd_rw *rw, kd_node_id id) { return kd_nonneg_at(rw, id, 0); }

void kd_rw_keep_name(kd_rw *rw, kd_node_id id, const char *name) {
  const kd_node *n = kd_rw_node(rw, id);
  if (name && n && !n->name) kd_set_name(rw->g, id, name);
}

kd_status kd_rw_copy(kd_rw *rw, const kd_graph *in, kd_node_id *map, kd_rw_rule rule, void *ctx) {
  for (size_t i = 0; i < kd_graph_size(in); i++) {
    const kd_node *old = kd_graph_node(in, (kd_node_id)i);
    kd_node c = *old;
    for (int k = 0; k < c.nsrc; k++) c.src[k] = map[c.src[k]];
    c.name = old->name;
    map[i] = rule(rw, &c, ctx);
    if (map[i] == KD_NONE) return KD_ERR_INVALID;
    kd_rw_keep_name(rw, map[i], old->name);
  }
  return KD_OK;
}

kd_status kd_rw_run(const kd_graph *in, kd_rw_rule rule, void *ctx, const char *pass,
                    kd_graph **out, char *err, size_t errlen) {
  kd_rw rw;
  *out = NULL;
  kd_node_id *map = malloc((kd_graph_size(in) + 1) * sizeof *map);
  kd_status st = map ? kd_rw_begin(&rw, in) : KD_ERR_NOMEM;
  if (st == KD_OK) {
    st = kd_rw_copy(&rw, in, map, rule, ctx);
    if (st == KD_OK) {
      st = kd_rw_finish(&rw, in, map, pass, out, err, errlen);
    } else {
      if (err && errlen)
        snprintf(err, errlen, "%s: %s", pass,
                 kd_graph_error(rw.g) ? kd_graph_error(rw.g) : "a rule failed");
      kd_rw_abort(&rw);
    }
  } else if (err && errlen) {
    snprintf(err, errlen, "%s: out of memory", pass);
  }
  free(map);
  return st;
}
