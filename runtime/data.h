/* Training data: token streams, the train/validation split and batches.
 *
 * Two kinds of file hold a stream of tokens (docs/data-format.md):
 *   - text: every byte is a token (vocab 256), any file that is not a .bin;
 *   - token files (.bin): a 24-byte header (magic "KDTK", version, vocab,
 *     token count) and then little-endian uint16 tokens.
 * Both are memory-mapped; nothing is copied until a batch is drawn.
 *
 * A batch is B windows of T+1 consecutive tokens, written as int32 [B, T+1]:
 * row b's inputs are [b, 0..T) and its next-token labels [b, 1..T+1).
 * Training windows start at positions drawn from a seeded kd_rng, so a run
 * is the same on every machine; validation windows are sequential and a
 * pure function of the batch index. */
#ifndef KD_DATA_H
#define KD_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* ---- the random generator ------------------------------------------------
 * xoshiro256** (Blackman and Vigna, 2018), seeded by splitmix64 as its
 * authors recommend: integer-only, so the sequence is the same on every
 * machine and compiler. The state is four words so checkpoints can save it. */
typedef struct kd_rng {
  uint64_t s[4];
} kd_rng;

void kd_rng_seed(kd_rng *r, uint64_t seed);
uint64_t kd_rng_next(kd_rng *r);
/* Uniform in [0, n), without modulo bias (rejection); n > 0. */
uint64_t kd_rng_below(kd_rng *r, uint64_t n);
/* Uniform in [0, 1) with 53 random bits. */
double kd_rng_uniform(kd_rng *r);

/* ---- token files ---------------------------------------------------------- */
#define KD_TOK_MAGIC 0x4b54444bu /* the bytes "KDTK" read as little-endian */
#define KD_TOK_VERSION 1u
#define KD_TOK_HEADER_BYTES 24
#define KD_TOK_MAX_VOCAB 65536

/* Writes n tokens (each < vocab, vocab in 1..65536) as a token file,
   atomically. */
kd_status kd_tokfile_write(const char *path, const uint16_t *tokens, int64_t n, int vocab,
                           char *err, size_t errlen);

/* ---- datasets ------------------------------------------------------------- */
typedef struct kd_dataset kd_dataset;

/* Opens path as a token file when its name ends in ".bin", else as text.
   A token file with a bad magic or version, a count that disagrees with the
   file's size, or a token >= vocab is KD_ERR_FORMAT with a hint. */
kd_status kd_data_open(const char *path, kd_dataset **out, char *err, size_t errlen);
void kd_data_close(kd_dataset *ds);

int64_t kd_data_tokens(const kd_dataset *ds);
int kd_data_vocab(const kd_dataset *ds);
/* Token i (0 <= i < kd_data_tokens). */
int32_t kd_data_token(const kd_dataset *ds, int64_t i);

/* A contiguous part of a dataset: tokens [begin, end). */
typedef struct kd_span {
  const kd_dataset *ds;
  int64_t begin, end;
  const char *name; /* "train" or "val", for messages */
} kd_span;

/* The first floor(frac x n) tokens train, the rest validate. frac is in
   (0, 1]; 1 means no validation split (val is then empty). Any other empty
   part is KD_ERR_INVALID. */
kd_status kd_data_split(const kd_dataset *ds, double frac, kd_span *train, kd_span *val,
                        char *err, size_t errlen);

/* ---- batches -------------------------------------------------------------- */
typedef struct kd_loader {
  kd_span span;
  int B, T;   /* batch rows, window length (a row holds T+1 tokens) */
  kd_rng rng; /* draws training windows; saved in checkpoints */
} kd_loader;

/* Fails with KD_ERR_INVALID when the span holds fewer than T+1 tokens
   (the message names the span, its size and the window). */
kd_status kd_loader_init(kd_loader *l, const kd_span *span, int B, int T, uint64_t seed,
                         char *err, size_t errlen);

/* B windows at random starts in [0, len - T - 1] -> out [B, T+1]. */
void kd_loader_random(kd_loader *l, int32_t *out);

/* Validation: windows start at 0, T, 2T, ..., so every token but the first
   is a label exactly once. kd_loader_eval_batches is the number of batches
   that cover them; kd_loader_eval_batch fills batch i into out [B, T+1] and
   returns the rows filled (B, or fewer in the last batch; rows past them
   are left untouched). Depends on i only, not on earlier calls. */
int64_t kd_loader_eval_windows(const kd_loader *l);
int64_t kd_loader_eval_batches(const kd_loader *l);
int kd_loader_eval_batch(const kd_loader *l, int64_t i, int32_t *out);

#endif /* KD_DATA_H */
