/* Memory planning (memplan.h): schedule, sizes, liveness, then offsets by
 * greedy-by-size placement. */
#include "memplan.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static void set_err(char *err, size_t errlen, const char *msg, const char *arg) {
  if (err && errlen) snprintf(err, errlen, msg, arg);
}

static bool is_view(kd_opcode op) {
  return op == KD_IR_RESHAPE || op == KD_IR_EXPAND || op == KD_IR_STOPGRAD;
}

static int64_t align_up(int64_t b) {
  return (b + KD_MEMPLAN_ALIGN - 1) / KD_MEMPLAN_ALIGN * KD_MEMPLAN_ALIGN;
}

/* Elements x dtype bytes of n with its symbols bound; -1 and err on an
   unbound symbol or an overflow. */
static int64_t node_bytes(const kd_graph *g, const kd_node *n, const kd_sym_binding *bind,
                          size_t nbind, char *err, size_t errlen) {
  int64_t elems = 1;
  for (int d = 0; d < n->rank; d++) {
    int64_t size = n->shape[d];
    if (KD_DIM_IS_SYM(size)) {
      const char *name = kd_graph_sym_name(g, size);
      size = -1;
      for (size_t i = 0; i < nbind && name; i++)
        if (strcmp(bind[i].name, name) == 0) size = bind[i].size;
      if (size < 0) {
        set_err(err, errlen, "memplan: symbol %s has no size bound", name ? name : "?");
        return -1;
      }
    }
    if (size > 0 && elems > INT64_MAX / 16 / size) {
      set_err(err, errlen, "memplan: %s: the value's size overflows", kd_opcode_name(n->op));
      return -1;
    }
    elems *= size;
  }
  return elems * (int64_t)kd_dtype_size(n->dtype);
}

/* Which nodes feed an output: a backward sweep (sources have smaller ids). */
static void mark_needed(const kd_graph *g, bool *needed) {
  for (size_t i = 0; i < kd_graph_noutputs(g); i++) needed[kd_graph_output(g, i)] = true;
  for (size_t i = kd_graph_size(g); i-- > 0;) {
    if (!needed[i]) continue;
    const kd_node *n = kd_graph_node(g, (kd_node_id)i);
    for (int s = 0; s < n->nsrc; s++) needed[n->src[s]] = true;
  }
}

/* Liveness: each read extends the base value's life to the reader's step. */
static void live_ranges(const kd_graph *g, kd_memplan *p) {
  for (size_t i = 0; i < p->norder; i++) {
    const kd_node *n = kd_graph_node(g, p->order[i]);
    for (int s = 0; s < n->nsrc; s++) {
      kd_mem_value *src = &p->values[n->src[s]], *base = &p->values[src->base];
      if (src->last < (int32_t)i) src->last = (int32_t)i;
      if (base->last < (int32_t)i) base->last = (int32_t)i;
    }
  }
  for (size_t i = 0; i < kd_graph_noutputs(g); i++) {
    kd_mem_value *v = &p->values[kd_graph_output(g, i)];
    v->last = (int32_t)p->norder;
    p->values[v->base].last = (int32_t)p->norder;
  }
}

static bool lives_overlap(const kd_mem_value *a, const kd_mem_value *b) {
  return a->first <= b->last && b->first <= a->last;
}

/* A value waiting for placement, and a placed one seen from another. */
typedef struct mp_item {
  int64_t size;
  int32_t first;
  kd_node_id id;
} mp_item;
typedef struct mp_slot {
  int64_t offset, size;
} mp_slot;

/* The order of placement: larger first, then earlier, then by id. */
static int by_size(const void *x, const void *y) {
  const mp_item *a = x, *b = y;
  if (a->size != b->size) return a->size > b->size ? -1 : 1;
  if (a->first != b->first) return a->first < b->first ? -1 : 1;
  return a->id < b->id ? -1 : a->id > b->id;
}
static int by_offset(const void *x, const void *y) {
  const mp_slot *a = x, *b = y;
  return a->offset < b->offset ? -1 : a->offset > b->offset;
}

/* Greedy by size (TFLite's GreedyBySizeAllocator): each value, largest
   first, goes into the smallest gap between the placed values whose lives
   overlap its own, or above the highest of them. O(n^2 log n) for n arena
   values: a few thousand in a model's step. */
static kd_status place(kd_memplan *p) {
  mp_item *todo = malloc((p->norder + 1) * sizeof *todo);
  mp_slot *near = malloc((p->norder + 1) * sizeof *near);
  if (!todo || !near) {
    free(todo);
    free(near);
    return KD_ERR_NOMEM;
  }
  size_t ntodo = 0;
  for (size_t i = 0; i < p->norder; i++) {
    const kd_mem_value *v = &p->values[p->order[i]];
    if (v->kind == KD_MEM_ARENA) todo[ntodo++] = (mp_item){align_up(v->bytes), v->first, p->order[i]};
  }
  qsort(todo, ntodo, sizeof *todo, by_size);
  for (size_t t = 0; t < ntodo; t++) {
    kd_mem_value *v = &p->values[todo[t].id];
    size_t nnear = 0;
    for (size_t u = 0; u < t; u++) {
      const kd_mem_value *w = &p->values[todo[u].id];
      if (lives_overlap(v, w)) near[nnear++] = (mp_slot){w->offset, todo[u].size};
    }
    qsort(near, nnear, sizeof *near, by_offset);
    int64_t size = todo[t].size, top = 0, best = -1, best_gap = INT64_MAX;
    for (size_t u = 0; u < nnear; u++) {
      int64_t gap = near[u].offset - top;
      if (gap >= size && gap < best_gap) best = top, best_gap = gap;
      if (near[u].offset + near[u].size > top) top = near[u].offset + near[u].size;
    }
    v->offset = best >= 0 ? best : top;
    if (v->offset + size > p->arena_bytes) p->arena_bytes = v->offset + size;
  }
  free(todo);
  free(near);
  return KD_OK;
}

/* The most aligned arena bytes live at one step: a sweep over the steps
   with +size at first and -size after last. */
static kd_status peak_live(kd_memplan *p) {
  int64_t *delta = calloc(p->norder + 2, sizeof *delta);
  if (!delta) return KD_ERR_NOMEM;
  for (size_t i = 0; i < p->norder; i++) {
    const kd_mem_value *v = &p->values[p->order[i]];
    if (v->kind != KD_MEM_ARENA) continue;
    delta[v->first] += align_up(v->bytes);
    delta[v->last + 1] -= align_up(v->bytes);
  }
  int64_t live = 0;
  for (size_t i = 0; i <= p->norder; i++) {
    live += delta[i];
    if (live > p->peak_bytes) p->peak_bytes = live;
  }
  free(delta);
  return KD_OK;
}

/* The order: the caller's, checked to be a topological order of distinct
   nodes, or the needed nodes in id order. */
static kd_status schedule(const kd_graph *g, const kd_memplan_opts *opts, kd_memplan *out,
                          char *err, size_t errlen) {
  size_t n = kd_graph_size(g);
  bool *mark = calloc(n + 1, sizeof *mark);
  if (!mark) return KD_ERR_NOMEM;
  if (!opts || !opts->order) {
    mark_needed(g, mark);
    for (size_t i = 0; i < n; i++)
      if (mark[i]) out->order[out->norder++] = (kd_node_id)i;
    free(mark);
    return KD_OK;
  }
  kd_status st = opts->norder <= n ? KD_OK : KD_ERR_INVALID;
  for (size_t i = 0; i < opts->norder && st == KD_OK; i++) {
    kd_node_id id = opts->order[i];
    const kd_node *node = kd_graph_node(g, id);
    if (!node || mark[id]) {
      st = KD_ERR_INVALID;
      break;
    }
    for (int s = 0; s < node->nsrc; s++)
      if (!mark[node->src[s]]) st = KD_ERR_INVALID;
    mark[id] = true;
    out->order[out->norder++] = id;
  }
  if (st != KD_OK) set_err(err, errlen, "memplan: %s", "the order is not a schedule of the graph");
  free(mark);
  return st;
}

kd_status kd_memplan_build(const kd_graph *g, const kd_sym_binding *bind, size_t nbind,
                           kd_memplan *out, char *err, size_t errlen) {
  return kd_memplan_build_opts(g, bind, nbind, NULL, out, err, errlen);
}

kd_status kd_memplan_build_opts(const kd_graph *g, const kd_sym_binding *bind, size_t nbind,
                                const kd_memplan_opts *opts, kd_memplan *out, char *err,
                                size_t errlen) {
  memset(out, 0, sizeof *out);
  size_t n = kd_graph_size(g);
  out->nnodes = n;
  out->order = malloc((n + 1) * sizeof *out->order);
  out->values = calloc(n + 1, sizeof *out->values);
  if (!out->order || !out->values) {
    kd_memplan_free(out);
    set_err(err, errlen, "memplan: %s", "out of memory");
    return KD_ERR_NOMEM;
  }
  for (size_t i = 0; i < n; i++)
    out->values[i] = (kd_mem_value){.kind = KD_MEM_NONE, .first = -1, .last = -1,
                                    .base = (kd_node_id)i, .offset = -1};
  kd_status st = schedule(g, opts, out, err, errlen);
  const bool *view = opts ? opts->view : NULL, *external = opts ? opts->external : NULL;
  for (size_t i = 0; i < out->norder && st == KD_OK; i++) {
    kd_node_id id = out->order[i];
    const kd_node *node = kd_graph_node(g, id);
    kd_mem_value *v = &out->values[id];
    v->bytes = node_bytes(g, node, bind, nbind, err, errlen);
    if (v->bytes < 0) {
      st = KD_ERR_INVALID;
      break;
    }
    v->first = v->last = (int32_t)i;
    if (node->op == KD_IR_INPUT) {
      v->kind = KD_MEM_EXTERNAL;
      v->first = 0;
      out->external_bytes += v->bytes;
    } else if (view ? view[id] && node->nsrc > 0 : is_view(node->op)) {
      v->kind = KD_MEM_VIEW;
      v->base = out->values[node->src[0]].base;
    } else if (external && external[id]) {
      v->kind = KD_MEM_EXTERNAL;
      out->external_bytes += v->bytes;
    } else if (node->op != KD_IR_CONST) {
      v->kind = KD_MEM_ARENA;
      out->value_bytes += align_up(v->bytes);
    }
  }
  if (st == KD_OK) {
    live_ranges(g, out);
    for (size_t i = 0; i < out->norder; i++) { /* inputs live throughout */
      kd_mem_value *v = &out->values[out->order[i]];
      if (v->kind == KD_MEM_EXTERNAL) v->last = (int32_t)out->norder;
    }
    st = place(out);
  }
  if (st == KD_OK) st = peak_live(out);
  if (st != KD_OK) {
    if (st == KD_ERR_NOMEM) set_err(err, errlen, "memplan: %s", "out of memory");
    kd_memplan_free(out);
  }
  return st;
}

void kd_memplan_free(kd_memplan *p) {
  free(p->order);
  free(p->values);
  memset(p, 0, sizeof *p);
}

void kd_memplan_print(const kd_graph *g, const kd_memplan *p, FILE *out) {
  fprintf(out,
          "memplan: %zu steps, arena %lld bytes, values %lld bytes (%.2fx), peak live %lld bytes,"
          " external %lld bytes\n",
          p->norder, (long long)p->arena_bytes, (long long)p->value_bytes,
          p->arena_bytes ? (double)p->value_bytes / (double)p->arena_bytes : 0.0,
          (long long)p->peak_bytes, (long long)p->external_bytes);
  for (size_t i = 0; i < p->norder; i++) {
    kd_node_id id = p->order[i];
    const kd_node *n = kd_graph_node(g, id);
    const kd_mem_value *v = &p->values[id];
    fprintf(out, "  [%zu] %%%d %s", i, (int)id, kd_opcode_name(n->op));
    if (n->op == KD_IR_INPUT) fprintf(out, " \"%s\"", n->name);
    switch (v->kind) {
    case KD_MEM_NONE: fputs(": none\n", out); break;
    case KD_MEM_EXTERNAL: fprintf(out, ": external %lld\n", (long long)v->bytes); break;
    case KD_MEM_VIEW: fprintf(out, ": view of %%%d\n", (int)v->base); break;
    case KD_MEM_ARENA:
      fprintf(out, ": arena %lld + %lld, live %d..%d\n", (long long)v->offset,
              (long long)v->bytes, (int)v->first, (int)v->last);
      break;
    }
  }
}
