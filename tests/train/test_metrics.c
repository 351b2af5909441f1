/* Metrics: the exact JSON lines, flushed as they are written, escaping,
 * non-finite numbers as null, and append mode for a resumed run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "metrics.h"
#include "tmpdir.h"

/* The file's contents now, as a string (the writer is still open). */
static char *contents(const char *path) {
  size_t n;
  unsigned char *b = read_bytes(path, &n);
  char *s = malloc(n + 1);
  if (b) memcpy(s, b, n);
  s[b ? n : 0] = '\0';
  free(b);
  return s;
}

static int file_is(const char *path, const char *want) {
  char *got = contents(path);
  int eq = strcmp(got, want) == 0;
  if (!eq) fprintf(stderr, "got:\n%s\nwant:\n%s\n", got, want);
  free(got);
  return eq;
}

int main(void) {
  if (!tmpdir_make()) {
    perror("mkdtemp");
    return 1;
  }
  char err[256], path[512];
  tmpdir_file(path, sizeof path, "metrics.jsonl");
  kd_metrics *m;
  CHECK(kd_metrics_open(path, 0, &m, err, sizeof err) == KD_OK);

  /* Each line is on disk before the next call: no close needed to see it. */
  CHECK(kd_metrics_step(m, 10, 2.5, 0.001, 51200, 0.75) == KD_OK);
  const char *l1 = "{\"type\":\"step\",\"step\":10,\"loss\":2.5,\"lr\":0.001,\"tokens_per_s\":51200,\"grad_norm\":0.75}\n";
  CHECK(file_is(path, l1));
  CHECK(kd_metrics_eval(m, 200, 2.3125) == KD_OK);
  const char *l2 = "{\"type\":\"eval\",\"step\":200,\"val_loss\":2.3125}\n";
  char both[512];
  snprintf(both, sizeof both, "%s%s", l1, l2);
  CHECK(file_is(path, both));

  /* A float32 loss keeps its 9 significant digits; NaN and infinity, which
     JSON cannot say, are null. */
  CHECK(kd_metrics_step(m, 11, (double)1.1f, 1e-4, INFINITY, NAN) == KD_OK);
  char *all = contents(path);
  CHECK(strstr(all, "{\"type\":\"step\",\"step\":11,\"loss\":1.10000002,\"lr\":0.0001,"
                    "\"tokens_per_s\":null,\"grad_norm\":null}\n") != NULL);
  free(all);

  /* Escaping: quote, backslash, the named controls, other controls as
     \u00XX; UTF-8 passes through. */
  kd_field f[] = {
    {.key = "note", .kind = KD_FIELD_STR, .str = "say \"hi\"\\ \n\t\x01 caf\xc3\xa9"},
    {.key = "k\"ey", .kind = KD_FIELD_INT, .i = -5},
  };
  CHECK(kd_metrics_write(m, f, 2) == KD_OK);
  all = contents(path);
  CHECK(strstr(all, "{\"note\":\"say \\\"hi\\\"\\\\ \\n\\t\\u0001 caf\xc3\xa9\",\"k\\\"ey\":-5}\n") != NULL);
  /* One object per line: four lines, no newline inside any of them. */
  int lines = 0;
  for (char *p = all; *p; p++) lines += *p == '\n';
  CHECK(lines == 4);
  free(all);
  CHECK(kd_metrics_close(m, err, sizeof err) == KD_OK);

  /* A resumed run appends; a fresh one truncates. */
  CHECK(kd_metrics_open(path, 1, &m, err, sizeof err) == KD_OK);
  CHECK(kd_metrics_eval(m, 400, 2.0) == KD_OK);
  CHECK(kd_metrics_close(m, err, sizeof err) == KD_OK);
  all = contents(path);
  CHECK(strstr(all, l1) == all && strstr(all, "{\"type\":\"eval\",\"step\":400,\"val_loss\":2}\n") != NULL);
  free(all);
  CHECK(kd_metrics_open(path, 0, &m, err, sizeof err) == KD_OK);
  CHECK(kd_metrics_close(m, err, sizeof err) == KD_OK);
  CHECK(file_is(path, ""));

  char missing[512];
  tmpdir_file(missing, sizeof missing, "no/such/dir.jsonl");
  CHECK(kd_metrics_open(missing, 0, &m, err, sizeof err) == KD_ERR_IO && m == NULL);
  tmpdir_remove();
  return check_exit("test_metrics");
}
