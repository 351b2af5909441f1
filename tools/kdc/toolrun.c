/* System tools and files for the commands that link (toolrun.h). */
#define _POSIX_C_SOURCE 200809L
#include "toolrun.h"

#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"

extern char **environ; /* POSIX; declared by <unistd.h> only under _GNU_SOURCE */

int kdc_write_text(const char *cmd, const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f || fputs(text, f) < 0 || fclose(f)) {
    fprintf(stderr, "%s: cannot write %s\n", cmd, path);
    if (f) fclose(f);
    return KDC_EXIT_USER;
  }
  return KDC_EXIT_OK;
}

int kdc_write_bytes(const char *cmd, const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  int bad = !f || fwrite(data, 1, n, f) != n;
  if ((f && fclose(f)) || bad) {
    fprintf(stderr, "%s: cannot write %s\n", cmd, path);
    return KDC_EXIT_USER;
  }
  return KDC_EXIT_OK;
}

bool kdc_join(char *path, size_t n, const char *dir, const char *file) {
  size_t d = strlen(dir), f = strlen(file);
  if (d + 1 + f >= n) return false;
  memcpy(path, dir, d);
  path[d] = '/';
  memcpy(path + d + 1, file, f + 1);
  return true;
}

int kdc_workdir_new(const char *cmd, char *dir, size_t n) {
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !*tmp) tmp = "/tmp";
  if (!kdc_join(dir, n, tmp, "kdc-XXXXXX") || !mkdtemp(dir)) {
    fprintf(stderr, "%s: cannot create a temporary directory in %s: %s\n", cmd, tmp, strerror(errno));
    return KDC_EXIT_USER;
  }
  return KDC_EXIT_OK;
}

void kdc_workdir_free(const char *dir, const char *const *files) {
  char path[4096];
  for (; *files; files++)
    if (kdc_join(path, sizeof path, dir, *files)) remove(path);
  rmdir(dir);
}

int kdc_run_tool(const char *cmd, const char *env, const char *dflt, const char *install,
                 const char *const *args) {
  char words[1024];
  const char *v = getenv(env);
  snprintf(words, sizeof words, "%s", v && *v ? v : dflt);
  char *argv[64];
  int argc = 0;
  for (char *w = strtok(words, " \t"); w && argc < 16; w = strtok(NULL, " \t")) argv[argc++] = w;
  if (argc == 0) argv[argc++] = (char *)dflt;
  for (; *args && argc < 63; args++) argv[argc++] = (char *)*args;
  argv[argc] = NULL;
  pid_t pid;
  int err = posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ), status = 0;
  if (err) {
    fprintf(stderr, "%s: cannot run '%s' (%s $%s): %s\n  install %s, or set %s to one\n", cmd,
            argv[0], v && *v ? "from" : "the default when no", env, strerror(err), install, env);
    return KDC_EXIT_USER;
  }
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return KDC_EXIT_USER;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return KDC_EXIT_OK;
  fprintf(stderr, "%s: '%s' failed (%s %d)\n", cmd, argv[0],
          WIFEXITED(status) ? "exit status" : "signal",
          WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
  return KDC_EXIT_USER;
}

int kdc_finish_output(const char *cmd, int rc, const char *tmp, const char *out) {
  if (!rc && rename(tmp, out)) {
    fprintf(stderr, "%s: cannot write %s: %s\n", cmd, out, strerror(errno));
    rc = KDC_EXIT_USER;
  }
  if (rc) remove(tmp);
  return rc;
}
