/* Tests of `kdc fmt` (frontend/fmt.c).
 *
 *   test_fmt roundtrip DIR...  every .kd file under the DIRs that parses:
 *                              parse(fmt(x)) equals parse(x) (kd_ast_equal),
 *                              fmt(fmt(x)) == fmt(x), and every comment's
 *                              text comes back, in order
 *   test_fmt golden DIR        DIR/NAME.in.kd formats to DIR/NAME.out.kd
 *   test_fmt canonical DIR     every .kd file in DIR (not below) is already canonical
 *
 * Each prints one line per failure and exits 1 if there was any. */
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ast.h"
#include "fmt.h"

static int failures;
static kd_diag *quiet; /* syntax errors of files that are skipped are not news */

#define FAIL(...) (fprintf(stderr, "FAIL: " __VA_ARGS__), fputc('\n', stderr), failures++)

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && !strcmp(s + n - m, suffix);
}

/* Where two texts first differ, for the failure message. */
static void show_diff(const char *want, size_t wn, const char *got, size_t gn) {
  size_t i = 0, line = 1, bol = 0;
  for (; i < wn && i < gn && want[i] == got[i]; i++)
    if (want[i] == '\n') line++, bol = i + 1;
  fprintf(stderr, "  first difference on line %zu:\n  want: %.*s\n  got:  %.*s\n", line,
          (int)strcspn(want + bol, "\n"), want + bol, (int)strcspn(got + bol, "\n"),
          got + bol);
}

/* A comment's text as fmt writes it: without trailing blanks. */
static size_t comment_len(const char *s) {
  size_t n = strlen(s);
  while (n > 0 && strchr(" \t\r\f\v", s[n - 1])) n--;
  return n;
}

static bool comments_equal(const kd_ast *x, const kd_ast *y) {
  if (x->ncomments != y->ncomments) return false;
  for (size_t i = 0; i < x->ncomments; i++) {
    size_t n = comment_len(x->comments[i].text);
    if (n != comment_len(y->comments[i].text) ||
        memcmp(x->comments[i].text, y->comments[i].text, n))
      return false;
  }
  return true;
}

/* Formats src; NULL when it does not parse (or on failure, counted). */
static char *format(const kd_source *src, size_t *len, kd_ast **ast) {
  char *text = NULL;
  kd_status st = kd_fmt_source(src, quiet, &text, len, ast);
  if (st != KD_OK && st != KD_ERR_SYNTAX) FAIL("%s: fmt: %s", src->path, kd_status_str(st));
  return st == KD_OK ? text : NULL;
}

/* ---- roundtrip ------------------------------------------------------------ */

static int nparsed, nskipped;

static void roundtrip_file(const char *path) {
  char err[512];
  kd_source *src = NULL, *src1 = NULL;
  kd_ast *ast = NULL, *ast1 = NULL;
  char *text = NULL, *text2 = NULL;
  size_t len = 0, len2 = 0;
  if (kd_source_load(path, &src, err, sizeof err) != KD_OK) {
    FAIL("%s", err);
    return;
  }
  if (!(text = format(src, &len, &ast))) {
    nskipped++;
    goto done;
  }
  nparsed++;
  if (kd_source_from_memory(path, text, len, &src1) != KD_OK) {
    FAIL("%s: out of memory", path);
    goto done;
  }
  if (!(text2 = format(src1, &len2, &ast1))) {
    FAIL("%s: the formatted text does not parse:\n%s", path, text);
    kd_diag *loud = kd_diag_new(stderr);
    kd_ast *junk = NULL;
    if (loud && kd_parse(src1, loud, &junk) == KD_OK) kd_ast_free(junk);
    kd_diag_free(loud);
    goto done;
  }
  if (!kd_ast_equal(ast, ast1)) FAIL("%s: formatting changed the syntax tree", path);
  if (len2 != len || memcmp(text, text2, len)) {
    FAIL("%s: formatting is not idempotent", path);
    show_diff(text, len, text2, len2);
  }
  if (!comments_equal(ast, ast1)) FAIL("%s: comments were lost or changed", path);
done:
  free(text);
  free(text2);
  kd_ast_free(ast);
  kd_ast_free(ast1);
  kd_diag_flush(quiet); /* it may still point into the sources */
  kd_source_free(src);
  kd_source_free(src1);
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Calls fn on every .kd file under dir (in name order, recursing if asked). */
static void walk(const char *dir, bool recurse, void (*fn)(const char *)) {
  DIR *d = opendir(dir);
  if (!d) {
    FAIL("cannot open folder %s", dir);
    return;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 32;
      char **p = realloc(names, cap * sizeof *names);
      if (!p) break;
      names = p;
    }
    size_t len = strlen(dir) + strlen(e->d_name) + 2;
    if (!(names[n] = malloc(len))) break;
    snprintf(names[n++], len, "%s/%s", dir, e->d_name);
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, cmp_names);
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    if (stat(names[i], &st) == 0 && S_ISDIR(st.st_mode)) {
      if (recurse) walk(names[i], true, fn);
    } else if (ends_with(names[i], ".kd")) {
      fn(names[i]);
    }
    free(names[i]);
  }
  free(names);
}

/* ---- golden and canonical -------------------------------------------------- */

static void golden_file(const char *path) {
  if (!ends_with(path, ".in.kd")) return;
  char err[512], want_path[4096];
  snprintf(want_path, sizeof want_path, "%.*s.out.kd", (int)(strlen(path) - 6), path);
  kd_source *src = NULL, *want = NULL;
  char *text = NULL;
  size_t len = 0;
  if (kd_source_load(path, &src, err, sizeof err) != KD_OK ||
      kd_source_load(want_path, &want, err, sizeof err) != KD_OK) {
    FAIL("%s", err);
  } else if (!(text = format(src, &len, NULL))) {
    FAIL("%s: does not parse", path);
  } else if (len != want->len || memcmp(text, want->text, len)) {
    FAIL("%s: does not format to %s", path, want_path);
    show_diff(want->text, want->len, text, len);
  } else {
    nparsed++;
  }
  free(text);
  kd_diag_flush(quiet); /* it may still point into the sources */
  kd_source_free(src);
  kd_source_free(want);
}

static void canonical_file(const char *path) {
  char err[512];
  kd_source *src = NULL;
  char *text = NULL;
  size_t len = 0;
  if (kd_source_load(path, &src, err, sizeof err) != KD_OK) {
    FAIL("%s", err);
  } else if (!(text = format(src, &len, NULL))) {
    FAIL("%s: does not parse", path);
  } else if (len != src->len || memcmp(text, src->text, len)) {
    FAIL("%s: not in the canonical layout (run kdc fmt on it)", path);
    show_diff(text, len, src->text, src->len);
  } else {
    nparsed++;
  }
  free(text);
  kd_diag_flush(quiet); /* it may still point into the sources */
  kd_source_free(src);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_fmt roundtrip|golden|canonical DIR...\n");
    return 2;
  }
  FILE *null = fopen("/dev/null", "w");
  quiet = kd_diag_new(null ? null : stderr);
  const char *mode = argv[1];
  for (int i = 2; i < argc; i++) {
    if (!strcmp(mode, "roundtrip")) walk(argv[i], true, roundtrip_file);
    else if (!strcmp(mode, "golden")) walk(argv[i], false, golden_file);
    else if (!strcmp(mode, "canonical")) walk(argv[i], false, canonical_file);
    else return fprintf(stderr, "test_fmt: unknown mode '%s'\n", mode), 2;
  }
  /* A test that checked nothing must not pass: every mode has files to see. */
  if (nparsed == 0) FAIL("no .kd file parsed under the given folders");
  printf("%s: %d files checked, %d skipped (syntax errors), %d failures\n", mode, nparsed,
         nskipped, failures);
  kd_diag_free(quiet);
  if (null) fclose(null);
  return failures ? 1 : 0;
}
