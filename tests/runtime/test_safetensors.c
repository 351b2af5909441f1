/* safetensors: our writer's layout (sorted header, 8-byte aligned data,
 * every tensor aligned to its element size, metadata), reading it back,
 * each kind of malformed file (KD_ERR_FORMAT with a message that names the
 * problem), writer input errors, and a truncation / byte-flip sweep. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "safetensors.h"
#include "tmpdir.h"

static unsigned char bytes_a[24], bytes_b[10], bytes_c[32], bytes_d[3], bytes_e[8];

static void test_write_read(void) {
  for (size_t i = 0; i < sizeof bytes_a; i++) bytes_a[i] = (unsigned char)(i + 1);
  for (size_t i = 0; i < sizeof bytes_b; i++) bytes_b[i] = (unsigned char)(100 + i);
  for (size_t i = 0; i < sizeof bytes_c; i++) bytes_c[i] = (unsigned char)(200 + i);
  memcpy(bytes_d, "xyz", 3);
  double pi = 3.25;
  memcpy(bytes_e, &pi, 8);
  kd_st_tensor in[] = {
    {"w.weight", KD_ST_F32, 2, {2, 3}, bytes_a, 24},
    {"b", KD_ST_BF16, 1, {5}, bytes_b, 10},
    {"idx", KD_ST_I64, 2, {2, 2}, bytes_c, 32},
    {"bytes", KD_ST_U8, 1, {3}, bytes_d, 3},
    {"scalar", KD_ST_F64, 0, {0}, bytes_e, 8},
    {"empty", KD_ST_F32, 2, {0, 4}, NULL, 0},
  };
  const char *meta[] = {"step", "12", "format", "pt"};
  char path[512], err[256] = "";
  tmpdir_file(path, sizeof path, "w.safetensors");
  kd_status s = kd_st_write(path, in, 6, meta, 2, err, sizeof err);
  CHECK(s == KD_OK);
  if (s) fprintf(stderr, "  %s\n", err);
  CHECK(tmpdir_count(".tmp.") == 0);

  /* The raw layout. */
  size_t len = 0;
  unsigned char *raw = read_bytes(path, &len);
  CHECK(raw && len > 8);
  uint64_t hn = 0;
  for (int i = 7; raw && i >= 0; i--) hn = hn << 8 | raw[i];
  CHECK((8 + hn) % 8 == 0);
  CHECK(len == 8 + hn + 24 + 10 + 32 + 3 + 8);
  if (raw) {
    char *h = malloc(hn + 1);
    memcpy(h, raw + 8, hn);
    h[hn] = '\0';
    /* __metadata__ first, then names in order; metadata keys sorted. */
    const char *order[] = {"\"__metadata__\"", "\"format\"", "\"step\"", "\"b\"", "\"bytes\"",
                           "\"empty\"", "\"idx\"", "\"scalar\"", "\"w.weight\""};
    const char *at = h;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
      const char *next = strstr(at, order[i]);
      CHECK(next != NULL);
      if (next) at = next;
    }
    free(h);
  }
  free(raw);

  kd_safetensors *st = NULL;
  s = kd_st_open(path, &st, err, sizeof err);
  CHECK(s == KD_OK);
  if (s) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  CHECK(kd_st_count(st) == 6);
  const unsigned char *data0 = NULL; /* start of the data section */
  for (int i = 0; i < 6; i++) {
    const kd_st_tensor *t = kd_st_find(st, in[i].name);
    CHECK(t && t->dtype == in[i].dtype && t->rank == in[i].rank && t->nbytes == in[i].nbytes);
    if (!t) continue;
    for (int d = 0; d < t->rank; d++) CHECK(t->shape[d] == in[i].shape[d]);
    CHECK(t->nbytes == 0 || memcmp(t->data, in[i].data, t->nbytes) == 0);
    if (t->dtype == KD_ST_I64) data0 = t->data; /* the widest comes first */
  }
  for (int i = 0; data0 && i < 6; i++) {
    const kd_st_tensor *t = kd_st_at(st, i);
    size_t off = (size_t)((const unsigned char *)t->data - data0);
    CHECK(off % kd_st_dtype_size(t->dtype) == 0);
    CHECK(((uintptr_t)t->data & (kd_st_dtype_size(t->dtype) - 1)) == 0);
  }
  CHECK(strcmp(kd_st_at(st, 0)->name, "b") == 0 && strcmp(kd_st_at(st, 5)->name, "w.weight") == 0);
  CHECK(kd_st_at(st, 6) == NULL && kd_st_find(st, "nope") == NULL);
  CHECK(kd_st_metadata_count(st) == 2);
  const char *k, *v;
  kd_st_metadata_at(st, 0, &k, &v);
  CHECK(strcmp(k, "format") == 0 && strcmp(v, "pt") == 0);
  CHECK(kd_st_metadata_get(st, "step") && strcmp(kd_st_metadata_get(st, "step"), "12") == 0);
  CHECK(kd_st_metadata_get(st, "absent") == NULL);

  kd_array a;
  CHECK(kd_st_to_array(kd_st_find(st, "w.weight"), &a, err, sizeof err) == KD_OK);
  CHECK(a.dtype == KD_F32 && a.rank == 2 && a.shape[1] == 3 && memcmp(a.data, bytes_a, 24) == 0);
  kd_array_free(&a);
  CHECK(kd_st_to_array(kd_st_find(st, "scalar"), &a, err, sizeof err) == KD_OK);
  CHECK(a.dtype == KD_F64 && a.rank == 0 && a.nbytes == 8 && *(double *)a.data == 3.25);
  kd_array_free(&a);
  CHECK(kd_st_to_array(kd_st_find(st, "bytes"), &a, err, sizeof err) == KD_ERR_UNSUPPORTED);
  CHECK(strstr(err, "U8") != NULL);
  kd_st_close(st);

  /* Writer input errors. */
  kd_st_tensor dup[] = {in[0], in[0]};
  CHECK(kd_st_write(path, dup, 2, NULL, 0, err, sizeof err) == KD_ERR_INVALID && strstr(err, "twice"));
  kd_st_tensor bad = in[0];
  bad.nbytes = 20;
  CHECK(kd_st_write(path, &bad, 1, NULL, 0, err, sizeof err) == KD_ERR_INVALID);
  bad = in[0];
  bad.name = "__metadata__";
  CHECK(kd_st_write(path, &bad, 1, NULL, 0, err, sizeof err) == KD_ERR_INVALID);
  const char *dupmeta[] = {"a", "1", "a", "2"};
  CHECK(kd_st_write(path, in, 1, dupmeta, 2, err, sizeof err) == KD_ERR_INVALID);
  CHECK(kd_st_write(tmpdir_file(path, sizeof path, "no/dir.safetensors"), in, 1, NULL, 0, err,
                    sizeof err) == KD_ERR_IO);
  CHECK(tmpdir_count(".tmp.") == 0);

  /* An empty file (no tensors) is valid. */
  CHECK(kd_st_write(tmpdir_file(path, sizeof path, "e.safetensors"), NULL, 0, NULL, 0, err, sizeof err) == KD_OK);
  CHECK(kd_st_open(path, &st, err, sizeof err) == KD_OK && kd_st_count(st) == 0);
  kd_st_close(st);
}

/* A file: 8-byte length, header text, data_len bytes of data. */
static size_t make_st(unsigned char *out, const char *json, size_t data_len) {
  size_t n = strlen(json);
  for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)n >> (8 * i));
  memcpy(out + 8, json, n);
  memset(out + 8 + n, 0x5a, data_len);
  return 8 + n + data_len;
}

static void expect_bad(const char *name, const unsigned char *buf, size_t len, const char *want) {
  kd_safetensors *st = (kd_safetensors *)1;
  char err[256] = "";
  kd_status s = kd_st_open_mem(buf, len, &st, err, sizeof err);
  int ok = s == KD_ERR_FORMAT && st == NULL && strstr(err, want) != NULL;
  if (!ok) fprintf(stderr, "case %s: status %d, message \"%s\", wanted \"%s\"\n", name, s, err, want);
  CHECK(ok);
  if (s == KD_OK) kd_st_close(st);
}

#define T1(dt, shape, offs) "{\"x\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" offs "}}"

static void test_malformed(void) {
  static unsigned char buf[1024];
  size_t n;
  expect_bad("short", (const unsigned char *)"abc", 3, "too short");
  n = make_st(buf, T1("F32", "[2]", "[0,8]"), 8);
  expect_bad("header past end", buf, 20, "runs past the end");
  memcpy(buf, "\x00\x00\x00\x00\x10\x00\x00\x00", 8);
  expect_bad("huge header", buf, n, "implausibly large");
  n = make_st(buf, "[1, 2, 3]", 0);
  expect_bad("not an object", buf, n, "does not start with '{'");
  n = make_st(buf, "{\"x\": [1, 2}", 0);
  expect_bad("bad json", buf, n, "not valid JSON");
  n = make_st(buf, "{} xx", 0);
  expect_bad("trailing text", buf, n, "text after");
  n = make_st(buf, "{\"\xc3\x28\": 1}", 0);
  expect_bad("bad utf8", buf, n, "UTF-8");
  n = make_st(buf, "{\"x\": 1}", 0);
  expect_bad("entry not object", buf, n, "not an object");
  n = make_st(buf, T1("F31", "[2]", "[0,8]"), 8);
  expect_bad("bad dtype", buf, n, "unsupported dtype 'F31'");
  n = make_st(buf, T1("F32", "[-2]", "[0,8]"), 8);
  expect_bad("negative shape", buf, n, "non-negative integers");
  n = make_st(buf, T1("F32", "[2.5]", "[0,8]"), 8);
  expect_bad("fractional shape", buf, n, "non-negative integers");
  n = make_st(buf, T1("F32", "[4294967296,4294967296,4294967296]", "[0,8]"), 8);
  expect_bad("overflowing shape", buf, n, "overflows");
  n = make_st(buf, T1("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]"), 4);
  expect_bad("rank 9", buf, n, "rank 9");
  n = make_st(buf, T1("F32", "[2]", "[0,16]"), 8);
  expect_bad("offsets past data", buf, n, "out of the data section");
  n = make_st(buf, T1("F32", "[2]", "[8,0]"), 8);
  expect_bad("end before begin", buf, n, "out of the data section");
  n = make_st(buf, T1("F32", "[2]", "[0,4]"), 4);
  expect_bad("size mismatch", buf, n, "needs 8 bytes");
  n = make_st(buf, T1("F32", "[2]", "[0]"), 8);
  expect_bad("one offset", buf, n, "two non-negative integers");
  n = make_st(buf, T1("F32", "[2]", "[0,8]"), 12);
  expect_bad("trailing data", buf, n, "4 bytes after the last tensor");
  n = make_st(buf, T1("F32", "[2]", "[4,12]"), 12);
  expect_bad("gap", buf, n, "unused bytes before tensor 'x'");
  n = make_st(buf,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
              12);
  expect_bad("overlap", buf, n, "'a' and 'b' overlap");
  n = make_st(buf,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
              16);
  expect_bad("duplicate name", buf, n, "'a' appears twice");
  n = make_st(buf, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8);
  expect_bad("missing field", buf, n, "all required");
  n = make_st(buf, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", 8);
  expect_bad("unknown field", buf, n, "unknown field 'extra'");
  n = make_st(buf, "{\"__metadata__\":{\"k\":3}}", 0);
  expect_bad("metadata not string", buf, n, "'k' is not a string");
  n = make_st(buf, "{\"__metadata__\":[]}", 0);
  expect_bad("metadata not object", buf, n, "__metadata__ is not an object");

  /* Valid: space padding after the JSON, metadata, a zero-size tensor. */
  n = make_st(buf,
              "{\"__metadata__\":{\"k\":\"v\"},\"z\":{\"dtype\":\"I8\",\"shape\":[0],"
              "\"data_offsets\":[0,0]},\"x\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]}}   ",
              6);
  kd_safetensors *st;
  char err[256];
  kd_status s = kd_st_open_mem(buf, n, &st, err, sizeof err);
  CHECK(s == KD_OK);
  if (s) fprintf(stderr, "  valid file: %s\n", err);
  if (!s) {
    CHECK(kd_st_count(st) == 2 && kd_st_find(st, "x")->nbytes == 6);
    CHECK(strcmp(kd_st_metadata_get(st, "k"), "v") == 0);
    kd_st_close(st);
  }

  char path[512];
  CHECK(kd_st_open(tmpdir_file(path, sizeof path, "absent.safetensors"), &st, err, sizeof err) == KD_ERR_IO);
  write_bytes(tmpdir_file(path, sizeof path, "tiny.safetensors"), "abc", 3);
  CHECK(kd_st_open(path, &st, err, sizeof err) == KD_ERR_FORMAT && strstr(err, "too short"));
}

/* Truncations of a valid file fail cleanly; byte flips anywhere in the
   header either fail cleanly or give tensors inside the buffer. */
static void test_robustness(void) {
  static unsigned char good[512], buf[512];
  size_t n = make_st(good,
                     "{\"__metadata__\":{\"a\":\"b\"},\"p\":{\"dtype\":\"F32\",\"shape\":[2,2],"
                     "\"data_offsets\":[0,16]},\"q\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]}}",
                     22);
  kd_safetensors *st;
  char err[256];
  for (size_t len = 0; len < n; len++) {
    CHECK(kd_st_open_mem(good, len, &st, err, sizeof err) == KD_ERR_FORMAT);
  }
  uint64_t rng = 0x2545f4914f6cdd1du;
  int accepted = 0;
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(buf, good, n);
    int flips = 1 + (int)(rng >> 62);
    for (int k = 0; k < flips; k++) {
      rng = rng * 6364136223846793005u + 1442695040888963407u;
      buf[(rng >> 33) % (n - 22)] = (unsigned char)(rng >> 11);
    }
    kd_status s = kd_st_open_mem(buf, n, &st, err, sizeof err);
    if (s == KD_OK) {
      accepted++;
      for (int i = 0; i < kd_st_count(st); i++) {
        const kd_st_tensor *t = kd_st_at(st, i);
        const unsigned char *p = t->data;
        CHECK(p >= buf && p + t->nbytes <= buf + n);
      }
      kd_st_close(st);
    } else {
      CHECK(s == KD_ERR_FORMAT && err[0]);
    }
  }
  printf("robustness: %d of 20000 mutated files accepted\n", accepted);
}

int main(void) {
  if (!tmpdir_make()) {
    perror("mkdtemp");
    return 1;
  }
  test_write_read();
  test_malformed();
  test_robustness();
  tmpdir_remove();
  return check_exit("test_safetensors");
}
