/* Parameter sets: seeded initialisation, validated loading, atomic saving
 * (params.h). */
#include "params.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "dtype.h"
#include "fileio.h"

#define KD_PARAMS_ALIGN   64                                /* bytes */
#define KD_PARAMS_ALIGN_F (KD_PARAMS_ALIGN / sizeof(float)) /* floats */
#define KD_PARAMS_LIST    5 /* names listed per problem before "and K more" */

const char *kd_pinit_str(kd_pinit init, char *buf, size_t len) {
  switch (init.kind) {
  case KD_PINIT_NORMAL: snprintf(buf, len, "normal(%g, %g)", init.mean, init.std); break;
  case KD_PINIT_ZEROS: snprintf(buf, len, "zeros"); break;
  case KD_PINIT_ONES: snprintf(buf, len, "ones"); break;
  }
  return buf;
}

/* ---- the set ------------------------------------------------------------ */

int kd_params_find(const kd_params *P, const char *name) {
  for (int i = 0; i < P->n; i++)
    if (!strcmp(P->t[i].name, name)) return i;
  return -1;
}

kd_status kd_params_add(kd_params *P, const char *name, int rank, const int64_t *shape,
                        kd_pinit init, char *err, size_t errlen) {
  if (P->arena) return kd_errf(err, errlen, KD_ERR_INVALID, "parameter set already allocated");
  if (!name || !*name) return kd_errf(err, errlen, KD_ERR_INVALID, "parameter with an empty name");
  if (kd_params_find(P, name) >= 0)
    return kd_errf(err, errlen, KD_ERR_INVALID, "parameter \"%s\" added twice", name);
  if (rank < 0 || rank > KD_PARAMS_MAX_RANK)
    return kd_errf(err, errlen, KD_ERR_INVALID, "parameter \"%s\": rank %d is outside 0..%d", name,
                   rank, KD_PARAMS_MAX_RANK);
  int64_t numel = 1;
  for (int d = 0; d < rank; d++) {
    /* 2^40 floats bound every dimension and the product: no overflow below. */
    if (shape[d] < 1 || shape[d] > (INT64_C(1) << 40) || numel > (INT64_C(1) << 40) / shape[d])
      return kd_errf(err, errlen, KD_ERR_INVALID,
                     "parameter \"%s\": dimension %d is %" PRId64
                     " (each must be >= 1, the total at most 2^40)",
                     name, d, shape[d]);
    numel *= shape[d];
  }
  if (init.kind == KD_PINIT_NORMAL && !(init.std >= 0 && isfinite(init.std) && isfinite(init.mean)))
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "parameter \"%s\": normal(%g, %g) is not a distribution", name, init.mean,
                   init.std);
  if (P->n == P->cap) {
    int cap = P->cap ? 2 * P->cap : 16;
    kd_ptensor *t = realloc(P->t, (size_t)cap * sizeof *t);
    if (!t) return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
    P->t = t, P->cap = cap;
  }
  kd_ptensor *t = &P->t[P->n];
  memset(t, 0, sizeof *t);
  if (!(t->name = strdup(name))) return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  t->rank = rank;
  for (int d = 0; d < rank; d++) t->shape[d] = shape[d];
  t->numel = numel;
  t->init = init;
  P->n++;
  return KD_OK;
}

kd_status kd_params_alloc(kd_params *P, char *err, size_t errlen) {
  if (P->arena) return KD_OK;
  size_t at = 0;
  for (int i = 0; i < P->n; i++) {
    P->t[i].offset = at;
    at += ((size_t)P->t[i].numel + KD_PARAMS_ALIGN_F - 1) / KD_PARAMS_ALIGN_F * KD_PARAMS_ALIGN_F;
  }
  /* aligned_alloc wants a non-zero multiple of the alignment. */
  size_t bytes = (at ? at : KD_PARAMS_ALIGN_F) * sizeof(float);
  P->arena = aligned_alloc(KD_PARAMS_ALIGN, bytes);
  if (!P->arena)
    return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory for %zu bytes of parameters", bytes);
  memset(P->arena, 0, bytes);
  P->nfloats = at;
  return KD_OK;
}

void kd_params_free(kd_params *P) {
  for (int i = 0; i < P->n; i++) free(P->t[i].name);
  free(P->t);
  free(P->arena);
  memset(P, 0, sizeof *P);
}

float *kd_params_data(const kd_params *P, int i) {
  return P->arena ? P->arena + P->t[i].offset : NULL;
}

const char *kd_params_shape_str(int rank, const int64_t *shape, char *buf, size_t len) {
  size_t k = (size_t)snprintf(buf, len, "[");
  for (int d = 0; d < rank && k < len; d++)
    k += (size_t)snprintf(buf + k, len - k, "%s%" PRId64, d ? ", " : "", shape[d]);
  if (k < len) snprintf(buf + k, len - k, "]");
  return buf;
}

int64_t kd_params_count(const kd_params *P) {
  int64_t n = 0;
  for (int i = 0; i < P->n; i++) n += P->t[i].numel;
  return n;
}

/* ---- initialisation ----------------------------------------------------- */

/* FNV-1a, 64-bit, over the seed's 8 bytes (little-endian) then the name. */
static uint64_t kd_params_stream(uint64_t seed, const char *name) {
  uint64_t h = 0xcbf29ce484222325u;
  for (int i = 0; i < 8; i++) h = (h ^ ((seed >> (8 * i)) & 0xff)) * 0x100000001b3u;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3u;
  return h;
}

/* Box-Muller: u1 in (0, 1] keeps the log finite; both outputs are used. */
static void kd_params_normal(kd_rng *r, float *x, int64_t n, double mean, double std) {
  const double two_pi = 6.283185307179586;
  for (int64_t i = 0; i < n; i += 2) {
    double u1 = 1.0 - kd_rng_uniform(r), u2 = kd_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1));
    x[i] = (float)(mean + std * rad * cos(two_pi * u2));
    if (i + 1 < n) x[i + 1] = (float)(mean + std * rad * sin(two_pi * u2));
  }
}

kd_status kd_params_init(kd_params *P, uint64_t seed, char *err, size_t errlen) {
  kd_status st = kd_params_alloc(P, err, errlen);
  if (st) return st;
  for (int i = 0; i < P->n; i++) {
    const kd_ptensor *t = &P->t[i];
    float *x = kd_params_data(P, i);
    switch (t->init.kind) {
    case KD_PINIT_NORMAL: {
      kd_rng r;
      kd_rng_seed(&r, kd_params_stream(seed, t->name));
      kd_params_normal(&r, x, t->numel, t->init.mean, t->init.std);
      break;
    }
    case KD_PINIT_ZEROS: memset(x, 0, (size_t)t->numel * sizeof *x); break;
    case KD_PINIT_ONES:
      for (int64_t k = 0; k < t->numel; k++) x[k] = 1.0f;
      break;
    }
  }
  return KD_OK;
}

/* ---- checking a file ---------------------------------------------------- */

/* Appends a formatted line to err (a '\n' before all but the first). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void kd_params_line(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || !errlen) return;
  size_t at = strlen(err);
  if (at && at + 1 < errlen) err[at++] = '\n', err[at] = 0;
  if (at + 1 >= errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err + at, errlen - at, fmt, ap);
  va_end(ap);
}

/* Levenshtein distance, or a large number for names past 127 bytes. */
static int kd_params_distance(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  if (na > 127 || nb > 127) return 1 << 20;
  int row[128];
  for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
  for (size_t i = 1; i <= na; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= nb; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[nb];
}

/* The model's name closest to an unexpected one: at most 3 edits and at
   most a third of the name's length (so "x" suggests nothing). */
static const char *kd_params_suggest(const kd_params *P, const char *name) {
  const char *best = NULL;
  int bestd = 4, limit = (int)strlen(name) / 3;
  for (int i = 0; i < P->n; i++) {
    int d = kd_params_distance(name, P->t[i].name);
    if (d < bestd && d <= limit) best = P->t[i].name, bestd = d;
  }
  return best;
}

static int kd_params_loadable(kd_st_dtype t) {
  return t == KD_ST_F32 || t == KD_ST_BF16 || t == KD_ST_F16;
}

static int kd_params_same_shape(const kd_ptensor *t, const kd_st_tensor *f) {
  if (t->rank != f->rank) return 0;
  for (int d = 0; d < t->rank; d++)
    if (t->shape[d] != f->shape[d]) return 0;
  return 1;
}

/* "N tensors missing: ..." and "N unexpected tensors: ..."; each returns N. */
static int kd_params_missing(const kd_params *P, const kd_safetensors *st, const char *path,
                             char *err, size_t errlen) {
  int n = 0;
  for (int i = 0; i < P->n; i++) n += !kd_st_find(st, P->t[i].name);
  if (!n) return 0;
  char list[1024] = "";
  size_t k = 0;
  for (int i = 0, listed = 0; i < P->n && listed < KD_PARAMS_LIST; i++) {
    if (kd_st_find(st, P->t[i].name)) continue;
    const char *name = P->t[i].name;
    if (k < sizeof list)
      k += (size_t)snprintf(list + k, sizeof list - k, "%s\"%s\"", listed ? ", " : "", name);
    listed++;
  }
  if (n > KD_PARAMS_LIST && k < sizeof list)
    snprintf(list + k, sizeof list - k, " and %d more", n - KD_PARAMS_LIST);
  kd_params_line(err, errlen, "%s: %d tensor%s missing: %s", path, n, n == 1 ? "" : "s", list);
  return n;
}

static int kd_params_unexpected(const kd_params *P, const kd_safetensors *st, const char *path,
                                char *err, size_t errlen) {
  int n = 0, count = kd_st_count(st);
  for (int i = 0; i < count; i++) n += kd_params_find(P, kd_st_at(st, i)->name) < 0;
  if (!n) return 0;
  char list[1536] = "";
  size_t k = 0;
  for (int i = 0, listed = 0; i < count && listed < KD_PARAMS_LIST; i++) {
    const char *name = kd_st_at(st, i)->name;
    if (kd_params_find(P, name) >= 0) continue;
    const char *near = kd_params_suggest(P, name);
    if (k < sizeof list)
      k += (size_t)snprintf(list + k, sizeof list - k, "%s\"%s\"", listed ? ", " : "", name);
    if (near && k < sizeof list)
      k += (size_t)snprintf(list + k, sizeof list - k, " (did you mean \"%s\"?)", near);
    listed++;
  }
  if (n > KD_PARAMS_LIST && k < sizeof list)
    snprintf(list + k, sizeof list - k, " and %d more", n - KD_PARAMS_LIST);
  kd_params_line(err, errlen, "%s: %d unexpected tensor%s: %s", path, n, n == 1 ? "" : "s", list);
  return n;
}

kd_status kd_params_check(const kd_params *P, const kd_safetensors *st, const char *path, char *err,
                          size_t errlen) {
  if (err && errlen) err[0] = 0;
  int bad = 0, named = kd_params_missing(P, st, path, err, errlen);
  named += kd_params_unexpected(P, st, path, err, errlen);
  for (int i = 0; i < P->n; i++) {
    const kd_ptensor *t = &P->t[i];
    const kd_st_tensor *f = kd_st_find(st, t->name);
    if (!f) continue;
    int shape_ok = kd_params_same_shape(t, f), dtype_ok = kd_params_loadable(f->dtype);
    if (shape_ok && dtype_ok) continue;
    if (bad++ >= KD_PARAMS_LIST) continue;
    if (!shape_ok) {
      char a[192], b[192];
      kd_params_line(err, errlen, "%s: tensor \"%s\": shape %s in the file, %s in the model", path,
                     t->name, kd_params_shape_str(f->rank, f->shape, a, sizeof a),
                     kd_params_shape_str(t->rank, t->shape, b, sizeof b));
    }
    if (!dtype_ok)
      kd_params_line(err, errlen, "%s: tensor \"%s\": dtype %s, not F32, BF16 or F16", path,
                     t->name, kd_st_dtype_name(f->dtype));
  }
  if (bad > KD_PARAMS_LIST)
    kd_params_line(err, errlen, "%s: ... and %d more mismatches", path, bad - KD_PARAMS_LIST);
  return named || bad ? KD_ERR_FORMAT : KD_OK;
}

/* ---- loading -------------------------------------------------------------- */

/* IEEE binary16 to float: every half is exactly a float. */
static float kd_params_f16(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13); /* inf, nan (payload kept) */
  } else if (exp) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else {
    float f = ldexpf((float)man, -24); /* zero or subnormal: man x 2^-24, exact */
    memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* The file's data is aligned only as its writer arranged: read with memcpy. */
static void kd_params_copy(float *x, const kd_st_tensor *f) {
  const unsigned char *p = f->data;
  size_t n = f->nbytes / kd_st_dtype_size(f->dtype);
  if (f->dtype == KD_ST_F32) {
    memcpy(x, p, f->nbytes);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    x[i] = f->dtype == KD_ST_BF16 ? kd_bf16_to_f32(h) : kd_params_f16(h);
  }
}

kd_status kd_params_load_safetensors(kd_params *P, const char *path, char *err, size_t errlen) {
  kd_safetensors *st = NULL;
  kd_status s = kd_st_open(path, &st, err, errlen);
  if (s == KD_OK) s = kd_params_check(P, st, path, err, errlen);
  if (s == KD_OK) s = kd_params_alloc(P, err, errlen);
  if (s == KD_OK)
    for (int i = 0; i < P->n; i++)
      kd_params_copy(kd_params_data(P, i), kd_st_find(st, P->t[i].name));
  kd_st_close(st);
  return s;
}

/* ---- saving --------------------------------------------------------------- */

_Static_assert(KD_PARAMS_MAX_RANK == KD_ST_MAX_RANK, "a parameter's shape is a tensor's");

/* Appends the pair (key, value) to kv unless value is NULL; returns the count. */
static int kd_params_meta_put(const char **kv, int n, const char *key, const char *value) {
  if (value) kv[2 * n] = key, kv[2 * n + 1] = value, n++;
  return n;
}

kd_status kd_params_save(const kd_params *P, const char *path, const kd_params_meta *meta,
                         char *err, size_t errlen) {
  if (!P->arena)
    return kd_errf(err, errlen, KD_ERR_INVALID, "%s: the parameters have no values", path);
  kd_st_tensor *ts = calloc((size_t)P->n + 1, sizeof *ts);
  if (!ts) return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  for (int i = 0; i < P->n; i++) {
    const kd_ptensor *t = &P->t[i];
    ts[i].name = t->name;
    ts[i].dtype = KD_ST_F32;
    ts[i].rank = t->rank;
    memcpy(ts[i].shape, t->shape, sizeof ts[i].shape);
    ts[i].data = kd_params_data(P, i);
    ts[i].nbytes = (size_t)t->numel * sizeof(float);
  }
  char seed[24] = "";
  if (meta && meta->seed) snprintf(seed, sizeof seed, "%" PRIu64, *meta->seed);
  const char *kv[8];
  int nmeta = kd_params_meta_put(kv, 0, "format", "kdc-params");
  nmeta = kd_params_meta_put(kv, nmeta, "kdc_version", meta ? meta->kdc_version : NULL);
  nmeta = kd_params_meta_put(kv, nmeta, "model", meta ? meta->model : NULL);
  nmeta = kd_params_meta_put(kv, nmeta, "seed", seed[0] ? seed : NULL);
  kd_status s = kd_st_write(path, ts, P->n, kv, nmeta, err, errlen);
  free(ts);
  return s;
}
