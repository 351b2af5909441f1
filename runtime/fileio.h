/* File helpers shared by the runtime's readers and writers: formatted error
 * messages into a caller's buffer, and atomic replacement of a file. */
#ifndef KD_FILEIO_H
#define KD_FILEIO_H

#include <stddef.h>
#include <stdio.h>

#include "status.h"

/* snprintf into err (when err and errlen are non-zero); returns st so that
   callers can write `return kd_errf(err, errlen, KD_ERR_FORMAT, ...)`. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
kd_status kd_errf(char *err, size_t errlen, kd_status st, const char *fmt, ...);

/* Writing a file so that readers see either the old file or the whole new
 * one, even across a crash: write a temporary file in the same folder,
 * fflush + fsync it, rename it over the target, fsync the folder. */
typedef struct kd_atomic_file {
  FILE *f;     /* write here between begin and commit */
  char *tmp;   /* the temporary's path */
  char *path;  /* the target */
} kd_atomic_file;

kd_status kd_atomic_begin(kd_atomic_file *af, const char *path, char *err, size_t errlen);
/* Commits (or, if anything failed, removes the temporary); af is released
   either way. A write error noticed by ferror also fails the commit. */
kd_status kd_atomic_commit(kd_atomic_file *af, char *err, size_t errlen);
/* Removes the temporary and releases af; the target is untouched. */
void kd_atomic_abort(kd_atomic_file *af);

/* Creates the folder path and any missing parents (mkdir -p); an existing
   folder is fine. KD_ERR_IO naming the part that could not be made. */
kd_status kd_mkdirs(const char *path, char *err, size_t errlen);

#endif /* KD_FILEIO_H */
