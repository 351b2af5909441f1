#include "status.h"

#include <assert.h>

static const char *const kd_status_names[] = {
  [KD_OK] = "ok",
  [KD_ERR_SYNTAX] = "syntax error",
  [KD_ERR_SEMANTIC] = "semantic error",
  [KD_ERR_IO] = "input/output error",
  [KD_ERR_FORMAT] = "malformed file",
  [KD_ERR_INVALID] = "invalid argument",
  [KD_ERR_UNSUPPORTED] = "unsupported",
  [KD_ERR_NOMEM] = "out of memory",
  [KD_ERR_BACKEND] = "backend error",
};
static_assert(sizeof kd_status_names / sizeof kd_status_names[0] == KD_STATUS_COUNT,
              "every kd_status needs a name");

const char *kd_status_str(kd_status s) {
  if ((unsigned)s >= KD_STATUS_COUNT) return "unknown status";
  return kd_status_names[s];
}
