/* Learning-rate schedules: values pinned at the key steps (computed by
 * hand from the formulas in schedule.h), monotone decay, bad settings. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "schedule.h"

/* The values are short decimal expressions of the formulas; 1e-12
   relative covers double rounding and nothing else. */
static int near(double got, double want) {
  int ok = fabs(got - want) <= 1e-12 * fabs(want);
  if (!ok) fprintf(stderr, "got %.17g, want %.17g\n", got, want);
  return ok;
}

int main(void) {
  char err[256];
  /* lr 1e-3, 10 warmup steps, decay to 0.1 x lr at step 110. */
  kd_lr_schedule cos_s = {KD_SCHED_COSINE, 1e-3, 10, 110, 0.1};
  CHECK(kd_schedule_check(&cos_s, err, sizeof err) == KD_OK);
  CHECK(near(kd_schedule_lr(&cos_s, 0), 1e-4));   /* (0 + 1) / 10 */
  CHECK(near(kd_schedule_lr(&cos_s, 4), 5e-4));
  CHECK(near(kd_schedule_lr(&cos_s, 9), 1e-3));   /* warmup's last step reaches the peak */
  CHECK(near(kd_schedule_lr(&cos_s, 10), 1e-3));  /* decay starts at the peak */
  CHECK(near(kd_schedule_lr(&cos_s, 35), 1e-4 + 9e-4 * 0.5 * (1 + sqrt(0.5)))); /* r = 1/4 */
  CHECK(near(kd_schedule_lr(&cos_s, 60), 5.5e-4)); /* r = 1/2: halfway */
  CHECK(near(kd_schedule_lr(&cos_s, 85), 1e-4 + 9e-4 * 0.5 * (1 - sqrt(0.5)))); /* r = 3/4 */
  CHECK(near(kd_schedule_lr(&cos_s, 110), 1e-4)); /* the floor, and after */
  CHECK(near(kd_schedule_lr(&cos_s, 5000), 1e-4));

  kd_lr_schedule lin = {KD_SCHED_LINEAR, 1e-3, 10, 110, 0.1};
  CHECK(near(kd_schedule_lr(&lin, 0), 1e-4));
  CHECK(near(kd_schedule_lr(&lin, 10), 1e-3));
  CHECK(near(kd_schedule_lr(&lin, 35), 7.75e-4));  /* 1e-4 + 9e-4 x 3/4 */
  CHECK(near(kd_schedule_lr(&lin, 60), 5.5e-4));
  CHECK(near(kd_schedule_lr(&lin, 109), 1e-4 + 9e-6)); /* one step before the floor */
  CHECK(near(kd_schedule_lr(&lin, 110), 1e-4));

  /* Decay to zero, no warmup: the first step has the full rate. */
  kd_lr_schedule lin0 = {KD_SCHED_LINEAR, 2e-3, 0, 100, 0};
  CHECK(near(kd_schedule_lr(&lin0, 0), 2e-3));
  CHECK(near(kd_schedule_lr(&lin0, 50), 1e-3));
  CHECK(kd_schedule_lr(&lin0, 100) == 0);

  kd_lr_schedule con = {KD_SCHED_CONSTANT, 3e-4, 4, 0, 0};
  CHECK(kd_schedule_check(&con, err, sizeof err) == KD_OK); /* total is not needed */
  CHECK(near(kd_schedule_lr(&con, 0), 0.75e-4));
  CHECK(near(kd_schedule_lr(&con, 3), 3e-4));
  CHECK(near(kd_schedule_lr(&con, 1000000), 3e-4));

  /* Non-increasing after warmup, never below the floor. */
  int mono = 1;
  for (int64_t s = 10; s < 200; s++) {
    double a = kd_schedule_lr(&cos_s, s), b = kd_schedule_lr(&cos_s, s + 1);
    mono &= b <= a && b >= 1e-4 * (1 - 1e-12);
  }
  CHECK(mono);

  kd_lr_schedule bad = cos_s;
  bad.total = 10; /* nothing left to decay */
  CHECK(kd_schedule_check(&bad, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strstr(err, "nothing to decay") != NULL);
  bad = cos_s;
  bad.min_frac = 1.5;
  CHECK(kd_schedule_check(&bad, err, sizeof err) == KD_ERR_INVALID);
  bad = cos_s;
  bad.lr = 0;
  CHECK(kd_schedule_check(&bad, err, sizeof err) == KD_ERR_INVALID);
  CHECK(kd_schedule_kind_from_name("cosine") == KD_SCHED_COSINE);
  CHECK(kd_schedule_kind_from_name("step") == -1);
  return check_exit("test_schedule");
}
