/* The CUDA driver loader. Everywhere: a missing driver, a library that is
 * not a driver, and a driver with no device each give the right status and
 * message; the test kernel's PTX assembles with ptxas when ptxas is on the
 * PATH. With a GPU: device queries, a JIT error log for bad PTX, and a tiny
 * kernel (x[i] += 1) run through every memory, stream and event call. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cuda.h"
#include "tmpdir.h"

/* x[i] += 1 for i < n; one thread per element. */
static const char kd_add1_ptx[] =
  ".version 7.0\n"
  ".target sm_52\n"
  ".address_size 64\n"
  ".visible .entry kd_add1(.param .u64 x, .param .u32 n)\n"
  "{\n"
  "  .reg .pred %p<2>;\n"
  "  .reg .b32 %r<6>;\n"
  "  .reg .b64 %rd<5>;\n"
  "  .reg .f32 %f<3>;\n"
  "  ld.param.u64 %rd1, [x];\n"
  "  ld.param.u32 %r1, [n];\n"
  "  mov.u32 %r2, %ctaid.x;\n"
  "  mov.u32 %r3, %ntid.x;\n"
  "  mov.u32 %r4, %tid.x;\n"
  "  mad.lo.s32 %r5, %r2, %r3, %r4;\n"
  "  setp.ge.u32 %p1, %r5, %r1;\n"
  "  @%p1 bra DONE;\n"
  "  cvta.to.global.u64 %rd2, %rd1;\n"
  "  mul.wide.u32 %rd3, %r5, 4;\n"
  "  add.s64 %rd4, %rd2, %rd3;\n"
  "  ld.global.f32 %f1, [%rd4];\n"
  "  add.f32 %f2, %f1, 0f3F800000;\n"
  "  st.global.f32 [%rd4], %f2;\n"
  "DONE:\n"
  "  ret;\n"
  "}\n";

static void test_without_gpu(void) {
  kd_cuda *cu = (kd_cuda *)1;
  char err[256] = "";
  CHECK(kd_cuda_open_library("libkdc-no-such-driver.so.1", &cu, err, sizeof err) == KD_ERR_UNSUPPORTED);
  CHECK(cu == NULL && strcmp(err, "no CUDA driver (libkdc-no-such-driver.so.1 not found)") == 0);
  /* A real library that is not a driver. */
  CHECK(kd_cuda_open_library("libm.so.6", &cu, err, sizeof err) == KD_ERR_BACKEND);
  CHECK(cu == NULL && strstr(err, "libm.so.6 lacks cuInit") != NULL);
  /* A driver with every symbol but no device. */
  kd_status st = kd_cuda_open_library(KD_FAKE_CUDA, &cu, err, sizeof err);
  CHECK(st == KD_ERR_UNSUPPORTED && cu == NULL);
  CHECK(strcmp(err, "no CUDA device (cuInit: CUDA error 100)") == 0);
  if (st == KD_OK) kd_cuda_close(cu);
}

/* The kernel text is valid PTX for the oldest and newest SMs we target. */
static void test_ptxas(void) {
  if (system("ptxas --version > /dev/null 2>&1") != 0) {
    printf("ptxas: not on PATH, PTX assembly check skipped\n");
    return;
  }
  char path[512], cmd[1200];
  tmpdir_file(path, sizeof path, "add1.ptx");
  CHECK(write_bytes(path, kd_add1_ptx, strlen(kd_add1_ptx)) == 0);
  static const char *const sms[] = {"sm_80", "sm_90"};
  for (int i = 0; i < 2; i++) {
    snprintf(cmd, sizeof cmd, "ptxas -arch=%s '%s' -o /dev/null", sms[i], path);
    int rc = system(cmd);
    CHECK(rc == 0);
    printf("ptxas %s: %s\n", sms[i], rc == 0 ? "ok" : "FAILED");
  }
}

#define GPU_OK(call)                                       \
  do {                                                     \
    kd_status s_ = (call);                                 \
    CHECK(s_ == KD_OK);                                    \
    if (s_) {                                              \
      fprintf(stderr, "  %s\n", err);                      \
      goto done;                                           \
    }                                                      \
  } while (0)

static void test_gpu(kd_cuda *cu) {
  char err[1024] = "";
  kd_cuda_device_info info;
  kd_cu_module mod = NULL, bad = NULL;
  kd_cu_function fn = NULL;
  kd_cu_devptr x = 0, y = 0;
  kd_cu_stream stream = NULL;
  kd_cu_event e0 = NULL, e1 = NULL;
  enum { N = 1000 };
  float *h = malloc(N * sizeof *h), *back = malloc(N * sizeof *back);
  for (int i = 0; i < N; i++) h[i] = (float)i * 0.5f;

  CHECK(kd_cuda_device_count(cu) >= 1 && kd_cuda_driver_version(cu) > 0);
  GPU_OK(kd_cuda_device_info_get(cu, 0, &info, err, sizeof err));
  printf("GPU 0: %s, sm_%d%d, %d SMs, %zu MB, driver %d\n", info.name, info.cc_major, info.cc_minor,
         info.sm_count, info.total_mem >> 20, kd_cuda_driver_version(cu));
  CHECK(info.name[0] && info.cc_major >= 5 && info.sm_count > 0 && info.total_mem > 0);
  CHECK(kd_cuda_use_device(cu, kd_cuda_device_count(cu), err, sizeof err) == KD_ERR_INVALID);
  GPU_OK(kd_cuda_use_device(cu, 0, err, sizeof err));

  CHECK(kd_cuda_module_load(cu, ".version 7.0\n.target sm_52\nthis is not ptx\n", &bad, err, sizeof err) ==
        KD_ERR_BACKEND);
  CHECK(strstr(err, "cuModuleLoadDataEx: CUDA_ERROR_") != NULL);
  printf("bad PTX: %s\n", err);
  GPU_OK(kd_cuda_module_load(cu, kd_add1_ptx, &mod, err, sizeof err));
  CHECK(kd_cuda_function(cu, mod, "no_such_kernel", &fn, err, sizeof err) == KD_ERR_BACKEND);
  CHECK(strstr(err, "no_such_kernel") && strstr(err, "CUDA_ERROR_NOT_FOUND"));
  GPU_OK(kd_cuda_function(cu, mod, "kd_add1", &fn, err, sizeof err));

  GPU_OK(kd_cuda_malloc(cu, N * sizeof(float), &x, err, sizeof err));
  GPU_OK(kd_cuda_malloc(cu, N * sizeof(float), &y, err, sizeof err));
  GPU_OK(kd_cuda_stream_new(cu, &stream, err, sizeof err));
  GPU_OK(kd_cuda_event_new(cu, &e0, err, sizeof err));
  GPU_OK(kd_cuda_event_new(cu, &e1, err, sizeof err));
  GPU_OK(kd_cuda_htod(cu, x, h, N * sizeof(float), stream, err, sizeof err));
  unsigned n = N, grid[3] = {(N + 255) / 256, 1, 1}, block[3] = {256, 1, 1};
  void *params[] = {&x, &n};
  GPU_OK(kd_cuda_event_record(cu, e0, stream, err, sizeof err));
  GPU_OK(kd_cuda_launch(cu, fn, grid, block, 0, stream, params, err, sizeof err));
  GPU_OK(kd_cuda_event_record(cu, e1, stream, err, sizeof err));
  float ms = -1;
  GPU_OK(kd_cuda_event_elapsed(cu, e0, e1, &ms, err, sizeof err));
  CHECK(ms >= 0);
  GPU_OK(kd_cuda_stream_sync(cu, stream, err, sizeof err));
  GPU_OK(kd_cuda_dtod(cu, y, x, N * sizeof(float), err, sizeof err));
  GPU_OK(kd_cuda_dtoh(cu, back, y, N * sizeof(float), NULL, err, sizeof err));
  int wrong = 0;
  for (int i = 0; i < N; i++) wrong += back[i] != h[i] + 1.0f; /* exact: small halves plus one */
  CHECK(wrong == 0);
  GPU_OK(kd_cuda_memset(cu, y, 0, N * sizeof(float), err, sizeof err));
  GPU_OK(kd_cuda_synchronize(cu, err, sizeof err));
  GPU_OK(kd_cuda_dtoh(cu, back, y, N * sizeof(float), NULL, err, sizeof err));
  CHECK(back[0] == 0.0f && back[N - 1] == 0.0f);
  size_t fr = 0, tot = 0;
  GPU_OK(kd_cuda_mem_info(cu, &fr, &tot, err, sizeof err));
  CHECK(tot > 0 && fr <= tot);
  kd_cu_devptr huge = 0;
  CHECK(kd_cuda_malloc(cu, (size_t)1 << 50, &huge, err, sizeof err) == KD_ERR_BACKEND);
  CHECK(strstr(err, "CUDA_ERROR_OUT_OF_MEMORY") != NULL);
  printf("GPU kernel: %d of %d elements right, %.3f ms\n", N - wrong, N, (double)ms);
done:
  kd_cuda_event_free(cu, e0);
  kd_cuda_event_free(cu, e1);
  kd_cuda_stream_free(cu, stream);
  kd_cuda_free(cu, x);
  kd_cuda_free(cu, y);
  kd_cuda_module_unload(cu, mod);
  free(h);
  free(back);
}

int main(void) {
  if (!tmpdir_make()) {
    perror("mkdtemp");
    return 1;
  }
  test_without_gpu();
  test_ptxas();

  kd_cuda *cu = NULL;
  char err[256] = "";
  kd_status st = kd_cuda_open(&cu, err, sizeof err);
  void *probe = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!probe) {
    /* The message users see on a machine without a driver, exactly. */
    CHECK(st == KD_ERR_UNSUPPORTED && strcmp(err, "no CUDA driver (libcuda.so.1 not found)") == 0);
    printf("no CUDA driver here: GPU part not run (\"%s\")\n", err);
  } else {
    dlclose(probe);
    if (st == KD_OK) {
      test_gpu(cu);
    } else {
      CHECK(st == KD_ERR_UNSUPPORTED && strncmp(err, "no CUDA device", 14) == 0);
      printf("a driver but no device: GPU part not run (\"%s\")\n", err);
    }
  }
  kd_cuda_close(cu);
  tmpdir_remove();
  return check_exit("test_cuda");
}
