/* The progress line (its text, in-place rewriting on a terminal, plain
 * lines elsewhere) and the Ctrl-C flag, with SIGINT raised in-process. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "progress.h"

/* Everything written to f so far. */
static char *slurp(FILE *f) {
  fflush(f);
  long n = ftell(f);
  char *s = calloc((size_t)n + 1, 1);
  rewind(f);
  if (fread(s, 1, (size_t)n, f) != (size_t)n) s[0] = '\0';
  fseek(f, 0, SEEK_END);
  return s;
}

static void test_format(void) {
  char b[256];
  kd_progress_format(b, sizeof b, 120, 2000, 2.34567, 1e-3, 12345, 155);
  CHECK(!strcmp(b, "step 120/2000 | loss 2.3457 | lr 1.00e-03 | 12.3k tok/s | ETA 2m35s"));
  kd_progress_format(b, sizeof b, 1, 10, 5.5, 3e-4, 950, 42.4);
  CHECK(!strcmp(b, "step 1/10 | loss 5.5000 | lr 3.00e-04 | 950 tok/s | ETA 42s"));
  kd_progress_format(b, sizeof b, 7, 9, 0.5, 1, 4.56e6, 3600 + 120);
  CHECK(strstr(b, "4.56M tok/s | ETA 1h02m") != NULL);
  kd_progress_format(b, sizeof b, 7, 9, 0.5, 1, -1, -1);
  CHECK(strstr(b, "-- tok/s | ETA --") != NULL);
}

static void test_lines(void) {
  FILE *f = tmpfile();
  kd_progress p;
  kd_progress_init(&p, f, 0, 100);
  CHECK(p.tty == 0); /* a file is no terminal */
  kd_progress_update(&p, 0, 3.0, 1e-3, 1000);
  kd_progress_update(&p, 1, 2.5, 1e-3, 1000);
  kd_progress_done(&p);
  char *s = slurp(f);
  /* Two plain lines, no carriage return. */
  CHECK(!strchr(s, '\r'));
  CHECK(!strncmp(s, "step 1/100 | loss 3.0000", 24));
  CHECK(strstr(s, "\nstep 2/100 | loss 2.5000") != NULL);
  int lines = 0;
  for (char *c = s; *c; c++) lines += *c == '\n';
  CHECK(lines == 2);
  free(s);
  fclose(f);

  /* On a terminal: \r before each line, no newline until done, and a
     shorter line is padded over the longer one before it. */
  f = tmpfile();
  kd_progress_init(&p, f, 0, 100);
  p.tty = 1;
  kd_progress_update(&p, 0, 3.0, 1e-3, 2.5e6);
  size_t first = strlen("step 1/100 | loss 3.0000 | lr 1.00e-03 | 2.50M tok/s | ETA ");
  kd_progress_update(&p, 1, 2.5, 1e-3, 10);
  s = slurp(f);
  CHECK(s[0] == '\r' && !strchr(s, '\n'));
  char *second = strchr(s + 1, '\r');
  CHECK(second && (size_t)(second - s - 1) >= first);
  CHECK(second && strlen(second + 1) == (size_t)(second - s - 1)); /* padded to the same width */
  free(s);
  kd_progress_done(&p);
  s = slurp(f);
  CHECK(s[strlen(s) - 1] == '\n');
  free(s);
  fclose(f);
}

static int old_handler_ran;
static void old_handler(int sig) {
  (void)sig;
  old_handler_ran = 1;
}

static void test_interrupt(void) {
  signal(SIGINT, old_handler);
  CHECK(kd_interrupt_install() == 0);
  CHECK(!kd_interrupt_requested());
  raise(SIGINT); /* delivered before raise returns, to this thread */
  CHECK(kd_interrupt_requested());
  CHECK(!old_handler_ran);
  kd_interrupt_clear();
  CHECK(!kd_interrupt_requested());
  kd_interrupt_restore();
  raise(SIGINT);
  CHECK(old_handler_ran && !kd_interrupt_requested());
  signal(SIGINT, SIG_DFL);

  /* A second Ctrl-C kills the process the usual way (in a child). */
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    kd_interrupt_install();
    raise(SIGINT);
    if (!kd_interrupt_requested()) _exit(3);
    raise(SIGINT);
    _exit(4); /* not reached if the handler was reset */
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
}

int main(void) {
  test_format();
  test_lines();
  test_interrupt();
  return check_exit("test_progress");
}
