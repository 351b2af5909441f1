/* What the commands that run system tools share (compile-loss links loss
 * libraries, build links training binaries): files written whole, a private
 * temporary directory, and a tool run from $ENV or a default. Each prints
 * its error prefixed by `cmd` and returns a KDC_EXIT_* status. */
#ifndef KDC_TOOLRUN_H
#define KDC_TOOLRUN_H

#include <stdbool.h>
#include <stddef.h>

int kdc_write_text(const char *cmd, const char *path, const char *text);
int kdc_write_bytes(const char *cmd, const char *path, const void *data, size_t n);

/* path = dir/file; false when it does not fit in n bytes. */
bool kdc_join(char *path, size_t n, const char *dir, const char *file);

/* A private temporary directory: mkdtemp in $TMPDIR (else /tmp). */
int kdc_workdir_new(const char *cmd, char *dir, size_t n);
/* Removes the listed files (NULL-terminated) from dir, then dir. */
void kdc_workdir_free(const char *dir, const char *const *files);

/* Runs a tool of the system: the words of $env (e.g. CC="ccache gcc"), else
 * dflt, then args (NULL-terminated). 0 when it ran and exited 0; else an
 * error naming it and, when it cannot be found, `install`. */
int kdc_run_tool(const char *cmd, const char *env, const char *dflt, const char *install,
                 const char *const *args);

/* The end of a build into the temporary `tmp`: when rc is 0, renames it over
 * out (a reader sees the old out or the whole new one); otherwise, or when
 * the rename fails, removes it. Returns the final status. */
int kdc_finish_output(const char *cmd, int rc, const char *tmp, const char *out);

#endif /* KDC_TOOLRUN_H */
