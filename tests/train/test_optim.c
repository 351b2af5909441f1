/* Optimisers: closed forms of the first steps, a double-precision scalar
 * reference written from PyTorch's documented algorithms over many steps,
 * weight decay on marked tensors only, and clipping by the global norm. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "optim.h"

static char err[256];

/* A deterministic gradient in [-1, 1) that changes with the step. */
static float grad_at(int step, int i) {
  uint32_t h = (uint32_t)(step * 7919 + i * 104729 + 17);
  h ^= h >> 13;
  h *= 0x5bd1e995u;
  h ^= h >> 15;
  return (float)(h % 2000) / 1000.0f - 1.0f;
}

/* Two tensors: a matrix that decays and a bias that does not. */
typedef struct model {
  float w[6], gw[6], b[3], gb[3];
  kd_param p[2];
} model;

static void model_init(model *m) {
  memset(m, 0, sizeof *m);
  for (int i = 0; i < 6; i++) m->w[i] = 0.5f - 0.2f * (float)i;
  for (int i = 0; i < 3; i++) m->b[i] = 0.1f * (float)(i + 1);
  m->p[0] = (kd_param){.name = "w", .data = m->w, .grad = m->gw, .rank = 2, .shape = {2, 3}, .decay = 1};
  m->p[1] = (kd_param){.name = "b", .data = m->b, .grad = m->gb, .rank = 1, .shape = {3}, .decay = 0};
}

static void model_grads(model *m, int step) {
  for (int i = 0; i < 6; i++) m->gw[i] = grad_at(step, i);
  for (int i = 0; i < 3; i++) m->gb[i] = grad_at(step, 100 + i);
}

/* One step of Adam's first update: m_hat = g and v_hat = g^2, so each
   value moves by lr g / (|g| + eps), whatever beta1 and beta2 are. */
static void test_adam_first_step(kd_optim_kind kind) {
  model m;
  model_init(&m);
  kd_optim_config c = kd_optim_defaults(kind);
  c.weight_decay = 0.1f;
  kd_optim *o;
  CHECK(kd_optim_create(&c, m.p, 2, &o, err, sizeof err) == KD_OK);
  model_grads(&m, 0);
  model ref = m;
  float lr = 0.01f;
  kd_optim_step(o, lr);
  /* Tolerance: a few float32 roundings of values below 1 (~1e-7 each). */
  int ok = 1;
  for (int i = 0; i < 6; i++) {
    double p = ref.w[i], g = ref.gw[i];
    if (kind == KD_OPTIM_ADAM) g += 0.1 * p; /* coupled L2 on the matrix */
    else p *= 1 - lr * 0.1;                  /* decoupled decay */
    double want = p - lr * g / (fabs(g) + 1e-8);
    ok &= fabs(m.w[i] - want) < 1e-6;
  }
  for (int i = 0; i < 3; i++) { /* the bias never decays */
    double g = ref.gb[i], want = ref.b[i] - lr * g / (fabs(g) + 1e-8);
    ok &= fabs(m.b[i] - want) < 1e-6;
  }
  CHECK(ok);
  CHECK(kd_optim_steps(o) == 1);
  CHECK(kd_optim_moment(o, 0, 0) && kd_optim_moment(o, 0, 1));
  CHECK(fabsf(kd_optim_moment(o, 1, 0)[0] - 0.1f * ref.gb[0]) < 1e-7); /* m = (1 - b1) g */
  kd_optim_free(o);
}

/* Constant gradient g with momentum mu: after k steps the velocity is
   g (1 - mu^k) / (1 - mu), and p moves by lr times the sum of those. */
static void test_sgd_momentum(void) {
  float p[1] = {1.0f}, g[1] = {0.5f};
  kd_param prm = {.name = "x", .data = p, .grad = g, .rank = 0};
  kd_optim_config c = kd_optim_defaults(KD_OPTIM_SGD);
  c.momentum = 0.9f;
  kd_optim *o;
  CHECK(kd_optim_create(&c, &prm, 1, &o, err, sizeof err) == KD_OK);
  double want = 1.0, vel = 0;
  for (int k = 1; k <= 20; k++) {
    kd_optim_step(o, 0.1f);
    vel = 0.5 * (1 - pow(0.9, k)) / (1 - 0.9);
    want -= 0.1 * vel;
  }
  CHECK(fabs(p[0] - want) < 1e-5); /* 20 float32 updates of size < 0.5: ~1e-6 drift */
  CHECK(fabs(kd_optim_moment(o, 0, 0)[0] - vel) < 1e-5);
  CHECK(kd_optim_moment(o, 0, 1) == NULL);
  kd_optim_free(o);

  /* Plain SGD keeps no state. */
  c.momentum = 0;
  CHECK(kd_optim_create(&c, &prm, 1, &o, err, sizeof err) == KD_OK);
  CHECK(kd_optim_moment(o, 0, 0) == NULL);
  kd_optim_step(o, 0.1f);
  CHECK(fabs(p[0] - (want - 0.05)) < 1e-5);
  kd_optim_free(o);
}

/* The reference: PyTorch's algorithms, in double, one value at a time. */
typedef struct ref_state {
  double p, m, v;
} ref_state;

static void ref_step(ref_state *s, double g, const kd_optim_config *c, int decay, double lr, int t) {
  double wd = decay ? c->weight_decay : 0;
  switch (c->kind) {
  case KD_OPTIM_SGD:
    g += wd * s->p;
    s->m = c->momentum * s->m + g;
    s->p -= lr * (c->momentum ? s->m : g);
    break;
  case KD_OPTIM_ADAM:
  case KD_OPTIM_ADAMW:
    if (c->kind == KD_OPTIM_ADAM) g += wd * s->p;
    else s->p *= 1 - lr * wd;
    s->m = c->beta1 * s->m + (1 - c->beta1) * g;
    s->v = c->beta2 * s->v + (1 - c->beta2) * g * g;
    double mh = s->m / (1 - pow(c->beta1, t)), vh = s->v / (1 - pow(c->beta2, t));
    s->p -= lr * mh / (sqrt(vh) + c->eps);
    break;
  default: break;
  }
}

static void test_against_reference(kd_optim_kind kind) {
  enum { N = 1000, STEPS = 50 };
  static float w[N], gw[N];
  static ref_state ref[N];
  for (int i = 0; i < N; i++) {
    w[i] = (float)grad_at(999, i);
    ref[i] = (ref_state){w[i], 0, 0};
  }
  /* Split in two tensors, the first decaying, with an odd size so the
     vector loops' remainders run. */
  kd_param p[2] = {
    {.name = "a", .data = w, .grad = gw, .rank = 2, .shape = {37, 13}, .decay = 1},
    {.name = "c", .data = w + 481, .grad = gw + 481, .rank = 1, .shape = {519}, .decay = 0},
  };
  kd_optim_config c = kd_optim_defaults(kind);
  c.weight_decay = 0.05f;
  c.momentum = kind == KD_OPTIM_SGD ? 0.8f : 0.0f;
  c.beta2 = 0.99f; /* not the default, so a swapped beta shows */
  kd_optim *o;
  CHECK(kd_optim_create(&c, p, 2, &o, err, sizeof err) == KD_OK);
  for (int t = 1; t <= STEPS; t++) {
    double lr = 1e-2 * (1 + 0.01 * t); /* a changing rate */
    for (int i = 0; i < N; i++) {
      gw[i] = grad_at(t, i);
      ref_step(&ref[i], gw[i], &c, i < 481, lr, t);
    }
    kd_optim_step(o, (float)lr);
  }
  /* Tolerance: 50 steps of size ~1e-2 each rounded to float32 (2^-24
     relative) accumulate to well under 1e-5; a wrong formula (bias
     correction, decay on the wrong tensor, a swapped beta) moves values by
     1e-3 or more. */
  double worst = 0;
  for (int i = 0; i < N; i++) worst = fmax(worst, fabs(w[i] - ref[i].p));
  if (worst >= 1e-5) fprintf(stderr, "%s: max |kdc - reference| = %g\n", kd_optim_kind_name(kind), worst);
  CHECK(worst < 1e-5);
  kd_optim_free(o);
}

static void test_clip(void) {
  float a[2] = {3, 0}, b[1] = {4}, d[2] = {0};
  kd_param p[2] = {
    {.name = "a", .data = d, .grad = a, .rank = 1, .shape = {2}},
    {.name = "b", .data = d, .grad = b, .rank = 1, .shape = {1}},
  };
  CHECK(kd_grad_clip(p, 2, 10) == 5); /* below the limit: untouched */
  CHECK(a[0] == 3 && b[0] == 4);
  CHECK(kd_grad_clip(p, 2, 0) == 5); /* 0: measure only */
  CHECK(kd_grad_clip(p, 2, 1) == 5);
  double after = sqrt((double)a[0] * a[0] + (double)b[0] * b[0]);
  CHECK(fabs(after - 1) < 1e-6 && fabs(a[0] / b[0] - 0.75) < 1e-6); /* direction kept */
  a[1] = NAN;
  CHECK(isnan(kd_grad_clip(p, 2, 1)));
  CHECK(fabs(b[0] - 0.8f) < 1e-6); /* a NaN norm scales nothing */

  /* A long gradient: the 8-lane sum and its tail agree with a plain sum. */
  enum { K = 1003 };
  static float g[K];
  double ss = 0;
  for (int i = 0; i < K; i++) {
    g[i] = grad_at(5, i);
    ss += (double)g[i] * g[i];
  }
  kd_param q = {.name = "g", .data = g, .grad = g, .rank = 1, .shape = {K}};
  CHECK(fabs(kd_grad_clip(&q, 1, 0) - sqrt(ss)) < 1e-9 * sqrt(ss));
}

static void test_errors(void) {
  float x[1], gx[1];
  kd_param p[2] = {{.name = "x", .data = x, .grad = gx, .rank = 0},
                   {.name = "x", .data = x, .grad = gx, .rank = 0}};
  kd_optim_config c = kd_optim_defaults(KD_OPTIM_ADAMW);
  kd_optim *o = (kd_optim *)1;
  CHECK(kd_optim_create(&c, p, 2, &o, err, sizeof err) == KD_ERR_INVALID && o == NULL);
  CHECK(strstr(err, "'x' given twice") != NULL);
  c.beta1 = 1;
  CHECK(kd_optim_create(&c, p, 1, &o, err, sizeof err) == KD_ERR_INVALID);
  CHECK(kd_optim_kind_from_name("adamw") == KD_OPTIM_ADAMW && kd_optim_kind_from_name("lion") == -1);
}

int main(void) {
  test_adam_first_step(KD_OPTIM_ADAM);
  test_adam_first_step(KD_OPTIM_ADAMW);
  test_sgd_momentum();
  for (int k = 0; k < KD_OPTIM_KIND_COUNT; k++) test_against_reference((kd_optim_kind)k);
  test_clip();
  test_errors();
  return check_exit("test_optim");
}
