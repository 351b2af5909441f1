/* The named pass pipeline after lowering (see passes.h). */
#include <stdio.h>
#include <string.h>

#include "passes.h"
#include "rewrite.h"

/* A node-for-node copy (no merging): the "lower" stage. */
static kd_node_id kd_copy_rule(kd_rw *rw, kd_node *proto, void *ctx) {
  return kd_clone(rw->g, proto, proto->src);
}

static const kd_pass kd_pipeline_passes[] = {
  {"canonicalize", "softmax -> exp(x - lse(x)), safe logs, MULZ for p * log(...)",
   kd_pass_canonicalize},
  {"autodiff", "reverse mode: output grad = d loss / d student", kd_pass_autodiff},
  {"simplify", "algebra: constants, sum(softmax) = 1, row scalars out of sums", kd_pass_simplify},
  {"cse", "merge equal nodes", kd_pass_cse},
  {"dce", "drop nodes no output needs", kd_pass_dce},
};

const kd_pass *kd_pipeline(size_t *n) {
  *n = sizeof kd_pipeline_passes / sizeof kd_pipeline_passes[0];
  return kd_pipeline_passes;
}

const kd_pass *kd_pipeline_find(const char *name) {
  size_t n;
  const kd_pass *p = kd_pipeline(&n);
  for (size_t i = 0; i < n; i++)
    if (!strcmp(p[i].name, name)) return &p[i];
  return NULL;
}

kd_status kd_pipeline_run(const kd_graph *lowered, const char *last, kd_graph **out, char *err,
                          size_t errlen) {
  *out = NULL;
  if (last && strcmp(last, "lower") && !kd_pipeline_find(last)) {
    if (err && errlen) snprintf(err, errlen, "no pass named '%s'", last);
    return KD_ERR_INVALID;
  }
  /* "lower" still copies the graph, so the caller always owns *out. */
  if (last && !strcmp(last, "lower"))
    return kd_rw_run(lowered, kd_copy_rule, NULL, "lower", out, err, errlen);
  size_t n;
  const kd_pass *p = kd_pipeline(&n);
  const kd_graph *cur = lowered;
  kd_graph *owned = NULL;
  for (size_t i = 0; i < n; i++) {
    kd_graph *next = NULL;
    kd_status st = p[i].run(cur, &next, err, errlen);
    kd_graph_free(owned);
    if (st != KD_OK) return st;
    cur = owned = next;
    if (last && !strcmp(last, p[i].name)) break;
  }
  *out = owned;
  return KD_OK;
}
