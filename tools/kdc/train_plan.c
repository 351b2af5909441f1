/* A train block made into a training plan (train_plan.h). */
#define _POSIX_C_SOURCE 200809L
#include "train_plan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "builtins.h"
#include "commands.h"
#include "loss_spec.h"
#include "memplan.h"
#include "model_params.h"
#include "stepgen.h"
#include "train_graph.h"

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int plan_fail(const kdc_plan_options *o, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", o->cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return KDC_EXIT_USER;
}

static const char *base_name(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

/* dir/name, or name when dir is NULL or empty; malloc'd. */
static char *join(const char *dir, const char *name) {
  size_t a = dir ? strlen(dir) : 0, b = strlen(name);
  char *s = malloc(a + b + 2);
  if (!s) return NULL;
  if (a) {
    memcpy(s, dir, a);
    s[a++] = '/';
  }
  memcpy(s + a, name, b + 1);
  return s;
}

/* The folder of path ("." when it has none); malloc'd. */
static char *dir_of(const char *path) {
  const char *s = strrchr(path, '/');
  if (!s) return strdup(".");
  char *d = malloc((size_t)(s - path) + 1);
  if (!d) return NULL;
  memcpy(d, path, (size_t)(s - path));
  d[s - path] = 0;
  return d;
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* An optimiser's or schedule's named argument. */
static double named_arg(const kd_builtin *b, const double *args, const char *name, double def) {
  for (int i = 0; b && i < kd_builtin_nnamed(b); i++)
    if (!strcmp(b->named[i].name, name)) return args[i];
  return def;
}

static int plan_optim(const kdc_plan_options *o, const kd_train_info *t, kd_train_config *c) {
  const char *name = t->optimizer ? t->optimizer->name : "adamw";
  int kind = kd_optim_kind_from_name(name);
  if (kind < 0) return plan_fail(o, "unknown optimizer '%s'", name);
  c->optim = kd_optim_defaults((kd_optim_kind)kind);
  const double *a = t->optimizer_args;
  c->optim.beta1 = (float)named_arg(t->optimizer, a, "beta1", c->optim.beta1);
  c->optim.beta2 = (float)named_arg(t->optimizer, a, "beta2", c->optim.beta2);
  c->optim.eps = (float)named_arg(t->optimizer, a, "eps", c->optim.eps);
  c->optim.momentum = (float)named_arg(t->optimizer, a, "momentum", c->optim.momentum);
  c->optim.weight_decay = (float)named_arg(t->optimizer, a, "weight_decay", c->optim.weight_decay);
  const char *sname = t->schedule ? t->schedule->name : "constant";
  int skind = kd_schedule_kind_from_name(sname);
  if (skind < 0) return plan_fail(o, "unknown schedule '%s'", sname);
  c->schedule = (kd_lr_schedule){
      .kind = (kd_schedule_kind)skind,
      .lr = named_arg(t->optimizer, a, "lr", 1e-3),
      .warmup = (int64_t)named_arg(t->schedule, t->schedule_args, "warmup", 0),
      .total = c->steps,
      .min_frac = 0,
  };
  char err[256];
  if (kd_schedule_check(&c->schedule, err, sizeof err) != KD_OK) return plan_fail(o, "%s", err);
  return KDC_EXIT_OK;
}

/* A model instance lowered, its step program at [B, T] and its parameters. */
static int plan_model(const kdc_plan_options *o, const kd_program *prog, const kd_symbol *inst,
                      bool train, int64_t B, int64_t T, kd_model *m, kd_params *P,
                      kd_step_prog **sp) {
  char err[512];
  kd_status st = kd_lower_model(prog, inst, o->diag, m);
  if (st != KD_OK) return KDC_EXIT_USER;
  if (kd_model_params(m, P, err, sizeof err) != KD_OK)
    return plan_fail(o, "%s: %s", inst->name, err);
  kd_graph *g = NULL;
  st = train ? kd_train_graph(m, &g, err, sizeof err) : kd_forward_graph(m, &g, err, sizeof err);
  if (st != KD_OK) return plan_fail(o, "%s: %s", inst->name, err);
  kd_sym_binding bind[2] = {{"B", B}, {"T", T}};
  st = kd_stepgen(g, bind, 2, train ? "logits.grad" : NULL, sp, err, sizeof err);
  kd_graph_free(g);
  if (st != KD_OK) return plan_fail(o, "%s: %s", inst->name, err);
  return KDC_EXIT_OK;
}

int kdc_train_plan_make(const kd_program *prog, const kd_symbol *train, const kdc_plan_options *o,
                        bool need_teacher, kdc_train_plan *p) {
  memset(p, 0, sizeof *p);
  p->train = train;
  const kd_train_info *t = &train->train;
  const kd_data_info *d = t->data ? &t->data->data : NULL;
  p->student_sym = t->instance;
  if (!d) return plan_fail(o, "the spec has no data block to train on");
  if (!p->student_sym->model)
    return plan_fail(o, "'%s' is precomputed logits and cannot be trained", p->student_sym->name);
  kd_train_config *c = &p->config;
  c->model_name = p->student_sym->name;
  c->batch = (int)d->batch;
  c->seq = (int)d->seq;
  c->split = d->split;
  c->steps = o->steps > 0 ? o->steps : t->steps;
  c->eval_every = t->eval_every;
  c->save_every = t->save_every;
  c->clip = t->clip;
  c->accumulate = (int)t->accumulate;
  c->seed = (uint64_t)t->seed;
  int rc = plan_optim(o, t, c);
  if (rc) return rc;

  /* the objective, lowered for this block's student, and the metric */
  kd_lower_options lo = {.labels = true, .train = train};
  if (kd_lower(prog, &lo, o->diag, &p->objective, &p->info) != KD_OK) return KDC_EXIT_USER;
  if ((rc = kdc_run_pipeline(o->cmd, &p->objective, NULL))) return rc;
  if (kd_lower_cross_entropy(p->info.ignore_index, &p->eval_ce) != KD_OK)
    return plan_fail(o, "out of memory");
  if ((rc = kdc_run_pipeline(o->cmd, &p->eval_ce, NULL))) return rc;
  c->sum_reduction = p->info.sum;
  c->ignore_index = p->info.ignore_index;

  /* the student */
  if ((rc = plan_model(o, prog, p->student_sym, true, d->batch, d->seq, &p->student, &p->params,
                       &p->student_prog)))
    return rc;
  c->student = p->student_prog;
  c->params = &p->params;

  /* files */
  char *dir = o->out_dir ? strdup(o->out_dir)
              : t->save_path ? dir_of(t->save_path)
                             : dir_of(o->spec);
  char name[512];
  if (!dir) return plan_fail(o, "out of memory");
  p->data_path = strdup(d->path);
  p->save_path = !t->save_path ? NULL
                 : o->out_dir  ? join(dir, base_name(t->save_path))
                               : strdup(t->save_path);
  snprintf(name, sizeof name, "%s.ckpt.safetensors", p->student_sym->name);
  p->ckpt_path = join(dir, name);
  snprintf(name, sizeof name, "%s.metrics.jsonl", p->student_sym->name);
  p->metrics_path = join(dir, name);
  free(dir);
  if (!p->data_path || (t->save_path && !p->save_path) || !p->ckpt_path || !p->metrics_path)
    return plan_fail(o, "out of memory");
  c->data_path = p->data_path;
  c->save_path = p->save_path;
  c->ckpt_path = p->ckpt_path;
  c->metrics_path = p->metrics_path;

  /* the teacher */
  if (p->info.nteachers > 1)
    return plan_fail(o, "the objective reads %d teachers; training takes one so far",
                     p->info.nteachers);
  if (p->info.nteachers == 1) {
    p->teacher_sym = p->info.teachers[0];
    if (!p->teacher_sym->model)
      return plan_fail(o, "teacher '%s' is precomputed logits: training reads a teacher model "
                          "so far", p->teacher_sym->name);
    if (!p->teacher_sym->file)
      return plan_fail(o, "teacher '%s' has no weights: write `%s = ... load \"FILE\"`",
                       p->teacher_sym->name, p->teacher_sym->name);
    if ((rc = plan_model(o, prog, p->teacher_sym, false, d->batch, d->seq, &p->teacher,
                         &p->teacher_params, &p->teacher_prog)))
      return rc;
    char *there = o->out_dir ? join(o->out_dir, base_name(p->teacher_sym->file)) : NULL;
    p->teacher_file = there && exists(there) ? there : strdup(p->teacher_sym->file);
    if (p->teacher_file != there) free(there);
    if (!p->teacher_file) return plan_fail(o, "out of memory");
    if (need_teacher && !exists(p->teacher_file))
      return plan_fail(o, "teacher '%s': %s does not exist (train the teacher first)",
                       p->teacher_sym->name, p->teacher_file);
    c->teacher = p->teacher_prog;
    c->teacher_params = &p->teacher_params;
  }
  return KDC_EXIT_OK;
}

void kdc_train_plan_free(kdc_train_plan *p) {
  kd_model_free(&p->student);
  kd_model_free(&p->teacher);
  kd_params_free(&p->params);
  kd_params_free(&p->teacher_params);
  kd_step_free(p->student_prog);
  kd_step_free(p->teacher_prog);
  kd_graph_free(p->objective);
  kd_graph_free(p->eval_ce);
  free(p->teacher_file);
  free(p->save_path);
  free(p->ckpt_path);
  free(p->metrics_path);
  free(p->data_path);
  memset(p, 0, sizeof *p);
}
