/* .npy: round trips for every dtype and rank, the exact header NumPy
 * writes, versions 2.0 and 3.0, one test per kind of malformed file (each
 * must give KD_ERR_FORMAT or KD_ERR_IO and a message naming the problem),
 * and a robustness sweep of truncations and random byte flips that must
 * never crash (run it under ASan). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "npy.h"
#include "tmpdir.h"

static void fill(kd_array *a) {
  unsigned char *p = a->data;
  for (size_t i = 0; i < a->nbytes; i++) p[i] = (unsigned char)(i * 131 + 7);
  if (a->dtype == KD_BOOL)
    for (size_t i = 0; i < a->nbytes; i++) p[i] &= 1;
}

static void check_roundtrip(kd_dtype dt, int rank, const int64_t *shape) {
  kd_array a, b;
  char path[512], err[256] = "";
  tmpdir_file(path, sizeof path, "rt.npy");
  CHECK(kd_array_alloc(&a, dt, rank, shape) == KD_OK);
  fill(&a);
  CHECK(kd_npy_write(path, &a, err, sizeof err) == KD_OK);
  kd_status st = kd_npy_read(path, &b, err, sizeof err);
  CHECK(st == KD_OK);
  if (st) fprintf(stderr, "  %s\n", err);
  CHECK(b.dtype == dt && b.rank == rank && b.nbytes == a.nbytes);
  for (int i = 0; i < rank; i++) CHECK(b.shape[i] == shape[i]);
  CHECK(a.nbytes == 0 || memcmp(a.data, b.data, a.nbytes) == 0);
  CHECK(b.nbytes == 0 || ((uintptr_t)b.data & 63) == 0);
  kd_array_free(&a);
  kd_array_free(&b);
}

/* Builds a file: magic, version, header length, the header padded to 64
   bytes with '\n', then data_len bytes. */
static size_t make_npy(unsigned char *out, int major, const char *dict, size_t data_len) {
  size_t prefix = major == 1 ? 10 : 12, n = strlen(dict);
  size_t total = (prefix + n + 1 + 63) / 64 * 64, hlen = total - prefix;
  memcpy(out, "\x93NUMPY", 6);
  out[6] = (unsigned char)major;
  out[7] = 0;
  out[8] = (unsigned char)hlen;
  out[9] = (unsigned char)(hlen >> 8);
  if (major != 1) out[10] = out[11] = 0;
  memcpy(out + prefix, dict, n);
  memset(out + prefix + n, ' ', hlen - n - 1);
  out[total - 1] = '\n';
  for (size_t i = 0; i < data_len; i++) out[total + i] = (unsigned char)i;
  return total + data_len;
}

/* Parses buf and expects failure with st and a message containing want. */
static void expect_bad(const char *name, const unsigned char *buf, size_t len, kd_status want_st,
                       const char *want) {
  kd_array a;
  char err[256] = "";
  kd_status st = kd_npy_read_mem(buf, len, &a, err, sizeof err);
  int ok = st == want_st && strstr(err, want) != NULL && a.data == NULL;
  if (!ok) fprintf(stderr, "case %s: status %d, message \"%s\", wanted \"%s\"\n", name, st, err, want);
  CHECK(ok);
  kd_array_free(&a);
}

static void test_malformed(void) {
  static unsigned char buf[4096];
  size_t n;
  const char *f4_23 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

  expect_bad("empty", buf, 0, KD_ERR_FORMAT, "not a .npy file");
  expect_bad("text", (const unsigned char *)"hello world, this is text", 25, KD_ERR_FORMAT,
             "not a .npy file");
  n = make_npy(buf, 1, f4_23, 23);
  expect_bad("truncated data", buf, n, KD_ERR_FORMAT, "truncated data");
  n = make_npy(buf, 1, f4_23, 25);
  expect_bad("extra data", buf, n, KD_ERR_FORMAT, "too much data");
  n = make_npy(buf, 1, f4_23, 24);
  expect_bad("truncated header", buf, 40, KD_ERR_FORMAT, "truncated .npy header");
  expect_bad("prefix only", buf, 9, KD_ERR_FORMAT, "not a .npy file");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", 0);
  expect_bad("overflowing shape", buf, n, KD_ERR_FORMAT, "overflows");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 0);
  expect_bad("huge dimension", buf, n, KD_ERR_FORMAT, "too large");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000), }", 16);
  expect_bad("header that lies", buf, n, KD_ERR_FORMAT, "truncated data");
  n = make_npy(buf, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24);
  expect_bad("big-endian", buf, n, KD_ERR_FORMAT, "big-endian");
  n = make_npy(buf, 1, "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", 24);
  expect_bad("object", buf, n, KD_ERR_FORMAT, "object arrays");
  n = make_npy(buf, 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }", 24);
  expect_bad("complex", buf, n, KD_ERR_FORMAT, "unsupported dtype");
  n = make_npy(buf, 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }", 12);
  expect_bad("structured", buf, n, KD_ERR_FORMAT, "structured");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24);
  expect_bad("fortran", buf, n, KD_ERR_FORMAT, "Fortran-order");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1), }", 4);
  expect_bad("rank 5", buf, n, KD_ERR_FORMAT, "rank > 4");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3), }", 12);
  expect_bad("negative", buf, n, KD_ERR_FORMAT, "non-negative");
  n = make_npy(buf, 1, "{'descr': '<f4', 'shape': (2, 3), }", 24);
  expect_bad("missing key", buf, n, KD_ERR_FORMAT, "required");
  n = make_npy(buf, 1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24);
  expect_bad("duplicate key", buf, n, KD_ERR_FORMAT, "duplicate key");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", 24);
  expect_bad("unknown key", buf, n, KD_ERR_FORMAT, "unknown key");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", 24);
  expect_bad("unclosed dict", buf, n, KD_ERR_FORMAT, "expected ',' or '}'");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 3)}", 24);
  expect_bad("bad bool", buf, n, KD_ERR_FORMAT, "True or False");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}", 24);
  expect_bad("list shape", buf, n, KD_ERR_FORMAT, "tuple");
  n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} junk", 24);
  expect_bad("trailing text", buf, n, KD_ERR_FORMAT, "after the closing");
  n = make_npy(buf, 4, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24);
  expect_bad("version 4", buf, n, KD_ERR_FORMAT, "version 4.0");
  n = make_npy(buf, 2, f4_23, 24);
  buf[10] = 0xff; /* 4-byte header length of about 16 MB */
  buf[11] = 0x00;
  expect_bad("huge header length", buf, n, KD_ERR_FORMAT, "implausibly large");

  kd_array a;
  char err[256] = "", path[512];
  CHECK(kd_npy_read(tmpdir_file(path, sizeof path, "absent.npy"), &a, err, sizeof err) == KD_ERR_IO);
  CHECK(strstr(err, "absent.npy") != NULL);
  CHECK(kd_npy_read(tmpdir_path, &a, err, sizeof err) == KD_ERR_IO);
  n = make_npy(buf, 1, f4_23, 20);
  write_bytes(tmpdir_file(path, sizeof path, "short.npy"), buf, n);
  CHECK(kd_npy_read(path, &a, err, sizeof err) == KD_ERR_FORMAT && strstr(err, "truncated data"));
  CHECK(a.data == NULL);
}

static void test_versions(void) {
  static unsigned char buf[1024];
  kd_array a;
  char err[256] = "";
  /* Keys in another order, double quotes, no trailing comma, versions 2 and 3. */
  const char *dict = "{\"shape\": (2, 3), \"fortran_order\": False, \"descr\": \"<i8\"}";
  for (int major = 1; major <= 3; major++) {
    size_t n = make_npy(buf, major, dict, 48);
    kd_status st = kd_npy_read_mem(buf, n, &a, err, sizeof err);
    CHECK(st == KD_OK);
    if (st) fprintf(stderr, "  version %d: %s\n", major, err);
    CHECK(a.dtype == KD_I64 && a.rank == 2 && a.shape[0] == 2 && a.shape[1] == 3 && a.nbytes == 48);
    CHECK(a.data && ((unsigned char *)a.data)[47] == 47);
    kd_array_free(&a);
  }
  /* A 1-D array marked Fortran order is the same bytes: accepted. */
  size_t n = make_npy(buf, 1, "{'descr': '<u2', 'fortran_order': True, 'shape': (3,), }", 6);
  CHECK(kd_npy_read_mem(buf, n, &a, err, sizeof err) == KD_OK && a.dtype == KD_BF16);
  kd_array_free(&a);
}

/* The header NumPy writes for a (2, 3) float32 array, byte for byte. */
static void test_header_bytes(void) {
  kd_array a;
  char path[512], err[256];
  int64_t shape[] = {2, 3};
  kd_array_alloc(&a, KD_F32, 2, shape);
  CHECK(kd_npy_write(tmpdir_file(path, sizeof path, "h.npy"), &a, err, sizeof err) == KD_OK);
  size_t len = 0;
  unsigned char *b = read_bytes(path, &len);
  const char *want = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  CHECK(b && len == 128 + 24);
  CHECK(b && memcmp(b, "\x93NUMPY\x01\x00\x76\x00", 10) == 0);
  CHECK(b && memcmp(b + 10, want, strlen(want)) == 0 && b[127] == '\n' && b[126] == ' ');
  free(b);
  kd_array_free(&a);

  int64_t one[] = {5};
  kd_array_alloc(&a, KD_I32, 1, one);
  kd_npy_write(path, &a, err, sizeof err);
  b = read_bytes(path, &len);
  CHECK(b && strstr((char *)b + 10, "'shape': (5,), }") != NULL);
  free(b);
  kd_array_free(&a);
  CHECK(tmpdir_count(".tmp.") == 0); /* no temporary left behind */

  /* A folder that does not exist: an I/O error, not a crash. */
  kd_array_alloc(&a, KD_I32, 1, one);
  CHECK(kd_npy_write(tmpdir_file(path, sizeof path, "nope/x.npy"), &a, err, sizeof err) == KD_ERR_IO);
  kd_array_free(&a);
}

/* Every truncation of a valid file fails cleanly; random flips of 1 to 4
   bytes either fail cleanly or give an array whose size matches its shape. */
static void test_robustness(void) {
  static unsigned char good[256], buf[256];
  size_t n = make_npy(good, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }", 48);
  kd_array a;
  char err[256];
  for (size_t len = 0; len < n; len++) {
    kd_status st = kd_npy_read_mem(good, len, &a, err, sizeof err);
    CHECK(st == KD_ERR_FORMAT);
    kd_array_free(&a);
  }
  uint64_t rng = 0x9e3779b97f4a7c15u;
  int accepted = 0;
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(buf, good, n);
    int flips = 1 + (int)(rng >> 62);
    for (int k = 0; k < flips; k++) {
      rng = rng * 6364136223846793005u + 1442695040888963407u;
      buf[(rng >> 33) % 64 + ((rng >> 20) & 1 ? 10 : 0)] = (unsigned char)(rng >> 11);
    }
    kd_status st = kd_npy_read_mem(buf, n, &a, err, sizeof err);
    if (st == KD_OK) {
      accepted++;
      CHECK((int64_t)a.nbytes == kd_array_numel(&a) * (int64_t)kd_dtype_size(a.dtype));
    } else {
      CHECK(st == KD_ERR_FORMAT && err[0]);
    }
    kd_array_free(&a);
  }
  printf("robustness: %d of 20000 mutated files accepted (flips in padding or data)\n", accepted);
}

int main(void) {
  if (!tmpdir_make()) {
    perror("mkdtemp");
    return 1;
  }
  static const kd_dtype dts[] = {KD_F32, KD_F64, KD_I32, KD_I64, KD_BF16, KD_BOOL};
  static const int64_t shapes[][4] = {{0}, {7}, {3, 5}, {2, 3, 4}, {2, 1, 3, 2}};
  for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++)
    for (int r = 0; r <= 4; r++) check_roundtrip(dts[d], r, shapes[r]);
  check_roundtrip(KD_F32, 2, (const int64_t[]){4, 0});
  test_header_bytes();
  test_versions();
  test_malformed();
  test_robustness();
  tmpdir_remove();
  return check_exit("test_npy");
}
