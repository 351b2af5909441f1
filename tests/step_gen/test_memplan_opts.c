/* kd_memplan_build_opts (passes/memplan.h), as the step generator uses it:
 * the caller's order, a PERMUTE planned as a view (its base then lives as
 * long as the view is read), an output in the caller's memory, and an
 * order that is not a schedule. Values are f32 [4, 4]: 64 bytes, one
 * aligned block each, so the arena sizes below are exact. */
#include "memplan.h"
#include "testutil.h"

int main(void) {
  kd_graph *g = kd_graph_new();
  kd_dim s[2] = {4, 4};
  static const int tr[2] = {1, 0};
  kd_node_id x = kd_input(g, "x", KD_F32, 2, s), a = kd_unary(g, KD_IR_EXP, x),
             p = kd_permute(g, a, tr), b = kd_unary(g, KD_IR_LOG, x),
             c = kd_binary(g, KD_IR_ADD, p, b);
  kd_graph_add_output(g, "c", c);
  char err[128] = "";
  kd_memplan plan;

  /* default: p has bytes of its own, a dies at p's step and c reuses it */
  TU_CHECK(kd_memplan_build(g, NULL, 0, &plan, err, sizeof err) == KD_OK, "%s", err);
  TU_CHECK(plan.values[p].kind == KD_MEM_ARENA && plan.values[a].last == 2 &&
               plan.arena_bytes == 192,
           "default: p %d, a to %d, arena %lld", (int)plan.values[p].kind, plan.values[a].last,
           (long long)plan.arena_bytes);
  kd_memplan_free(&plan);

  /* b before a; p a view of a; c external: a and b live together, so the
     arena holds both (128 bytes) and c takes none of it */
  kd_node_id order[5] = {x, b, a, p, c};
  bool view[5] = {false}, external[5] = {false};
  view[p] = external[c] = true;
  kd_memplan_opts opts = {order, 5, view, external};
  TU_CHECK(kd_memplan_build_opts(g, NULL, 0, &opts, &plan, err, sizeof err) == KD_OK, "%s", err);
  TU_CHECK(plan.values[b].first == 1 && plan.values[a].first == 2 &&
               plan.values[p].kind == KD_MEM_VIEW && plan.values[p].base == a &&
               plan.values[a].last == 4 && plan.values[c].kind == KD_MEM_EXTERNAL,
           "opts: b at %d, a at %d..%d, p kind %d", plan.values[b].first, plan.values[a].first,
           plan.values[a].last, (int)plan.values[p].kind);
  TU_CHECK(plan.arena_bytes == 128 && plan.values[a].offset != plan.values[b].offset,
           "opts: arena %lld", (long long)plan.arena_bytes);
  kd_memplan_free(&plan);

  /* a reader before its source */
  kd_node_id bad[5] = {x, p, a, b, c};
  opts.order = bad;
  TU_CHECK(kd_memplan_build_opts(g, NULL, 0, &opts, &plan, err, sizeof err) == KD_ERR_INVALID &&
               strstr(err, "not a schedule") && plan.order == NULL,
           "bad order: %s", err);
  kd_memplan_free(&plan);
  kd_graph_free(g);
  return tu_done("test_memplan_opts");
}
