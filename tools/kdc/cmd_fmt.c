/* kdc fmt [--check] FILE...: rewrites .kd files in the canonical layout.
 *
 * A file is replaced atomically: the new text goes to a temporary file in the
 * same folder, which is flushed to disk and renamed over the original, so a
 * crash leaves either the old file or the new one, never half of either. A
 * file that does not parse is never touched. */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ast.h"
#include "commands.h"
#include "fmt.h"

static void fmt_usage(FILE *out) {
  fprintf(out,
          "usage: kdc fmt [--check] [FILE...]\n"
          "\n"
          "Rewrites each .kd FILE in place in the canonical layout: 2-space indent, one\n"
          "statement or setting per line, single spaces around '=' and binary operators,\n"
          "the fewest parentheses, one blank line between top-level items. Comments are\n"
          "kept. A file with syntax errors is reported and left untouched. With no FILE,\n"
          "or FILE '-', reads standard input and writes standard output.\n"
          "\n"
          "options:\n"
          "  --check     change nothing; print the names of the files that would change\n"
          "              and exit with status 1 if there is any\n"
          "  -h, --help  print this help\n"
          "\n"
          "exit status: 0 success, 1 a syntax error, an I/O error or (with --check) a file\n"
          "that would change, 2 a usage error.\n");
}

/* Reads all of stdin into memory. */
static char *read_stdin(size_t *len) {
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  if (!buf) return NULL;
  for (;;) {
    if (n == cap) {
      char *p = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
      if (!p) {
        free(buf);
        return NULL;
      }
      buf = p;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n, stdin);
    n += got;
    if (got == 0) break;
  }
  if (ferror(stdin)) {
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

static bool write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= (size_t)w;
  }
  return true;
}

/* Replaces the file at `path` (through a symbolic link, the file it names)
 * with `text`: temp file in the same folder, fsync, same mode, rename. */
static bool replace_file(const char *path, const char *text, size_t len) {
  char *real = realpath(path, NULL);
  if (!real) return false;
  struct stat st;
  const char *slash = strrchr(real, '/');
  size_t dirlen = slash ? (size_t)(slash - real) : 0;
  const char *base = slash ? slash + 1 : real;
  size_t tmplen = dirlen + strlen(base) + 32;
  char *tmp = malloc(tmplen);
  bool ok = false;
  int fd = -1;
  if (!tmp || stat(real, &st) != 0) goto done;
  snprintf(tmp, tmplen, "%.*s/.%s.kdfmt-XXXXXX", (int)dirlen, real, base);
  fd = mkstemp(tmp);
  if (fd < 0) goto done;
  ok = write_all(fd, text, len) && fsync(fd) == 0 && fchmod(fd, st.st_mode & 07777) == 0;
  ok = close(fd) == 0 && ok;
  ok = ok && rename(tmp, real) == 0;
  if (!ok) {
    int saved = errno;
    unlink(tmp);
    errno = saved;
    goto done;
  }
  /* Make the rename itself durable. */
  tmp[dirlen ? dirlen : 1] = '\0';
  int dfd = open(tmp, O_RDONLY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
done:
  free(tmp);
  free(real);
  return ok;
}

enum { FMT_SAME, FMT_CHANGED, FMT_FAILED };

/* Formats one file (or stdin for "-"); returns FMT_SAME, FMT_CHANGED or FMT_FAILED. */
static int fmt_file(const char *path, bool check, kd_diag *diag) {
  bool is_stdin = !strcmp(path, "-");
  kd_source *src = NULL;
  char err[512];
  kd_status st;
  if (is_stdin) {
    size_t n = 0;
    char *data = read_stdin(&n);
    if (!data) {
      fprintf(stderr, "kdc: fmt: cannot read standard input\n");
      return FMT_FAILED;
    }
    st = kd_source_from_memory("<stdin>", data, n, &src);
    free(data);
    if (st != KD_OK) {
      fprintf(stderr, "kdc: fmt: %s\n", kd_status_str(st));
      return FMT_FAILED;
    }
  } else if (kd_source_load(path, &src, err, sizeof err) != KD_OK) {
    fprintf(stderr, "kdc: fmt: %s\n", err);
    return FMT_FAILED;
  }

  char *text = NULL;
  size_t len = 0;
  st = kd_fmt_source(src, diag, &text, &len, NULL);
  int result = FMT_FAILED;
  if (st == KD_OK) {
    bool same = len == src->len && !memcmp(text, src->text, len);
    result = same ? FMT_SAME : FMT_CHANGED;
    if (check) {
      if (!same) printf("%s\n", is_stdin ? "<stdin>" : path);
    } else if (is_stdin) {
      fwrite(text, 1, len, stdout);
    } else if (!same && !replace_file(path, text, len)) {
      fprintf(stderr, "kdc: fmt: cannot write '%s': %s\n", path, strerror(errno));
      result = FMT_FAILED;
    }
  } else if (st != KD_ERR_SYNTAX) {
    fprintf(stderr, "kdc: fmt: %s: %s\n", path, kd_status_str(st));
  }
  free(text);
  kd_diag_flush(diag); /* it may still point into src */
  kd_source_free(src);
  return result;
}

int kdc_cmd_fmt(int argc, char **argv) {
  bool check = false, options = true;
  int nfiles = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!options || a[0] != '-' || !strcmp(a, "-")) {
      nfiles++;
    } else if (!strcmp(a, "--")) {
      options = false;
    } else if (!strcmp(a, "--check")) {
      check = true;
    } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      fmt_usage(stdout);
      return KDC_EXIT_OK;
    } else {
      fprintf(stderr, "kdc: fmt: unknown option '%s'\n", a);
      fmt_usage(stderr);
      return KDC_EXIT_USAGE;
    }
  }

  kd_diag *diag = kd_diag_new(stderr);
  if (!diag) {
    fprintf(stderr, "kdc: fmt: out of memory\n");
    return KDC_EXIT_USER;
  }
  unsigned seen = 0; /* bit r: some file gave FMT_<r> */
  if (nfiles == 0) seen |= 1u << fmt_file("-", check, diag);
  options = true;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (options && a[0] == '-' && strcmp(a, "-"))
      options = strcmp(a, "--") != 0; /* an option, checked above */
    else
      seen |= 1u << fmt_file(a, check, diag);
  }
  kd_diag_free(diag);
  fflush(stdout);
  bool failed = seen & (1u << FMT_FAILED), changed = seen & (1u << FMT_CHANGED);
  return failed || (check && changed) ? KDC_EXIT_USER : KDC_EXIT_OK;
}
