/* Internal to the runtime: running FUSED step instructions (step.h's
 * kd_step_expr), and the element functions they share with MAP.
 *
 * A fused op computes what the MAP it replaces computed, bit for bit, by
 * calling the very functions MAP's paths call (defined in step.c): the f32
 * path's kd_step_map_f32 and the general path's kd_step_map_double. So a
 * change to MAP's arithmetic (a vectorised exp) changes both at once. */
#ifndef KD_STEP_FUSED_H
#define KD_STEP_FUSED_H

#include "step.h"

/* Fused ops evaluate blocks of at most this many elements of the last dim. */
enum { KD_FUSED_BLOCK = 256 };

/* MAP's f32 path over n elements: d[j] = fn(a[j], b[j]), where a (b) is a
   vector when va (vb), else the scalar xs (ys). Not IOTA or SELECT. */
void kd_step_map_f32(kd_step_fn fn, int64_t n, float *restrict d, const float *restrict a,
                     bool va, double xs, const float *restrict b, bool vb, double ys);

/* MAP's general path: r[j] = fn(x[j], y[j], z[j]) in double, n <= 256. */
void kd_step_map_double(kd_step_fn fn, int n, double *r, const double *x, const double *y,
                        const double *z);

/* The number of operands map function fn takes (0 for IOTA), -1 for a
   function that is not a map's. */
int kd_step_map_arity(kd_step_fn fn);

/* The index walk MAP and FUSED share, over n refs whose strides over the
   instruction's shape are stride[k][0 .. rank) (stride[k] points at ref k's
   own array, which kd_step_merge_dims rewrites). */

/* Drops dims of size 1 and merges neighbours every ref walks as one
   (stride[d - 1] == stride[d] * shape[d]), so [B, T, D] + [D] runs as one
   [B*T, D] loop and a contiguous map as one long row; rewrites shape and
   the strides, returns the rank left (>= 1). */
int kd_step_merge_dims(int rank, int64_t *shape, int n, int64_t *const *stride);

/* Elements [begin, end) of the index space in C order, a segment of the
   last dim at a time: seg(ctx, off, len), off[k] ref k's element offset at
   the segment's start. row and off are the caller's n-entry scratch, row[k]
   set to ref k's own offset. The first segment's index comes by division,
   the next ones by counting, as an odometer over the outer dims (rows of
   32 floats, an attention head's, made the divisions cost more than the
   work). */
void kd_step_walk(int rank, const int64_t *shape, int n, int64_t *const *stride, int64_t begin,
                  int64_t end, int64_t *row, int64_t *off,
                  void (*seg)(void *ctx, const int64_t *off, int64_t len), void *ctx);

/* Runs FUSED instruction i of a valid program (as kd_step_run). */
kd_status kd_step_run_fused(const kd_step_prog *p, int32_t i, void *arena, void *const *slots,
                            kd_pool *pool, char *err, size_t errlen);

#endif /* KD_STEP_FUSED_H */
