/* Learning-rate schedules: pure functions of the step, so a resumed run
 * gets the same rates as an uninterrupted one.
 *
 * Steps count from 0. During warmup (steps 0 .. warmup-1) the rate rises
 * linearly, lr (step + 1) / warmup, so the first step already moves. Then:
 *   constant: lr
 *   linear:   from lr at step = warmup down to min_frac x lr at step = total
 *   cosine:   min + (lr - min) (1 + cos(pi r)) / 2 with r the same fraction
 *             of the way from warmup to total, min = min_frac x lr
 * and min_frac x lr from step = total on (the decaying kinds). */
#ifndef KD_SCHEDULE_H
#define KD_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum kd_schedule_kind {
  KD_SCHED_CONSTANT, KD_SCHED_LINEAR, KD_SCHED_COSINE, KD_SCHED_KIND_COUNT
} kd_schedule_kind;

const char *kd_schedule_kind_name(kd_schedule_kind k); /* "constant", "linear", "cosine" */
int kd_schedule_kind_from_name(const char *name);      /* the kind, or -1 */

typedef struct kd_lr_schedule {
  kd_schedule_kind kind;
  double lr;        /* the peak rate */
  int64_t warmup;   /* steps of linear warmup; 0 for none */
  int64_t total;    /* the step the decay ends at (the run's length) */
  double min_frac;  /* the rate at the end, as a fraction of lr */
} kd_lr_schedule;

/* KD_ERR_INVALID unless lr > 0, 0 <= min_frac <= 1, warmup >= 0 and, for
   the decaying kinds, total > warmup. */
kd_status kd_schedule_check(const kd_lr_schedule *s, char *err, size_t errlen);

double kd_schedule_lr(const kd_lr_schedule *s, int64_t step);

#endif /* KD_SCHEDULE_H */
