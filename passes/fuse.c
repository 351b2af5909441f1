/* The row scheduler (see fuse.h for the model). Four walks over the graph:
 *   classify   kind (GLOBAL / ROW / ELEM) from the shape, role from the op;
 *   passes     forward: the first pass in which each row value exists, with
 *              online folding of softmax-weighted sums;
 *   stages     forward: ASAP phases; backward from the outputs: which stage
 *              computes each row value, reductions over rows placed as late
 *              as their readers allow;
 *   summary    passes per stage, online groups, cached exps, exps per
 *              element. */
#include "fuse.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define NEVER (1 << 30) /* a use stage later than any */

typedef struct fuse_ctx {
  kd_schedule *s;
  const kd_graph *g;
  size_t n;
  char *err;
  size_t errlen;
  char *live; /* [n] some output depends on the node */
  int *use;   /* [n] GLOBAL: earliest stage that reads it, NEVER if none */
} fuse_ctx;

static kd_status unsupported(fuse_ctx *c, kd_node_id id, const char *fmt, ...) {
  if (c->err && c->errlen) {
    int k = snprintf(c->err, c->errlen, "fuse: %%%d: ", (int)id);
    va_list ap;
    va_start(ap, fmt);
    if (k >= 0 && (size_t)k < c->errlen) vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
    va_end(ap);
  }
  return KD_ERR_UNSUPPORTED;
}

static const kd_node *node(const fuse_ctx *c, kd_node_id id) { return kd_graph_node(c->g, id); }
static kd_fuse_node *fn(const fuse_ctx *c, kd_node_id id) { return &c->s->node[id]; }

/* ---- classify -------------------------------------------------------------- */

/* Right-aligned: the last dim is the column (V or 1), the one before it the
 * row (N or 1); any further leading dims must be 1. */
static int classify_shape(const fuse_ctx *c, const kd_node *n, kd_fuse_kind *kind) {
  kd_dim col = n->rank >= 1 ? n->shape[n->rank - 1] : 1;
  kd_dim row = n->rank >= 2 ? n->shape[n->rank - 2] : 1;
  for (int i = 0; i + 2 < n->rank; i++)
    if (n->shape[i] != 1) return 0;
  if (row != 1 && row != c->s->N) return 0;
  if (col == c->s->V) *kind = KD_FUSE_ELEM;
  else if (col != 1) return 0;
  else *kind = row == 1 ? KD_FUSE_GLOBAL : KD_FUSE_ROW;
  return 1;
}

static int is_reduce(kd_opcode op) {
  return op == KD_IR_SUM || op == KD_IR_RMAX || op == KD_IR_LSE;
}

static kd_status classify(fuse_ctx *c) {
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
    const kd_node *n = node(c, id);
    kd_fuse_node *f = fn(c, id);
    f->fold_a = f->fold_c = f->fold_f = KD_NONE;
    f->slot = f->stage = f->exp_group = -1;
    f->live = c->live[id];
    if (!f->live) continue; /* never computed: whatever its shape */
    if (!classify_shape(c, n, &f->kind))
      return unsupported(c, id, "%s has a shape that is neither [N, V], [N, 1] nor a scalar",
                         kd_opcode_name(n->op));
    if (n->op == KD_IR_TANH ||
        (kd_opcode_class(n->op) == KD_CLASS_OTHER && n->op != KD_IR_EXPAND))
      return unsupported(c, id, "%s is a model op: row kernels do not take it",
                         kd_opcode_name(n->op));
    if (n->op == KD_IR_SOFTMAX || n->op == KD_IR_LOG_SOFTMAX)
      return unsupported(c, id, "%s must be canonicalised first", kd_opcode_name(n->op));
    if (n->op == KD_IR_EXPAND) f->role = KD_ROLE_IDENTITY;
    if (!is_reduce(n->op)) continue;
    kd_fuse_kind from = fn(c, n->src[0])->kind;
    int r = node(c, n->src[0])->rank;
    int col = n->axis == r - 1, row = n->axis == r - 2, all = n->axis == KD_AXIS_ALL;
    if (from == KD_FUSE_GLOBAL || (from == KD_FUSE_ROW && col)) f->role = KD_ROLE_IDENTITY;
    else if (from == KD_FUSE_ELEM && col && f->kind == KD_FUSE_ROW) f->role = KD_ROLE_ROWRED;
    else if (from == KD_FUSE_ROW && (row || all) && n->op == KD_IR_SUM) f->role = KD_ROLE_NRED;
    else
      return unsupported(c, id, "%s over axis %d of a %s value is not a row or column reduction",
                         kd_opcode_name(n->op), n->axis,
                         from == KD_FUSE_ELEM ? "[N, V]" : "[N, 1]");
  }
  return KD_OK;
}

/* ---- passes ---------------------------------------------------------------- */

static int avail_of(const fuse_ctx *c, kd_node_id id) {
  return fn(c, id)->kind == KD_FUSE_GLOBAL ? 0 : fn(c, id)->avail;
}

/* exp(a - c): the SUB's operands when `e` is EXP(SUB(a, c)) with a ELEM and c
 * a row scalar or a global. */
static int match_exp_shift(const fuse_ctx *c, kd_node_id e, kd_node_id *a, kd_node_id *sh) {
  const kd_node *x = node(c, e);
  if (x->op != KD_IR_EXP) return 0;
  const kd_node *d = node(c, x->src[0]);
  if (d->op != KD_IR_SUB) return 0;
  if (fn(c, d->src[0])->kind != KD_FUSE_ELEM || fn(c, d->src[1])->kind == KD_FUSE_ELEM) return 0;
  *a = d->src[0];
  *sh = d->src[1];
  return 1;
}

/* A SUM's argument of the form exp(a - c) [* f]: the fold's parts. */
static int match_fold(const fuse_ctx *c, kd_node_id arg, kd_fuse_node *f) {
  const kd_node *x = node(c, arg);
  if (match_exp_shift(c, arg, &f->fold_a, &f->fold_c)) {
    f->fold_f = KD_NONE;
    return 1;
  }
  if (x->op != KD_IR_MUL && x->op != KD_IR_MULZ) return 0;
  f->mulz = x->op == KD_IR_MULZ;
  if (match_exp_shift(c, x->src[0], &f->fold_a, &f->fold_c)) {
    f->fold_f = x->src[1];
    return 1;
  }
  /* MUL commutes; MULZ's zero test is on its first operand, so no swap */
  if (x->op == KD_IR_MUL && match_exp_shift(c, x->src[1], &f->fold_a, &f->fold_c)) {
    f->fold_f = x->src[0];
    return 1;
  }
  return 0;
}

static void assign_passes(fuse_ctx *c) {
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
    const kd_node *n = node(c, id);
    kd_fuse_node *f = fn(c, id);
    if (f->kind == KD_FUSE_GLOBAL) continue;
    if (f->role != KD_ROLE_ROWRED) {
      for (int i = 0; i < n->nsrc; i++)
        if (avail_of(c, n->src[i]) > f->avail) f->avail = avail_of(c, n->src[i]);
      continue;
    }
    f->pass = avail_of(c, n->src[0]);
    kd_fuse_node fold = *f;
    if (n->op == KD_IR_SUM && match_fold(c, n->src[0], &fold)) {
      int p = avail_of(c, fold.fold_a);
      if (fold.fold_f != KD_NONE && avail_of(c, fold.fold_f) > p) p = avail_of(c, fold.fold_f);
      /* c is needed only once the pass is over */
      if (avail_of(c, fold.fold_c) - 1 > p) p = avail_of(c, fold.fold_c) - 1;
      if (p < f->pass) {
        *f = fold;
        f->role = KD_ROLE_FOLDED;
        f->pass = p;
      }
    }
    f->avail = f->pass + 1;
  }
}

/* ---- stages ---------------------------------------------------------------- */

static void mark_live(fuse_ctx *c) {
  for (size_t i = 0; i < kd_graph_noutputs(c->g); i++) c->live[kd_graph_output(c->g, i)] = 1;
  for (kd_node_id id = (kd_node_id)c->n - 1; id >= 0; id--) {
    if (!c->live[id]) continue;
    const kd_node *n = node(c, id);
    for (int i = 0; i < n->nsrc; i++) c->live[n->src[i]] = 1;
  }
}

/* The sources a node's computation reads: a folded SUM reads a, c and f, not
 * its argument (the exp of the argument is never formed). */
static int sources(const fuse_ctx *c, kd_node_id id, kd_node_id *src) {
  const kd_fuse_node *f = fn(c, id);
  if (f->role == KD_ROLE_FOLDED) {
    int k = 0;
    src[k++] = f->fold_a;
    src[k++] = f->fold_c;
    if (f->fold_f != KD_NONE) src[k++] = f->fold_f;
    return k;
  }
  const kd_node *n = node(c, id);
  memcpy(src, n->src, sizeof n->src);
  return n->nsrc;
}

static int asap_phase(fuse_ctx *c, kd_node_id id) {
  const kd_node *n = node(c, id);
  int p = 0;
  for (int i = 0; i < n->nsrc; i++)
    if (fn(c, n->src[i])->phase > p) p = fn(c, n->src[i])->phase;
  return fn(c, id)->role == KD_ROLE_NRED ? p + 1 : p;
}

static kd_status assign_stages(fuse_ctx *c) {
  kd_schedule *s = c->s;
  /* ASAP phases (phase here: the earliest stage that could compute a row
   * value, or the global step that could compute a global) */
  int last = -1;
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
    fn(c, id)->phase = asap_phase(c, id);
    if (c->live[id] && fn(c, id)->kind != KD_FUSE_GLOBAL && fn(c, id)->phase > last)
      last = fn(c, id)->phase;
  }
  s->nstages = last + 1;
  if (s->nstages > KD_FUSE_MAX_STAGES)
    return unsupported(c, 0, "%d stages (reductions over rows feeding row work) > %d",
                       s->nstages, KD_FUSE_MAX_STAGES);

  for (size_t i = 0; i < c->n; i++) c->use[i] = NEVER;
  for (size_t i = 0; i < kd_graph_noutputs(c->g); i++) {
    kd_node_id o = kd_graph_output(c->g, i);
    if (fn(c, o)->kind == KD_FUSE_ELEM) fn(c, o)->stages |= 1u << fn(c, o)->phase;
    else if (fn(c, o)->kind == KD_FUSE_ROW)
      return unsupported(c, o, "output '%s' is per row ([N, 1]); reduce it over rows",
                         kd_graph_output_name(c->g, i));
  }
  /* backward: readers before sources */
  for (kd_node_id id = (kd_node_id)c->n - 1; id >= 0; id--) {
    if (!c->live[id]) continue;
    kd_fuse_node *f = fn(c, id);
    kd_node_id src[KD_MAX_SRC];
    int ns = sources(c, id, src);
    if (f->role == KD_ROLE_NRED) {
      f->stage = (c->use[id] == NEVER ? s->nstages : c->use[id]) - 1;
      if (f->stage < fn(c, src[0])->phase)
        return unsupported(c, id, "a reduction over rows is read before its rows exist");
      fn(c, src[0])->stages |= 1u << f->stage;
      continue;
    }
    if (f->kind == KD_FUSE_GLOBAL) {
      for (int i = 0; i < ns; i++) {
        if (fn(c, src[i])->kind != KD_FUSE_GLOBAL)
          return unsupported(c, id, "a scalar computed from row values without a reduction");
        if (c->use[id] < c->use[src[i]]) c->use[src[i]] = c->use[id];
      }
      continue;
    }
    for (int k = 0; k < s->nstages; k++) {
      if (!kd_fuse_in_stage(s, id, k)) continue;
      for (int i = 0; i < ns; i++) {
        if (fn(c, src[i])->kind != KD_FUSE_GLOBAL) fn(c, src[i])->stages |= 1u << k;
        else if (k < c->use[src[i]]) c->use[src[i]] = k;
      }
    }
  }
  /* global steps: a reduction over rows accumulated in stage k is final in
   * step k + 1; every stage may read only what earlier steps computed */
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
    kd_fuse_node *f = fn(c, id);
    if (f->role == KD_ROLE_NRED && f->live) {
      f->phase = f->stage + 1;
      f->slot = s->nslots++;
    } else if (f->kind == KD_FUSE_GLOBAL) {
      f->phase = asap_phase(c, id);
    }
  }
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
    if (fn(c, id)->kind == KD_FUSE_GLOBAL || !fn(c, id)->stages) continue;
    kd_node_id src[KD_MAX_SRC];
    int ns = sources(c, id, src);
    for (int i = 0; i < ns; i++) {
      const kd_fuse_node *g = fn(c, src[i]);
      if (g->kind == KD_FUSE_GLOBAL && (fn(c, id)->stages & ((1u << g->phase) - 1u)))
        return unsupported(c, id, "reads %%%d before the rows it depends on are reduced",
                           (int)src[i]);
    }
  }
  return KD_OK;
}

/* ---- summary --------------------------------------------------------------- */

static int is_online(const kd_node *n, const kd_fuse_node *f) {
  return f->role == KD_ROLE_FOLDED ||
         (f->role == KD_ROLE_ROWRED && (n->op == KD_IR_LSE || n->op == KD_IR_RMAX));
}

static kd_node_id online_a(const kd_node *n, const kd_fuse_node *f) {
  return f->role == KD_ROLE_FOLDED ? f->fold_a : n->src[0];
}

static kd_status make_groups(fuse_ctx *c) {
  kd_schedule *s = c->s;
  s->group = calloc(c->n + 1, sizeof *s->group);
  if (!s->group) return KD_ERR_NOMEM;
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
    const kd_node *n = node(c, id);
    kd_fuse_node *f = fn(c, id);
    if (!f->stages || !is_online(n, f)) continue;
    kd_node_id a = online_a(n, f);
    int k = 0;
    while (k < s->ngroups && !(s->group[k].a == a && s->group[k].pass == f->pass)) k++;
    if (k == s->ngroups) s->group[s->ngroups++] = (kd_fuse_group){a, f->pass, 0, 0};
    if (n->op != KD_IR_RMAX) s->group[k].nexp = 1;
  }
  return KD_OK;
}

/* Counts the EXP and LOG nodes in the ELEM cone of `id` not yet seen in this
 * pass; a cached exp costs none and reads nothing below it. */
static void count_cone(const fuse_ctx *c, kd_node_id id, char *seen, int *exps, int *logs) {
  if (seen[id] || fn(c, id)->kind != KD_FUSE_ELEM || fn(c, id)->exp_group >= 0) return;
  seen[id] = 1;
  const kd_node *n = node(c, id);
  if (n->op == KD_IR_EXP) ++*exps;
  if (n->op == KD_IR_LOG) ++*logs;
  if (n->op == KD_IR_POW) ++*exps, ++*logs;
  for (int i = 0; i < n->nsrc; i++) count_cone(c, n->src[i], seen, exps, logs);
}

static void mark_cone(const fuse_ctx *c, kd_node_id id, char *seen) {
  if (seen[id] || fn(c, id)->kind != KD_FUSE_ELEM) return;
  seen[id] = 1;
  const kd_node *n = node(c, id);
  for (int i = 0; i < n->nsrc; i++) mark_cone(c, n->src[i], seen);
}

static int is_elem_output(const fuse_ctx *c, kd_node_id id) {
  if (fn(c, id)->kind != KD_FUSE_ELEM) return 0;
  for (size_t i = 0; i < kd_graph_noutputs(c->g); i++)
    if (kd_graph_output(c->g, i) == id) return 1;
  return 0;
}

/* The per-element roots of pass p: reduction arguments (a and f of a fold)
 * and stored outputs. */
static int pass_roots(const fuse_ctx *c, kd_node_id id, int p, kd_node_id *src) {
  const kd_fuse_node *f = fn(c, id);
  if (f->role == KD_ROLE_FOLDED && f->pass == p) {
    src[0] = f->fold_a;
    src[1] = f->fold_f;
    return f->fold_f == KD_NONE ? 1 : 2;
  }
  if (f->role == KD_ROLE_ROWRED && f->pass == p) {
    src[0] = node(c, id)->src[0];
    return 1;
  }
  if (f->avail == p && is_elem_output(c, id)) {
    src[0] = id;
    return 1;
  }
  return 0;
}

/* Marks the ELEM cone of pass p of stage k (all of it: the candidates for
 * cached exps are not yet decided); returns whether the pass stores. */
static int reach_pass(const fuse_ctx *c, int k, int p, char *seen) {
  int stores = 0;
  memset(seen, 0, c->n);
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
    if (!kd_fuse_in_stage(c->s, id, k)) continue;
    kd_node_id src[2];
    int ns = pass_roots(c, id, p, src);
    for (int i = 0; i < ns; i++) mark_cone(c, src[i], seen);
    stores |= ns && is_elem_output(c, id) && fn(c, id)->avail == p;
  }
  return stores;
}

/* Cached exps (fuse.h): exp(a - c), c = lse(a) or max(a), is taken from the
 * exps of the online group that found c when that group computes exps (c
 * is then at least every reference its running max takes, so the kept
 * exps times exp(m - c) cannot overflow). A group is kept only when a pass
 * that stores nothing reads it: the gradient pass is bound by its stores
 * and computes its exps in their shadow, while keeping costs pass 0 a
 * store per exp (measured, CPU ns per logit: forward KL, whose only reader
 * is the gradient pass, 1.00 recomputed and 1.09 kept; JSD 2.65 and 2.18). */
static void mark_cached_exps(fuse_ctx *c, char *seen) {
  kd_schedule *s = c->s;
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
    kd_node_id a, sh;
    if (!fn(c, id)->stages || fn(c, id)->kind != KD_FUSE_ELEM || !match_exp_shift(c, id, &a, &sh))
      continue;
    const kd_node *r = node(c, sh);
    if (fn(c, sh)->role != KD_ROLE_ROWRED || r->src[0] != a ||
        (r->op != KD_IR_LSE && r->op != KD_IR_RMAX))
      continue;
    for (int k = 0; k < s->ngroups; k++)
      if (s->group[k].a == a && s->group[k].pass == fn(c, sh)->pass && s->group[k].nexp)
        fn(c, id)->exp_group = k;
  }
  for (int k = 0; k < s->nstages; k++)
    for (int p = 1; p < s->stage[k].npasses; p++) {
      if (reach_pass(c, k, p, seen)) continue;
      for (kd_node_id id = 0; id < (kd_node_id)c->n; id++)
        if (seen[id] && fn(c, id)->exp_group >= 0) s->group[fn(c, id)->exp_group].cached = 1;
    }
  for (kd_node_id id = 0; id < (kd_node_id)c->n; id++)
    if (fn(c, id)->exp_group >= 0 && !s->group[fn(c, id)->exp_group].cached)
      fn(c, id)->exp_group = -1;
}

static kd_status summarise(fuse_ctx *c) {
  kd_schedule *s = c->s;
  for (int k = 0; k < s->nstages; k++) {
    kd_fuse_stage *st = &s->stage[k];
    for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
      const kd_fuse_node *f = fn(c, id);
      if (!kd_fuse_in_stage(s, id, k)) continue;
      st->has_rows = 1;
      int need = -1;
      if (f->role == KD_ROLE_ROWRED || f->role == KD_ROLE_FOLDED) need = f->pass + 1;
      else if (is_elem_output(c, id)) need = f->avail + 1;
      if (need > st->npasses) st->npasses = need;
    }
    if (st->npasses > KD_FUSE_MAX_PASSES)
      return unsupported(c, 0, "stage %d needs %d passes > %d", k, st->npasses, KD_FUSE_MAX_PASSES);
  }
  char *seen = malloc(c->n);
  if (!seen) return KD_ERR_NOMEM;
  mark_cached_exps(c, seen);
  for (int k = 0; k < s->nstages; k++) {
    kd_fuse_stage *st = &s->stage[k];
    for (int p = 0; p < st->npasses; p++) {
      memset(seen, 0, c->n);
      for (kd_node_id id = 0; id < (kd_node_id)c->n; id++) {
        if (!kd_fuse_in_stage(s, id, k)) continue;
        kd_node_id src[2];
        int ns = pass_roots(c, id, p, src);
        for (int i = 0; i < ns; i++) count_cone(c, src[i], seen, &st->exps[p], &st->logs[p]);
      }
      for (int i = 0; i < s->ngroups; i++)
        if (s->group[i].pass == p && s->group[i].nexp && kd_fuse_in_stage(s, s->group[i].a, k))
          st->exps[p]++;
    }
  }
  free(seen);
  return KD_OK;
}

/* ---- entry points ------------------------------------------------------------ */

kd_status kd_fuse(const kd_graph *g, kd_schedule **out, char *err, size_t errlen) {
  *out = NULL;
  kd_schedule *s = calloc(1, sizeof *s);
  fuse_ctx c = {s, g, kd_graph_size(g), err, errlen, NULL, NULL};
  if (!s) return KD_ERR_NOMEM;
  s->g = g;
  s->node = calloc(c.n + 1, sizeof *s->node);
  c.live = calloc(c.n + 1, 1);
  c.use = calloc(c.n + 1, sizeof *c.use);
  kd_status st = KD_ERR_NOMEM;
  if (!s->node || !c.live || !c.use) goto done;
  s->teacher = kd_graph_find_input(g, "teacher");
  s->student = kd_graph_find_input(g, "student");
  s->labels = kd_graph_find_input(g, "labels");
  const kd_node *stu = s->student == KD_NONE ? NULL : kd_graph_node(g, s->student);
  if (!stu || stu->rank != 2 || !KD_DIM_IS_SYM(stu->shape[0]) || !KD_DIM_IS_SYM(stu->shape[1])) {
    st = unsupported(&c, s->student, "the graph needs an input \"student\" of shape [N, V]");
    goto done;
  }
  s->N = stu->shape[0];
  s->V = stu->shape[1];
  mark_live(&c);
  if ((st = classify(&c)) || (assign_passes(&c), (st = assign_stages(&c))) ||
      (st = make_groups(&c)) || (st = summarise(&c)))
    goto done;
  *out = s;
  s = NULL;
done:
  free(c.live);
  free(c.use);
  kd_schedule_free(s);
  return st;
}

void kd_schedule_free(kd_schedule *s) {
  if (!s) return;
  free(s->node);
  free(s->group);
  free(s);
}

int kd_schedule_passes(const kd_schedule *s) {
  int n = 0;
  for (int k = 0; k < s->nstages; k++) n += s->stage[k].npasses;
  return n;
}

int kd_schedule_exps(const kd_schedule *s) {
  int n = 0;
  for (int k = 0; k < s->nstages; k++)
    for (int p = 0; p < s->stage[k].npasses; p++) n += s->stage[k].exps[p];
  return n;
}

/* ---- printer ----------------------------------------------------------------- */

/* The reductions over rows that global step `phase` finishes. */
static void print_globals(const kd_schedule *s, int phase, FILE *out) {
  int any = 0;
  for (kd_node_id id = 0; id < (kd_node_id)kd_graph_size(s->g); id++) {
    const kd_fuse_node *f = &s->node[id];
    if (f->role != KD_ROLE_NRED || f->phase != phase) continue;
    if (!any++) fprintf(out, "step %d:", phase);
    fprintf(out, " %%%d = sum(slot %d)", (int)id, f->slot);
  }
  if (any) fprintf(out, "\n");
}

void kd_schedule_print(const kd_schedule *s, FILE *out) {
  const kd_graph *g = s->g;
  size_t n = kd_graph_size(g);
  fprintf(out, "schedule: %d stage%s, %d pass%s over the row, %d exp/element\n", s->nstages,
          s->nstages == 1 ? "" : "s", kd_schedule_passes(s), kd_schedule_passes(s) == 1 ? "" : "es",
          kd_schedule_exps(s));
  for (int k = 0; k <= s->nstages; k++) {
    print_globals(s, k, out);
    if (k == s->nstages) break;
    const kd_fuse_stage *st = &s->stage[k];
    fprintf(out, "stage %d: %d pass%s\n", k, st->npasses, st->npasses == 1 ? "" : "es");
    for (int p = 0; p < st->npasses; p++) {
      fprintf(out, "  pass %d:", p);
      for (int i = 0; i < s->ngroups; i++)
        if (s->group[i].pass == p && kd_fuse_in_stage(s, s->group[i].a, k))
          fprintf(out, " online(max %%%d%s)", (int)s->group[i].a,
                  s->group[i].cached ? ", exps kept" : "");
      for (kd_node_id id = 0; id < (kd_node_id)n; id++) {
        const kd_fuse_node *f = &s->node[id];
        if (!kd_fuse_in_stage(s, id, k)) continue;
        if (f->role == KD_ROLE_ROWRED && f->pass == p)
          fprintf(out, " %s %%%d", kd_opcode_name(kd_graph_node(g, id)->op), (int)id);
        else if (f->role == KD_ROLE_FOLDED && f->pass == p && f->fold_f == KD_NONE)
          fprintf(out, " folded-sum %%%d = exp(%%%d - %%%d)", (int)id, (int)f->fold_a,
                  (int)f->fold_c);
        else if (f->role == KD_ROLE_FOLDED && f->pass == p)
          fprintf(out, " folded-sum %%%d = exp(%%%d - %%%d) %s %%%d", (int)id, (int)f->fold_a,
                  (int)f->fold_c, f->mulz ? "mulz" : "*", (int)f->fold_f);
      }
      for (size_t i = 0; i < kd_graph_noutputs(g); i++) {
        kd_node_id o = kd_graph_output(g, i);
        if (s->node[o].kind == KD_FUSE_ELEM && kd_fuse_in_stage(s, o, k) && s->node[o].avail == p)
          fprintf(out, " store %s = %%%d", kd_graph_output_name(g, i), (int)o);
      }
      fprintf(out, "; exp %d, log %d\n", st->exps[p], st->logs[p]);
    }
    int any = 0;
    for (kd_node_id id = 0; id < (kd_node_id)n; id++) {
      const kd_fuse_node *f = &s->node[id];
      if (f->role == KD_ROLE_NRED && f->stage == k)
        fprintf(out, "%s%%%d -> slot %d", any++ ? ", " : "  rows: ",
                (int)kd_graph_node(g, id)->src[0], f->slot);
    }
    if (any) fprintf(out, "\n");
  }
  for (size_t i = 0; i < kd_graph_noutputs(g); i++) {
    kd_node_id o = kd_graph_output(g, i);
    if (s->node[o].kind == KD_FUSE_GLOBAL)
      fprintf(out, "output %s = %%%d (step %d)\n", kd_graph_output_name(g, i), (int)o,
              s->node[o].phase);
  }
}
