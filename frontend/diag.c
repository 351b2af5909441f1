/* Source files and diagnostics (diag.h describes the printed format).
 *
 * A diagnostic is a header line, the source line it points into, and a caret
 * line underneath. The source line is echoed byte for byte except where that
 * would move the caret: control bytes and bytes that are not valid UTF-8 are
 * shown as '?', tabs stay tabs (the caret line copies them), and one UTF-8
 * character takes one column in the caret line. A line too long to read is
 * cut to a window around the caret. */
#include "diag.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Errors printed per file before the rest are only counted. */
#define KD_DIAG_MAX_ERRORS 20
/* Source lines longer than this are cut to a window around the caret... */
#define KD_DIAG_MAX_LINE 200
/* ...that starts this many bytes before it. */
#define KD_DIAG_WINDOW_BEFORE 80

struct kd_diag {
  FILE *out;
  int errors, warnings;
  const kd_source *file; /* the file the per-file cap counts for */
  int file_errors;       /* errors reported in `file` */
  int suppressed;        /* errors in `file` past the cap, not printed */
  bool muted;            /* the last error was suppressed: so are its notes */
};

/* ---- sources ----------------------------------------------------------- */

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

/* Takes ownership of text (len bytes plus a NUL) and builds the line table. */
static kd_status source_new(const char *name, char *text, size_t len, kd_source **out) {
  kd_source *src = calloc(1, sizeof *src);
  size_t nlines = 1;
  for (size_t i = 0; i < len; i++) nlines += text[i] == '\n';
  if (src) src->line_start = malloc(nlines * sizeof *src->line_start);
  if (src) src->path = dup_str(name);
  if (!src || !src->line_start || !src->path) {
    free(text);
    kd_source_free(src);
    return KD_ERR_NOMEM;
  }
  src->text = text;
  src->len = len;
  src->line_start[src->nlines++] = 0;
  for (size_t i = 0; i < len; i++)
    if (text[i] == '\n') src->line_start[src->nlines++] = i + 1;
  *out = src;
  return KD_OK;
}

kd_status kd_source_from_memory(const char *name, const char *data, size_t len,
                                kd_source **out) {
  *out = NULL;
  /* Columns are ints: a larger text could not be located. */
  if (len > INT_MAX) return KD_ERR_INVALID;
  char *text = malloc(len + 1);
  if (!text) return KD_ERR_NOMEM;
  if (len) memcpy(text, data, len);
  text[len] = '\0';
  return source_new(name, text, len, out);
}

kd_status kd_source_load(const char *path, kd_source **out, char *errbuf, size_t errlen) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errbuf) snprintf(errbuf, errlen, "cannot open '%s': %s", path, strerror(errno));
    return KD_ERR_IO;
  }
  /* Read in growing chunks rather than trusting ftell: path may be a pipe. */
  size_t len = 0, cap = 1 << 16;
  char *text = malloc(cap);
  int err = 0;
  while (text) {
    if (cap - len < 2) {
      char *bigger = cap <= INT_MAX ? realloc(text, cap * 2) : NULL;
      if (!bigger) {
        err = cap > INT_MAX ? EFBIG : ENOMEM;
        break;
      }
      text = bigger;
      cap *= 2;
    }
    size_t n = fread(text + len, 1, cap - len - 1, f);
    len += n;
    if (n == 0) {
      if (ferror(f)) err = errno ? errno : EIO;
      break;
    }
  }
  fclose(f);
  if (!text || err) {
    if (errbuf) snprintf(errbuf, errlen, "cannot read '%s': %s", path, strerror(text ? err : ENOMEM));
    free(text);
    return text && err != ENOMEM ? KD_ERR_IO : KD_ERR_NOMEM;
  }
  if (len > INT_MAX) {
    if (errbuf) snprintf(errbuf, errlen, "cannot read '%s': file too large", path);
    free(text);
    return KD_ERR_IO;
  }
  text[len] = '\0';
  return source_new(path, text, len, out);
}

void kd_source_free(kd_source *src) {
  if (!src) return;
  free(src->path);
  free(src->text);
  free(src->line_start);
  free(src);
}

/* ---- the echoed line and the caret ---------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when there is none. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  size_t len;
  unsigned min;
  if (s[0] >= 0xc2 && s[0] <= 0xdf) len = 2, min = 0x80;
  else if (s[0] >= 0xe0 && s[0] <= 0xef) len = 3, min = 0x800;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4) len = 4, min = 0x10000;
  else return 0;
  if (len > n) return 0;
  unsigned cp = s[0] & (0x3f >> (len - 1));
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  return cp >= min && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) ? len : 0;
}

/* One column of the echoed line: its byte length and how it prints. */
typedef struct glyph {
  size_t len;
  char show; /* 0: print the bytes as they are */
} glyph;

static glyph glyph_at(const unsigned char *s, size_t n) {
  if (s[0] == '\t' || (s[0] >= 0x20 && s[0] < 0x7f)) return (glyph){1, 0};
  if (s[0] < 0x80) return (glyph){1, '?'};
  size_t len = utf8_len(s, n);
  return len ? (glyph){len, 0} : (glyph){1, '?'};
}

/* Prints the line (len bytes) and, under it, a caret at byte c0 and tildes
 * to byte c1; a long line is cut to a window around c0. */
static void print_excerpt(FILE *out, int width, int lineno, const unsigned char *line,
                          size_t len, size_t c0, size_t c1) {
  size_t from = 0, to = len;
  if (len > KD_DIAG_MAX_LINE) {
    from = c0 > KD_DIAG_WINDOW_BEFORE ? c0 - KD_DIAG_WINDOW_BEFORE : 0;
    to = from + KD_DIAG_MAX_LINE;
    if (to > len) to = len;
  }
  /* Keep the window on character boundaries so no sequence is split. */
  while (from > 0 && (line[from] & 0xc0) == 0x80) from--;
  while (to < len && (line[to] & 0xc0) == 0x80) to++;

  fprintf(out, "%*d | %s", width, lineno, from > 0 ? "..." : "");
  for (size_t i = from; i < to;) {
    glyph g = glyph_at(line + i, to - i);
    if (g.show) fputc(g.show, out);
    else fwrite(line + i, 1, g.len, out);
    i += g.len;
  }
  fprintf(out, "%s\n", to < len ? "..." : "");

  fprintf(out, "%*s | %s", width, "", from > 0 ? "   " : "");
  for (size_t i = from; i < to && i < c0;) {
    glyph g = glyph_at(line + i, to - i);
    fputc(line[i] == '\t' ? '\t' : ' ', out);
    i += g.len;
  }
  fputc('^', out);
  /* The caret covers the first column of the range, tildes the rest. */
  if (c0 < to) {
    size_t i = c0 + glyph_at(line + c0, to - c0).len;
    while (i < to && i < c1) {
      fputc('~', out);
      i += glyph_at(line + i, to - i).len;
    }
  }
  fputc('\n', out);
}

static void print_source_line(FILE *out, kd_loc loc) {
  const kd_source *src = loc.src;
  if (loc.first_line < 1 || (size_t)loc.first_line > src->nlines) return;
  size_t start = src->line_start[loc.first_line - 1];
  size_t end = start;
  while (end < src->len && src->text[end] != '\n') end++;
  size_t len = end - start;
  /* A CRLF file's '\r' is not part of the line. */
  if (len > 0 && src->text[end - 1] == '\r') len--;
  size_t c0 = loc.first_column > 1 ? (size_t)loc.first_column - 1 : 0;
  if (c0 > len) c0 = len;
  size_t c1 = len; /* a multi-line range underlines to the end of its first line */
  if (loc.last_line == loc.first_line)
    c1 = loc.last_column > 1 ? (size_t)loc.last_column - 1 : 0;
  if (c1 > len) c1 = len;

  int width = 5; /* "    3 | ", as GCC 9 prints it */
  for (int n = loc.first_line; n >= 10000; n /= 10) width++;
  print_excerpt(out, width, loc.first_line, (const unsigned char *)src->text + start, len, c0,
                c1);
}

/* ---- reporting -------------------------------------------------------- */

kd_diag *kd_diag_new(FILE *out) {
  kd_diag *d = calloc(1, sizeof *d);
  if (d) d->out = out;
  return d;
}

/* Says how many errors of the current file went unprinted. */
static void flush_suppressed(kd_diag *d) {
  if (d->suppressed > 0) {
    fprintf(d->out, "%s: %d more error%s not shown\n", d->file ? d->file->path : "kdc",
            d->suppressed, d->suppressed == 1 ? "" : "s");
    fflush(d->out);
  }
  d->suppressed = 0;
}

void kd_diag_flush(kd_diag *d) {
  if (!d) return;
  flush_suppressed(d);
  /* The source may be freed next and its address reused by another file,
   * which must start a fresh per-file count. */
  d->file = NULL;
  d->file_errors = 0;
}

void kd_diag_free(kd_diag *d) {
  if (!d) return;
  flush_suppressed(d);
  free(d);
}

static const char *level_name(kd_diag_level level) {
  switch (level) {
  case KD_DIAG_ERROR: return "error";
  case KD_DIAG_WARNING: return "warning";
  case KD_DIAG_NOTE: return "note";
  }
  return "error";
}

/* Applies the per-file cap; true when this diagnostic is to be printed. */
static bool admit(kd_diag *d, kd_diag_level level, const kd_source *src) {
  if (src != d->file) {
    flush_suppressed(d);
    d->file = src;
    d->file_errors = 0;
  }
  switch (level) {
  case KD_DIAG_ERROR:
    d->errors++;
    d->muted = ++d->file_errors > KD_DIAG_MAX_ERRORS;
    d->suppressed += d->muted;
    return !d->muted;
  case KD_DIAG_WARNING:
    d->warnings++;
    d->muted = false;
    return true;
  case KD_DIAG_NOTE:
    return !d->muted;
  }
  return true;
}

void kd_diag_report(kd_diag *d, kd_diag_level level, kd_loc loc, const char *fmt, ...) {
  if (!admit(d, level, loc.src)) return;
  if (loc.src)
    fprintf(d->out, "%s:%d:%d: %s: ", loc.src->path, loc.first_line, loc.first_column,
            level_name(level));
  else
    fprintf(d->out, "kdc: %s: ", level_name(level));
  va_list ap;
  va_start(ap, fmt);
  vfprintf(d->out, fmt, ap);
  va_end(ap);
  fputc('\n', d->out);
  if (loc.src) print_source_line(d->out, loc);
  fflush(d->out);
}

int kd_diag_error_count(const kd_diag *d) { return d->errors; }
int kd_diag_warning_count(const kd_diag *d) { return d->warnings; }
