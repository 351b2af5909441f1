#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

struct kd_metrics {
  FILE *f;
  char *path;
};

kd_status kd_metrics_open(const char *path, int append, kd_metrics **out, char *err, size_t errlen) {
  *out = NULL;
  kd_metrics *m = calloc(1, sizeof *m);
  size_t n = strlen(path) + 1;
  if (m) m->path = malloc(n);
  if (!m || !m->path) {
    free(m);
    return kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
  }
  memcpy(m->path, path, n);
  m->f = fopen(path, append ? "a" : "w");
  if (!m->f) {
    int e = errno;
    free(m->path);
    free(m);
    return kd_errf(err, errlen, KD_ERR_IO, "%s: %s", path, strerror(e));
  }
  *out = m;
  return KD_OK;
}

kd_status kd_metrics_close(kd_metrics *m, char *err, size_t errlen) {
  if (!m) return KD_OK;
  int bad = ferror(m->f);
  bad |= fclose(m->f) != 0;
  kd_status s = bad ? kd_errf(err, errlen, KD_ERR_IO, "%s: write failed", m->path) : KD_OK;
  free(m->path);
  free(m);
  return s;
}

void kd_json_write_string(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    case '\b': fputs("\\b", f); break;
    case '\f': fputs("\\f", f); break;
    default:
      if (*p < 0x20) fprintf(f, "\\u%04x", *p);
      else fputc(*p, f);
    }
  }
  fputc('"', f);
}

kd_status kd_metrics_write(kd_metrics *m, const kd_field *fields, int n) {
  fputc('{', m->f);
  for (int i = 0; i < n; i++) {
    const kd_field *fd = &fields[i];
    if (i) fputc(',', m->f);
    kd_json_write_string(m->f, fd->key);
    fputc(':', m->f);
    switch (fd->kind) {
    case KD_FIELD_INT: fprintf(m->f, "%" PRId64, fd->i); break;
    case KD_FIELD_NUM:
      if (isfinite(fd->num)) fprintf(m->f, "%.9g", fd->num);
      else fputs("null", m->f);
      break;
    case KD_FIELD_STR: kd_json_write_string(m->f, fd->str ? fd->str : ""); break;
    }
  }
  fputs("}\n", m->f);
  return fflush(m->f) != 0 || ferror(m->f) ? KD_ERR_IO : KD_OK;
}

kd_status kd_metrics_step(kd_metrics *m, int64_t step, double loss, double lr, double tokens_per_s,
                          double grad_norm) {
  const kd_field f[] = {
    {.key = "type", .kind = KD_FIELD_STR, .str = "step"},
    {.key = "step", .kind = KD_FIELD_INT, .i = step},
    {.key = "loss", .kind = KD_FIELD_NUM, .num = loss},
    {.key = "lr", .kind = KD_FIELD_NUM, .num = lr},
    {.key = "tokens_per_s", .kind = KD_FIELD_NUM, .num = tokens_per_s},
    {.key = "grad_norm", .kind = KD_FIELD_NUM, .num = grad_norm},
  };
  return kd_metrics_write(m, f, (int)(sizeof f / sizeof f[0]));
}

kd_status kd_metrics_eval(kd_metrics *m, int64_t step, double val_loss) {
  const kd_field f[] = {
    {.key = "type", .kind = KD_FIELD_STR, .str = "eval"},
    {.key = "step", .kind = KD_FIELD_INT, .i = step},
    {.key = "val_loss", .kind = KD_FIELD_NUM, .num = val_loss},
  };
  return kd_metrics_write(m, f, (int)(sizeof f / sizeof f[0]));
}
