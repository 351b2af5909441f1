/* The CUDA driver API, loaded at run time with dlopen("libcuda.so.1").
 *
 * Nothing links against CUDA, so kdc and its training binaries run on
 * machines without a GPU: there kd_cuda_open fails with KD_ERR_UNSUPPORTED
 * and the message "no CUDA driver (libcuda.so.1 not found)".
 *
 * One kd_cuda per process is the intended use. kd_cuda_use_device retains
 * the device's primary context (the one the CUDA runtime and PyTorch use,
 * so pointers can be shared with them) and makes it current on the calling
 * thread; another thread that calls in must call kd_cuda_use_device too.
 *
 * Every call returns KD_OK or KD_ERR_BACKEND with a message such as
 * "cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY (out of memory)" in err (err may be
 * NULL). Handles are the driver's own, under our names (kd_cu_*), so that
 * no CUDA header is needed to build kdc. */
#ifndef KD_CUDA_H
#define KD_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef int kd_cu_result; /* CUresult; 0 is success */
typedef int kd_cu_device;
typedef struct kd_cu_context_st *kd_cu_context;
typedef struct kd_cu_module_st *kd_cu_module;
typedef struct kd_cu_function_st *kd_cu_function;
typedef struct kd_cu_stream_st *kd_cu_stream; /* NULL: the default stream */
typedef struct kd_cu_event_st *kd_cu_event;
typedef unsigned long long kd_cu_devptr; /* CUdeviceptr on 64-bit hosts */

typedef struct kd_cuda kd_cuda;

typedef struct kd_cuda_device_info {
  char name[256];
  int cc_major, cc_minor;  /* compute capability: sm_90 is 9, 0 */
  int sm_count;
  int max_threads_per_block;
  int max_shared_per_block; /* opt-in maximum, bytes */
  int l2_bytes;
  size_t total_mem;
} kd_cuda_device_info;

/* Loads libcuda.so.1 and calls cuInit. KD_ERR_UNSUPPORTED when there is no
   driver or no device, KD_ERR_BACKEND when the driver misbehaves. */
kd_status kd_cuda_open(kd_cuda **out, char *err, size_t errlen);
/* The same from another library file (tests; an unusual install). */
kd_status kd_cuda_open_library(const char *soname, kd_cuda **out, char *err, size_t errlen);
/* Releases the primary context if one was retained, and unloads the driver. */
void kd_cuda_close(kd_cuda *cu);

int kd_cuda_driver_version(const kd_cuda *cu); /* 12040 for 12.4 */
int kd_cuda_device_count(const kd_cuda *cu);
kd_status kd_cuda_device_info_get(kd_cuda *cu, int ordinal, kd_cuda_device_info *info, char *err,
                                  size_t errlen);
kd_status kd_cuda_use_device(kd_cuda *cu, int ordinal, char *err, size_t errlen);

/* "CUDA_ERROR_X (description)", or "CUDA error N" if the driver has no name. */
const char *kd_cuda_result_name(const kd_cuda *cu, kd_cu_result r, char *buf, size_t cap);

/* PTX text (NUL-terminated). On failure err holds the driver's JIT log. */
kd_status kd_cuda_module_load(kd_cuda *cu, const char *ptx, kd_cu_module *out, char *err, size_t errlen);
void kd_cuda_module_unload(kd_cuda *cu, kd_cu_module m);
kd_status kd_cuda_function(kd_cuda *cu, kd_cu_module m, const char *name, kd_cu_function *out, char *err,
                           size_t errlen);
/* Allows up to bytes of dynamic shared memory (above the default 48 KB). */
kd_status kd_cuda_function_set_max_shared(kd_cuda *cu, kd_cu_function f, int bytes, char *err, size_t errlen);
/* params: one pointer per kernel argument, as cuLaunchKernel wants. */
kd_status kd_cuda_launch(kd_cuda *cu, kd_cu_function f, const unsigned grid[3], const unsigned block[3],
                         unsigned shared_bytes, kd_cu_stream stream, void **params, char *err, size_t errlen);
kd_status kd_cuda_synchronize(kd_cuda *cu, char *err, size_t errlen);

kd_status kd_cuda_malloc(kd_cuda *cu, size_t bytes, kd_cu_devptr *out, char *err, size_t errlen);
void kd_cuda_free(kd_cuda *cu, kd_cu_devptr p);
kd_status kd_cuda_mem_info(kd_cuda *cu, size_t *free_bytes, size_t *total_bytes, char *err, size_t errlen);
kd_status kd_cuda_memset(kd_cuda *cu, kd_cu_devptr dst, unsigned char value, size_t bytes, char *err,
                         size_t errlen);
/* Copies; with a stream they are asynchronous (host memory should then be
   pinned for real overlap), with stream NULL they complete before return. */
kd_status kd_cuda_htod(kd_cuda *cu, kd_cu_devptr dst, const void *src, size_t bytes, kd_cu_stream stream,
                       char *err, size_t errlen);
kd_status kd_cuda_dtoh(kd_cuda *cu, void *dst, kd_cu_devptr src, size_t bytes, kd_cu_stream stream,
                       char *err, size_t errlen);
kd_status kd_cuda_dtod(kd_cuda *cu, kd_cu_devptr dst, kd_cu_devptr src, size_t bytes, char *err,
                       size_t errlen);

kd_status kd_cuda_stream_new(kd_cuda *cu, kd_cu_stream *out, char *err, size_t errlen);
void kd_cuda_stream_free(kd_cuda *cu, kd_cu_stream s);
kd_status kd_cuda_stream_sync(kd_cuda *cu, kd_cu_stream s, char *err, size_t errlen);

kd_status kd_cuda_event_new(kd_cuda *cu, kd_cu_event *out, char *err, size_t errlen);
void kd_cuda_event_free(kd_cuda *cu, kd_cu_event e);
kd_status kd_cuda_event_record(kd_cuda *cu, kd_cu_event e, kd_cu_stream s, char *err, size_t errlen);
/* Waits for end, then gives the milliseconds between the two events. */
kd_status kd_cuda_event_elapsed(kd_cuda *cu, kd_cu_event start, kd_cu_event end, float *ms, char *err,
                                size_t errlen);

#endif /* KD_CUDA_H */
