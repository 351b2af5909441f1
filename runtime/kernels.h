/* Compute kernels of the model fast path: the products, gathers and layout
 * changes a compiled training step calls between its fused row kernels.
 *
 * The runtime knows no IR: plain f32 pointers, sizes and strides, all arrays
 * row-major (C order) and contiguous unless a stride says otherwise. The
 * IR op each kernel implements is named next to it (ir/ops.def, semantics in
 * ir/refexec.c).
 *
 * Threads. Every kernel runs on our kd_pool, matrix products included:
 * kd_gemm_run cuts C into tiles and each pool worker calls OpenBLAS's
 * sgemm on its tiles, so OpenBLAS must run one thread of its own
 * (kd_blas_set_threads(1); more would nest its threads inside ours, and
 * its idle threads spin on sched_yield against our workers).
 *
 * Determinism: every kernel gives bit-identical results whatever the
 * thread count (a product's tiles depend on its shape alone);
 * kd_scatter_add_rows_f32 sums each destination row in the
 * order of the ids, never with float atomics.
 *
 * Legend: B = batch, M, K, N = matrix sizes, V = table rows, D = row width,
 * T = sequence, H = heads, Dh = head width. */
#ifndef KD_KERNELS_H
#define KD_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"
#include "threadpool.h"

/* OpenBLAS's thread count (n <= 0: 1); kd_blas_threads reads it back. */
void kd_blas_set_threads(int n);
int kd_blas_threads(void);

/* The general batched product, tiles of each batch item split over pool:
 *   C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b],   b in [0, batch)
 * op(A) is [M, K] (A is stored [K, M] when trans_a), op(B) is [K, N] (stored
 * [N, K] when trans_b), C is [M, N]. lda and ldb are the floats from one
 * stored row of A or B to the next (0: packed, the stored row's length);
 * C is packed. Batch items are (outer, inner) pairs, b = outer * inner2 +
 * inner with inner2 = batch2 (0 or 1: one level): item b of X starts at
 * outer * stride_x + inner * stride2_x, so a view such as attention's heads
 * ([B, T, H, Dh] read as [B, H] products of [T, Dh]) needs no copy;
 * stride_b = 0 (and stride2_b = 0) shares one B across the batch.
 * beta = 0 overwrites C (NaNs in it are ignored, as BLAS specifies).
 * KD_ERR_INVALID on a negative size. Tiles of at most 1024 rows, cut
 * further (not below 64 x 64) until a product has 2 (kernels.c says why so
 * few), each one cblas_sgemm call; pool NULL runs them on this thread. */
typedef struct kd_gemm {
  int64_t batch, m, n, k;
  bool trans_a, trans_b;
  float alpha, beta;
  int64_t stride_a, stride_b, stride_c;
  int64_t lda, ldb;                        /* 0: packed */
  int64_t batch2, stride2_a, stride2_b, stride2_c; /* batch2 0 or 1: one level */
} kd_gemm;

/* lda, ldb as the product uses them (the packed length where 0), and the
 * inner batch count (at least 1). */
static inline int64_t kd_gemm_lda(const kd_gemm *p) {
  return p->lda > 0 ? p->lda : p->trans_a ? p->m : p->k;
}
static inline int64_t kd_gemm_ldb(const kd_gemm *p) {
  return p->ldb > 0 ? p->ldb : p->trans_b ? p->k : p->n;
}
static inline int64_t kd_gemm_inner(const kd_gemm *p) { return p->batch2 > 1 ? p->batch2 : 1; }
kd_status kd_gemm_run(kd_pool *pool, const kd_gemm *p, const float *a, const float *b, float *c);

/* MATMUL and its two adjoints, for a [B, M, K] and b [K, N] (b_shared) or
 * b [B, K, N]; c, dc are [B, M, N]. beta = 1 accumulates into the output
 * (a gradient that has other contributions), beta = 0 overwrites it.
 *   forward:  c  = a @ b               shared b: one [B*M, K] x [K, N] call
 *   grad_a:   da = dc @ b^T            shared b: one [B*M, N] x [N, K] call
 *   grad_b:   db = a^T @ dc            shared b: summed over the batch, as
 *             one [K, B*M] x [B*M, N] call (db is [K, N]); else [B, K, N] */
kd_status kd_matmul_f32(kd_pool *pool, int64_t batch, int64_t m, int64_t k, int64_t n,
                        bool b_shared, const float *a, const float *b, float *c);
kd_status kd_matmul_grad_a_f32(kd_pool *pool, int64_t batch, int64_t m, int64_t k, int64_t n,
                               bool b_shared, const float *dc, const float *b, float beta,
                               float *da);
kd_status kd_matmul_grad_b_f32(kd_pool *pool, int64_t batch, int64_t m, int64_t k, int64_t n,
                               bool b_shared, const float *a, const float *dc, float beta,
                               float *db);

/* GATHER_ROWS (the embedding's forward): out[i, :] = table[ids[i], :] for
 * i in [0, n); table [V, D], out [n, D]. An id outside [0, V) gives
 * KD_ERR_INVALID with "id 300 at position 17 is outside the table's 256
 * rows" in err, and out unwritten. */
kd_status kd_gather_rows_f32(kd_pool *pool, const float *table, int64_t V, int64_t D,
                         const int64_t *ids, int64_t n, float *out, char *err, size_t errlen);

/* SCATTER_ADD_ROWS (its adjoint): table[ids[i], :] += rows[i, :] for every
 * i, each destination row summed in increasing i; table is zeroed first
 * unless accumulate. The ids are sorted by destination (a counting sort,
 * n + V + 1 scratch indices) and the pool splits the destination rows;
 * rows and table must not overlap.
 * Errors as kd_gather_rows_f32, table then untouched; KD_ERR_NOMEM. */
kd_status kd_scatter_add_rows_f32(kd_pool *pool, const float *rows, const int64_t *ids, int64_t n,
                              int64_t V, int64_t D, bool accumulate, float *table, char *err,
                              size_t errlen);

/* PERMUTE: out dim i is in dim perm[i], for rank 1..4; shape is in's. A
 * permutation that keeps the last axis copies contiguous rows; one that
 * moves it transposes in 16 x 16 tiles, so both reads and writes run along
 * cache lines. KD_ERR_INVALID on a bad rank or permutation. */
kd_status kd_permute_f32(kd_pool *pool, const float *in, int rank, const int64_t *shape,
                     const int *perm, float *out);

/* Attention's head split and merge: [B, T, H, Dh] -> [B, H, T, Dh] and back
 * ([B, H, T, Dh] -> [B, T, H, Dh] is the same swap of the middle axes with
 * T and H exchanged). */
kd_status kd_split_heads(kd_pool *pool, const float *in, int64_t B, int64_t T, int64_t H,
                         int64_t Dh, float *out);
kd_status kd_merge_heads(kd_pool *pool, const float *in, int64_t B, int64_t H, int64_t T,
                         int64_t Dh, float *out);

#endif /* KD_KERNELS_H */
