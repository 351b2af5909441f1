/* A minimal check harness for the runtime tests: CHECK records a failure
 * with its line and goes on, so one run reports every broken case;
 * check_exit() turns the count into the exit status ctest sees. */
#ifndef KD_TEST_CHECK_H
#define KD_TEST_CHECK_H

#include <stdio.h>

static int check_failures;

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      check_failures++;                                                       \
    }                                                                         \
  } while (0)

static inline int check_exit(const char *name) {
  if (check_failures) fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
  else printf("%s: all checks passed\n", name);
  return check_failures ? 1 : 0;
}

#endif /* KD_TEST_CHECK_H */
