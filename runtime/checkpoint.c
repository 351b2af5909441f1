#include "checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "safetensors.h"

#define KD_CKPT_FORMAT "kdc-checkpoint"
#define KD_CKPT_VERSION "1"

static const char *const kd_moment_prefix[2] = {"optim.m.", "optim.v."};

/* "prefix" + name in a fresh string; NULL when out of memory. */
static char *kd_concat(const char *prefix, const char *name) {
  size_t a = strlen(prefix), b = strlen(name);
  char *s = malloc(a + b + 1);
  if (s) {
    memcpy(s, prefix, a);
    memcpy(s + a, name, b + 1);
  }
  return s;
}

static kd_st_tensor kd_ckpt_tensor(const char *name, const kd_param *p, const float *data) {
  kd_st_tensor t = {.name = name, .dtype = KD_ST_F32, .rank = p->rank, .data = data};
  for (int d = 0; d < p->rank; d++) t.shape[d] = p->shape[d];
  t.nbytes = (size_t)kd_param_numel(p) * sizeof(float);
  return t;
}

/* The optimiser, when given, must hold exactly params, in order. */
static kd_status kd_ckpt_check_optim(const char *path, const kd_param *params, int n, const kd_optim *opt,
                                     char *err, size_t errlen) {
  if (n < 0) return kd_errf(err, errlen, KD_ERR_INVALID, "%s: negative parameter count", path);
  if (!opt) return KD_OK;
  if (kd_optim_count(opt) != n)
    return kd_errf(err, errlen, KD_ERR_INVALID, "%s: the optimiser holds %d parameters, the model %d",
                   path, kd_optim_count(opt), n);
  for (int i = 0; i < n; i++)
    if (strcmp(kd_optim_param(opt, i)->name, params[i].name) != 0)
      return kd_errf(err, errlen, KD_ERR_INVALID, "%s: parameter %d is '%s' in the model but '%s' in the optimiser",
                     path, i, params[i].name, kd_optim_param(opt, i)->name);
  return KD_OK;
}

kd_status kd_ckpt_save(const char *path, const kd_param *params, int n, kd_optim *opt,
                       const kd_ckpt_info *info, char *err, size_t errlen) {
  kd_status s = kd_ckpt_check_optim(path, params, n, opt, err, errlen);
  if (s) return s;
  kd_st_tensor *ts = calloc(3 * (size_t)n + 1, sizeof *ts);
  char **names = calloc(2 * (size_t)n + 1, sizeof *names); /* the moments' keys */
  if (!ts || !names) s = kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
  int nt = 0;
  for (int i = 0; !s && i < n; i++) {
    ts[nt++] = kd_ckpt_tensor(params[i].name, &params[i], params[i].data);
    for (int w = 0; opt && w < 2; w++) {
      const float *mom = kd_optim_moment(opt, i, w);
      if (!mom) continue;
      if (!(names[2 * i + w] = kd_concat(kd_moment_prefix[w], params[i].name))) {
        s = kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
        break;
      }
      ts[nt++] = kd_ckpt_tensor(names[2 * i + w], &params[i], mom);
    }
  }
  char step[24], seed[24], rng[4 * 16 + 1], ostep[24];
  snprintf(step, sizeof step, "%" PRId64, info->step);
  snprintf(seed, sizeof seed, "%" PRIu64, info->seed);
  for (int k = 0; k < 4; k++) snprintf(rng + 16 * k, 17, "%016" PRIx64, info->rng.s[k]);
  snprintf(ostep, sizeof ostep, "%" PRId64, opt ? kd_optim_steps(opt) : 0);
  const char *meta[] = {"format", KD_CKPT_FORMAT, "version", KD_CKPT_VERSION, "step", step,
                        "seed", seed, "rng", rng,
                        "optim", opt ? kd_optim_kind_name(kd_optim_get_config(opt)->kind) : "none",
                        "optim.step", ostep};
  if (!s) s = kd_st_write(path, ts, nt, meta, (int)(sizeof meta / sizeof meta[0]) / 2, err, errlen);
  for (int i = 0; names && i < 2 * n; i++) free(names[i]);
  free(names);
  free(ts);
  return s;
}

/* ---- loading -------------------------------------------------------------- */

static void kd_shape_str(char *buf, size_t cap, int rank, const int64_t *shape) {
  size_t at = (size_t)snprintf(buf, cap, "[");
  for (int d = 0; d < rank && at < cap; d++)
    at += (size_t)snprintf(buf + at, cap - at, "%s%" PRId64, d ? ", " : "", shape[d]);
  if (at < cap) snprintf(buf + at, cap - at, "]");
}

/* The tensor `key` must exist as F32 with p's shape. */
static kd_status kd_ckpt_expect(const char *path, const kd_safetensors *st, const char *key,
                                const kd_param *p, const kd_st_tensor **out, char *err, size_t errlen) {
  const kd_st_tensor *t = kd_st_find(st, key);
  *out = t;
  if (!t)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: the model's tensor '%s' is missing from the checkpoint",
                   path, key);
  int same = t->dtype == KD_ST_F32 && t->rank == p->rank;
  for (int d = 0; same && d < p->rank; d++) same = t->shape[d] == p->shape[d];
  if (!same) {
    char want[128], got[128];
    kd_shape_str(want, sizeof want, p->rank, p->shape);
    kd_shape_str(got, sizeof got, t->rank, t->shape);
    return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: tensor '%s' is %s %s in the checkpoint but F32 %s in the model",
                   path, key, kd_st_dtype_name(t->dtype), got, want);
  }
  return KD_OK;
}

/* Is name a parameter, or one of its moments? */
static int kd_ckpt_known(const char *name, const kd_param *params, int n) {
  for (int w = 0; w < 2; w++) {
    size_t k = strlen(kd_moment_prefix[w]);
    if (strncmp(name, kd_moment_prefix[w], k) == 0) {
      name += k;
      break;
    }
  }
  for (int i = 0; i < n; i++)
    if (strcmp(name, params[i].name) == 0) return 1;
  return 0;
}

static kd_status kd_ckpt_meta(const char *path, const kd_safetensors *st, kd_ckpt_info *info,
                              int64_t *ostep, const char **okind, char *err, size_t errlen) {
  const char *fmt = kd_st_metadata_get(st, "format"), *ver = kd_st_metadata_get(st, "version");
  if (!fmt || strcmp(fmt, KD_CKPT_FORMAT) != 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                   "%s: not a kdc checkpoint (no \"format\": \"" KD_CKPT_FORMAT "\" in __metadata__)", path);
  if (!ver || strcmp(ver, KD_CKPT_VERSION) != 0)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "%s: checkpoint version %s, this kdc reads version " KD_CKPT_VERSION,
                   path, ver ? ver : "(none)");
  const char *step = kd_st_metadata_get(st, "step"), *seed = kd_st_metadata_get(st, "seed");
  const char *rng = kd_st_metadata_get(st, "rng"), *os = kd_st_metadata_get(st, "optim.step");
  *okind = kd_st_metadata_get(st, "optim");
  char *end;
  int bad = !step || !seed || !rng || !os || !*okind || strlen(rng) != 64;
  if (!bad) {
    info->step = strtoll(step, &end, 10);
    bad |= *end != '\0' || info->step < 0;
    info->seed = strtoull(seed, &end, 10);
    bad |= *end != '\0';
    *ostep = strtoll(os, &end, 10);
    bad |= *end != '\0' || *ostep < 0;
    for (int k = 0; k < 4 && !bad; k++) {
      char word[17];
      memcpy(word, rng + 16 * k, 16);
      word[16] = '\0';
      info->rng.s[k] = strtoull(word, &end, 16);
      bad |= *end != '\0';
    }
  }
  if (bad)
    return kd_errf(err, errlen, KD_ERR_FORMAT,
                   "%s: __metadata__ lacks a valid step, seed, rng, optim or optim.step", path);
  return KD_OK;
}

kd_status kd_ckpt_load(const char *path, const kd_param *params, int n, kd_optim *opt,
                       kd_ckpt_info *info, char *err, size_t errlen) {
  kd_status s = kd_ckpt_check_optim(path, params, n, opt, err, errlen);
  if (s) return s;
  kd_safetensors *st;
  s = kd_st_open(path, &st, err, errlen);
  if (s) return s;
  kd_ckpt_info got = {0};
  int64_t ostep = 0;
  const char *okind = NULL;
  s = kd_ckpt_meta(path, st, &got, &ostep, &okind, err, errlen);
  if (!s && opt) {
    const char *want = kd_optim_kind_name(kd_optim_get_config(opt)->kind);
    if (strcmp(okind, want) != 0)
      s = kd_errf(err, errlen, KD_ERR_FORMAT, "%s: the checkpoint holds %s state, the run uses %s", path,
                  okind, want);
  }
  for (int i = 0; !s && i < kd_st_count(st); i++)
    if (!kd_ckpt_known(kd_st_at(st, i)->name, params, n))
      s = kd_errf(err, errlen, KD_ERR_FORMAT, "%s: the checkpoint's tensor '%s' is not in the model", path,
                  kd_st_at(st, i)->name);
  /* Validate everything first, so a bad file leaves the model untouched. */
  for (int pass = 0; pass < 2 && !s; pass++) {
    for (int i = 0; !s && i < n; i++) {
      const kd_st_tensor *t;
      s = kd_ckpt_expect(path, st, params[i].name, &params[i], &t, err, errlen);
      if (!s && pass && t->nbytes) memcpy(params[i].data, t->data, t->nbytes);
      for (int w = 0; !s && opt && w < 2; w++) {
        float *mom = kd_optim_moment(opt, i, w);
        if (!mom) continue;
        char *key = kd_concat(kd_moment_prefix[w], params[i].name);
        if (!key) s = kd_errf(err, errlen, KD_ERR_NOMEM, "%s: out of memory", path);
        if (!s) s = kd_ckpt_expect(path, st, key, &params[i], &t, err, errlen);
        if (!s && pass && t->nbytes) memcpy(mom, t->data, t->nbytes);
        free(key);
      }
    }
  }
  if (!s && opt) kd_optim_set_steps(opt, ostep);
  if (!s && info) *info = got;
  kd_st_close(st);
  return s;
}
