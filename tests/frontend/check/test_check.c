/* Tests of the checker's result (frontend/check.h): what the lowering to IR
 * reads. The golden diagnostic tests (tests/frontend/diag) cover the errors;
 * these cover a program that checks, and that names, kinds, settings and
 * defaults come out resolved. Each CHECK prints the failing line; the exit
 * status is 1 if any failed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static int failures;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: FAIL: %s\n", __FILE__, __LINE__, #cond);     \
      failures++;                                                          \
    }                                                                      \
  } while (0)

static char dir[] = "/tmp/kdc_check_XXXXXX";

static void write_file(const char *name, const char *text) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    exit(1);
  }
  fputs(text, f);
  fclose(f);
}

static void remove_file(const char *name) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  remove(path);
}

static const char program[] =
    "import \"lib.kd\"\n"
    "CORPUS = \"corpus.txt\"\n"
    "data shakespeare {\n"
    "  text CORPUS\n"
    "  split 0.8  seq 64  batch 4\n"
    "}\n"
    "model gpt(layers, dim, heads, vocab = 256, ctx = 128) {\n"
    "  x = embed(tokens, vocab, dim) + embed(positions, ctx, dim)\n"
    "  repeat layers {\n"
    "    x = x + attention(layernorm(x), heads)\n"
    "  }\n"
    "  logits = linear(layernorm(x), vocab)\n"
    "}\n"
    "N = 100\n"
    "teacher = gpt(4, 256, heads = 8) load \"teacher.safetensors\"\n"
    "student = gpt(layers = 1, dim = 128, heads = 4)\n"
    "divergence rkl(p, q) = sum(q * log(q / p))  # hides the prelude's rkl\n"
    "objective {\n"
    "  T = 2.0\n"
    "  p = softmax(teacher.logits / T)\n"
    "  loss = T^2 * skew(p, softmax(student.logits / T), alpha = 0.2) + rkl(p, p)\n"
    "  reduction = \"sum\"\n"
    "}\n"
    "train student {\n"
    "  optimizer adamw(lr = 3e-4)\n"
    "  schedule cosine(warmup = 10)\n"
    "  steps 20 * N\n"
    "  eval every 200\n"
    "  save \"out.safetensors\" every N\n"
    "}\n";

/* The binding of `name` in the objective. */
static const kd_ast *objective_binding(const kd_symbol *obj, const char *name) {
  for (size_t i = 0; i < obj->node->items.n; i++)
    if (!strcmp(obj->node->items.v[i]->name, name)) return obj->node->items.v[i]->a;
  return NULL;
}

static void test_program(void) {
  write_file("lib.kd",
             "divergence skew(p, q; alpha = 0.1) = sum(p * log(p / (alpha * p + (1 - alpha) * q)))\n");
  write_file("corpus.txt", "hello\n");
  write_file("teacher.safetensors", "");
  write_file("main.kd", program);
  char path[256];
  snprintf(path, sizeof path, "%s/main.kd", dir);
  kd_diag *diag = kd_diag_new(stderr);
  kd_program *p = NULL;
  kd_status st = kd_check_file(path, NULL, diag, &p);
  CHECK(st == KD_OK);
  CHECK(kd_diag_error_count(diag) == 0);
  CHECK(kd_diag_warning_count(diag) == 0);
  if (!p) {
    kd_diag_free(diag);
    return;
  }

  const kd_symbol *data = kd_program_data(p);
  CHECK(data && !strcmp(data->name, "shakespeare"));
  if (data) {
    CHECK(!data->data.is_tokens && data->data.vocab == 256);
    CHECK(data->data.split == 0.8 && data->data.seq == 64 && data->data.batch == 4);
    CHECK(data->data.seed == 1);
    CHECK(data->data.path && strstr(data->data.path, "/corpus.txt"));
  }

  const kd_symbol *gpt = kd_program_lookup(p, "gpt");
  const kd_symbol *teacher = kd_program_lookup(p, "teacher");
  CHECK(gpt && gpt->kind == KD_SYM_MODEL);
  CHECK(teacher && teacher->kind == KD_SYM_INSTANCE && teacher->model == gpt);
  if (teacher && teacher->args) {
    /* positional, named and default arguments, in parameter order */
    CHECK(teacher->args[0] == 4 && teacher->args[1] == 256 && teacher->args[2] == 8);
    CHECK(teacher->args[3] == 256 && teacher->args[4] == 128);
  }
  CHECK(teacher && teacher->file && strstr(teacher->file, "/teacher.safetensors"));
  const kd_symbol *corpus = kd_program_lookup(p, "CORPUS");
  CHECK(corpus && corpus->value_kind == KD_KIND_STRING && !strcmp(corpus->str, "corpus.txt"));
  const kd_symbol *n = kd_program_lookup(p, "N");
  CHECK(n && n->kind == KD_SYM_CONST && n->value_kind == KD_KIND_INTEGER && n->value == 100);

  /* The user's rkl hides the prelude's; fkl is the prelude's. */
  const kd_symbol *rkl = kd_program_lookup(p, "rkl"), *fkl = kd_program_lookup(p, "fkl");
  CHECK(rkl && !rkl->in_prelude);
  CHECK(fkl && fkl->in_prelude && fkl->kind == KD_SYM_DIVERGENCE);

  CHECK(kd_program_ntrains(p) == 1);
  const kd_symbol *train = kd_program_ntrains(p) ? kd_program_train(p, 0) : NULL;
  if (train) {
    const kd_train_info *t = &train->train;
    CHECK(t->instance == kd_program_lookup(p, "student"));
    CHECK(t->data == data);
    CHECK(t->objective && t->objective->kind == KD_SYM_OBJECTIVE);
    CHECK(t->optimizer && t->optimizer->id == KD_BUILTIN_ADAMW);
    CHECK(t->optimizer_args[0] == 3e-4);           /* lr, given */
    CHECK(t->optimizer_args[4] == 0.01);           /* weight_decay, the default */
    CHECK(t->schedule && t->schedule->id == KD_BUILTIN_COSINE && t->schedule_args[0] == 10);
    CHECK(t->steps == 2000 && t->eval_every == 200 && t->save_every == 100);
    CHECK(t->save_path && strstr(t->save_path, "/out.safetensors"));
    CHECK(t->seed == 1 && t->accumulate == 1 && t->clip == 0);

    const kd_symbol *obj = t->objective;
    if (obj) {
      CHECK(obj->objective.reduce_sum && obj->objective.ignore_index == -100);
      const kd_ast *loss = obj->objective.loss;
      CHECK(loss && loss == objective_binding(obj, "loss"));
      const kd_ref *r = loss ? kd_program_ref(p, loss) : NULL;
      CHECK(r && r->kind == KD_KIND_SCALAR);
      /* loss = (T^2 * skew(...)) + rkl(p, p) */
      if (loss && loss->kind == KD_AST_BINARY && loss->b->kind == KD_AST_CALL) {
        r = kd_program_ref(p, loss->b);
        CHECK(r && r->ref == KD_REF_SYMBOL && r->sym == rkl && r->kind == KD_KIND_SCALAR);
        const kd_ast *arg = loss->b->items.v[0]->a; /* p: the objective's let */
        r = kd_program_ref(p, arg);
        CHECK(r && r->ref == KD_REF_LOCAL && r->kind == KD_KIND_DIST);
        CHECK(r && r->decl && r->decl->kind == KD_AST_ASSIGN && !strcmp(r->decl->name, "p"));
        const kd_ast *skew = loss->a->b;
        r = kd_program_ref(p, skew);
        CHECK(r && r->sym && !strcmp(r->sym->name, "skew") && !r->sym->in_prelude);
      } else {
        CHECK(!"loss has the shape written");
      }
      const kd_ast *pv = objective_binding(obj, "p"); /* softmax(teacher.logits / T) */
      r = pv ? kd_program_ref(p, pv) : NULL;
      CHECK(r && r->ref == KD_REF_BUILTIN && r->builtin->id == KD_BUILTIN_SOFTMAX &&
            r->kind == KD_KIND_DIST);
      const kd_ast *div = pv ? pv->items.v[0]->a : NULL;
      r = div ? kd_program_ref(p, div) : NULL;
      CHECK(r && r->kind == KD_KIND_TENSOR);
      r = div ? kd_program_ref(p, div->a) : NULL; /* teacher.logits */
      CHECK(r && r->kind == KD_KIND_TENSOR && r->sym == teacher);
    }
  }
  kd_program_free(p);
  kd_diag_free(diag);
}

/* The same file imported twice (a diamond) is read once; no duplicate. */
static void test_diamond(void) {
  write_file("d_shared.kd", "divergence shared(p, q) = sum(p * log(p / q))\n");
  write_file("d_left.kd", "import \"d_shared.kd\"\n");
  write_file("d_right.kd", "import \"./d_shared.kd\"\n");
  write_file("d_main.kd", "import \"d_left.kd\"\nimport \"d_right.kd\"\n");
  char path[256];
  snprintf(path, sizeof path, "%s/d_main.kd", dir);
  kd_diag *diag = kd_diag_new(stderr);
  kd_program *p = NULL;
  CHECK(kd_check_file(path, NULL, diag, &p) == KD_OK);
  CHECK(p && kd_program_lookup(p, "shared") != NULL);
  kd_program_free(p);
  kd_diag_free(diag);
}

/* Errors give no program and the right status; warnings do not stop it. */
static void test_statuses(void) {
  write_file("bad.kd", "divergence kl(p, q) = p * log(p / q)\n");
  write_file("warn.kd", "data d { text \"missing.txt\" }\n");
  char path[256];
  FILE *sink = fopen("/dev/null", "w");
  kd_diag *diag = kd_diag_new(sink);
  kd_program *p = NULL;
  snprintf(path, sizeof path, "%s/bad.kd", dir);
  CHECK(kd_check_file(path, NULL, diag, &p) == KD_ERR_SEMANTIC && !p);
  snprintf(path, sizeof path, "%s/warn.kd", dir);
  CHECK(kd_check_file(path, NULL, diag, &p) == KD_OK && p);
  CHECK(kd_diag_warning_count(diag) == 1);
  kd_program_free(p);
  snprintf(path, sizeof path, "%s/none.kd", dir);
  CHECK(kd_check_file(path, NULL, diag, &p) == KD_ERR_IO && !p);
  /* Without the prelude, fkl is undefined. */
  write_file("uses_fkl.kd", "divergence twice(p, q) = 2 * fkl(p, q)\n");
  snprintf(path, sizeof path, "%s/uses_fkl.kd", dir);
  kd_check_options no_prelude = {.no_prelude = true};
  CHECK(kd_check_file(path, NULL, diag, &p) == KD_OK);
  kd_program_free(p);
  CHECK(kd_check_file(path, &no_prelude, diag, &p) == KD_ERR_SEMANTIC);
  kd_diag_free(diag);
  fclose(sink);
}

/* docs/language.md is the reference: every builtin and every setting of the
 * table must appear in it, written as code (`name`, `name(` or `name =`). */
static void test_docs(const char *path) {
  FILE *f = fopen(path, "rb");
  CHECK(f != NULL);
  if (!f) return;
  static char doc[1 << 17];
  size_t n = fread(doc, 1, sizeof doc - 1, f);
  fclose(f);
  doc[n] = 0;
  char want[3][64];
  for (int i = 0; i < KD_BUILTIN_COUNT + (int)kd_nsettings; i++) {
    const char *name = i < KD_BUILTIN_COUNT ? kd_builtins[i].name
                                            : kd_settings[i - KD_BUILTIN_COUNT].key;
    snprintf(want[0], sizeof want[0], "`%s`", name);
    snprintf(want[1], sizeof want[1], "`%s(", name);
    snprintf(want[2], sizeof want[2], "`%s ", name);
    if (!strstr(doc, want[0]) && !strstr(doc, want[1]) && !strstr(doc, want[2])) {
      fprintf(stderr, "FAIL: %s does not document '%s'\n", path, name);
      failures++;
    }
  }
}

int main(int argc, char **argv) {
  if (argc > 1) test_docs(argv[1]);
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_program();
  test_diamond();
  test_statuses();
  const char *files[] = {"lib.kd", "corpus.txt", "teacher.safetensors", "main.kd", "d_shared.kd",
                         "d_left.kd", "d_right.kd", "d_main.kd", "bad.kd", "warn.kd",
                         "uses_fkl.kd"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) remove_file(files[i]);
  rmdir(dir);
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
