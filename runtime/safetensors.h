/* safetensors files: read (mmap'd, fully validated) and write (atomic).
 *
 * The format: an 8-byte little-endian header length N, N bytes of UTF-8
 * JSON (padded with spaces), then the data section. The JSON maps each
 * tensor name to {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}
 * (offsets relative to the data section) and may hold "__metadata__", an
 * object of string values. Validation follows the reference implementation:
 * known dtype, non-negative shape, e - b == numel x dtype size, and the
 * tensors tile the data section exactly (no overlap, no gap, nothing after
 * the last one). Anything else is KD_ERR_FORMAT with a message.
 *
 * Tensor data points into the mapping: valid until kd_st_close, read-only,
 * and aligned only as well as the writer arranged (ours and the Python
 * package's writers align every tensor to its element size, but a foreign
 * file may not): read elements with memcpy, or copy out with kd_st_to_array. */
#ifndef KD_SAFETENSORS_H
#define KD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "array.h"

#define KD_ST_MAX_RANK 8

typedef enum kd_st_dtype {
  KD_ST_BOOL, KD_ST_U8, KD_ST_I8, KD_ST_F8_E4M3, KD_ST_F8_E5M2,
  KD_ST_I16, KD_ST_U16, KD_ST_F16, KD_ST_BF16,
  KD_ST_I32, KD_ST_U32, KD_ST_F32,
  KD_ST_I64, KD_ST_U64, KD_ST_F64,
  KD_ST_DTYPE_COUNT
} kd_st_dtype;

const char *kd_st_dtype_name(kd_st_dtype t); /* "F32", "BF16", ... */
size_t kd_st_dtype_size(kd_st_dtype t);
/* The kd_dtype with the same bytes, or -1 when kdc has none (F16, U8, ...). */
int kd_st_dtype_to_kd(kd_st_dtype t);

typedef struct kd_st_tensor {
  const char *name;
  kd_st_dtype dtype;
  int rank;
  int64_t shape[KD_ST_MAX_RANK];
  const void *data; /* nbytes; see the alignment note above */
  size_t nbytes;
} kd_st_tensor;

typedef struct kd_safetensors kd_safetensors;

kd_status kd_st_open(const char *path, kd_safetensors **out, char *err, size_t errlen);
/* The same over a caller's buffer, which must outlive the handle. */
kd_status kd_st_open_mem(const void *buf, size_t len, kd_safetensors **out, char *err, size_t errlen);
void kd_st_close(kd_safetensors *st);

/* Tensors in name order. */
int kd_st_count(const kd_safetensors *st);
const kd_st_tensor *kd_st_at(const kd_safetensors *st, int i);
const kd_st_tensor *kd_st_find(const kd_safetensors *st, const char *name); /* NULL if absent */

/* __metadata__ entries in key order; get returns NULL if absent. */
int kd_st_metadata_count(const kd_safetensors *st);
void kd_st_metadata_at(const kd_safetensors *st, int i, const char **key, const char **value);
const char *kd_st_metadata_get(const kd_safetensors *st, const char *key);

/* Copies a tensor into a fresh, aligned kd_array. KD_ERR_UNSUPPORTED when
   its dtype has no kd_dtype or its rank exceeds KD_ARRAY_MAX_RANK. */
kd_status kd_st_to_array(const kd_st_tensor *t, kd_array *out, char *err, size_t errlen);

/* Writes n tensors (names unique, not "__metadata__") and nmeta metadata
   pairs (meta[2k] the key, meta[2k+1] the value) atomically. The header
   lists tensors in name order, is padded so the data starts on an 8-byte
   boundary, and the data is laid out widest dtype first so that every
   tensor is aligned to its element size. */
kd_status kd_st_write(const char *path, const kd_st_tensor *tensors, int n, const char *const *meta,
                      int nmeta, char *err, size_t errlen);

#endif /* KD_SAFETENSORS_H */
