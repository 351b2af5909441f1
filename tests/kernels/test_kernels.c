/* The fast path's kernels (runtime/kernels.h) against naive loops in double,
 * on odd sizes (1, 3, 17, 64, 130) so every blocking edge is crossed.
 *
 * Tolerances. A float dot product of length K, summed in any order, is
 * within gamma_K * sum |a_i b_i| of the exact value, gamma_K = K u / (1 - K u)
 * with u = 2^-24 (Higham, Accuracy and Stability, 3.1); we allow (K + 2) u
 * times that sum, the extra 2 u for the final rounding of C and of the beta
 * term. That is the worst case, not a fitted margin: an indexing error
 * (a wrong row, a missing batch item) is off by O(1) and fails it. Gathers
 * and permutes copy, so they must match exactly; the scatter is checked
 * bit for bit against the serial float loop it promises to reproduce. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1), xorshift64 */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((rng >> 40) / (double)(1 << 23) - 1.0);
}
static float *randv(int64_t n) {
  float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
  for (int64_t i = 0; i < n; i++) v[i] = frand();
  return v;
}

static const double U = 1.0 / (1 << 24);

/* element (i, j) of op(X) for X stored row-major as [rows, cols] */
static double at(const float *x, bool trans, int64_t cols_stored, int64_t i, int64_t j) {
  return trans ? x[j * cols_stored + i] : x[i * cols_stored + j];
}

/* Checks c against alpha op(A) op(B) + beta c0 in double, item by item. */
static int gemm_check(const kd_gemm *p, const float *a, const float *b, const float *c0,
                      const float *c) {
  int bad = 0;
  int64_t inner = p->batch2 > 1 ? p->batch2 : 1;
  int64_t lda = p->lda ? p->lda : p->trans_a ? p->m : p->k;
  int64_t ldb = p->ldb ? p->ldb : p->trans_b ? p->k : p->n;
  for (int64_t t = 0; t < p->batch; t++) {
    int64_t o = t / inner, q = t % inner;
    const float *A = a + o * p->stride_a + q * p->stride2_a;
    const float *B = b + o * p->stride_b + q * p->stride2_b;
    int64_t C = o * p->stride_c + q * p->stride2_c;
    for (int64_t i = 0; i < p->m; i++)
      for (int64_t j = 0; j < p->n; j++) {
        double s = 0, sabs = 0;
        for (int64_t l = 0; l < p->k; l++) {
          double x = at(A, p->trans_a, lda, i, l) * at(B, p->trans_b, ldb, l, j);
          s += x, sabs += fabs(x);
        }
        double old = c0[C + i * p->n + j];
        double ref = p->alpha * s + p->beta * old;
        double tol = (double)(p->k + 2) * U * (fabs(p->alpha) * sabs + fabs(p->beta * old));
        double got = c[C + i * p->n + j];
        if (!(fabs(got - ref) <= tol)) {
          if (!bad)
            fprintf(stderr, "gemm B=%lld M=%lld N=%lld K=%lld ta=%d tb=%d sb=%lld: [%lld,%lld,%lld]"
                    " %.9g vs %.9g\n", (long long)p->batch, (long long)p->m, (long long)p->n,
                    (long long)p->k, p->trans_a, p->trans_b, (long long)p->stride_b,
                    (long long)t, (long long)i, (long long)j, got, ref);
          bad++;
        }
      }
  }
  return bad;
}

static const int64_t mkn[][3] = {{1, 1, 1},   {3, 17, 1},   {17, 3, 64}, {64, 130, 17},
                                 {130, 64, 3}, {1, 130, 17}, {17, 1, 130}};

/* kd_gemm_run with every transpose, alpha and beta, batched and shared. */
static void test_gemm_general(kd_pool *pool) {
  for (size_t s = 0; s < sizeof mkn / sizeof mkn[0]; s++)
    for (int flags = 0; flags < 8; flags++) {
      int64_t batch = 3, m = mkn[s][0], k = mkn[s][1], n = mkn[s][2];
      bool shared = flags & 4;
      kd_gemm p = {.batch = batch, .m = m, .n = n, .k = k, .trans_a = flags & 1,
                   .trans_b = flags & 2, .alpha = 0.5f, .beta = 2.0f, .stride_a = m * k,
                   .stride_b = shared ? 0 : k * n, .stride_c = m * n};
      float *a = randv(batch * m * k), *b = randv(batch * k * n), *c0 = randv(batch * m * n);
      float *c = malloc((size_t)(batch * m * n) * sizeof *c);
      memcpy(c, c0, (size_t)(batch * m * n) * sizeof *c);
      CHECK(kd_gemm_run(pool, &p, a, b, c) == KD_OK);
      CHECK(gemm_check(&p, a, b, c0, c) == 0);
      free(a), free(b), free(c0), free(c);
    }
  /* beta = 0 overwrites C: NaNs already there do not leak into it */
  float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {1, -1, 2}, c[2] = {NAN, NAN};
  kd_gemm p = {.batch = 1, .m = 2, .n = 1, .k = 3, .alpha = 1};
  CHECK(kd_gemm_run(pool, &p, a, b, c) == KD_OK && c[0] == 5 && c[1] == 11);
  kd_gemm neg = {.batch = 1, .m = -1, .n = 1, .k = 1};
  float x = 0;
  CHECK(kd_gemm_run(pool, &neg, &x, &x, &x) == KD_ERR_INVALID);
  kd_gemm uneven = {.batch = 3, .m = 1, .n = 1, .k = 1, .batch2 = 2}; /* 3 items, pairs */
  CHECK(kd_gemm_run(pool, &uneven, &x, &x, &x) == KD_ERR_INVALID);
}

/* Operands read in place from a wider layout, as attention reads its heads:
   X [B, T, 3, H, Dh] holds q, k and v; item (b, h) of a product reads
   q[b, :, h, :] ([T, Dh], rows 3 H Dh floats apart), the batch two levels
   (B outer, H inner), C packed [B, H, ., .]: q k^T (B transposed), q^T v
   (A transposed), and q w against a dense w of its own per item. */
static void test_gemm_strided(kd_pool *pool) {
  enum { NB = 3, T = 17, H = 4, DH = 5, ROW = 3 * H * DH, NW = 7 };
  float *x = randv(NB * T * ROW), *w = randv(NB * H * DH * NW);
  const struct {
    bool ta, tb, dense_b;
    int64_t m, n, k;
  } cases[] = {{false, true, false, T, T, DH}, {true, false, false, DH, DH, T},
               {false, false, true, T, NW, DH}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int64_t m = cases[i].m, n = cases[i].n, k = cases[i].k;
    bool dense = cases[i].dense_b;
    kd_gemm p = {.batch = NB * H, .m = m, .n = n, .k = k, .trans_a = cases[i].ta,
                 .trans_b = cases[i].tb, .alpha = 0.75f, .beta = -1.0f, .stride_a = T * ROW,
                 .stride_b = dense ? H * k * n : T * ROW, .stride_c = H * m * n, .lda = ROW,
                 .ldb = dense ? 0 : ROW, .batch2 = H, .stride2_a = DH,
                 .stride2_b = dense ? k * n : DH, .stride2_c = m * n};
    const float *a = x, *b = dense ? w : x + 2 * H * DH; /* q at column 0, v at 2 H DH */
    float *c0 = randv(NB * H * m * n), *c = malloc((size_t)(NB * H * m * n) * sizeof *c);
    memcpy(c, c0, (size_t)(NB * H * m * n) * sizeof *c);
    CHECK(kd_gemm_run(pool, &p, a, b, c) == KD_OK);
    CHECK(gemm_check(&p, a, b, c0, c) == 0);
    free(c0), free(c);
  }
  free(x), free(w);
}

/* MATMUL's three products against kd_gemm_check's naive loops written out
   from the definitions (forward c = a b, da = dc b^T, db = a^T dc summed
   over the batch when b is shared). */
static void test_matmul_products(kd_pool *pool) {
  for (size_t s = 0; s < sizeof mkn / sizeof mkn[0]; s++)
    for (int shared = 0; shared < 2; shared++) {
      int64_t B = 3, m = mkn[s][0], k = mkn[s][1], n = mkn[s][2];
      int64_t nb = shared ? k * n : B * k * n;
      float *a = randv(B * m * k), *b = randv(nb), *dc = randv(B * m * n);
      float *c = randv(B * m * n), *da0 = randv(B * m * k), *da = malloc((size_t)(B * m * k) * 4);
      float *db0 = randv(nb), *db = malloc((size_t)nb * 4);
      memcpy(da, da0, (size_t)(B * m * k) * 4);
      memcpy(db, db0, (size_t)nb * 4);
      float *zero = calloc((size_t)(B * m * n + 1), 4);

      CHECK(kd_matmul_f32(pool, B, m, k, n, shared, a, b, c) == KD_OK);
      kd_gemm fw = {.batch = B, .m = m, .n = n, .k = k, .alpha = 1, .stride_a = m * k,
                    .stride_b = shared ? 0 : k * n, .stride_c = m * n};
      CHECK(gemm_check(&fw, a, b, zero, c) == 0);

      /* da accumulates (beta = 1): da = da0 + dc b^T */
      CHECK(kd_matmul_grad_a_f32(pool, B, m, k, n, shared, dc, b, 1.0f, da) == KD_OK);
      kd_gemm ga = {.batch = B, .m = m, .n = k, .k = n, .trans_b = true, .alpha = 1, .beta = 1,
                    .stride_a = m * n, .stride_b = shared ? 0 : k * n, .stride_c = m * k};
      CHECK(gemm_check(&ga, dc, b, da0, da) == 0);

      /* db accumulates too; shared: db = db0 + sum_t a[t]^T dc[t], checked
         against the sum written out over the batch */
      CHECK(kd_matmul_grad_b_f32(pool, B, m, k, n, shared, a, dc, 1.0f, db) == KD_OK);
      int bad = 0;
      for (int64_t t = 0; t < (shared ? 1 : B); t++)
        for (int64_t i = 0; i < k; i++)
          for (int64_t j = 0; j < n; j++) {
            double sum = 0, sabs = 0;
            for (int64_t u = shared ? 0 : t; u < (shared ? B : t + 1); u++)
              for (int64_t l = 0; l < m; l++) {
                double x = (double)a[u * m * k + l * k + i] * dc[u * m * n + l * n + j];
                sum += x, sabs += fabs(x);
              }
            int64_t o = t * k * n + i * n + j;
            double ref = sum + db0[o];
            double terms = (double)(shared ? B * m : m);
            if (!(fabs(db[o] - ref) <= (terms + 2) * U * (sabs + fabs(db0[o])))) bad++;
          }
      CHECK(bad == 0);
      if (bad) fprintf(stderr, "grad_b M=%lld K=%lld N=%lld shared=%d: %d bad\n", (long long)m,
                       (long long)k, (long long)n, shared, bad);
      free(a), free(b), free(dc), free(c), free(da0), free(da), free(db0), free(db), free(zero);
    }
}

/* OpenBLAS's threads: set to 1 and 2, read back, and the product stays
   within the bound on either. */
static void test_blas_threads(void) {
  int64_t m = 130, k = 64, n = 130;
  float *a = randv(m * k), *b = randv(k * n), *c = malloc((size_t)(m * n) * 4);
  float *zero = calloc((size_t)(m * n), 4);
  kd_gemm p = {.batch = 1, .m = m, .n = n, .k = k, .alpha = 1};
  for (int t = 1; t <= 2; t++) {
    kd_blas_set_threads(t);
    CHECK(kd_blas_threads() == t);
    CHECK(kd_matmul_f32(NULL, 1, m, k, n, true, a, b, c) == KD_OK);
    CHECK(gemm_check(&p, a, b, zero, c) == 0);
  }
  kd_blas_set_threads(1);
  free(a), free(b), free(c), free(zero);
}

/* Products large enough to be cut into tiles (kernels.c: rows, then
   columns, edges not multiples of the tile), every transpose, accumulating:
   within the bound of gemm_check (a tile at a wrong offset is off by O(1)),
   and bit-identical for every pool size, the serial run included, since
   the tiles depend on the shape alone. */
static void test_gemm_tiles(void) {
  static const int64_t shapes[][4] = {/* batch, M, N, K */
                                      {1, 600, 90, 70}, {1, 100, 1000, 33}, {2, 70, 150, 300},
                                      {1, 257, 257, 5}, {1, 2100, 20, 9}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int flags = 0; flags < 4; flags++) {
      int64_t batch = shapes[s][0], m = shapes[s][1], n = shapes[s][2], k = shapes[s][3];
      kd_gemm p = {.batch = batch, .m = m, .n = n, .k = k, .trans_a = flags & 1,
                   .trans_b = flags & 2, .alpha = 1.5f, .beta = 1.0f, .stride_a = m * k,
                   .stride_b = k * n, .stride_c = m * n};
      float *a = randv(batch * m * k), *b = randv(batch * k * n), *c0 = randv(batch * m * n);
      float *c[4];
      for (int t = 0; t <= 3; t++) {
        kd_pool *pool = NULL;
        if (t) CHECK(kd_pool_new(t, &pool) == KD_OK);
        c[t] = malloc((size_t)(batch * m * n) * sizeof *c[t]);
        memcpy(c[t], c0, (size_t)(batch * m * n) * sizeof *c[t]);
        CHECK(kd_gemm_run(pool, &p, a, b, c[t]) == KD_OK);
        kd_pool_free(pool);
      }
      CHECK(gemm_check(&p, a, b, c0, c[0]) == 0);
      for (int t = 1; t <= 3; t++) {
        bool same = memcmp(c[0], c[t], (size_t)(batch * m * n) * sizeof *c[t]) == 0;
        CHECK(same);
        if (!same)
          fprintf(stderr, "gemm tiles B=%lld M=%lld N=%lld K=%lld flags %d: %d threads differ\n",
                  (long long)batch, (long long)m, (long long)n, (long long)k, flags, t);
      }
      free(a), free(b), free(c0);
      for (int t = 0; t <= 3; t++) free(c[t]);
    }
}

static const int64_t sizes[] = {1, 3, 17, 64, 130};
enum { NSIZES = sizeof sizes / sizeof sizes[0] };

static int64_t *rand_ids(int64_t n, int64_t V) {
  int64_t *ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
  for (int64_t i = 0; i < n; i++) ids[i] = (int64_t)((frand() + 1) * 0.5 * (double)V) % V;
  return ids;
}

static void test_gather(kd_pool *pool) {
  for (int iv = 0; iv < NSIZES; iv++)
    for (int id = 0; id < NSIZES; id++)
      for (int in = 0; in < NSIZES; in++) {
        int64_t V = sizes[iv], D = sizes[id], n = sizes[in];
        float *table = randv(V * D), *out = malloc((size_t)(n * D) * 4);
        int64_t *ids = rand_ids(n, V);
        CHECK(kd_gather_rows_f32(pool, table, V, D, ids, n, out, NULL, 0) == KD_OK);
        int bad = 0;
        for (int64_t i = 0; i < n; i++)
          for (int64_t d = 0; d < D; d++) bad += out[i * D + d] != table[ids[i] * D + d];
        CHECK(bad == 0);
        free(table), free(out), free(ids);
      }
  /* out of range, at position 17, high and negative: named, out untouched */
  int64_t V = 64, D = 3, n = 130;
  float *table = randv(V * D), *out = calloc((size_t)(n * D), 4);
  int64_t *ids = rand_ids(n, V);
  const int64_t badid[] = {64, -1};
  for (int t = 0; t < 2; t++) {
    char err[128] = "";
    ids[17] = badid[t];
    CHECK(kd_gather_rows_f32(pool, table, V, D, ids, n, out, err, sizeof err) == KD_ERR_INVALID);
    CHECK(strstr(err, "at position 17") != NULL);
    CHECK(strstr(err, t ? "id -1 " : "id 64 ") != NULL);
    CHECK(strstr(err, "64 rows") != NULL);
    int nonzero = 0;
    for (int64_t i = 0; i < n * D; i++) nonzero += out[i] != 0;
    CHECK(nonzero == 0);
  }
  free(table), free(out), free(ids);
}

static void test_scatter(kd_pool *pool) {
  for (int iv = 0; iv < NSIZES; iv++)
    for (int id = 0; id < NSIZES; id++)
      for (int in = 0; in < NSIZES; in++)
        for (int acc = 0; acc < 2; acc++) {
          int64_t V = sizes[iv], D = sizes[id], n = sizes[in];
          float *rows = randv(n * D), *t0 = randv(V * D), *table = malloc((size_t)(V * D) * 4);
          float *serial = malloc((size_t)(V * D) * 4);
          int64_t *ids = rand_ids(n, V);
          memcpy(table, t0, (size_t)(V * D) * 4);
          CHECK(kd_scatter_add_rows_f32(pool, rows, ids, n, V, D, acc, table, NULL, 0) == KD_OK);
          /* the serial float loop, in position order: bit for bit */
          for (int64_t i = 0; i < V * D; i++) serial[i] = acc ? t0[i] : 0;
          for (int64_t i = 0; i < n; i++)
            for (int64_t d = 0; d < D; d++) serial[ids[i] * D + d] += rows[i * D + d];
          CHECK(memcmp(table, serial, (size_t)(V * D) * 4) == 0);
          /* and the sum itself, in double (guards the serial loop above):
             a row of c terms is within (c + 1) u of their absolute sum */
          int bad = 0;
          for (int64_t v = 0; v < V; v++)
            for (int64_t d = 0; d < D; d++) {
              double s = acc ? t0[v * D + d] : 0, sabs = fabs(s);
              int64_t cnt = 0;
              for (int64_t i = 0; i < n; i++)
                if (ids[i] == v) s += rows[i * D + d], sabs += fabs(rows[i * D + d]), cnt++;
              bad += !(fabs(table[v * D + d] - s) <= (double)(cnt + 1) * U * sabs);
            }
          CHECK(bad == 0);
          free(rows), free(t0), free(table), free(serial), free(ids);
        }
  int64_t ids[3] = {0, 5, 1};
  float rows[3] = {1, 2, 3}, table[4] = {7, 7, 7, 7};
  char err[128] = "";
  CHECK(kd_scatter_add_rows_f32(pool, rows, ids, 3, 4, 1, false, table, err, sizeof err) ==
        KD_ERR_INVALID);
  CHECK(strstr(err, "id 5 at position 1") != NULL);
  CHECK(table[0] == 7 && table[3] == 7);
}

/* Every permutation of ranks 1..4 on shapes with odd and unit sizes, against
   the index arithmetic written out. */
static void permute_case(kd_pool *pool, int rank, const int64_t *shape, const int *perm) {
  int64_t total = 1, istr[4];
  for (int d = rank - 1; d >= 0; d--) istr[d] = total, total *= shape[d];
  float *in = randv(total), *out = malloc((size_t)(total > 0 ? total : 1) * 4);
  CHECK(kd_permute_f32(pool, in, rank, shape, perm, out) == KD_OK);
  int bad = 0;
  for (int64_t f = 0; f < total; f++) { /* f: flat index of out, in C order */
    int64_t rem = f, src = 0;
    for (int i = rank - 1; i >= 0; i--) {
      int64_t sz = shape[perm[i]];
      src += rem % sz * istr[perm[i]];
      rem /= sz;
    }
    bad += out[f] != in[src];
  }
  CHECK(bad == 0);
  if (bad)
    fprintf(stderr, "permute rank %d perm %d%d%d%d: %d wrong\n", rank, perm[0],
            rank > 1 ? perm[1] : 0, rank > 2 ? perm[2] : 0, rank > 3 ? perm[3] : 0, bad);
  free(in), free(out);
}

static bool next_perm(int *p, int n) { /* lexicographic successor */
  int i = n - 2;
  while (i >= 0 && p[i] >= p[i + 1]) i--;
  if (i < 0) return false;
  int j = n - 1;
  while (p[j] <= p[i]) j--;
  int t = p[i]; p[i] = p[j]; p[j] = t;
  for (int a = i + 1, b = n - 1; a < b; a++, b--) t = p[a], p[a] = p[b], p[b] = t;
  return true;
}

static void test_permute(kd_pool *pool) {
  static const int64_t shapes[][4] = {{3, 17, 1, 64}, {17, 130, 3, 1}, {1, 3, 64, 17},
                                      {130, 17, 3, 3}, {64, 130, 1, 1}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int rank = 1; rank <= 4; rank++) {
      int perm[4] = {0, 1, 2, 3};
      do permute_case(pool, rank, shapes[s], perm);
      while (next_perm(perm, rank));
    }
  int bad_perm[3] = {0, 0, 1};
  int64_t shape[3] = {2, 2, 2};
  float x[8] = {0}, y[8];
  CHECK(kd_permute_f32(pool, x, 3, shape, bad_perm, y) == KD_ERR_INVALID);
  CHECK(kd_permute_f32(pool, x, 5, shape, bad_perm, y) == KD_ERR_INVALID);

  /* attention's split and merge: element (b, t, h, e) moves to (b, h, t, e)
     and back */
  int64_t B = 3, T = 17, H = 3, Dh = 64, n = B * T * H * Dh;
  float *in = randv(n), *mid = malloc((size_t)n * 4), *back = malloc((size_t)n * 4);
  CHECK(kd_split_heads(pool, in, B, T, H, Dh, mid) == KD_OK);
  int bad = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t e = 0; e < Dh; e++)
          bad += mid[((b * H + h) * T + t) * Dh + e] != in[((b * T + t) * H + h) * Dh + e];
  CHECK(bad == 0);
  CHECK(kd_merge_heads(pool, mid, B, H, T, Dh, back) == KD_OK);
  CHECK(memcmp(in, back, (size_t)n * 4) == 0);
  free(in), free(mid), free(back);
}

int main(void) {
  test_blas_threads();
  test_gemm_tiles();
  /* no pool (serial), then 1, 2 and 3 workers: 3 on 2 cores makes chunks
     land on a worker that is not the caller's even when one is descheduled */
  for (int t = 0; t <= 3; t++) {
    kd_pool *pool = NULL;
    if (t) CHECK(kd_pool_new(t, &pool) == KD_OK);
    test_gemm_general(pool);
    test_gemm_strided(pool);
    test_matmul_products(pool);
    test_gather(pool);
    test_scatter(pool);
    test_permute(pool);
    kd_pool_free(pool);
  }
  return check_exit("test_kernels");
}
