/* Training metrics as JSON lines: one object per line, flushed as it is
 * written, so `tail -f` and a crashed run both see every finished step.
 *
 *   {"type":"step","step":10,"loss":2.5,"lr":0.001,"tokens_per_s":51200,"grad_norm":0.75}
 *   {"type":"eval","step":200,"val_loss":2.31}
 *
 * Numbers are printed with 9 significant digits (a float32 round-trips);
 * JSON has no NaN or infinity, so a value that is not finite is null.
 * Strings are escaped per RFC 8259 (quote, backslash, control characters);
 * other bytes, UTF-8 included, pass through. */
#ifndef KD_METRICS_H
#define KD_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "status.h"

typedef enum kd_field_kind { KD_FIELD_INT, KD_FIELD_NUM, KD_FIELD_STR } kd_field_kind;

typedef struct kd_field {
  const char *key;
  kd_field_kind kind;
  int64_t i;       /* KD_FIELD_INT */
  double num;      /* KD_FIELD_NUM */
  const char *str; /* KD_FIELD_STR */
} kd_field;

typedef struct kd_metrics kd_metrics;

/* Creates (or, with append, extends: a resumed run) the file at path. */
kd_status kd_metrics_open(const char *path, int append, kd_metrics **out, char *err, size_t errlen);
/* Closes the file; KD_ERR_IO if an earlier write or the close failed. */
kd_status kd_metrics_close(kd_metrics *m, char *err, size_t errlen);

/* One object with the given fields, in order, and a newline; flushed. */
kd_status kd_metrics_write(kd_metrics *m, const kd_field *fields, int n);
kd_status kd_metrics_step(kd_metrics *m, int64_t step, double loss, double lr, double tokens_per_s,
                          double grad_norm);
kd_status kd_metrics_eval(kd_metrics *m, int64_t step, double val_loss);

/* s as a JSON string literal, quotes included. */
void kd_json_write_string(FILE *f, const char *s);

#endif /* KD_METRICS_H */
