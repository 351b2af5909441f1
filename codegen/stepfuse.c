/* Fusion of elementwise chains in step programs (stepfuse.h): one walk over
 * the instructions; each map, as it is added, absorbs the earlier maps that
 * produce its operands when stepfuse.h allows, repeatedly, so a chain or a
 * tree of maps becomes one instruction at its last map's place. */
#include "stepfuse.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bounds on one expression: its registers and leaf blocks are a worker's
   scratch (step_fused.c), a few tens of KiB at these sizes. */
enum { FUSE_MAX_LEAF = 32, FUSE_MAX_OP = 64 };

typedef struct fchain {
  kd_step_instr in; /* the last instruction's dst, node; the shape */
  int32_t count;     /* the original instructions in it */
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

static bool reads_value(const fchain *c, int32_t v) {
  for (int32_t k = 0; k < c->nleaf; k++)
    if (c->leaf[k].value == v) return true;
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

/* Instruction in's expression as leaves and ops, in a chain of its own;
   false when it is too large to take part. */
static bool chain_start(const kd_step_prog *p, const kd_step_instr *in, fchain *c) {
  c->in = *in;
  c->count = 1, c->nleaf = 0, c->nop = 0;
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

/* The whole of a value's memory: instructions between a producer and its
   reader are compared with the producer's sources value by value. */
static fspan value_bytes(const kd_step_prog *p, int32_t v) {
  const kd_step_value *val = &p->values[v];
  int64_t base = val->loc == KD_LOC_ARENA ? val->offset : 0;
  return (fspan){val->loc == KD_LOC_ARENA ? -1 : val->slot, base,
                 base + val->elems * (int64_t)kd_dtype_size(val->dtype), val->elems == 0};
}

static bool spans_overlap(fspan a, fspan b) {
  return !a.empty && !b.empty && a.key == b.key && a.lo < b.hi && b.lo < a.hi;
}

/* An instruction of the program being built: its chain when it is a map
   (NULL else); dead once fused into a later one. */
typedef struct fnode {
  kd_step_instr in;
  fchain *c;
  bool dead;
} fnode;

typedef struct fstate {
  const kd_step_prog *p;
  fnode *out;
  int32_t nout;
  int32_t *readers; /* [value]: the live nodes reading it */
  int32_t *prod;    /* [value]: the node writing it, -1 if none is a map */
} fstate;

static void count_reads(fstate *f, const fchain *c, int32_t delta) {
  for (int32_t k = 0; k < c->nleaf; k++) {
    int32_t v = c->leaf[k].value;
    bool first = true; /* a value read by two leaves counts once */
    for (int32_t t = 0; t < k && first; t++) first = c->leaf[t].value != v;
    if (v >= 0 && first) f->readers[v] += delta;
  }
}

/* Fuses producer node pi into chain j (the instruction being added) when
   stepfuse.h allows: j alone reads pi's result, through pi's dst ref, and
   moving pi's computation down to j overwrites none of its sources. */
static bool fuse_into(fstate *f, int32_t pi, fchain *j) {
  const kd_step_prog *p = f->p;
  fchain *P = f->out[pi].c;
  const kd_step_instr *I = &P->in;
  int32_t v = I->dst.value;
  if (j->in.rank != I->rank || p->values[v].loc != KD_LOC_ARENA ||
      p->values[v].dtype != KD_F32 || f->readers[v] - reads_value(P, v) != 1)
    return false;
  for (int32_t d = 0; d < I->rank; d++)
    if (j->in.shape[d] != I->shape[d]) return false;
  for (int32_t k = 0; k < j->nleaf; k++)
    if (j->leaf[k].value == v && !same_elems(&j->leaf[k], &I->dst, I->rank, I->shape))
      return false;
  if (P->nop + j->nop > FUSE_MAX_OP) return false;
  for (int32_t k = 0; k < P->nleaf; k++) {
    const kd_step_ref *l = &P->leaf[k];
    if (l->value < 0) continue;
    /* j's dst over P's sources: only as the same elements (in place) */
    if (spans_overlap(ref_bytes(p, &j->in.dst, I->rank, I->shape),
                      ref_bytes(p, l, I->rank, I->shape)) &&
        !same_access(p, &j->in.dst, l, I->rank, I->shape))
      return false;
    /* nothing between writes P's sources */
    for (int32_t t = pi + 1; t < f->nout; t++) {
      const fnode *K = &f->out[t];
      if (!K->dead && K->in.dst.value >= 0 &&
          spans_overlap(value_bytes(p, K->in.dst.value), value_bytes(p, l->value)))
        return false;
    }
  }
  fchain *m = malloc(sizeof *m); /* the merge, kept only if it fits */
  if (!m) return false;
  *m = *P;
  int32_t map[FUSE_MAX_LEAF];
  for (int32_t k = 0; k < j->nleaf; k++) {
    map[k] = j->leaf[k].value == v ? P->nop - 1 : add_leaf(m, &j->leaf[k]);
    if (map[k] == 0 && j->leaf[k].value != v) {
      free(m);
      return false;
    }
  }
  for (int32_t o = 0; o < j->nop; o++) {
    kd_step_eop op = j->op[o];
    for (int q = 0; q < map_arity(op.fn); q++)
      op.a[q] = op.a[q] >= 0 ? op.a[q] + P->nop : map[-1 - op.a[q]];
    m->op[m->nop++] = op;
  }
  m->in = j->in;
  m->count = P->count + j->count;
  count_reads(f, P, -1);
  count_reads(f, j, -1);
  count_reads(f, m, +1);
  *j = *m;
  free(m);
  f->out[pi].dead = true;
  f->prod[v] = -1;
  return true;
}

/* Chain c as one instruction: its MAP unchanged, else a FUSED with a new
   expression. */
static bool chain_emit(const fchain *c, kd_step_instr *out, kd_step_expr *e, int32_t nexpr) {
  if (c->count == 1 && c->in.kind == KD_STEP_MAP) {
    *out = c->in;
    return true;
  }
  e->leaf = malloc(((size_t)c->nleaf + 1) * sizeof *e->leaf);
  e->op = malloc((size_t)c->nop * sizeof *e->op);
  if (!e->leaf || !e->op) return false;
  memcpy(e->leaf, c->leaf, (size_t)c->nleaf * sizeof *e->leaf);
  memcpy(e->op, c->op, (size_t)c->nop * sizeof *e->op);
  e->nleaf = c->nleaf, e->nop = c->nop;
  *out = c->in;
  out->kind = KD_STEP_FUSED;
  out->fn = KD_SF_COPY;
  out->nsrc = 0;
  memset(out->src, 0, sizeof out->src);
  for (int k = 0; k < KD_STEP_MAX_SRC; k++) out->src[k].value = -1;
  out->axis = 0;
  out->expr = nexpr;
  return true;
}

/* Adds instruction i, fusing into it the producers stepfuse.h allows. */
static bool add_instr(fstate *f, int32_t i, int32_t phase_start) {
  const kd_step_prog *p = f->p;
  const kd_step_instr *in = &p->instr[i];
  fnode *n = &f->out[f->nout];
  *n = (fnode){.in = *in, .c = NULL, .dead = false};
  int32_t dv = in->dst.value;
  if (is_map(in) && dv >= 0 && p->values[dv].dtype == KD_F32) {
    if (!(n->c = malloc(sizeof *n->c))) return false;
    if (!chain_start(p, in, n->c)) {
      free(n->c);
      n->c = NULL;
    }
  }
  for (bool again = n->c != NULL; again;) { /* until no producer fuses */
    again = false;
    for (int32_t k = 0; k < n->c->nleaf && !again; k++) {
      int32_t v = n->c->leaf[k].value, pi = v >= 0 ? f->prod[v] : -1;
      if (pi >= phase_start && !f->out[pi].dead && f->out[pi].c)
        again = fuse_into(f, pi, n->c);
    }
  }
  if (dv >= 0) f->prod[dv] = n->c ? f->nout : -1;
  f->nout++;
  return true;
}

/* The distinct values instruction in reads, each once, into readers. */
static void count_instr(const kd_step_prog *p, const kd_step_instr *in, int32_t *readers) {
  const kd_step_expr *e = in->kind == KD_STEP_FUSED ? &p->exprs[in->expr] : NULL;
  int32_t n = e ? e->nleaf : in->nsrc;
  for (int32_t k = 0; k < n; k++) {
    int32_t v = e ? e->leaf[k].value : in->src[k].value;
    bool first = true;
    for (int32_t t = 0; t < k && first; t++)
      first = (e ? e->leaf[t].value : in->src[t].value) != v;
    if (v >= 0 && first) readers[v]++;
  }
}

kd_status kd_step_fuse(kd_step_prog *p, char *err, size_t errlen) {
  fstate f = {.p = p};
  f.out = calloc((size_t)p->ninstr + 1, sizeof *f.out);
  f.readers = calloc((size_t)p->nvalues + 1, sizeof *f.readers);
  f.prod = malloc(((size_t)p->nvalues + 1) * sizeof *f.prod);
  kd_step_instr *instr = malloc(((size_t)p->ninstr + 1) * sizeof *instr);
  kd_step_expr *exprs = calloc((size_t)p->ninstr + 1, sizeof *exprs);
  bool ok = f.out && f.readers && f.prod && instr && exprs;
  for (int32_t v = 0; ok && v < p->nvalues; v++) f.prod[v] = -1;
  /* the live instructions reading each value: all of them, both phases;
     fuse_into moves the counts of those it merges */
  for (int32_t i = 0; ok && i < p->ninstr; i++) count_instr(p, &p->instr[i], f.readers);
  int32_t split_out = -1; /* the first node of the second phase */
  for (int32_t i = 0; ok && i < p->ninstr; i++) {
    if (i == p->split) split_out = f.nout;
    ok = add_instr(&f, i, i < p->split ? 0 : split_out);
  }
  if (split_out < 0) split_out = f.nout;
  int32_t split = 0, ninstr = 0, nexprs = 0;
  for (int32_t t = 0; ok && t < f.nout; t++) {
    if (f.out[t].dead) continue;
    split += t < split_out;
    if (f.out[t].c) {
      ok = chain_emit(f.out[t].c, &instr[ninstr], &exprs[nexprs], nexprs);
      nexprs += ok && instr[ninstr].kind == KD_STEP_FUSED;
    } else {
      instr[ninstr] = f.out[t].in;
    }
    ninstr++;
  }
  for (int32_t t = 0; f.out && t <= p->ninstr; t++) free(f.out[t].c); /* NULL past nout */
  free(f.out);
  free(f.readers);
  free(f.prod);
  if (!ok) {
    for (int32_t e = 0; exprs && e <= nexprs; e++) { /* a failed chain_emit's too */
      free(exprs[e].leaf);
      free(exprs[e].op);
    }
    free(instr);
    free(exprs);
    if (err && errlen) snprintf(err, errlen, "stepfuse: out of memory");
    return KD_ERR_NOMEM;
  }
  for (int32_t e = 0; e < p->nexprs; e++) {
    free(p->exprs[e].leaf);
    free(p->exprs[e].op);
  }
  free(p->exprs);
  memcpy(p->instr, instr, (size_t)ninstr * sizeof *instr);
  p->ninstr = ninstr;
  p->split = split;
  p->exprs = exprs;
  p->nexprs = nexprs;
  free(instr);
  return KD_OK;
}
