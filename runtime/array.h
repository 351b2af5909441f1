/* A dense, C-ordered host array: what the file readers (.npy, safetensors)
 * hand to the rest of kdc. The data is 64-byte aligned, so vector kernels
 * may load it directly. */
#ifndef KD_ARRAY_H
#define KD_ARRAY_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "status.h"

#define KD_ARRAY_MAX_RANK 4

typedef struct kd_array {
  kd_dtype dtype;
  int rank;                          /* 0 (a scalar) .. KD_ARRAY_MAX_RANK */
  int64_t shape[KD_ARRAY_MAX_RANK];  /* entries past rank are 0 */
  void *data;                        /* nbytes, 64-byte aligned; NULL when nbytes == 0 */
  size_t nbytes;                     /* numel x kd_dtype_size(dtype) */
} kd_array;

/* Elements: the product of the shape (1 for a scalar). */
int64_t kd_array_numel(const kd_array *a);

/* Allocates zeroed data for the given shape. Fails with KD_ERR_INVALID on a
   bad rank, a negative dimension or a byte count that overflows. */
kd_status kd_array_alloc(kd_array *a, kd_dtype dtype, int rank, const int64_t *shape);
/* The same without zeroing, for data about to be overwritten (a file read,
   a kernel output): large arrays are not touched twice. */
kd_status kd_array_alloc_uninit(kd_array *a, kd_dtype dtype, int rank, const int64_t *shape);

/* Frees the data and zeroes the struct; safe on a zeroed or freed array. */
void kd_array_free(kd_array *a);

/* Bytes of an array of dtype with the given shape, or -1 when the rank is
   out of range, a dimension is negative, or the product overflows. */
int64_t kd_shape_nbytes(kd_dtype dtype, int rank, const int64_t *shape);

#endif /* KD_ARRAY_H */
