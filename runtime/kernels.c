/* The model fast path's compute kernels (kernels.h): sgemm glue, row gathers
 * and scatters, permutes. */
#include "kernels.h"

#include <cblas.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- matrix products ---------------------------------------------------- */

void kd_blas_set_threads(int n) { openblas_set_num_threads(n > 0 ? n : 1); }
int kd_blas_threads(void) { return openblas_get_num_threads(); }

static bool blas_size_ok(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* A product's tiles: C [M, N] of every batch item cut into tm x tn tiles,
 * one cblas_sgemm each, handed out over the pool. The tiling depends on the
 * shape alone, never on the pool's size, and each tile is one
 * single-threaded call whose K loop is the full product's, so C is
 * bit-identical whatever the thread count.
 *
 * Tiles are large because each one packs its own panels: a tile of tm
 * rows packs all of B again (K N floats against tm K N multiply-adds), a
 * tile of tn columns all of A. Packing a float costs about as much as 40
 * multiply-adds here, so 256-row tiles lost 15% of a [2048, 256] x
 * [256, 1024] product and 8 tiles a product ran the teacher-sized model
 * 10 to 20% slower than 2 tiles of 1024 rows. So: rows in tiles of
 * GEMM_ROWS, and a product with fewer than GEMM_TASKS tiles (batch items
 * count) has its longer side halved, down to GEMM_MIN_TILE, until it has
 * enough for both cores. */
enum { GEMM_ROWS = 1024, GEMM_MIN_TILE = 64, GEMM_TASKS = 2 };

typedef struct gemm_ctx {
  const kd_gemm *p;
  const float *a, *b;
  float *c;
  int64_t tm, tn, rt, ct; /* tile sizes; tiles along M and N */
} gemm_ctx;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Half of a tile side, rounded up to a multiple of 16 (OpenBLAS's sgemm
   register blocks are multiples of 16 floats wide), at least GEMM_MIN_TILE. */
static int64_t half_tile(int64_t t) {
  int64_t h = ceil_div(ceil_div(t, 2), 16) * 16;
  return h > GEMM_MIN_TILE ? h : GEMM_MIN_TILE;
}

static void gemm_tiles(void *vctx, int64_t begin, int64_t end, int worker) {
  (void)worker;
  const gemm_ctx *g = vctx;
  const kd_gemm *p = g->p;
  int64_t lda = kd_gemm_lda(p), ldb = kd_gemm_ldb(p), inner = kd_gemm_inner(p);
  for (int64_t t = begin; t < end; t++) {
    int64_t item = t / (g->rt * g->ct), i0 = t / g->ct % g->rt * g->tm, j0 = t % g->ct * g->tn;
    int64_t m = p->m - i0 < g->tm ? p->m - i0 : g->tm, n = p->n - j0 < g->tn ? p->n - j0 : g->tn;
    int64_t io = item / inner, ii = item % inner;
    /* row block i0 of op(A): rows of A, or columns of A^T; column block
       j0 of op(B): columns of B, or rows of B^T */
    const float *a = g->a + io * p->stride_a + ii * p->stride2_a + (p->trans_a ? i0 : i0 * lda);
    const float *b = g->b + io * p->stride_b + ii * p->stride2_b + (p->trans_b ? j0 * ldb : j0);
    float *c = g->c + io * p->stride_c + ii * p->stride2_c + i0 * p->n + j0;
    cblas_sgemm(CblasRowMajor, p->trans_a ? CblasTrans : CblasNoTrans,
                p->trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)p->k, p->alpha, a,
                lda > 0 ? (int)lda : 1, b, ldb > 0 ? (int)ldb : 1, p->beta, c, (int)p->n);
  }
}

kd_status kd_gemm_run(kd_pool *pool, const kd_gemm *p, const float *a, const float *b, float *c) {
  if (p->batch < 0 || !blas_size_ok(p->m) || !blas_size_ok(p->n) || !blas_size_ok(p->k) ||
      !blas_size_ok(kd_gemm_lda(p)) || !blas_size_ok(kd_gemm_ldb(p)) ||
      p->batch % kd_gemm_inner(p) != 0)
    return KD_ERR_INVALID;
  if (p->batch == 0 || p->m == 0 || p->n == 0) return KD_OK;
  /* at most GEMM_ROWS rows a tile; halve the longer side (down to
     GEMM_MIN_TILE) while there are fewer than GEMM_TASKS tiles */
  gemm_ctx g = {p, a, b, c, p->m < GEMM_ROWS ? p->m : GEMM_ROWS, p->n, 0, 0};
  for (;;) {
    g.rt = ceil_div(p->m, g.tm), g.ct = ceil_div(p->n, g.tn);
    if (p->batch * g.rt * g.ct >= GEMM_TASKS) break;
    int64_t *side = g.tn > g.tm ? &g.tn : &g.tm;
    if (*side <= GEMM_MIN_TILE) break;
    *side = half_tile(*side);
  }
  /* about a million multiply-adds a chunk, so a chunk outweighs waking a
     worker; products smaller than that run on this thread */
  int64_t tile = g.tm * g.tn * (p->k > 0 ? p->k : 1);
  /* batch items whose C overlap (a stride under the items it steps over)
     run in order, on this thread, as one loop would */
  int64_t inner = kd_gemm_inner(p), mn = p->m * p->n;
  bool overlap = (inner > 1 && p->stride2_c < mn) ||
                 (p->batch > inner && p->stride_c < (inner > 1 ? inner * p->stride2_c : mn));
  kd_pool_parallel_for(overlap ? NULL : pool, p->batch * g.rt * g.ct,
                       tile >= (1 << 20) ? 1 : (1 << 20) / tile, gemm_tiles, &g);
  return KD_OK;
}

kd_status kd_matmul_f32(kd_pool *pool, int64_t batch, int64_t m, int64_t k, int64_t n,
                        bool b_shared, const float *a, const float *b, float *c) {
  /* a shared b: the batch's rows are one [B*M, K] matrix */
  kd_gemm p = {.batch = b_shared ? 1 : batch, .m = b_shared ? batch * m : m, .n = n, .k = k,
               .alpha = 1, .beta = 0, .stride_a = m * k, .stride_b = k * n, .stride_c = m * n};
  return kd_gemm_run(pool, &p, a, b, c);
}

kd_status kd_matmul_grad_a_f32(kd_pool *pool, int64_t batch, int64_t m, int64_t k, int64_t n,
                               bool b_shared, const float *dc, const float *b, float beta,
                               float *da) {
  /* da [M, K] = dc [M, N] @ b^T, b stored [K, N] */
  kd_gemm p = {.batch = b_shared ? 1 : batch, .m = b_shared ? batch * m : m, .n = k, .k = n,
               .trans_b = true, .alpha = 1, .beta = beta,
               .stride_a = m * n, .stride_b = k * n, .stride_c = m * k};
  return kd_gemm_run(pool, &p, dc, b, da);
}

kd_status kd_matmul_grad_b_f32(kd_pool *pool, int64_t batch, int64_t m, int64_t k, int64_t n,
                               bool b_shared, const float *a, const float *dc, float beta,
                               float *db) {
  /* db [K, N] = a^T @ dc, a stored [M, K]; with a shared b, the sum over the
     batch is the product of the stacked [B*M, K] and [B*M, N] matrices */
  kd_gemm p = {.batch = b_shared ? 1 : batch, .m = k, .n = n, .k = b_shared ? batch * m : m,
               .trans_a = true, .alpha = 1, .beta = beta,
               .stride_a = m * k, .stride_b = m * n, .stride_c = k * n};
  return kd_gemm_run(pool, &p, a, dc, db);
}

/* ---- gather and scatter of rows ----------------------------------------- */

/* The first id outside [0, V), reported in err; KD_OK when all are in. */
static kd_status check_ids(const int64_t *ids, int64_t n, int64_t V, char *err, size_t errlen) {
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] >= 0 && ids[i] < V) continue;
    if (err && errlen)
      snprintf(err, errlen, "id %lld at position %lld is outside the table's %lld rows",
               (long long)ids[i], (long long)i, (long long)V);
    return KD_ERR_INVALID;
  }
  return KD_OK;
}

typedef struct gather_ctx {
  const float *table;
  const int64_t *ids;
  int64_t D;
  float *out;
} gather_ctx;

static void gather_chunk(void *vctx, int64_t begin, int64_t end, int worker) {
  (void)worker;
  const gather_ctx *c = vctx;
  size_t row = (size_t)c->D * sizeof(float);
  for (int64_t i = begin; i < end; i++)
    memcpy(c->out + i * c->D, c->table + c->ids[i] * c->D, row);
}

/* Rows per chunk: about 16 KiB of floats, so a chunk outweighs waking a
   worker. */
static int64_t row_grain(int64_t D) { return D >= 4096 ? 1 : 4096 / (D > 0 ? D : 1); }

kd_status kd_gather_rows_f32(kd_pool *pool, const float *table, int64_t V, int64_t D,
                         const int64_t *ids, int64_t n, float *out, char *err, size_t errlen) {
  if (V < 0 || D < 0 || n < 0) return KD_ERR_INVALID;
  kd_status st = check_ids(ids, n, V, err, errlen);
  if (st != KD_OK) return st;
  gather_ctx c = {table, ids, D, out};
  kd_pool_parallel_for(pool, n, row_grain(D), gather_chunk, &c);
  return KD_OK;
}

typedef struct scatter_ctx {
  const float *rows;
  const int64_t *start; /* [V + 1]: destination v takes order[start[v] .. start[v + 1]) */
  const int64_t *order; /* [n]: source rows, by destination, then by position */
  int64_t D;
  bool accumulate;
  float *table;
} scatter_ctx;

static void scatter_chunk(void *vctx, int64_t begin, int64_t end, int worker) {
  (void)worker;
  const scatter_ctx *c = vctx;
  for (int64_t v = begin; v < end; v++) {
    int64_t D = c->D;
    float *restrict dst = c->table + v * D; /* rows and table never overlap */
    if (!c->accumulate) memset(dst, 0, (size_t)D * sizeof(float));
    for (int64_t j = c->start[v]; j < c->start[v + 1]; j++) {
      const float *restrict src = c->rows + c->order[j] * D;
      for (int64_t d = 0; d < D; d++) dst[d] += src[d];
    }
  }
}

kd_status kd_scatter_add_rows_f32(kd_pool *pool, const float *rows, const int64_t *ids, int64_t n,
                              int64_t V, int64_t D, bool accumulate, float *table, char *err,
                              size_t errlen) {
  if (V < 0 || D < 0 || n < 0) return KD_ERR_INVALID;
  kd_status st = check_ids(ids, n, V, err, errlen);
  if (st != KD_OK) return st;
  int64_t *start = calloc((size_t)V + 1, sizeof *start);
  int64_t *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
  if (!start || !order) {
    free(start);
    free(order);
    return KD_ERR_NOMEM;
  }
  /* counting sort, stable: positions stay increasing within a destination */
  for (int64_t i = 0; i < n; i++) start[ids[i] + 1]++;
  for (int64_t v = 0; v < V; v++) start[v + 1] += start[v];
  for (int64_t i = 0; i < n; i++) order[start[ids[i]]++] = i;
  for (int64_t v = V; v > 0; v--) start[v] = start[v - 1]; /* undo the increments */
  start[0] = 0;
  scatter_ctx c = {rows, start, order, D, accumulate, table};
  kd_pool_parallel_for(pool, V, row_grain(D), scatter_chunk, &c);
  free(start);
  free(order);
  return KD_OK;
}

/* ---- permutes ------------------------------------------------------------ */

enum { TILE = 16 };

/* A permute as a 4-d strided copy: out [o0, o1, o2, o3] C-contiguous, read
   at in + sum(i_d * s[d]). Either s[3] == 1 (rows copy) or out dim p has
   s[p] == 1 and the (p, 3) plane is copied in tiles. */
typedef struct permute_ctx {
  const float *in;
  float *out;
  int64_t o[4], s[4];
  int p;    /* the out dim read contiguously; 3 for row copies */
  int q[2]; /* tiled case: the two other out dims */
} permute_ctx;

static void permute_rows(void *vctx, int64_t begin, int64_t end, int worker) {
  (void)worker;
  const permute_ctx *c = vctx;
  size_t row = (size_t)c->o[3] * sizeof(float);
  for (int64_t r = begin; r < end; r++) { /* r = (i0 * o1 + i1) * o2 + i2 */
    int64_t i2 = r % c->o[2], i1 = r / c->o[2] % c->o[1], i0 = r / c->o[2] / c->o[1];
    memcpy(c->out + r * c->o[3], c->in + i0 * c->s[0] + i1 * c->s[1] + i2 * c->s[2], row);
  }
}

static void permute_tiles(void *vctx, int64_t begin, int64_t end, int worker) {
  (void)worker;
  const permute_ctx *c = vctx;
  int p = c->p;
  int64_t ostride[4] = {c->o[1] * c->o[2] * c->o[3], c->o[2] * c->o[3], c->o[3], 1};
  int qa = c->q[0], qb = c->q[1];
  int64_t ptiles = (c->o[p] + TILE - 1) / TILE;
  for (int64_t r = begin; r < end; r++) { /* r = (ia * o[qb] + ib) * ptiles + tile of dim p */
    int64_t p0 = r % ptiles * TILE, ia = r / ptiles / c->o[qb], ib = r / ptiles % c->o[qb];
    int64_t p1 = p0 + TILE < c->o[p] ? p0 + TILE : c->o[p];
    const float *in = c->in + ia * c->s[qa] + ib * c->s[qb];
    float *out = c->out + ia * ostride[qa] + ib * ostride[qb];
    for (int64_t j0 = 0; j0 < c->o[3]; j0 += TILE) {
      int64_t j1 = j0 + TILE < c->o[3] ? j0 + TILE : c->o[3];
      for (int64_t ip = p0; ip < p1; ip++)
        for (int64_t j = j0; j < j1; j++) out[ip * ostride[p] + j] = in[ip + j * c->s[3]];
    }
  }
}

kd_status kd_permute_f32(kd_pool *pool, const float *in, int rank, const int64_t *shape,
                     const int *perm, float *out) {
  if (rank < 1 || rank > 4) return KD_ERR_INVALID;
  bool seen[4] = {false, false, false, false};
  for (int d = 0; d < rank; d++) {
    if (shape[d] < 0 || perm[d] < 0 || perm[d] >= rank || seen[perm[d]]) return KD_ERR_INVALID;
    seen[perm[d]] = true;
  }
  /* in strides, with size-1 dims squeezed out (their stride never counts),
     so the dim read contiguously below always has a size > 1 */
  int64_t istride[4], total = 1;
  for (int d = rank - 1; d >= 0; d--) {
    istride[d] = shape[d] == 1 ? 0 : total;
    total *= shape[d];
  }
  if (total == 0) return KD_OK;
  /* the out dims of size > 1, right-aligned in 4 dims padded with 1s */
  permute_ctx c = {.in = in, .out = out, .o = {1, 1, 1, 1}, .s = {0, 0, 0, 0}, .p = 3};
  int j = 4;
  for (int i = rank - 1; i >= 0; i--)
    if (shape[perm[i]] > 1) {
      c.o[--j] = shape[perm[i]];
      c.s[j] = istride[perm[i]];
    }
  if (c.s[3] == 1 || c.o[3] == 1) { /* the last axis stays: contiguous rows */
    kd_pool_parallel_for(pool, c.o[0] * c.o[1] * c.o[2], c.o[3] >= 256 ? 1 : 256 / c.o[3] + 1,
                         permute_rows, &c);
    return KD_OK;
  }
  for (int d = 0; d < 3; d++)
    if (c.s[d] == 1) c.p = d;
  int nq = 0;
  for (int d = 0; d < 3; d++)
    if (d != c.p) c.q[nq++] = d;
  /* one task per strip of TILE rows of dim p in each (q0, q1) plane */
  kd_pool_parallel_for(pool, c.o[c.q[0]] * c.o[c.q[1]] * ((c.o[c.p] + TILE - 1) / TILE), 1,
                       permute_tiles, &c);
  return KD_OK;
}

kd_status kd_split_heads(kd_pool *pool, const float *in, int64_t B, int64_t T, int64_t H,
                         int64_t Dh, float *out) {
  static const int perm[4] = {0, 2, 1, 3};
  int64_t shape[4] = {B, T, H, Dh};
  return kd_permute_f32(pool, in, 4, shape, perm, out);
}

kd_status kd_merge_heads(kd_pool *pool, const float *in, int64_t B, int64_t H, int64_t T,
                         int64_t Dh, float *out) {
  static const int perm[4] = {0, 2, 1, 3};
  int64_t shape[4] = {B, H, T, Dh};
  return kd_permute_f32(pool, in, 4, shape, perm, out);
}
