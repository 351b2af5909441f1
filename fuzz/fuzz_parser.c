/* libFuzzer target: the parser, and `kdc fmt` as a property of it.
 *
 * Any input must parse or fail cleanly (no crash, leak, hang or undefined
 * behaviour). When it parses, formatting must keep its meaning and be a fixed
 * point: fmt(x) parses to a tree equal to parse(x) with the same comments,
 * and fmt(fmt(x)) == fmt(x). A broken property aborts, so libFuzzer reports it
 * as a crash with the input that shows it. fuzz/run.sh drives this target. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ast.h"
#include "fmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static kd_diag *quiet_diag(void) {
  static kd_diag *d;
  if (!d) {
    FILE *null = fopen("/dev/null", "w"); /* kept open for the whole run */
    d = kd_diag_new(null ? null : stderr);
    if (!d) abort();
  }
  return d;
}

static void fail(const char *what, const char *text, size_t len) {
  fprintf(stderr, "fuzz_parser: %s\n--- fmt(x):\n%.*s\n---\n", what, (int)len, text);
  abort();
}

static size_t comment_len(const char *s) {
  size_t n = strlen(s);
  while (n > 0 && strchr(" \t\r\f\v", s[n - 1])) n--;
  return n;
}

static int same_comments(const kd_ast *x, const kd_ast *y) {
  if (x->ncomments != y->ncomments) return 0;
  for (size_t i = 0; i < x->ncomments; i++) {
    size_t n = comment_len(x->comments[i].text);
    if (n != comment_len(y->comments[i].text) ||
        memcmp(x->comments[i].text, y->comments[i].text, n))
      return 0;
  }
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kd_source *src = NULL, *src1 = NULL;
  kd_ast *ast = NULL, *ast1 = NULL;
  char *text = NULL, *text2 = NULL;
  size_t len = 0, len2 = 0;
  if (kd_source_from_memory("fuzz.kd", (const char *)data, size, &src) != KD_OK) return 0;
  kd_status st = kd_fmt_source(src, quiet_diag(), &text, &len, &ast);
  if (st == KD_OK) {
    if (kd_source_from_memory("fmt.kd", text, len, &src1) != KD_OK) abort();
    if (kd_fmt_source(src1, quiet_diag(), &text2, &len2, &ast1) != KD_OK)
      fail("fmt(x) does not parse", text, len);
    if (!kd_ast_equal(ast, ast1)) fail("parse(fmt(x)) != parse(x)", text, len);
    if (!same_comments(ast, ast1)) fail("fmt(x) lost or changed a comment", text, len);
    if (len2 != len || memcmp(text, text2, len)) fail("fmt(fmt(x)) != fmt(x)", text, len);
  } else if (st != KD_ERR_SYNTAX) {
    abort(); /* out of memory or a bug: a fuzz input is never anything else */
  }
  free(text);
  free(text2);
  kd_ast_free(ast);
  kd_ast_free(ast1);
  kd_diag_flush(quiet_diag()); /* it may still point into the sources */
  kd_source_free(src);
  kd_source_free(src1);
  return 0;
}
