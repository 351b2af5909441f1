#include "array.h"

#include <stdlib.h>
#include <string.h>

int64_t kd_array_numel(const kd_array *a) {
  int64_t n = 1;
  for (int i = 0; i < a->rank; i++) n *= a->shape[i];
  return n;
}

int64_t kd_shape_nbytes(kd_dtype dtype, int rank, const int64_t *shape) {
  if (rank < 0 || rank > KD_ARRAY_MAX_RANK) return -1;
  int64_t n = (int64_t)kd_dtype_size(dtype);
  if (n == 0) return -1;
  for (int i = 0; i < rank; i++) {
    if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n)) return -1;
  }
  if ((uint64_t)n > SIZE_MAX) return -1;
  return n;
}

kd_status kd_array_alloc_uninit(kd_array *a, kd_dtype dtype, int rank, const int64_t *shape) {
  memset(a, 0, sizeof *a);
  int64_t nbytes = kd_shape_nbytes(dtype, rank, shape);
  if (nbytes < 0) return KD_ERR_INVALID;
  a->dtype = dtype;
  a->rank = rank;
  for (int i = 0; i < rank; i++) a->shape[i] = shape[i];
  a->nbytes = (size_t)nbytes;
  if (nbytes == 0) return KD_OK;
  /* aligned_alloc wants a multiple of the alignment. */
  size_t padded = ((size_t)nbytes + 63) & ~(size_t)63;
  if (padded < (size_t)nbytes) return KD_ERR_NOMEM;
  a->data = aligned_alloc(64, padded);
  if (!a->data) {
    memset(a, 0, sizeof *a);
    return KD_ERR_NOMEM;
  }
  return KD_OK;
}

kd_status kd_array_alloc(kd_array *a, kd_dtype dtype, int rank, const int64_t *shape) {
  kd_status st = kd_array_alloc_uninit(a, dtype, rank, shape);
  if (st == KD_OK && a->data) memset(a->data, 0, a->nbytes);
  return st;
}

void kd_array_free(kd_array *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}
