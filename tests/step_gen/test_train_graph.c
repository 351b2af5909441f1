/* The training graph (passes/train_graph.h) of the tiny GPT and of the
 * 2-layer rmsnorm/SwiGLU model, through the reference executor:
 *   - its interface: tokens, the parameters and logits.grad in; logits and
 *     one grad.P per parameter out; no STOPGRAD left, and logits does not
 *     read logits.grad;
 *   - its logits equal the model's and the forward graph's;
 *   - each grad.P equals a direct autodiff (no simplify, cse or dce) of
 *     L = sum(logits * G) for a random G: both are double-precision
 *     evaluations of the same sums in different orders, so they agree to
 *     rounding (1e-15 relative); 1e-9 leaves six orders of magnitude while
 *     a simplification rule that is wrong on model graphs would show as an
 *     O(1) difference;
 *   - each grad.P matches central finite differences of L at GC_SAMPLES
 *     positions (gradcheck.h; tolerance 1e-6 as test_lower_model.c, whose
 *     comment and testutil.h's tu_fd give the error budget). */
#include "gradcheck.h"
#include "models.h"
#include "train_graph.h"

#define SAME_ATOL 1e-10
#define SAME_RTOL 1e-9
#define FD_ATOL 1e-6
#define FD_RTOL 1e-6

/* Whether node id of g depends on the input named `name`. */
static bool depends_on(const kd_graph *g, kd_node_id id, const char *name) {
  kd_node_id x = kd_graph_find_input(g, name);
  bool *dep = calloc(kd_graph_size(g) + 1, sizeof *dep);
  for (size_t i = 0; i < kd_graph_size(g); i++) {
    const kd_node *n = kd_graph_node(g, (kd_node_id)i);
    dep[i] = (kd_node_id)i == x;
    for (int k = 0; k < n->nsrc; k++) dep[i] = dep[i] || dep[n->src[k]];
  }
  bool r = dep[id];
  free(dep);
  return r;
}

static void check_interface(const char *what, const kd_model *m, const kd_graph *tg) {
  size_t np = m->layers.nparams;
  TU_CHECK(kd_graph_noutputs(tg) == np + 1, "%s: %zu outputs, want %zu", what,
           kd_graph_noutputs(tg), np + 1);
  TU_CHECK(kd_graph_find_output(tg, "loss") == KD_NONE, "%s: the loss is an output", what);
  kd_node_id logits = kd_graph_find_output(tg, "logits");
  TU_CHECK(logits != KD_NONE && !depends_on(tg, logits, "logits.grad"),
           "%s: logits read logits.grad", what);
  kd_node_id lg = kd_graph_find_input(tg, "logits.grad");
  const kd_node *lgn = kd_graph_node(tg, lg);
  TU_CHECK(lgn && lgn->dtype == KD_F32 && lgn->rank == 3 &&
               lgn->shape[2] == m->vocab && KD_DIM_IS_SYM(lgn->shape[0]),
           "%s: logits.grad", what);
  TU_CHECK(kd_graph_find_input(tg, "tokens") != KD_NONE, "%s: tokens", what);
  for (size_t i = 0; i < np; i++) {
    char name[160];
    snprintf(name, sizeof name, "grad.%s", m->layers.params[i].name);
    TU_CHECK(kd_graph_find_input(tg, m->layers.params[i].name) != KD_NONE, "%s: input %s", what,
             m->layers.params[i].name);
    TU_CHECK(kd_graph_find_output(tg, name) != KD_NONE &&
                 !strcmp(kd_graph_output_name(tg, i + 1), name),
             "%s: output %zu is not %s", what, i + 1, name);
  }
  for (size_t i = 0; i < kd_graph_size(tg); i++)
    TU_CHECK(kd_graph_node(tg, (kd_node_id)i)->op != KD_IR_STOPGRAD, "%s: a STOPGRAD", what);
}

/* The model's graph plus G = "logits.grad" and loss = sum(logits * G). */
static void add_direct_loss(kd_graph *g) {
  kd_node_id logits = kd_graph_find_output(g, "logits");
  kd_dim btv[3] = {kd_graph_sym(g, "B"), kd_graph_sym(g, "T"), SG_V};
  kd_node_id G = kd_input(g, "logits.grad", KD_F32, 3, btv);
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, logits, G),
                                            KD_AXIS_ALL));
}

static void compare(const char *what, const char *name, const kd_ref_value *got,
                    const kd_ref_value *want, double atol, double rtol) {
  TU_CHECK(got->size == want->size, "%s: %s has %zu elements, want %zu", what, name, got->size,
           want->size);
  int bad = 0;
  for (size_t i = 0; i < got->size && i < want->size && bad < 5; i++)
    if (!tu_close(got->data[i], want->data[i], atol, rtol)) {
      TU_CHECK(0, "%s: %s[%zu] = %.15g, want %.15g", what, name, i, got->data[i], want->data[i]);
      bad++;
    }
}

static void check_model(const kd_program *p, const char *inst) {
  kd_model m;
  if (mt_lower(p, inst, &m) != KD_OK) return;
  char err[256] = "";
  kd_graph *tg = NULL, *fg = NULL;
  TU_CHECK(kd_train_graph(&m, &tg, err, sizeof err) == KD_OK, "%s: %s", inst, err);
  TU_CHECK(kd_forward_graph(&m, &fg, err, sizeof err) == KD_OK, "%s: %s", inst, err);
  if (!tg || !fg) {
    kd_graph_free(tg);
    kd_graph_free(fg);
    kd_model_free(&m);
    return;
  }
  check_interface(inst, &m, tg);
  TU_CHECK(kd_graph_noutputs(fg) == 1 && kd_graph_find_output(fg, "logits") != KD_NONE,
           "%s: forward graph outputs", inst);
  sg_inputs s;
  sg_inputs_make(&m, 0x5eed0f5eedull, &s);
  size_t np = m.layers.nparams;

  kd_ref_value ref = tu_run(m.g, s.in, np + 1, "logits");
  kd_ref_value fwd = tu_run(fg, s.in, np + 1, "logits");
  kd_ref_value trl = tu_run(tg, s.in, s.n, "logits");
  compare(inst, "forward graph's logits", &fwd, &ref, SAME_ATOL, SAME_RTOL);
  compare(inst, "train graph's logits", &trl, &ref, SAME_ATOL, SAME_RTOL);
  kd_ref_value_free(&ref);
  kd_ref_value_free(&fwd);
  kd_ref_value_free(&trl);

  add_direct_loss(m.g);
  TU_CHECK(!kd_graph_error(m.g), "%s: %s", inst, kd_graph_error(m.g));
  const char **wrt = malloc(np * sizeof *wrt), **gn = malloc(np * sizeof *gn);
  char(*names)[160] = malloc(np * sizeof *names), gname[170];
  for (size_t i = 0; i < np; i++) {
    wrt[i] = m.layers.params[i].name;
    snprintf(names[i], sizeof names[i], "d.%s", wrt[i]);
    gn[i] = names[i];
  }
  kd_graph *d = NULL;
  TU_CHECK(kd_autodiff_many(m.g, "loss", np, wrt, gn, &d, err, sizeof err) == KD_OK, "%s: %s",
           inst, err);
  double max_rel = 0;
  for (size_t i = 0; i < np && d; i++) {
    snprintf(gname, sizeof gname, "grad.%s", wrt[i]);
    kd_ref_value got = tu_run(tg, s.in, s.n, gname), want = tu_run(d, s.in, s.n, gn[i]);
    compare(inst, gname, &got, &want, SAME_ATOL, SAME_RTOL);
    for (size_t k = 0; k < got.size && k < want.size; k++)
      max_rel = fmax(max_rel, fabs(got.data[k] - want.data[k]) / fmax(1e-3, fabs(want.data[k])));
    /* finite differences of L, at spread positions */
    size_t n = sg_size(&s.in[i]), nfd = n < GC_SAMPLES ? n : GC_SAMPLES;
    for (size_t j = 0; j < nfd && got.size == n; j++) {
      size_t k = gc_pos(j, n);
      double fd = gc_fd(m.g, s.in, s.n, i, k);
      TU_CHECK(tu_close(got.data[k], fd, FD_ATOL, FD_RTOL),
               "%s: %s[%zu] = %.12g, finite differences %.12g", inst, gname, k, got.data[k], fd);
    }
    kd_ref_value_free(&got);
    kd_ref_value_free(&want);
  }
  printf("%s: %zu parameters; train graph %zu nodes (direct autodiff %zu); largest relative "
         "difference from the direct gradients %.2g\n",
         inst, np, kd_graph_size(tg), d ? kd_graph_size(d) : 0, max_rel);
  kd_graph_free(d);
  free(wrt), free(gn), free(names);
  sg_inputs_free(&s);
  kd_graph_free(tg);
  kd_graph_free(fg);
  kd_model_free(&m);
}

int main(void) {
  kd_program *p = sg_load();
  if (p) {
    check_model(p, "tiny");
    check_model(p, "small");
    kd_program_free(p);
  }
  return tu_done("test_train_graph");
}
