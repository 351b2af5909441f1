/* The memory planner (passes/memplan.h): hand-made graphs whose optimal
 * plans are known, the plan's invariants on random graphs (checked here from
 * the graph, not from the planner's own bookkeeping), and a tiny GPT's
 * forward and backward with its arena printed next to the sum of its
 * values. */
#include <string.h>

#include "layers.h"
#include "memplan.h"
#include "passes.h"
#include "testutil.h"

/* f32[n]: 4n bytes; n = 16 is one 64-byte aligned block. */
static kd_node_id vec(kd_graph *g, const char *name, int64_t n) {
  kd_dim s[1] = {n};
  return kd_input(g, name, KD_F32, 1, s);
}

static int64_t off(const kd_memplan *p, kd_node_id id) { return p->values[id].offset; }

static kd_memplan plan(const kd_graph *g, const kd_sym_binding *b, size_t nb) {
  kd_memplan p;
  char err[256] = "";
  TU_CHECK(kd_graph_error(g) == NULL, "graph: %s", kd_graph_error(g));
  TU_CHECK(kd_memplan_build(g, b, nb, &p, err, sizeof err) == KD_OK, "memplan: %s", err);
  return p;
}

/* A chain x -> a -> b -> c -> d of 64-byte values: two are live at a time,
   so the optimum is 128 bytes, with c over a and d over b. */
static void test_chain(void) {
  kd_graph *g = kd_graph_new();
  kd_node_id x = vec(g, "x", 16), a = kd_unary(g, KD_IR_EXP, x), b = kd_unary(g, KD_IR_EXP, a),
             c = kd_unary(g, KD_IR_EXP, b), d = kd_unary(g, KD_IR_EXP, c);
  kd_graph_add_output(g, "d", d);
  kd_memplan p = plan(g, NULL, 0);
  TU_CHECK(p.arena_bytes == 128 && p.peak_bytes == 128, "chain: arena %lld, peak %lld",
           (long long)p.arena_bytes, (long long)p.peak_bytes);
  TU_CHECK(p.value_bytes == 256 && p.external_bytes == 64, "chain: values %lld, external %lld",
           (long long)p.value_bytes, (long long)p.external_bytes);
  TU_CHECK(off(&p, a) == off(&p, c) && off(&p, b) == off(&p, d) && off(&p, a) != off(&p, b),
           "chain: offsets %lld %lld %lld %lld", (long long)off(&p, a), (long long)off(&p, b),
           (long long)off(&p, c), (long long)off(&p, d));
  TU_CHECK(p.values[a].first == 1 && p.values[a].last == 2 && p.values[d].last == 5,
           "chain: a lives %d..%d, d to %d", p.values[a].first, p.values[a].last,
           p.values[d].last);
  TU_CHECK(p.values[x].kind == KD_MEM_EXTERNAL && p.values[x].last == 5, "chain: x");
  kd_memplan_free(&p);
  kd_graph_free(g);
}

/* Two sizes: a (256) is read with s (64) by t (256), then u (256). Peak at
   t's step: a + s + t = 576; u reuses a's bytes. */
static void test_sizes(void) {
  kd_graph *g = kd_graph_new();
  kd_node_id x = vec(g, "x", 64), a = kd_unary(g, KD_IR_EXP, x), s = kd_reduce(g, KD_IR_SUM, a, 0),
             t = kd_binary(g, KD_IR_MUL, a, s), u = kd_unary(g, KD_IR_EXP, t);
  kd_graph_add_output(g, "u", u);
  kd_memplan p = plan(g, NULL, 0);
  TU_CHECK(p.arena_bytes == 576 && p.peak_bytes == 576, "sizes: arena %lld, peak %lld",
           (long long)p.arena_bytes, (long long)p.peak_bytes);
  TU_CHECK(off(&p, u) == off(&p, a), "sizes: u at %lld, a at %lld", (long long)off(&p, u),
           (long long)off(&p, a));
  kd_memplan_free(&p);
  kd_graph_free(g);
}

/* Views: a reshape takes no memory and keeps its base alive while read, so
   a (read through v at the last step) may not share bytes with b. */
static void test_views(void) {
  kd_graph *g = kd_graph_new();
  kd_dim s2[2] = {4, 16}, s1[1] = {64};
  kd_node_id x = kd_input(g, "x", KD_F32, 2, s2), a = kd_unary(g, KD_IR_EXP, x),
             v = kd_reshape(g, a, 1, s1), b = kd_unary(g, KD_IR_EXP, x),
             rb = kd_reshape(g, b, 1, s1), c = kd_binary(g, KD_IR_ADD, v, rb);
  kd_graph_add_output(g, "c", c);
  kd_memplan p = plan(g, NULL, 0);
  TU_CHECK(p.values[v].kind == KD_MEM_VIEW && p.values[v].base == a && p.values[rb].base == b,
           "views: kinds");
  TU_CHECK(p.values[a].last == 5 && p.values[b].last == 5, "views: a lives to %d",
           p.values[a].last);
  TU_CHECK(p.arena_bytes == 768 && p.value_bytes == 768, "views: arena %lld, values %lld",
           (long long)p.arena_bytes, (long long)p.value_bytes);
  kd_memplan_free(&p);
  kd_graph_free(g);
}

/* Outputs live to the end; constants, dead nodes and unbound symbols. */
static void test_outputs_and_errors(void) {
  kd_graph *g = kd_graph_new();
  kd_dim bt[2] = {kd_graph_sym(g, "B"), kd_graph_sym(g, "T")};
  kd_node_id x = kd_input(g, "x", KD_F32, 2, bt), a = kd_unary(g, KD_IR_EXP, x),
             dead = kd_unary(g, KD_IR_LOG, x), k = kd_const(g, 2, KD_F32),
             b = kd_binary(g, KD_IR_MUL, a, k), c = kd_unary(g, KD_IR_EXP, b);
  kd_graph_add_output(g, "a", a);
  kd_graph_add_output(g, "c", c);
  kd_sym_binding bind[2] = {{"B", 3}, {"T", 5}};
  kd_memplan p = plan(g, bind, 2);
  TU_CHECK(p.values[a].bytes == 60 && p.values[x].bytes == 60, "bind: %lld bytes",
           (long long)p.values[a].bytes);
  TU_CHECK(p.values[dead].kind == KD_MEM_NONE && p.values[dead].first == -1, "dead node");
  TU_CHECK(p.values[k].kind == KD_MEM_NONE && p.values[k].first >= 0, "const");
  TU_CHECK(p.norder == 5 && p.values[a].last == 5, "outputs: %zu steps, a to %d", p.norder,
           p.values[a].last);
  TU_CHECK(p.arena_bytes == 192, "outputs: arena %lld", (long long)p.arena_bytes);
  char buf[4096];
  FILE *f = fmemopen(buf, sizeof buf, "w");
  kd_memplan_print(g, &p, f);
  fclose(f);
  TU_CHECK(strstr(buf, "memplan: 5 steps, arena 192 bytes, values 192 bytes (1.00x), peak live "
                       "192 bytes, external 60 bytes\n") != NULL &&
               strstr(buf, "  [0] %0 input \"x\": external 60\n") != NULL &&
               strstr(buf, "  [2] %3 const: none\n") != NULL &&
               strstr(buf, "  [1] %1 exp: arena ") != NULL && strstr(buf, "live 1..5\n"),
           "print:\n%s", buf);
  kd_memplan_free(&p);

  char err[128] = "";
  TU_CHECK(kd_memplan_build(g, bind, 1, &p, err, sizeof err) == KD_ERR_INVALID &&
               strstr(err, "symbol T has no size") != NULL,
           "unbound: %s", err);
  TU_CHECK(p.order == NULL && p.values == NULL, "unbound: plan left empty");
  kd_memplan_free(&p);
  kd_graph_free(g);
}

/* The plan's invariants, from the graph: every value a step reads (through
   its views) is live at that step; outputs live to the end; arena values
   live at the same step never share a byte; all lie inside the arena,
   aligned; the arena is at least the peak and at most the sum. */
static int check_plan(const kd_graph *g, const kd_memplan *p, const char *what) {
  int before = tu_failures;
  size_t n = kd_graph_size(g);
  int32_t *pos = malloc(n * sizeof *pos);
  for (size_t i = 0; i < n; i++) pos[i] = -1;
  for (size_t i = 0; i < p->norder; i++) pos[p->order[i]] = (int32_t)i;
  for (size_t i = 0; i + 1 < p->norder; i++)
    TU_CHECK(p->order[i] < p->order[i + 1], "%s: schedule not in id order", what);
  for (size_t i = 0; i < p->norder; i++) {
    const kd_node *nd = kd_graph_node(g, p->order[i]);
    for (int s = 0; s < nd->nsrc; s++) {
      kd_node_id base = nd->src[s];
      for (const kd_node *b = kd_graph_node(g, base); b->op == KD_IR_RESHAPE ||
                                                      b->op == KD_IR_EXPAND ||
                                                      b->op == KD_IR_STOPGRAD;
           b = kd_graph_node(g, base))
        base = b->src[0];
      const kd_mem_value *v = &p->values[base];
      TU_CHECK(pos[base] >= 0 && pos[base] < (int32_t)i && v->first <= (int32_t)i &&
                   v->last >= (int32_t)i,
               "%s: %%%d reads %%%d (base %%%d, live %d..%d) at step %zu", what,
               p->order[i], nd->src[s], base, v->first, v->last, i);
    }
  }
  for (size_t o = 0; o < kd_graph_noutputs(g); o++) {
    kd_node_id id = kd_graph_output(g, o);
    TU_CHECK(p->values[p->values[id].base].last == (int32_t)p->norder, "%s: output %%%d", what,
             id);
  }
  for (size_t i = 0; i < p->norder; i++) {
    const kd_mem_value *a = &p->values[p->order[i]];
    if (a->kind != KD_MEM_ARENA) continue;
    TU_CHECK(a->offset >= 0 && a->offset % KD_MEMPLAN_ALIGN == 0 &&
                 a->offset + a->bytes <= p->arena_bytes,
             "%s: %%%d at %lld + %lld", what, p->order[i], (long long)a->offset,
             (long long)a->bytes);
    for (size_t j = i + 1; j < p->norder; j++) {
      const kd_mem_value *b = &p->values[p->order[j]];
      if (b->kind != KD_MEM_ARENA || a->last < b->first || b->last < a->first) continue;
      TU_CHECK(a->offset + a->bytes <= b->offset || b->offset + b->bytes <= a->offset,
               "%s: %%%d and %%%d overlap", what, p->order[i], p->order[j]);
    }
  }
  TU_CHECK(p->peak_bytes <= p->arena_bytes && p->arena_bytes <= p->value_bytes,
           "%s: peak %lld, arena %lld, values %lld", what, (long long)p->peak_bytes,
           (long long)p->arena_bytes, (long long)p->value_bytes);
  free(pos);
  return tu_failures == before;
}

/* Random graphs over [r, 16] values (r from the odd sizes): unary, binary
   on equal shapes or against a row sum, sums, expands and reshapes. */
static void test_random(void) {
  static const int64_t rows[] = {1, 3, 17, 64, 130};
  unsigned long long s = 12345;
  double arena = 0, peak = 0;
  for (int trial = 0; trial < 40; trial++) {
    kd_graph *g = kd_graph_new();
    kd_node_id ids[120];
    int n = 0;
    for (int i = 0; i < 3; i++) {
      kd_dim sh[2] = {rows[(int)tu_uniform(&s, 0, 5)], 16};
      char name[8];
      snprintf(name, sizeof name, "x%d", i);
      ids[n++] = kd_input(g, name, KD_F32, 2, sh);
    }
    while (n < 120) {
      kd_node_id a = ids[(int)tu_uniform(&s, 0, n)];
      const kd_node *an = kd_graph_node(g, a);
      kd_dim sh[2] = {an->shape[0], an->shape[1]};
      kd_node_id r = KD_NONE;
      switch ((int)tu_uniform(&s, 0, 5)) {
      case 0: r = kd_unary(g, KD_IR_EXP, a); break;
      case 1: r = kd_reduce(g, KD_IR_SUM, a, 0); break;
      case 2: { /* a partner of the same shape, or a [1, 16] that broadcasts */
        for (int k = n - 1; k >= 0 && r == KD_NONE; k--) {
          const kd_node *b = kd_graph_node(g, ids[k]);
          if (ids[k] != a && b->rank == 2 && b->shape[1] == sh[1] &&
              (b->shape[0] == sh[0] || b->shape[0] == 1) && tu_uniform(&s, 0, 1) < 0.3)
            r = kd_binary(g, KD_IR_ADD, a, ids[k]);
        }
        break;
      }
      case 3: {
        kd_dim to[2] = {rows[(int)tu_uniform(&s, 0, 5)], sh[1]};
        if (sh[0] == 1) r = kd_expand(g, a, 2, to);
        break;
      }
      default: {
        kd_dim to[2] = {sh[1], sh[0]};
        r = kd_reshape(g, a, 2, to);
      }
      }
      if (r != KD_NONE) ids[n++] = r;
    }
    for (int o = 0; o < 3; o++) {
      char name[8];
      snprintf(name, sizeof name, "y%d", o);
      kd_graph_add_output(g, name, ids[(int)tu_uniform(&s, 60, 120)]);
    }
    kd_memplan p = plan(g, NULL, 0);
    if (!check_plan(g, &p, "random")) {
      kd_memplan_print(g, &p, stderr);
      trial = 40;
    }
    arena += (double)p.arena_bytes, peak += (double)p.peak_bytes;
    kd_memplan_free(&p);
    kd_graph_free(g);
  }
  printf("random graphs: arena / peak live = %.3f over 40 graphs\n", arena / peak);
}

/* A tiny GPT (width 16, 2 heads, vocabulary 16, one block) with its loss,
   then forward and backward by kd_autodiff_many, planned at B = 4, T = 8. */
static void test_tiny_gpt(void) {
  kd_graph *g = kd_graph_new();
  kd_layers L;
  kd_layers_init(&L, g);
  const int64_t V = 16, D = 16;
  kd_dim bt[2] = {kd_graph_sym(g, "B"), kd_graph_sym(g, "T")};
  kd_dim btv[3] = {bt[0], bt[1], V};
  kd_node_id tokens = kd_input(g, "tokens", KD_I64, 2, bt);
  kd_node_id targets = kd_input(g, "targets", KD_F32, 3, btv); /* one-hot */
  kd_node_id x = kd_layer_embedding(&L, "embed", tokens, V, D);
  x = kd_layer_residual(&L, x, kd_layer_attention(&L, "blocks.0.attn",
                                                  kd_layer_layernorm(&L, "blocks.0.ln_1", x), 2));
  x = kd_layer_residual(&L, x, kd_layer_mlp(&L, "blocks.0.mlp",
                                            kd_layer_layernorm(&L, "blocks.0.ln_2", x), 4 * D));
  kd_node_id logits = kd_layer_linear(&L, "linear", kd_layer_layernorm(&L, "ln", x), V, true);
  kd_node_id nll = kd_unary(g, KD_IR_NEG, kd_binary(g, KD_IR_MUL, targets,
                                                     kd_row(g, KD_IR_LOG_SOFTMAX, logits, 2)));
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, nll, KD_AXIS_ALL));
  TU_CHECK(kd_layers_error(&L) == NULL, "tiny GPT: %s", kd_layers_error(&L));

  const char **wrt = malloc(L.nparams * sizeof *wrt), **gn = malloc(L.nparams * sizeof *gn);
  char(*names)[96] = malloc(L.nparams * sizeof *names);
  for (size_t i = 0; i < L.nparams; i++) {
    wrt[i] = L.params[i].name;
    snprintf(names[i], sizeof names[i], "grad.%s", L.params[i].name);
    gn[i] = names[i];
  }
  kd_graph *d = NULL;
  char err[256] = "";
  TU_CHECK(kd_autodiff_many(g, "loss", L.nparams, wrt, gn, &d, err, sizeof err) == KD_OK,
           "autodiff: %s", err);
  kd_sym_binding bind[2] = {{"B", 4}, {"T", 8}};
  if (d) {
    kd_memplan fw = plan(g, bind, 2), fb = plan(d, bind, 2);
    check_plan(g, &fw, "tiny GPT forward");
    check_plan(d, &fb, "tiny GPT forward + backward");
    /* the backward frees activations after their last use: the arena must
       be well under the sum of the values (no reuse at all would equal it) */
    TU_CHECK(fb.arena_bytes < fb.value_bytes, "tiny GPT: no reuse");
    const kd_memplan *ps[2] = {&fw, &fb};
    const char *what[2] = {"forward", "forward + backward"};
    for (int i = 0; i < 2; i++)
      printf("tiny GPT %s (B 4, T 8): %zu steps, arena %lld bytes (peak live %lld), sum of "
             "values %lld bytes: %.2fx smaller; parameters and batch %lld bytes\n",
             what[i], ps[i]->norder, (long long)ps[i]->arena_bytes,
             (long long)ps[i]->peak_bytes, (long long)ps[i]->value_bytes,
             (double)ps[i]->value_bytes / (double)ps[i]->arena_bytes,
             (long long)ps[i]->external_bytes);
    kd_memplan_free(&fw);
    kd_memplan_free(&fb);
    kd_graph_free(d);
  }
  free(wrt), free(gn), free(names);
  kd_layers_free(&L);
  kd_graph_free(g);
}

int main(void) {
  test_chain();
  test_sizes();
  test_views();
  test_outputs_and_errors();
  test_random();
  test_tiny_gpt();
  return tu_done("test_memplan");
}
