/* What the tests that build step programs by hand share (tests/step and
 * tests/step_gen): a seeded xorshift generator, an arena layout, and the
 * growing of random trees of maps. */
#ifndef KD_TEST_PROGBUILD_H
#define KD_TEST_PROGBUILD_H

#include <stdbool.h>
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

/* A random tree of maps under construction: its leaves are the program's
 * first values (the test's own), each map writes a new f32 value over
 * [R, C], and the maps made so far can be read again. */
enum { KD_TREE_MAXV = 64, KD_TREE_MAXI = 48 };

typedef struct kd_tree {
  kd_step_prog *p; /* kd_step_alloc(KD_TREE_MAXV, KD_TREE_MAXI, 0) */
  int64_t R, C;
  int nv, ni;                     /* values (leaves first) and instructions so far */
  kd_step_ref made[KD_TREE_MAXI]; /* the maps' results, for a second reader */
  int nmade;
} kd_tree;

static inline int kd_tree_arity(kd_step_fn fn) {
  if (fn >= KD_SF_ADD && fn <= KD_SF_NE) return 2;
  return fn == KD_SF_SELECT ? 3 : 1;
}

static inline bool kd_tree_full(const kd_tree *t) {
  return t->nv == KD_TREE_MAXV || t->ni == KD_TREE_MAXI;
}

/* fn(src) as a MAP into a new f32 value; src[0] when the tree is full. */
static inline kd_step_ref kd_tree_map(kd_tree *t, kd_step_fn fn, const kd_step_ref *src) {
  if (kd_tree_full(t)) return src[0];
  kd_step_instr *in = &t->p->instr[t->ni++];
  *in = (kd_step_instr){.kind = KD_STEP_MAP, .fn = fn, .rank = 2, .shape = {t->R, t->C},
                        .nsrc = kd_tree_arity(fn), .node = -1};
  for (int s = 0; s < kd_tree_arity(fn); s++) in->src[s] = src[s];
  int v = t->nv++;
  t->p->values[v] = (kd_step_value){.loc = KD_LOC_ARENA, .dtype = KD_F32, .elems = t->R * t->C};
  in->dst = (kd_step_ref){.value = v, .stride = {t->C, 1}};
  t->made[t->nmade++] = in->dst;
  return in->dst;
}

#endif /* KD_TEST_PROGBUILD_H */
