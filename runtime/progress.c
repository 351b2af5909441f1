#include "progress.h"

#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double kd_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void kd_progress_init(kd_progress *p, FILE *f, int64_t first_step, int64_t total_steps) {
  memset(p, 0, sizeof *p);
  p->f = f;
  p->tty = f && isatty(fileno(f));
  p->first = first_step;
  p->total = total_steps;
  p->t0 = kd_now();
}

/* 42s, 2m05s, 1h02m */
static void kd_fmt_eta(char *buf, size_t cap, double s) {
  if (!(s >= 0) || !isfinite(s) || s > 99 * 3600.0) {
    snprintf(buf, cap, "--");
    return;
  }
  long t = lround(s);
  if (t < 60) snprintf(buf, cap, "%lds", t);
  else if (t < 3600) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
  else snprintf(buf, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
}

/* 950, 12.3k, 4.56M */
static void kd_fmt_rate(char *buf, size_t cap, double r) {
  if (!isfinite(r) || r < 0) snprintf(buf, cap, "--");
  else if (r < 1e3) snprintf(buf, cap, "%.0f", r);
  else if (r < 1e6) snprintf(buf, cap, "%.1fk", r / 1e3);
  else snprintf(buf, cap, "%.2fM", r / 1e6);
}

int kd_progress_format(char *buf, size_t cap, int64_t step, int64_t total, double loss, double lr,
                       double tokens_per_s, double eta_s) {
  char eta[32], rate[32];
  kd_fmt_eta(eta, sizeof eta, eta_s);
  kd_fmt_rate(rate, sizeof rate, tokens_per_s);
  return snprintf(buf, cap, "step %" PRId64 "/%" PRId64 " | loss %.4f | lr %.2e | %s tok/s | ETA %s",
                  step, total, loss, lr, rate, eta);
}

void kd_progress_update(kd_progress *p, int64_t step, double loss, double lr, double tokens_per_s) {
  int64_t done = step - p->first + 1, left = p->total - step - 1;
  double eta = done > 0 ? (kd_now() - p->t0) / (double)done * (double)(left > 0 ? left : 0) : -1;
  char line[256];
  int n = kd_progress_format(line, sizeof line, step + 1, p->total, loss, lr, tokens_per_s, eta);
  if (n < 0) return;
  if (n >= (int)sizeof line) n = (int)sizeof line - 1;
  if (p->tty) {
    /* Spaces over what a longer previous line left behind. */
    fprintf(p->f, "\r%s%*s", line, p->width > n ? p->width - n : 0, "");
    p->width = n;
  } else {
    fprintf(p->f, "%s\n", line);
  }
  fflush(p->f);
}

void kd_progress_done(kd_progress *p) {
  if (p->tty && p->width) fputc('\n', p->f);
  p->width = 0;
  fflush(p->f);
}

/* ---- Ctrl-C ---------------------------------------------------------------- */

static volatile sig_atomic_t kd_interrupted;
static struct sigaction kd_old_sigint;
static int kd_sigint_installed;

static void kd_on_sigint(int sig) {
  (void)sig;
  kd_interrupted = 1;
}

int kd_interrupt_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kd_on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND; /* the second Ctrl-C kills */
  kd_interrupted = 0;
  if (sigaction(SIGINT, &sa, kd_sigint_installed ? NULL : &kd_old_sigint) != 0) return -1;
  kd_sigint_installed = 1;
  return 0;
}

int kd_interrupt_requested(void) { return kd_interrupted != 0; }
void kd_interrupt_clear(void) { kd_interrupted = 0; }

void kd_interrupt_restore(void) {
  if (!kd_sigint_installed) return;
  sigaction(SIGINT, &kd_old_sigint, NULL);
  kd_sigint_installed = 0;
}
