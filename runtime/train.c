/* The training loop (train.h). Buffers, made once before the first step:
 *   tokens, labels   i64 [N]            N = B x T
 *   windows          i32 [acc, B, T+1]  a step's micro-batches, drawn first
 *                                       so their valid tokens can be counted
 *   t_logits         f32 [N, V]         the teacher's, when there is one
 *   s_logits, dlogits f32 [N, V]        the student's and their gradient
 *   grads            like the parameters' arena; grads2 when accumulating
 *   arenas           the programs' arena_bytes each
 * so a step allocates nothing. */
#define _POSIX_C_SOURCE 200809L
#include "train.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "checkpoint.h"
#include "data.h"
#include "fileio.h"
#include "kernels.h"
#include "metrics.h"
#include "progress.h"
#include "threadpool.h"

typedef struct kd_trainer {
  const kd_train_config *c;
  kd_pool *pool;
  int64_t B, T, N, V;
  kd_dataset *ds;
  kd_loader train, val;
  int32_t *windows;
  int64_t *valid; /* [acc]: each micro-batch's valid labels */
  int64_t *tokens, *labels;
  float *t_logits, *s_logits, *dlogits;
  float *grads, *grads2;
  void *s_arena, *t_arena;
  void **s_slots, **s_slots_acc, **t_slots;
  kd_param *p;
  int np;
  kd_optim *opt;
  kd_metrics *metrics;
  /* KDC_STEP_PROFILE: seconds per instruction of each program (NULL: off) */
  double *prof_s, *prof_t, prof_loss, prof_optim;
} kd_trainer;

static double kd_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *kd_alloc64(size_t bytes) {
  size_t n = (bytes + 63) / 64 * 64;
  void *p = aligned_alloc(64, n ? n : 64);
  if (p) memset(p, 0, n ? n : 64);
  return p;
}

/* A slot must have the dtype and shape the trainer gives it. */
static kd_status kd_slot_expect(const char *who, const kd_step_slot *s, kd_dtype dt, int rank,
                                const int64_t *shape, char *err, size_t errlen) {
  bool ok = s->dtype == dt && s->rank == rank;
  for (int i = 0; ok && i < rank; i++) ok = s->shape[i] == shape[i];
  if (ok) return KD_OK;
  char a[96], b[96];
  return kd_errf(err, errlen, KD_ERR_INVALID, "%s: slot '%s' is %s %s, the trainer gives %s %s",
                 who, s->name, kd_dtype_name(s->dtype), kd_params_shape_str(s->rank, s->shape, a, sizeof a),
                 kd_dtype_name(dt), kd_params_shape_str(rank, shape, b, sizeof b));
}

/* Points every slot of prog at the trainer's memory: the batch, the logits,
 * their gradient, the parameters of P and their gradients in `grads` (laid
 * out as P's arena). */
static kd_status kd_bind(kd_trainer *t, const char *who, const kd_step_prog *prog,
                         const kd_params *P, float *logits, float *grads, void **slots, char *err,
                         size_t errlen) {
  int64_t bt[2] = {t->B, t->T};
  for (int32_t i = 0; i < prog->nslots; i++) {
    const kd_step_slot *s = &prog->slots[i];
    kd_status st = KD_OK;
    if (!strcmp(s->name, "tokens")) {
      st = kd_slot_expect(who, s, KD_I64, 2, bt, err, errlen);
      slots[i] = t->tokens;
    } else if (!strcmp(s->name, "logits") || !strcmp(s->name, "logits.grad")) {
      int64_t btv[3] = {t->B, t->T, s->rank == 3 ? s->shape[2] : -1};
      st = kd_slot_expect(who, s, KD_F32, 3, btv, err, errlen);
      slots[i] = !strcmp(s->name, "logits") ? (void *)logits : (void *)t->dlogits;
    } else {
      bool is_grad = !strncmp(s->name, "grad.", 5);
      const char *name = is_grad ? s->name + 5 : s->name;
      int k = kd_params_find(P, name);
      if (k < 0 || (is_grad && !grads))
        return kd_errf(err, errlen, KD_ERR_INVALID, "%s: the program's slot '%s' is no %s",
                       who, s->name, is_grad ? "parameter's gradient" : "parameter");
      st = kd_slot_expect(who, s, KD_F32, P->t[k].rank, P->t[k].shape, err, errlen);
      slots[i] = is_grad ? (void *)(grads + P->t[k].offset) : (void *)kd_params_data(P, k);
    }
    if (st != KD_OK) return st;
  }
  return KD_OK;
}

static int64_t kd_logits_vocab(const kd_step_prog *prog) {
  int32_t i = kd_step_find_slot(prog, "logits");
  return i < 0 || prog->slots[i].rank != 3 ? -1 : prog->slots[i].shape[2];
}

static void kd_trainer_free(kd_trainer *t) {
  free(t->windows);
  free(t->valid);
  free(t->tokens);
  free(t->labels);
  free(t->t_logits);
  free(t->s_logits);
  free(t->dlogits);
  free(t->grads);
  free(t->grads2);
  free(t->s_arena);
  free(t->t_arena);
  free(t->s_slots);
  free(t->s_slots_acc);
  free(t->t_slots);
  free(t->p);
  free(t->prof_s);
  free(t->prof_t);
  kd_optim_free(t->opt);
  kd_data_close(t->ds);
  kd_pool_free(t->pool);
}

static kd_status kd_trainer_init(kd_trainer *t, const kd_train_config *c, char *err,
                                 size_t errlen) {
  memset(t, 0, sizeof *t);
  t->c = c;
  if (!c->student || !c->params || !c->objective || c->batch < 1 || c->seq < 1 ||
      c->accumulate < 1 || c->steps < 1 || (c->teacher && !c->teacher_params))
    return kd_errf(err, errlen, KD_ERR_INVALID, "train: an incomplete configuration");
  t->B = c->batch, t->T = c->seq, t->N = t->B * t->T;
  t->V = kd_logits_vocab(c->student);
  if (t->V < 1 || kd_step_find_slot(c->student, "logits.grad") < 0)
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "train: the student's program has no 'logits' [B, T, V] or no 'logits.grad'");
  if (c->teacher && kd_logits_vocab(c->teacher) != t->V)
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "train: the teacher's vocabulary (%lld) differs from the student's (%lld)",
                   (long long)kd_logits_vocab(c->teacher), (long long)t->V);
  kd_status st = kd_pool_new(c->threads, &t->pool);
  if (st != KD_OK) return kd_errf(err, errlen, st, "train: cannot start the thread pool");
  kd_blas_set_threads(1); /* products split over the pool (kernels.h) */

  /* data */
  if ((st = kd_data_open(c->data_path, &t->ds, err, errlen)) != KD_OK) return st;
  kd_span tr, va;
  if ((st = kd_data_split(t->ds, c->split, &tr, &va, err, errlen)) != KD_OK) return st;
  if (kd_data_vocab(t->ds) > t->V)
    return kd_errf(err, errlen, KD_ERR_INVALID,
                   "train: %s has tokens up to %d but the student's vocabulary is %lld",
                   c->data_path, kd_data_vocab(t->ds) - 1, (long long)t->V);
  if ((st = kd_loader_init(&t->train, &tr, c->batch, c->seq, c->seed, err, errlen)) != KD_OK)
    return st;
  if (c->eval_ce && va.end > va.begin &&
      (st = kd_loader_init(&t->val, &va, c->batch, c->seq, c->seed, err, errlen)) != KD_OK)
    return st;

  /* buffers */
  size_t nv = (size_t)t->N * (size_t)t->V * sizeof(float);
  t->windows = malloc((size_t)c->accumulate * (size_t)t->B * (size_t)(t->T + 1) * sizeof(int32_t));
  t->valid = malloc((size_t)c->accumulate * sizeof(int64_t));
  t->tokens = malloc((size_t)t->N * sizeof(int64_t));
  t->labels = malloc((size_t)t->N * sizeof(int64_t));
  t->s_logits = kd_alloc64(nv);
  t->dlogits = kd_alloc64(nv);
  t->t_logits = c->teacher ? kd_alloc64(nv) : NULL;
  t->s_arena = kd_alloc64((size_t)c->student->arena_bytes);
  t->t_arena = c->teacher ? kd_alloc64((size_t)c->teacher->arena_bytes) : NULL;
  t->s_slots = calloc((size_t)c->student->nslots + 1, sizeof(void *));
  t->s_slots_acc = calloc((size_t)c->student->nslots + 1, sizeof(void *));
  t->t_slots = c->teacher ? calloc((size_t)c->teacher->nslots + 1, sizeof(void *)) : NULL;
  if (!t->windows || !t->valid || !t->tokens || !t->labels || !t->s_logits || !t->dlogits || !t->s_arena ||
      !t->s_slots || !t->s_slots_acc || (c->teacher && (!t->t_logits || !t->t_arena || !t->t_slots)))
    return kd_errf(err, errlen, KD_ERR_NOMEM, "train: out of memory for the step's buffers");
  const char *prof = getenv("KDC_STEP_PROFILE");
  if (prof && *prof && strcmp(prof, "0") != 0) {
    t->prof_s = calloc((size_t)c->student->ninstr + 1, sizeof(double));
    t->prof_t = c->teacher ? calloc((size_t)c->teacher->ninstr + 1, sizeof(double)) : NULL;
    if (!t->prof_s || (c->teacher && !t->prof_t))
      return kd_errf(err, errlen, KD_ERR_NOMEM, "train: out of memory for the profile");
  }

  /* parameters: drawn from the seed (a resumed run overwrites them) */
  if ((st = kd_params_init(c->params, c->seed, err, errlen)) != KD_OK) return st;
  t->grads = kd_alloc64(c->params->nfloats * sizeof(float));
  t->grads2 = c->accumulate > 1 ? kd_alloc64(c->params->nfloats * sizeof(float)) : NULL;
  t->np = c->params->n;
  t->p = calloc((size_t)t->np + 1, sizeof *t->p);
  if (!t->grads || (c->accumulate > 1 && !t->grads2) || !t->p)
    return kd_errf(err, errlen, KD_ERR_NOMEM, "train: out of memory for the gradients");
  for (int i = 0; i < t->np; i++) {
    const kd_ptensor *pt = &c->params->t[i];
    kd_param *q = &t->p[i];
    q->name = pt->name;
    q->data = kd_params_data(c->params, i);
    q->grad = t->grads + pt->offset;
    q->rank = pt->rank;
    memcpy(q->shape, pt->shape, sizeof q->shape);
    q->decay = pt->rank >= 2; /* matrices decay; biases and norm gains do not */
  }
  if ((st = kd_optim_create(&c->optim, t->p, t->np, &t->opt, err, errlen)) != KD_OK) return st;

  if ((st = kd_bind(t, "student", c->student, c->params, t->s_logits, t->grads, t->s_slots, err,
                    errlen)) != KD_OK)
    return st;
  if (t->grads2 && (st = kd_bind(t, "student", c->student, c->params, t->s_logits, t->grads2,
                                 t->s_slots_acc, err, errlen)) != KD_OK)
    return st;
  if (c->teacher && (st = kd_bind(t, "teacher", c->teacher, c->teacher_params, t->t_logits, NULL,
                                  t->t_slots, err, errlen)) != KD_OK)
    return st;
  return KD_OK;
}

/* Window rows [B, T+1] -> tokens (the first T) and labels (the last T);
 * rows at or past `rows` are padding: token 0, label ignore_index. Returns
 * the number of valid labels. */
/* The valid labels of B full window rows, without filling anything. */
static int64_t kd_count_valid(const kd_trainer *t, const int32_t *win) {
  int64_t valid = 0;
  for (int64_t b = 0; b < t->B; b++)
    for (int64_t i = 1; i <= t->T; i++) valid += win[b * (t->T + 1) + i] != t->c->ignore_index;
  return valid;
}

static int64_t kd_fill_batch(kd_trainer *t, const int32_t *win, int rows) {
  int64_t valid = 0;
  for (int64_t b = 0; b < t->B; b++)
    for (int64_t i = 0; i < t->T; i++) {
      int64_t k = b * t->T + i;
      bool pad = b >= rows;
      t->tokens[k] = pad ? 0 : win[b * (t->T + 1) + i];
      t->labels[k] = pad ? t->c->ignore_index : win[b * (t->T + 1) + i + 1];
      valid += t->labels[k] != t->c->ignore_index;
    }
  return valid;
}

static kd_status kd_run_loss(kd_trainer *t, const kd_loss_program *lp, double *loss, char *err,
                             size_t errlen) {
  kd_loss_io io = {
      .teacher = lp->teacher_dtype >= 0 ? t->t_logits : NULL,
      .teacher_dtype = KD_F32,
      .student = t->s_logits,
      .student_dtype = KD_F32,
      .labels = lp->has_labels ? t->labels : NULL,
      .N = t->N,
      .V = t->V,
      .grad = t->dlogits,
      .loss = loss,
  };
  if (lp->teacher_dtype >= 0 && !t->t_logits)
    return kd_errf(err, errlen, KD_ERR_INVALID, "train: the objective reads a teacher but none runs");
  return kd_loss_run(lp, &io, t->pool, err, errlen);
}

typedef struct kd_scale_ctx {
  float *x;
  const float *y;
  float w;
} kd_scale_ctx;

static void kd_scale_chunk(void *ctx, int64_t b, int64_t e, int worker) {
  (void)worker;
  kd_scale_ctx *s = ctx;
  float *restrict x = s->x;
  const float w = s->w;
  if (s->y) {
    const float *restrict y = s->y;
    for (int64_t i = b; i < e; i++) x[i] += y[i];
  } else {
    for (int64_t i = b; i < e; i++) x[i] *= w;
  }
}

/* x *= w (y NULL) or x += y, over n floats on the pool. */
static void kd_vec(kd_trainer *t, float *x, const float *y, float w, int64_t n) {
  kd_scale_ctx s = {x, y, w};
  kd_pool_parallel_for(t->pool, n, 1 << 15, kd_scale_chunk, &s);
}

/* Instructions [begin, end) of prog; with a profile (prof non-NULL), one
 * at a time, each one's wall time added to prof[i]. */
static kd_status kd_run_prog(kd_trainer *t, const kd_step_prog *prog, double *prof, void *arena,
                             void *const *slots, int32_t begin, int32_t end, char *err,
                             size_t errlen) {
  if (!prof) return kd_step_run(prog, arena, slots, begin, end, t->pool, err, errlen);
  for (int32_t i = begin; i < end; i++) {
    double t0 = kd_now();
    kd_status st = kd_step_run(prog, arena, slots, i, i + 1, t->pool, err, errlen);
    prof[i] += kd_now() - t0;
    if (st != KD_OK) return st;
  }
  return KD_OK;
}

/* One optimiser step's forward and backward passes over its micro-batches;
 * *loss is the step's loss (the valid-token-weighted mean of the
 * micro-batches' for "mean"). */
static kd_status kd_forward_backward(kd_trainer *t, double *loss, char *err, size_t errlen) {
  const kd_train_config *c = t->c;
  int64_t per = t->B * (t->T + 1), total = 0;
  int acc = c->accumulate;
  for (int m = 0; m < acc; m++) kd_loader_random(&t->train, t->windows + m * per);
  for (int m = 0; m < acc; m++) total += t->valid[m] = kd_count_valid(t, t->windows + m * per);
  *loss = 0;
  for (int m = 0; m < acc; m++) {
    kd_fill_batch(t, t->windows + m * per, (int)t->B);
    kd_status st;
    if (c->teacher && (st = kd_run_prog(t, c->teacher, t->prof_t, t->t_arena, t->t_slots, 0,
                                        c->teacher->ninstr, err, errlen)) != KD_OK)
      return st;
    void **slots = m == 0 ? t->s_slots : t->s_slots_acc;
    if ((st = kd_run_prog(t, c->student, t->prof_s, t->s_arena, slots, 0, c->student->split, err,
                          errlen)) != KD_OK)
      return st;
    double l = 0, t0 = kd_now();
    if ((st = kd_run_loss(t, c->objective, &l, err, errlen)) != KD_OK) return st;
    t->prof_loss += kd_now() - t0;
    /* mean: this micro-batch's share of the step's valid tokens; a step
       with none (every label ignored) has loss and gradient 0 */
    double w = c->sum_reduction ? 1.0
               : total > 0     ? (double)t->valid[m] / (double)total
                               : 0.0;
    *loss += w * l;
    if (w != 1.0) kd_vec(t, t->dlogits, NULL, (float)w, t->N * t->V);
    if ((st = kd_run_prog(t, c->student, t->prof_s, t->s_arena, slots, c->student->split,
                          c->student->ninstr, err, errlen)) != KD_OK)
      return st;
    if (m > 0) kd_vec(t, t->grads, t->grads2, 1, (int64_t)c->params->nfloats);
  }
  return KD_OK;
}

/* The validation cross-entropy: every validation window once (at most
 * eval_batches batches), the mean over their tokens. */
static kd_status kd_evaluate(kd_trainer *t, double *val, char *err, size_t errlen) {
  const kd_train_config *c = t->c;
  int64_t nb = kd_loader_eval_batches(&t->val);
  if (c->eval_batches > 0 && nb > c->eval_batches) nb = c->eval_batches;
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < nb; i++) {
    int rows = kd_loader_eval_batch(&t->val, i, t->windows);
    int64_t valid = kd_fill_batch(t, t->windows, rows);
    kd_status st = kd_step_run(c->student, t->s_arena, t->s_slots, 0, c->student->split, t->pool,
                               err, errlen);
    double l = 0;
    if (st == KD_OK) st = kd_run_loss(t, c->eval_ce, &l, err, errlen);
    if (st != KD_OK) return st;
    sum += l * (double)valid; /* eval_ce is a mean over the batch's valid tokens */
    count += valid;
  }
  *val = count ? sum / (double)count : NAN;
  return KD_OK;
}

static kd_status kd_save(kd_trainer *t, int64_t done, bool weights, char *err, size_t errlen) {
  const kd_train_config *c = t->c;
  kd_status st = KD_OK;
  if (weights && c->save_path) {
    uint64_t seed = c->seed;
    kd_params_meta meta = {.model = c->model_name, .seed = &seed};
    st = kd_params_save(c->params, c->save_path, &meta, err, errlen);
  }
  if (st == KD_OK && c->ckpt_path) {
    kd_ckpt_info info = {.step = done, .seed = c->seed, .rng = t->train.rng};
    st = kd_ckpt_save(c->ckpt_path, t->p, t->np, t->opt, &info, err, errlen);
  }
  return st;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void kd_note(const kd_train_config *c, const char *fmt, ...) {
  if (!c->log) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(c->log, fmt, ap);
  va_end(ap);
  fflush(c->log);
}

/* ---- KDC_STEP_PROFILE ------------------------------------------------------ */

/* An instruction's kind, fn (maps, reductions, softmax) and sizes, e.g.
   "map mul [16, 128, 384]" or "gemm 1 x 2048 x 768 x 256 ta". */
static void kd_prof_describe(const kd_step_instr *in, char *buf, size_t len) {
  const kd_gemm *g = &in->gemm;
  if (in->kind == KD_STEP_GEMM) {
    snprintf(buf, len, "gemm b %lld m %lld n %lld k %lld%s%s%s", (long long)g->batch,
             (long long)g->m, (long long)g->n, (long long)g->k, g->trans_a ? " ta" : "",
             g->trans_b ? " tb" : "", g->beta != 0 ? " beta" : "");
    return;
  }
  char shape[96];
  kd_params_shape_str(in->rank, in->shape, shape, sizeof shape);
  bool has_fn = in->kind <= KD_STEP_SOFTMAX;
  snprintf(buf, len, "%s%s%s %s", kd_step_kind_name(in->kind), has_fn ? " " : "",
           has_fn ? kd_step_fn_name(in->fn) : "", shape);
  if (in->kind == KD_STEP_REDUCE || in->kind == KD_STEP_SOFTMAX)
    snprintf(buf + strlen(buf), len - strlen(buf), " axis %d", in->axis);
}

typedef struct kd_prof_row {
  double s;
  const char *who;
  int32_t i;
  const kd_step_instr *in;
} kd_prof_row;

static int kd_prof_cmp(const void *a, const void *b) {
  double x = ((const kd_prof_row *)a)->s, y = ((const kd_prof_row *)b)->s;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* The profile's table on stderr: where the steps' time went, by program
 * phase, by instruction kind and fn, and the 15 slowest instructions. */
static void kd_prof_print(const kd_trainer *t, int64_t steps) {
  const kd_train_config *c = t->c;
  const kd_step_prog *progs[2] = {c->student, c->teacher};
  const double *secs[2] = {t->prof_s, t->prof_t};
  const char *who[2] = {"student", "teacher"};
  enum { NK = KD_STEP_KIND_COUNT * (KD_SF_COUNT + 1) };
  double by_fn[NK] = {0}, phase[3] = {0}; /* student forward, backward, teacher */
  int64_t n = 0;
  for (int k = 0; k < 2; k++) n += progs[k] ? progs[k]->ninstr : 0;
  kd_prof_row *rows = calloc((size_t)n + 1, sizeof *rows);
  if (!rows) return;
  n = 0;
  for (int k = 0; k < 2; k++) {
    if (!progs[k] || !secs[k]) continue;
    for (int32_t i = 0; i < progs[k]->ninstr; i++) {
      const kd_step_instr *in = &progs[k]->instr[i];
      double s = secs[k][i];
      phase[k == 1 ? 2 : i < progs[k]->split ? 0 : 1] += s;
      int f = in->kind <= KD_STEP_SOFTMAX ? (int)in->fn : KD_SF_COUNT;
      by_fn[(int)in->kind * (KD_SF_COUNT + 1) + f] += s;
      rows[n++] = (kd_prof_row){s, who[k], i, in};
    }
  }
  double total = phase[0] + phase[1] + phase[2] + t->prof_loss + t->prof_optim;
  double per = steps > 0 ? 1e3 / (double)steps : 0, pct = total > 0 ? 100 / total : 0;
  fprintf(stderr,
          "profile: %lld steps, %.1f ms a step: student forward %.1f, backward %.1f, teacher "
          "%.1f, loss %.1f, clip + optimiser %.1f\n",
          (long long)steps, total * per, phase[0] * per, phase[1] * per, phase[2] * per,
          t->prof_loss * per, t->prof_optim * per);
  fprintf(stderr, "  by kind:");
  for (int shown = 0; shown < 10; shown++) { /* the 10 largest kind/fn pairs */
    int best = -1;
    for (int j = 0; j < NK; j++)
      if (by_fn[j] > 0 && (best < 0 || by_fn[j] > by_fn[best])) best = j;
    if (best < 0) break;
    int kind = best / (KD_SF_COUNT + 1), f = best % (KD_SF_COUNT + 1);
    fprintf(stderr, " %s%s%s %.1f%%", kd_step_kind_name((kd_step_kind)kind),
            f < KD_SF_COUNT ? " " : "", f < KD_SF_COUNT ? kd_step_fn_name((kd_step_fn)f) : "",
            by_fn[best] * pct);
    by_fn[best] = 0;
  }
  fprintf(stderr, "\n  top instructions (ms a step, share):\n");
  qsort(rows, (size_t)n, sizeof *rows, kd_prof_cmp);
  for (int64_t r = 0; r < n && r < 15; r++) {
    char desc[200];
    kd_prof_describe(rows[r].in, desc, sizeof desc);
    fprintf(stderr, "  %8.2f %5.1f%%  %s [%d] %s\n", rows[r].s * per, rows[r].s * pct,
            rows[r].who, rows[r].i, desc);
  }
  free(rows);
}

static kd_status kd_loop(kd_trainer *t, kd_train_result *r, char *err, size_t errlen) {
  const kd_train_config *c = t->c;
  kd_status st;
  int64_t start = 0;
  if (c->resume) {
    kd_ckpt_info info;
    if (!c->ckpt_path)
      return kd_errf(err, errlen, KD_ERR_INVALID, "train: --resume needs a checkpoint path");
    if ((st = kd_ckpt_load(c->ckpt_path, t->p, t->np, t->opt, &info, err, errlen)) != KD_OK)
      return st;
    if (info.seed != c->seed)
      return kd_errf(err, errlen, KD_ERR_INVALID,
                     "train: %s was written by a run with seed %llu, this run's is %llu",
                     c->ckpt_path, (unsigned long long)info.seed, (unsigned long long)c->seed);
    start = info.step;
    t->train.rng = info.rng;
  }
  if (c->metrics_path &&
      (st = kd_metrics_open(c->metrics_path, c->resume, &t->metrics, err, errlen)) != KD_OK)
    return st;

  kd_progress bar;
  kd_progress_init(&bar, c->log, start, c->steps);
  int64_t log_every = bar.tty ? 1 : (c->steps - start + 19) / 20;
  if (log_every < 1) log_every = 1;
  double train_s = 0, tokens = 0;
  int64_t step = start;
  r->steps = start;
  for (; step < c->steps && !kd_interrupt_requested(); step++) {
    double t0 = kd_now(), loss = 0;
    if ((st = kd_forward_backward(t, &loss, err, errlen)) != KD_OK) return st;
    double t1 = kd_now();
    double norm = kd_grad_clip(t->p, t->np, c->clip);
    double lr = kd_schedule_lr(&c->schedule, step);
    if (isfinite(norm)) {
      kd_optim_step(t->opt, (float)lr);
    } else {
      r->skipped++;
      kd_note(c, "%s: step skipped: the gradient norm is %g\n", c->model_name, norm);
    }
    double dt = kd_now() - t0;
    t->prof_optim += kd_now() - t1;
    train_s += dt;
    tokens += (double)(t->N * c->accumulate);
    double tok_s = tokens / train_s;
    r->loss = loss;
    r->steps = step + 1;
    if (t->metrics) kd_metrics_step(t->metrics, step + 1, loss, lr, tok_s, norm);
    if (c->log && ((step + 1 - start) % log_every == 0 || step + 1 == c->steps))
      kd_progress_update(&bar, step, loss, lr, tok_s);
    bool last = step + 1 == c->steps;
    if (c->eval_ce && t->val.span.end > t->val.span.begin &&
        ((c->eval_every > 0 && (step + 1) % c->eval_every == 0) || last)) {
      double val;
      if ((st = kd_evaluate(t, &val, err, errlen)) != KD_OK) return st;
      r->val_loss = val;
      if (t->metrics) kd_metrics_eval(t->metrics, step + 1, val);
      if (c->log && !bar.tty) kd_note(c, "%s: validation cross-entropy %.4f\n", c->model_name, val);
    }
    if ((c->save_every > 0 && (step + 1) % c->save_every == 0) || last)
      if ((st = kd_save(t, step + 1, true, err, errlen)) != KD_OK) return st;
  }
  if (c->log) kd_progress_done(&bar);
  if (t->prof_s) kd_prof_print(t, step - start);
  r->tokens_per_s = train_s > 0 ? tokens / train_s : 0;
  if (kd_interrupt_requested() && step < c->steps) {
    r->interrupted = true;
    if ((st = kd_save(t, step, false, err, errlen)) != KD_OK) return st;
    if (c->log && c->ckpt_path)
      kd_note(c, "interrupted: the checkpoint is %s (step %" PRId64 "); --resume continues\n",
              c->ckpt_path, step);
  }
  return KD_OK;
}

kd_status kd_train_run(const kd_train_config *c, kd_train_result *r, char *err, size_t errlen) {
  kd_train_result dummy;
  if (!r) r = &dummy;
  memset(r, 0, sizeof *r);
  r->val_loss = NAN;
  kd_trainer t;
  kd_status st = kd_trainer_init(&t, c, err, errlen);
  if (st == KD_OK) {
    kd_interrupt_install();
    st = kd_loop(&t, r, err, errlen);
    kd_interrupt_restore();
  }
  if (t.metrics) {
    char merr[256];
    kd_status ms = kd_metrics_close(t.metrics, merr, sizeof merr);
    if (st == KD_OK && ms != KD_OK) st = kd_errf(err, errlen, ms, "%s", merr);
  }
  kd_trainer_free(&t);
  return st;
}
