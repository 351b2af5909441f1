#include "dtype.h"

#include <assert.h>

static const struct {
  const char *name;
  size_t size;
} kd_dtype_info[] = {
  [KD_F32] = {"f32", 4}, [KD_BF16] = {"bf16", 2}, [KD_F64] = {"f64", 8},
  [KD_I32] = {"i32", 4}, [KD_I64] = {"i64", 8},   [KD_BOOL] = {"bool", 1},
};
static_assert(sizeof kd_dtype_info / sizeof kd_dtype_info[0] == KD_DTYPE_COUNT,
              "every kd_dtype needs an entry");

const char *kd_dtype_name(kd_dtype t) {
  return (unsigned)t < KD_DTYPE_COUNT ? kd_dtype_info[t].name : "?";
}

size_t kd_dtype_size(kd_dtype t) {
  return (unsigned)t < KD_DTYPE_COUNT ? kd_dtype_info[t].size : 0;
}
