/* Training images and the training binaries' main (train_image.h). */
#define _POSIX_C_SOURCE 200809L
#include "train_image.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

#define KD_IMAGE_MAGIC "KDTRIMG1"

/* ---- writing --------------------------------------------------------------- */

static cJSON *kd_params_json(const kd_params *P) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; a && P && i < P->n; i++) {
    const kd_ptensor *t = &P->t[i];
    cJSON *o = cJSON_CreateObject(), *shape = cJSON_CreateArray();
    if (!o || !shape) {
      cJSON_Delete(o), cJSON_Delete(shape), cJSON_Delete(a);
      return NULL;
    }
    cJSON_AddItemToArray(a, o);
    cJSON_AddStringToObject(o, "name", t->name);
    for (int d = 0; d < t->rank; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
    cJSON_AddItemToObject(o, "shape", shape);
    static const char *const kinds[] = {"normal", "zeros", "ones"};
    cJSON_AddStringToObject(o, "init", kinds[t->init.kind]);
    cJSON_AddNumberToObject(o, "mean", t->init.mean);
    cJSON_AddNumberToObject(o, "std", t->init.std);
  }
  return a;
}

static void kd_add_str(cJSON *o, const char *key, const char *s) {
  if (s) cJSON_AddStringToObject(o, key, s);
}

static void kd_put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t kd_get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

kd_status kd_train_image_write(const kd_train_config *c, const char *teacher_name,
                               const char *teacher_file, uint8_t **buf, size_t *len, char *err,
                               size_t errlen) {
  *buf = NULL, *len = 0;
  cJSON *j = cJSON_CreateObject(), *opt = cJSON_CreateObject(), *sch = cJSON_CreateObject();
  if (!j || !opt || !sch) {
    cJSON_Delete(j), cJSON_Delete(opt), cJSON_Delete(sch);
    return kd_errf(err, errlen, KD_ERR_NOMEM, "training image: out of memory");
  }
  kd_add_str(j, "model", c->model_name);
  kd_add_str(j, "data", c->data_path);
  cJSON_AddNumberToObject(j, "split", c->split);
  cJSON_AddNumberToObject(j, "batch", c->batch);
  cJSON_AddNumberToObject(j, "seq", c->seq);
  cJSON_AddNumberToObject(j, "steps", (double)c->steps);
  cJSON_AddNumberToObject(j, "eval_every", (double)c->eval_every);
  cJSON_AddNumberToObject(j, "save_every", (double)c->save_every);
  cJSON_AddNumberToObject(j, "clip", c->clip);
  cJSON_AddNumberToObject(j, "accumulate", c->accumulate);
  cJSON_AddNumberToObject(j, "seed", (double)c->seed);
  cJSON_AddBoolToObject(j, "sum", c->sum_reduction);
  cJSON_AddNumberToObject(j, "ignore_index", (double)c->ignore_index);
  kd_add_str(j, "save", c->save_path);
  kd_add_str(j, "checkpoint", c->ckpt_path);
  kd_add_str(j, "metrics", c->metrics_path);
  cJSON_AddStringToObject(opt, "kind", kd_optim_kind_name(c->optim.kind));
  cJSON_AddNumberToObject(opt, "beta1", c->optim.beta1);
  cJSON_AddNumberToObject(opt, "beta2", c->optim.beta2);
  cJSON_AddNumberToObject(opt, "eps", c->optim.eps);
  cJSON_AddNumberToObject(opt, "momentum", c->optim.momentum);
  cJSON_AddNumberToObject(opt, "weight_decay", c->optim.weight_decay);
  cJSON_AddItemToObject(j, "optimizer", opt);
  cJSON_AddStringToObject(sch, "kind", kd_schedule_kind_name(c->schedule.kind));
  cJSON_AddNumberToObject(sch, "lr", c->schedule.lr);
  cJSON_AddNumberToObject(sch, "warmup", (double)c->schedule.warmup);
  cJSON_AddNumberToObject(sch, "min_frac", c->schedule.min_frac);
  cJSON_AddItemToObject(j, "schedule", sch);
  cJSON_AddItemToObject(j, "params", kd_params_json(c->params));
  if (c->teacher) {
    kd_add_str(j, "teacher", teacher_name);
    kd_add_str(j, "teacher_file", teacher_file);
    cJSON_AddItemToObject(j, "teacher_params", kd_params_json(c->teacher_params));
  }
  char *text = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  uint8_t *sb = NULL, *tb = NULL;
  size_t sl = 0, tl = 0;
  kd_status st = text ? kd_step_serialize(c->student, &sb, &sl) : KD_ERR_NOMEM;
  if (st == KD_OK && c->teacher) st = kd_step_serialize(c->teacher, &tb, &tl);
  size_t jl = text ? strlen(text) : 0, n = 8 + 8 + jl + 8 + sl + 8 + tl;
  uint8_t *p = st == KD_OK ? malloc(n) : NULL;
  if (p) {
    size_t k = 0;
    memcpy(p, KD_IMAGE_MAGIC, 8), k += 8;
    kd_put_u64(p + k, jl), k += 8;
    memcpy(p + k, text, jl), k += jl;
    kd_put_u64(p + k, sl), k += 8;
    memcpy(p + k, sb, sl), k += sl;
    kd_put_u64(p + k, tl), k += 8;
    if (tl) memcpy(p + k, tb, tl);
    *buf = p, *len = n;
  }
  free(text), free(sb), free(tb);
  if (!p) return kd_errf(err, errlen, st == KD_OK ? KD_ERR_NOMEM : st, "training image: %s",
                         st == KD_OK ? "out of memory" : "cannot serialise a step program");
  return KD_OK;
}

/* ---- reading --------------------------------------------------------------- */

static bool kd_json_num(const cJSON *j, const char *key, double *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
  if (!cJSON_IsNumber(x)) return false;
  *v = x->valuedouble;
  return true;
}

/* A copy of string member key, or NULL (absent or not a string). */
static char *kd_json_str(const cJSON *j, const char *key) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
  if (!cJSON_IsString(x)) return NULL;
  size_t n = strlen(x->valuestring) + 1;
  char *s = malloc(n);
  if (s) memcpy(s, x->valuestring, n);
  return s;
}

static kd_status kd_params_from_json(const cJSON *a, kd_params *P, char *err, size_t errlen) {
  if (!cJSON_IsArray(a))
    return kd_errf(err, errlen, KD_ERR_FORMAT, "training image: no parameter list");
  const cJSON *o;
  cJSON_ArrayForEach(o, a) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(o, "shape");
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(o, "init");
    double mean = 0, std = 0;
    int rank = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : -1;
    if (!cJSON_IsString(name) || rank < 0 || rank > KD_PARAMS_MAX_RANK || !cJSON_IsString(init) ||
        !kd_json_num(o, "mean", &mean) || !kd_json_num(o, "std", &std))
      return kd_errf(err, errlen, KD_ERR_FORMAT, "training image: a malformed parameter");
    int64_t dims[KD_PARAMS_MAX_RANK];
    for (int d = 0; d < rank; d++) {
      const cJSON *x = cJSON_GetArrayItem(shape, d);
      double v = cJSON_IsNumber(x) ? x->valuedouble : -1;
      if (!(v >= 1 && v <= 9007199254740992.0) || v != floor(v))
        return kd_errf(err, errlen, KD_ERR_FORMAT, "training image: parameter '%s': a bad shape",
                       name->valuestring);
      dims[d] = (int64_t)v;
    }
    kd_pinit pi = !strcmp(init->valuestring, "zeros")  ? kd_pinit_zeros()
                  : !strcmp(init->valuestring, "ones") ? kd_pinit_ones()
                                                       : kd_pinit_normal(mean, std);
    kd_status st = kd_params_add(P, name->valuestring, rank, dims, pi, err, errlen);
    if (st != KD_OK) return st;
  }
  return KD_OK;
}

/* A u64-length-prefixed section at *k; advances *k. */
static bool kd_section(const uint8_t *buf, size_t len, size_t *k, const uint8_t **p, size_t *n) {
  if (len - *k < 8) return false;
  uint64_t m = kd_get_u64(buf + *k);
  *k += 8;
  if (m > len - *k) return false;
  *p = buf + *k, *n = (size_t)m;
  *k += (size_t)m;
  return true;
}

static kd_status kd_image_config(const cJSON *j, kd_train_image *im, char *err, size_t errlen) {
  kd_train_config *c = &im->config;
  double split, batch, seq, steps, eval_every, save_every, clip, acc, seed, ignore;
  const cJSON *opt = cJSON_GetObjectItemCaseSensitive(j, "optimizer");
  const cJSON *sch = cJSON_GetObjectItemCaseSensitive(j, "schedule");
  double b1, b2, eps, mom, wd, lr, warmup, minf;
  char *okind = kd_json_str(opt, "kind"), *skind = kd_json_str(sch, "kind");
  int ok_kind = okind ? kd_optim_kind_from_name(okind) : -1;
  int sk_kind = skind ? kd_schedule_kind_from_name(skind) : -1;
  free(okind), free(skind);
  const cJSON *sum = cJSON_GetObjectItemCaseSensitive(j, "sum");
  im->model_name = kd_json_str(j, "model");
  im->data_path = kd_json_str(j, "data");
  if (!kd_json_num(j, "split", &split) || !kd_json_num(j, "batch", &batch) ||
      !kd_json_num(j, "seq", &seq) || !kd_json_num(j, "steps", &steps) ||
      !kd_json_num(j, "eval_every", &eval_every) || !kd_json_num(j, "save_every", &save_every) ||
      !kd_json_num(j, "clip", &clip) || !kd_json_num(j, "accumulate", &acc) ||
      !kd_json_num(j, "seed", &seed) || !kd_json_num(j, "ignore_index", &ignore) ||
      !cJSON_IsBool(sum) || ok_kind < 0 || sk_kind < 0 || !kd_json_num(opt, "beta1", &b1) ||
      !kd_json_num(opt, "beta2", &b2) || !kd_json_num(opt, "eps", &eps) ||
      !kd_json_num(opt, "momentum", &mom) || !kd_json_num(opt, "weight_decay", &wd) ||
      !kd_json_num(sch, "lr", &lr) || !kd_json_num(sch, "warmup", &warmup) ||
      !kd_json_num(sch, "min_frac", &minf) || !im->model_name || !im->data_path ||
      !(batch >= 1 && batch <= 1 << 20) || !(seq >= 1 && seq <= 1 << 24) ||
      !(acc >= 1 && acc <= 1 << 20) || !(steps >= 1))
    return kd_errf(err, errlen, KD_ERR_FORMAT, "training image: a malformed configuration");
  c->model_name = im->model_name;
  c->data_path = im->data_path;
  c->split = split, c->batch = (int)batch, c->seq = (int)seq, c->steps = (int64_t)steps;
  c->eval_every = (int64_t)eval_every, c->save_every = (int64_t)save_every, c->clip = clip;
  c->accumulate = (int)acc, c->seed = (uint64_t)seed, c->ignore_index = (int64_t)ignore;
  c->sum_reduction = cJSON_IsTrue(sum);
  c->optim = kd_optim_defaults((kd_optim_kind)ok_kind);
  c->optim.beta1 = (float)b1, c->optim.beta2 = (float)b2, c->optim.eps = (float)eps;
  c->optim.momentum = (float)mom, c->optim.weight_decay = (float)wd;
  c->schedule = (kd_lr_schedule){(kd_schedule_kind)sk_kind, lr, (int64_t)warmup, c->steps, minf};
  im->save_path = kd_json_str(j, "save");
  im->ckpt_path = kd_json_str(j, "checkpoint");
  im->metrics_path = kd_json_str(j, "metrics");
  c->save_path = im->save_path, c->ckpt_path = im->ckpt_path, c->metrics_path = im->metrics_path;
  kd_status st = kd_params_from_json(cJSON_GetObjectItemCaseSensitive(j, "params"), &im->params,
                                     err, errlen);
  if (st != KD_OK) return st;
  c->params = &im->params;
  if (cJSON_GetObjectItemCaseSensitive(j, "teacher_params")) {
    im->teacher_name = kd_json_str(j, "teacher");
    im->teacher_file = kd_json_str(j, "teacher_file");
    if (!im->teacher_name || !im->teacher_file)
      return kd_errf(err, errlen, KD_ERR_FORMAT, "training image: a teacher without a file");
    st = kd_params_from_json(cJSON_GetObjectItemCaseSensitive(j, "teacher_params"),
                             &im->teacher_params, err, errlen);
    c->teacher_params = &im->teacher_params;
  }
  return st;
}

kd_status kd_train_image_read(const uint8_t *buf, size_t len, kd_train_image *im, char *err,
                              size_t errlen) {
  memset(im, 0, sizeof *im);
  const uint8_t *jp, *sp, *tp;
  size_t jl, sl, tl, k = 8;
  if (len < 8 || memcmp(buf, KD_IMAGE_MAGIC, 8) || !kd_section(buf, len, &k, &jp, &jl) ||
      !kd_section(buf, len, &k, &sp, &sl) || !kd_section(buf, len, &k, &tp, &tl) || k != len)
    return kd_errf(err, errlen, KD_ERR_FORMAT, "training image: not one, or truncated");
  cJSON *j = cJSON_ParseWithLength((const char *)jp, jl);
  if (!cJSON_IsObject(j)) {
    cJSON_Delete(j);
    return kd_errf(err, errlen, KD_ERR_FORMAT, "training image: the configuration is not JSON");
  }
  kd_status st = kd_image_config(j, im, err, errlen);
  cJSON_Delete(j);
  if (st == KD_OK) st = kd_step_deserialize(sp, sl, &im->student, err, errlen);
  if (st == KD_OK && tl) st = kd_step_deserialize(tp, tl, &im->teacher, err, errlen);
  if (st == KD_OK && !tl != !im->teacher_file)
    st = kd_errf(err, errlen, KD_ERR_FORMAT, "training image: a teacher program without weights");
  if (st != KD_OK) {
    kd_train_image_free(im);
    return st;
  }
  im->config.student = im->student;
  im->config.teacher = im->teacher;
  return KD_OK;
}

void kd_train_image_free(kd_train_image *im) {
  kd_params_free(&im->params);
  kd_params_free(&im->teacher_params);
  kd_step_free(im->student);
  kd_step_free(im->teacher);
  free(im->model_name), free(im->teacher_name), free(im->teacher_file);
  free(im->data_path), free(im->save_path), free(im->ckpt_path), free(im->metrics_path);
  memset(im, 0, sizeof *im);
}

/* ---- main ------------------------------------------------------------------ */

static void kd_main_usage(const char *prog, const kd_train_image *im, FILE *out) {
  const kd_train_config *c = &im->config;
  fprintf(out,
          "usage: %s [--steps N] [--out DIR] [--threads N] [--resume] [--eval-batches N]\n"
          "       %*s [--data FILE] [--teacher FILE]\n"
          "\n"
          "Trains '%s' (%" PRId64 " steps of %d x %d tokens on %s%s%s), compiled by kdc.\n"
          "\n"
          "options:\n"
          "  --steps N         train N steps instead of %" PRId64 "\n"
          "  --out DIR         write the weights, checkpoint and metrics to DIR\n"
          "  --threads N       threads (default: every CPU)\n"
          "  --resume          continue from the checkpoint\n"
          "  --eval-batches N  evaluate on at most N validation batches (default: all)\n"
          "  --data FILE       train on FILE (text bytes or a kdc .bin token file)\n"
          "  --teacher FILE    the teacher's weights (safetensors)\n"
          "  -h, --help        print this help\n"
          "\n"
          "exit status: 0 trained, 1 bad data or an I/O error, 2 usage error,\n"
          "130 stopped by Ctrl-C (the checkpoint is saved)\n",
          prog, (int)strlen(prog), "", c->model_name, c->steps, c->batch * c->accumulate, c->seq,
          c->data_path, im->teacher_name ? ", teacher " : "",
          im->teacher_name ? im->teacher_name : "", c->steps);
}

/* path with its folder replaced by dir; malloc'd (NULL path: NULL). */
static char *kd_in_dir(const char *dir, const char *path, bool *nomem) {
  if (!path) return NULL;
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  size_t a = strlen(dir), b = strlen(base);
  char *s = malloc(a + b + 2);
  if (!s) {
    *nomem = true;
    return NULL;
  }
  memcpy(s, dir, a);
  s[a] = '/';
  memcpy(s + a + 1, base, b + 1);
  return s;
}

static bool kd_parse_count(const char *s, int64_t *v) {
  char *end;
  long long x = strtoll(s, &end, 10);
  if (!*s || *end || x < 1 || x > (long long)1 << 40) return false;
  *v = x;
  return true;
}

/* Attaches the compiled expressions unless KDC_NO_FUSED_JIT=1. */
static kd_status attach_fused(kd_train_image *im, const kd_train_fused *f, char *err,
                              size_t errlen) {
  const char *off = getenv("KDC_NO_FUSED_JIT");
  if (!f || (off && !strcmp(off, "1"))) return KD_OK;
  kd_status st = KD_OK;
  if (f->student) st = kd_step_set_compiled(im->student, f->student, f->nstudent, err, errlen);
  if (st == KD_OK && f->teacher && im->teacher)
    st = kd_step_set_compiled(im->teacher, f->teacher, f->nteacher, err, errlen);
  return st;
}

int kd_train_main(const char *prog, const uint8_t *image, size_t len,
                  const kd_loss_program *objective, const kd_loss_program *eval_ce,
                  const kd_train_fused *fused, int argc, char **argv) {
  char err[2048];
  kd_train_image im;
  if (kd_train_image_read(image, len, &im, err, sizeof err) != KD_OK) {
    fprintf(stderr, "%s: %s\n", prog, err);
    return 1;
  }
  if (attach_fused(&im, fused, err, sizeof err) != KD_OK) {
    fprintf(stderr, "%s: %s\n", prog, err);
    kd_train_image_free(&im);
    return 1;
  }
  kd_train_config c = im.config;
  const char *out = NULL, *data = NULL, *teacher = NULL;
  int64_t threads = 0;
  int rc = -1;
  for (int i = 1; i < argc && rc < 0; i++) {
    const char *s = argv[i];
    bool more = i + 1 < argc;
    int64_t v = 0;
    if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
      kd_main_usage(prog, &im, stdout);
      rc = 0;
    } else if (!strcmp(s, "--resume")) {
      c.resume = true;
    } else if ((!strcmp(s, "--steps") || !strcmp(s, "--threads") ||
                !strcmp(s, "--eval-batches")) && more) {
      if (!kd_parse_count(argv[++i], &v)) {
        fprintf(stderr, "%s: %s takes an integer >= 1, not '%s'\n", prog, s, argv[i]);
        rc = 2;
      } else if (!strcmp(s, "--steps")) {
        c.steps = c.schedule.total = v;
      } else if (!strcmp(s, "--threads")) {
        threads = v > 4096 ? 4096 : v;
      } else {
        c.eval_batches = v;
      }
    } else if (!strcmp(s, "--out") && more) {
      out = argv[++i];
    } else if (!strcmp(s, "--data") && more) {
      data = argv[++i];
    } else if (!strcmp(s, "--teacher") && more) {
      teacher = argv[++i];
    } else {
      fprintf(stderr, "%s: unexpected argument '%s' (see '%s --help')\n", prog, s, prog);
      rc = 2;
    }
  }
  if (rc >= 0) {
    kd_train_image_free(&im);
    return rc;
  }
  if (kd_schedule_check(&c.schedule, err, sizeof err) != KD_OK) {
    fprintf(stderr, "%s: %s\n", prog, err);
    kd_train_image_free(&im);
    return 2;
  }
  bool nomem = false;
  char *save = NULL, *ckpt = NULL, *metrics = NULL;
  if (out && kd_mkdirs(out, err, sizeof err) != KD_OK) {
    fprintf(stderr, "%s: %s\n", prog, err);
    kd_train_image_free(&im);
    return 1;
  }
  if (out) {
    c.save_path = save = kd_in_dir(out, c.save_path, &nomem);
    c.ckpt_path = ckpt = kd_in_dir(out, c.ckpt_path, &nomem);
    c.metrics_path = metrics = kd_in_dir(out, c.metrics_path, &nomem);
  }
  if (data) c.data_path = data;
  const char *tfile = teacher ? teacher : im.teacher_file;
  c.objective = objective;
  c.eval_ce = eval_ce;
  c.threads = (int)threads;
  c.log = stderr;
  kd_status st = nomem ? kd_errf(err, sizeof err, KD_ERR_NOMEM, "out of memory") : KD_OK;
  if (st == KD_OK && c.teacher) {
    st = kd_params_load_safetensors(&im.teacher_params, tfile, err, sizeof err);
    if (st != KD_OK)
      fprintf(stderr, "%s: teacher '%s': %s\n", prog, im.teacher_name, err), err[0] = 0;
  }
  if (st == KD_OK) {
    fprintf(stderr, "%s: %" PRId64 " parameters, %" PRId64 " steps of %d x %d tokens%s%s\n",
            c.model_name, kd_params_count(c.params), c.steps, c.batch * c.accumulate, c.seq,
            c.teacher ? ", teacher " : "", c.teacher ? tfile : "");
    kd_train_result r;
    st = kd_train_run(&c, &r, err, sizeof err);
    if (st == KD_OK) {
      printf("%s: %" PRId64 " steps, loss %.4f", c.model_name, r.steps, r.loss);
      if (!isnan(r.val_loss)) printf(", validation cross-entropy %.4f", r.val_loss);
      printf(", %.0f tokens/s\n", r.tokens_per_s);
      printf("%s: wrote %s%s%s%s%s\n", c.model_name, c.save_path ? c.save_path : "",
             c.save_path ? ", " : "", c.ckpt_path ? c.ckpt_path : "",
             c.ckpt_path && c.metrics_path ? ", " : "", c.metrics_path ? c.metrics_path : "");
      fflush(stdout);
      rc = r.interrupted ? 130 : 0;
    }
  }
  if (st != KD_OK) {
    if (err[0]) fprintf(stderr, "%s: %s\n", prog, err);
    rc = 1;
  }
  free(save), free(ckpt), free(metrics);
  kd_train_image_free(&im);
  return rc;
}
