/* Diagnostics printing (diag.h): the header line, the echoed source line and
 * the caret line, with tabs, non-printable bytes, UTF-8, long lines,
 * multi-line ranges, the end of the file, and the per-file error cap. */
#include <stdlib.h>
#include <string.h>

#include "diag.h"
#include "check.h"

static kd_source *source(const char *name, const char *text) {
  kd_source *src = NULL;
  CHECK(kd_source_from_memory(name, text, strlen(text), &src) == KD_OK);
  return src;
}

static kd_loc at(const kd_source *src, int l0, int c0, int l1, int c1) {
  return (kd_loc){src, l0, c0, l1, c1};
}

/* Reports one error at loc and compares everything printed. */
static void check_report(kd_loc loc, const char *want, int line) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  kd_diag *d = kd_diag_new(f);
  kd_error(d, loc, "msg %d", 7);
  kd_diag_free(d);
  fclose(f);
  if (!buf || strcmp(buf, want)) {
    fprintf(stderr, "%s:%d: printed\n%s\nwanted\n%s\n", __FILE__, line, buf ? buf : "", want);
    check_failures++;
  }
  free(buf);
}
#define CHECK_REPORT(loc, want) check_report((loc), (want), __LINE__)

static void test_format(void) {
  kd_source *src = source("a.kd", "x = 1\n\tloss = f(\t studnet)\r\n"
                                  "y = \"\x01\x7f\xff\" # \xce\xbb \xce\xbb z\n"
                                  "a = (1 +\n     2)\n");
  if (!src) return;
  CHECK(src->nlines == 6); /* the empty line after the last newline counts */
  CHECK_REPORT(at(src, 1, 5, 1, 6), "a.kd:1:5: error: msg 7\n"
                                    "    1 | x = 1\n"
                                    "      |     ^\n");
  /* Tabs stay tabs in the caret line, so the caret lines up; the CR of a
   * CRLF line is not echoed. */
  CHECK_REPORT(at(src, 2, 13, 2, 20), "a.kd:2:13: error: msg 7\n"
                                      "    2 | \tloss = f(\t studnet)\n"
                                      "      | \t         \t ^~~~~~~\n");
  /* Control bytes and invalid UTF-8 print as '?'; a UTF-8 character is one
   * column wide in the caret line. */
  CHECK_REPORT(at(src, 3, 16, 3, 19), "a.kd:3:16: error: msg 7\n"
                                      "    3 | y = \"???\" # \xce\xbb \xce\xbb z\n"
                                      "      |               ^~\n");
  /* A range over several lines is underlined to the end of the first. */
  CHECK_REPORT(at(src, 4, 5, 5, 8), "a.kd:4:5: error: msg 7\n"
                                    "    4 | a = (1 +\n"
                                    "      |     ^~~~\n");
  /* An empty range, and one at the end of a line, still get a caret. */
  CHECK_REPORT(at(src, 1, 6, 1, 6), "a.kd:1:6: error: msg 7\n"
                                    "    1 | x = 1\n"
                                    "      |      ^\n");
  /* No source: the program's name stands in. */
  CHECK_REPORT(at(NULL, 0, 0, 0, 0), "kdc: error: msg 7\n");
  kd_source_free(src);
}

static void test_line_numbers(void) {
  char *text = malloc(12345 * 2 + 10);
  if (!text) return;
  size_t n = 0;
  for (int i = 0; i < 12344; i++) text[n++] = '\n';
  memcpy(text + n, "bad\n", 5);
  kd_source *src = source("b.kd", text);
  /* The gutter widens past four digits and stays aligned. */
  if (src)
    CHECK_REPORT(at(src, 12345, 1, 12345, 4), "b.kd:12345:1: error: msg 7\n"
                                              " 12345 | bad\n"
                                              "       | ^~~\n");
  kd_source_free(src);
  free(text);
}

/* A line of 1000 bytes is shown as a window of 200 around the caret. */
static void test_long_line(void) {
  char text[1001];
  memset(text, 'a', 1000);
  text[1000] = '\0';
  memcpy(text + 500, "HERE", 4);
  kd_source *src = source("c.kd", text);
  if (!src) return;
  char want[1024] = "c.kd:1:501: error: msg 7\n    1 | ...";
  size_t w = strlen(want);
  memcpy(want + w, text + 420, 200);
  want[w + 200] = '\0';
  strcat(want, "...\n      |    ");
  for (int i = 0; i < 80; i++) strcat(want, " ");
  strcat(want, "^~~~\n");
  CHECK_REPORT(at(src, 1, 501, 1, 505), want);
  /* Near the start: no leading "...". */
  char want0[1024] = "c.kd:1:1: error: msg 7\n    1 | ";
  size_t w0 = strlen(want0);
  memcpy(want0 + w0, text, 200);
  want0[w0 + 200] = '\0';
  strcat(want0, "...\n      | ^\n");
  CHECK_REPORT(at(src, 1, 1, 1, 2), want0);
  kd_source_free(src);
}

/* Warnings and notes print alike; past 20 errors in a file only a count is
 * kept, and the notes of a suppressed error are suppressed with it. */
static void test_levels_and_cap(void) {
  kd_source *a = source("a.kd", "x\n");
  kd_source *b = source("b.kd", "y\n");
  if (!a || !b) return;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  kd_diag *d = kd_diag_new(f);
  kd_warning(d, at(a, 1, 1, 1, 2), "w");
  kd_note(d, at(a, 1, 1, 1, 2), "n");
  for (int i = 0; i < 25; i++) {
    kd_error(d, at(a, 1, 1, 1, 2), "e%d", i);
    kd_note(d, at(a, 1, 1, 1, 2), "note of e%d", i);
  }
  kd_error(d, at(b, 1, 1, 1, 2), "in b");
  CHECK(kd_diag_error_count(d) == 26 && kd_diag_warning_count(d) == 1);
  kd_diag_free(d);
  fclose(f);
  static const char head[] = "a.kd:1:1: warning: w\n    1 | x\n      | ^\n"
                             "a.kd:1:1: note: n\n    1 | x\n      | ^\n";
  CHECK(buf && !strncmp(buf, head, sizeof head - 1));
  CHECK(buf && strstr(buf, "a.kd:1:1: error: e19\n") && strstr(buf, "note of e19\n"));
  CHECK(buf && !strstr(buf, "e20") && !strstr(buf, "note of e24"));
  CHECK(buf && strstr(buf, "note of e19\n    1 | x\n      | ^\n"
                           "a.kd: 5 more errors not shown\n"
                           "b.kd:1:1: error: in b\n"));
  free(buf);
  kd_source_free(a);
  kd_source_free(b);
}

static void test_load(void) {
  char err[256] = "";
  kd_source *src = (kd_source *)1;
  CHECK(kd_source_load("no/such/file.kd", &src, err, sizeof err) == KD_ERR_IO);
  CHECK(src == NULL && strstr(err, "cannot open 'no/such/file.kd'"));
}

int main(void) {
  test_format();
  test_line_numbers();
  test_long_line();
  test_levels_and_cap();
  test_load();
  return check_exit("test_diag");
}
