/* Inputs meant to break the front end: a 10 MB line, NUL bytes, 10,000
 * nested brackets, long operator chains, unterminated strings, random bytes
 * and random token soup from a fixed seed. Each must come back as a status
 * (no crash, no hang, no leak under ASan), quickly, with a short report. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ast.h"
#include "check.h"

/* Seconds one case may take. The slowest cases (10 MB of one token) take
 * about 0.15 s in a Debug build and up to 1 s under ASan + UBSan, which slow
 * every byte and allocation several times; the bounds leave room for a busy
 * machine and are still far below what a quadratic scan of 10 MB would need
 * (hours). */
#if defined(__SANITIZE_ADDRESS__)
#define KD_CASE_SECONDS 4.0
#else
#define KD_CASE_SECONDS 1.0
#endif

/* Printed diagnostics of one case may not exceed this: 20 errors, each
 * with a source line cut to a 200-column window, plus the summary line. */
#define KD_MAX_REPORT (20 * 3 * 300 + 100)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct outcome {
  kd_status status;
  char *msgs; /* everything printed */
  size_t msgs_len;
  double seconds;
} outcome;

static outcome run(const char *what, const char *text, size_t len) {
  outcome o = {0};
  FILE *f = open_memstream(&o.msgs, &o.msgs_len);
  kd_diag *d = kd_diag_new(f);
  kd_source *src = NULL;
  kd_ast *file = (kd_ast *)1;
  double t0 = now();
  o.status = kd_source_from_memory("r.kd", text, len, &src);
  if (o.status == KD_OK) o.status = kd_parse(src, d, &file);
  o.seconds = now() - t0;
  int errors = kd_diag_error_count(d);
  kd_diag_free(d);
  fclose(f);
  kd_source_free(src);

  /* The contract of kd_parse: a tree exactly when it succeeds, and an error
   * printed exactly when it fails. */
  CHECK(o.status == KD_OK || o.status == KD_ERR_SYNTAX);
  CHECK((o.status == KD_OK) == (file != NULL && file != (kd_ast *)1));
  CHECK((o.status == KD_OK) == (errors == 0));
  if (o.status == KD_OK) kd_ast_free(file);
  CHECK(o.msgs_len <= KD_MAX_REPORT);
  printf("%-28s %8zu bytes %7.3f s\n", what, len, o.seconds);
  if (o.seconds > KD_CASE_SECONDS) {
    fprintf(stderr, "%s: took %.2f s\n", what, o.seconds);
    check_failures++;
  }
  return o;
}

/* Runs a case that must fail with `want` among its messages. */
static void expect_error(const char *what, const char *text, size_t len, const char *want) {
  outcome o = run(what, text, len);
  if (o.status != KD_ERR_SYNTAX || !o.msgs || !strstr(o.msgs, want)) {
    fprintf(stderr, "%s: wanted a syntax error with \"%s\", got status %d:\n%.2000s\n", what, want,
            (int)o.status, o.msgs ? o.msgs : "");
    check_failures++;
  }
  free(o.msgs);
}

static char *repeat(const char *head, const char *unit, size_t n, const char *tail, size_t *len) {
  size_t hl = strlen(head), ul = strlen(unit), tl = strlen(tail);
  *len = hl + ul * n + tl;
  char *s = malloc(*len + 1);
  if (!s) return NULL;
  memcpy(s, head, hl);
  for (size_t i = 0; i < n; i++) memcpy(s + hl + i * ul, unit, ul);
  memcpy(s + hl + ul * n, tail, tl + 1);
  return s;
}

#define TEN_MB (10u << 20)

static void test_long_lines(void) {
  size_t len;
  /* One 10 MB identifier: valid, and an error at its end shows a window. */
  char *s = repeat("x = ", "a", TEN_MB, " +", &len);
  if (s) expect_error("10 MB name", s, len, "r.kd:1:10485767: error: unexpected end of file");
  free(s);
  s = repeat("# ", "c", TEN_MB, "\nx = 1", &len);
  if (s) {
    outcome o = run("10 MB comment", s, len);
    CHECK(o.status == KD_OK);
    free(o.msgs);
  }
  free(s);
  s = repeat("x = \"", "s", TEN_MB, "", &len);
  if (s) expect_error("10 MB unterminated string", s, len, "r.kd:1:5: error: unterminated string");
  free(s);
  /* 256 KB: every token here allocates a node, the slow part under ASan. */
  s = repeat("x = ", "1+", 1u << 17, "1", &len);
  if (s) expect_error("256 KB of additions", s, len, "expression nested too deeply (more than 200 levels)");
  free(s);
}

static void test_nesting(void) {
  size_t len;
  char *s = repeat("x = ", "(", 10000, "1", &len);
  if (s) expect_error("10,000 '('", s, len, "r.kd:1:205: error: expression nested too deeply (more than 200 levels)");
  free(s);
  s = repeat("model m() {", "repeat 1 {", 10000, "", &len);
  if (s) expect_error("10,000 '{'", s, len, "blocks nested too deeply (more than 200 levels)");
  free(s);
  s = repeat("x = ", "-", 100000, "1", &len);
  if (s) expect_error("100,000 unary minus", s, len, "expression nested too deeply");
  free(s);
  s = repeat("x = ", "2^", 100000, "1", &len);
  if (s) expect_error("100,000 '^'", s, len, "expression nested too deeply");
  free(s);
  s = repeat("x = f", "()", 100000, "", &len);
  if (s) expect_error("100,000 calls", s, len, "expression nested too deeply");
  free(s);

  /* Arguments count in a call's height: 150 nested calls, each with an
   * argument 150 operators deep, make a tree far deeper than 200 within the
   * bracket limit. Without the count, every pass would recurse 22,500 deep. */
  char unit[2 + 2 * 150 + 1] = "f(";
  for (int i = 0; i < 150; i++) strcat(unit, "1+");
  s = repeat("x = ", unit, 150, "1", &len);
  char *closed = s ? malloc(len + 151) : NULL;
  if (closed) {
    memcpy(closed, s, len);
    memset(closed + len, ')', 150);
    closed[len + 150] = '\0';
    expect_error("150 calls, 150 deep each", closed, len + 150, "expression nested too deeply");
  }
  free(closed);
  free(s);

  /* The limit is exact: 200 levels of brackets parse, 201 do not. */
  char text[1024];
  for (int depth = 200; depth <= 201; depth++) {
    int n = snprintf(text, sizeof text, "x = ");
    for (int i = 0; i < depth; i++) text[n++] = '(';
    text[n++] = '1';
    for (int i = 0; i < depth; i++) text[n++] = ')';
    outcome o = run("200/201 levels", text, (size_t)n);
    CHECK(o.status == (depth == 200 ? KD_OK : KD_ERR_SYNTAX));
    free(o.msgs);
  }
}

static void test_nul_bytes(void) {
  size_t len = 1u << 20;
  char *s = calloc(len, 1);
  if (s) expect_error("1 MB of NUL", s, len, "r.kd:1:1: error: stray byte 0x00 in program");
  free(s);
  static const char nul_inside[] = "data d {\0 seq 1 }\nx = \"a\0b\"\n# \0\n";
  expect_error("NUL in a block and a string", nul_inside, sizeof nul_inside - 1,
               "r.kd:1:9: error: stray byte 0x00 in program");
}

/* A small deterministic generator (xorshift64*): the same inputs every run. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint32_t rng(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545f4914f6cdd1du) >> 32);
}

static void test_random_bytes(void) {
  enum { N = 200, LEN = 4096 };
  char *s = malloc(LEN);
  if (!s) return;
  for (int i = 0; i < N; i++) {
    size_t len = rng() % LEN;
    for (size_t j = 0; j < len; j++) s[j] = (char)rng();
    outcome o = run("random bytes", s, len);
    free(o.msgs);
  }
  free(s);
}

/* Random sequences of real tokens reach far deeper into the grammar and its
 * error recovery than random bytes do. */
static void test_token_soup(void) {
  static const char *const tokens[] = {
    "import", "data", "model", "repeat", "divergence", "objective", "train", "load", "every",
    "x", "p", "loss", "128", "0.5", "1e-3", "\"s\"", "\"a\\n\"", "{", "}", "(", ")", ",",
    ";", "=", ".", "+", "-", "*", "/", "^", "<", "<=", ">", ">=", "==", "!=", "\n", "# c\n",
  };
  enum { N = 2000, MAX_TOKENS = 200 };
  size_t ntok = sizeof tokens / sizeof tokens[0];
  char *s = malloc(MAX_TOKENS * 16);
  if (!s) return;
  int parsed = 0;
  for (int i = 0; i < N; i++) {
    size_t len = 0, n = rng() % MAX_TOKENS;
    for (size_t j = 0; j < n; j++) {
      const char *t = tokens[rng() % ntok];
      memcpy(s + len, t, strlen(t));
      len += strlen(t);
      s[len++] = ' ';
    }
    outcome o = run("token soup", s, len);
    parsed += o.status == KD_OK;
    free(o.msgs);
  }
  free(s);
  /* Almost every soup is wrong; the empty ones and a few lucky ones parse. */
  CHECK(parsed < N / 2);
}

int main(void) {
  test_long_lines();
  test_nesting();
  test_nul_bytes();
  test_random_bytes();
  test_token_soup();
  return check_exit("test_parse_robust");
}
