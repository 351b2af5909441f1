/* Checked specs and lowered model instances, for the tests that need them
 * (tests/model, tests/step_gen). Failures are TU_CHECK failures. */
#ifndef KD_TEST_MODELTEST_H
#define KD_TEST_MODELTEST_H

#include <stdio.h>
#include <unistd.h>

#include "check.h"
#include "lower_model.h"
#include "testutil.h"

/* The spec at path, checked; NULL (and a failed check) when it does not. */
static inline kd_program *mt_load(const char *path) {
  kd_diag *diag = kd_diag_new(stderr);
  kd_program *p = NULL;
  TU_CHECK(kd_check_file(path, NULL, diag, &p) == KD_OK, "%s does not check", path);
  kd_diag_free(diag);
  return p;
}

/* The spec `text`, checked through a temporary file `name` (the checker
 * reads files; diagnostics name it). */
static inline kd_program *mt_load_text(const char *text, const char *name) {
  char dir[] = "/tmp/kd_modeltest_XXXXXX", path[128];
  kd_program *p = NULL;
  if (!mkdtemp(dir)) {
    TU_CHECK(0, "mkdtemp");
    return NULL;
  }
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
    p = mt_load(path);
  }
  remove(path);
  rmdir(dir);
  return p;
}

/* The instance `name` of p, lowered (KD_OK), or a failed check. */
static inline kd_status mt_lower(const kd_program *p, const char *name, kd_model *m) {
  kd_diag *diag = kd_diag_new(stderr);
  kd_status st = kd_lower_model(p, kd_program_lookup(p, name), diag, m);
  TU_CHECK(st == KD_OK, "lowering %s", name);
  kd_diag_free(diag);
  return st;
}

#endif /* KD_TEST_MODELTEST_H */
