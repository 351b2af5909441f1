/* What the tests that build step programs by hand share (tests/step and
 * tests/step_gen): a seeded xorshift generator and an arena layout. */
#ifndef KD_TEST_PROGBUILD_H
#define KD_TEST_PROGBUILD_H

#include <stdint.h>

#include "step.h"

/* xorshift64; a test may reseed `rng` for a fixed sequence. */
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static inline uint64_t next(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}
static inline double urand(void) { return (double)(next() >> 11) / 9007199254740992.0; } /* [0, 1) */

/* Places every arena value after the previous one, 64-byte aligned, and sets
 * the program's arena size. */
static inline void place_values(kd_step_prog *p) {
  int64_t at = 0;
  for (int v = 0; v < p->nvalues; v++) {
    if (p->values[v].loc != KD_LOC_ARENA) continue;
    p->values[v].offset = at;
    at += (p->values[v].elems * (int64_t)kd_dtype_size(p->values[v].dtype) + 63) / 64 * 64;
  }
  p->arena_bytes = at;
}

#endif /* KD_TEST_PROGBUILD_H */
