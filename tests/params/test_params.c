/* runtime/params.h: seeded initialisation, loading by name with its
 * validation messages, saving; and the glue from a lowered model
 * (tools/kdc/model_params.h).
 *
 * Statistical bounds: a normal(mu, sigma) tensor of n values has a sample
 * mean with standard error sigma / sqrt(n) and a sample standard deviation
 * with standard error about sigma / sqrt(2 n); the fraction within one sigma
 * is binomial, p = 0.6827, error sqrt(p (1 - p) / n). Each check allows 5
 * standard errors: a correct generator fails one of them with probability
 * below 1e-5 (and the seed is fixed, so it either passes or not, forever);
 * a std off by 1%, a mean shifted by sigma / 100, or uniform values instead
 * of normal ones (fraction 0.577) fail at n = 2^20. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "model_params.h"
#include "params.h"
#include "tmpdir.h"

#define ERRLEN 2048

static kd_params make_set(const char *const *names, int n, const int64_t *dims, kd_pinit init) {
  kd_params P = {0};
  char err[256];
  for (int i = 0; i < n; i++)
    CHECK(kd_params_add(&P, names[i], 2, dims, init, err, sizeof err) == KD_OK);
  return P;
}

static void test_normal_statistics(void) {
  const double mu = 0.25, sigma = 2.0;
  const int64_t dims[] = {1024, 1024};
  kd_params P = {0};
  char err[256];
  CHECK(kd_params_add(&P, "w", 2, dims, kd_pinit_normal(mu, sigma), err, sizeof err) == KD_OK);
  CHECK(kd_params_init(&P, 7, err, sizeof err) == KD_OK);
  const float *x = kd_params_data(&P, 0);
  double n = 1024.0 * 1024.0, s = 0, ss = 0, within = 0;
  for (int64_t i = 0; i < (int64_t)n; i++) {
    s += x[i];
    within += fabs(x[i] - mu) < sigma;
  }
  double mean = s / n;
  for (int64_t i = 0; i < (int64_t)n; i++) ss += (x[i] - mean) * (x[i] - mean);
  double sd = sqrt(ss / (n - 1)), frac = within / n, p = 0.682689492;
  CHECK(fabs(mean - mu) < 5 * sigma / sqrt(n));
  CHECK(fabs(sd - sigma) < 5 * sigma / sqrt(2 * n));
  CHECK(fabs(frac - p) < 5 * sqrt(p * (1 - p) / n));
  CHECK(((uintptr_t)x & 63) == 0);
  kd_params_free(&P);
}

static void test_zeros_ones_and_alignment(void) {
  const int64_t a[] = {3, 5}, b[] = {7};
  kd_params P = {0};
  char err[256];
  CHECK(kd_params_add(&P, "z", 2, a, kd_pinit_zeros(), err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&P, "o", 1, b, kd_pinit_ones(), err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&P, "s", 0, NULL, kd_pinit_normal(3, 0), err, sizeof err) == KD_OK);
  CHECK(kd_params_count(&P) == 15 + 7 + 1);
  CHECK(kd_params_init(&P, 1, err, sizeof err) == KD_OK);
  for (int i = 0; i < 3; i++) CHECK(((uintptr_t)kd_params_data(&P, i) & 63) == 0);
  for (int i = 0; i < 15; i++) CHECK(kd_params_data(&P, 0)[i] == 0.0f);
  for (int i = 0; i < 7; i++) CHECK(kd_params_data(&P, 1)[i] == 1.0f);
  CHECK(kd_params_data(&P, 2)[0] == 3.0f); /* std 0: exactly the mean */
  kd_params_free(&P);
}

static void test_seeds_and_names(void) {
  const int64_t dims[] = {33, 17}; /* odd: the last Box-Muller pair is half used */
  const char *ab[] = {"a", "b"}, *xbca[] = {"x", "b", "c", "a"};
  kd_params P1 = make_set(ab, 2, dims, kd_pinit_normal(0, 1));
  kd_params P2 = make_set(ab, 2, dims, kd_pinit_normal(0, 1));
  kd_params P3 = make_set(ab, 2, dims, kd_pinit_normal(0, 1));
  kd_params Q = make_set(xbca, 4, dims, kd_pinit_normal(0, 1));
  char err[256];
  size_t bytes = 33 * 17 * sizeof(float);
  CHECK(kd_params_init(&P1, 42, err, sizeof err) == KD_OK);
  CHECK(kd_params_init(&P2, 42, err, sizeof err) == KD_OK);
  CHECK(kd_params_init(&P3, 43, err, sizeof err) == KD_OK);
  CHECK(kd_params_init(&Q, 42, err, sizeof err) == KD_OK);
  CHECK(memcmp(P1.arena, P2.arena, P1.nfloats * sizeof(float)) == 0);
  CHECK(memcmp(kd_params_data(&P1, 0), kd_params_data(&P3, 0), bytes) != 0);
  CHECK(memcmp(kd_params_data(&P1, 1), kd_params_data(&P3, 1), bytes) != 0);
  /* Streams come from (seed, name): two names differ, and "a" and "b" keep
     their values when other tensors are added before, between and after. */
  CHECK(memcmp(kd_params_data(&P1, 0), kd_params_data(&P1, 1), bytes) != 0);
  CHECK(memcmp(kd_params_data(&P1, 0), kd_params_data(&Q, 3), bytes) == 0);
  CHECK(memcmp(kd_params_data(&P1, 1), kd_params_data(&Q, 1), bytes) == 0);
  /* The same bits on every machine: the first values of "a" for seed 42,
     computed by an independent Python transcription of params.h's recipe
     (FNV-1a-64 of the seed's bytes and the name, splitmix64, xoshiro256**,
     53-bit uniforms, Box-Muller in double). A change here changes every
     initialised model; it must be deliberate (and documented). */
  static const uint32_t want[4] = {0xbe392de6u, 0x3eaa6d70u, 0x3e9a805fu, 0x3fbc68f7u};
  for (int i = 0; i < 4; i++) {
    uint32_t bits;
    memcpy(&bits, &kd_params_data(&P1, 0)[i], 4);
    if (bits != want[i])
      fprintf(stderr, "a[%d] = 0x%08x (%g), want 0x%08x\n", i, bits, kd_params_data(&P1, 0)[i],
              want[i]);
    CHECK(bits == want[i]);
  }
  kd_params_free(&P1);
  kd_params_free(&P2);
  kd_params_free(&P3);
  kd_params_free(&Q);
}

static void test_add_errors(void) {
  kd_params P = {0};
  char err[256];
  const int64_t ok[] = {2}, zero[] = {2, 0};
  CHECK(kd_params_add(&P, "", 1, ok, kd_pinit_zeros(), err, sizeof err) == KD_ERR_INVALID);
  CHECK(!strcmp(err, "parameter with an empty name"));
  CHECK(kd_params_add(&P, "w", 2, zero, kd_pinit_zeros(), err, sizeof err) == KD_ERR_INVALID);
  CHECK(!strcmp(err,
                "parameter \"w\": dimension 1 is 0 (each must be >= 1, the total at most 2^40)"));
  CHECK(kd_params_add(&P, "w", 1, ok, kd_pinit_normal(0, -1), err, sizeof err) == KD_ERR_INVALID);
  CHECK(!strcmp(err, "parameter \"w\": normal(0, -1) is not a distribution"));
  CHECK(kd_params_add(&P, "w", 9, ok, kd_pinit_zeros(), err, sizeof err) == KD_ERR_INVALID);
  CHECK(!strcmp(err, "parameter \"w\": rank 9 is outside 0..8"));
  CHECK(kd_params_add(&P, "w", 1, ok, kd_pinit_zeros(), err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&P, "w", 1, ok, kd_pinit_zeros(), err, sizeof err) == KD_ERR_INVALID);
  CHECK(!strcmp(err, "parameter \"w\" added twice"));
  CHECK(kd_params_alloc(&P, err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&P, "v", 1, ok, kd_pinit_zeros(), err, sizeof err) == KD_ERR_INVALID);
  CHECK(!strcmp(err, "parameter set already allocated"));
  CHECK(P.n == 1);
  kd_params_free(&P);
}

/* A model of three tensors, initialised with seed 5. */
static kd_params model3(void) {
  kd_params P = {0};
  char err[256];
  const int64_t w[] = {4, 3}, b[] = {3};
  CHECK(kd_params_add(&P, "layer.weight", 2, w, kd_pinit_normal(0, 1), err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&P, "layer.bias", 1, b, kd_pinit_normal(1, 1), err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&P, "norm.weight", 1, b, kd_pinit_ones(), err, sizeof err) == KD_OK);
  CHECK(kd_params_init(&P, 5, err, sizeof err) == KD_OK);
  return P;
}

static void test_save_load(void) {
  char path[512], err[ERRLEN];
  tmpdir_file(path, sizeof path, "m.safetensors");
  kd_params P = model3(), Q = model3();
  uint64_t seed = 5;
  kd_params_meta meta = {.kdc_version = "9.9", .model = "tiny", .seed = &seed};
  CHECK(kd_params_save(&P, path, &meta, err, sizeof err) == KD_OK);
  memset(Q.arena, 0, Q.nfloats * sizeof(float));
  CHECK(kd_params_load_safetensors(&Q, path, err, sizeof err) == KD_OK);
  CHECK(memcmp(P.arena, Q.arena, P.nfloats * sizeof(float)) == 0);
  kd_safetensors *st = NULL;
  CHECK(kd_st_open(path, &st, err, sizeof err) == KD_OK);
  if (st) {
    CHECK(!strcmp(kd_st_metadata_get(st, "format"), "kdc-params"));
    CHECK(!strcmp(kd_st_metadata_get(st, "kdc_version"), "9.9"));
    CHECK(!strcmp(kd_st_metadata_get(st, "model"), "tiny"));
    CHECK(!strcmp(kd_st_metadata_get(st, "seed"), "5"));
    CHECK(kd_st_find(st, "layer.weight")->dtype == KD_ST_F32);
  }
  kd_st_close(st);
  /* Without meta only the format is recorded. */
  CHECK(kd_params_save(&P, path, NULL, err, sizeof err) == KD_OK);
  CHECK(kd_st_open(path, &st, err, sizeof err) == KD_OK);
  if (st) CHECK(kd_st_metadata_count(st) == 1 && kd_st_metadata_get(st, "format"));
  kd_st_close(st);
  /* A load into a set with no arena yet allocates it. */
  kd_params R = {0};
  const int64_t w[] = {4, 3}, b[] = {3};
  CHECK(kd_params_add(&R, "norm.weight", 1, b, kd_pinit_zeros(), err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&R, "layer.weight", 2, w, kd_pinit_zeros(), err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&R, "layer.bias", 1, b, kd_pinit_zeros(), err, sizeof err) == KD_OK);
  CHECK(kd_params_load_safetensors(&R, path, err, sizeof err) == KD_OK);
  CHECK(R.arena && memcmp(kd_params_data(&R, 1), kd_params_data(&P, 0), 12 * sizeof(float)) == 0);
  kd_params_free(&P);
  kd_params_free(&Q);
  kd_params_free(&R);
}

/* Writes tensors to path with kd_st_write; data are zeros of each size. */
static void write_file(const char *path, const kd_st_tensor *ts, int n) {
  static unsigned char zeros[4096];
  kd_st_tensor copy[16];
  for (int i = 0; i < n; i++) {
    copy[i] = ts[i];
    int64_t numel = 1;
    for (int d = 0; d < ts[i].rank; d++) numel *= ts[i].shape[d];
    copy[i].nbytes = (size_t)numel * kd_st_dtype_size(ts[i].dtype);
    if (!copy[i].data) copy[i].data = zeros;
  }
  char err[512];
  CHECK(kd_st_write(path, copy, n, NULL, 0, err, sizeof err) == KD_OK);
}

/* Loading path into model3() fails with exactly `want`, values unchanged. */
static void expect_load_error(const char *path, const char *want) {
  kd_params P = model3(), Q = model3();
  char err[ERRLEN];
  CHECK(kd_params_load_safetensors(&P, path, err, sizeof err) == KD_ERR_FORMAT);
  if (strcmp(err, want)) fprintf(stderr, "got:\n%s\nwant:\n%s\n", err, want);
  CHECK(!strcmp(err, want));
  CHECK(memcmp(P.arena, Q.arena, P.nfloats * sizeof(float)) == 0);
  kd_params_free(&P);
  kd_params_free(&Q);
}

#define T2(n, a, b) {n, KD_ST_F32, 2, {a, b}, NULL, 0}
#define T1(n, a) {n, KD_ST_F32, 1, {a}, NULL, 0}

static void test_validation(void) {
  char path[512], msg[ERRLEN];
  tmpdir_file(path, sizeof path, "bad.safetensors");

  const kd_st_tensor missing[] = {T2("layer.weight", 4, 3)};
  write_file(path, missing, 1);
  snprintf(msg, sizeof msg, "%s: 2 tensors missing: \"layer.bias\", \"norm.weight\"", path);
  expect_load_error(path, msg);

  const kd_st_tensor extra[] = {T2("layer.weight", 4, 3), T1("layer.bias", 3), T1("norm.weight", 3),
                                T1("norm.wieght", 3), T1("x", 1)};
  write_file(path, extra, 5);
  snprintf(msg, sizeof msg,
           "%s: 2 unexpected tensors: \"norm.wieght\" (did you mean \"norm.weight\"?), \"x\"",
           path);
  expect_load_error(path, msg);

  const kd_st_tensor many[] = {T1("a1", 1), T1("a2", 1), T1("a3", 1), T1("a4", 1),
                               T1("a5", 1), T1("a6", 1), T1("a7", 1)};
  write_file(path, many, 7);
  snprintf(msg, sizeof msg,
           "%s: 3 tensors missing: \"layer.weight\", \"layer.bias\", \"norm.weight\"\n"
           "%s: 7 unexpected tensors: \"a1\", \"a2\", \"a3\", \"a4\", \"a5\" and 2 more",
           path, path);
  expect_load_error(path, msg);

  const kd_st_tensor shape[] = {T2("layer.weight", 3, 4),
                                T2("layer.bias", 1, 3),
                                {"norm.weight", KD_ST_I32, 1, {3}, NULL, 0}};
  write_file(path, shape, 3);
  snprintf(msg, sizeof msg,
           "%s: tensor \"layer.weight\": shape [3, 4] in the file, [4, 3] in the model\n"
           "%s: tensor \"layer.bias\": shape [1, 3] in the file, [3] in the model\n"
           "%s: tensor \"norm.weight\": dtype I32, not F32, BF16 or F16",
           path, path, path);
  expect_load_error(path, msg);
  /* Without a message buffer the answer is the same. */
  kd_params M = model3();
  kd_safetensors *st = NULL;
  CHECK(kd_st_open(path, &st, NULL, 0) == KD_OK);
  if (st) CHECK(kd_params_check(&M, st, path, NULL, 0) == KD_ERR_FORMAT);
  kd_st_close(st);
  kd_params_free(&M);

  /* Not safetensors at all: the reader's message, values unchanged. */
  CHECK(write_bytes(path, "nope", 4) == 0);
  kd_params P = model3();
  char err[ERRLEN];
  CHECK(kd_params_load_safetensors(&P, path, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strstr(err, path) == err);
  kd_params_free(&P);
}

/* BF16 and F16 widen to float exactly; bit patterns cover signs, a
   subnormal half, infinity and the largest half. */
static void test_half_dtypes(void) {
  char path[512], err[ERRLEN];
  tmpdir_file(path, sizeof path, "half.safetensors");
  const uint16_t bf[3] = {0x3f80, 0xc040, 0x3c23}; /* 1, -3, 0.00994873046875 */
  const uint16_t hf[3] = {0x0001, 0xfbff, 0x7c00}; /* 2^-24, -65504, inf */
  const float wbf[3] = {1.0f, -3.0f, 0.00994873046875f};
  const float whf[3] = {5.9604644775390625e-08f, -65504.0f, INFINITY};
  kd_st_tensor ts[2] = {{"b", KD_ST_BF16, 1, {3}, bf, 6}, {"h", KD_ST_F16, 1, {3}, hf, 6}};
  CHECK(kd_st_write(path, ts, 2, NULL, 0, err, sizeof err) == KD_OK);
  kd_params P = {0};
  const int64_t d[] = {3};
  CHECK(kd_params_add(&P, "h", 1, d, kd_pinit_zeros(), err, sizeof err) == KD_OK);
  CHECK(kd_params_add(&P, "b", 1, d, kd_pinit_zeros(), err, sizeof err) == KD_OK);
  CHECK(kd_params_load_safetensors(&P, path, err, sizeof err) == KD_OK);
  CHECK(memcmp(kd_params_data(&P, 1), wbf, sizeof wbf) == 0);
  CHECK(memcmp(kd_params_data(&P, 0), whf, sizeof whf) == 0);
  kd_params_free(&P);
}

/* The glue: a graph's parameters with their shapes and init specs; a
   parameter with a symbolic dimension is refused. */
static void test_model_glue(void) {
  kd_model m = {.g = kd_graph_new()};
  kd_layers_init(&m.layers, m.g);
  kd_node_id x = kd_input(m.g, "x", KD_F32, 2, (kd_dim[]){kd_graph_sym(m.g, "B"), 4});
  kd_layer_layernorm(&m.layers, "ln", kd_layer_linear(&m.layers, "fc", x, 6, true));
  kd_params P = {0};
  char err[256], buf[64];
  CHECK(kd_model_params(&m, &P, err, sizeof err) == KD_OK);
  CHECK(P.n == 4);
  if (P.n == 4) {
    CHECK(!strcmp(P.t[0].name, "fc.weight") && P.t[0].rank == 2 && P.t[0].shape[0] == 4 &&
          P.t[0].shape[1] == 6);
    CHECK(!strcmp(kd_pinit_str(P.t[0].init, buf, sizeof buf), "normal(0, 0.02)"));
    CHECK(!strcmp(P.t[1].name, "fc.bias") && P.t[1].init.kind == KD_PINIT_ZEROS);
    CHECK(!strcmp(P.t[2].name, "ln.weight") && P.t[2].init.kind == KD_PINIT_ONES);
    CHECK(!strcmp(P.t[3].name, "ln.bias") && P.t[3].shape[0] == 6);
  }
  kd_params_free(&P);
  kd_layer_param(&m.layers, "bad", "weight", 2, (kd_dim[]){kd_graph_sym(m.g, "T"), 3},
                 (kd_init){KD_INIT_ZEROS, 0, 0});
  CHECK(kd_model_params(&m, &P, err, sizeof err) == KD_ERR_INVALID);
  CHECK(!strcmp(err, "parameter \"bad.weight\": dimension 0 is the symbol T; parameters need "
                     "concrete shapes"));
  kd_params_free(&P);
  kd_model_free(&m);
}

int main(void) {
  if (!tmpdir_make()) {
    perror("mkdtemp");
    return 1;
  }
  test_normal_statistics();
  test_zeros_ones_and_alignment();
  test_seeds_and_names();
  test_add_errors();
  test_save_load();
  test_validation();
  test_half_dtypes();
  test_model_glue();
  tmpdir_remove();
  return check_exit("test_params");
}
