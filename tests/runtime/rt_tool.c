/* A small driver that lets interop.py check our .npy and safetensors code
 * against NumPy and the Python safetensors package:
 *
 *   rt_tool npy-info FILE                  dtype, shape, FNV-1a of the data
 *   rt_tool npy-write FILE DTYPE D0 D1...  writes pattern_value(i) (below)
 *   rt_tool st-info FILE                   one line per tensor and metadata
 *   rt_tool st-write FILE                  the fixed file interop.py expects
 *
 * Failures print "error: <message>" on stderr and exit 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "safetensors.h"

static uint64_t fnv1a(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 0xcbf29ce484222325u;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3u;
  return h;
}

static void print_shape(int rank, const int64_t *shape) {
  printf("[");
  for (int i = 0; i < rank; i++) printf("%s%lld", i ? "," : "", (long long)shape[i]);
  printf("]");
}

static int fail(const char *err) {
  fprintf(stderr, "error: %s\n", err);
  return 1;
}

/* Element i of the pattern interop.py rebuilds: floats (i - 3) / 2, ints
   7i - 5, bool i % 3 == 0. */
static void pattern(kd_array *a) {
  int64_t n = kd_array_numel(a);
  for (int64_t i = 0; i < n; i++) {
    double f = (double)(i - 3) / 2;
    switch (a->dtype) {
    case KD_F32: ((float *)a->data)[i] = (float)f; break;
    case KD_F64: ((double *)a->data)[i] = f; break;
    case KD_BF16: ((uint16_t *)a->data)[i] = kd_f32_to_bf16((float)f); break;
    case KD_I32: ((int32_t *)a->data)[i] = (int32_t)(7 * i - 5); break;
    case KD_I64: ((int64_t *)a->data)[i] = 7 * i - 5; break;
    case KD_BOOL: ((unsigned char *)a->data)[i] = i % 3 == 0; break;
    default: break;
    }
  }
}

static int npy_info(const char *path) {
  kd_array a;
  char err[512];
  if (kd_npy_read(path, &a, err, sizeof err)) return fail(err);
  printf("%s ", kd_dtype_name(a.dtype));
  print_shape(a.rank, a.shape);
  printf(" %016llx\n", (unsigned long long)fnv1a(a.data, a.nbytes));
  kd_array_free(&a);
  return 0;
}

static int npy_write(const char *path, const char *dtype, int rank, char **dims) {
  kd_dtype dt = KD_DTYPE_COUNT;
  for (int i = 0; i < KD_DTYPE_COUNT; i++)
    if (strcmp(dtype, kd_dtype_name((kd_dtype)i)) == 0) dt = (kd_dtype)i;
  int64_t shape[KD_ARRAY_MAX_RANK];
  for (int i = 0; i < rank && i < KD_ARRAY_MAX_RANK; i++) shape[i] = atoll(dims[i]);
  kd_array a;
  char err[512];
  if (dt == KD_DTYPE_COUNT || kd_array_alloc(&a, dt, rank, shape)) return fail("bad dtype or shape");
  pattern(&a);
  kd_status st = kd_npy_write(path, &a, err, sizeof err);
  kd_array_free(&a);
  return st ? fail(err) : 0;
}

static int st_info(const char *path) {
  kd_safetensors *st;
  char err[512];
  if (kd_st_open(path, &st, err, sizeof err)) return fail(err);
  for (int i = 0; i < kd_st_count(st); i++) {
    const kd_st_tensor *t = kd_st_at(st, i);
    printf("tensor %s %s ", t->name, kd_st_dtype_name(t->dtype));
    print_shape(t->rank, t->shape);
    printf(" %016llx\n", (unsigned long long)fnv1a(t->data, t->nbytes));
  }
  for (int i = 0; i < kd_st_metadata_count(st); i++) {
    const char *k, *v;
    kd_st_metadata_at(st, i, &k, &v);
    printf("meta %s=%s\n", k, v);
  }
  kd_st_close(st);
  return 0;
}

static int st_write(const char *path) {
  float a[6];
  for (int i = 0; i < 6; i++) a[i] = 0.25f * (float)i;
  uint16_t b[4] = {kd_f32_to_bf16(1.0f), kd_f32_to_bf16(2.0f), kd_f32_to_bf16(-0.5f), 0};
  int64_t c[3] = {-1, 0, 5};
  uint8_t d[5] = {1, 2, 3, 4, 250};
  uint16_t e[2] = {0x3c00, 0xc000}; /* f16 1.0, -2.0 */
  kd_st_tensor t[] = {
    {"a", KD_ST_F32, 2, {2, 3}, a, sizeof a},   {"b", KD_ST_BF16, 1, {4}, b, sizeof b},
    {"c", KD_ST_I64, 1, {3}, c, sizeof c},      {"d", KD_ST_U8, 1, {5}, d, sizeof d},
    {"e.f16", KD_ST_F16, 1, {2}, e, sizeof e},
  };
  const char *meta[] = {"format", "np", "note", "kdc test \"quoted\" \xc3\xa9"};
  char err[512];
  return kd_st_write(path, t, 5, meta, 2, err, sizeof err) ? fail(err) : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "npy-info") == 0) return npy_info(argv[2]);
  if (argc >= 4 && strcmp(argv[1], "npy-write") == 0) return npy_write(argv[2], argv[3], argc - 4, argv + 4);
  if (argc == 3 && strcmp(argv[1], "st-info") == 0) return st_info(argv[2]);
  if (argc == 3 && strcmp(argv[1], "st-write") == 0) return st_write(argv[2]);
  fprintf(stderr, "usage: rt_tool npy-info|npy-write|st-info|st-write FILE ...\n");
  return 2;
}
