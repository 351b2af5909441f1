/* safetensors: cJSON parses the header; this file validates it against
 * the format's rules, maps the file, and writes new files. */
#include "safetensors.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"

/* The reference implementation's limit; a larger header is a broken file. */
#define KD_ST_HEADER_MAX ((uint64_t)100 << 20)
/* JSON numbers are doubles in cJSON: integers are exact up to 2^53. */
#define KD_ST_INT_MAX 9007199254740992.0

static const struct {
  const char *name;
  size_t size;
  int kd; /* kd_dtype, or -1 */
} kd_st_dtypes[] = {
  [KD_ST_BOOL] = {"BOOL", 1, KD_BOOL},     [KD_ST_U8] = {"U8", 1, -1},
  [KD_ST_I8] = {"I8", 1, -1},              [KD_ST_F8_E4M3] = {"F8_E4M3", 1, -1},
  [KD_ST_F8_E5M2] = {"F8_E5M2", 1, -1},    [KD_ST_I16] = {"I16", 2, -1},
  [KD_ST_U16] = {"U16", 2, -1},            [KD_ST_F16] = {"F16", 2, -1},
  [KD_ST_BF16] = {"BF16", 2, KD_BF16},     [KD_ST_I32] = {"I32", 4, KD_I32},
  [KD_ST_U32] = {"U32", 4, -1},            [KD_ST_F32] = {"F32", 4, KD_F32},
  [KD_ST_I64] = {"I64", 8, KD_I64},        [KD_ST_U64] = {"U64", 8, -1},
  [KD_ST_F64] = {"F64", 8, KD_F64},
};
static_assert(sizeof kd_st_dtypes / sizeof kd_st_dtypes[0] == KD_ST_DTYPE_COUNT,
               "every kd_st_dtype needs an entry");

const char *kd_st_dtype_name(kd_st_dtype t) {
  return (unsigned)t < KD_ST_DTYPE_COUNT ? kd_st_dtypes[t].name : "?";
}
size_t kd_st_dtype_size(kd_st_dtype t) {
  return (unsigned)t < KD_ST_DTYPE_COUNT ? kd_st_dtypes[t].size : 0;
}
int kd_st_dtype_to_kd(kd_st_dtype t) {
  return (unsigned)t < KD_ST_DTYPE_COUNT ? kd_st_dtypes[t].kd : -1;
}

struct kd_safetensors {
  void *map; /* the whole file when opened from a path, else NULL */
  size_t map_len;
  int n;
  kd_st_tensor *tensors; /* [n], by name; names owned */
  int nmeta;
  char **meta; /* [2 * nmeta]: key, value, ... by key; owned */
};

/* ---- helpers ---------------------------------------------------------------- */

static char *kd_st_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* Well-formed UTF-8: no overlong forms, surrogates, or code points past
   U+10FFFF. */
static int kd_utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t len;
    unsigned min, cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, min = 0x80, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, min = 0x800, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, min = 0x10000, cp = c & 0x07;
    } else {
      return 0;
    }
    if (n - i < len) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    i += len;
  }
  return 1;
}

static int kd_st_dtype_parse(const char *s, kd_st_dtype *out) {
  for (int i = 0; i < KD_ST_DTYPE_COUNT; i++) {
    if (strcmp(s, kd_st_dtypes[i].name) == 0) {
      *out = (kd_st_dtype)i;
      return 1;
    }
  }
  return 0;
}

/* A JSON number that is an integer in [0, 2^53]. */
static int kd_st_json_uint(const cJSON *j, uint64_t *out) {
  if (!cJSON_IsNumber(j)) return 0;
  double d = j->valuedouble;
  if (!(d >= 0 && d <= KD_ST_INT_MAX) || d != (double)(uint64_t)d) return 0;
  *out = (uint64_t)d;
  return 1;
}

static int kd_st_cmp_name(const void *a, const void *b) {
  return strcmp(((const kd_st_tensor *)a)->name, ((const kd_st_tensor *)b)->name);
}

static int kd_st_cmp_meta(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- reading ---------------------------------------------------------------- */

typedef struct kd_st_parse_ctx {
  const char *where;
  char *err;
  size_t errlen;
  const unsigned char *data; /* the data section */
  uint64_t data_len;
} kd_st_parse_ctx;

#define KD_ST_BAD(c, ...) kd_errf((c)->err, (c)->errlen, KD_ERR_FORMAT, __VA_ARGS__)

/* One tensor entry: {"dtype": ..., "shape": [...], "data_offsets": [b, e]}. */
static kd_status kd_st_parse_tensor(kd_st_parse_ctx *c, const cJSON *j, kd_st_tensor *t,
                                    uint64_t off[2]) {
  const char *name = t->name, *w = c->where;
  if (!cJSON_IsObject(j)) return KD_ST_BAD(c, "%s: tensor '%s': entry is not an object", w, name);
  const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL, *f;
  cJSON_ArrayForEach(f, j) {
    const cJSON **slot = strcmp(f->string, "dtype") == 0          ? &dtype
                         : strcmp(f->string, "shape") == 0        ? &shape
                         : strcmp(f->string, "data_offsets") == 0 ? &offsets
                                                                  : NULL;
    if (!slot) return KD_ST_BAD(c, "%s: tensor '%s': unknown field '%s'", w, name, f->string);
    if (*slot) return KD_ST_BAD(c, "%s: tensor '%s': duplicate field '%s'", w, name, f->string);
    *slot = f;
  }
  if (!dtype || !shape || !offsets)
    return KD_ST_BAD(c, "%s: tensor '%s': dtype, shape and data_offsets are all required", w, name);
  if (!cJSON_IsString(dtype) || !kd_st_dtype_parse(dtype->valuestring, &t->dtype))
    return KD_ST_BAD(c, "%s: tensor '%s': unsupported dtype %s%s%s", w, name,
                     cJSON_IsString(dtype) ? "'" : "", cJSON_IsString(dtype) ? dtype->valuestring : "(not a string)",
                     cJSON_IsString(dtype) ? "'" : "");
  if (!cJSON_IsArray(shape)) return KD_ST_BAD(c, "%s: tensor '%s': shape is not a list", w, name);
  int rank = cJSON_GetArraySize(shape);
  if (rank > KD_ST_MAX_RANK)
    return KD_ST_BAD(c, "%s: tensor '%s': rank %d is above the supported %d", w, name, rank, KD_ST_MAX_RANK);
  t->rank = rank;
  uint64_t need = kd_st_dtype_size(t->dtype);
  int i = 0;
  cJSON_ArrayForEach(f, shape) {
    uint64_t d;
    if (!kd_st_json_uint(f, &d))
      return KD_ST_BAD(c, "%s: tensor '%s': shape entries must be non-negative integers", w, name);
    t->shape[i++] = (int64_t)d;
    if (__builtin_mul_overflow(need, d, &need))
      return KD_ST_BAD(c, "%s: tensor '%s': the shape's byte count overflows", w, name);
  }
  if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
      !kd_st_json_uint(cJSON_GetArrayItem(offsets, 0), &off[0]) ||
      !kd_st_json_uint(cJSON_GetArrayItem(offsets, 1), &off[1]))
    return KD_ST_BAD(c, "%s: tensor '%s': data_offsets must be two non-negative integers", w, name);
  if (off[1] < off[0] || off[1] > c->data_len)
    return KD_ST_BAD(c, "%s: tensor '%s': data_offsets [%llu, %llu] out of the data section's %llu bytes",
                     w, name, (unsigned long long)off[0], (unsigned long long)off[1],
                     (unsigned long long)c->data_len);
  if (off[1] - off[0] != need)
    return KD_ST_BAD(c, "%s: tensor '%s': %s x shape needs %llu bytes, data_offsets give %llu", w, name,
                     kd_st_dtype_name(t->dtype), (unsigned long long)need,
                     (unsigned long long)(off[1] - off[0]));
  t->data = c->data + off[0];
  t->nbytes = (size_t)need;
  return KD_OK;
}

static kd_status kd_st_parse_metadata(kd_st_parse_ctx *c, const cJSON *j, kd_safetensors *st) {
  if (!cJSON_IsObject(j)) return KD_ST_BAD(c, "%s: __metadata__ is not an object", c->where);
  int n = cJSON_GetArraySize(j);
  st->meta = calloc((size_t)n * 2 + 1, sizeof *st->meta);
  if (!st->meta) return kd_errf(c->err, c->errlen, KD_ERR_NOMEM, "%s: out of memory", c->where);
  const cJSON *f;
  cJSON_ArrayForEach(f, j) {
    if (!cJSON_IsString(f))
      return KD_ST_BAD(c, "%s: __metadata__ value for '%s' is not a string", c->where, f->string);
    char *k = kd_st_strdup(f->string), *v = kd_st_strdup(f->valuestring);
    st->meta[2 * st->nmeta] = k;
    st->meta[2 * st->nmeta + 1] = v;
    st->nmeta++;
    if (!k || !v) return kd_errf(c->err, c->errlen, KD_ERR_NOMEM, "%s: out of memory", c->where);
  }
  /* Sort key/value pairs by key as units. */
  qsort(st->meta, (size_t)st->nmeta, 2 * sizeof *st->meta, kd_st_cmp_meta);
  for (int i = 1; i < st->nmeta; i++)
    if (strcmp(st->meta[2 * i - 2], st->meta[2 * i]) == 0)
      return KD_ST_BAD(c, "%s: __metadata__ key '%s' appears twice", c->where, st->meta[2 * i]);
  return KD_OK;
}

typedef struct kd_st_span {
  uint64_t begin, end;
  const char *name;
} kd_st_span;

static int kd_st_cmp_span(const void *a, const void *b) {
  const kd_st_span *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

/* The tensors must tile [0, data_len) exactly, as the reference reader
   demands: sorted by offset, each starts where the previous one ended. */
static kd_status kd_st_check_tiling(kd_st_parse_ctx *c, kd_st_span *spans, int n) {
  qsort(spans, (size_t)n, sizeof *spans, kd_st_cmp_span);
  uint64_t at = 0;
  for (int i = 0; i < n; i++) {
    if (spans[i].begin < at)
      return KD_ST_BAD(c, "%s: tensors '%s' and '%s' overlap", c->where, spans[i - 1].name, spans[i].name);
    if (spans[i].begin > at)
      return KD_ST_BAD(c, "%s: %llu unused bytes before tensor '%s'", c->where,
                       (unsigned long long)(spans[i].begin - at), spans[i].name);
    at = spans[i].end;
  }
  if (at != c->data_len)
    return KD_ST_BAD(c, "%s: %llu bytes after the last tensor", c->where,
                     (unsigned long long)(c->data_len - at));
  return KD_OK;
}

static kd_status kd_st_parse_root(kd_st_parse_ctx *c, const cJSON *root, kd_safetensors *st) {
  if (!cJSON_IsObject(root)) return KD_ST_BAD(c, "%s: the header is not a JSON object", c->where);
  int count = cJSON_GetArraySize(root);
  st->tensors = calloc((size_t)count + 1, sizeof *st->tensors);
  kd_st_span *spans = calloc((size_t)count + 1, sizeof *spans);
  kd_status s = KD_OK;
  if (!st->tensors || !spans) s = kd_errf(c->err, c->errlen, KD_ERR_NOMEM, "%s: out of memory", c->where);
  const cJSON *j;
  int seen_meta = 0;
  cJSON_ArrayForEach(j, root) {
    if (s) break;
    if (strcmp(j->string, "__metadata__") == 0) {
      s = seen_meta++ ? KD_ST_BAD(c, "%s: __metadata__ appears twice", c->where) : kd_st_parse_metadata(c, j, st);
      continue;
    }
    kd_st_tensor *t = &st->tensors[st->n];
    if (!(t->name = kd_st_strdup(j->string))) {
      s = kd_errf(c->err, c->errlen, KD_ERR_NOMEM, "%s: out of memory", c->where);
      break;
    }
    st->n++;
    uint64_t off[2] = {0, 0};
    if ((s = kd_st_parse_tensor(c, j, t, off))) break;
    spans[st->n - 1] = (kd_st_span){off[0], off[1], t->name};
  }
  if (!s) s = kd_st_check_tiling(c, spans, st->n);
  free(spans);
  if (s) return s;
  qsort(st->tensors, (size_t)st->n, sizeof *st->tensors, kd_st_cmp_name);
  for (int i = 1; i < st->n; i++)
    if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0)
      return KD_ST_BAD(c, "%s: tensor '%s' appears twice", c->where, st->tensors[i].name);
  return KD_OK;
}

static kd_status kd_st_parse(const unsigned char *buf, size_t len, const char *where, kd_safetensors *st,
                             char *err, size_t errlen) {
  kd_st_parse_ctx c = {where, err, errlen, NULL, 0};
  if (len < 8) return KD_ST_BAD(&c, "%s: too short for a safetensors file (%zu bytes)", where, len);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | buf[i];
  if (n > KD_ST_HEADER_MAX)
    return KD_ST_BAD(&c, "%s: header length %llu is implausibly large (not a safetensors file?)", where,
                     (unsigned long long)n);
  if (n > len - 8)
    return KD_ST_BAD(&c, "%s: header length %llu runs past the end of the file (%zu bytes)", where,
                     (unsigned long long)n, len);
  const unsigned char *h = buf + 8;
  if (n < 2 || h[0] != '{') return KD_ST_BAD(&c, "%s: the header does not start with '{'", where);
  if (!kd_utf8_valid(h, (size_t)n)) return KD_ST_BAD(&c, "%s: the header is not valid UTF-8", where);
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts((const char *)h, (size_t)n, &end, 0);
  if (!root) {
    size_t at = end ? (size_t)(end - (const char *)h) : 0;
    return KD_ST_BAD(&c, "%s: the header is not valid JSON (near byte %zu)", where, at);
  }
  for (const char *p = end; p < (const char *)h + n; p++) {
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      cJSON_Delete(root);
      return KD_ST_BAD(&c, "%s: text after the header's JSON object", where);
    }
  }
  c.data = h + n;
  c.data_len = len - 8 - n;
  kd_status s = kd_st_parse_root(&c, root, st);
  cJSON_Delete(root);
  return s;
}

void kd_st_close(kd_safetensors *st) {
  if (!st) return;
  for (int i = 0; i < st->n; i++) free((char *)st->tensors[i].name);
  for (int i = 0; i < 2 * st->nmeta; i++) free(st->meta[i]);
  free(st->tensors);
  free(st->meta);
  if (st->map) munmap(st->map, st->map_len);
  free(st);
}

kd_status kd_st_open_mem(const void *buf, size_t len, kd_safetensors **out, char *err, size_t errlen) {
  *out = NULL;
  kd_safetensors *st = calloc(1, sizeof *st);
  if (!st) return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory");
  kd_status s = kd_st_parse(buf, len, "<memory>", st, err, errlen);
  if (s) {
    kd_st_close(st);
    return s;
  }
  *out = st;
  return KD_OK;
}

kd_status kd_st_open(const char *path, kd_safetensors **out, char *err, size_t errlen) {
  *out = NULL;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return kd_errf(err, errlen, KD_ERR_IO, "%s: %s", path, strerror(errno));
  struct stat sb;
  kd_status s = KD_OK;
  if (fstat(fd, &sb) != 0) s = kd_errf(err, errlen, KD_ERR_IO, "%s: %s", path, strerror(errno));
  else if (!S_ISREG(sb.st_mode)) s = kd_errf(err, errlen, KD_ERR_IO, "%s: not a regular file", path);
  else if (sb.st_size < 8)
    s = kd_errf(err, errlen, KD_ERR_FORMAT, "%s: too short for a safetensors file (%lld bytes)", path,
                (long long)sb.st_size);
  kd_safetensors *st = s ? NULL : calloc(1, sizeof *st);
  if (!s && !st) s = kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
  if (!s) {
    st->map_len = (size_t)sb.st_size;
    st->map = mmap(NULL, st->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (st->map == MAP_FAILED) {
      st->map = NULL;
      s = kd_errf(err, errlen, KD_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    }
  }
  close(fd); /* the mapping stays valid */
  if (!s) s = kd_st_parse(st->map, st->map_len, path, st, err, errlen);
  if (s) {
    kd_st_close(st);
    return s;
  }
  *out = st;
  return KD_OK;
}

int kd_st_count(const kd_safetensors *st) { return st->n; }

const kd_st_tensor *kd_st_at(const kd_safetensors *st, int i) {
  return i >= 0 && i < st->n ? &st->tensors[i] : NULL;
}

const kd_st_tensor *kd_st_find(const kd_safetensors *st, const char *name) {
  kd_st_tensor key = {.name = name};
  return bsearch(&key, st->tensors, (size_t)st->n, sizeof key, kd_st_cmp_name);
}

int kd_st_metadata_count(const kd_safetensors *st) { return st->nmeta; }

void kd_st_metadata_at(const kd_safetensors *st, int i, const char **key, const char **value) {
  int ok = i >= 0 && i < st->nmeta;
  *key = ok ? st->meta[2 * i] : NULL;
  *value = ok ? st->meta[2 * i + 1] : NULL;
}

const char *kd_st_metadata_get(const kd_safetensors *st, const char *key) {
  if (st->nmeta == 0) return NULL;
  char *const *hit = bsearch(&key, st->meta, (size_t)st->nmeta, 2 * sizeof *st->meta, kd_st_cmp_meta);
  return hit ? hit[1] : NULL;
}

kd_status kd_st_to_array(const kd_st_tensor *t, kd_array *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  int kd = kd_st_dtype_to_kd(t->dtype);
  if (kd < 0)
    return kd_errf(err, errlen, KD_ERR_UNSUPPORTED, "tensor '%s': kdc has no dtype for %s", t->name,
                   kd_st_dtype_name(t->dtype));
  if (t->rank > KD_ARRAY_MAX_RANK)
    return kd_errf(err, errlen, KD_ERR_UNSUPPORTED, "tensor '%s': rank %d is above %d", t->name, t->rank,
                   KD_ARRAY_MAX_RANK);
  kd_status s = kd_array_alloc_uninit(out, (kd_dtype)kd, t->rank, t->shape);
  if (s) return kd_errf(err, errlen, s, "tensor '%s': cannot allocate %zu bytes", t->name, t->nbytes);
  if (t->nbytes) memcpy(out->data, t->data, t->nbytes);
  return KD_OK;
}

/* ---- writing ---------------------------------------------------------------- */

/* Data order: widest element first (so every offset is a multiple of its
   element size), then by name. */
static int kd_st_cmp_layout(const void *a, const void *b) {
  const kd_st_tensor *x = *(const kd_st_tensor *const *)a, *y = *(const kd_st_tensor *const *)b;
  size_t sx = kd_st_dtype_size(x->dtype), sy = kd_st_dtype_size(y->dtype);
  if (sx != sy) return sx > sy ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int kd_st_cmp_ptr_name(const void *a, const void *b) {
  return strcmp((*(const kd_st_tensor *const *)a)->name, (*(const kd_st_tensor *const *)b)->name);
}

static kd_status kd_st_check_input(const char *path, const kd_st_tensor *t, char *err, size_t errlen) {
  if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0)
    return kd_errf(err, errlen, KD_ERR_INVALID, "%s: tensor names must be non-empty and not __metadata__", path);
  if ((unsigned)t->dtype >= KD_ST_DTYPE_COUNT || t->rank < 0 || t->rank > KD_ST_MAX_RANK)
    return kd_errf(err, errlen, KD_ERR_INVALID, "%s: tensor '%s': bad dtype or rank", path, t->name);
  uint64_t need = kd_st_dtype_size(t->dtype);
  for (int i = 0; i < t->rank; i++)
    if (t->shape[i] < 0 || __builtin_mul_overflow(need, (uint64_t)t->shape[i], &need))
      return kd_errf(err, errlen, KD_ERR_INVALID, "%s: tensor '%s': bad shape", path, t->name);
  if (need != t->nbytes || (need && !t->data))
    return kd_errf(err, errlen, KD_ERR_INVALID, "%s: tensor '%s': %zu bytes given, shape needs %llu", path,
                   t->name, t->nbytes, (unsigned long long)need);
  return KD_OK;
}

/* The header JSON: __metadata__ (keys sorted) first, then tensors by name. */
static cJSON *kd_st_header_json(const kd_st_tensor *const *by_name, int n, const uint64_t *begin,
                                char *const *meta_sorted, int nmeta) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return NULL;
  int ok = 1;
  if (nmeta) {
    cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
    ok = m != NULL;
    for (int i = 0; ok && i < nmeta; i++)
      ok = cJSON_AddStringToObject(m, meta_sorted[2 * i], meta_sorted[2 * i + 1]) != NULL;
  }
  for (int i = 0; ok && i < n; i++) {
    const kd_st_tensor *t = by_name[i];
    cJSON *o = cJSON_AddObjectToObject(root, t->name);
    cJSON *shape = o ? cJSON_AddArrayToObject(o, "shape") : NULL;
    cJSON *offs = shape ? cJSON_AddArrayToObject(o, "data_offsets") : NULL;
    ok = offs && cJSON_AddStringToObject(o, "dtype", kd_st_dtype_name(t->dtype));
    for (int d = 0; ok && d < t->rank; d++) ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
    if (ok) ok = cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)begin[i]));
    if (ok) ok = cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(begin[i] + t->nbytes)));
  }
  if (!ok) {
    cJSON_Delete(root);
    return NULL;
  }
  return root;
}

kd_status kd_st_write(const char *path, const kd_st_tensor *tensors, int n, const char *const *meta,
                      int nmeta, char *err, size_t errlen) {
  if (n < 0 || nmeta < 0) return kd_errf(err, errlen, KD_ERR_INVALID, "%s: negative count", path);
  for (int i = 0; i < n; i++) {
    kd_status s = kd_st_check_input(path, &tensors[i], err, errlen);
    if (s) return s;
  }
  const kd_st_tensor **by_name = calloc((size_t)n + 1, sizeof *by_name);
  const kd_st_tensor **layout = calloc((size_t)n + 1, sizeof *layout);
  uint64_t *begin = calloc((size_t)n + 1, sizeof *begin);
  char **msort = calloc((size_t)nmeta * 2 + 1, sizeof *msort);
  kd_status s = KD_OK;
  char *json = NULL;
  if (!by_name || !layout || !begin || !msort) s = kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
  for (int i = 0; !s && i < n; i++) by_name[i] = layout[i] = &tensors[i];
  if (!s) {
    qsort(by_name, (size_t)n, sizeof *by_name, kd_st_cmp_ptr_name);
    qsort(layout, (size_t)n, sizeof *layout, kd_st_cmp_layout);
    for (int i = 1; !s && i < n; i++)
      if (strcmp(by_name[i - 1]->name, by_name[i]->name) == 0)
        s = kd_errf(err, errlen, KD_ERR_INVALID, "%s: tensor '%s' given twice", path, by_name[i]->name);
    for (int i = 0; !s && i < 2 * nmeta; i++) {
      if (!meta[i]) s = kd_errf(err, errlen, KD_ERR_INVALID, "%s: NULL metadata string", path);
      msort[i] = (char *)meta[i];
    }
  }
  if (!s) {
    qsort(msort, (size_t)nmeta, 2 * sizeof *msort, kd_st_cmp_meta);
    for (int i = 1; !s && i < nmeta; i++)
      if (strcmp(msort[2 * i - 2], msort[2 * i]) == 0)
        s = kd_errf(err, errlen, KD_ERR_INVALID, "%s: metadata key '%s' given twice", path, msort[2 * i]);
  }
  if (!s) {
    /* Offsets in layout order, stored per by_name index for the header. */
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
      const kd_st_tensor **hit = bsearch(&layout[i], by_name, (size_t)n, sizeof *by_name, kd_st_cmp_ptr_name);
      begin[hit - by_name] = at;
      at += layout[i]->nbytes;
    }
    cJSON *root = kd_st_header_json(by_name, n, begin, msort, nmeta);
    json = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!json) s = kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory building the header", path);
  }
  kd_atomic_file af;
  if (!s) s = kd_atomic_begin(&af, path, err, errlen);
  if (!s) {
    size_t jn = strlen(json), hn = (jn + 7) / 8 * 8; /* 8 + hn is a multiple of 8 */
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hn >> (8 * i));
    fwrite(len8, 1, 8, af.f);
    fwrite(json, 1, jn, af.f);
    for (size_t i = jn; i < hn; i++) fputc(' ', af.f);
    for (int i = 0; i < n; i++)
      if (layout[i]->nbytes) fwrite(layout[i]->data, 1, layout[i]->nbytes, af.f);
    s = kd_atomic_commit(&af, err, errlen);
  }
  cJSON_free(json);
  free(by_name);
  free(layout);
  free(begin);
  free(msort);
  return s;
}
