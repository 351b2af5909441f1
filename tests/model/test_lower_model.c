/* Lowering of model instances (passes/lower_model.h): tests/model/gpt_distill.kd's
 * teacher and student get the parameter names, shapes and init specs the
 * header documents, and as many parameters as GPT-2's formula gives; a
 * tiny GPT (1 layer, width 16, 2 heads, context 8, vocabulary 16) goes end
 * to end: loss = mean cross-entropy(logits, labels), autodiff, and every
 * parameter's gradient against finite differences through the reference
 * executor (gradcheck.h; tolerances 1e-6 as test_layers.c: the loss is
 * O(1), and the parameters are drawn from [-0.5, 0.5] so that attention and
 * the norms are far from degenerate). */

#include "check.h"
#include "gradcheck.h"
#include "modeltest.h"
#include "lower_model.h"

#define ATOL 1e-6
#define RTOL 1e-6

/* The parameter's shape as "[a, b]", or "none". */
static const char *shape_of(const kd_model *m, const char *name, char *buf, size_t len) {
  const kd_model_param *p = kd_layers_find(&m->layers, name);
  if (!p) return "none";
  const kd_node *n = kd_graph_node(m->g, p->id);
  size_t k = (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < n->rank; i++)
    k += (size_t)snprintf(buf + k, len - k, "%s%lld", i ? ", " : "", (long long)n->shape[i]);
  snprintf(buf + k, len - k, "]");
  return buf;
}

static size_t count_params(const kd_model *m) {
  size_t total = 0;
  for (size_t i = 0; i < m->layers.nparams; i++) {
    const kd_node *n = kd_graph_node(m->g, m->layers.params[i].id);
    size_t s = 1;
    for (int d = 0; d < n->rank; d++) s *= (size_t)n->shape[d];
    total += s;
  }
  return total;
}

/* Lowers instance `inst` with its diagnostics written into msg. */
static kd_status lower_msg(kd_program *p, const char *inst, kd_model *m, char *msg, size_t len) {
  memset(msg, 0, len);
  FILE *mf = fmemopen(msg, len - 1, "w");
  kd_diag *diag = kd_diag_new(mf);
  kd_status st = kd_lower_model(p, kd_program_lookup(p, inst), diag, m);
  kd_diag_free(diag);
  fclose(mf);
  return st;
}

/* GPT-2's count: embeddings, per block 12 D^2 + 13 D (qkv, proj, fc, proj
 * with biases, two layernorms), the final layernorm and the head. */
static size_t gpt_params(size_t layers, size_t d, size_t v, size_t ctx) {
  return v * d + ctx * d + layers * (12 * d * d + 13 * d) + 2 * d + d * v + v;
}

static void test_distill(void) {
  kd_program *p = mt_load(KD_SOURCE_DIR "/tests/model/gpt_distill.kd");
  if (!p) return;
  kd_model st, te;
  if (mt_lower(p, "student", &st) == KD_OK) {
    static const char *const want[][2] = {
        {"embed_1.weight", "[256, 128]"},          {"embed_2.weight", "[128, 128]"},
        {"blocks.0.ln_1.weight", "[128]"},         {"blocks.0.ln_1.bias", "[128]"},
        {"blocks.0.attn.qkv.weight", "[128, 384]"}, {"blocks.0.attn.qkv.bias", "[384]"},
        {"blocks.0.attn.proj.weight", "[128, 128]"}, {"blocks.0.attn.proj.bias", "[128]"},
        {"blocks.0.ln_2.weight", "[128]"},         {"blocks.0.ln_2.bias", "[128]"},
        {"blocks.0.mlp.fc.weight", "[128, 512]"},  {"blocks.0.mlp.fc.bias", "[512]"},
        {"blocks.0.mlp.proj.weight", "[512, 128]"}, {"blocks.0.mlp.proj.bias", "[128]"},
        {"ln.weight", "[128]"},                    {"ln.bias", "[128]"},
        {"linear.weight", "[128, 256]"},           {"linear.bias", "[256]"}};
    size_t n = sizeof want / sizeof want[0];
    TU_CHECK(st.layers.nparams == n, "student: %zu parameters, want %zu", st.layers.nparams, n);
    for (size_t i = 0; i < n && i < st.layers.nparams; i++) {
      char buf[64];
      TU_CHECK(!strcmp(st.layers.params[i].name, want[i][0]), "student parameter %zu: %s, want %s",
               i, st.layers.params[i].name, want[i][0]);
      TU_CHECK(!strcmp(shape_of(&st, want[i][0], buf, sizeof buf), want[i][1]), "%s: %s, want %s",
               want[i][0], shape_of(&st, want[i][0], buf, sizeof buf), want[i][1]);
    }
    const kd_model_param *proj = kd_layers_find(&st.layers, "blocks.0.mlp.proj.weight");
    TU_CHECK(proj && fabs(proj->init.std - 0.02 / sqrt(2)) < 1e-15, "student: residual init std");
    TU_CHECK(st.vocab == 256, "student: vocabulary %lld", (long long)st.vocab);
    const kd_node *lg = kd_graph_node(st.g, kd_graph_find_output(st.g, "logits"));
    TU_CHECK(lg && lg->rank == 3 && !strcmp(kd_graph_sym_name(st.g, lg->shape[0]), "B") &&
                 !strcmp(kd_graph_sym_name(st.g, lg->shape[1]), "T") && lg->shape[2] == 256,
             "student: logits are [B, T, 256]");
    TU_CHECK(count_params(&st) == gpt_params(1, 128, 256, 128), "student: %zu parameters",
             count_params(&st));
    printf("student: %zu nodes, %zu parameter tensors, %zu parameters\n", kd_graph_size(st.g),
           st.layers.nparams, count_params(&st));
    kd_model_free(&st);
  }
  if (mt_lower(p, "teacher", &te) == KD_OK) {
    char buf[64];
    TU_CHECK(te.layers.nparams == 2 + 4 * 12 + 4, "teacher: %zu parameters", te.layers.nparams);
    TU_CHECK(!strcmp(shape_of(&te, "blocks.3.mlp.proj.weight", buf, sizeof buf), "[1024, 256]"),
             "teacher: the last block's projection");
    TU_CHECK(!strcmp(shape_of(&te, "blocks.4.ln_1.weight", buf, sizeof buf), "none"),
             "teacher: four blocks only");
    TU_CHECK(count_params(&te) == gpt_params(4, 256, 256, 128), "teacher: %zu parameters",
             count_params(&te));
    printf("teacher: %zu nodes, %zu parameter tensors, %zu parameters\n", kd_graph_size(te.g),
           te.layers.nparams, count_params(&te));
    const kd_model_param *proj = kd_layers_find(&te.layers, "blocks.2.attn.proj.weight");
    TU_CHECK(proj && fabs(proj->init.std - 0.02 / sqrt(8)) < 1e-15, "teacher: residual init std");
    kd_model_free(&te);
  }
  kd_program_free(p);
}

static const char tiny[] =
    "model gpt(layers, dim, heads, vocab = 16, ctx = 8) {\n"
    "  x = embed(tokens, vocab, dim) + embed(positions, ctx, dim)\n"
    "  repeat layers {\n"
    "    x = x + attention(layernorm(x), heads)\n"
    "    x = x + mlp(layernorm(x), 4 * dim)\n"
    "  }\n"
    "  logits = linear(layernorm(x), vocab)\n"
    "}\n"
    "student = gpt(layers = 1, dim = 16, heads = 2)\n"
    "bad = gpt(layers = 1, dim = 16, heads = 3)\n"
    "objective {\n"
    "  loss = cross_entropy(student.logits, labels)\n"
    "}\n";

enum { NB = 2, NT = 8, NV = 16 };

/* loss = mean over [B, T] of -log_softmax(logits)[label]: the label picked
 * with a one-hot of iota == label. */
static void add_cross_entropy(kd_graph *g) {
  kd_node_id logits = kd_graph_find_output(g, "logits");
  kd_dim bt[2] = {kd_graph_sym(g, "B"), kd_graph_sym(g, "T")}, bt1[3] = {bt[0], bt[1], 1};
  kd_dim v[3] = {1, 1, NV};
  kd_node_id labels = kd_reshape(g, kd_input(g, "labels", KD_I64, 2, bt), 3, bt1);
  kd_node_id hot = kd_cast(g, kd_binary(g, KD_IR_EQ, kd_iota(g, 3, v, 2), labels), KD_F32);
  kd_node_id lp = kd_row(g, KD_IR_LOG_SOFTMAX, logits, 2);
  kd_node_id nll = kd_unary(g, KD_IR_NEG, kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, hot, lp),
                                                    KD_AXIS_ALL));
  kd_graph_add_output(g, "loss", kd_binary(g, KD_IR_DIV, nll, kd_const(g, NB * NT, KD_F32)));
}

static void test_tiny_gpt(void) {
  kd_program *p = mt_load_text(tiny, "tiny.kd");
  if (!p) return;

  /* 3 heads do not divide 16: an error at the attention call */
  kd_model bad;
  char msg[1024];
  TU_CHECK(lower_msg(p, "bad", &bad, msg, sizeof msg) == KD_ERR_SEMANTIC && bad.g == NULL,
           "heads that do not divide the width");
  TU_CHECK(strstr(msg, "tiny.kd:4:13: error: blocks.0.attn: 3 heads do not divide the width 16"),
           "the error: %s", msg);

  kd_model m;
  if (mt_lower(p, "student", &m) != KD_OK) {
    kd_program_free(p);
    return;
  }
  add_cross_entropy(m.g);
  TU_CHECK(!kd_graph_error(m.g), "%s", kd_graph_error(m.g));
  unsigned long long seed = 0xda3e39cb94b95bdbull;
  size_t np = m.layers.nparams;
  kd_ref_input in[GC_MAXWRT + 2];
  double *data[GC_MAXWRT];
  size_t wrt[GC_MAXWRT];
  TU_CHECK(np <= GC_MAXWRT, "%zu parameters", np);
  for (size_t i = 0; i < np && i < GC_MAXWRT; i++) {
    const kd_node *n = kd_graph_node(m.g, m.layers.params[i].id);
    int64_t shape[KD_MAX_RANK];
    size_t size = 1;
    for (int d = 0; d < n->rank; d++) size *= (size_t)(shape[d] = n->shape[d]);
    data[i] = malloc(size * sizeof(double));
    for (size_t k = 0; k < size; k++) data[i][k] = tu_uniform(&seed, -0.5, 0.5);
    in[i] = tu_input(m.layers.params[i].name, n->rank, shape, data[i]);
    wrt[i] = i;
  }
  int64_t tokens[NB * NT], labels[NB * NT], bt[2] = {NB, NT};
  for (int i = 0; i < NB * NT; i++) {
    tokens[i] = (int64_t)tu_uniform(&seed, 0, NV);
    labels[i] = (int64_t)tu_uniform(&seed, 0, NV);
  }
  in[np] = tu_input_i64("tokens", 2, bt, tokens);
  in[np + 1] = tu_input_i64("labels", 2, bt, labels);
  double loss = tu_scalar(m.g, in, np + 2, "loss");
  /* weights in [-0.5, 0.5] give logits of order 1: a loss near log 16 = 2.77 */
  TU_CHECK(loss > 1.5 && loss < 5, "tiny GPT: loss %g", loss);
  printf("tiny GPT: %zu nodes, loss %.6f\n", kd_graph_size(m.g), loss);
  gc_check("tiny GPT", m.g, in, np + 2, wrt, np, ATOL, RTOL);
  for (size_t i = 0; i < np && i < GC_MAXWRT; i++) free(data[i]);
  kd_model_free(&m);
  kd_program_free(p);
}

/* unembed: the tied head has no parameter of its own; linear without a
 * bias; lowering errors at the call (or the bad argument). */
static const char tied[] =
    "model tied(vocab = 16, dim = 8) {\n"
    "  x = embed(tokens, vocab, dim) + embed(positions, 8, dim)\n"
    "  logits = unembed(layernorm(x), tokens)\n"
    "}\n"
    "model none(dim = 8) {\n"
    "  x = embed(positions, 8, dim)\n"
    "  logits = unembed(x, tokens)\n"
    "}\n"
    "model twice(vocab = 16, dim = 8) {\n"
    "  x = embed(tokens, vocab, dim) + embed(tokens, vocab, dim)\n"
    "  logits = unembed(x, tokens)\n"
    "}\n"
    "model wide(vocab = 16, dim = 8) {\n"
    "  x = embed(tokens, vocab, dim)\n"
    "  logits = unembed(linear(x, 12), tokens)\n"
    "}\n"
    "model nobias(vocab = 16, dim = 8) {\n"
    "  logits = linear(embed(tokens, vocab, dim), vocab, bias = 0)\n"
    "}\n"
    "model badbias(vocab = 16, dim = 8) {\n"
    "  logits = linear(embed(tokens, vocab, dim), vocab, bias = 2)\n"
    "}\n"
    "a = tied()\nb = none()\nc = twice()\nd = wide()\ne = nobias()\nf = badbias()\n"
    "objective {\n"
    "  loss = cross_entropy(a.logits, labels) + cross_entropy(b.logits, labels)\n"
    "       + cross_entropy(c.logits, labels) + cross_entropy(d.logits, labels)\n"
    "       + cross_entropy(e.logits, labels) + cross_entropy(f.logits, labels)\n"
    "}\n";

static void test_tied(void) {
  kd_program *p = mt_load_text(tied, "tied.kd");
  if (!p) return;
  kd_model m;
  if (mt_lower(p, "a", &m) == KD_OK) {
    char buf[64];
    TU_CHECK(m.layers.nparams == 4 && !strcmp(shape_of(&m, "embed_1.weight", buf, sizeof buf),
                                              "[16, 8]"),
             "tied: the parameters are the two tables and the layernorm (%zu)", m.layers.nparams);
    const kd_node *l = kd_graph_node(m.g, kd_graph_find_output(m.g, "logits"));
    TU_CHECK(l && l->rank == 3 && l->shape[2] == 16, "tied: logits over the vocabulary");
    kd_model_free(&m);
  }
  if (mt_lower(p, "e", &m) == KD_OK) {
    char buf[64];
    TU_CHECK(m.layers.nparams == 2 && !kd_layers_find(&m.layers, "linear.bias") &&
                 !strcmp(shape_of(&m, "linear.weight", buf, sizeof buf), "[8, 16]"),
             "linear(..., bias = 0): a weight and no bias (%zu parameters)", m.layers.nparams);
    kd_model_free(&m);
  }
  static const struct {
    const char *inst, *msg;
  } bad[] = {
      {"b", "tied.kd:7:12: error: unembed(x, tokens) shares the table of an earlier embed of the "
            "same ids, and the model has none"},
      {"c", "tied.kd:11:12: error: unembed(x, tokens): the model embeds them more than once, so "
            "the table to share is ambiguous"},
      {"d", "tied.kd:15:12: error: unembed: the input has width 12, the embedding table 8"},
      {"f", "tied.kd:21:60: error: linear(): bias must be 1 (with) or 0 (without)"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    kd_model bm;
    char msg[1024];
    TU_CHECK(lower_msg(p, bad[i].inst, &bm, msg, sizeof msg) == KD_ERR_SEMANTIC && bm.g == NULL,
             "%s: lowering fails", bad[i].inst);
    TU_CHECK(strstr(msg, bad[i].msg), "%s: the error: %s", bad[i].inst, msg);
  }
  kd_program_free(p);
}

/* Repeats nested so deeply that the parameter names would not fit: an
 * error at the repeat, not names cut short (two could then be the same). */
static void test_nested_too_deep(void) {
  char src[4096];
  size_t k = (size_t)snprintf(src, sizeof src, "model deep(dim = 8) {\n  x = embed(tokens, 16, dim)\n");
  for (int i = 0; i < 20; i++) k += (size_t)snprintf(src + k, sizeof src - k, "  repeat 1 {\n");
  k += (size_t)snprintf(src + k, sizeof src - k, "  x = x + linear(x, dim)\n");
  for (int i = 0; i < 20; i++) k += (size_t)snprintf(src + k, sizeof src - k, "  }\n");
  snprintf(src + k, sizeof src - k,
           "  logits = linear(x, 16)\n}\na = deep()\nobjective {\n  loss = cross_entropy(a.logits, labels)\n}\n");
  kd_program *p = mt_load_text(src, "deep.kd");
  if (!p) return;
  kd_model m;
  char msg[1024];
  TU_CHECK(lower_msg(p, "a", &m, msg, sizeof msg) == KD_ERR_SEMANTIC && m.g == NULL,
           "20 nested repeats: lowering fails");
  TU_CHECK(strstr(msg, "deep.kd:20:3: error: 'repeat' blocks are nested too deeply (their parameter "
                       "names exceed 159 bytes)"),
           "the error: %s", msg);
  kd_program_free(p);
}

int main(void) {
  test_nested_too_deep();
  test_distill();
  test_tiny_gpt();
  test_tied();
  return tu_done("test_lower_model");
}
