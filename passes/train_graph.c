/* The training and forward graphs of a model (train_graph.h). */
#include "train_graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passes.h"
#include "rewrite.h"

enum { KD_TG_NAME_MAX = 128 }; /* a gradient's name, NUL included: runtime/step.h's slot names */

static kd_node_id kd_tg_copy_rule(kd_rw *rw, kd_node *proto, void *ctx) {
  return kd_rw_emit(rw, proto);
}

/* Copies `in` keeping only the outputs for which keep(name) holds; the
   nodes only the others read stay (dce drops them). */
static kd_status kd_tg_keep(const kd_graph *in, bool (*keep)(const char *), kd_graph **out,
                            char *err, size_t errlen) {
  kd_rw rw;
  char msg[200] = "out of memory";
  *out = NULL;
  kd_node_id *map = malloc((kd_graph_size(in) + 1) * sizeof *map);
  kd_status st = map ? kd_rw_begin(&rw, in) : KD_ERR_NOMEM;
  if (st != KD_OK) {
    free(map);
    snprintf(err, errlen, "train graph: %s", msg);
    return st;
  }
  st = kd_rw_copy(&rw, in, map, kd_tg_copy_rule, NULL);
  for (size_t i = 0; i < kd_graph_noutputs(in) && st == KD_OK; i++)
    if (keep(kd_graph_output_name(in, i)))
      st = kd_graph_add_output(rw.g, kd_graph_output_name(in, i), map[kd_graph_output(in, i)]);
  if (st == KD_OK) st = kd_graph_verify(rw.g, msg, sizeof msg);
  else if (kd_graph_error(rw.g)) snprintf(msg, sizeof msg, "%s", kd_graph_error(rw.g));
  free(map);
  if (st != KD_OK) {
    snprintf(err, errlen, "train graph: %s", msg);
    kd_rw_abort(&rw);
    return st;
  }
  *out = rw.g;
  rw.g = NULL;
  kd_rw_abort(&rw);
  return KD_OK;
}

static bool kd_tg_not_loss(const char *name) { return strcmp(name, "loss") != 0; }

/* simplify, cse, dce; *g is replaced (and freed). */
static kd_status kd_tg_clean(kd_graph **g, char *err, size_t errlen) {
  static const kd_pass_fn passes[3] = {kd_pass_simplify, kd_pass_cse, kd_pass_dce};
  for (int i = 0; i < 3; i++) {
    kd_graph *next = NULL;
    kd_status st = passes[i](*g, &next, err, errlen);
    kd_graph_free(*g);
    *g = next;
    if (st != KD_OK) return st;
  }
  return KD_OK;
}

/* The model's graph plus "logits.grad" and the output "loss" = sum(logits *
   stop_gradient(logits.grad)). */
static kd_status kd_tg_loss(const kd_model *m, kd_graph **out, char *err, size_t errlen) {
  kd_rw rw;
  const kd_graph *in = m->g;
  *out = NULL;
  kd_node_id logits = kd_graph_find_output(in, "logits");
  if (logits == KD_NONE) {
    snprintf(err, errlen, "train graph: the model has no output \"logits\"");
    return KD_ERR_INVALID;
  }
  kd_node_id *map = malloc((kd_graph_size(in) + 1) * sizeof *map);
  kd_status st = map ? kd_rw_begin(&rw, in) : KD_ERR_NOMEM;
  if (st != KD_OK) {
    free(map);
    snprintf(err, errlen, "train graph: out of memory");
    return st;
  }
  st = kd_rw_copy(&rw, in, map, kd_tg_copy_rule, NULL);
  if (st == KD_OK) {
    kd_node g = *kd_graph_node(in, logits); /* the gradient has the logits' shape */
    g.op = KD_IR_INPUT;
    g.nsrc = 0;
    g.dtype = KD_F32;
    g.name = KD_LOGITS_GRAD;
    kd_node_id lg = kd_rw_emit(&rw, &g);
    kd_node_id prod =
        kd_rw_binary(&rw, KD_IR_MUL, map[logits], kd_rw_unary(&rw, KD_IR_STOPGRAD, lg));
    kd_node_id loss = kd_rw_reduce(&rw, KD_IR_SUM, prod, KD_AXIS_ALL);
    st = loss == KD_NONE ? KD_ERR_INVALID : kd_graph_add_output(rw.g, "loss", loss);
  }
  if (st != KD_OK) {
    snprintf(err, errlen, "train graph: %s",
             kd_graph_error(rw.g) ? kd_graph_error(rw.g) : "out of memory");
    kd_rw_abort(&rw);
    free(map);
    return st;
  }
  st = kd_rw_finish(&rw, in, map, "train graph", out, err, errlen);
  free(map);
  return st;
}

kd_status kd_train_graph(const kd_model *m, kd_graph **out, char *err, size_t errlen) {
  kd_graph *lg = NULL, *d = NULL;
  size_t n = m->layers.nparams;
  *out = NULL;
  const char **wrt = malloc((n + 1) * sizeof *wrt), **gn = malloc((n + 1) * sizeof *gn);
  char *names = malloc((n + 1) * KD_TG_NAME_MAX);
  kd_status st = wrt && gn && names ? KD_OK : KD_ERR_NOMEM;
  if (st != KD_OK) snprintf(err, errlen, "train graph: out of memory");
  for (size_t i = 0; i < n && st == KD_OK; i++) {
    wrt[i] = m->layers.params[i].name;
    gn[i] = names + i * KD_TG_NAME_MAX;
    if (snprintf(names + i * KD_TG_NAME_MAX, KD_TG_NAME_MAX, "grad.%s", wrt[i]) >=
        KD_TG_NAME_MAX) {
      snprintf(err, errlen, "train graph: the name grad.%s is too long", wrt[i]);
      st = KD_ERR_INVALID;
    }
  }
  if (st == KD_OK) st = kd_tg_loss(m, &lg, err, errlen);
  if (st == KD_OK) st = kd_autodiff_many(lg, "loss", n, wrt, gn, &d, err, errlen);
  if (st == KD_OK) st = kd_tg_keep(d, kd_tg_not_loss, out, err, errlen);
  if (st == KD_OK) st = kd_tg_clean(out, err, errlen);
  kd_graph_free(lg);
  kd_graph_free(d);
  free(wrt);
  free(gn);
  free(names);
  return st;
}

kd_status kd_forward_graph(const kd_model *m, kd_graph **out, char *err, size_t errlen) {
  kd_status st = kd_pass_cse(m->g, out, err, errlen); /* a copy to clean */
  if (st == KD_OK) st = kd_tg_clean(out, err, errlen);
  return st;
}
