/* The prelude: the .kd files of prelude/ (the standard divergences), embedded
 * in the binary at build time by prelude/embed.cmake and imported implicitly
 * before every user file (see check.c). */
#ifndef KD_PRELUDE_H
#define KD_PRELUDE_H

#include <stddef.h>

typedef struct kd_prelude_file {
  const char *name; /* "prelude/core.kd": the name diagnostics print */
  const char *data; /* the file's bytes (not NUL-terminated) */
  size_t len;
} kd_prelude_file;

/* In file-name order. Defined in the generated prelude_data.c. */
extern const kd_prelude_file kd_prelude_files[];
extern const size_t kd_prelude_nfiles;

#endif /* KD_PRELUDE_H */
