/* .npy reader and writer.
 *
 * The file: "\x93NUMPY", major and minor version bytes, the header length
 * (2 bytes little-endian in 1.0; 4 bytes in 2.0 and 3.0, where 3.0 only
 * allows UTF-8 in the header), then the header: a Python dict literal such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 * padded with spaces to a multiple of 64 bytes and ended by '\n', then the
 * raw data. The header is parsed by hand because it is a fixed, tiny subset
 * of Python syntax, not JSON. */
#include "npy.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fileio.h"

#define KD_NPY_MAGIC "\x93NUMPY"
enum {
  KD_NPY_MAGIC_LEN = 6,
  KD_NPY_PREFIX_MAX = 12,      /* magic, version, 4-byte header length */
  KD_NPY_HEADER_MAX = 1 << 16, /* far above any header NumPy writes for rank <= 4 */
};

/* The dtypes kdc reads, with their descr strings. */
static const struct {
  const char *descr;
  kd_dtype dtype;
} kd_npy_dtypes[] = {
  {"<f4", KD_F32}, {"<f8", KD_F64}, {"<i4", KD_I32},
  {"<i8", KD_I64}, {"<u2", KD_BF16}, {"|b1", KD_BOOL},
};
enum { KD_NPY_NDTYPES = sizeof kd_npy_dtypes / sizeof kd_npy_dtypes[0] };

typedef struct kd_npy_header {
  kd_dtype dtype;
  int rank;
  int64_t shape[KD_ARRAY_MAX_RANK];
  size_t data_offset; /* bytes before the data */
  size_t data_bytes;  /* what the shape needs */
} kd_npy_header;

/* ---- the header dict ------------------------------------------------------ */

typedef struct kd_npy_lexer {
  const char *p, *end;
  const char *where; /* the path, for messages */
  char *err;
  size_t errlen;
} kd_npy_lexer;

static void kd_npy_skip_ws(kd_npy_lexer *lx) {
  while (lx->p < lx->end && (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\n' || *lx->p == '\r'))
    lx->p++;
}

static int kd_npy_accept(kd_npy_lexer *lx, char c) {
  kd_npy_skip_ws(lx);
  if (lx->p < lx->end && *lx->p == c) {
    lx->p++;
    return 1;
  }
  return 0;
}

static kd_status kd_npy_bad(kd_npy_lexer *lx, const char *what) {
  return kd_errf(lx->err, lx->errlen, KD_ERR_FORMAT, "%s: malformed .npy header: %s", lx->where,
                 what);
}

/* string: '...' or "..." without escapes (NumPy never writes any). */
static kd_status kd_npy_string(kd_npy_lexer *lx, char *out, size_t cap) {
  kd_npy_skip_ws(lx);
  if (lx->p >= lx->end || (*lx->p != '\'' && *lx->p != '"')) return kd_npy_bad(lx, "expected a string");
  char q = *lx->p++;
  size_t n = 0;
  while (lx->p < lx->end && *lx->p != q) {
    if (n + 1 >= cap) return kd_npy_bad(lx, "string too long");
    out[n++] = *lx->p++;
  }
  if (lx->p >= lx->end) return kd_npy_bad(lx, "unterminated string");
  lx->p++;
  out[n] = '\0';
  return KD_OK;
}

static kd_status kd_npy_descr(kd_npy_lexer *lx, kd_npy_header *h) {
  kd_npy_skip_ws(lx);
  if (lx->p < lx->end && *lx->p == '[')
    return kd_errf(lx->err, lx->errlen, KD_ERR_FORMAT,
                   "%s: structured dtypes (a list descr) are not supported", lx->where);
  char d[32];
  kd_status st = kd_npy_string(lx, d, sizeof d);
  if (st) return st;
  for (int i = 0; i < KD_NPY_NDTYPES; i++) {
    if (strcmp(d, kd_npy_dtypes[i].descr) == 0) {
      h->dtype = kd_npy_dtypes[i].dtype;
      return KD_OK;
    }
  }
  const char *why = "unsupported dtype";
  if (d[0] == '>') why = "big-endian data is not supported (use arr.astype(arr.dtype.newbyteorder('<')))";
  else if (d[0] && d[1] == 'O') why = "object arrays (pickled Python objects) are not supported";
  return kd_errf(lx->err, lx->errlen, KD_ERR_FORMAT,
                 "%s: dtype '%s': %s; kdc reads <f4, <f8, <i4, <i8, <u2 (bfloat16 bits), |b1",
                 lx->where, d, why);
}

static kd_status kd_npy_bool(kd_npy_lexer *lx, int *out) {
  kd_npy_skip_ws(lx);
  size_t left = (size_t)(lx->end - lx->p);
  if (left >= 4 && memcmp(lx->p, "True", 4) == 0) {
    lx->p += 4;
    *out = 1;
    return KD_OK;
  }
  if (left >= 5 && memcmp(lx->p, "False", 5) == 0) {
    lx->p += 5;
    *out = 0;
    return KD_OK;
  }
  return kd_npy_bad(lx, "fortran_order must be True or False");
}

/* shape: '(' [ int { ',' int } [','] ] ')' */
static kd_status kd_npy_shape(kd_npy_lexer *lx, kd_npy_header *h) {
  if (!kd_npy_accept(lx, '(')) return kd_npy_bad(lx, "shape must be a tuple");
  h->rank = 0;
  while (!kd_npy_accept(lx, ')')) {
    kd_npy_skip_ws(lx);
    if (lx->p >= lx->end || *lx->p < '0' || *lx->p > '9')
      return kd_npy_bad(lx, "shape entries must be non-negative integers");
    int64_t v = 0;
    while (lx->p < lx->end && *lx->p >= '0' && *lx->p <= '9') {
      if (v > (INT64_MAX - 9) / 10) return kd_npy_bad(lx, "shape entry too large");
      v = v * 10 + (*lx->p++ - '0');
    }
    if (lx->p < lx->end && *lx->p == 'L') lx->p++; /* Python 2 long, old files */
    if (h->rank == KD_ARRAY_MAX_RANK)
      return kd_errf(lx->err, lx->errlen, KD_ERR_FORMAT, "%s: arrays of rank > %d are not supported",
                     lx->where, KD_ARRAY_MAX_RANK);
    h->shape[h->rank++] = v;
    if (!kd_npy_accept(lx, ',')) {
      if (!kd_npy_accept(lx, ')')) return kd_npy_bad(lx, "expected ',' or ')' in shape");
      break;
    }
  }
  return KD_OK;
}

/* {'descr': ..., 'fortran_order': ..., 'shape': ...}, keys in any order,
   each exactly once, then only whitespace. */
static kd_status kd_npy_dict(kd_npy_lexer *lx, kd_npy_header *h) {
  enum { DESCR = 1, FORTRAN = 2, SHAPE = 4 };
  int seen = 0, fortran = 0;
  kd_status st;
  if (!kd_npy_accept(lx, '{')) return kd_npy_bad(lx, "expected '{'");
  while (!kd_npy_accept(lx, '}')) {
    char key[32];
    if ((st = kd_npy_string(lx, key, sizeof key))) return st;
    if (!kd_npy_accept(lx, ':')) return kd_npy_bad(lx, "expected ':'");
    int bit = strcmp(key, "descr") == 0           ? DESCR
              : strcmp(key, "fortran_order") == 0 ? FORTRAN
              : strcmp(key, "shape") == 0         ? SHAPE
                                                  : 0;
    if (!bit) return kd_npy_bad(lx, "unknown key");
    if (seen & bit) return kd_npy_bad(lx, "duplicate key");
    seen |= bit;
    st = bit == DESCR ? kd_npy_descr(lx, h) : bit == FORTRAN ? kd_npy_bool(lx, &fortran) : kd_npy_shape(lx, h);
    if (st) return st;
    if (!kd_npy_accept(lx, ',')) {
      if (!kd_npy_accept(lx, '}')) return kd_npy_bad(lx, "expected ',' or '}'");
      break;
    }
  }
  kd_npy_skip_ws(lx);
  if (lx->p != lx->end) return kd_npy_bad(lx, "text after the closing '}'");
  if (seen != (DESCR | FORTRAN | SHAPE))
    return kd_npy_bad(lx, "the keys descr, fortran_order and shape are all required");
  if (fortran && h->rank > 1)
    return kd_errf(lx->err, lx->errlen, KD_ERR_FORMAT,
                   "%s: Fortran-order arrays are not supported; save with "
                   "np.save(path, np.ascontiguousarray(a))",
                   lx->where);
  return KD_OK;
}

/* ---- the fixed prefix ----------------------------------------------------- */

/* Reads magic, version and header length from the first bytes (at least
   KD_NPY_PREFIX_MAX, or all the file has); sets *prefix and *hlen. */
static kd_status kd_npy_prefix(const unsigned char *b, size_t len, const char *where, size_t *prefix,
                               size_t *hlen, char *err, size_t errlen) {
  if (len < 10 || memcmp(b, KD_NPY_MAGIC, KD_NPY_MAGIC_LEN) != 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: not a .npy file (no \\x93NUMPY magic)", where);
  int major = b[6], minor = b[7];
  if (major == 1 && minor == 0) {
    *prefix = 10;
    *hlen = (size_t)b[8] | (size_t)b[9] << 8;
  } else if ((major == 2 || major == 3) && minor == 0) {
    if (len < 12) return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: truncated .npy header", where);
    *prefix = 12;
    *hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
  } else {
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                   "%s: .npy format version %d.%d is not supported (1.0, 2.0, 3.0 are)", where,
                   major, minor);
  }
  if (*hlen > KD_NPY_HEADER_MAX)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: .npy header length %zu is implausibly large",
                   where, *hlen);
  return KD_OK;
}

/* Parses the header text and checks that the file holds exactly the data
   the shape needs. */
static kd_status kd_npy_header_parse(const char *text, size_t hlen, size_t prefix, uint64_t file_size,
                                     const char *where, kd_npy_header *h, char *err, size_t errlen) {
  memset(h, 0, sizeof *h);
  kd_npy_lexer lx = {text, text + hlen, where, err, errlen};
  for (size_t i = 0; i < hlen; i++) {
    if (text[i] == '\0' || (unsigned char)text[i] >= 0x80)
      return kd_npy_bad(&lx, "non-ASCII bytes in the header");
  }
  kd_status st = kd_npy_dict(&lx, h);
  if (st) return st;
  int64_t need = kd_shape_nbytes(h->dtype, h->rank, h->shape);
  if (need < 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: the shape's byte count overflows", where);
  h->data_offset = prefix + hlen;
  h->data_bytes = (size_t)need;
  uint64_t have = file_size - h->data_offset;
  if (have != (uint64_t)need)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                   "%s: %s data: the header's shape needs %lld bytes, the file holds %llu", where,
                   have < (uint64_t)need ? "truncated" : "too much", (long long)need,
                   (unsigned long long)have);
  return KD_OK;
}

static kd_status kd_npy_alloc(const kd_npy_header *h, kd_array *out, const char *where, char *err,
                              size_t errlen) {
  kd_status st = kd_array_alloc_uninit(out, h->dtype, h->rank, h->shape);
  if (st) return kd_errf(err, errlen, st, "%s: cannot allocate %zu bytes", where, h->data_bytes);
  return KD_OK;
}

/* ---- reading -------------------------------------------------------------- */

kd_status kd_npy_read_mem(const void *buf, size_t len, kd_array *out, char *err, size_t errlen) {
  const char *where = "<memory>";
  const unsigned char *b = buf;
  memset(out, 0, sizeof *out);
  size_t prefix = 0, hlen = 0;
  kd_status st = kd_npy_prefix(b, len, where, &prefix, &hlen, err, errlen);
  if (st) return st;
  if (len - prefix < hlen) return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: truncated .npy header", where);
  kd_npy_header h;
  if ((st = kd_npy_header_parse((const char *)b + prefix, hlen, prefix, len, where, &h, err, errlen)))
    return st;
  if ((st = kd_npy_alloc(&h, out, where, err, errlen))) return st;
  if (h.data_bytes) memcpy(out->data, b + h.data_offset, h.data_bytes);
  return KD_OK;
}

static kd_status kd_npy_read_exact(FILE *f, void *dst, size_t n, const char *path, char *err,
                                   size_t errlen) {
  if (n && fread(dst, 1, n, f) != n)
    return kd_errf(err, errlen, ferror(f) ? KD_ERR_IO : KD_ERR_FORMAT, "%s: %s", path,
                   ferror(f) ? strerror(errno) : "truncated .npy file");
  return KD_OK;
}

/* Reads the prefix and header, then the data straight into the array (no
   second copy of a large file). */
static kd_status kd_npy_read_file(FILE *f, const char *path, kd_array *out, char *err, size_t errlen) {
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0)
    return kd_errf(err, errlen, KD_ERR_IO, "%s: %s", path, strerror(errno));
  if (!S_ISREG(sb.st_mode)) return kd_errf(err, errlen, KD_ERR_IO, "%s: not a regular file", path);
  uint64_t size = (uint64_t)sb.st_size;
  unsigned char pre[KD_NPY_PREFIX_MAX];
  size_t got = fread(pre, 1, sizeof pre, f);
  size_t prefix = 0, hlen = 0;
  kd_status st = kd_npy_prefix(pre, got, path, &prefix, &hlen, err, errlen);
  if (st) return st;
  if (size < prefix + hlen) return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: truncated .npy header", path);
  char *text = malloc(hlen + 1);
  if (!text) return kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
  kd_npy_header h;
  if (fseek(f, (long)prefix, SEEK_SET) != 0) st = kd_errf(err, errlen, KD_ERR_IO, "%s: seek failed", path);
  if (!st) st = kd_npy_read_exact(f, text, hlen, path, err, errlen);
  if (!st) st = kd_npy_header_parse(text, hlen, prefix, size, path, &h, err, errlen);
  free(text);
  if (st) return st;
  if ((st = kd_npy_alloc(&h, out, path, err, errlen))) return st;
  if ((st = kd_npy_read_exact(f, out->data, h.data_bytes, path, err, errlen))) kd_array_free(out);
  return st;
}

kd_status kd_npy_read(const char *path, kd_array *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) return kd_errf(err, errlen, KD_ERR_IO, "%s: %s", path, strerror(errno));
  kd_status st = kd_npy_read_file(f, path, out, err, errlen);
  fclose(f);
  return st;
}

/* ---- writing -------------------------------------------------------------- */

/* Formats the whole prefix + header, padded to a multiple of 64 bytes;
   returns its length, or 0 if it does not fit cap. */
static size_t kd_npy_format_header(const kd_array *a, const char *descr, char *out, size_t cap) {
  char dict[256];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
  for (int i = 0; i < a->rank; i++)
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)a->shape[i],
                  i + 1 < a->rank ? " " : "");
  /* A 1-tuple needs its comma, "(3,)"; longer tuples drop the last one. */
  if (a->rank > 1) n--;
  n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
  size_t prefix = 10, text = (size_t)n + 1; /* + '\n' */
  size_t total = (prefix + text + 63) / 64 * 64;
  if (total - prefix > 0xffff) return 0; /* would need version 2.0; not for rank <= 4 */
  if (total > cap) return 0;
  memcpy(out, KD_NPY_MAGIC, KD_NPY_MAGIC_LEN);
  out[6] = 1;
  out[7] = 0;
  size_t hlen = total - prefix;
  out[8] = (char)(hlen & 0xff);
  out[9] = (char)(hlen >> 8);
  memcpy(out + prefix, dict, (size_t)n);
  memset(out + prefix + n, ' ', total - prefix - (size_t)n - 1);
  out[total - 1] = '\n';
  return total;
}

kd_status kd_npy_write(const char *path, const kd_array *a, char *err, size_t errlen) {
  const char *descr = NULL;
  for (int i = 0; i < KD_NPY_NDTYPES; i++)
    if (kd_npy_dtypes[i].dtype == a->dtype) descr = kd_npy_dtypes[i].descr;
  if (!descr) return kd_errf(err, errlen, KD_ERR_UNSUPPORTED, "%s: dtype %s has no .npy form", path, kd_dtype_name(a->dtype));
  int64_t need = kd_shape_nbytes(a->dtype, a->rank, a->shape);
  if (need < 0 || (size_t)need != a->nbytes || (need > 0 && !a->data))
    return kd_errf(err, errlen, KD_ERR_INVALID, "%s: the array's shape and byte count disagree", path);
  char header[512];
  size_t hn = kd_npy_format_header(a, descr, header, sizeof header);
  if (!hn) return kd_errf(err, errlen, KD_ERR_INVALID, "%s: header too long", path);
  kd_atomic_file af;
  kd_status st = kd_atomic_begin(&af, path, err, errlen);
  if (st) return st;
  fwrite(header, 1, hn, af.f);
  if (a->nbytes) fwrite(a->data, 1, a->nbytes, af.f);
  return kd_atomic_commit(&af, err, errlen);
}
