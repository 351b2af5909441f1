#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

struct kd_optim {
  kd_optim_config cfg;
  int n;
  const kd_param *params; /* borrowed */
  float **m, **v;         /* [n] arrays of numel floats, or NULL entries */
  int64_t t;              /* updates done */
};

int64_t kd_param_numel(const kd_param *p) {
  int64_t k = 1;
  for (int d = 0; d < p->rank; d++) k *= p->shape[d];
  return k;
}

static const char *const kd_optim_names[] = {"sgd", "adam", "adamw"};
_Static_assert(sizeof kd_optim_names / sizeof kd_optim_names[0] == KD_OPTIM_KIND_COUNT,
               "a name per optimiser kind");

const char *kd_optim_kind_name(kd_optim_kind k) {
  return (unsigned)k < KD_OPTIM_KIND_COUNT ? kd_optim_names[k] : "?";
}

int kd_optim_kind_from_name(const char *name) {
  for (int k = 0; k < KD_OPTIM_KIND_COUNT; k++)
    if (strcmp(name, kd_optim_names[k]) == 0) return k;
  return -1;
}

kd_optim_config kd_optim_defaults(kd_optim_kind kind) {
  return (kd_optim_config){.kind = kind, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                           .momentum = 0.0f, .weight_decay = kind == KD_OPTIM_ADAMW ? 0.01f : 0.0f};
}

/* 64-byte aligned and zeroed, so the update loops start on a cache line. */
static float *kd_state_alloc(int64_t numel) {
  size_t bytes = ((size_t)numel * sizeof(float) + 63) / 64 * 64;
  float *p = aligned_alloc(64, bytes ? bytes : 64);
  if (p) memset(p, 0, bytes);
  return p;
}

static kd_status kd_optim_check(const kd_optim_config *c, const kd_param *params, int n, char *err,
                                size_t errlen) {
  if ((unsigned)c->kind >= KD_OPTIM_KIND_COUNT)
    return kd_errf(err, errlen, KD_ERR_INVALID, "unknown optimiser kind %d", (int)c->kind);
  if (!(c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1 && c->eps > 0))
    return kd_errf(err, errlen, KD_ERR_INVALID, "betas must be in [0, 1) and eps positive");
  if (!(c->momentum >= 0 && c->weight_decay >= 0))
    return kd_errf(err, errlen, KD_ERR_INVALID, "momentum and weight decay must be non-negative");
  if (n < 0) return kd_errf(err, errlen, KD_ERR_INVALID, "negative parameter count");
  for (int i = 0; i < n; i++) {
    const kd_param *p = &params[i];
    if (!p->name || !*p->name) return kd_errf(err, errlen, KD_ERR_INVALID, "parameter %d has no name", i);
    if (p->rank < 0 || p->rank > KD_PARAM_MAX_RANK)
      return kd_errf(err, errlen, KD_ERR_INVALID, "parameter '%s': rank %d", p->name, p->rank);
    for (int d = 0; d < p->rank; d++)
      if (p->shape[d] < 0)
        return kd_errf(err, errlen, KD_ERR_INVALID, "parameter '%s': negative dimension", p->name);
    for (int j = 0; j < i; j++)
      if (strcmp(params[j].name, p->name) == 0)
        return kd_errf(err, errlen, KD_ERR_INVALID, "parameter '%s' given twice", p->name);
  }
  return KD_OK;
}

kd_status kd_optim_create(const kd_optim_config *cfg, const kd_param *params, int n,
                          kd_optim **out, char *err, size_t errlen) {
  *out = NULL;
  kd_status s = kd_optim_check(cfg, params, n, err, errlen);
  if (s) return s;
  kd_optim *o = calloc(1, sizeof *o);
  if (o) {
    o->m = calloc((size_t)n + 1, sizeof *o->m);
    o->v = calloc((size_t)n + 1, sizeof *o->v);
  }
  if (!o || !o->m || !o->v) {
    kd_optim_free(o);
    return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory for the optimiser");
  }
  o->cfg = *cfg;
  o->n = n;
  o->params = params;
  int has_m = cfg->kind != KD_OPTIM_SGD || cfg->momentum != 0, has_v = cfg->kind != KD_OPTIM_SGD;
  for (int i = 0; i < n; i++) {
    int64_t k = kd_param_numel(&params[i]);
    if ((has_m && !(o->m[i] = kd_state_alloc(k))) || (has_v && !(o->v[i] = kd_state_alloc(k)))) {
      kd_optim_free(o);
      return kd_errf(err, errlen, KD_ERR_NOMEM, "out of memory for the optimiser state");
    }
  }
  *out = o;
  return KD_OK;
}

void kd_optim_free(kd_optim *o) {
  if (!o) return;
  for (int i = 0; i < o->n; i++) {
    if (o->m) free(o->m[i]);
    if (o->v) free(o->v[i]);
  }
  free(o->m);
  free(o->v);
  free(o);
}

/* The update loops: one pass per tensor, no branches inside, restrict
   pointers, so gcc and clang vectorise them at -O2/-O3. */

static void kd_sgd_update(float *restrict p, const float *restrict g, float *restrict m, int64_t k,
                          float lr, float mu, float wd) {
  if (!m) {
    for (int64_t i = 0; i < k; i++) p[i] -= lr * (g[i] + wd * p[i]);
    return;
  }
  for (int64_t i = 0; i < k; i++) {
    m[i] = mu * m[i] + (g[i] + wd * p[i]);
    p[i] -= lr * m[i];
  }
}

/* wd_l2 is Adam's coupled decay (added to g), shrink AdamW's decoupled one
   (1 - lr wd, applied to p first). c1 = 1/(1-b1^t), c2 = 1/sqrt(1-b2^t). */
static void kd_adam_update(float *restrict p, const float *restrict g, float *restrict m,
                           float *restrict v, int64_t k, float lr, float b1, float b2, float eps,
                           float wd_l2, float shrink, float c1, float c2) {
  for (int64_t i = 0; i < k; i++) {
    float gi = g[i] + wd_l2 * p[i];
    m[i] = b1 * m[i] + (1 - b1) * gi;
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    p[i] = shrink * p[i] - lr * (m[i] * c1) / (sqrtf(v[i]) * c2 + eps);
  }
}

void kd_optim_step(kd_optim *o, float lr) {
  const kd_optim_config *c = &o->cfg;
  o->t++;
  /* Bias corrections once per step, in double: b^t for large t. */
  float c1 = (float)(1.0 / (1.0 - pow(c->beta1, (double)o->t)));
  float c2 = (float)(1.0 / sqrt(1.0 - pow(c->beta2, (double)o->t)));
  for (int i = 0; i < o->n; i++) {
    const kd_param *p = &o->params[i];
    int64_t k = kd_param_numel(p);
    float wd = p->decay ? c->weight_decay : 0.0f;
    switch (c->kind) {
    case KD_OPTIM_SGD: kd_sgd_update(p->data, p->grad, o->m[i], k, lr, c->momentum, wd); break;
    case KD_OPTIM_ADAM:
      kd_adam_update(p->data, p->grad, o->m[i], o->v[i], k, lr, c->beta1, c->beta2, c->eps, wd, 1.0f, c1, c2);
      break;
    case KD_OPTIM_ADAMW:
      kd_adam_update(p->data, p->grad, o->m[i], o->v[i], k, lr, c->beta1, c->beta2, c->eps, 0.0f,
                     1.0f - lr * wd, c1, c2);
      break;
    case KD_OPTIM_KIND_COUNT: break;
    }
  }
}

const kd_optim_config *kd_optim_get_config(const kd_optim *o) { return &o->cfg; }
int kd_optim_count(const kd_optim *o) { return o->n; }
const kd_param *kd_optim_param(const kd_optim *o, int i) { return &o->params[i]; }
float *kd_optim_moment(kd_optim *o, int i, int which) { return which ? o->v[i] : o->m[i]; }
int64_t kd_optim_steps(const kd_optim *o) { return o->t; }
void kd_optim_set_steps(kd_optim *o, int64_t t) { o->t = t; }

/* Sum of squares in 8 double lanes: vectorisable, and exact enough that the
   norm does not depend on the order of a few million floats. */
static double kd_sumsq(const float *restrict g, int64_t k) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= k; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += (double)g[i + j] * g[i + j];
  for (; i < k; i++) acc[0] += (double)g[i] * g[i];
  double s = 0;
  for (int j = 0; j < 8; j++) s += acc[j];
  return s;
}

static void kd_scale(float *restrict g, int64_t k, float s) {
  for (int64_t i = 0; i < k; i++) g[i] *= s;
}

double kd_grad_clip(const kd_param *params, int n, double max_norm) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += kd_sumsq(params[i].grad, kd_param_numel(&params[i]));
  double norm = sqrt(ss);
  if (max_norm > 0 && isfinite(norm) && norm > max_norm) {
    float s = (float)(max_norm / (norm + 1e-6));
    for (int i = 0; i < n; i++) kd_scale(params[i].grad, kd_param_numel(&params[i]), s);
  }
  return norm;
}
