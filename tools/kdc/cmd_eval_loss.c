/* kdc eval-loss SPEC.kd --teacher T.npy --student S.npy [--labels L.npy]
 *               [--grad-out G.npy] [--threads N] [--reference] [--objective NAME]
 *               [--time] [--grad-dtype f32|bf16]
 *
 * Evaluates the spec's objective on logits read from files: prints
 * `loss: <9 significant digits>` and writes d loss / d student logits as
 * float32 [N, V]. Every input is validated before anything runs: a bad file
 * is a message naming it and exit status 1, never a crash. docs/losses.md
 * describes the command for users.
 *
 * Legend: N = rows (tokens), V = vocabulary. */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commands.h"
#include "loss.h"
#include "gpu_eval.h"
#include "loss_spec.h"
#include "npy.h"
#include "refexec.h"
#include "safetensors.h"
#include "threadpool.h"

#define CMD "kdc eval-loss"
#define MAX_TEACHERS 8
#define MAX_INPUT_NAME 160 /* "teacher." and an instance name (as passes/lower.c) */

/* A --teacher option: FILE, or NAME=FILE for the teacher instance NAME. */
typedef struct teacher_arg {
  char name[64]; /* "" when unnamed */
  const char *path;
} teacher_arg;

typedef struct eval_args {
  const char *spec, *student, *labels, *grad_out, *objective;
  teacher_arg teacher[MAX_TEACHERS];
  int nteachers;
  int threads;    /* 0: every CPU */
  bool reference; /* run the double-precision reference executor */
  bool time;      /* print how long each phase took */
  bool cuda;      /* --device cuda: the PTX kernels on the GPU (gpu_eval.h) */
  kd_dtype grad_dtype; /* of --grad-out: KD_F32 or KD_BF16 */
} eval_args;

static void eval_usage(FILE *out) {
  fprintf(out,
          "usage: kdc eval-loss SPEC.kd --teacher T.npy --student S.npy [--labels L.npy]\n"
          "                     [--grad-out G.npy] [--threads N] [--reference]\n"
          "                     [--objective NAME] [--time] [--device cpu|cuda]\n"
          "                     [--grad-dtype f32|bf16]\n"
          "\n"
          "Evaluates the objective of SPEC.kd on teacher and student logits and prints\n"
          "`loss: VALUE` (9 significant digits).\n"
          "\n"
          "options:\n"
          "  --teacher FILE   teacher logits [N, V]: float32, or bfloat16 stored as uint16;\n"
          "                   FILE.safetensors:NAME reads tensor NAME of a safetensors file;\n"
          "                   an objective with several teachers takes one --teacher\n"
          "                   INSTANCE=FILE for each\n"
          "  --student FILE   student logits [N, V], the same\n"
          "  --labels FILE    int32 or int64 labels [N]; rows whose label is the objective's\n"
          "                   ignore_index (-100 by default) count in no mean\n"
          "  --grad-out FILE  write d loss / d student logits there, float32 [N, V]\n"
          "  --grad-dtype bf16 the kernel stores the gradient in bfloat16 (rounded to\n"
          "                   nearest even) and FILE holds it as uint16 [N, V]\n"
          "  --objective NAME the objective to evaluate (default: the one a train block\n"
          "                   minimises, else the unnamed one)\n"
          "  --threads N      worker threads for the compiled kernel (default: every CPU)\n"
          "  --reference      run the double-precision reference executor instead\n"
          "  --device cuda    run the fused kernels on the first NVIDIA GPU (PTX through\n"
          "                   the CUDA driver; docs/gpu.md); cpu is the default\n"
          "  --time           print the time of each phase to stderr, and the kernel's\n"
          "                   effective bandwidth (3 x N x V x 4 bytes / time)\n"
          "  -h, --help       print this help\n"
          "\n"
          "exit status: 0 success, 1 a bad spec or bad input data, 2 a usage error.\n");
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, CMD ": ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see 'kdc eval-loss --help')\n");
  va_end(ap);
  return KDC_EXIT_USAGE;
}

static int parse_args(int argc, char **argv, eval_args *a) {
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    const char *teacher = NULL;
    const char **slot = !strcmp(s, "--teacher")     ? &teacher
                        : !strcmp(s, "--student")   ? &a->student
                        : !strcmp(s, "--labels")    ? &a->labels
                        : !strcmp(s, "--grad-out")  ? &a->grad_out
                        : !strcmp(s, "--objective") ? &a->objective
                                                    : NULL;
    if (slot || !strcmp(s, "--threads")) {
      if (i + 1 >= argc) return usage_error("option '%s' needs a value", s);
      const char *v = argv[++i];
      if (slot == &teacher) {
        if (a->nteachers == MAX_TEACHERS) return usage_error("more than %d teachers", MAX_TEACHERS);
        teacher_arg *t = &a->teacher[a->nteachers++];
        size_t n = strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789");
        bool named = n > 0 && n < sizeof t->name && v[n] == '=' && !(v[0] >= '0' && v[0] <= '9');
        if (named) snprintf(t->name, sizeof t->name, "%.*s", (int)n, v);
        t->path = named ? v + n + 1 : v;
        continue;
      }
      if (slot) {
        *slot = v;
        continue;
      }
      char *end;
      long n = strtol(v, &end, 10);
      if (!*v || *end || n < 1 || n > 1024)
        return usage_error("--threads needs a number from 1 to 1024, not '%s'", v);
      a->threads = (int)n;
    } else if (!strcmp(s, "--device")) {
      if (i + 1 >= argc) return usage_error("option '%s' needs a value", s);
      const char *v = argv[++i];
      if (strcmp(v, "cpu") && strcmp(v, "cuda")) return usage_error("--device is cpu or cuda, not '%s'", v);
      a->cuda = !strcmp(v, "cuda");
    } else if (!strcmp(s, "--grad-dtype")) {
      if (i + 1 >= argc) return usage_error("option '%s' needs a value", s);
      const char *v = argv[++i];
      if (strcmp(v, "f32") && strcmp(v, "bf16")) return usage_error("--grad-dtype is f32 or bf16, not '%s'", v);
      a->grad_dtype = strcmp(v, "bf16") ? KD_F32 : KD_BF16;
    } else if (!strcmp(s, "--reference")) {
      a->reference = true;
    } else if (!strcmp(s, "--time")) {
      a->time = true;
    } else if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
      eval_usage(stdout);
      return -1;
    } else if (s[0] == '-' && s[1]) {
      return usage_error("unknown option '%s'", s);
    } else if (a->spec) {
      return usage_error("one spec at a time ('%s' is a second one)", s);
    } else {
      a->spec = s;
    }
  }
  if (!a->spec) return usage_error("no spec given");
  if (!a->student) return usage_error("--student is required");
  return KDC_EXIT_OK;
}

/* ---- inputs ---------------------------------------------------------------- */

/* A bad input: the message, and exit status 1. */
#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static int input_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, CMD ": ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  return KDC_EXIT_USER;
}

/* FILE.safetensors:NAME: tensor NAME of a safetensors file. */
static int read_safetensors(const char *spec, const char *colon, kd_array *a) {
  char path[4096], err[512];
  snprintf(path, sizeof path, "%.*s", (int)(colon - spec), spec);
  kd_safetensors *st = NULL;
  if (kd_st_open(path, &st, err, sizeof err) != KD_OK) return input_error("%s", err);
  const kd_st_tensor *t = kd_st_find(st, colon + 1);
  int rc = KDC_EXIT_OK;
  if (!t) {
    rc = input_error("%s: no tensor named '%s'", path, colon + 1);
  } else if (kd_st_to_array(t, a, err, sizeof err) != KD_OK) {
    rc = input_error("%s", err);
  }
  kd_st_close(st);
  return rc;
}

/* An .npy file, or FILE.safetensors:NAME. */
static int read_array(const char *spec, kd_array *a) {
  const char *ext = strstr(spec, ".safetensors:");
  if (ext) return read_safetensors(spec, ext + strlen(".safetensors"), a);
  char err[512];
  if (kd_npy_read(spec, a, err, sizeof err) != KD_OK) return input_error("%s", err);
  return KDC_EXIT_OK;
}

static double logit_at(const kd_array *a, int64_t i) {
  if (a->dtype == KD_BF16) return kd_bf16_to_f32(((const uint16_t *)a->data)[i]);
  return ((const float *)a->data)[i];
}

/* Logits: float32 or bf16, [N, V] with V > 0, no NaN and no +inf; -inf is a
 * token the model rules out, allowed unless it fills a row (no softmax). */
static int check_logits(const char *what, const char *path, const kd_array *a) {
  if (a->dtype != KD_F32 && a->dtype != KD_BF16)
    return input_error("%s: %s logits must be float32 or bfloat16 (as uint16), not %s", path, what,
                       kd_dtype_name(a->dtype));
  if (a->rank != 2)
    return input_error("%s: %s logits must be a 2-d array [N, V], not %d-d", path, what, a->rank);
  if (a->shape[1] == 0) return input_error("%s: %s logits have an empty vocabulary", path, what);
  for (int64_t r = 0; r < a->shape[0]; r++) {
    bool possible = false; /* some token of the row has a finite logit */
    for (int64_t c = 0; c < a->shape[1]; c++) {
      double x = logit_at(a, r * a->shape[1] + c);
      if (isnan(x) || x == INFINITY)
        return input_error("%s: %s logits hold %s at row %lld, column %lld", path, what,
                           isnan(x) ? "NaN" : "+inf", (long long)r, (long long)c);
      possible |= x != -INFINITY;
    }
    if (!possible)
      return input_error("%s: %s logits are -inf everywhere in row %lld", path, what, (long long)r);
  }
  return KDC_EXIT_OK;
}

static int64_t label_at(const kd_array *a, int64_t i) {
  return a->dtype == KD_I32 ? ((const int32_t *)a->data)[i] : ((const int64_t *)a->data)[i];
}

/* Labels: int32 or int64, [N] (or [N, 1]), each in [0, V) or ignore_index. */
static int check_labels(const char *path, const kd_array *a, int64_t n, int64_t v,
                        long long ignore) {
  if (a->dtype != KD_I32 && a->dtype != KD_I64)
    return input_error("%s: labels must be int32 or int64, not %s", path, kd_dtype_name(a->dtype));
  bool ok = (a->rank == 1 || (a->rank == 2 && a->shape[1] == 1)) && a->shape[0] == n;
  if (!ok)
    return input_error("%s: labels must be a 1-d array of %lld entries (one per row)", path,
                       (long long)n);
  for (int64_t i = 0; i < n; i++) {
    int64_t y = label_at(a, i);
    if (y != ignore && (y < 0 || y >= v))
      return input_error(
          "%s: label %lld at row %lld is outside the vocabulary [0, %lld) and is not "
          "ignore_index (%lld)",
          path, (long long)y, (long long)i, (long long)v, ignore);
  }
  return KDC_EXIT_OK;
}

/* Copies a [N, V0] logits array into a new f32-or-bf16 [N, v] one: columns past
 * V0 get -inf (probability 0), columns past v are dropped. */
static int resize_vocab(kd_array *a, int64_t v) {
  if (a->shape[1] == v) return KDC_EXIT_OK;
  kd_array b;
  int64_t shape[2] = {a->shape[0], v};
  if (kd_array_alloc_uninit(&b, a->dtype, 2, shape) != KD_OK) return input_error("out of memory");
  size_t es = kd_dtype_size(a->dtype);
  int64_t keep = a->shape[1] < v ? a->shape[1] : v;
  for (int64_t r = 0; r < a->shape[0]; r++) {
    char *dst = (char *)b.data + (size_t)(r * v) * es;
    memcpy(dst, (char *)a->data + (size_t)(r * a->shape[1]) * es, (size_t)keep * es);
    for (int64_t c = keep; c < v; c++) {
      if (a->dtype == KD_BF16)
        ((uint16_t *)dst)[c] = kd_f32_to_bf16(-INFINITY);
      else
        ((float *)dst)[c] = -INFINITY;
    }
  }
  kd_array_free(a);
  *a = b;
  return KDC_EXIT_OK;
}

/* Makes the teachers t[0..nt) agree with the student s on N, and on V as
 * the objective's vocab_align says. */
static int align_vocab(const eval_args *args, kd_vocab_align how, kd_array *t, int nt,
                       kd_array *s) {
  int64_t vs = s->shape[1], v = vs;
  for (int i = 0; i < nt; i++) {
    int64_t vt = t[i].shape[1];
    if (t[i].shape[0] != s->shape[0])
      return input_error(
          "teacher and student disagree on the number of rows: %lld (%s) and %lld (%s)",
          (long long)t[i].shape[0], args->teacher[i].path, (long long)s->shape[0],
          args->student);
    if (vt != vs && how == KD_ALIGN_ERROR)
      return input_error(
          "vocabulary mismatch: the teacher's logits have %lld entries per row, the "
          "student's %lld (to align them, set vocab_align = \"pad\" or \"truncate\" in "
          "the objective)",
          (long long)vt, (long long)vs);
    v = how == KD_ALIGN_PAD ? (vt > v ? vt : v) : (vt < v ? vt : v);
  }
  int rc = resize_vocab(s, v);
  for (int i = 0; i < nt && !rc; i++) rc = resize_vocab(&t[i], v);
  return rc;
}

/* Labels as int64 [N], what both executors read. */
static int widen_labels(kd_array *a) {
  if (a->dtype == KD_I64) return KDC_EXIT_OK;
  kd_array b;
  int64_t n = a->shape[0];
  if (kd_array_alloc_uninit(&b, KD_I64, 1, &n) != KD_OK) return input_error("out of memory");
  for (int64_t i = 0; i < n; i++) ((int64_t *)b.data)[i] = label_at(a, i);
  kd_array_free(a);
  *a = b;
  return KDC_EXIT_OK;
}

/* Pairs the graph's teacher inputs with the --teacher options, reordering
 * args->teacher and t[] to the graph's order: one teacher is input
 * "teacher" and takes one option; several are "teacher.NAME" and take one
 * NAME=FILE option each. */
static int match_teachers(const kd_graph *g, const kd_lower_info *info, eval_args *args,
                          kd_array *t, char (*tnames)[MAX_INPUT_NAME], int *nt) {
  *nt = info->nteachers;
  if (*nt == 1) snprintf(tnames[0], MAX_INPUT_NAME, "teacher");
  for (size_t id = 0, k = 0; *nt > 1 && id < kd_graph_size(g); id++) {
    const kd_node *n = kd_graph_node(g, (kd_node_id)id);
    if (n->op == KD_IR_INPUT && !strncmp(n->name, "teacher.", 8))
      snprintf(tnames[k++], MAX_INPUT_NAME, "%s", n->name);
  }
  if (*nt == 1 && args->nteachers != 1)
    return args->nteachers ? usage_error("the objective reads one teacher, not %d",
                                         args->nteachers)
                           : usage_error("the objective reads the teacher's logits: --teacher "
                                         "is required");
  for (int i = 0; *nt > 1 && i < *nt; i++) {
    const char *want = tnames[i] + 8;
    int j = i;
    while (j < args->nteachers && strcmp(args->teacher[j].name, want)) j++;
    if (j == args->nteachers)
      return usage_error("the objective reads teacher '%s': pass --teacher %s=FILE", want, want);
    teacher_arg ta = args->teacher[i];
    kd_array ka = t[i];
    args->teacher[i] = args->teacher[j], t[i] = t[j];
    args->teacher[j] = ta, t[j] = ka;
  }
  if (*nt > 1 && args->nteachers > *nt)
    return usage_error("the objective reads no teacher '%s'", args->teacher[*nt].name);
  return KDC_EXIT_OK;
}

/* ---- running --------------------------------------------------------------- */

/* The arrays of one evaluation, aligned and checked. grad is [N, V] of
 * grad_dtype. */
typedef struct eval_io {
  const kd_array *t, *s, *labels; /* t[nt] teachers; labels empty when unused */
  const char (*tnames)[MAX_INPUT_NAME]; /* the teachers' graph inputs */
  int nt;
  int64_t n, v;
  void *grad;
  kd_dtype grad_dtype;
  double loss;
  double t_compile, t_run; /* seconds */
} eval_io;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* x rounded to bfloat16, to nearest even, once: (float)x alone could round
 * onto a bf16 tie that x itself is not on. */
static uint16_t bf16_of_double(double x) {
  float f = (float)x;
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0xffffu) == 0x8000u && (double)f != x && !isinf(f))
    return (uint16_t)((u >> 16) + (fabs(x) > fabs((double)f)));
  return kd_f32_to_bf16(f);
}

/* The reference executor, in double. */
static int run_reference(const kd_graph *g, eval_io *io) {
  kd_ref_input in[MAX_TEACHERS + 2];
  size_t nin = 0;
  in[nin++] = (kd_ref_input){"student", io->s->dtype, 2, {io->n, io->v}, io->s->data};
  for (int i = 0; i < io->nt; i++)
    in[nin++] = (kd_ref_input){io->tnames[i], io->t[i].dtype, 2, {io->n, io->v}, io->t[i].data};
  if (kd_graph_find_input(g, "labels") != KD_NONE)
    in[nin++] = (kd_ref_input){"labels", KD_I64, 2, {io->n, 1}, io->labels->data};
  size_t nout = kd_graph_noutputs(g);
  kd_ref_value *out = calloc(nout ? nout : 1, sizeof *out);
  if (!out) return input_error("out of memory");
  char err[512];
  double t0 = now();
  kd_status st = kd_ref_exec(g, in, nin, out, err, sizeof err);
  io->t_run = now() - t0;
  if (st != KD_OK) {
    free(out);
    return input_error("the reference executor failed: %s", err);
  }
  for (size_t i = 0; i < nout; i++) {
    const char *name = kd_graph_output_name(g, i);
    if (!strcmp(name, "loss")) io->loss = out[i].data[0];
    if (!strcmp(name, "grad"))
      for (size_t k = 0; k < out[i].size; k++) {
        if (io->grad_dtype == KD_BF16) ((uint16_t *)io->grad)[k] = bf16_of_double(out[i].data[k]);
        else ((float *)io->grad)[k] = (float)out[i].data[k];
      }
    kd_ref_value_free(&out[i]);
  }
  free(out);
  return KDC_EXIT_OK;
}

/* The fused kernel, JIT-compiled. A graph it cannot run yet (several
 * teachers, or one the scheduler rejects) runs on the reference executor,
 * with a warning. */
static int run_compiled(const kd_graph *g, eval_io *io, int threads, bool cuda) {
  char err[512];
  if (io->nt > 1) {
    fprintf(stderr, CMD ": warning: the fused kernel reads one teacher; running the reference "
            "executor\n");
    return run_reference(g, io);
  }
  if (cuda) {
    kd_loss_io lio = {.teacher = io->nt ? io->t->data : NULL,
                      .teacher_dtype = io->nt ? io->t->dtype : KD_F32,
                      .student = io->s->data, .student_dtype = io->s->dtype,
                      .labels = io->labels->data, .N = io->n, .V = io->v,
                      .grad = io->grad, .loss = &io->loss, .grad_dtype = io->grad_dtype};
    return kdc_eval_cuda(CMD, g, &lio, &io->t_compile, &io->t_run);
  }
  kd_loss *l = NULL;
  double t0 = now();
  kd_loss_options lo = {.grad_dtype = io->grad_dtype};
  kd_status st = kd_loss_compile(g, &lo, &l, err, sizeof err);
  io->t_compile = now() - t0;
  if (st == KD_ERR_UNSUPPORTED) {
    fprintf(stderr, CMD ": warning: no fused kernel for this loss (%s); running the reference "
            "executor\n", err);
    return run_reference(g, io);
  }
  if (st != KD_OK) return input_error("cannot compile the loss: %s", err);
  kd_pool *pool = NULL;
  st = kd_pool_new(threads, &pool);
  if (st == KD_OK) {
    kd_loss_io lio = {.teacher = io->nt ? io->t->data : NULL,
                      .teacher_dtype = io->nt ? io->t->dtype : KD_F32,
                      .student = io->s->data, .student_dtype = io->s->dtype,
                      .labels = io->labels->data, .N = io->n, .V = io->v,
                      .grad = io->grad, .loss = &io->loss, .grad_dtype = io->grad_dtype};
    t0 = now();
    st = kd_loss_eval(l, &lio, pool, err, sizeof err);
    io->t_run = now() - t0;
    kd_pool_free(pool);
  } else {
    snprintf(err, sizeof err, "cannot start %d threads", threads);
  }
  kd_loss_free(l);
  return st == KD_OK ? KDC_EXIT_OK : input_error("%s", err);
}

/* Writes the gradient as float32 [N, vs] (bf16 as uint16): the first
 * columns of the [N, v] gradient; columns the vocabulary alignment dropped
 * get 0. */
static int write_grad(const char *path, const eval_io *io, int64_t vs) {
  kd_array out;
  int64_t shape[2] = {io->n, vs};
  if (kd_array_alloc(&out, io->grad_dtype == KD_BF16 ? KD_BF16 : KD_F32, 2, shape) != KD_OK)
    return input_error("out of memory");
  size_t es = kd_dtype_size(out.dtype);
  int64_t keep = io->v < vs ? io->v : vs;
  for (int64_t r = 0; r < io->n; r++)
    memcpy((char *)out.data + (size_t)(r * vs) * es, (const char *)io->grad + (size_t)(r * io->v) * es,
           (size_t)keep * es);
  char err[512];
  kd_status st = kd_npy_write(path, &out, err, sizeof err);
  kd_array_free(&out);
  return st == KD_OK ? KDC_EXIT_OK : input_error("%s", err);
}

int kdc_cmd_eval_loss(int argc, char **argv) {
  eval_args args = {0};
  int rc = parse_args(argc, argv, &args);
  if (rc) return rc < 0 ? KDC_EXIT_OK : rc;

  kd_array t[MAX_TEACHERS] = {{0}}, s = {0}, labels = {0}, grad = {0};
  char tnames[MAX_TEACHERS][MAX_INPUT_NAME];
  int nt = 0;
  kd_graph *g = NULL;
  double t_start = now(), t_read = 0, t_passes = 0, t_write = 0;
  if ((rc = read_array(args.student, &s)) || (rc = check_logits("student", args.student, &s)))
    goto done;
  for (int i = 0; i < args.nteachers; i++) {
    const char *path = args.teacher[i].path;
    if ((rc = read_array(path, &t[i])) || (rc = check_logits("teacher", path, &t[i]))) goto done;
    if (t[i].dtype != t[0].dtype) {
      rc = input_error("%s: the teachers' logits must share a dtype (%s, not %s)", path,
                       kd_dtype_name(t[0].dtype), kd_dtype_name(t[i].dtype));
      goto done;
    }
  }
  if (args.labels && (rc = read_array(args.labels, &labels))) goto done;
  t_read = now() - t_start;

  kd_lower_options opt = {.teacher_dtype = args.nteachers ? t[0].dtype : KD_F32,
                          .student_dtype = s.dtype,
                          .labels = args.labels != NULL,
                          .objective = args.objective};
  kd_lower_info info;
  if ((rc = kdc_lower_spec(args.spec, &opt, &g, &info)) ||
      (rc = match_teachers(g, &info, &args, t, tnames, &nt)))
    goto done;
  if (info.uses_labels && !args.labels) {
    rc = usage_error("the objective reads labels: --labels is required");
    goto done;
  }
  int64_t vs = s.shape[1];
  if (nt && (rc = align_vocab(&args, info.vocab_align, t, nt, &s))) goto done;
  eval_io io = {.t = t, .tnames = (const char(*)[MAX_INPUT_NAME])tnames, .nt = nt, .s = &s, .labels = &labels,
                .n = s.shape[0], .v = s.shape[1]};
  if (args.labels && ((rc = check_labels(args.labels, &labels, io.n, io.v, info.ignore_index)) ||
                      (rc = widen_labels(&labels))))
    goto done;
  if ((rc = kdc_run_pipeline(CMD, &g, NULL))) goto done;
  t_passes = now() - t_start - t_read;
  int64_t shape[2] = {io.n, io.v};
  if (kd_array_alloc(&grad, args.grad_dtype == KD_BF16 ? KD_BF16 : KD_F32, 2, shape) != KD_OK) {
    rc = input_error("out of memory");
    goto done;
  }
  io.grad = grad.data;
  io.grad_dtype = args.grad_dtype;
  /* An empty batch has nothing to fuse: the reference gives its loss, 0. */
  bool reference = args.reference || io.n == 0;
  rc = reference ? run_reference(g, &io) : run_compiled(g, &io, args.threads, args.cuda);
  if (rc) goto done;
  printf("loss: %.9g\n", io.loss);
  double t0 = now();
  if (args.grad_out) rc = write_grad(args.grad_out, &io, vs);
  t_write = now() - t0;
  if (args.time) {
    double bytes = 3.0 * (double)io.n * (double)io.v * 4;
    fprintf(stderr,
            "time: read and check %.3f s, lower and passes %.3f s, compile %.3f s, "
            "run %.4f s (%.1f GB/s), write %.3f s\n",
            t_read, t_passes, io.t_compile, io.t_run, bytes / io.t_run * 1e-9, t_write);
  }
done:
  kd_graph_free(g);
  for (int i = 0; i < MAX_TEACHERS; i++) kd_array_free(&t[i]);
  kd_array_free(&s);
  kd_array_free(&labels);
  kd_array_free(&grad);
  return rc;
}
