/* A model's parameters at run time: names, shapes, init specs and float32
 * values in one arena. Knows no IR: passes/params_model.h fills one from a
 * lowered model, and the trainer, `kdc init` and a teacher's loader use it.
 *
 *   kd_params P = {0};                       an empty set
 *   kd_params_add(&P, "ln.weight", 1, (int64_t[]){128}, kd_pinit_ones(), ...);
 *   kd_params_init(&P, seed, ...)            draw every tensor from its spec
 *   kd_params_load_safetensors(&P, path, ...)   or load every tensor by name
 *   kd_params_save(&P, path, &meta, ...)     write them, atomically
 *   kd_params_free(&P);
 *
 * Storage: one 64-byte-aligned arena; every tensor starts on a 64-byte
 * boundary (its offset rounded up to 16 floats) so that vector loads of a
 * row's start never split a cache line. The arena is made by the first
 * init, load or kd_params_alloc; the set is then closed to kd_params_add.
 *
 * Seeding: tensor i's values come from its own xoshiro256** stream
 * (runtime/data.h) seeded by FNV-1a-64 of (seed, name), so a tensor's values
 * depend only on the seed, its name and its spec: adding a layer, or
 * listing the parameters in another order, leaves every other tensor's
 * values unchanged. normal(mean, std) is Box-Muller on 53-bit uniforms
 * (both the cosine and the sine outputs, in that order), computed in double
 * and rounded once to float. The integers are the same on every machine;
 * the floats are the same wherever libm's log, cos and sin are (sqrt is
 * exact IEEE), and since a result is rounded from double to float, a
 * last-bit difference in double changes a float in about one case in 2^29.
 * Box-Muller rather than the Ziggurat: no tables, and init is not a hot
 * path: about 16 ns a value at -O2 on one core (130M values in 2.1 s). */
#ifndef KD_PARAMS_H
#define KD_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"
#include "status.h"

#define KD_PARAMS_MAX_RANK 8

typedef enum kd_pinit_kind { KD_PINIT_NORMAL, KD_PINIT_ZEROS, KD_PINIT_ONES } kd_pinit_kind;

typedef struct kd_pinit {
  kd_pinit_kind kind;
  double mean, std; /* NORMAL only */
} kd_pinit;

static inline kd_pinit kd_pinit_normal(double mean, double std) {
  return (kd_pinit){KD_PINIT_NORMAL, mean, std};
}
static inline kd_pinit kd_pinit_zeros(void) { return (kd_pinit){KD_PINIT_ZEROS, 0, 0}; }
static inline kd_pinit kd_pinit_ones(void) { return (kd_pinit){KD_PINIT_ONES, 0, 0}; }

/* "normal(0, 0.02)", "zeros" or "ones" into buf; returns buf. */
const char *kd_pinit_str(kd_pinit init, char *buf, size_t len);

typedef struct kd_ptensor {
  char *name; /* owned; the safetensors key */
  int rank;
  int64_t shape[KD_PARAMS_MAX_RANK]; /* entries past rank are 0 */
  int64_t numel;
  kd_pinit init;
  size_t offset; /* in floats, from the arena's start */
} kd_ptensor;

typedef struct kd_params {
  kd_ptensor *t; /* in the order added */
  int n, cap;
  float *arena;   /* NULL until allocated; 64-byte aligned */
  size_t nfloats; /* the arena's size, padding included */
} kd_params;

/* Adds a tensor (name non-empty and new, rank 0..KD_PARAMS_MAX_RANK, every
   dimension >= 1, a normal's std finite and >= 0). KD_ERR_INVALID with a
   message otherwise, or once the arena exists. */
kd_status kd_params_add(kd_params *P, const char *name, int rank, const int64_t *shape,
                        kd_pinit init, char *err, size_t errlen);
/* Allocates the zeroed arena if it does not exist yet. */
kd_status kd_params_alloc(kd_params *P, char *err, size_t errlen);
void kd_params_free(kd_params *P);

/* The index of name, or -1. */
int kd_params_find(const kd_params *P, const char *name);
/* Tensor i's values (numel floats), or NULL before the arena exists. */
float *kd_params_data(const kd_params *P, int i);
/* "[2, 3]" ("[]" for a scalar) into buf; returns buf. */
const char *kd_params_shape_str(int rank, const int64_t *shape, char *buf, size_t len);
/* The number of parameters: the sum of numel. */
int64_t kd_params_count(const kd_params *P);

/* Draws every tensor from its spec as the comment at the top says. */
kd_status kd_params_init(kd_params *P, uint64_t seed, char *err, size_t errlen);

/* Checks an open file against the set: every tensor present, no tensor the
 * set does not have, the same shapes, dtype F32, BF16 or F16. On a mismatch
 * returns KD_ERR_FORMAT and err holds one line per kind of problem, each
 * "PATH: ...", joined by '\n' (no final newline):
 *   PATH: N tensors missing: "a", "b", ... and K more        (at most 5 named)
 *   PATH: N unexpected tensors: "x" (did you mean "y"?), ... and K more
 *   PATH: tensor "a": shape [2, 3] in the file, [3, 2] in the model
 *   PATH: tensor "a": dtype I32, not F32, BF16 or F16
 * (one line per shape or dtype mismatch, at most 5 of each, then a line
 * "PATH: ... and K more mismatches"). path only names the file in messages. */
kd_status kd_params_check(const kd_params *P, const kd_safetensors *st, const char *path, char *err,
                          size_t errlen);
/* Opens path, checks it as above and only then copies every tensor in,
 * converting BF16 and F16 to float (exactly: both widen without rounding).
 * All or nothing: on any error the values are unchanged. */
kd_status kd_params_load_safetensors(kd_params *P, const char *path, char *err, size_t errlen);

/* The __metadata__ of a saved set; NULL fields are left out. */
typedef struct kd_params_meta {
  const char *kdc_version; /* "kdc_version" */
  const char *model;       /* "model": the instance's name */
  const uint64_t *seed;    /* "seed", in decimal: the seed init drew with */
} kd_params_meta;

/* Writes every tensor as F32 with "format": "kdc-params" and meta, through
   kd_st_write (a temporary, fsync, rename: readers see the old file or the
   new one). The arena must exist. */
kd_status kd_params_save(const kd_params *P, const char *path, const kd_params_meta *meta,
                         char *err, size_t errlen);

#endif /* KD_PARAMS_H */
