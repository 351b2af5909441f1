/* NumPy .npy files: format versions 1.0, 2.0 and 3.0, little-endian, C order.
 *
 *   dtype in the file      kd_dtype
 *   '<f4'                  KD_F32
 *   '<f8'                  KD_F64
 *   '<i4'                  KD_I32
 *   '<i8'                  KD_I64
 *   '<u2'                  KD_BF16   NumPy has no bfloat16: kdc reads uint16
 *                                    as bf16 bit patterns (the top half of an
 *                                    f32), e.g. from torch's
 *                                    t.bfloat16().view(torch.uint16).numpy()
 *   '|b1'                  KD_BOOL
 *
 * Ranks 0 to KD_ARRAY_MAX_RANK. Fortran-order arrays, big-endian data,
 * object and structured dtypes are refused with a message that says so.
 * Every malformed file (truncated, a header that lies about the data size, a
 * shape whose byte count overflows, not an .npy at all) gives
 * KD_ERR_FORMAT and a message, never a crash; a file that cannot be opened
 * gives KD_ERR_IO. Messages start with the path (or "<memory>"). */
#ifndef KD_NPY_H
#define KD_NPY_H

#include <stddef.h>

#include "array.h"

/* Reads path into *out (zeroed on failure). err may be NULL. */
kd_status kd_npy_read(const char *path, kd_array *out, char *err, size_t errlen);

/* The same from a buffer holding a whole file (tests, fuzzing, archives). */
kd_status kd_npy_read_mem(const void *buf, size_t len, kd_array *out, char *err, size_t errlen);

/* Writes a version 1.0 file (a rank <= 4 header always fits), atomically:
   a temporary file in the same folder, fsync, rename over path. A KD_BF16
   array is written as '<u2'. */
kd_status kd_npy_write(const char *path, const kd_array *a, char *err, size_t errlen);

#endif /* KD_NPY_H */
