/* Fusion of elementwise chains in step programs (stepfuse.h): one walk over
 * the instructions with the chain being built, `cur`, extended by the next
 * instruction while the conditions of stepfuse.h hold. */
#include "stepfuse.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bounds on one expression: its registers and leaf blocks are a worker's
   scratch (step_fused.c), a few tens of KiB at these sizes. */
enum { FUSE_MAX_LEAF = 32, FUSE_MAX_OP = 64 };

typedef struct fchain {
  kd_step_instr in; /* the last instruction's dst, node; the shape */
  int32_t first, count; /* the original instructions [first, first + count) */
  int32_t nleaf, nop;
  kd_step_ref leaf[FUSE_MAX_LEAF];
  kd_step_eop op[FUSE_MAX_OP];
} fchain;

static int map_arity(kd_step_fn fn) {
  if (fn >= KD_SF_ADD && fn <= KD_SF_NE) return 2;
  return fn == KD_SF_SELECT ? 3 : 1;
}

static bool is_map(const kd_step_instr *in) {
  return (in->kind == KD_STEP_MAP && in->fn != KD_SF_IOTA) || in->kind == KD_STEP_FUSED;
}

/* Leaves are the same operand: the same value and layout, or the same
   constant (bit for bit). */
static bool same_leaf(const kd_step_ref *a, const kd_step_ref *b, int32_t rank) {
  if (a->value != b->value) return false;
  if (a->value < 0) return memcmp(&a->imm, &b->imm, sizeof a->imm) == 0;
  if (a->offset != b->offset) return false;
  for (int32_t d = 0; d < rank; d++)
    if (a->stride[d] != b->stride[d]) return false;
  return true;
}

/* r reads, at every index of shape, the element dst writes there. */
static bool same_elems(const kd_step_ref *r, const kd_step_ref *dst, int32_t rank,
                       const int64_t *shape) {
  if (r->value != dst->value || r->offset != dst->offset) return false;
  for (int32_t d = 0; d < rank; d++)
    if (shape[d] > 1 && r->stride[d] != dst->stride[d]) return false;
  return true;
}

/* The bytes a ref touches over shape: [lo, hi) of the arena (key -1) or a
   slot; empty when shape has no element. */
typedef struct fspan {
  int64_t key, lo, hi;
  bool empty;
} fspan;

static fspan ref_bytes(const kd_step_prog *p, const kd_step_ref *r, int32_t rank,
                       const int64_t *shape) {
  const kd_step_value *v = &p->values[r->value];
  int64_t size = (int64_t)kd_dtype_size(v->dtype), hi = r->offset;
  bool empty = false;
  for (int32_t d = 0; d < rank; d++) {
    if (shape[d] == 0) empty = true;
    else hi += (shape[d] - 1) * r->stride[d]; /* in bounds: the program validated */
  }
  int64_t base = v->loc == KD_LOC_ARENA ? v->offset : 0;
  return (fspan){v->loc == KD_LOC_ARENA ? -1 : v->slot, base + r->offset * size,
                 base + (hi + 1) * size, empty};
}

/* a and b read and write the same bytes at every index (step.c's same_access). */
static bool same_access(const kd_step_prog *p, const kd_step_ref *a, const kd_step_ref *b,
                        int32_t rank, const int64_t *shape) {
  const kd_step_value *va = &p->values[a->value], *vb = &p->values[b->value];
  if (kd_dtype_size(va->dtype) != kd_dtype_size(vb->dtype)) return false;
  int64_t one[KD_STEP_MAX_RANK] = {1, 1, 1, 1}; /* the element at index 0 */
  fspan x = ref_bytes(p, a, rank, one), y = ref_bytes(p, b, rank, one);
  if (x.key != y.key || x.lo != y.lo) return false;
  for (int32_t d = 0; d < rank; d++)
    if (shape[d] > 1 && a->stride[d] != b->stride[d]) return false;
  return true;
}

static bool reads_value(const kd_step_prog *p, const kd_step_instr *in, int32_t v) {
  if (in->kind == KD_STEP_FUSED) {
    const kd_step_expr *e = &p->exprs[in->expr];
    for (int32_t k = 0; k < e->nleaf; k++)
      if (e->leaf[k].value == v) return true;
    return false;
  }
  for (int s = 0; s < in->nsrc; s++)
    if (in->src[s].value == v) return true;
  return false;
}

/* Leaf r's code in c (-1 - its index), added unless there; 0 when full. */
static int32_t add_leaf(fchain *c, const kd_step_ref *r) {
  for (int32_t k = 0; k < c->nleaf; k++)
    if (same_leaf(&c->leaf[k], r, c->in.rank)) return -1 - k;
  if (c->nleaf == FUSE_MAX_LEAF) return 0;
  c->leaf[c->nleaf] = *r;
  return -1 - c->nleaf++;
}

/* Instruction in's expression as leaves and ops, in a chain of its own. */
static bool chain_start(const kd_step_prog *p, const kd_step_instr *in, int32_t i, fchain *c) {
  c->in = *in;
  c->first = i, c->count = 1, c->nleaf = 0, c->nop = 0;
  if (in->kind == KD_STEP_FUSED) {
    const kd_step_expr *e = &p->exprs[in->expr];
    if (e->nleaf > FUSE_MAX_LEAF || e->nop > FUSE_MAX_OP) return false;
    c->nleaf = e->nleaf, c->nop = e->nop;
    memcpy(c->leaf, e->leaf, (size_t)e->nleaf * sizeof *e->leaf);
    memcpy(c->op, e->op, (size_t)e->nop * sizeof *e->op);
    return true;
  }
  kd_step_eop op = {in->fn, {0, 0, 0}};
  for (int s = 0; s < in->nsrc; s++) op.a[s] = add_leaf(c, &in->src[s]);
  c->op[c->nop++] = op;
  return true;
}

/* Appends instruction J (index j) to chain c when stepfuse.h allows. */
static bool chain_extend(const kd_step_prog *p, const int32_t *readers, fchain *c,
                         const kd_step_instr *J, int32_t j) {
  const kd_step_instr *I = &c->in;
  int32_t v = I->dst.value;
  if (!is_map(J) || J->rank != I->rank || v < 0 || p->values[v].loc != KD_LOC_ARENA ||
      p->values[v].dtype != KD_F32 || J->dst.value < 0 || p->values[J->dst.value].dtype != KD_F32)
    return false;
  for (int32_t d = 0; d < I->rank; d++)
    if (J->shape[d] != I->shape[d]) return false;
  int32_t n = 0; /* the instructions reading v: only those of the chain and J */
  for (int32_t k = c->first; k <= j; k++) n += reads_value(p, &p->instr[k], v);
  if (n != readers[v]) return false;
  fchain jc;
  if (!chain_start(p, J, j, &jc)) return false;
  bool reads = false;
  for (int32_t k = 0; k < jc.nleaf; k++) {
    if (jc.leaf[k].value != v) continue;
    if (!same_elems(&jc.leaf[k], &I->dst, I->rank, I->shape)) return false;
    reads = true;
  }
  if (!reads || c->nop + jc.nop > FUSE_MAX_OP) return false;
  for (int32_t k = 0; k < c->nleaf; k++) {
    const kd_step_ref *l = &c->leaf[k];
    if (l->value < 0) continue;
    fspan a = ref_bytes(p, &J->dst, I->rank, I->shape), b = ref_bytes(p, l, I->rank, I->shape);
    bool overlap = !a.empty && !b.empty && a.key == b.key && a.lo < b.hi && b.lo < a.hi;
    if (overlap && !same_access(p, &J->dst, l, I->rank, I->shape)) return false;
  }
  fchain t = *c; /* the merge, kept only if it fits */
  int32_t map[FUSE_MAX_LEAF];
  for (int32_t k = 0; k < jc.nleaf; k++) {
    map[k] = jc.leaf[k].value == v ? c->nop - 1 : add_leaf(&t, &jc.leaf[k]);
    if (map[k] == 0 && jc.leaf[k].value != v) return false;
  }
  for (int32_t o = 0; o < jc.nop; o++) {
    kd_step_eop op = jc.op[o];
    for (int q = 0; q < map_arity(op.fn); q++)
      op.a[q] = op.a[q] >= 0 ? op.a[q] + c->nop : map[-1 - op.a[q]];
    t.op[t.nop++] = op;
  }
  t.in = *J;
  t.in.rank = I->rank;
  t.count = c->count + 1;
  *c = t;
  return true;
}

/* Chain c as one instruction: its MAP unchanged, else a FUSED with a new
   expression. */
static bool chain_emit(const fchain *c, kd_step_instr *out, int32_t *nout, kd_step_expr *exprs,
                       int32_t *nexprs) {
  if (c->count == 1 && c->in.kind == KD_STEP_MAP) {
    out[(*nout)++] = c->in;
    return true;
  }
  kd_step_expr *e = &exprs[*nexprs];
  e->leaf = malloc(((size_t)c->nleaf + 1) * sizeof *e->leaf);
  e->op = malloc((size_t)c->nop * sizeof *e->op);
  if (!e->leaf || !e->op) {
    free(e->leaf);
    free(e->op);
    e->leaf = NULL, e->op = NULL;
    return false;
  }
  memcpy(e->leaf, c->leaf, (size_t)c->nleaf * sizeof *e->leaf);
  memcpy(e->op, c->op, (size_t)c->nop * sizeof *e->op);
  e->nleaf = c->nleaf, e->nop = c->nop;
  kd_step_instr in = c->in;
  in.kind = KD_STEP_FUSED;
  in.fn = KD_SF_COPY;
  in.nsrc = 0;
  memset(in.src, 0, sizeof in.src);
  for (int k = 0; k < KD_STEP_MAX_SRC; k++) in.src[k].value = -1;
  in.axis = 0;
  in.expr = (*nexprs)++;
  out[(*nout)++] = in;
  return true;
}

kd_status kd_step_fuse(kd_step_prog *p, char *err, size_t errlen) {
  int32_t *readers = calloc((size_t)p->nvalues + 1, sizeof *readers);
  kd_step_instr *out = malloc(((size_t)p->ninstr + 1) * sizeof *out);
  kd_step_expr *exprs = calloc((size_t)p->ninstr + 1, sizeof *exprs);
  fchain *c = malloc(sizeof *c);
  int32_t *seen = malloc(((size_t)p->nvalues + 1) * sizeof *seen);
  bool ok = readers && out && exprs && c && seen, have = false;
  for (int32_t v = 0; ok && v < p->nvalues; v++) seen[v] = -1;
  for (int32_t i = 0; i < p->ninstr && ok; i++) { /* the instructions reading each value */
    const kd_step_instr *in = &p->instr[i];
    const kd_step_expr *e = in->kind == KD_STEP_FUSED ? &p->exprs[in->expr] : NULL;
    int32_t n = e ? e->nleaf : in->nsrc;
    for (int32_t k = 0; k < n; k++) {
      int32_t v = e ? e->leaf[k].value : in->src[k].value;
      if (v >= 0 && seen[v] != i) seen[v] = i, readers[v]++;
    }
  }
  free(seen);
  int32_t nout = 0, nexprs = 0, split = -1;
  for (int32_t i = 0; i < p->ninstr && ok; i++) {
    const kd_step_instr *J = &p->instr[i];
    bool same_phase = have && (c->first < p->split) == (i < p->split);
    if (same_phase && chain_extend(p, readers, c, J, i)) continue;
    if (have) ok = chain_emit(c, out, &nout, exprs, &nexprs);
    have = false;
    if (i == p->split) split = nout;
    if (ok && is_map(J)) have = chain_start(p, J, i, c);
    if (!have) out[nout++] = *J;
  }
  if (ok && have) ok = chain_emit(c, out, &nout, exprs, &nexprs);
  if (split < 0) split = nout; /* no second phase */
  if (!ok) {
    for (int32_t e = 0; exprs && e < nexprs; e++) {
      free(exprs[e].leaf);
      free(exprs[e].op);
    }
    free(readers);
    free(out);
    free(exprs);
    free(c);
    if (err && errlen) snprintf(err, errlen, "stepfuse: out of memory");
    return KD_ERR_NOMEM;
  }
  for (int32_t e = 0; e < p->nexprs; e++) {
    free(p->exprs[e].leaf);
    free(p->exprs[e].op);
  }
  free(p->exprs);
  memcpy(p->instr, out, (size_t)nout * sizeof *out);
  p->ninstr = nout;
  p->split = split;
  p->exprs = exprs;
  p->nexprs = nexprs;
  free(readers);
  free(out);
  free(c);
  return KD_OK;
}
