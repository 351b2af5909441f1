/* The terminal side of a training loop: a progress line and Ctrl-C.
 *
 * The progress line reads
 *   step 120/2000 | loss 2.3456 | lr 1.00e-03 | 12.3k tok/s | ETA 2m35s
 * On a terminal it rewrites itself in place (\r, padded over the previous
 * line); anywhere else (a log file, a pipe, CI) each update is a plain line,
 * so logs hold no carriage returns. */
#ifndef KD_PROGRESS_H
#define KD_PROGRESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct kd_progress {
  FILE *f;
  int tty;           /* rewrite in place; set from isatty by init, tests may override */
  int64_t total;     /* the step the run ends at */
  int64_t first;     /* the step the timing starts at (a resumed run's step) */
  double t0;         /* monotonic seconds at init */
  int width;         /* length of the last line drawn on a tty */
} kd_progress;

void kd_progress_init(kd_progress *p, FILE *f, int64_t first_step, int64_t total_steps);
/* Draws the line for a finished step (counted from 0, shown from 1: after
   step 0 of 100 the line says "step 1/100"); the ETA extrapolates the mean
   time per step since init. */
void kd_progress_update(kd_progress *p, int64_t step, double loss, double lr, double tokens_per_s);
/* Ends the in-place line (a newline on a tty), so later output starts clean. */
void kd_progress_done(kd_progress *p);

/* The line itself (no \r or \n); eta_s < 0 prints "ETA --". Returns what
   snprintf returns. */
int kd_progress_format(char *buf, size_t cap, int64_t step, int64_t total, double loss, double lr,
                       double tokens_per_s, double eta_s);

/* Ctrl-C: kd_interrupt_install sets a SIGINT handler that only raises a
 * flag (a volatile sig_atomic_t); the loop polls kd_interrupt_requested
 * between steps, saves a checkpoint and stops cleanly. The handler is
 * installed with SA_RESETHAND, so a second Ctrl-C (say, during a slow
 * save) kills the process the usual way; atomic checkpoints make that
 * safe. kd_interrupt_restore puts back the previous handler. */
int kd_interrupt_install(void); /* 0, or -1 when sigaction fails */
int kd_interrupt_requested(void);
void kd_interrupt_clear(void);
void kd_interrupt_restore(void);

#endif /* KD_PROGRESS_H */
