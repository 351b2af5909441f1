#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"

/* ---- the random generator ------------------------------------------------ */

static uint64_t kd_splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

void kd_rng_seed(kd_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = kd_splitmix64(&seed);
}

static uint64_t kd_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t kd_rng_next(kd_rng *r) {
  uint64_t *s = r->s;
  uint64_t out = kd_rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = kd_rotl(s[3], 45);
  return out;
}

/* Rejection keeps it unbiased: the values x >= 2^64 mod n number a multiple
   of n, so x mod n over them is uniform. Rejects with probability < n/2^64. */
uint64_t kd_rng_below(kd_rng *r, uint64_t n) {
  uint64_t skip = (0 - n) % n; /* 2^64 mod n */
  uint64_t x;
  do x = kd_rng_next(r);
  while (x < skip);
  return x % n;
}

double kd_rng_uniform(kd_rng *r) { return (double)(kd_rng_next(r) >> 11) * 0x1.0p-53; }

/* ---- token files ---------------------------------------------------------- */

static void kd_put_le(unsigned char *p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t kd_get_le(const unsigned char *p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

kd_status kd_tokfile_write(const char *path, const uint16_t *tokens, int64_t n, int vocab,
                           char *err, size_t errlen) {
  if (n < 0 || vocab < 1 || vocab > KD_TOK_MAX_VOCAB)
    return kd_errf(err, errlen, KD_ERR_INVALID, "%s: bad token count %lld or vocabulary %d", path,
                   (long long)n, vocab);
  for (int64_t i = 0; i < n; i++)
    if (tokens[i] >= vocab)
      return kd_errf(err, errlen, KD_ERR_INVALID, "%s: token %u at %lld is not below the vocabulary size %d",
                     path, tokens[i], (long long)i, vocab);
  /* Header: magic, version, vocab, reserved (0) as u32; count as u64. */
  unsigned char h[KD_TOK_HEADER_BYTES] = {0};
  kd_put_le(h, KD_TOK_MAGIC, 4);
  kd_put_le(h + 4, KD_TOK_VERSION, 4);
  kd_put_le(h + 8, (uint64_t)vocab, 4);
  kd_put_le(h + 16, (uint64_t)n, 8);
  kd_atomic_file af;
  kd_status s = kd_atomic_begin(&af, path, err, errlen);
  if (s) return s;
  fwrite(h, 1, sizeof h, af.f);
  unsigned char buf[2 * 4096];
  for (int64_t i = 0; i < n;) {
    int k = 0;
    for (; k < 4096 && i < n; k++, i++) kd_put_le(buf + 2 * k, tokens[i], 2);
    fwrite(buf, 2, (size_t)k, af.f);
  }
  return kd_atomic_commit(&af, err, errlen);
}

/* ---- datasets ------------------------------------------------------------- */

struct kd_dataset {
  const unsigned char *tokens; /* bytes (text) or little-endian uint16 pairs */
  int width;                   /* bytes per token: 1 or 2 */
  int64_t n;
  int vocab;
  void *map;
  size_t maplen;
};

static int kd_ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

#define KD_TOK_HINT                                                                          \
  "a token file starts with the magic \"KDTK\" and version %u (docs/data-format.md); "      \
  "to train on raw bytes, give the text file itself, or convert it with "                  \
  "'kdc tokenize TEXT -o OUT.bin'"

/* Checks a token file's header and tokens against the mapping's size. */
static kd_status kd_tok_validate(const char *path, kd_dataset *ds, char *err, size_t errlen) {
  const unsigned char *p = ds->map;
  if (ds->maplen < KD_TOK_HEADER_BYTES || kd_get_le(p, 4) != KD_TOK_MAGIC)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: not a kdc token file (bad magic); " KD_TOK_HINT,
                   path, KD_TOK_VERSION);
  uint64_t version = kd_get_le(p + 4, 4);
  if (version != KD_TOK_VERSION)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                   "%s: token file version %llu, this kdc reads version %u; " KD_TOK_HINT, path,
                   (unsigned long long)version, KD_TOK_VERSION, KD_TOK_VERSION);
  uint64_t vocab = kd_get_le(p + 8, 4), n = kd_get_le(p + 16, 8);
  if (vocab < 1 || vocab > KD_TOK_MAX_VOCAB || kd_get_le(p + 12, 4) != 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: bad header (vocabulary %llu, reserved word %llu)",
                   path, (unsigned long long)vocab, (unsigned long long)kd_get_le(p + 12, 4));
  uint64_t body = (ds->maplen - KD_TOK_HEADER_BYTES);
  if (body % 2 || n != body / 2)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                   "%s: the header counts %llu tokens but the file holds %llu bytes after it "
                   "(truncated or appended to?)",
                   path, (unsigned long long)n, (unsigned long long)body);
  ds->tokens = p + KD_TOK_HEADER_BYTES;
  ds->width = 2;
  ds->n = (int64_t)n;
  ds->vocab = (int)vocab;
  /* One pass over the mapping now saves a bounds check per token later. */
  for (int64_t i = 0; i < ds->n; i++) {
    uint64_t t = kd_get_le(ds->tokens + 2 * i, 2);
    if (t >= vocab)
      return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: token %llu at index %lld is not below the vocabulary size %llu",
                     path, (unsigned long long)t, (long long)i, (unsigned long long)vocab);
  }
  return KD_OK;
}

kd_status kd_data_open(const char *path, kd_dataset **out, char *err, size_t errlen) {
  *out = NULL;
  kd_dataset *ds = calloc(1, sizeof *ds);
  if (!ds) return kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
  int fd = open(path, O_RDONLY);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    free(ds);
    return kd_errf(err, errlen, KD_ERR_IO, "%s: %s", path, strerror(e));
  }
  ds->maplen = (size_t)sb.st_size;
  if (ds->maplen) { /* mmap of 0 bytes is an error; an empty file is data */
    ds->map = mmap(NULL, ds->maplen, PROT_READ, MAP_PRIVATE, fd, 0);
    if (ds->map == MAP_FAILED) {
      int e = errno;
      close(fd);
      free(ds);
      return kd_errf(err, errlen, KD_ERR_IO, "%s: cannot map: %s", path, strerror(e));
    }
  }
  close(fd); /* the mapping keeps the file */
  kd_status s = KD_OK;
  if (kd_ends_with(path, ".bin")) {
    s = kd_tok_validate(path, ds, err, errlen);
  } else {
    ds->tokens = ds->map;
    ds->width = 1;
    ds->n = (int64_t)ds->maplen;
    ds->vocab = 256;
  }
  if (s) {
    kd_data_close(ds);
    return s;
  }
  *out = ds;
  return KD_OK;
}

void kd_data_close(kd_dataset *ds) {
  if (!ds) return;
  if (ds->map) munmap(ds->map, ds->maplen);
  free(ds);
}

int64_t kd_data_tokens(const kd_dataset *ds) { return ds->n; }
int kd_data_vocab(const kd_dataset *ds) { return ds->vocab; }

int32_t kd_data_token(const kd_dataset *ds, int64_t i) {
  const unsigned char *p = ds->tokens + ds->width * i;
  return ds->width == 1 ? p[0] : (int32_t)(p[0] | (p[1] << 8));
}

kd_status kd_data_split(const kd_dataset *ds, double frac, kd_span *train, kd_span *val,
                        char *err, size_t errlen) {
  if (!(frac > 0 && frac <= 1))
    return kd_errf(err, errlen, KD_ERR_INVALID, "split %g is not in (0, 1]", frac);
  int64_t cut = frac == 1 ? ds->n : (int64_t)(frac * (double)ds->n);
  *train = (kd_span){ds, 0, cut, "train"};
  *val = (kd_span){ds, cut, ds->n, "val"};
  if (cut == 0)
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "split %g of %lld tokens leaves the training part empty", frac, (long long)ds->n);
  if (frac < 1 && cut == ds->n)
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "split %g of %lld tokens leaves the validation part empty (use split 1 for none)",
                   frac, (long long)ds->n);
  return KD_OK;
}

/* ---- batches -------------------------------------------------------------- */

kd_status kd_loader_init(kd_loader *l, const kd_span *span, int B, int T, uint64_t seed,
                         char *err, size_t errlen) {
  memset(l, 0, sizeof *l);
  if (B < 1 || T < 1)
    return kd_errf(err, errlen, KD_ERR_INVALID, "batch %d and sequence length %d must be positive", B, T);
  int64_t len = span->end - span->begin;
  if (len < (int64_t)T + 1)
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "the %s split holds %lld tokens, fewer than one window of seq + 1 = %d "
                   "(use a longer file, a shorter seq, or a different split)",
                   span->name, (long long)len, T + 1);
  l->span = *span;
  l->B = B;
  l->T = T;
  kd_rng_seed(&l->rng, seed);
  return KD_OK;
}

static void kd_loader_window(const kd_loader *l, int64_t start, int32_t *row) {
  const kd_dataset *ds = l->span.ds;
  int64_t at = l->span.begin + start;
  if (ds->width == 1) {
    const unsigned char *p = ds->tokens + at;
    for (int t = 0; t <= l->T; t++) row[t] = p[t];
  } else {
    const unsigned char *p = ds->tokens + 2 * at;
    for (int t = 0; t <= l->T; t++) row[t] = (int32_t)(p[2 * t] | (p[2 * t + 1] << 8));
  }
}

void kd_loader_random(kd_loader *l, int32_t *out) {
  uint64_t starts = (uint64_t)(l->span.end - l->span.begin - l->T); /* >= 1 by init */
  for (int b = 0; b < l->B; b++)
    kd_loader_window(l, (int64_t)kd_rng_below(&l->rng, starts), out + (size_t)b * (l->T + 1));
}

int64_t kd_loader_eval_windows(const kd_loader *l) {
  return (l->span.end - l->span.begin - 1) / l->T;
}

int64_t kd_loader_eval_batches(const kd_loader *l) {
  return (kd_loader_eval_windows(l) + l->B - 1) / l->B;
}

int kd_loader_eval_batch(const kd_loader *l, int64_t i, int32_t *out) {
  int64_t nw = kd_loader_eval_windows(l), first = i * l->B;
  if (i < 0 || first >= nw) return 0;
  int rows = nw - first < l->B ? (int)(nw - first) : l->B;
  for (int b = 0; b < rows; b++)
    kd_loader_window(l, (first + b) * l->T, out + (size_t)b * (l->T + 1));
  return rows;
}
