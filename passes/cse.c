/* Common-subexpression elimination: the graph copied through the
 * hash-consing emitter (rewrite.c), which merges equal nodes. */
#include "passes.h"
#include "rewrite.h"

static kd_node_id kd_cse_rule(kd_rw *rw, kd_node *proto, void *ctx) {
  return kd_rw_emit(rw, proto);
}

kd_status kd_pass_cse(const kd_graph *in, kd_graph **out, char *err, size_t errlen) {
  return kd_rw_run(in, kd_cse_rule, NULL, "cse", out, err, errlen);
}
