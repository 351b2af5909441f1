#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

kd_status kd_errf(char *err, size_t errlen, kd_status st, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return st;
}

static char *kd_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static void kd_atomic_release(kd_atomic_file *af) {
  free(af->tmp);
  free(af->path);
  memset(af, 0, sizeof *af);
}

kd_status kd_atomic_begin(kd_atomic_file *af, const char *path, char *err, size_t errlen) {
  memset(af, 0, sizeof *af);
  static const char suffix[] = ".tmp.XXXXXX";
  size_t n = strlen(path);
  af->path = kd_strdup(path);
  af->tmp = malloc(n + sizeof suffix);
  if (!af->path || !af->tmp) {
    kd_atomic_release(af);
    return kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
  }
  memcpy(af->tmp, path, n);
  memcpy(af->tmp + n, suffix, sizeof suffix);
  int fd = mkstemp(af->tmp);
  if (fd < 0) {
    int e = errno;
    kd_atomic_release(af);
    return kd_errf(err, errlen, KD_ERR_IO, "%s: cannot create a temporary file: %s", path,
                   strerror(e));
  }
  /* mkstemp makes the file 0600; give it the mode a plain fopen would.
     (Reading the umask means setting it; this is a short window.) */
  mode_t mask = umask(0);
  umask(mask);
  (void)fchmod(fd, 0666 & ~mask);
  af->f = fdopen(fd, "wb");
  if (!af->f) {
    int e = errno;
    close(fd);
    unlink(af->tmp);
    kd_atomic_release(af);
    return kd_errf(err, errlen, KD_ERR_IO, "%s: %s", path, strerror(e));
  }
  return KD_OK;
}

void kd_atomic_abort(kd_atomic_file *af) {
  if (af->f) fclose(af->f);
  if (af->tmp) unlink(af->tmp);
  kd_atomic_release(af);
}

/* fsync the folder holding path, so the rename itself survives a crash. */
static void kd_sync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? malloc((size_t)(slash - path) + 2) : NULL;
  if (slash && !dir) return;
  if (dir) {
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    memcpy(dir, path, n);
    dir[n] = '\0';
  }
  int fd = open(dir ? dir : ".", O_RDONLY);
  free(dir);
  if (fd < 0) return;
  (void)fsync(fd);
  close(fd);
}

kd_status kd_atomic_commit(kd_atomic_file *af, char *err, size_t errlen) {
  errno = 0;
  int failed = ferror(af->f) || fflush(af->f) != 0 || fsync(fileno(af->f)) != 0;
  int e = errno;
  if (fclose(af->f) != 0 && !failed) {
    failed = 1;
    e = errno;
  }
  af->f = NULL;
  if (!failed && rename(af->tmp, af->path) != 0) {
    failed = 1;
    e = errno;
  }
  if (failed) {
    /* ferror alone leaves errno unset: then say what we know. */
    kd_status st = kd_errf(err, errlen, KD_ERR_IO, "%s: write failed: %s", af->path,
                           e ? strerror(e) : "short write");
    kd_atomic_abort(af);
    return st;
  }
  kd_sync_dir(af->path);
  kd_atomic_release(af);
  return KD_OK;
}

kd_status kd_mkdirs(const char *path, char *err, size_t errlen) {
  size_t n = strlen(path);
  char *p = malloc(n + 1);
  if (!p) return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  memcpy(p, path, n + 1);
  kd_status st = KD_OK;
  for (size_t i = 1; i <= n && st == KD_OK; i++) {
    if (p[i] != '/' && p[i] != 0) continue;
    char c = p[i];
    p[i] = 0;
    struct stat sb;
    if (mkdir(p, 0777) && errno != EEXIST)
      st = kd_errf(err, errlen, KD_ERR_IO, "cannot create the folder %s: %s", p, strerror(errno));
    else if (stat(p, &sb) || !S_ISDIR(sb.st_mode))
      st = kd_errf(err, errlen, KD_ERR_IO, "%s is not a folder", p);
    p[i] = c;
  }
  free(p);
  return st;
}
