/* The dataflow graph: op tables, builders with shape and dtype inference,
 * the verifier and the printer.
 *
 * Every node goes through one function, kd_infer(), which derives its dtype
 * and shape from its op, its sources and its attributes. The builders call
 * it before appending a node; the verifier calls it again on every node and
 * compares, so a pass that patches a node by hand cannot leave a shape that
 * the builders would not have made. */
#include "ir.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- op tables ---------------------------------------------------------- */

static const char *const kd_op_names[] = {
#define KD_OP(name, spelling, nsrc, cls) spelling,
#include "ops.def"
#undef KD_OP
};
static_assert(sizeof kd_op_names / sizeof kd_op_names[0] == KD_OPCODE_COUNT,
              "every opcode needs a name");

static const signed char kd_op_nsrc[] = {
#define KD_OP(name, spelling, nsrc, cls) nsrc,
#include "ops.def"
#undef KD_OP
};
static_assert(sizeof kd_op_nsrc / sizeof kd_op_nsrc[0] == KD_OPCODE_COUNT,
              "every opcode needs an arity");

static const kd_op_class kd_op_classes[] = {
#define KD_OP(name, spelling, nsrc, cls) KD_CLASS_##cls,
#include "ops.def"
#undef KD_OP
};
static_assert(sizeof kd_op_classes / sizeof kd_op_classes[0] == KD_OPCODE_COUNT,
              "every opcode needs a class");

const char *kd_opcode_name(kd_opcode op) {
  return (unsigned)op < KD_OPCODE_COUNT ? kd_op_names[op] : "?";
}

int kd_opcode_nsrc(kd_opcode op) {
  return (unsigned)op < KD_OPCODE_COUNT ? kd_op_nsrc[op] : -1;
}

kd_op_class kd_opcode_class(kd_opcode op) {
  return (unsigned)op < KD_OPCODE_COUNT ? kd_op_classes[op] : KD_CLASS_OTHER;
}

/* ---- the graph ---------------------------------------------------------- */

typedef struct kd_output {
  char *name;
  kd_node_id id;
} kd_output;

struct kd_graph {
  kd_node *nodes; /* topological: sources have smaller ids */
  size_t n, cap;
  char **syms;    /* symbol i is KD_DIM_SYM(i) */
  size_t nsyms, symcap;
  kd_output *outs;
  size_t nouts, outcap;
  char **names;   /* every string the nodes point to, owned here */
  size_t nnames, namecap;
  bool failed;    /* an allocation failed or a builder rejected an operand */
  char err[256];  /* the first error */
};

kd_graph *kd_graph_new(void) { return calloc(1, sizeof(kd_graph)); }

void kd_graph_free(kd_graph *g) {
  if (!g) return;
  for (size_t i = 0; i < g->nsyms; i++) free(g->syms[i]);
  for (size_t i = 0; i < g->nouts; i++) free(g->outs[i].name);
  for (size_t i = 0; i < g->nnames; i++) free(g->names[i]);
  free(g->syms);
  free(g->outs);
  free(g->names);
  free(g->nodes);
  free(g);
}

size_t kd_graph_size(const kd_graph *g) { return g->n; }

const kd_node *kd_graph_node(const kd_graph *g, kd_node_id id) {
  return id >= 0 && (size_t)id < g->n ? &g->nodes[id] : NULL;
}

kd_node *kd_graph_node_mut(kd_graph *g, kd_node_id id) {
  return id >= 0 && (size_t)id < g->n ? &g->nodes[id] : NULL;
}

const char *kd_graph_error(const kd_graph *g) { return g->failed ? g->err : NULL; }

/* Records the first error; later ones are consequences of it. */
static void kd_fail(kd_graph *g, const char *fmt, ...) {
  if (g->failed) return;
  g->failed = true;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g->err, sizeof g->err, fmt, ap);
  va_end(ap);
}

/* Grows *v (of *cap elements of size sz) to hold at least need elements. */
static bool kd_grow(void **v, size_t *cap, size_t need, size_t sz) {
  if (need <= *cap) return true;
  size_t ncap = *cap ? *cap * 2 : 16;
  while (ncap < need) ncap *= 2;
  void *p = realloc(*v, ncap * sz);
  if (!p) return false;
  *v = p;
  *cap = ncap;
  return true;
}

/* A copy of s owned by the graph (node names live as long as the graph). */
static const char *kd_intern(kd_graph *g, const char *s) {
  if (!kd_grow((void **)&g->names, &g->namecap, g->nnames + 1, sizeof(char *)))
    return NULL;
  char *c = strdup(s);
  if (!c) return NULL;
  g->names[g->nnames++] = c;
  return c;
}

/* ---- symbols ------------------------------------------------------------ */

kd_dim kd_graph_sym(kd_graph *g, const char *name) {
  for (size_t i = 0; i < g->nsyms; i++)
    if (!strcmp(g->syms[i], name)) return KD_DIM_SYM(i);
  char *c = strdup(name);
  if (!c || !kd_grow((void **)&g->syms, &g->symcap, g->nsyms + 1, sizeof(char *))) {
    free(c);
    kd_fail(g, "out of memory");
    return 1; /* a valid dim, so callers do not index out of range */
  }
  g->syms[g->nsyms] = c;
  return KD_DIM_SYM(g->nsyms++);
}

const char *kd_graph_sym_name(const kd_graph *g, kd_dim d) {
  if (!KD_DIM_IS_SYM(d)) return NULL;
  size_t i = (size_t)KD_DIM_SYM_INDEX(d);
  return i < g->nsyms ? g->syms[i] : NULL;
}

size_t kd_graph_nsyms(const kd_graph *g) { return g->nsyms; }

/* ---- inference ---------------------------------------------------------- */

bool kd_dtype_is_float(kd_dtype t) { return t == KD_F32 || t == KD_BF16 || t == KD_F64; }

/* The rank in bool < i32 < i64 < f32 < f64 (bf16 computes as f32). */
static int kd_dtype_rank(kd_dtype t) {
  switch (t) {
  case KD_BOOL: return 0;
  case KD_I32: return 1;
  case KD_I64: return 2;
  case KD_BF16:
  case KD_F32: return 3;
  case KD_F64: return 4;
  default: return -1;
  }
}

/* The dtype an op computes in when given t: bf16 widens to f32. */
static kd_dtype kd_compute_dtype(kd_dtype t) { return t == KD_BF16 ? KD_F32 : t; }

/* Ops whose result is a float even on integer operands. */
static bool kd_op_makes_float(kd_opcode op) {
  switch (op) {
  case KD_IR_EXP: case KD_IR_LOG: case KD_IR_SQRT: case KD_IR_POW: case KD_IR_DIV:
  case KD_IR_TANH: case KD_IR_LSE: case KD_IR_SOFTMAX: case KD_IR_LOG_SOFTMAX:
    return true;
  default:
    return false;
  }
}

/* The common dtype of a and b; a weak (CONST) operand gives way to a tensor
 * of the same kind (float or integer). */
static kd_dtype kd_promote(const kd_node *a, const kd_node *b) {
  kd_dtype ta = kd_compute_dtype(a->dtype), tb = kd_compute_dtype(b->dtype);
  bool wa = a->op == KD_IR_CONST, wb = b->op == KD_IR_CONST;
  if (wa != wb) {
    const kd_node *weak = wa ? a : b, *strong = wa ? b : a;
    kd_dtype ts = kd_compute_dtype(strong->dtype);
    if (kd_dtype_is_float(weak->dtype) == kd_dtype_is_float(ts) && ts != KD_BOOL) return ts;
  }
  return kd_dtype_rank(ta) >= kd_dtype_rank(tb) ? ta : tb;
}

/* Broadcasts shapes a and b (numpy rules) into out; false if they do not. */
static bool kd_broadcast(const kd_node *a, const kd_node *b, int *rank, kd_dim *out) {
  int r = a->rank > b->rank ? a->rank : b->rank;
  for (int i = 0; i < r; i++) {
    int ia = a->rank - r + i, ib = b->rank - r + i;
    kd_dim da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
    if (da == db || db == 1) out[i] = da;
    else if (da == 1) out[i] = db;
    else return false;
  }
  *rank = r;
  return true;
}

/* Writes "[N, 1]" into buf, for messages and the printer. */
static const char *kd_shape_str(const kd_graph *g, int rank, const kd_dim *shape,
                                char *buf, size_t len) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, len - k, "[");
  for (int i = 0; i < rank && k < len; i++) {
    const char *s = kd_graph_sym_name(g, shape[i]);
    if (s) k += (size_t)snprintf(buf + k, len - k, "%s%s", i ? ", " : "", s);
    else k += (size_t)snprintf(buf + k, len - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
  }
  if (k < len) snprintf(buf + k, len - k, "]");
  return buf;
}

static bool kd_dim_ok(const kd_graph *g, kd_dim d) {
  return !KD_DIM_IS_SYM(d) || (size_t)KD_DIM_SYM_INDEX(d) < g->nsyms;
}

/* ---- model ops ---------------------------------------------------------- */

int kd_perm_pack(int rank, const int *perm) {
  int packed = rank << 16;
  for (int i = 0; i < rank; i++) packed |= (perm[i] & 15) << (4 * i);
  return packed;
}

int kd_perm_unpack(int packed, int *perm) {
  int rank = (packed >> 16) & 7, seen = 0;
  if (packed < 0 || rank > KD_MAX_RANK || (packed >> 19)) return -1;
  if (packed & ~(0x70000 | ((1 << (4 * rank)) - 1))) return -1;
  for (int i = 0; i < rank; i++) {
    perm[i] = (packed >> (4 * i)) & 15;
    if (perm[i] >= rank || (seen >> perm[i]) & 1) return -1;
    seen |= 1 << perm[i];
  }
  return rank;
}

/* Whether two shapes hold the same number of elements for every binding of
 * the symbols: the same symbols as often, and equal constant products. */
static bool kd_same_size(int ra, const kd_dim *a, int rb, const kd_dim *b) {
  int64_t pa = 1, pb = 1;
  kd_dim sa[KD_MAX_RANK], sb[KD_MAX_RANK];
  int na = 0, nb = 0;
  for (int i = 0; i < ra; i++) {
    if (KD_DIM_IS_SYM(a[i])) sa[na++] = a[i];
    else if (a[i] == 0 || pa > INT64_MAX / a[i]) return false;
    else pa *= a[i];
  }
  for (int i = 0; i < rb; i++) {
    if (KD_DIM_IS_SYM(b[i])) sb[nb++] = b[i];
    else if (b[i] == 0 || pb > INT64_MAX / b[i]) return false;
    else pb *= b[i];
  }
  if (pa != pb || na != nb) return false;
  for (int i = 0; i < na; i++) { /* a multiset comparison: na <= 4 */
    int j = 0;
    while (j < nb && sb[j] != sa[i]) j++;
    if (j == nb) return false;
    sb[j] = sb[--nb];
  }
  return true;
}

static bool kd_is_int(kd_dtype t) { return t == KD_I32 || t == KD_I64; }

/* RESHAPE, PERMUTE, MATMUL, GATHER_ROWS and SCATTER_ADD_ROWS. RESHAPE and
 * SCATTER_ADD_ROWS take their shape as given (checked by the caller). */
static bool kd_infer_model(const kd_graph *g, kd_node *n, const kd_node *const *s, char *err,
                           size_t errlen) {
  char b1[96], b2[96];
  const char *opname = kd_opcode_name(n->op);
  switch (n->op) {
  case KD_IR_RESHAPE:
    if (!kd_same_size(s[0]->rank, s[0]->shape, n->rank, n->shape)) {
      snprintf(err, errlen, "reshape: %s and %s do not have the same size",
               kd_shape_str(g, s[0]->rank, s[0]->shape, b1, sizeof b1),
               kd_shape_str(g, n->rank, n->shape, b2, sizeof b2));
      return false;
    }
    n->dtype = s[0]->dtype;
    return true;
  case KD_IR_PERMUTE: {
    int perm[KD_MAX_RANK];
    if (kd_perm_unpack(n->axis, perm) != s[0]->rank) {
      snprintf(err, errlen, "permute: not a permutation of %d axes", s[0]->rank);
      return false;
    }
    n->rank = s[0]->rank;
    for (int i = 0; i < n->rank; i++) n->shape[i] = s[0]->shape[perm[i]];
    n->dtype = s[0]->dtype;
    return true;
  }
  case KD_IR_MATMUL: {
    const kd_node *a = s[0], *b = s[1];
    bool shared = b->rank == 2;
    bool ok = a->rank >= 2 && b->rank >= 2 && (shared || b->rank == a->rank) &&
              a->shape[a->rank - 1] == b->shape[b->rank - 2];
    for (int i = 0; ok && !shared && i + 2 < a->rank; i++) ok = a->shape[i] == b->shape[i];
    if (!ok) {
      snprintf(err, errlen, "matmul: %s times %s",
               kd_shape_str(g, a->rank, a->shape, b1, sizeof b1),
               kd_shape_str(g, b->rank, b->shape, b2, sizeof b2));
      return false;
    }
    n->dtype = kd_promote(a, b);
    if (!kd_dtype_is_float(n->dtype)) {
      snprintf(err, errlen, "matmul of %s tensors", kd_dtype_name(n->dtype));
      return false;
    }
    n->rank = a->rank;
    memcpy(n->shape, a->shape, sizeof n->shape);
    n->shape[n->rank - 1] = b->shape[b->rank - 1];
    return true;
  }
  case KD_IR_GATHER_ROWS:
  case KD_IR_SCATTER_ADD_ROWS: {
    bool gather = n->op == KD_IR_GATHER_ROWS;
    const kd_node *t = s[0], *ids = s[1];
    if (!kd_is_int(ids->dtype) || !kd_dtype_is_float(t->dtype)) {
      snprintf(err, errlen, "%s: needs float rows and integer ids, not %s and %s", opname,
               kd_dtype_name(t->dtype), kd_dtype_name(ids->dtype));
      return false;
    }
    if (gather) {
      if (t->rank != 2 || ids->rank + 1 > KD_MAX_RANK) {
        snprintf(err, errlen, "gather_rows: a table of rank %d, ids of rank %d", t->rank,
                 ids->rank);
        return false;
      }
      n->rank = ids->rank + 1;
      memcpy(n->shape, ids->shape, sizeof n->shape);
      n->shape[ids->rank] = t->shape[1];
    } else {
      bool ok = n->rank == 2 && t->rank == ids->rank + 1 && n->shape[1] == t->shape[ids->rank];
      for (int i = 0; ok && i < ids->rank; i++) ok = t->shape[i] == ids->shape[i];
      if (!ok) {
        snprintf(err, errlen, "scatter_add_rows: rows %s at ids %s into %s",
                 kd_shape_str(g, t->rank, t->shape, b1, sizeof b1),
                 kd_shape_str(g, ids->rank, ids->shape, b2, sizeof b2),
                 n->rank == 2 ? "a table" : "a table that is not of rank 2");
        return false;
      }
    }
    n->dtype = kd_compute_dtype(t->dtype);
    return true;
  }
  default:
    snprintf(err, errlen, "%s: no shape rule", opname);
    return false;
  }
}

/* Derives n's dtype, rank and shape from its op, sources (ids below `limit`)
 * and attributes. INPUT, CONST, IOTA, CAST and EXPAND take their dtype or
 * shape from n as given. Returns false with a message in err. */
static bool kd_infer(const kd_graph *g, kd_node *n, size_t limit, char *err, size_t errlen) {
  char b1[96], b2[96];
  if ((unsigned)n->op >= KD_OPCODE_COUNT) {
    snprintf(err, errlen, "unknown opcode %d", (int)n->op);
    return false;
  }
  const char *opname = kd_opcode_name(n->op);
  if (n->nsrc != kd_opcode_nsrc(n->op)) {
    snprintf(err, errlen, "%s takes %d operands, not %d", opname, kd_opcode_nsrc(n->op), n->nsrc);
    return false;
  }
  const kd_node *s[KD_MAX_SRC] = {0};
  for (int i = 0; i < n->nsrc; i++) {
    if (n->src[i] < 0 || (size_t)n->src[i] >= limit) {
      snprintf(err, errlen, "%s: operand %d (%%%d) is not an earlier node", opname, i,
               (int)n->src[i]);
      return false;
    }
    s[i] = &g->nodes[n->src[i]];
  }
  if ((unsigned)n->dtype >= KD_DTYPE_COUNT) {
    snprintf(err, errlen, "%s: bad dtype %d", opname, (int)n->dtype);
    return false;
  }
  switch (kd_opcode_class(n->op)) {
  case KD_CLASS_INPUT:
    if (n->op == KD_IR_CONST) {
      n->rank = 0;
      return true;
    }
    if (n->rank < 0 || n->rank > KD_MAX_RANK) {
      snprintf(err, errlen, "%s: rank %d is not in 0..%d", opname, n->rank, KD_MAX_RANK);
      return false;
    }
    for (int i = 0; i < n->rank; i++)
      if (!kd_dim_ok(g, n->shape[i])) {
        snprintf(err, errlen, "%s: dimension %d is an unknown symbol", opname, i);
        return false;
      }
    if (n->op == KD_IR_INPUT && (!n->name || !*n->name)) {
      snprintf(err, errlen, "input without a name");
      return false;
    }
    if (n->op == KD_IR_IOTA) {
      if (n->axis < 0 || n->axis >= n->rank) {
        snprintf(err, errlen, "iota: axis %d out of range for rank %d", n->axis, n->rank);
        return false;
      }
      for (int i = 0; i < n->rank; i++)
        if (i != n->axis && n->shape[i] != 1) {
          snprintf(err, errlen, "iota: dimension %d must be 1", i);
          return false;
        }
      n->dtype = KD_I64;
    }
    return true;
  case KD_CLASS_UNARY: {
    kd_dtype t = kd_compute_dtype(s[0]->dtype);
    if (n->op == KD_IR_CAST || n->op == KD_IR_STOPGRAD) {
      if (n->op == KD_IR_STOPGRAD) n->dtype = s[0]->dtype;
    } else if (t == KD_BOOL) {
      snprintf(err, errlen, "%s of a bool tensor", opname);
      return false;
    } else {
      n->dtype = kd_op_makes_float(n->op) && !kd_dtype_is_float(t) ? KD_F32 : t;
    }
    n->rank = s[0]->rank;
    memcpy(n->shape, s[0]->shape, sizeof n->shape);
    return true;
  }
  case KD_CLASS_BINARY:
    if (!kd_broadcast(s[0], s[1], &n->rank, n->shape)) {
      snprintf(err, errlen, "%s: shapes %s and %s do not broadcast", opname,
               kd_shape_str(g, s[0]->rank, s[0]->shape, b1, sizeof b1),
               kd_shape_str(g, s[1]->rank, s[1]->shape, b2, sizeof b2));
      return false;
    }
    if (n->op >= KD_IR_LT && n->op <= KD_IR_NE) {
      n->dtype = KD_BOOL;
      return true;
    }
    n->dtype = kd_promote(s[0], s[1]);
    if (n->dtype == KD_BOOL && n->op != KD_IR_MAX && n->op != KD_IR_MIN) {
      snprintf(err, errlen, "%s of two bool tensors", opname);
      return false;
    }
    if (kd_op_makes_float(n->op) && !kd_dtype_is_float(n->dtype)) n->dtype = KD_F32;
    return true;
  case KD_CLASS_SELECT: {
    kd_node ab = *s[1];
    if (s[0]->dtype != KD_BOOL) {
      snprintf(err, errlen, "select: the condition is %s, not bool", kd_dtype_name(s[0]->dtype));
      return false;
    }
    if (!kd_broadcast(s[1], s[2], &ab.rank, ab.shape) ||
        !kd_broadcast(s[0], &ab, &n->rank, n->shape)) {
      snprintf(err, errlen, "select: operand shapes do not broadcast");
      return false;
    }
    n->dtype = kd_promote(s[1], s[2]);
    return true;
  }
  case KD_CLASS_REDUCE:
  case KD_CLASS_ROW: {
    bool all = kd_opcode_class(n->op) == KD_CLASS_REDUCE && n->axis == KD_AXIS_ALL;
    if (!all && (n->axis < 0 || n->axis >= s[0]->rank)) {
      snprintf(err, errlen, "%s: axis %d out of range for rank %d", opname, n->axis, s[0]->rank);
      return false;
    }
    kd_dtype t = kd_compute_dtype(s[0]->dtype);
    if (n->op == KD_IR_SUM && t == KD_BOOL) t = KD_I64;
    else if (t == KD_BOOL) {
      snprintf(err, errlen, "%s of a bool tensor", opname);
      return false;
    }
    n->dtype = kd_op_makes_float(n->op) && !kd_dtype_is_float(t) ? KD_F32 : t;
    n->rank = all ? 0 : s[0]->rank;
    memcpy(n->shape, s[0]->shape, sizeof n->shape);
    if (!all && kd_opcode_class(n->op) == KD_CLASS_REDUCE) n->shape[n->axis] = 1;
    return true;
  }
  case KD_CLASS_OTHER:
    if (n->op == KD_IR_PERMUTE || n->op == KD_IR_MATMUL || n->op == KD_IR_GATHER_ROWS)
      return kd_infer_model(g, n, s, err, errlen);
    if (n->rank < 0 || n->rank > KD_MAX_RANK) {
      snprintf(err, errlen, "%s: rank %d is not in 0..%d", opname, n->rank, KD_MAX_RANK);
      return false;
    }
    for (int i = 0; i < n->rank; i++)
      if (!kd_dim_ok(g, n->shape[i])) {
        snprintf(err, errlen, "%s: dimension %d is an unknown symbol", opname, i);
        return false;
      }
    if (n->op != KD_IR_EXPAND) return kd_infer_model(g, n, s, err, errlen);
    {
      kd_node target = *n;
      int r;
      kd_dim out[KD_MAX_RANK];
      if (!kd_broadcast(s[0], &target, &r, out) || r != n->rank ||
          memcmp(out, n->shape, (size_t)r * sizeof(kd_dim))) {
        snprintf(err, errlen, "expand: %s does not broadcast to %s",
                 kd_shape_str(g, s[0]->rank, s[0]->shape, b1, sizeof b1),
                 kd_shape_str(g, n->rank, n->shape, b2, sizeof b2));
        return false;
      }
    }
    n->dtype = s[0]->dtype;
    return true;
  }
  snprintf(err, errlen, "%s: no shape rule", opname);
  return false;
}

/* Infers n and appends it; KD_NONE (with the graph's error set) when an
 * operand is KD_NONE or does not fit. */
static kd_node_id kd_push(kd_graph *g, kd_node *n) {
  for (int i = 0; i < n->nsrc; i++)
    if (n->src[i] == KD_NONE) {
      kd_fail(g, "%s: an operand is missing (an earlier error)", kd_opcode_name(n->op));
      return KD_NONE;
    }
  for (int i = n->nsrc; i < KD_MAX_SRC; i++) n->src[i] = KD_NONE;
  char err[200];
  if (!kd_infer(g, n, g->n, err, sizeof err)) {
    kd_fail(g, "%s", err);
    return KD_NONE;
  }
  if (g->n >= (size_t)INT32_MAX ||
      !kd_grow((void **)&g->nodes, &g->cap, g->n + 1, sizeof(kd_node))) {
    kd_fail(g, "out of memory");
    return KD_NONE;
  }
  g->nodes[g->n] = *n;
  return (kd_node_id)g->n++;
}

/* ---- builders ----------------------------------------------------------- */

static kd_node kd_proto(kd_opcode op, int nsrc) {
  kd_node n;
  memset(&n, 0, sizeof n);
  n.op = op;
  n.nsrc = nsrc;
  n.src[0] = n.src[1] = n.src[2] = KD_NONE;
  return n;
}

static bool kd_shape_in(kd_graph *g, kd_node *n, int rank, const kd_dim *shape) {
  if (rank < 0 || rank > KD_MAX_RANK || (rank > 0 && !shape)) {
    kd_fail(g, "%s: rank %d is not in 0..%d", kd_opcode_name(n->op), rank, KD_MAX_RANK);
    return false;
  }
  n->rank = rank;
  for (int i = 0; i < rank; i++) n->shape[i] = shape[i];
  return true;
}

kd_node_id kd_input(kd_graph *g, const char *name, kd_dtype dtype, int rank,
                    const kd_dim *shape) {
  kd_node n = kd_proto(KD_IR_INPUT, 0);
  n.dtype = dtype;
  if (!name) {
    kd_fail(g, "input without a name");
    return KD_NONE;
  }
  if (kd_graph_find_input(g, name) != KD_NONE) {
    kd_fail(g, "input \"%s\" is defined twice", name);
    return KD_NONE;
  }
  if (!kd_shape_in(g, &n, rank, shape)) return KD_NONE;
  n.name = kd_intern(g, name);
  if (!n.name) {
    kd_fail(g, "out of memory");
    return KD_NONE;
  }
  return kd_push(g, &n);
}

kd_node_id kd_const(kd_graph *g, double value, kd_dtype dtype) {
  kd_node n = kd_proto(KD_IR_CONST, 0);
  n.dtype = dtype;
  n.value = value;
  return kd_push(g, &n);
}

kd_node_id kd_iota(kd_graph *g, int rank, const kd_dim *shape, int axis) {
  kd_node n = kd_proto(KD_IR_IOTA, 0);
  n.axis = axis;
  if (!kd_shape_in(g, &n, rank, shape)) return KD_NONE;
  return kd_push(g, &n);
}

/* Whether op belongs to the builder's class; records the error if not. */
static bool kd_op_of_class(kd_graph *g, kd_opcode op, kd_op_class cls, const char *builder) {
  if ((unsigned)op < KD_OPCODE_COUNT && kd_opcode_class(op) == cls) return true;
  kd_fail(g, "%s: %s is not a valid op here", builder, kd_opcode_name(op));
  return false;
}

kd_node_id kd_unary(kd_graph *g, kd_opcode op, kd_node_id a) {
  if (!kd_op_of_class(g, op, KD_CLASS_UNARY, "kd_unary")) return KD_NONE;
  if (op == KD_IR_CAST) {
    kd_fail(g, "kd_unary: use kd_cast for cast");
    return KD_NONE;
  }
  kd_node n = kd_proto(op, 1);
  n.src[0] = a;
  return kd_push(g, &n);
}

kd_node_id kd_cast(kd_graph *g, kd_node_id a, kd_dtype to) {
  kd_node n = kd_proto(KD_IR_CAST, 1);
  n.src[0] = a;
  n.dtype = to;
  return kd_push(g, &n);
}

kd_node_id kd_binary(kd_graph *g, kd_opcode op, kd_node_id a, kd_node_id b) {
  if (!kd_op_of_class(g, op, KD_CLASS_BINARY, "kd_binary")) return KD_NONE;
  kd_node n = kd_proto(op, 2);
  n.src[0] = a;
  n.src[1] = b;
  return kd_push(g, &n);
}

kd_node_id kd_select(kd_graph *g, kd_node_id cond, kd_node_id a, kd_node_id b) {
  kd_node n = kd_proto(KD_IR_SELECT, 3);
  n.src[0] = cond;
  n.src[1] = a;
  n.src[2] = b;
  return kd_push(g, &n);
}

kd_node_id kd_reduce(kd_graph *g, kd_opcode op, kd_node_id a, int axis) {
  if (!kd_op_of_class(g, op, KD_CLASS_REDUCE, "kd_reduce")) return KD_NONE;
  kd_node n = kd_proto(op, 1);
  n.src[0] = a;
  n.axis = axis;
  return kd_push(g, &n);
}

kd_node_id kd_row(kd_graph *g, kd_opcode op, kd_node_id a, int axis) {
  if (!kd_op_of_class(g, op, KD_CLASS_ROW, "kd_row")) return KD_NONE;
  kd_node n = kd_proto(op, 1);
  n.src[0] = a;
  n.axis = axis;
  return kd_push(g, &n);
}

kd_node_id kd_expand(kd_graph *g, kd_node_id a, int rank, const kd_dim *shape) {
  kd_node n = kd_proto(KD_IR_EXPAND, 1);
  n.src[0] = a;
  if (!kd_shape_in(g, &n, rank, shape)) return KD_NONE;
  return kd_push(g, &n);
}

kd_node_id kd_reshape(kd_graph *g, kd_node_id a, int rank, const kd_dim *shape) {
  kd_node n = kd_proto(KD_IR_RESHAPE, 1);
  n.src[0] = a;
  if (!kd_shape_in(g, &n, rank, shape)) return KD_NONE;
  return kd_push(g, &n);
}

kd_node_id kd_permute(kd_graph *g, kd_node_id a, const int *perm) {
  const kd_node *an = kd_graph_node(g, a);
  kd_node n = kd_proto(KD_IR_PERMUTE, 1);
  n.src[0] = a;
  n.axis = an ? kd_perm_pack(an->rank, perm) : 0;
  return kd_push(g, &n);
}

kd_node_id kd_matmul(kd_graph *g, kd_node_id a, kd_node_id b) {
  kd_node n = kd_proto(KD_IR_MATMUL, 2);
  n.src[0] = a;
  n.src[1] = b;
  return kd_push(g, &n);
}

kd_node_id kd_gather_rows(kd_graph *g, kd_node_id table, kd_node_id ids) {
  kd_node n = kd_proto(KD_IR_GATHER_ROWS, 2);
  n.src[0] = table;
  n.src[1] = ids;
  return kd_push(g, &n);
}

kd_node_id kd_scatter_add_rows(kd_graph *g, kd_node_id rows, kd_node_id ids, kd_dim nrows) {
  const kd_node *r = kd_graph_node(g, rows);
  kd_node n = kd_proto(KD_IR_SCATTER_ADD_ROWS, 2);
  n.src[0] = rows;
  n.src[1] = ids;
  n.rank = 2;
  n.shape[0] = nrows;
  n.shape[1] = r && r->rank > 0 ? r->shape[r->rank - 1] : 0;
  return kd_push(g, &n);
}

kd_node_id kd_clone(kd_graph *g, const kd_node *from, const kd_node_id *src) {
  kd_node n = kd_proto(from->op, from->nsrc);
  if ((unsigned)from->op >= KD_OPCODE_COUNT || from->nsrc < 0 || from->nsrc > KD_MAX_SRC) {
    kd_fail(g, "kd_clone: malformed node");
    return KD_NONE;
  }
  for (int i = 0; i < from->nsrc; i++) n.src[i] = src[i];
  n.value = from->value;
  n.axis = from->axis;
  n.dtype = from->dtype; /* kept only where the op takes it as given */
  n.rank = from->rank;
  memcpy(n.shape, from->shape, sizeof n.shape);
  if (from->op == KD_IR_INPUT) {
    if (!from->name) {
      kd_fail(g, "input without a name");
      return KD_NONE;
    }
    kd_node_id old = kd_graph_find_input(g, from->name);
    if (old != KD_NONE) return old; /* inputs are unique by name */
  }
  if (from->name) {
    n.name = kd_intern(g, from->name);
    if (!n.name) {
      kd_fail(g, "out of memory");
      return KD_NONE;
    }
  }
  return kd_push(g, &n);
}

void kd_set_name(kd_graph *g, kd_node_id id, const char *name) {
  kd_node *n = kd_graph_node_mut(g, id);
  if (!n || n->op == KD_IR_INPUT) return; /* an input's name is its identity */
  const char *c = name ? kd_intern(g, name) : NULL;
  if (name && !c) {
    kd_fail(g, "out of memory");
    return;
  }
  n->name = c;
}

/* ---- inputs and outputs ------------------------------------------------- */

kd_status kd_graph_add_output(kd_graph *g, const char *name, kd_node_id id) {
  if (!name || !kd_graph_node(g, id)) return KD_ERR_INVALID;
  if (kd_graph_find_output(g, name) != KD_NONE) return KD_ERR_INVALID;
  if (!kd_grow((void **)&g->outs, &g->outcap, g->nouts + 1, sizeof(kd_output)))
    return KD_ERR_NOMEM;
  char *c = strdup(name);
  if (!c) return KD_ERR_NOMEM;
  g->outs[g->nouts].name = c;
  g->outs[g->nouts].id = id;
  g->nouts++;
  return KD_OK;
}

size_t kd_graph_noutputs(const kd_graph *g) { return g->nouts; }

kd_node_id kd_graph_output(const kd_graph *g, size_t i) {
  return i < g->nouts ? g->outs[i].id : KD_NONE;
}

const char *kd_graph_output_name(const kd_graph *g, size_t i) {
  return i < g->nouts ? g->outs[i].name : NULL;
}

kd_node_id kd_graph_find_output(const kd_graph *g, const char *name) {
  for (size_t i = 0; i < g->nouts; i++)
    if (!strcmp(g->outs[i].name, name)) return g->outs[i].id;
  return KD_NONE;
}

kd_node_id kd_graph_find_input(const kd_graph *g, const char *name) {
  for (size_t i = 0; i < g->n; i++)
    if (g->nodes[i].op == KD_IR_INPUT && g->nodes[i].name && !strcmp(g->nodes[i].name, name))
      return (kd_node_id)i;
  return KD_NONE;
}

/* ---- verifier ----------------------------------------------------------- */

static kd_status kd_verify_fail(char *errbuf, size_t errlen, const char *fmt, ...) {
  if (errbuf && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
  }
  return KD_ERR_INVALID;
}

kd_status kd_graph_verify(const kd_graph *g, char *errbuf, size_t errlen) {
  char err[200], b1[96], b2[96];
  if (g->failed) return kd_verify_fail(errbuf, errlen, "graph: %s", g->err);
  for (size_t i = 0; i < g->n; i++) {
    const kd_node *n = &g->nodes[i];
    kd_node chk = *n;
    /* kd_infer checks topological order: sources must be below i. */
    if (!kd_infer(g, &chk, i, err, sizeof err))
      return kd_verify_fail(errbuf, errlen, "%%%zu: %s", i, err);
    if (chk.dtype != n->dtype)
      return kd_verify_fail(errbuf, errlen, "%%%zu: %s is %s but its operands make it %s", i,
                            kd_opcode_name(n->op), kd_dtype_name(n->dtype),
                            kd_dtype_name(chk.dtype));
    if (chk.rank != n->rank || memcmp(chk.shape, n->shape, (size_t)n->rank * sizeof(kd_dim)))
      return kd_verify_fail(errbuf, errlen, "%%%zu: %s has shape %s but its operands make it %s",
                            i, kd_opcode_name(n->op),
                            kd_shape_str(g, n->rank, n->shape, b1, sizeof b1),
                            kd_shape_str(g, chk.rank, chk.shape, b2, sizeof b2));
    for (int k = n->nsrc; k < KD_MAX_SRC; k++)
      if (n->src[k] != KD_NONE)
        return kd_verify_fail(errbuf, errlen, "%%%zu: %s has a stray operand %d", i,
                              kd_opcode_name(n->op), k);
    if (n->op == KD_IR_INPUT && kd_graph_find_input(g, n->name) != (kd_node_id)i)
      return kd_verify_fail(errbuf, errlen, "%%%zu: input \"%s\" is defined twice", i, n->name);
  }
  for (size_t i = 0; i < g->nouts; i++) {
    if (!kd_graph_node(g, g->outs[i].id))
      return kd_verify_fail(errbuf, errlen, "output %s: %%%d is not a node", g->outs[i].name,
                            (int)g->outs[i].id);
    for (size_t j = 0; j < i; j++)
      if (!strcmp(g->outs[i].name, g->outs[j].name))
        return kd_verify_fail(errbuf, errlen, "output %s is defined twice", g->outs[i].name);
  }
  return KD_OK;
}

/* ---- printer ------------------------------------------------------------ */

/* The shortest %g spelling that reads back as the same double, so golden
 * text is stable and constants survive a round trip. */
static void kd_print_double(FILE *out, double v) {
  if (isnan(v)) {
    fputs("nan", out);
    return;
  }
  if (isinf(v)) {
    fputs(v < 0 ? "-inf" : "inf", out);
    return;
  }
  char buf[40];
  if (v == trunc(v) && fabs(v) < 1e15) { /* integers as integers: -100, not -1e+02 */
    fprintf(out, "%.0f", v);
    return;
  }
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) break;
  }
  fputs(buf, out);
}

static void kd_print_axis(FILE *out, int axis) {
  if (axis == KD_AXIS_ALL) fputs(", axis=all", out);
  else fprintf(out, ", axis=%d", axis);
}

void kd_graph_print(const kd_graph *g, FILE *out) {
  char buf[96];
  for (size_t i = 0; i < g->n; i++) {
    const kd_node *n = &g->nodes[i];
    fprintf(out, "%%%zu : %s%s = %s", i, kd_dtype_name(n->dtype),
            kd_shape_str(g, n->rank, n->shape, buf, sizeof buf), kd_opcode_name(n->op));
    for (int k = 0; k < n->nsrc; k++) fprintf(out, "%s%%%d", k ? ", " : " ", (int)n->src[k]);
    switch (n->op) {
    case KD_IR_INPUT: fprintf(out, " \"%s\"", n->name); break;
    case KD_IR_CONST: fputc(' ', out); kd_print_double(out, n->value); break;
    case KD_IR_IOTA: fprintf(out, " axis=%d", n->axis); break;
    case KD_IR_PERMUTE: {
      int perm[KD_MAX_RANK], r = kd_perm_unpack(n->axis, perm);
      fputs(", perm=[", out);
      for (int k = 0; k < r; k++) fprintf(out, "%s%d", k ? ", " : "", perm[k]);
      fputc(']', out);
      break;
    }
    default:
      if (kd_opcode_class(n->op) == KD_CLASS_REDUCE || kd_opcode_class(n->op) == KD_CLASS_ROW)
        kd_print_axis(out, n->axis);
      break;
    }
    if (n->name && n->op != KD_IR_INPUT) fprintf(out, "  # %s", n->name);
    fputc('\n', out);
  }
  for (size_t i = 0; i < g->nouts; i++)
    fprintf(out, "output %s = %%%d\n", g->outs[i].name, (int)g->outs[i].id);
}
