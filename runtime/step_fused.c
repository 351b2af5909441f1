/* FUSED step instructions (step.h, step_fused.h): a chain of maps evaluated
 * in one pass over memory.
 *
 * The index space is split over the pool as MAP's is (chunks of C-order
 * elements), walked a row segment at a time along the last dim after the
 * dims every ref walks as one are merged, and evaluated in blocks of
 * KD_FUSED_BLOCK elements: each leaf is made a block of floats (a pointer
 * into memory when contiguous, a scalar when its stride is 0, gathered
 * otherwise; i64 and bool leaves a block of doubles, exactly their values),
 * then each op computes its register block with MAP's own element functions,
 * the last op straight into dst when dst is contiguous. Registers live in a
 * per-worker scratch, reused once their last reader has run, so a block's
 * intermediates stay in L1 and never reach the arena.
 *
 * A compiled expression (step.h's kd_step_set_compiled) replaces the ops'
 * loop: one call a block computes every op in registers and writes dst. Its
 * leaves are blocks of floats or of bool bytes (constants are its
 * immediates): a pointer into memory when contiguous, gathered otherwise,
 * and a scalar leaf's block is filled with the scalar once a row segment. */
#include "step_fused.h"

#include <stdlib.h>
#include <string.h>

enum { B = KD_FUSED_BLOCK, FUSED_GRAIN = 1 << 14 /* as MAP's */ };

typedef struct fref {
  bool constant;
  kd_dtype dtype;
  const char *base; /* the value's element 0 */
  int64_t offset, stride[KD_STEP_MAX_RANK];
  double imm;
} fref;

/* A leaf's block: floats (v), else a scalar (s), or doubles (dv: i64 and
   bool leaves). */
typedef struct fleaf {
  const float *v;
  double s;
  const double *dv;
} fleaf;

typedef struct fop {
  kd_step_fn fn;
  int arity;
  bool fast;     /* MAP's f32 path; else the general one in double */
  int32_t a[KD_STEP_MAX_SRC];
  int reg;       /* its register's slot in the scratch */
} fop;

typedef struct fctx {
  const kd_step_expr *e;
  kd_step_fused_fn fn; /* compiled, or NULL: the ops' loop */
  int nref;      /* ref[0] is dst, ref[1 + k] leaf k */
  fref *ref;
  int64_t **stride; /* nref: ref[k].stride, for kd_step_walk */
  fop *op;
  int nregs;     /* register slots */
  int rank;      /* >= 1 after merging */
  int64_t shape[KD_STEP_MAX_RANK];
  char *scratch; /* per worker: scratch_bytes */
  size_t scratch_bytes;
  int nworkers;
} fctx;

/* The scratch of one worker, carved from its bytes (64-byte aligned parts). */
typedef struct fscratch {
  float *reg;    /* nregs x B */
  float *lf;     /* nleaf x B: gathered f32 leaves */
  double *ld;    /* nleaf x B: i64 and bool leaves */
  double *g;     /* 4 x B: the general path's operands and result */
  fleaf *leaf;   /* nleaf */
  int64_t *off;  /* nref: the segment's offsets */
  int64_t *row;  /* nref: its row's (element 0 of the last dim) */
  const float **lp; /* nleaf: a compiled expression's leaf blocks */
} fscratch;

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

static size_t scratch_layout(const fctx *c, char *base, fscratch *s) {
  size_t nl = (size_t)c->e->nleaf, at = 0;
  size_t sizes[8] = {(size_t)c->nregs * B * sizeof(float), nl * B * sizeof(float),
                     nl * B * sizeof(double), 4 * B * sizeof(double), nl * sizeof(fleaf),
                     (size_t)c->nref * sizeof(int64_t), (size_t)c->nref * sizeof(int64_t),
                     nl * sizeof(float *)};
  void *parts[8];
  for (int k = 0; k < 8; k++) {
    parts[k] = base ? base + at : NULL;
    at += up64(sizes[k]);
  }
  if (s) {
    s->reg = parts[0], s->lf = parts[1], s->ld = parts[2], s->g = parts[3];
    s->leaf = parts[4], s->off = parts[5], s->row = parts[6], s->lp = parts[7];
  }
  return at;
}


/* Operand code x of an op as a block of doubles (the general path, as
   MAP's load_block: f32 and constants exactly, the rest via the leaf). */
static const double *as_double(const fctx *c, const fscratch *s, int32_t x, int m, double *buf) {
  if (x >= 0) {
    const float *r = s->reg + (size_t)c->op[x].reg * B;
    for (int t = 0; t < m; t++) buf[t] = r[t];
    return buf;
  }
  const fleaf *l = &s->leaf[-1 - x];
  if (l->dv) return l->dv;
  if (l->v) {
    for (int t = 0; t < m; t++) buf[t] = l->v[t];
  } else {
    for (int t = 0; t < m; t++) buf[t] = l->s;
  }
  return buf;
}

/* Leaf k's block of m elements from element offset o, step st. */
static void load_leaf(const fref *r, const fscratch *s, int k, int64_t o, int64_t st, int m) {
  fleaf *l = &s->leaf[k];
  *l = (fleaf){NULL, r->imm, NULL};
  if (r->constant) return;
  if (r->dtype == KD_F32) {
    const float *f = (const float *)r->base + o;
    if (st == 0) {
      l->s = f[0];
    } else if (st == 1) {
      l->v = f;
    } else {
      float *buf = s->lf + (size_t)k * B;
      for (int t = 0; t < m; t++) buf[t] = f[t * st];
      l->v = buf;
    }
    return;
  }
  double *buf = s->ld + (size_t)k * B; /* i64 or bool: read by general ops only */
  if (r->dtype == KD_I64) {
    const int64_t *v = (const int64_t *)r->base + o;
    if (st == 1) /* the common strides apart, so that they vectorise */
      for (int t = 0; t < m; t++) buf[t] = (double)v[t];
    else
      for (int t = 0; t < m; t++) buf[t] = (double)v[t * st];
  } else {
    const uint8_t *v = (const uint8_t *)r->base + o;
    if (st == 1)
      for (int t = 0; t < m; t++) buf[t] = v[t] != 0;
    else
      for (int t = 0; t < m; t++) buf[t] = v[t * st] != 0;
  }
  l->dv = buf;
}

/* m elements from element j of the row segment at offsets off. */
static void eval_block(const fctx *c, const fscratch *s, const int64_t *off, int64_t j, int m) {
  int in = c->rank - 1;
  const kd_step_expr *e = c->e;
  for (int k = 0; k < e->nleaf; k++) {
    const fref *r = &c->ref[1 + k];
    load_leaf(r, s, k, off[1 + k] + j * r->stride[in], r->stride[in], m);
  }
  int64_t sd = c->ref[0].stride[in];
  float *dst = (float *)c->ref[0].base + off[0] + j * sd;
  for (int t = 0; t < e->nop; t++) {
    const fop *op = &c->op[t];
    bool last = t == e->nop - 1;
    float *d = last && sd == 1 ? dst : s->reg + (size_t)op->reg * B;
    if (op->fast) {
      const float *v[2] = {NULL, NULL};
      double sc[2] = {0, 0};
      for (int q = 0; q < op->arity && q < 2; q++) {
        int32_t x = op->a[q];
        if (x >= 0) {
          v[q] = s->reg + (size_t)c->op[x].reg * B;
        } else {
          v[q] = s->leaf[-1 - x].v;
          sc[q] = s->leaf[-1 - x].s;
        }
      }
      kd_step_map_f32(op->fn, m, d, v[0], v[0] != NULL, sc[0], v[1], v[1] != NULL, sc[1]);
    } else {
      const double *x[KD_STEP_MAX_SRC] = {NULL, NULL, NULL};
      for (int q = 0; q < op->arity; q++) x[q] = as_double(c, s, op->a[q], m, s->g + (size_t)q * B);
      double *r = s->g + 3 * (size_t)B;
      kd_step_map_double(op->fn, m, r, x[0], x[1], x[2]);
      for (int q = 0; q < m; q++) d[q] = (float)r[q];
    }
    if (last && sd != 1)
      for (int q = 0; q < m; q++) dst[q * sd] = d[q];
  }
}

/* The same block through the compiled expression. Scalar leaves' blocks
   were filled by fill_scalars; dst's block is register slot 0's when dst is
   strided (no register is used otherwise). */
static void eval_compiled(const fctx *c, const fscratch *s, const int64_t *off, int64_t j, int m) {
  int in = c->rank - 1;
  for (int k = 0; k < c->e->nleaf; k++) {
    const fref *r = &c->ref[1 + k];
    int64_t st = r->stride[in];
    float *buf = s->lf + (size_t)k * B;
    if (r->constant || st == 0) {
      s->lp[k] = buf;
    } else if (r->dtype == KD_BOOL) { /* bytes: a bool leaf is a SELECT's condition */
      const uint8_t *v = (const uint8_t *)r->base + off[1 + k] + j * st;
      if (st != 1) {
        uint8_t *bb = (uint8_t *)buf;
        for (int t = 0; t < m; t++) bb[t] = v[t * st];
        v = bb;
      }
      s->lp[k] = (const float *)(const void *)v;
    } else if (st == 1) {
      s->lp[k] = (const float *)r->base + off[1 + k] + j;
    } else {
      const float *f = (const float *)r->base + off[1 + k] + j * st;
      for (int t = 0; t < m; t++) buf[t] = f[t * st];
      s->lp[k] = buf;
    }
  }
  int64_t sd = c->ref[0].stride[in];
  float *dst = (float *)c->ref[0].base + off[0] + j * sd;
  float *d = sd == 1 ? dst : s->reg;
  c->fn(m, d, s->lp);
  if (sd != 1)
    for (int q = 0; q < m; q++) dst[q * sd] = d[q];
}

/* The blocks of a compiled expression's scalar leaves (stride 0 along the
   row) for the segment at offsets off: n copies of the scalar. */
static void fill_scalars(const fctx *c, const fscratch *s, const int64_t *off, int n) {
  int in = c->rank - 1;
  for (int k = 0; k < c->e->nleaf; k++) {
    const fref *r = &c->ref[1 + k];
    if (r->constant || r->stride[in] != 0) continue;
    float *buf = s->lf + (size_t)k * B;
    if (r->dtype == KD_BOOL) {
      memset(buf, ((const uint8_t *)r->base)[off[1 + k]], (size_t)n);
    } else {
      float v = ((const float *)r->base)[off[1 + k]];
      for (int t = 0; t < n; t++) buf[t] = v;
    }
  }
}

/* One row segment of n elements at offsets off, in blocks of B. */
typedef struct fwalk {
  const fctx *c;
  const fscratch *s;
} fwalk;

static void fused_seg(void *ctx, const int64_t *off, int64_t n) {
  const fwalk *w = ctx;
  if (w->c->fn) {
    fill_scalars(w->c, w->s, off, (int)(n < B ? n : B));
    for (int64_t t = 0; t < n; t += B)
      eval_compiled(w->c, w->s, off, t, (int)(n - t < B ? n - t : B));
  } else {
    for (int64_t t = 0; t < n; t += B)
      eval_block(w->c, w->s, off, t, (int)(n - t < B ? n - t : B));
  }
}

/* Elements [begin, end) of the index space, as MAP walks them
   (kd_step_walk). */
static void fused_chunk(void *vctx, int64_t begin, int64_t end, int worker) {
  const fctx *c = vctx;
  /* A call nested in another pool's job runs serially under that pool's
     index, which may be past ours: any one scratch is then free. */
  if (worker < 0 || worker >= c->nworkers) worker = 0;
  fscratch s;
  scratch_layout(c, c->scratch + (size_t)worker * c->scratch_bytes, &s);
  for (int k = 0; k < c->nref; k++) s.row[k] = c->ref[k].offset;
  fwalk w = {c, &s};
  kd_step_walk(c->rank, c->shape, c->nref, c->stride, begin, end, s.row, s.off, fused_seg, &w);
}

/* Register slots: op t's register is free again after its last reader
   (an op never writes the slot of one of its own operands, so the f32
   path's restrict holds). Returns the number of slots. */
static int assign_registers(const kd_step_expr *e, fop *op) {
  int32_t *last = malloc((size_t)e->nop * sizeof *last);
  int *free_at = malloc((size_t)e->nop * sizeof *free_at); /* slot -> op index it is free after */
  if (!last || !free_at) {
    free(last);
    free(free_at);
    return -1;
  }
  for (int t = 0; t < e->nop; t++) last[t] = t;
  for (int t = 0; t < e->nop; t++)
    for (int q = 0; q < op[t].arity; q++)
      if (op[t].a[q] >= 0) last[op[t].a[q]] = t;
  int nslots = 0;
  for (int t = 0; t < e->nop; t++) {
    int slot = -1;
    for (int k = 0; k < nslots && slot < 0; k++)
      if (free_at[k] < t) slot = k;
    if (slot < 0) slot = nslots++;
    op[t].reg = slot;
    free_at[slot] = last[t];
  }
  free(last);
  free(free_at);
  return nslots;
}

kd_status kd_step_run_fused(const kd_step_prog *p, int32_t i, void *arena, void *const *slots,
                            kd_pool *pool, char *err, size_t errlen) {
  const kd_step_instr *in = &p->instr[i];
  const kd_step_expr *e = &p->exprs[in->expr];
  int64_t total = 1;
  for (int32_t d = 0; d < in->rank; d++) total *= in->shape[d]; /* <= dst's size: validated */
  if (total == 0) return KD_OK;
  fctx c = {.e = e, .fn = p->compiled ? p->compiled[in->expr] : NULL, .nref = 1 + e->nleaf,
            .rank = in->rank};
  memcpy(c.shape, in->shape, sizeof c.shape);
  c.ref = calloc((size_t)c.nref, sizeof *c.ref);
  c.stride = calloc((size_t)c.nref, sizeof *c.stride);
  c.op = calloc((size_t)e->nop, sizeof *c.op);
  kd_status st = c.ref && c.stride && c.op ? KD_OK : KD_ERR_NOMEM;
  for (int k = 0; k < c.nref && st == KD_OK; k++) c.stride[k] = c.ref[k].stride;
  for (int k = 0; k < c.nref && st == KD_OK; k++) {
    const kd_step_ref *r = k == 0 ? &in->dst : &e->leaf[k - 1];
    fref *f = &c.ref[k];
    if (r->value < 0) {
      *f = (fref){.constant = true, .dtype = KD_F32, .imm = r->imm};
      continue;
    }
    const kd_step_value *v = &p->values[r->value];
    f->dtype = v->dtype;
    f->base = v->loc == KD_LOC_ARENA ? (arena ? (char *)arena + v->offset : NULL)
                                     : slots ? slots[v->slot] : NULL;
    if (!f->base && v->loc == KD_LOC_SLOT) {
      st = KD_ERR_INVALID;
      if (err && errlen)
        snprintf(err, errlen, "instruction %d: slot %d (%s) is not bound", i, v->slot,
                 p->slots[v->slot].name);
    } else if (!f->base) {
      st = KD_ERR_INVALID;
      if (err && errlen) snprintf(err, errlen, "instruction %d: no arena", i);
    }
    f->offset = r->offset;
    memcpy(f->stride, r->stride, sizeof f->stride);
  }
  for (int t = 0; t < e->nop && st == KD_OK; t++) {
    fop *op = &c.op[t];
    op->fn = e->op[t].fn;
    op->arity = kd_step_map_arity(op->fn);
    memcpy(op->a, e->op[t].a, sizeof op->a);
    /* MAP's test for its f32 path (step.c's run_map and fast_fn), with
       dst f32 (validated) and registers f32 (what f32 MAP dsts held) */
    op->fast = op->fn != KD_SF_SELECT;
    for (int q = 0; q < op->arity && op->fast; q++)
      op->fast = op->a[q] >= 0 || c.ref[-op->a[q]].constant || c.ref[-op->a[q]].dtype == KD_F32;
  }
  if (st == KD_OK && (c.nregs = assign_registers(e, c.op)) < 0) st = KD_ERR_NOMEM;
  if (st == KD_OK) {
    c.rank = kd_step_merge_dims(c.rank, c.shape, c.nref, c.stride);
    c.nworkers = kd_pool_size(pool);
    c.scratch_bytes = scratch_layout(&c, NULL, NULL);
    c.scratch = aligned_alloc(64, (size_t)c.nworkers * c.scratch_bytes);
    if (!c.scratch) st = KD_ERR_NOMEM;
  }
  if (st == KD_OK) kd_pool_parallel_for(pool, total, FUSED_GRAIN, fused_chunk, &c);
  else if (st == KD_ERR_NOMEM && err && errlen)
    snprintf(err, errlen, "instruction %d: out of memory", i);
  free(c.scratch);
  free(c.ref);
  free(c.stride);
  free(c.op);
  return st;
}
