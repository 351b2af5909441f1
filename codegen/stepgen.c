/* Lowering of graphs to step programs (stepgen.h): instantiate and rewrite,
 * schedule, decide which views need memory, plan memory, emit. */
#include "stepgen.h"
#include "stepfuse.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Where a node's elements are: in its base's memory (the base is a node
   with memory of its own: an INPUT or a node an instruction writes) at
   offset + index . stride, in elements; or, for base KD_NONE, everywhere
   the immediate imm (a CONST and its views). */
typedef struct sg_layout {
  kd_node_id base;
  double imm;
  int64_t offset;
  int64_t stride[KD_MAX_RANK];
} sg_layout;

typedef struct kd_sg {
  kd_graph *g;            /* the instantiated graph: every dim a number */
  size_t n;               /* its nodes */
  kd_node_id *origin;     /* [n]: the input graph's node each one stands for */
  size_t origin_cap;
  bool *needed, *late;    /* an output needs it; it runs in the second phase */
  bool *copy;             /* a view given memory of its own (a MAP COPY) */
  int64_t *slice;         /* a slice SUM (see sg_slices): the index it picks, else -1 */
  bool *alias;            /* a slice SUM or the one-hot product under it: a view */
  bool *view, *external;  /* memplan's options */
  sg_layout *lay;
  int32_t *value;         /* [n]: the step value of the node's own memory, or -1 */
  int32_t *out_slot;      /* [noutputs]: output o's slot value k if its node's instruction
                             writes it there, else -1 - k (copied or filled there) */
  kd_step_value *values;  /* the program's, slots' first (value k is slot k) */
  kd_step_slot *slots;
  int32_t nvalues, nslots;
  kd_node_id *order;
  size_t norder, nfirst;
  kd_memplan plan;
  kd_step_instr *instr;
  size_t ninstr, cap;
  char *err;
  size_t errlen;
} kd_sg;

static kd_status sg_fail(kd_sg *sg, kd_status st, const char *fmt, ...) {
  if (sg->err && sg->errlen) {
    int k = snprintf(sg->err, sg->errlen, "stepgen: ");
    va_list ap;
    va_start(ap, fmt);
    if (k > 0 && (size_t)k < sg->errlen) vsnprintf(sg->err + k, sg->errlen - (size_t)k, fmt, ap);
    va_end(ap);
  }
  return st;
}

static const kd_node *sg_node(const kd_sg *sg, kd_node_id id) { return kd_graph_node(sg->g, id); }

static bool sg_is_view_op(kd_opcode op) {
  return op == KD_IR_RESHAPE || op == KD_IR_EXPAND || op == KD_IR_PERMUTE ||
         op == KD_IR_STOPGRAD;
}

/* A view op, or a node sg_slices made one: no instruction computes it
   unless it is copied. */
static bool sg_is_view(const kd_sg *sg, kd_node_id i) {
  return sg_is_view_op(kd_graph_node(sg->g, i)->op) || sg->alias[i];
}

static int64_t sg_elems(int rank, const int64_t *shape) {
  int64_t e = 1;
  for (int i = 0; i < rank; i++) e *= shape[i];
  return e;
}

static void sg_contig(int rank, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int i = rank; i-- > 0;) {
    stride[i] = s;
    s *= shape[i];
  }
}

/* Whether strides lay shape out densely in C order (size-1 dims aside). */
static bool sg_is_contig(int rank, const int64_t *shape, const int64_t *stride) {
  int64_t s = 1;
  if (sg_elems(rank, shape) == 0) return true;
  for (int i = rank; i-- > 0;) {
    if (shape[i] == 1) continue;
    if (stride[i] != s) return false;
    s *= shape[i];
  }
  return true;
}

static bool sg_same_shape(const kd_node *n, int rank, const kd_dim *shape) {
  if (n->rank != rank) return false;
  for (int i = 0; i < rank; i++)
    if (n->shape[i] != shape[i]) return false;
  return true;
}

/* ---- instantiation ------------------------------------------------------ */

/* x reshaped; none where x, or the source of a reshape x, has the shape.
   A longer chain stays a chain: its middle may be a copy that other
   readers share (attention's merged heads). */
static kd_node_id sg_reshape(kd_graph *g, kd_node_id x, int rank, const kd_dim *shape) {
  const kd_node *n = kd_graph_node(g, x);
  if (!n) return KD_NONE;
  if (sg_same_shape(n, rank, shape)) return x;
  if (n->op == KD_IR_RESHAPE && sg_same_shape(kd_graph_node(g, n->src[0]), rank, shape))
    return n->src[0];
  return kd_reshape(g, x, rank, shape);
}

/* A weight's gradient (see stepgen.h): sum over the axes 0 .. r-3 (each
   once, in any order, as a chain of SUMs ending at this one over `axis`) of
   matmul(permute(a) swapping the last two axes, G), all of rank r >= 3.
   Returns the one product, reshaped to the sum's shape, or KD_NONE. */
static kd_node_id sg_weight_grad(kd_graph *g, kd_node_id x, int axis, int rank,
                                 const kd_dim *shape) {
  bool seen[KD_MAX_RANK] = {false};
  int count = 0;
  for (const kd_node *n = kd_graph_node(g, x);; n = kd_graph_node(g, x)) {
    if (axis < 0 || axis >= KD_MAX_RANK || seen[axis]) return KD_NONE;
    seen[axis] = true;
    count++;
    if (n->op != KD_IR_SUM) break;
    axis = n->axis;
    x = n->src[0];
  }
  const kd_node *m = kd_graph_node(g, x);
  if (m->op != KD_IR_MATMUL || m->rank < 3 || count != m->rank - 2 || rank != m->rank)
    return KD_NONE;
  int r = m->rank;
  for (int i = 0; i < r - 2; i++)
    if (!seen[i]) return KD_NONE;
  const kd_node *p = kd_graph_node(g, m->src[0]), *gn = kd_graph_node(g, m->src[1]);
  int perm[KD_MAX_RANK];
  if (p->op != KD_IR_PERMUTE || gn->rank != r || kd_perm_unpack(p->axis, perm) != r) return KD_NONE;
  for (int i = 0; i < r; i++)
    if (perm[i] != (i < r - 2 ? i : 2 * r - 3 - i)) return KD_NONE;
  kd_node_id a = p->src[0], G = m->src[1];
  const kd_node *an = kd_graph_node(g, a);
  kd_dim rows = 1, k = an->shape[r - 1], nn = gn->shape[r - 1];
  for (int i = 0; i + 1 < r; i++) rows *= an->shape[i];
  kd_dim ak[2] = {rows, k}, gk[2] = {rows, nn};
  static const int swap[2] = {1, 0};
  kd_node_id at = kd_permute(g, sg_reshape(g, a, 2, ak), swap);
  kd_node_id mm = kd_matmul(g, at, sg_reshape(g, G, 2, gk));
  return sg_reshape(g, mm, rank, shape);
}

/* The node's dims with the symbols' sizes; false (err set) on one unbound. */
static bool sg_dims(kd_sg *sg, const kd_graph *in, kd_node *n, const kd_sym_binding *bind,
                    size_t nbind) {
  for (int d = 0; d < n->rank; d++) {
    if (!KD_DIM_IS_SYM(n->shape[d])) continue;
    const char *name = kd_graph_sym_name(in, n->shape[d]);
    int64_t size = -1;
    for (size_t i = 0; i < nbind && name; i++)
      if (!strcmp(bind[i].name, name)) size = bind[i].size;
    if (size < 0) {
      sg_fail(sg, KD_ERR_INVALID, "symbol %s has no size bound", name ? name : "?");
      return false;
    }
    n->shape[d] = size;
  }
  return true;
}

static kd_status sg_instantiate(kd_sg *sg, const kd_graph *in, const kd_sym_binding *bind,
                                size_t nbind) {
  size_t n = kd_graph_size(in);
  kd_node_id *map = malloc((n + 1) * sizeof *map);
  sg->g = kd_graph_new();
  if (!map || !sg->g) {
    free(map);
    return sg_fail(sg, KD_ERR_NOMEM, "out of memory");
  }
  kd_graph *g = sg->g;
  kd_status st = KD_OK;
  for (size_t i = 0; i < n && st == KD_OK; i++) {
    kd_node p = *kd_graph_node(in, (kd_node_id)i);
    size_t before = kd_graph_size(g);
    if (!sg_dims(sg, in, &p, bind, nbind)) {
      st = KD_ERR_INVALID;
      break;
    }
    for (int k = 0; k < p.nsrc; k++) p.src[k] = map[p.src[k]];
    switch (p.op) {
    case KD_IR_STOPGRAD: map[i] = p.src[0]; break; /* the identity when run */
    case KD_IR_RESHAPE: map[i] = sg_reshape(g, p.src[0], p.rank, p.shape); break;
    case KD_IR_EXPAND:
      map[i] = sg_same_shape(kd_graph_node(g, p.src[0]), p.rank, p.shape)
                   ? p.src[0]
                   : kd_expand(g, p.src[0], p.rank, p.shape);
      break;
    case KD_IR_SUM:
      map[i] = sg_weight_grad(g, p.src[0], p.axis, p.rank, p.shape);
      if (map[i] == KD_NONE) map[i] = kd_clone(g, &p, p.src);
      break;
    default: map[i] = kd_clone(g, &p, p.src);
    }
    if (map[i] == KD_NONE) {
      st = sg_fail(sg, KD_ERR_INVALID, "%%%zu %s: %s", i, kd_opcode_name(p.op),
                   kd_graph_error(g) ? kd_graph_error(g) : "out of memory");
      break;
    }
    size_t after = kd_graph_size(g);
    if (after > sg->origin_cap) {
      size_t cap = 2 * after + 16;
      kd_node_id *o = realloc(sg->origin, cap * sizeof *o);
      if (!o) {
        st = sg_fail(sg, KD_ERR_NOMEM, "out of memory");
        break;
      }
      sg->origin = o;
      sg->origin_cap = cap;
    }
    for (size_t k = before; k < after; k++) sg->origin[k] = (kd_node_id)i;
  }
  for (size_t i = 0; i < kd_graph_noutputs(in) && st == KD_OK; i++)
    st = kd_graph_add_output(g, kd_graph_output_name(in, i), map[kd_graph_output(in, i)]);
  if (st == KD_OK && kd_graph_error(g))
    st = sg_fail(sg, KD_ERR_INVALID, "%s", kd_graph_error(g));
  free(map);
  sg->n = kd_graph_size(g);
  return st;
}

/* ---- schedule ----------------------------------------------------------- */

static kd_status sg_schedule(kd_sg *sg, const char *split_input) {
  size_t n = sg->n;
  kd_node_id split = KD_NONE;
  if (split_input) {
    split = kd_graph_find_input(sg->g, split_input);
    if (split == KD_NONE)
      return sg_fail(sg, KD_ERR_INVALID, "the graph has no input \"%s\"", split_input);
  }
  for (size_t o = 0; o < kd_graph_noutputs(sg->g); o++)
    sg->needed[kd_graph_output(sg->g, o)] = true;
  for (size_t i = n; i-- > 0;) {
    const kd_node *nd = sg_node(sg, (kd_node_id)i);
    if (sg->needed[i])
      for (int k = 0; k < nd->nsrc; k++) sg->needed[nd->src[k]] = true;
  }
  bool *first = calloc(n + 1, sizeof *first); /* needed by an output of the first phase */
  if (!first) return sg_fail(sg, KD_ERR_NOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) { /* late: depends on the split input, for now */
    const kd_node *nd = sg_node(sg, (kd_node_id)i);
    sg->late[i] = (kd_node_id)i == split;
    for (int k = 0; k < nd->nsrc; k++) sg->late[i] = sg->late[i] || sg->late[nd->src[k]];
  }
  for (size_t o = 0; o < kd_graph_noutputs(sg->g); o++)
    if (!sg->late[kd_graph_output(sg->g, o)]) first[kd_graph_output(sg->g, o)] = true;
  for (size_t i = n; i-- > 0;) {
    const kd_node *nd = sg_node(sg, (kd_node_id)i);
    if (first[i])
      for (int k = 0; k < nd->nsrc; k++) first[nd->src[k]] = true;
  }
  for (size_t i = 0; i < n; i++) sg->late[i] = !first[i];
  /* Within a phase, the values that read no input (attention's causal
     mask, one-hot selectors: iotas and what is made of them and of
     constants) come first: between a map and the map that reads it, such
     an instruction could take the first one's dead bytes and keep the two
     from fusing (stepfuse.h). */
  bool *fixed = first; /* reused: depends on no input */
  for (size_t i = 0; i < n; i++) {
    const kd_node *nd = sg_node(sg, (kd_node_id)i);
    fixed[i] = nd->op != KD_IR_INPUT;
    for (int k = 0; k < nd->nsrc; k++) fixed[i] = fixed[i] && fixed[nd->src[k]];
  }
  for (int phase = 0; phase < 2; phase++) {
    for (int pass = 0; pass < 2; pass++)
      for (size_t i = 0; i < n; i++)
        if (sg->needed[i] && sg->late[i] == (phase == 1) && fixed[i] == (pass == 0))
          sg->order[sg->norder++] = (kd_node_id)i;
    if (phase == 0) sg->nfirst = sg->norder;
  }
  free(first);
  return KD_OK;
}

/* ---- slices ------------------------------------------------------------- */

/* The index k where h is a one-hot vector along axis `axis` of a rank-r
   tensor whose size there is `size`: CAST(EQ(IOTA, CONST k)) with the
   iota's other dims 1 (layers.c's attention takes q, k and v out of the
   packed qkv this way: the IR has no slice); -1 if h is not one. */
static int64_t sg_one_hot(const kd_sg *sg, kd_node_id h, int r, int axis, int64_t size) {
  const kd_node *c = sg_node(sg, h);
  if (c->op == KD_IR_CAST) c = sg_node(sg, c->src[0]);
  if (c->op != KD_IR_EQ) return -1;
  const kd_node *io = sg_node(sg, c->src[0]), *k = sg_node(sg, c->src[1]);
  if (io->op == KD_IR_CONST) {
    const kd_node *t = io;
    io = k, k = t;
  }
  if (io->op != KD_IR_IOTA || k->op != KD_IR_CONST || io->rank > r ||
      io->axis + r - io->rank != axis || io->shape[io->axis] != size || k->value < 0 ||
      k->value >= (double)size || k->value != (double)(int64_t)k->value)
    return -1;
  return (int64_t)k->value;
}

/* SUM(MUL(x, h), axis) with h one-hot along the axis picks x's slice at
   h's index: a view of x (offset k * stride, stride 0), and the product,
   read by nothing else, is never computed. x must be the product's first
   operand (memplan's views keep their first source's memory) and of its
   dtype and shape. */
static kd_status sg_slices(kd_sg *sg) {
  int32_t *readers = calloc(sg->n + 1, sizeof *readers);
  if (!readers) return sg_fail(sg, KD_ERR_NOMEM, "out of memory");
  for (size_t k = 0; k < sg->norder; k++) {
    const kd_node *n = sg_node(sg, sg->order[k]);
    for (int j = 0; j < n->nsrc; j++) readers[n->src[j]]++;
  }
  for (size_t o = 0; o < kd_graph_noutputs(sg->g); o++) readers[kd_graph_output(sg->g, o)]++;
  for (size_t k = 0; k < sg->norder; k++) {
    kd_node_id i = sg->order[k];
    const kd_node *n = sg_node(sg, i);
    if (n->op != KD_IR_SUM || n->axis == KD_AXIS_ALL || readers[n->src[0]] != 1) continue;
    const kd_node *m = sg_node(sg, n->src[0]);
    if (m->op != KD_IR_MUL) continue;
    const kd_node *x = sg_node(sg, m->src[0]);
    if (x->dtype != m->dtype || x->rank != m->rank || x->op == KD_IR_CONST) continue;
    bool same = true;
    for (int d = 0; d < x->rank; d++) same = same && x->shape[d] == m->shape[d];
    int64_t at = same ? sg_one_hot(sg, m->src[1], m->rank, n->axis, m->shape[n->axis]) : -1;
    if (at < 0) continue;
    sg->slice[i] = at;
    sg->alias[i] = sg->alias[n->src[0]] = true;
  }
  free(readers);
  return KD_OK;
}

/* ---- layouts ------------------------------------------------------------ */

/* numpy's reshape without a copy (_attempt_nocopy_reshape): strides for
   the new shape over the old one's memory, or false where the dims it
   merges are not laid out one after the other. */
static bool sg_reshape_strides(int ro, const int64_t *oshape, const int64_t *ostride, int rn,
                               const int64_t *nshape, int64_t *nstride) {
  int64_t od[KD_MAX_RANK], os[KD_MAX_RANK];
  int on = 0;
  if (sg_elems(ro, oshape) == 0) {
    sg_contig(rn, nshape, nstride);
    return true;
  }
  for (int i = 0; i < ro; i++)
    if (oshape[i] != 1) od[on] = oshape[i], os[on++] = ostride[i];
  int oi = 0, oj = 1, ni = 0, nj = 1;
  while (ni < rn && oi < on) {
    int64_t np = nshape[ni], op = od[oi];
    while (np != op) {
      if (np < op) {
        if (nj >= rn) return false;
        np *= nshape[nj++];
      } else {
        if (oj >= on) return false;
        op *= od[oj++];
      }
    }
    for (int k = oi; k < oj - 1; k++)
      if (os[k] != od[k + 1] * os[k + 1]) return false;
    nstride[nj - 1] = os[oj - 1];
    for (int k = nj - 1; k > ni; k--) nstride[k - 1] = nstride[k] * nshape[k];
    ni = nj++;
    oi = oj++;
  }
  int64_t last = ni >= 1 ? nstride[ni - 1] : 1;
  for (int k = ni; k < rn; k++) nstride[k] = last;
  return true;
}

/* Node i's layout as a view of its source; false for a reshape that
   strides cannot express. */
static bool sg_view_layout(const kd_sg *sg, kd_node_id i, sg_layout *l) {
  const kd_node *n = sg_node(sg, i), *s = sg_node(sg, n->src[0]);
  const sg_layout *sl = &sg->lay[n->src[0]];
  *l = *sl;
  if (sl->base == KD_NONE) return true;
  if (sg->alias[i] && n->op == KD_IR_SUM) { /* the slice; its product has x's layout */
    l->offset += sg->slice[i] * sl->stride[n->axis];
    l->stride[n->axis] = 0;
    return true;
  }
  if (sg->alias[i]) return true;
  switch (n->op) {
  case KD_IR_EXPAND:
    for (int d = 0; d < n->rank; d++) {
      int j = d - (n->rank - s->rank);
      l->stride[d] = j < 0 || s->shape[j] == 1 ? 0 : sl->stride[j];
    }
    return true;
  case KD_IR_PERMUTE: {
    int perm[KD_MAX_RANK];
    kd_perm_unpack(n->axis, perm);
    for (int d = 0; d < n->rank; d++) l->stride[d] = sl->stride[perm[d]];
    return true;
  }
  case KD_IR_RESHAPE:
    return sg_reshape_strides(s->rank, s->shape, sl->stride, n->rank, n->shape, l->stride);
  default: return true; /* STOPGRAD */
  }
}

static void sg_own_layout(kd_sg *sg, kd_node_id i) {
  const kd_node *n = sg_node(sg, i);
  sg->lay[i] = (sg_layout){.base = i};
  sg_contig(n->rank, n->shape, sg->lay[i].stride);
}

static void sg_layout_all(kd_sg *sg) {
  for (size_t k = 0; k < sg->norder; k++) {
    kd_node_id i = sg->order[k];
    const kd_node *n = sg_node(sg, i);
    if (n->op == KD_IR_CONST) {
      sg->lay[i] = (sg_layout){.base = KD_NONE, .imm = n->value};
    } else if (sg_is_view(sg, i) && !sg->copy[i]) {
      if (!sg_view_layout(sg, i, &sg->lay[i])) {
        sg->copy[i] = true;
        sg_own_layout(sg, i);
      }
    } else {
      sg_own_layout(sg, i);
    }
  }
}

/* A product's batch (its output's dims before the last two) is split as
   kd_gemm splits it: the innermost dim with more than one item is the
   inner level, the others together the outer one. The inner dim, or -1. */
static int sg_batch_inner(const kd_node *prod) {
  for (int d = prod->rank - 3; d >= 0; d--)
    if (prod->shape[d] > 1) return d;
  return -1;
}

/* A product's operand as kd_gemm reads it: each matrix [R, C] row-major
   (trans false: rows ld floats apart, columns adjacent) or transposed
   (columns ld apart, rows adjacent), so a view that steps over the other
   heads of [B, T, H, Dh] needs no copy; and its batch items at outer *
   s1 + inner * s2, the outer dims one stride apart. */
typedef struct sg_gemm_op {
  bool trans;
  int64_t ld, s1, s2;
} sg_gemm_op;

static bool sg_gemm_operand(const kd_sg *sg, const kd_node *prod, kd_node_id id, sg_gemm_op *o) {
  const kd_node *n = sg_node(sg, id);
  const sg_layout *l = &sg->lay[id];
  if (l->base == KD_NONE) return false;
  int r = n->rank;
  int64_t R = n->shape[r - 2], C = n->shape[r - 1], sR = l->stride[r - 2], sC = l->stride[r - 1];
  if ((C == 1 || sC == 1) && (R == 1 || sR >= C)) o->trans = false, o->ld = R == 1 ? C : sR;
  else if ((R == 1 || sR == 1) && (C == 1 || sC >= R)) o->trans = true, o->ld = C == 1 ? R : sC;
  else return false;
  /* the operand's dim for the product's batch dim d (right-aligned), its
     stride (0 where it has none or a single item) */
  int inner = sg_batch_inner(prod), shift = prod->rank - r;
  o->s1 = o->s2 = 0;
  int64_t expect = -1;
  for (int d = prod->rank - 3; d >= 0; d--) {
    int e = d - shift;
    int64_t s = e >= 0 && n->shape[e] > 1 ? l->stride[e] : 0;
    if (d == inner) {
      o->s2 = s;
      continue;
    }
    if (prod->shape[d] == 1) continue;
    if (expect < 0) o->s1 = s;
    else if (s != expect) return false;
    expect = s * prod->shape[d];
  }
  return true;
}

static bool sg_contig_operand(const kd_sg *sg, kd_node_id id) {
  const kd_node *n = sg_node(sg, id);
  const sg_layout *l = &sg->lay[id];
  return l->base != KD_NONE && sg_is_contig(n->rank, n->shape, l->stride);
}

/* Whether operand j of node n is laid out as n's instruction needs: a
   product's dense matrices, a gather's or scatter's contiguous rows and
   ids, a reduction's or softmax's memory (an immediate is a map's only),
   contiguous for a reduction over every axis. */
static bool sg_operand_ok(const kd_sg *sg, const kd_node *n, int j) {
  kd_node_id o = n->src[j];
  sg_gemm_op g;
  switch (n->op) {
  case KD_IR_MATMUL: return sg_gemm_operand(sg, n, o, &g);
  case KD_IR_GATHER_ROWS:
  case KD_IR_SCATTER_ADD_ROWS: return sg_contig_operand(sg, o);
  case KD_IR_SUM:
  case KD_IR_RMAX:
  case KD_IR_LSE:
    if (n->axis == KD_AXIS_ALL) return sg_contig_operand(sg, o);
    return sg->lay[o].base != KD_NONE;
  case KD_IR_SOFTMAX:
  case KD_IR_LOG_SOFTMAX: return sg->lay[o].base != KD_NONE;
  default: return true;
  }
}

/* Layouts, with a view copied into memory of its own where a reader needs
   it. Readers go in schedule order and the layouts are redone after each
   copy, so a view of a copied view is judged on the copy (autodiff's
   transpose of a copied head split becomes a GEMM flag, not a second
   copy); passes repeat until none copies (a copy can change the strides
   of views below it that an earlier reader took). Only views fail. */
static kd_status sg_layouts(kd_sg *sg) {
  sg_layout_all(sg);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t k = 0; k < sg->norder; k++) {
      kd_node_id i = sg->order[k];
      const kd_node *n = sg_node(sg, i);
      if (sg_is_view(sg, i)) continue; /* none, or a copy, which takes any layout */
      for (int j = 0; j < n->nsrc; j++) {
        if (sg_operand_ok(sg, n, j)) continue;
        kd_node_id o = n->src[j];
        if (sg->copy[o] || !sg_is_view(sg, o))
          return sg_fail(sg, KD_ERR_UNSUPPORTED, "%s (%%%d): operand %d has no layout it takes",
                         kd_opcode_name(n->op), (int)sg->origin[i], j);
        sg->copy[o] = changed = true;
        sg_layout_all(sg);
        n = sg_node(sg, i);
      }
    }
  }
  return KD_OK;
}

/* ---- slots, memory ------------------------------------------------------ */

/* Whether an instruction writes node i (it has memory of its own). */
static bool sg_written(const kd_sg *sg, kd_node_id i) {
  const kd_node *n = sg_node(sg, i);
  if (n->op == KD_IR_INPUT || n->op == KD_IR_CONST) return false;
  return !sg_is_view(sg, i) || sg->copy[i];
}

static kd_status sg_check_dtype(kd_sg *sg, kd_node_id i) {
  const kd_node *n = sg_node(sg, i);
  if (n->op == KD_IR_CONST || n->dtype == KD_F32 || n->dtype == KD_I64 || n->dtype == KD_BOOL)
    return KD_OK;
  return sg_fail(sg, KD_ERR_UNSUPPORTED, "%s (%%%d) of %s: a step takes f32, i64 and bool",
                 kd_opcode_name(n->op), (int)sg->origin[i], kd_dtype_name(n->dtype));
}

static void sg_slot(kd_sg *sg, const char *name, const kd_node *n, bool output) {
  int32_t k = sg->nslots++;
  kd_step_slot *s = &sg->slots[k];
  snprintf(s->name, sizeof s->name, "%s", name);
  s->dtype = n->dtype;
  s->rank = n->rank;
  for (int d = 0; d < n->rank; d++) s->shape[d] = n->shape[d];
  s->output = output;
  sg->values[sg->nvalues++] = (kd_step_value){.loc = KD_LOC_SLOT, .dtype = n->dtype,
                                              .elems = sg_elems(n->rank, n->shape), .slot = k};
}

/* The slots (one value each, values 0 .. nslots-1), the outputs written in
   place, the memory plan, then one value per arena node. */
static kd_status sg_memory(kd_sg *sg) {
  kd_graph *g = sg->g;
  size_t nout = kd_graph_noutputs(g), nin = 0;
  for (size_t i = 0; i < sg->n; i++) nin += sg_node(sg, (kd_node_id)i)->op == KD_IR_INPUT;
  for (size_t i = 0; i < sg->n; i++) { /* every input has a slot, read or not */
    kd_status st = sg_node(sg, (kd_node_id)i)->op == KD_IR_INPUT ? sg_check_dtype(sg, (kd_node_id)i)
                                                               : KD_OK;
    if (st != KD_OK) return st;
  }
  for (size_t k = 0; k < sg->norder; k++) {
    kd_node_id i = sg->order[k];
    kd_status st = sg_check_dtype(sg, i);
    if (st != KD_OK) return st;
    sg->view[i] = sg_is_view(sg, i) && !sg->copy[i];
  }
  kd_node_id *in_place = malloc((nout + 1) * sizeof *in_place);
  if (!in_place) return sg_fail(sg, KD_ERR_NOMEM, "out of memory");
  for (size_t o = 0; o < nout; o++) { /* the first output naming a node it writes */
    kd_node_id i = kd_graph_output(g, o);
    in_place[o] = sg_written(sg, i) && !sg->external[i] ? i : KD_NONE;
    if (in_place[o] != KD_NONE) sg->external[i] = true;
  }
  for (size_t o = 0; o < nout; o++) { /* a view of all of a written node that is no output */
    kd_node_id i = kd_graph_output(g, o), b = sg->lay[i].base;
    const kd_node *n = sg_node(sg, i);
    if (in_place[o] != KD_NONE || b == KD_NONE || !sg_written(sg, b) || sg->external[b] ||
        sg->lay[i].offset != 0 || !sg_is_contig(n->rank, n->shape, sg->lay[i].stride) ||
        sg_elems(n->rank, n->shape) != sg_elems(sg_node(sg, b)->rank, sg_node(sg, b)->shape))
      continue;
    bool is_output = false;
    for (size_t u = 0; u < nout; u++) is_output = is_output || kd_graph_output(g, u) == b;
    if (!is_output) in_place[o] = b, sg->external[b] = true;
  }
  kd_memplan_opts opts = {sg->order, sg->norder, sg->view, sg->external};
  kd_status st = kd_memplan_build_opts(g, NULL, 0, &opts, &sg->plan, sg->err, sg->errlen);
  size_t narena = 0;
  for (size_t k = 0; k < sg->norder && st == KD_OK; k++)
    narena += sg->plan.values[sg->order[k]].kind == KD_MEM_ARENA;
  size_t total = nin + nout + narena;
  if (st == KD_OK && total > INT32_MAX / 2) st = sg_fail(sg, KD_ERR_INVALID, "too many values");
  if (st == KD_OK) {
    sg->values = calloc(total + 1, sizeof *sg->values);
    sg->slots = calloc(nin + nout + 1, sizeof *sg->slots);
    if (!sg->values || !sg->slots) st = sg_fail(sg, KD_ERR_NOMEM, "out of memory");
  }
  for (size_t i = 0; i < sg->n && st == KD_OK; i++) {
    const kd_node *n = sg_node(sg, (kd_node_id)i);
    if (n->op != KD_IR_INPUT) continue;
    sg->value[i] = sg->nvalues;
    sg_slot(sg, n->name, n, false);
  }
  for (size_t o = 0; o < nout && st == KD_OK; o++) {
    kd_node_id i = kd_graph_output(g, o);
    int32_t k = sg->nvalues;
    if (in_place[o] != KD_NONE) sg->value[in_place[o]] = k;
    sg->out_slot[o] = in_place[o] != KD_NONE ? k : -1 - k;
    sg_slot(sg, kd_graph_output_name(g, o), sg_node(sg, i), true);
  }
  for (size_t j = 0; j < sg->norder && st == KD_OK; j++) {
    kd_node_id i = sg->order[j];
    const kd_mem_value *v = &sg->plan.values[i];
    if (v->kind != KD_MEM_ARENA) continue;
    const kd_node *n = sg_node(sg, i);
    sg->value[i] = sg->nvalues;
    sg->values[sg->nvalues++] =
        (kd_step_value){.loc = KD_LOC_ARENA, .dtype = n->dtype,
                        .elems = sg_elems(n->rank, n->shape), .offset = v->offset, .slot = -1};
  }
  free(in_place);
  return st;
}

/* ---- emission ----------------------------------------------------------- */

static kd_step_instr *sg_emit(kd_sg *sg, kd_step_kind kind, kd_step_fn fn, kd_node_id node) {
  if (sg->ninstr == sg->cap) {
    size_t cap = sg->cap ? 2 * sg->cap : 64;
    kd_step_instr *v = realloc(sg->instr, cap * sizeof *v);
    if (!v) return NULL;
    sg->instr = v;
    sg->cap = cap;
  }
  kd_step_instr *in = &sg->instr[sg->ninstr++];
  memset(in, 0, sizeof *in);
  in->kind = kind;
  in->fn = fn;
  in->node = node == KD_NONE ? -1 : sg->origin[node];
  in->dst.value = -1;
  for (int k = 0; k < KD_STEP_MAX_SRC; k++) in->src[k].value = -1;
  return in;
}

/* The instruction's iteration shape: a rank-0 node's is [1]. */
static void sg_shape(kd_step_instr *in, int rank, const int64_t *shape) {
  in->rank = rank ? rank : 1;
  in->shape[0] = 1;
  for (int d = 0; d < rank; d++) in->shape[d] = shape[d];
}

/* Strides of a [rank, shape] tensor broadcast (numpy rules: right-aligned,
   size-1 and missing dims stride 0) to the instruction's shape. */
static void sg_bcast(int rank, const int64_t *shape, const int64_t *stride,
                     const kd_step_instr *in, int64_t *out) {
  for (int d = 0; d < in->rank; d++) {
    int j = d - (in->rank - rank);
    out[d] = j < 0 || shape[j] == 1 ? 0 : stride[j];
  }
}

/* A ref to layout l of a [rank, shape] tensor, broadcast to the
   instruction's shape. */
static kd_step_ref sg_ref_layout(const kd_sg *sg, const sg_layout *l, int rank,
                                 const int64_t *shape, const kd_step_instr *in) {
  kd_step_ref r;
  memset(&r, 0, sizeof r);
  if (l->base == KD_NONE) {
    r.value = -1;
    r.imm = l->imm;
    return r;
  }
  r.value = sg->value[l->base];
  r.offset = l->offset;
  sg_bcast(rank, shape, l->stride, in, r.stride);
  return r;
}

static kd_step_ref sg_ref(const kd_sg *sg, kd_node_id id, const kd_step_instr *in) {
  const kd_node *n = sg_node(sg, id);
  return sg_ref_layout(sg, &sg->lay[id], n->rank, n->shape, in);
}

/* Value v laid out densely as a [rank, shape] tensor, broadcast to the
   instruction's shape. */
static kd_step_ref sg_dense(int32_t v, int rank, const int64_t *shape, const kd_step_instr *in) {
  int64_t stride[KD_MAX_RANK];
  kd_step_ref r;
  memset(&r, 0, sizeof r);
  r.value = v;
  sg_contig(rank, shape, stride);
  sg_bcast(rank, shape, stride, in, r.stride);
  return r;
}

/* Node id's own memory. */
static kd_step_ref sg_dst(const kd_sg *sg, kd_node_id id, const kd_step_instr *in) {
  const kd_node *n = sg_node(sg, id);
  return sg_dense(sg->value[id], n->rank, n->shape, in);
}

static kd_step_fn sg_map_fn(kd_opcode op) {
  switch (op) {
  case KD_IR_NEG: return KD_SF_NEG;
  case KD_IR_EXP: return KD_SF_EXP;
  case KD_IR_LOG: return KD_SF_LOG;
  case KD_IR_SQRT: return KD_SF_SQRT;
  case KD_IR_ABS: return KD_SF_ABS;
  case KD_IR_SIGN: return KD_SF_SIGN;
  case KD_IR_TANH: return KD_SF_TANH;
  case KD_IR_CAST: return KD_SF_COPY;
  case KD_IR_ADD: return KD_SF_ADD;
  case KD_IR_SUB: return KD_SF_SUB;
  case KD_IR_MUL: return KD_SF_MUL;
  case KD_IR_MULZ: return KD_SF_MULZ;
  case KD_IR_DIV: return KD_SF_DIV;
  case KD_IR_POW: return KD_SF_POW;
  case KD_IR_MAX: return KD_SF_MAX;
  case KD_IR_MIN: return KD_SF_MIN;
  case KD_IR_LT: return KD_SF_LT;
  case KD_IR_LE: return KD_SF_LE;
  case KD_IR_GT: return KD_SF_GT;
  case KD_IR_GE: return KD_SF_GE;
  case KD_IR_EQ: return KD_SF_EQ;
  case KD_IR_NE: return KD_SF_NE;
  case KD_IR_SELECT: return KD_SF_SELECT;
  case KD_IR_SUM: return KD_SF_SUM;
  case KD_IR_RMAX: return KD_SF_RMAX;
  case KD_IR_LSE: return KD_SF_LSE;
  case KD_IR_SOFTMAX: return KD_SF_SOFTMAX;
  case KD_IR_LOG_SOFTMAX: return KD_SF_LOG_SOFTMAX;
  default: return KD_SF_COUNT;
  }
}

/* A copy of layout l of a [rank, shape] tensor into value v, contiguous
   over that shape (a FILL where l is an immediate). */
static bool sg_emit_copy(kd_sg *sg, kd_node_id node, const sg_layout *l, int rank,
                         const int64_t *shape, int32_t v) {
  kd_step_instr *in = sg_emit(sg, KD_STEP_MAP, l->base == KD_NONE ? KD_SF_FILL : KD_SF_COPY, node);
  if (!in) return false;
  sg_shape(in, rank, shape);
  in->nsrc = 1;
  in->src[0] = sg_ref_layout(sg, l, rank, shape, in);
  in->dst = sg_dense(v, rank, shape, in);
  return true;
}

static bool sg_emit_gemm(kd_sg *sg, kd_node_id i) {
  const kd_node *n = sg_node(sg, i), *a = sg_node(sg, n->src[0]), *b = sg_node(sg, n->src[1]);
  kd_step_instr *in = sg_emit(sg, KD_STEP_GEMM, KD_SF_COPY, i);
  if (!in) return false;
  int r = n->rank, id = sg_batch_inner(n);
  sg_gemm_op oa, ob;
  sg_gemm_operand(sg, n, n->src[0], &oa); /* sg_layouts made both hold */
  sg_gemm_operand(sg, n, n->src[1], &ob);
  int64_t batch = 1, inner = id >= 0 ? n->shape[id] : 1;
  for (int d = 0; d + 2 < r; d++) batch *= n->shape[d];
  int64_t M = a->shape[r - 2], K = a->shape[r - 1], N = b->shape[b->rank - 1];
  /* C is dense: the inner items M N floats apart, the outer inner M N */
  kd_gemm gm = {.batch = batch, .m = M, .n = N, .k = K, .trans_a = oa.trans, .trans_b = ob.trans,
                .alpha = 1.0f, .beta = 0.0f, .stride_a = oa.s1, .stride_b = ob.s1,
                .stride_c = inner * M * N, .lda = oa.ld, .ldb = ob.ld, .batch2 = inner,
                .stride2_a = oa.s2, .stride2_b = ob.s2, .stride2_c = M * N};
  /* a shared B and A's rows evenly spaced over the whole batch: one
     product of batch x M rows */
  bool rows = !oa.trans && (batch == inner || oa.s1 == inner * oa.s2) &&
              (inner == 1 || oa.s2 == M * oa.ld);
  if (b->rank == 2 && rows)
    gm = (kd_gemm){.batch = 1, .m = batch * M, .n = N, .k = K, .trans_b = ob.trans,
                   .alpha = 1.0f, .beta = 0.0f, .lda = oa.ld, .ldb = ob.ld};
  in->gemm = gm;
  sg_shape(in, r, n->shape);
  in->nsrc = 2;
  for (int k = 0; k < 2; k++) {
    in->src[k] = sg_ref(sg, n->src[k], in);
    memset(in->src[k].stride, 0, sizeof in->src[k].stride); /* value and offset only */
  }
  in->dst = sg_dst(sg, i, in);
  memset(in->dst.stride, 0, sizeof in->dst.stride);
  return true;
}

/* GATHER and SCATTER_ADD: shape {n, D}; refs contiguous over [n, D] (the
   table over [rows, D]), ids over [n]. */
static bool sg_emit_rows(kd_sg *sg, kd_node_id i) {
  const kd_node *n = sg_node(sg, i);
  bool gather = n->op == KD_IR_GATHER_ROWS;
  const kd_node *rows = sg_node(sg, n->src[0]), *ids = sg_node(sg, n->src[1]);
  kd_step_instr *in = sg_emit(sg, gather ? KD_STEP_GATHER : KD_STEP_SCATTER_ADD, KD_SF_COPY, i);
  if (!in) return false;
  int64_t D = n->shape[n->rank - 1], cnt = sg_elems(ids->rank, ids->shape);
  int64_t shape[2] = {cnt, D};
  sg_shape(in, 2, shape);
  in->rows = gather ? rows->shape[0] : n->shape[0];
  in->nsrc = 2;
  const sg_layout *lr = &sg->lay[n->src[0]], *li = &sg->lay[n->src[1]];
  in->src[0] = (kd_step_ref){.value = sg->value[lr->base], .offset = lr->offset, .stride = {D, 1}};
  in->src[1] = (kd_step_ref){.value = sg->value[li->base], .offset = li->offset, .stride = {1, 0}};
  in->dst = (kd_step_ref){.value = sg->value[i], .offset = 0, .stride = {D, 1}};
  return true;
}

static bool sg_emit_reduce(kd_sg *sg, kd_node_id i) {
  const kd_node *n = sg_node(sg, i), *s = sg_node(sg, n->src[0]);
  kd_step_instr *in = sg_emit(sg, KD_STEP_REDUCE, sg_map_fn(n->op), i);
  if (!in) return false;
  in->nsrc = 1;
  if (n->axis == KD_AXIS_ALL) { /* the flattened operand, contiguous */
    int64_t e = sg_elems(s->rank, s->shape);
    sg_shape(in, 1, &e);
    sg_layout l = sg->lay[n->src[0]];
    l.stride[0] = 1;
    in->src[0] = sg_ref_layout(sg, &l, 1, &e, in);
    in->dst = (kd_step_ref){.value = sg->value[i], .offset = 0};
    in->axis = 0;
    return true;
  }
  sg_shape(in, s->rank, s->shape);
  in->axis = n->axis;
  in->src[0] = sg_ref(sg, n->src[0], in);
  in->dst = sg_dst(sg, i, in); /* size 1 along axis: stride 0 there */
  return true;
}

static kd_status sg_emit_node(kd_sg *sg, kd_node_id i) {
  const kd_node *n = sg_node(sg, i);
  kd_op_class cls = kd_opcode_class(n->op);
  bool ok = true;
  if (n->op == KD_IR_INPUT || n->op == KD_IR_CONST) return KD_OK;
  if (sg_is_view(sg, i)) {
    if (!sg->copy[i]) return KD_OK;
    const kd_node *s = sg_node(sg, n->src[0]);
    sg_layout l;
    if (n->op == KD_IR_RESHAPE) { /* the source's elements in C order: the same order */
      ok = sg_emit_copy(sg, i, &sg->lay[n->src[0]], s->rank, s->shape, sg->value[i]);
    } else {
      sg_view_layout(sg, i, &l);
      ok = sg_emit_copy(sg, i, &l, n->rank, n->shape, sg->value[i]);
    }
  } else if (cls == KD_CLASS_UNARY || cls == KD_CLASS_BINARY || cls == KD_CLASS_SELECT) {
    kd_step_instr *in = sg_emit(sg, KD_STEP_MAP, sg_map_fn(n->op), i);
    if ((ok = in != NULL)) {
      sg_shape(in, n->rank, n->shape);
      in->nsrc = n->nsrc;
      for (int k = 0; k < n->nsrc; k++) in->src[k] = sg_ref(sg, n->src[k], in);
      in->dst = sg_dst(sg, i, in);
    }
  } else if (n->op == KD_IR_IOTA) {
    kd_step_instr *in = sg_emit(sg, KD_STEP_MAP, KD_SF_IOTA, i);
    if ((ok = in != NULL)) {
      sg_shape(in, n->rank, n->shape);
      in->axis = n->axis;
      in->dst = sg_dst(sg, i, in);
    }
  } else if (cls == KD_CLASS_REDUCE) {
    ok = sg_emit_reduce(sg, i);
  } else if (cls == KD_CLASS_ROW) {
    kd_step_instr *in = sg_emit(sg, KD_STEP_SOFTMAX, sg_map_fn(n->op), i);
    if ((ok = in != NULL)) {
      sg_shape(in, n->rank, n->shape);
      in->axis = n->axis;
      in->nsrc = 1;
      in->src[0] = sg_ref(sg, n->src[0], in);
      in->dst = sg_dst(sg, i, in);
    }
  } else if (n->op == KD_IR_MATMUL) {
    ok = sg_emit_gemm(sg, i);
  } else if (n->op == KD_IR_GATHER_ROWS || n->op == KD_IR_SCATTER_ADD_ROWS) {
    ok = sg_emit_rows(sg, i);
  } else {
    return sg_fail(sg, KD_ERR_UNSUPPORTED, "%s (%%%d) has no step instruction",
                   kd_opcode_name(n->op), (int)sg->origin[i]);
  }
  return ok ? KD_OK : sg_fail(sg, KD_ERR_NOMEM, "out of memory");
}

/* Node i's outputs that its instruction did not write: copied or filled. */
static kd_status sg_emit_outputs(kd_sg *sg, kd_node_id i) {
  const kd_node *n = sg_node(sg, i);
  for (size_t o = 0; o < kd_graph_noutputs(sg->g); o++) {
    if (kd_graph_output(sg->g, o) != i || sg->out_slot[o] >= 0) continue;
    if (!sg_emit_copy(sg, i, &sg->lay[i], n->rank, n->shape, -1 - sg->out_slot[o]))
      return sg_fail(sg, KD_ERR_NOMEM, "out of memory");
  }
  return KD_OK;
}

static void sg_free(kd_sg *sg) {
  kd_graph_free(sg->g);
  kd_memplan_free(&sg->plan);
  free(sg->origin);
  free(sg->needed);
  free(sg->late);
  free(sg->copy);
  free(sg->slice);
  free(sg->alias);
  free(sg->view);
  free(sg->external);
  free(sg->lay);
  free(sg->value);
  free(sg->out_slot);
  free(sg->values);
  free(sg->slots);
  free(sg->order);
  free(sg->instr);
}

kd_status kd_stepgen(const kd_graph *g, const kd_sym_binding *bind, size_t nbind,
                     const char *split_input, kd_step_prog **out, char *err, size_t errlen) {
  kd_sg sg = {.err = err, .errlen = errlen};
  kd_step_prog *p = NULL;
  *out = NULL;
  kd_status st = sg_instantiate(&sg, g, bind, nbind);
  if (st == KD_OK) {
    size_t n = sg.n + 1, nout = kd_graph_noutputs(sg.g) + 1;
    sg.needed = calloc(n, sizeof *sg.needed);
    sg.late = calloc(n, sizeof *sg.late);
    sg.copy = calloc(n, sizeof *sg.copy);
    sg.slice = malloc(n * sizeof *sg.slice);
    sg.alias = calloc(n, sizeof *sg.alias);
    sg.view = calloc(n, sizeof *sg.view);
    sg.external = calloc(n, sizeof *sg.external);
    sg.lay = calloc(n, sizeof *sg.lay);
    sg.value = malloc(n * sizeof *sg.value);
    sg.out_slot = calloc(nout, sizeof *sg.out_slot);
    sg.order = malloc(n * sizeof *sg.order);
    if (!sg.needed || !sg.late || !sg.copy || !sg.slice || !sg.alias || !sg.view ||
        !sg.external || !sg.lay || !sg.value || !sg.out_slot || !sg.order)
      st = sg_fail(&sg, KD_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && st == KD_OK; i++) sg.value[i] = -1, sg.slice[i] = -1;
  }
  if (st == KD_OK) st = sg_schedule(&sg, split_input);
  if (st == KD_OK) st = sg_slices(&sg);
  if (st == KD_OK) st = sg_layouts(&sg);
  if (st == KD_OK) st = sg_memory(&sg);
  size_t split = 0;
  for (size_t k = 0; k < sg.norder && st == KD_OK; k++) {
    if (k == sg.nfirst) split = sg.ninstr;
    st = sg_emit_node(&sg, sg.order[k]);
    if (st == KD_OK) st = sg_emit_outputs(&sg, sg.order[k]);
  }
  if (sg.nfirst == sg.norder) split = sg.ninstr;
  if (st == KD_OK && sg.ninstr > INT32_MAX / 2)
    st = sg_fail(&sg, KD_ERR_INVALID, "too many instructions");
  if (st == KD_OK) {
    p = kd_step_alloc(sg.nvalues, (int32_t)sg.ninstr, sg.nslots);
    if (!p) st = sg_fail(&sg, KD_ERR_NOMEM, "out of memory");
  }
  if (st == KD_OK) {
    memcpy(p->values, sg.values, (size_t)sg.nvalues * sizeof *p->values);
    memcpy(p->slots, sg.slots, (size_t)sg.nslots * sizeof *p->slots);
    memcpy(p->instr, sg.instr, sg.ninstr * sizeof *p->instr);
    p->split = (int32_t)split;
    p->arena_bytes = sg.plan.arena_bytes;
    const char *no_fuse = getenv("KDC_NO_FUSE"); /* tests and measurements: the unfused program */
    if (!(no_fuse && strcmp(no_fuse, "1") == 0)) st = kd_step_fuse(p, err, errlen);
  }
  if (st == KD_OK) {
    char msg[256] = "";
    if (kd_step_validate(p, msg, sizeof msg) != KD_OK)
      st = sg_fail(&sg, KD_ERR_INVALID, "the program does not validate: %s", msg);
  }
  sg_free(&sg);
  if (st != KD_OK) {
    kd_step_free(p);
    return st;
  }
  *out = p;
  return KD_OK;
}
