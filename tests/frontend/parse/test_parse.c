/* The lexer and parser: the language example of DESIGN.md parsed into the tree
 * it should be, precedence and associativity, locations, string escapes,
 * number spellings, comments, error messages and recovery, the dump format. */
#include <stdlib.h>
#include <string.h>

#include "ast.h"
#include "check.h"

/* ---- helpers ------------------------------------------------------------ */

/* Parses len bytes of text; *msgs receives everything printed (caller frees). */
static kd_status parse_n(const char *text, size_t len_text, kd_ast **out, char **msgs) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  kd_diag *d = kd_diag_new(f);
  kd_source *src = NULL;
  kd_status st = kd_source_from_memory("t.kd", text, len_text, &src);
  if (st == KD_OK) st = kd_parse(src, d, out);
  kd_diag_free(d);
  fclose(f);
  if (msgs) *msgs = buf;
  else free(buf);
  /* The tree keeps pointers to src only in locations; the tests below read
   * locations' numbers, never their source, so src can go now. */
  kd_source_free(src);
  return st;
}

static kd_status parse(const char *text, kd_ast **out, char **msgs) {
  return parse_n(text, strlen(text), out, msgs);
}

static kd_ast *parse_ok(const char *text) {
  kd_ast *file = NULL;
  char *msgs = NULL;
  kd_status st = parse(text, &file, &msgs);
  if (st != KD_OK) fprintf(stderr, "unexpected failure on:\n%s\n%s", text, msgs);
  CHECK(st == KD_OK && file && file->kind == KD_AST_FILE);
  free(msgs);
  return file;
}

/* An expression as an S-expression: (op a b), (call f args...), (. a name),
 * (= name value) for a named argument. */
static void sexp(const kd_ast *e, char *buf, size_t len) {
  size_t at = strlen(buf);
  if (!e) {
    snprintf(buf + at, len - at, "NULL");
    return;
  }
  switch (e->kind) {
  case KD_AST_NUMBER: snprintf(buf + at, len - at, "%s", e->str); return;
  case KD_AST_STRING: snprintf(buf + at, len - at, "\"%s\"", e->str); return;
  case KD_AST_NAME: snprintf(buf + at, len - at, "%s", e->name); return;
  case KD_AST_UNARY:
    snprintf(buf + at, len - at, "(neg ");
    sexp(e->a, buf, len);
    break;
  case KD_AST_BINARY:
    snprintf(buf + at, len - at, "(%s ", kd_ast_op_spelling(e->op));
    sexp(e->a, buf, len);
    strncat(buf, " ", len - strlen(buf) - 1);
    sexp(e->b, buf, len);
    break;
  case KD_AST_MEMBER:
    snprintf(buf + at, len - at, "(. ");
    sexp(e->a, buf, len);
    at = strlen(buf);
    snprintf(buf + at, len - at, " %s", e->name);
    break;
  case KD_AST_CALL:
    snprintf(buf + at, len - at, "(call ");
    sexp(e->a, buf, len);
    for (size_t i = 0; i < e->items.n; i++) {
      const kd_ast *arg = e->items.v[i];
      at = strlen(buf);
      if (arg->name) snprintf(buf + at, len - at, " (= %s ", arg->name);
      else snprintf(buf + at, len - at, " ");
      sexp(arg->a, buf, len);
      if (arg->name) strncat(buf, ")", len - strlen(buf) - 1);
    }
    break;
  default: snprintf(buf + at, len - at, "?%s", kd_ast_kind_name(e->kind)); return;
  }
  strncat(buf, ")", len - strlen(buf) - 1);
}

/* Parses `x = EXPR` and compares the expression's shape. */
static void check_expr(const char *expr, const char *want, int line) {
  char text[512], got[1024] = "";
  snprintf(text, sizeof text, "x = %s\n", expr);
  kd_ast *file = parse_ok(text);
  if (!file) return;
  if (file->items.n == 1 && file->items.v[0]->kind == KD_AST_BIND)
    sexp(file->items.v[0]->a, got, sizeof got);
  if (strcmp(got, want)) {
    fprintf(stderr, "%s:%d: %s\n  parsed as %s\n  expected  %s\n", __FILE__, line, expr, got,
            want);
    check_failures++;
  }
  kd_ast_free(file);
}
#define CHECK_EXPR(expr, want) check_expr((expr), (want), __LINE__)

/* Parses text (len bytes) expecting a syntax error whose messages contain
 * `want`. */
static void check_error(const char *text, size_t len, const char *want, int line) {
  kd_ast *file = (kd_ast *)1;
  char *msgs = NULL;
  kd_status st = parse_n(text, len, &file, &msgs);
  if (st != KD_ERR_SYNTAX || file != NULL || !msgs || !strstr(msgs, want)) {
    fprintf(stderr, "%s:%d: on input\n%s\nwanted a syntax error containing\n%s\ngot status %d:\n%s\n",
            __FILE__, line, text, want, (int)st, msgs ? msgs : "");
    check_failures++;
  }
  free(msgs);
}
/* text is a string literal: sizeof counts the NUL bytes inside it. */
#define CHECK_ERROR(text, want) check_error((text), sizeof(text) - 1, (want), __LINE__)

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
  return n;
}

#define CHECK_LOC(loc, l0, c0, l1, c1)                                                 \
  CHECK((loc).first_line == (l0) && (loc).first_column == (c0) && (loc).last_line == (l1) && \
        (loc).last_column == (c1))

/* ---- the example of DESIGN.md ----------------------------------------------- */

static const char design_example[] =
  "# Distil a 4-layer byte-level GPT teacher into a 1-layer student.\n"
  "data shakespeare {\n"
  "  text  \"corpus.txt\"          # bytes are tokens (vocab 256)\n"
  "  split 0.9                   # first 90% trains, the rest validates\n"
  "  seq 128   batch 16\n"
  "}\n"
  "\n"
  "model gpt(layers, dim, heads, vocab = 256, ctx = 128) {\n"
  "  x = embed(tokens, vocab, dim) + embed(positions, ctx, dim)\n"
  "  repeat layers {\n"
  "    x = x + attention(layernorm(x), heads)\n"
  "    x = x + mlp(layernorm(x), 4 * dim)\n"
  "  }\n"
  "  logits = linear(layernorm(x), vocab)\n"
  "}\n"
  "\n"
  "teacher = gpt(layers = 4, dim = 256, heads = 8) load \"teacher.safetensors\"\n"
  "student = gpt(layers = 1, dim = 128, heads = 4)\n"
  "\n"
  "divergence skew_kl(p, q; alpha = 0.1) = sum(p * log(p / (alpha * p + (1 - alpha) * q)))\n"
  "\n"
  "objective {\n"
  "  T = 2.0\n"
  "  loss = 0.5 * T^2 * skew_kl(softmax(teacher.logits / T), softmax(student.logits / T))\n"
  "       + 0.5 * cross_entropy(student.logits, labels)\n"
  "}\n"
  "\n"
  "train student {\n"
  "  optimizer adamw(lr = 1e-3, weight_decay = 0.1)\n"
  "  schedule  cosine(warmup = 100)\n"
  "  steps 2000   eval every 200   save \"student.safetensors\" every 500\n"
  "}\n";

static const kd_ast *setting(const kd_ast *block, size_t i, const char *name) {
  CHECK(i < block->items.n);
  if (i >= block->items.n) return NULL;
  const kd_ast *s = block->items.v[i];
  CHECK(s->kind == KD_AST_SETTING && !strcmp(s->name, name));
  return s;
}

static void test_design_example(void) {
  kd_ast *file = parse_ok(design_example);
  if (!file) return;
  CHECK(file->items.n == 7);
  if (file->items.n != 7) goto done;
  char got[1024];

  const kd_ast *data = file->items.v[0];
  CHECK(data->kind == KD_AST_DATA && !strcmp(data->name, "shakespeare"));
  CHECK_LOC(data->loc, 2, 1, 6, 2);
  CHECK_LOC(data->name_loc, 2, 6, 2, 17);
  CHECK(data->items.n == 4);
  const kd_ast *text = setting(data, 0, "text");
  CHECK(text && text->a->kind == KD_AST_STRING && !strcmp(text->a->str, "corpus.txt") && !text->b);
  if (text) CHECK_LOC(text->a->loc, 3, 9, 3, 21);
  const kd_ast *split = setting(data, 1, "split");
  CHECK(split && split->a->num == 0.9 && !split->a->is_int);
  const kd_ast *batch = setting(data, 3, "batch");
  CHECK(batch && batch->a->num == 16 && batch->a->is_int);
  if (batch) CHECK_LOC(batch->loc, 5, 13, 5, 21);

  const kd_ast *model = file->items.v[1];
  CHECK(model->kind == KD_AST_MODEL && !strcmp(model->name, "gpt"));
  CHECK(model->params.n == 5 && model->items.n == 3);
  if (model->params.n == 5) {
    CHECK(!strcmp(model->params.v[0]->name, "layers") && !model->params.v[0]->a);
    const kd_ast *vocab = model->params.v[3];
    CHECK(!strcmp(vocab->name, "vocab") && vocab->a && vocab->a->num == 256);
    CHECK_LOC(vocab->loc, 8, 31, 8, 42);
  }
  if (model->items.n == 3) {
    const kd_ast *rep = model->items.v[1];
    CHECK(rep->kind == KD_AST_REPEAT && rep->a->kind == KD_AST_NAME &&
          !strcmp(rep->a->name, "layers") && rep->items.n == 2);
    CHECK_LOC(rep->loc, 10, 3, 13, 4);
    const kd_ast *logits = model->items.v[2];
    CHECK(logits->kind == KD_AST_ASSIGN && !strcmp(logits->name, "logits"));
    got[0] = '\0';
    sexp(logits->a, got, sizeof got);
    CHECK(!strcmp(got, "(call linear (call layernorm x) vocab)"));
  }

  const kd_ast *teacher = file->items.v[2];
  CHECK(teacher->kind == KD_AST_BIND && !strcmp(teacher->name, "teacher"));
  CHECK(teacher->b && teacher->b->kind == KD_AST_STRING &&
        !strcmp(teacher->b->str, "teacher.safetensors"));
  got[0] = '\0';
  sexp(teacher->a, got, sizeof got);
  CHECK(!strcmp(got, "(call gpt (= layers 4) (= dim 256) (= heads 8))"));
  CHECK(file->items.v[3]->kind == KD_AST_BIND && !file->items.v[3]->b);

  const kd_ast *div = file->items.v[4];
  CHECK(div->kind == KD_AST_DIVERGENCE && !strcmp(div->name, "skew_kl"));
  CHECK(div->params.n == 2 && !strcmp(div->params.v[0]->name, "p") &&
        !strcmp(div->params.v[1]->name, "q"));
  CHECK(div->items.n == 1 && !strcmp(div->items.v[0]->name, "alpha") &&
        div->items.v[0]->a->num == 0.1);
  got[0] = '\0';
  sexp(div->a, got, sizeof got);
  CHECK(!strcmp(got, "(call sum (* p (call log (/ p (+ (* alpha p) (* (- 1 alpha) q))))))"));

  const kd_ast *obj = file->items.v[5];
  CHECK(obj->kind == KD_AST_OBJECTIVE && !obj->name && obj->items.n == 2);
  if (obj->items.n == 2) {
    const kd_ast *loss = obj->items.v[1];
    CHECK(!strcmp(loss->name, "loss"));
    CHECK_LOC(loss->loc, 24, 3, 25, 53);
    got[0] = '\0';
    sexp(loss->a, got, sizeof got);
    CHECK(!strcmp(got, "(+ (* (* 0.5 (^ T 2)) (call skew_kl (call softmax (/ (. teacher logits) T)) "
                       "(call softmax (/ (. student logits) T)))) "
                       "(* 0.5 (call cross_entropy (. student logits) labels)))"));
    /* teacher.logits in the first softmax */
    const kd_ast *kl = loss->a->a->b;
    const kd_ast *member = kl->items.v[0]->a->items.v[0]->a->a;
    CHECK(member->kind == KD_AST_MEMBER && !strcmp(member->name, "logits"));
    CHECK_LOC(member->loc, 24, 38, 24, 52);
    CHECK_LOC(member->name_loc, 24, 46, 24, 52);
  }

  const kd_ast *train = file->items.v[6];
  CHECK(train->kind == KD_AST_TRAIN && !strcmp(train->name, "student") && train->items.n == 5);
  const kd_ast *eval = setting(train, 3, "eval");
  CHECK(eval && !eval->a && eval->b && eval->b->num == 200);
  const kd_ast *save = setting(train, 4, "save");
  CHECK(save && save->a->kind == KD_AST_STRING && save->b->num == 500);
  if (save) CHECK_LOC(save->loc, 31, 33, 31, 69);
  const kd_ast *opt = setting(train, 0, "optimizer");
  got[0] = '\0';
  if (opt) sexp(opt->a, got, sizeof got);
  CHECK(!strcmp(got, "(call adamw (= lr 1e-3) (= weight_decay 0.1))"));

  /* Comments, with their locations, in order. */
  CHECK(file->ncomments == 3);
  if (file->ncomments == 3) {
    CHECK(!strcmp(file->comments[0].text,
                  " Distil a 4-layer byte-level GPT teacher into a 1-layer student."));
    CHECK_LOC(file->comments[1].loc, 3, 31, 3, 61);
    CHECK(!strcmp(file->comments[2].text, " first 90% trains, the rest validates"));
  }
done:
  kd_ast_free(file);
}

/* ---- expressions ----------------------------------------------------------- */

static void test_precedence(void) {
  CHECK_EXPR("1 + 2 * 3", "(+ 1 (* 2 3))");
  CHECK_EXPR("1 * 2 + 3", "(+ (* 1 2) 3)");
  CHECK_EXPR("1 - 2 - 3", "(- (- 1 2) 3)");
  CHECK_EXPR("a / b / c", "(/ (/ a b) c)");
  CHECK_EXPR("a / b * c", "(* (/ a b) c)");
  CHECK_EXPR("a ^ b ^ c", "(^ a (^ b c))");
  CHECK_EXPR("-x^2", "(neg (^ x 2))");
  CHECK_EXPR("2^-x", "(^ 2 (neg x))");
  CHECK_EXPR("- - a", "(neg (neg a))");
  CHECK_EXPR("-a * b", "(* (neg a) b)");
  CHECK_EXPR("a - -b", "(- a (neg b))");
  CHECK_EXPR("(a + b) * c", "(* (+ a b) c)");
  CHECK_EXPR("a < b + 1", "(< a (+ b 1))");
  CHECK_EXPR("a + 1 >= b * 2", "(>= (+ a 1) (* b 2))");
  CHECK_EXPR("(a < b) == c", "(== (< a b) c)");
  CHECK_EXPR("a != b", "(!= a b)");
  CHECK_EXPR("a <= b", "(<= a b)");
  CHECK_EXPR("a > b", "(> a b)");
  CHECK_EXPR("f()", "(call f)");
  CHECK_EXPR("f(x)(y)", "(call (call f x) y)");
  CHECK_EXPR("f(a, b, c = 1 + 2)", "(call f a b (= c (+ 1 2)))");
  CHECK_EXPR("f(a == b)", "(call f (== a b))");
  CHECK_EXPR("a.b.c", "(. (. a b) c)");
  CHECK_EXPR("m.f(x).y ^ 2", "(^ (. (call (. m f) x) y) 2)");
  CHECK_EXPR("teacher.logits / T", "(/ (. teacher logits) T)");
  CHECK_EXPR("\"s\"", "\"s\"");
  CHECK_EXPR("((((1))))", "1");
}

static void test_numbers(void) {
  static const struct {
    const char *spelling;
    double value;
    bool is_int;
  } cases[] = {
    {"128", 128, true},   {"0.9", 0.9, false},  {"1e-3", 1e-3, false}, {".5", 0.5, false},
    {"2.", 2, false},     {"1E+2", 100, false}, {"007", 7, true},  {"2.5e1", 25, false},
    {"9007199254740992", 9007199254740992.0, true}, {"1e308", 1e308, false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[64];
    snprintf(text, sizeof text, "x = %s", cases[i].spelling);
    kd_ast *file = parse_ok(text);
    if (!file) continue;
    const kd_ast *n = file->items.v[0]->a;
    CHECK(n->kind == KD_AST_NUMBER && !strcmp(n->str, cases[i].spelling));
    CHECK(n->num == cases[i].value && n->is_int == cases[i].is_int);
    kd_ast_free(file);
  }
  CHECK_ERROR("x = 9007199254740993", "integer 9007199254740993 is too large");
  CHECK_ERROR("x = 1e309", "number 1e309 is too large for a double");
  CHECK_ERROR("x = 1e", "malformed number '1e'");
  CHECK_ERROR("x = 1.2.3", "malformed number '1.2.3'");
  CHECK_ERROR("x = 12abc", "malformed number '12abc'");

  /* Underflow is a warning: the value becomes 0 and the file parses. */
  kd_ast *file = NULL;
  char *msgs = NULL;
  CHECK(parse("x = 1e-400", &file, &msgs) == KD_OK);
  CHECK(msgs && strstr(msgs, "t.kd:1:5: warning: number 1e-400 is too small for a double"));
  CHECK(file && file->items.v[0]->a->num == 0);
  kd_ast_free(file);
  free(msgs);
}

static void test_strings(void) {
  kd_ast *file = parse_ok("x = \"a\\n\\t\\r\\\\\\\"\\0\\x41\\xfF\tb\"");
  if (file) {
    const kd_ast *s = file->items.v[0]->a;
    static const char want[] = "a\n\t\r\\\"\0A\xff\tb";
    CHECK(s->kind == KD_AST_STRING && s->str_len == sizeof want - 1 &&
          !memcmp(s->str, want, sizeof want));
    CHECK_LOC(s->loc, 1, 5, 1, 30);
    kd_ast_free(file);
  }
  file = parse_ok("import \"x.kd\" y = \"\"");
  if (file) {
    CHECK(file->items.v[0]->kind == KD_AST_IMPORT && !strcmp(file->items.v[0]->str, "x.kd"));
    CHECK(file->items.v[1]->a->str_len == 0 && file->items.v[1]->a->str[0] == '\0');
    kd_ast_free(file);
  }
  CHECK_ERROR("x = \"a\\qb\"", "t.kd:1:7: error: unknown escape '\\q'");
  CHECK_ERROR("x = \"a\\x4\"", "t.kd:1:7: error: \\x must be followed by two hex digits");
  CHECK_ERROR("x = \"abc\ny = 1", "t.kd:1:5: error: unterminated string");
  CHECK_ERROR("x = \"abc\\", "t.kd:1:5: error: unterminated string");
  CHECK_ERROR("x = \"a\001b\"", "t.kd:1:7: error: stray byte 0x01 in string");
}

/* ---- the rest of the language ------------------------------------------------ */

static void test_forms(void) {
  kd_ast *file = parse_ok(
    "import \"prelude/extra.kd\"; data d { tokens \"f.bin\"; seed 1 }\n"
    "model m() { repeat 2 { repeat n { y = 1 } } }\n"
    "divergence tvd(p, q) = 0.5 * sum(abs(p - q))\n"
    "divergence h(p, q;) = 0\n"
    "objective mix { loss = 1; reduction = \"sum\" }\n"
    "train s { objective mix steps 10 save \"x\" clip 1 }\n"
    "t = logits(\"t.npy\")\n");
  if (!file) return;
  CHECK(file->items.n == 8);
  if (file->items.n == 8) {
    CHECK(file->items.v[0]->kind == KD_AST_IMPORT);
    const kd_ast *model = file->items.v[2];
    CHECK(model->params.n == 0 && model->items.n == 1 && model->items.v[0]->items.n == 1 &&
          model->items.v[0]->items.v[0]->kind == KD_AST_REPEAT);
    const kd_ast *tvd = file->items.v[3];
    CHECK(tvd->kind == KD_AST_DIVERGENCE && tvd->params.n == 2 && tvd->items.n == 0);
    CHECK(file->items.v[4]->items.n == 0);
    CHECK(file->items.v[5]->kind == KD_AST_OBJECTIVE && !strcmp(file->items.v[5]->name, "mix"));
    const kd_ast *train = file->items.v[6];
    CHECK(train->items.n == 4 && !strcmp(train->items.v[0]->name, "objective") &&
          train->items.v[0]->a->kind == KD_AST_NAME);
    CHECK_LOC(train->items.v[0]->loc, 6, 11, 6, 24);
    CHECK(!strcmp(train->items.v[2]->name, "save") && train->items.v[2]->a &&
          !train->items.v[2]->b);
  }
  kd_ast_free(file);

  /* Newlines are not significant; CRLF files parse; an empty file is a FILE. */
  file = parse_ok("data\nd\n{\nseq\n128\n}\r\nx\r\n=\r\n1 # c\r\n");
  CHECK(file && file->items.n == 2 && file->ncomments == 1 && !strcmp(file->comments[0].text, " c"));
  kd_ast_free(file);
  file = parse_ok("");
  CHECK(file && file->items.n == 0);
  kd_ast_free(file);
}

static void test_equal(void) {
  kd_ast *x = parse_ok("x = (a + b) * 2.0 # c\ny = f(p, q = 1)");
  kd_ast *y = parse_ok("x=(a+b)*2\n\n\ny=f(p,q=1.)");
  kd_ast *z = NULL;
  CHECK(parse("x = (a + b) * 2.0\ny = f(q = 1, p)", &z, NULL) == KD_ERR_SYNTAX);
  kd_ast *w = parse_ok("x = (b + a) * 2.0\ny = f(p, q = 1)");
  CHECK(kd_ast_equal(x, y) && kd_ast_equal(y, x));
  CHECK(!kd_ast_equal(x, w));
  CHECK(z == NULL);
  CHECK(kd_ast_equal(NULL, NULL) && !kd_ast_equal(x, NULL));
  kd_ast_free(x);
  kd_ast_free(y);
  kd_ast_free(w);
}

/* ---- errors ------------------------------------------------------------ */

static void test_errors(void) {
  CHECK_ERROR("data x {\n  text \"a.txt\"\n  seq 128\n",
              "t.kd:3:10: error: unexpected end of file; expected '}' to close the data block "
              "opened at 1:8\n"
              "    3 |   seq 128\n"
              "      |          ^\n");
  CHECK_ERROR("data x {\n  128\n}", "t.kd:2:3: error: unexpected number; expected a setting name\n");
  CHECK_ERROR("x = 1\0 + 2", "t.kd:1:6: error: stray byte 0x00 in program");
  CHECK_ERROR("x = f(a, b = 1, c)", "t.kd:1:17: error: positional argument after a named argument");
  CHECK_ERROR("x = (1 + \n", "t.kd:1:9: error: unexpected end of file; expected an expression");
  CHECK_ERROR("x = f(a, g(b)\n", "expected ')' to close the '(' opened at 1:6");
  CHECK_ERROR("objective { loss = 1 < 2 < 3 }", "unexpected '<'; comparisons do not chain");
  CHECK_ERROR("divergence train(p) = 1", "unexpected 'train'; expected a name ('train' is a reserved word)");
  CHECK_ERROR("x = a @ b", "t.kd:1:7: error: unexpected character '@'");
  CHECK_ERROR("x = 1 // no", "comments start with '#', not '//'");
  CHECK_ERROR("model m() {\n  x = f(a b)\n}", "t.kd:2:11: error: unexpected name 'b'; expected ')' or ','");
  CHECK_ERROR("model m() { repeat { } }", "unexpected '{'; expected an expression");
  CHECK_ERROR("train s { steps 1 every }", "unexpected '}'; expected an expression");
  CHECK_ERROR("x = y = 1", "unexpected '='");
  CHECK_ERROR("objective { loss }", "unexpected '}'; expected '='");
  CHECK_ERROR("steps 100", "unexpected number; expected '='");
  CHECK_ERROR(")", "unexpected ')'; expected a top-level item");
  CHECK_ERROR("divergence d(p, q) = sum(p) +", "unexpected end of file; expected an expression");

  /* A missing '}' is found at the next top-level keyword, and the item after
   * it parses as if the block had been closed: one error, not a cascade. */
  char *msgs = NULL;
  kd_ast *file = NULL;
  CHECK(parse("data d {\n  seq 128\n\nmodel gpt(layers) {\n  logits = f(embed(tokens, 2), 2)\n}\n",
              &file, &msgs) == KD_ERR_SYNTAX);
  CHECK(msgs && !strcmp(msgs, "t.kd:4:1: error: unexpected 'model'; expected '}' to close the data "
                              "block opened at 1:8\n"
                              "    4 | model gpt(layers) {\n"
                              "      | ^~~~~\n"));
  free(msgs);

  /* Recovery: one error per broken block, each reported. */
  CHECK(parse("data d { seq 128 + }\n"
              "model m() { x = * 2 }\n"
              "objective { loss = fkl(p q) }\n"
              "train s { 5 steps 10 }\n"
              "x = 1 y = = 2\n",
              &file, &msgs) == KD_ERR_SYNTAX);
  CHECK(file == NULL);
  CHECK(msgs && count(msgs, ": error: ") == 5);
  CHECK(msgs && strstr(msgs, "t.kd:1:20: error:") && strstr(msgs, "t.kd:2:17: error:") &&
        strstr(msgs, "t.kd:3:26: error:") && strstr(msgs, "t.kd:4:11: error:") &&
        strstr(msgs, "t.kd:5:11: error:"));
  free(msgs);
}

/* At most 20 errors per file are printed, then one line says how many more. */
static void test_error_cap(void) {
  char text[30 * 8 + 1] = "";
  for (int i = 0; i < 30; i++) strcat(text, "x = @1\n");
  char *msgs = NULL;
  kd_ast *file = NULL;
  CHECK(parse(text, &file, &msgs) == KD_ERR_SYNTAX);
  CHECK(msgs && count(msgs, ": error: ") == 20);
  CHECK(msgs && strstr(msgs, "t.kd:20:5: error:") && !strstr(msgs, "t.kd:21:5: error:"));
  CHECK(msgs && strstr(msgs, "\nt.kd: 10 more errors not shown\n"));
  free(msgs);
}

/* ---- kd_ast_dump ------------------------------------------------------------- */

static void test_dump(void) {
  kd_ast *file = parse_ok("# c\nteacher = gpt(layers = 4) load \"t\\n\"\n"
                          "divergence d(p, q; a = 1) = -p.x ^ 2\n"
                          "train s { eval every 200 }\n");
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  kd_ast_dump(file, f);
  fclose(f);
  static const char want[] =
    "file @1:1-4:27\n"
    "  bind teacher @2:1-2:37\n"
    "    call @2:11-2:26\n"
    "      name gpt @2:11-2:14\n"
    "      arg layers @2:15-2:25\n"
    "        number 4 @2:24-2:25\n"
    "    load: string \"t\\n\" @2:32-2:37\n"
    "  divergence d @3:1-3:37\n"
    "    param p @3:14-3:15\n"
    "    param q @3:17-3:18\n"
    "    hyper: param a @3:20-3:25\n"
    "      number 1 @3:24-3:25\n"
    "    body: unary - @3:29-3:37\n"
    "      binary ^ @3:30-3:37\n"
    "        member x @3:30-3:33\n"
    "          name p @3:30-3:31\n"
    "        number 2 @3:36-3:37\n"
    "  train s @4:1-4:27\n"
    "    setting eval @4:11-4:25\n"
    "      every: number 200 @4:22-4:25\n";
  if (!buf || strcmp(buf, want)) {
    fprintf(stderr, "dump:\n%s\nwanted:\n%s\n", buf ? buf : "", want);
    check_failures++;
  }
  free(buf);
  kd_ast_free(file);
}

int main(void) {
  test_design_example();
  test_precedence();
  test_numbers();
  test_strings();
  test_forms();
  test_equal();
  test_errors();
  test_error_cap();
  test_dump();
  return check_exit("test_parse");
}
