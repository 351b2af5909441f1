/* Source files and diagnostics.
 *
 * Every diagnostic is printed as
 *
 *   file.kd:LINE:COL: error: message
 *       3 |   loss = fkl(softmax(teacher.logits), studnet)
 *         |                                       ^~~~~~~
 *
 * Lines and columns are 1-based and count bytes. A location spans
 * [first_column, last_column) on first_line..last_line (last_column is one
 * past the last byte, as in bison's own location class). */
#ifndef KD_DIAG_H
#define KD_DIAG_H

#include <stddef.h>
#include <stdio.h>

#include "../runtime/status.h"

typedef struct kd_source {
  char *path;         /* as the user named it; owned */
  char *text;         /* contents plus a terminating NUL (may hold other NULs); owned */
  size_t len;         /* bytes of text, without the terminating NUL */
  size_t *line_start; /* byte offset of each line's first byte; owned */
  size_t nlines;
} kd_source;

/* Field names match bison's default YYLTYPE so YYLLOC_DEFAULT works as is. */
typedef struct kd_loc {
  const kd_source *src; /* NULL: no source location (command-line input, prelude) */
  int first_line, first_column;
  int last_line, last_column;
} kd_loc;

/* Reads a whole file. On failure returns KD_ERR_IO and, if errbuf is given,
 * a message such as "cannot open 'x.kd': No such file or directory". */
kd_status kd_source_load(const char *path, kd_source **out, char *errbuf, size_t errlen);
/* Wraps bytes already in memory (the fuzzer, the embedded prelude). */
kd_status kd_source_from_memory(const char *name, const char *data, size_t len,
                                kd_source **out);
void kd_source_free(kd_source *src);

typedef enum kd_diag_level { KD_DIAG_ERROR, KD_DIAG_WARNING, KD_DIAG_NOTE } kd_diag_level;

/* Collects and prints diagnostics; counts errors and warnings. */
typedef struct kd_diag kd_diag;

kd_diag *kd_diag_new(FILE *out);
void kd_diag_free(kd_diag *d);
/* Prints one diagnostic. A location with src == NULL prints "kdc: level: message". */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
void kd_diag_report(kd_diag *d, kd_diag_level level, kd_loc loc, const char *fmt, ...);
int kd_diag_error_count(const kd_diag *d);
/* At most 20 errors per file are printed; the rest are counted, and one line
 * says how many when the next file's first diagnostic comes, at kd_diag_flush
 * and at kd_diag_free. */
void kd_diag_flush(kd_diag *d);
int kd_diag_warning_count(const kd_diag *d);

#define kd_error(d, loc, ...) kd_diag_report((d), KD_DIAG_ERROR, (loc), __VA_ARGS__)
#define kd_warning(d, loc, ...) kd_diag_report((d), KD_DIAG_WARNING, (loc), __VA_ARGS__)
#define kd_note(d, loc, ...) kd_diag_report((d), KD_DIAG_NOTE, (loc), __VA_ARGS__)

#endif /* KD_DIAG_H */
