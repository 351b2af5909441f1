/* The CUDA driver API through dlopen: a table of function pointers filled
 * from runtime/cuda_api.def, and thin wrappers that turn CUresult codes
 * into kd_status plus the driver's own error name and text. */
#include "cuda.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

/* The driver's enum values we pass (cuda.h, stable since CUDA 4-9). */
enum {
  KD_CU_ERROR_NO_DEVICE = 100,
  KD_CU_ATTR_MAX_THREADS_PER_BLOCK = 1,
  KD_CU_ATTR_SM_COUNT = 16,
  KD_CU_ATTR_L2_CACHE_SIZE = 38,
  KD_CU_ATTR_CC_MAJOR = 75,
  KD_CU_ATTR_CC_MINOR = 76,
  KD_CU_ATTR_MAX_SHARED_OPTIN = 97,
  KD_CU_FUNC_MAX_DYNAMIC_SHARED = 8,
  KD_CU_JIT_INFO_LOG_BUFFER = 3,
  KD_CU_JIT_INFO_LOG_BUFFER_SIZE = 4,
  KD_CU_JIT_ERROR_LOG_BUFFER = 5,
  KD_CU_JIT_ERROR_LOG_BUFFER_SIZE = 6,
  KD_CU_EVENT_DEFAULT = 0,
  KD_CU_STREAM_NON_BLOCKING = 1,
};

typedef struct kd_cu_api {
#define KD_CU_FN(name, params) kd_cu_result(*name) params;
#include "cuda_api.def"
#undef KD_CU_FN
} kd_cu_api;

static const struct {
  const char *name;
  size_t offset;
} kd_cu_syms[] = {
#define KD_CU_FN(name, params) {#name, offsetof(kd_cu_api, name)},
#include "cuda_api.def"
#undef KD_CU_FN
};

struct kd_cuda {
  void *lib;
  kd_cu_api api;
  int driver_version;
  int device_count;
  int device; /* ordinal whose primary context is retained, or -1 */
  kd_cu_device dev;
  kd_cu_context ctx;
};

const char *kd_cuda_result_name(const kd_cuda *cu, kd_cu_result r, char *buf, size_t cap) {
  const char *name = NULL, *text = NULL;
  if (cu && cu->api.cuGetErrorName && cu->api.cuGetErrorName(r, &name) != 0) name = NULL;
  if (cu && cu->api.cuGetErrorString && cu->api.cuGetErrorString(r, &text) != 0) text = NULL;
  if (name && text) snprintf(buf, cap, "%s (%s)", name, text);
  else if (name) snprintf(buf, cap, "%s", name);
  else snprintf(buf, cap, "CUDA error %d", r);
  return buf;
}

/* KD_OK for CUDA_SUCCESS, else KD_ERR_BACKEND and "what: NAME (text)". */
static kd_status kd_cu_check(const kd_cuda *cu, kd_cu_result r, const char *what, char *err, size_t errlen) {
  if (r == 0) return KD_OK;
  char name[192];
  return kd_errf(err, errlen, KD_ERR_BACKEND, "%s: %s", what, kd_cuda_result_name(cu, r, name, sizeof name));
}

/* ---- loading ---------------------------------------------------------------- */

static kd_status kd_cuda_load_symbols(kd_cuda *cu, const char *soname, char *err, size_t errlen) {
  for (size_t i = 0; i < sizeof kd_cu_syms / sizeof kd_cu_syms[0]; i++) {
    void *sym = dlsym(cu->lib, kd_cu_syms[i].name);
    if (!sym)
      return kd_errf(err, errlen, KD_ERR_BACKEND, "%s lacks %s (a CUDA driver older than 11.0?)", soname,
                     kd_cu_syms[i].name);
    /* ISO C has no object-to-function pointer cast; POSIX guarantees the
       representation is the same, so copy the bytes. */
    memcpy((char *)&cu->api + kd_cu_syms[i].offset, &sym, sizeof sym);
  }
  return KD_OK;
}

static kd_status kd_cuda_init(kd_cuda *cu, char *err, size_t errlen) {
  kd_cu_result r = cu->api.cuInit(0);
  if (r == KD_CU_ERROR_NO_DEVICE) {
    char name[192];
    return kd_errf(err, errlen, KD_ERR_UNSUPPORTED, "no CUDA device (cuInit: %s)",
                   kd_cuda_result_name(cu, r, name, sizeof name));
  }
  kd_status st = kd_cu_check(cu, r, "cuInit", err, errlen);
  if (!st) st = kd_cu_check(cu, cu->api.cuDriverGetVersion(&cu->driver_version), "cuDriverGetVersion", err, errlen);
  if (!st) st = kd_cu_check(cu, cu->api.cuDeviceGetCount(&cu->device_count), "cuDeviceGetCount", err, errlen);
  if (!st && cu->device_count < 1) st = kd_errf(err, errlen, KD_ERR_UNSUPPORTED, "no CUDA device");
  return st;
}

kd_status kd_cuda_open_library(const char *soname, kd_cuda **out, char *err, size_t errlen) {
  *out = NULL;
  kd_cuda *cu = calloc(1, sizeof *cu);
  if (!cu) return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  cu->device = -1;
  cu->lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (!cu->lib) {
    free(cu);
    return kd_errf(err, errlen, KD_ERR_UNSUPPORTED, "no CUDA driver (%s not found)", soname);
  }
  kd_status st = kd_cuda_load_symbols(cu, soname, err, errlen);
  if (!st) st = kd_cuda_init(cu, err, errlen);
  if (st) {
    kd_cuda_close(cu);
    return st;
  }
  *out = cu;
  return KD_OK;
}

kd_status kd_cuda_open(kd_cuda **out, char *err, size_t errlen) {
  return kd_cuda_open_library("libcuda.so.1", out, err, errlen);
}

void kd_cuda_close(kd_cuda *cu) {
  if (!cu) return;
  if (cu->device >= 0) cu->api.cuDevicePrimaryCtxRelease_v2(cu->dev);
  if (cu->lib) dlclose(cu->lib);
  free(cu);
}

int kd_cuda_driver_version(const kd_cuda *cu) { return cu->driver_version; }
int kd_cuda_device_count(const kd_cuda *cu) { return cu->device_count; }

/* ---- devices and contexts --------------------------------------------------- */

kd_status kd_cuda_device_info_get(kd_cuda *cu, int ordinal, kd_cuda_device_info *info, char *err,
                                  size_t errlen) {
  memset(info, 0, sizeof *info);
  if (ordinal < 0 || ordinal >= cu->device_count)
    return kd_errf(err, errlen, KD_ERR_INVALID, "CUDA device %d does not exist (%d present)", ordinal,
                   cu->device_count);
  kd_cu_device d;
  kd_status st = kd_cu_check(cu, cu->api.cuDeviceGet(&d, ordinal), "cuDeviceGet", err, errlen);
  if (!st) st = kd_cu_check(cu, cu->api.cuDeviceGetName(info->name, (int)sizeof info->name, d), "cuDeviceGetName", err, errlen);
  if (!st) st = kd_cu_check(cu, cu->api.cuDeviceTotalMem_v2(&info->total_mem, d), "cuDeviceTotalMem", err, errlen);
  static const struct {
    int attr;
    size_t offset;
  } attrs[] = {
    {KD_CU_ATTR_CC_MAJOR, offsetof(kd_cuda_device_info, cc_major)},
    {KD_CU_ATTR_CC_MINOR, offsetof(kd_cuda_device_info, cc_minor)},
    {KD_CU_ATTR_SM_COUNT, offsetof(kd_cuda_device_info, sm_count)},
    {KD_CU_ATTR_MAX_THREADS_PER_BLOCK, offsetof(kd_cuda_device_info, max_threads_per_block)},
    {KD_CU_ATTR_MAX_SHARED_OPTIN, offsetof(kd_cuda_device_info, max_shared_per_block)},
    {KD_CU_ATTR_L2_CACHE_SIZE, offsetof(kd_cuda_device_info, l2_bytes)},
  };
  for (size_t i = 0; !st && i < sizeof attrs / sizeof attrs[0]; i++) {
    int v = 0;
    st = kd_cu_check(cu, cu->api.cuDeviceGetAttribute(&v, attrs[i].attr, d), "cuDeviceGetAttribute", err, errlen);
    memcpy((char *)info + attrs[i].offset, &v, sizeof v);
  }
  return st;
}

kd_status kd_cuda_use_device(kd_cuda *cu, int ordinal, char *err, size_t errlen) {
  if (ordinal < 0 || ordinal >= cu->device_count)
    return kd_errf(err, errlen, KD_ERR_INVALID, "CUDA device %d does not exist (%d present)", ordinal,
                   cu->device_count);
  if (cu->device != ordinal) {
    if (cu->device >= 0) cu->api.cuDevicePrimaryCtxRelease_v2(cu->dev);
    cu->device = -1;
    kd_status st = kd_cu_check(cu, cu->api.cuDeviceGet(&cu->dev, ordinal), "cuDeviceGet", err, errlen);
    if (!st) st = kd_cu_check(cu, cu->api.cuDevicePrimaryCtxRetain(&cu->ctx, cu->dev), "cuDevicePrimaryCtxRetain", err, errlen);
    if (st) return st;
    cu->device = ordinal;
  }
  return kd_cu_check(cu, cu->api.cuCtxSetCurrent(cu->ctx), "cuCtxSetCurrent", err, errlen);
}

kd_status kd_cuda_synchronize(kd_cuda *cu, char *err, size_t errlen) {
  return kd_cu_check(cu, cu->api.cuCtxSynchronize(), "cuCtxSynchronize", err, errlen);
}

/* ---- modules and launches --------------------------------------------------- */

kd_status kd_cuda_module_load(kd_cuda *cu, const char *ptx, kd_cu_module *out, char *err, size_t errlen) {
  enum { LOG = 8192 };
  char *error_log = calloc(1, LOG), *info_log = calloc(1, LOG);
  if (!error_log || !info_log) {
    free(error_log);
    free(info_log);
    return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  }
  int opts[] = {KD_CU_JIT_ERROR_LOG_BUFFER, KD_CU_JIT_ERROR_LOG_BUFFER_SIZE, KD_CU_JIT_INFO_LOG_BUFFER,
                KD_CU_JIT_INFO_LOG_BUFFER_SIZE};
  void *vals[] = {error_log, (void *)(uintptr_t)(LOG - 1), info_log, (void *)(uintptr_t)(LOG - 1)};
  *out = NULL;
  kd_cu_result r = cu->api.cuModuleLoadDataEx(out, ptx, 4, opts, vals);
  kd_status st = KD_OK;
  if (r != 0) {
    char name[192];
    st = kd_errf(err, errlen, KD_ERR_BACKEND, "cuModuleLoadDataEx: %s%s%s",
                 kd_cuda_result_name(cu, r, name, sizeof name), error_log[0] ? ": " : "", error_log);
  }
  free(error_log);
  free(info_log);
  return st;
}

void kd_cuda_module_unload(kd_cuda *cu, kd_cu_module m) {
  if (m) cu->api.cuModuleUnload(m);
}

kd_status kd_cuda_function(kd_cuda *cu, kd_cu_module m, const char *name, kd_cu_function *out, char *err,
                           size_t errlen) {
  kd_cu_result r = cu->api.cuModuleGetFunction(out, m, name);
  if (r == 0) return KD_OK;
  char what[256];
  snprintf(what, sizeof what, "cuModuleGetFunction(\"%s\")", name);
  return kd_cu_check(cu, r, what, err, errlen);
}

kd_status kd_cuda_function_set_max_shared(kd_cuda *cu, kd_cu_function f, int bytes, char *err, size_t errlen) {
  return kd_cu_check(cu, cu->api.cuFuncSetAttribute(f, KD_CU_FUNC_MAX_DYNAMIC_SHARED, bytes),
                     "cuFuncSetAttribute", err, errlen);
}

kd_status kd_cuda_launch(kd_cuda *cu, kd_cu_function f, const unsigned grid[3], const unsigned block[3],
                         unsigned shared_bytes, kd_cu_stream stream, void **params, char *err, size_t errlen) {
  return kd_cu_check(cu,
                     cu->api.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                            shared_bytes, stream, params, NULL),
                     "cuLaunchKernel", err, errlen);
}

/* ---- memory ----------------------------------------------------------------- */

kd_status kd_cuda_malloc(kd_cuda *cu, size_t bytes, kd_cu_devptr *out, char *err, size_t errlen) {
  *out = 0;
  kd_cu_result r = cu->api.cuMemAlloc_v2(out, bytes);
  if (r == 0) return KD_OK;
  char what[64];
  snprintf(what, sizeof what, "cuMemAlloc(%zu bytes)", bytes);
  return kd_cu_check(cu, r, what, err, errlen);
}

void kd_cuda_free(kd_cuda *cu, kd_cu_devptr p) {
  if (p) cu->api.cuMemFree_v2(p);
}

kd_status kd_cuda_mem_info(kd_cuda *cu, size_t *free_bytes, size_t *total_bytes, char *err, size_t errlen) {
  return kd_cu_check(cu, cu->api.cuMemGetInfo_v2(free_bytes, total_bytes), "cuMemGetInfo", err, errlen);
}

kd_status kd_cuda_memset(kd_cuda *cu, kd_cu_devptr dst, unsigned char value, size_t bytes, char *err,
                         size_t errlen) {
  return kd_cu_check(cu, cu->api.cuMemsetD8_v2(dst, value, bytes), "cuMemsetD8", err, errlen);
}

kd_status kd_cuda_htod(kd_cuda *cu, kd_cu_devptr dst, const void *src, size_t bytes, kd_cu_stream stream,
                       char *err, size_t errlen) {
  if (stream)
    return kd_cu_check(cu, cu->api.cuMemcpyHtoDAsync_v2(dst, src, bytes, stream), "cuMemcpyHtoDAsync", err, errlen);
  return kd_cu_check(cu, cu->api.cuMemcpyHtoD_v2(dst, src, bytes), "cuMemcpyHtoD", err, errlen);
}

kd_status kd_cuda_dtoh(kd_cuda *cu, void *dst, kd_cu_devptr src, size_t bytes, kd_cu_stream stream,
                       char *err, size_t errlen) {
  if (stream)
    return kd_cu_check(cu, cu->api.cuMemcpyDtoHAsync_v2(dst, src, bytes, stream), "cuMemcpyDtoHAsync", err, errlen);
  return kd_cu_check(cu, cu->api.cuMemcpyDtoH_v2(dst, src, bytes), "cuMemcpyDtoH", err, errlen);
}

kd_status kd_cuda_dtod(kd_cuda *cu, kd_cu_devptr dst, kd_cu_devptr src, size_t bytes, char *err,
                       size_t errlen) {
  return kd_cu_check(cu, cu->api.cuMemcpyDtoD_v2(dst, src, bytes), "cuMemcpyDtoD", err, errlen);
}

/* ---- streams and events ----------------------------------------------------- */

kd_status kd_cuda_stream_new(kd_cuda *cu, kd_cu_stream *out, char *err, size_t errlen) {
  *out = NULL;
  /* Non-blocking: no implicit synchronisation with the legacy default stream. */
  return kd_cu_check(cu, cu->api.cuStreamCreate(out, KD_CU_STREAM_NON_BLOCKING), "cuStreamCreate", err, errlen);
}

void kd_cuda_stream_free(kd_cuda *cu, kd_cu_stream s) {
  if (s) cu->api.cuStreamDestroy_v2(s);
}

kd_status kd_cuda_stream_sync(kd_cuda *cu, kd_cu_stream s, char *err, size_t errlen) {
  return kd_cu_check(cu, cu->api.cuStreamSynchronize(s), "cuStreamSynchronize", err, errlen);
}

kd_status kd_cuda_event_new(kd_cuda *cu, kd_cu_event *out, char *err, size_t errlen) {
  *out = NULL;
  return kd_cu_check(cu, cu->api.cuEventCreate(out, KD_CU_EVENT_DEFAULT), "cuEventCreate", err, errlen);
}

void kd_cuda_event_free(kd_cuda *cu, kd_cu_event e) {
  if (e) cu->api.cuEventDestroy_v2(e);
}

kd_status kd_cuda_event_record(kd_cuda *cu, kd_cu_event e, kd_cu_stream s, char *err, size_t errlen) {
  return kd_cu_check(cu, cu->api.cuEventRecord(e, s), "cuEventRecord", err, errlen);
}

kd_status kd_cuda_event_elapsed(kd_cuda *cu, kd_cu_event start, kd_cu_event end, float *ms, char *err,
                                size_t errlen) {
  kd_status st = kd_cu_check(cu, cu->api.cuEventSynchronize(end), "cuEventSynchronize", err, errlen);
  if (!st) st = kd_cu_check(cu, cu->api.cuEventElapsedTime(ms, start, end), "cuEventElapsedTime", err, errlen);
  return st;
}
