#include "schedule.h"

#include <math.h>
#include <string.h>

#include "fileio.h"

static const char *const kd_schedule_names[] = {"constant", "linear", "cosine"};
_Static_assert(sizeof kd_schedule_names / sizeof kd_schedule_names[0] == KD_SCHED_KIND_COUNT,
               "a name per schedule kind");

const char *kd_schedule_kind_name(kd_schedule_kind k) {
  return (unsigned)k < KD_SCHED_KIND_COUNT ? kd_schedule_names[k] : "?";
}

int kd_schedule_kind_from_name(const char *name) {
  for (int k = 0; k < KD_SCHED_KIND_COUNT; k++)
    if (strcmp(name, kd_schedule_names[k]) == 0) return k;
  return -1;
}

kd_status kd_schedule_check(const kd_lr_schedule *s, char *err, size_t errlen) {
  if ((unsigned)s->kind >= KD_SCHED_KIND_COUNT)
    return kd_errf(err, errlen, KD_ERR_INVALID, "unknown schedule kind %d", (int)s->kind);
  if (!(s->lr > 0) || !isfinite(s->lr))
    return kd_errf(err, errlen, KD_ERR_INVALID, "learning rate %g must be positive", s->lr);
  if (!(s->min_frac >= 0 && s->min_frac <= 1))
    return kd_errf(err, errlen, KD_ERR_INVALID, "minimum fraction %g is not in [0, 1]", s->min_frac);
  if (s->warmup < 0) return kd_errf(err, errlen, KD_ERR_INVALID, "negative warmup");
  if (s->kind != KD_SCHED_CONSTANT && s->total <= s->warmup)
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "%s schedule: %lld steps leave nothing to decay after %lld of warmup",
                   kd_schedule_kind_name(s->kind), (long long)s->total, (long long)s->warmup);
  return KD_OK;
}

double kd_schedule_lr(const kd_lr_schedule *s, int64_t step) {
  if (step < s->warmup) return s->lr * (double)(step + 1) / (double)s->warmup;
  if (s->kind == KD_SCHED_CONSTANT) return s->lr;
  double lo = s->min_frac * s->lr;
  if (step >= s->total) return lo;
  double r = (double)(step - s->warmup) / (double)(s->total - s->warmup); /* [0, 1) */
  double w = s->kind == KD_SCHED_LINEAR ? 1 - r : 0.5 * (1 + cos(3.14159265358979323846 * r));
  return lo + (s->lr - lo) * w;
}
