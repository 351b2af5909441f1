/* Dead-code elimination: keeps the nodes some output depends on, and every
 * input (the graph's interface does not change with its body). */
#include <stdbool.h>
#include <stdlib.h>

#include "passes.h"
#include "rewrite.h"

kd_status kd_pass_dce(const kd_graph *in, kd_graph **out, char *err, size_t errlen) {
  kd_rw rw;
  size_t n = kd_graph_size(in);
  bool *live = calloc(n + 1, sizeof *live);
  kd_node_id *map = malloc((n + 1) * sizeof *map);
  kd_status st = live && map ? kd_rw_begin(&rw, in) : KD_ERR_NOMEM;
  if (st != KD_OK) {
    free(live);
    free(map);
    return st;
  }
  for (size_t i = 0; i < kd_graph_noutputs(in); i++) live[kd_graph_output(in, i)] = true;
  for (size_t i = n; i-- > 0;) { /* sources precede their users */
    const kd_node *nd = kd_graph_node(in, (kd_node_id)i);
    if (nd->op == KD_IR_INPUT) live[i] = true;
    if (live[i])
      for (int k = 0; k < nd->nsrc; k++) live[nd->src[k]] = true;
  }
  for (size_t i = 0; i < n; i++) {
    map[i] = KD_NONE;
    if (!live[i]) continue;
    kd_node c = *kd_graph_node(in, (kd_node_id)i);
    for (int k = 0; k < c.nsrc; k++) c.src[k] = map[c.src[k]];
    map[i] = kd_rw_emit(&rw, &c);
  }
  st = kd_rw_finish(&rw, in, map, "dce", out, err, errlen);
  free(live);
  free(map);
  return st;
}
