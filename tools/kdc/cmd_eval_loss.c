/* kdc eval-loss SPEC.kd --teacher T.npy --student S.npy [--labels L.npy]
 *               [--grad-out G.npy] [--threads N] [--reference]
 *
 * Evaluates the spec's objective on logits read from files: prints
 * `loss: <9 significant digits>` and writes d loss / d student logits as
 * float32 [N, V]. Every input is validated before anything runs: a bad file
 * is a message naming it and exit status 1, never a crash.
 *
 * Legend: N = rows (tokens), V = vocabulary. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "loss_spec.h"
#include "npy.h"
#include "refexec.h"

#define CMD "kdc eval-loss"

typedef struct eval_args {
  const char *spec, *teacher, *student, *labels, *grad_out;
  int threads;    /* 0: every CPU */
  bool reference; /* run the double-precision reference executor */
} eval_args;

static void eval_usage(FILE *out) {
  fprintf(out,
          "usage: kdc eval-loss SPEC.kd --teacher T.npy --student S.npy [--labels L.npy]\n"
          "                     [--grad-out G.npy] [--threads N] [--reference]\n"
          "\n"
          "Evaluates the objective of SPEC.kd on teacher and student logits and prints\n"
          "`loss: VALUE` (9 significant digits).\n"
          "\n"
          "options:\n"
          "  --teacher FILE   teacher logits [N, V]: float32, or bfloat16 stored as uint16;\n"
          "                   FILE.safetensors:NAME reads tensor NAME of a safetensors file\n"
          "  --student FILE   student logits [N, V], the same\n"
          "  --labels FILE    int32 or int64 labels [N]; rows whose label is the objective's\n"
          "                   ignore_index (-100 by default) count in no mean\n"
          "  --grad-out FILE  write d loss / d student logits there, float32 [N, V]\n"
          "  --threads N      worker threads for the compiled kernel (default: every CPU)\n"
          "  --reference      run the double-precision reference executor instead\n"
          "  -h, --help       print this help\n"
          "\n"
          "exit status: 0 success, 1 a bad spec or bad input data, 2 a usage error.\n");
}

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, CMD ": ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n(see 'kdc eval-loss --help')\n");
  return KDC_EXIT_USAGE;
}

static int parse_args(int argc, char **argv, eval_args *a) {
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    const char **slot = !strcmp(s, "--teacher")    ? &a->teacher
                        : !strcmp(s, "--student")  ? &a->student
                        : !strcmp(s, "--labels")   ? &a->labels
                        : !strcmp(s, "--grad-out") ? &a->grad_out
                                                   : NULL;
    if (slot || !strcmp(s, "--threads")) {
      if (i + 1 >= argc) return usage_error("option '%s' needs a value", s);
      const char *v = argv[++i];
      if (slot) {
        *slot = v;
        continue;
      }
      char *end;
      long n = strtol(v, &end, 10);
      if (!*v || *end || n < 1 || n > 1024)
        return usage_error("--threads needs a number from 1 to 1024, not '%s'", v);
      a->threads = (int)n;
    } else if (!strcmp(s, "--reference")) {
      a->reference = true;
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
  if (!a->spec) return usage_error("no spec given%s", "");
  if (!a->student) return usage_error("--student is required%s", "");
  return KDC_EXIT_OK;
}

/* ---- inputs ---------------------------------------------------------------- */

static int input_error(const char *msg) {
  fprintf(stderr, CMD ": %s\n", msg);
  return KDC_EXIT_USER;
}

static int read_array(const char *path, kd_array *a) {
  char err[512];
  if (kd_npy_read(path, a, err, sizeof err) != KD_OK) return input_error(err);
  return KDC_EXIT_OK;
}

static double logit_at(const kd_array *a, int64_t i) {
  if (a->dtype == KD_BF16) return kd_bf16_to_f32(((const uint16_t *)a->data)[i]);
  return ((const float *)a->data)[i];
}

/* Logits: float32 or bf16, [N, V] with V > 0, no NaN and no +inf (-inf is a
 * token the model rules out, and is allowed). */
static int check_logits(const char *what, const char *path, const kd_array *a) {
  char msg[512];
  if (a->dtype != KD_F32 && a->dtype != KD_BF16) {
    snprintf(msg, sizeof msg, "%s: %s logits must be float32 or bfloat16 (as uint16), not %s",
             path, what, kd_dtype_name(a->dtype));
    return input_error(msg);
  }
  if (a->rank != 2) {
    snprintf(msg, sizeof msg, "%s: %s logits must be a 2-d array [N, V], not %d-d", path, what,
             a->rank);
    return input_error(msg);
  }
  if (a->shape[1] == 0) {
    snprintf(msg, sizeof msg, "%s: %s logits have an empty vocabulary", path, what);
    return input_error(msg);
  }
  int64_t n = a->shape[0] * a->shape[1];
  for (int64_t i = 0; i < n; i++) {
    double x = logit_at(a, i);
    if (isnan(x) || x == INFINITY) {
      snprintf(msg, sizeof msg, "%s: %s logits hold %s at row %lld, column %lld", path, what,
               isnan(x) ? "NaN" : "+inf", (long long)(i / a->shape[1]),
               (long long)(i % a->shape[1]));
      return input_error(msg);
    }
  }
  return KDC_EXIT_OK;
}

static int64_t label_at(const kd_array *a, int64_t i) {
  return a->dtype == KD_I32 ? ((const int32_t *)a->data)[i] : ((const int64_t *)a->data)[i];
}

/* Labels: int32 or int64, [N] (or [N, 1]), each in [0, V) or ignore_index. */
static int check_labels(const char *path, const kd_array *a, int64_t n, int64_t v,
                        long long ignore) {
  char msg[512];
  if (a->dtype != KD_I32 && a->dtype != KD_I64) {
    snprintf(msg, sizeof msg, "%s: labels must be int32 or int64, not %s", path,
             kd_dtype_name(a->dtype));
    return input_error(msg);
  }
  bool ok = (a->rank == 1 || (a->rank == 2 && a->shape[1] == 1)) && a->shape[0] == n;
  if (!ok) {
    snprintf(msg, sizeof msg, "%s: labels must be a 1-d array of %lld entries (one per row)",
             path, (long long)n);
    return input_error(msg);
  }
  for (int64_t i = 0; i < n; i++) {
    int64_t y = label_at(a, i);
    if (y != ignore && (y < 0 || y >= v)) {
      snprintf(msg, sizeof msg,
               "%s: label %lld at row %lld is outside the vocabulary [0, %lld) and is not "
               "ignore_index (%lld)",
               path, (long long)y, (long long)i, (long long)v, ignore);
      return input_error(msg);
    }
  }
  return KDC_EXIT_OK;
}

/* Copies a [N, V0] logits array into a new f32-or-bf16 [N, v] one: columns past
 * V0 get -inf (probability 0), columns past v are dropped. */
static int resize_vocab(kd_array *a, int64_t v) {
  if (a->shape[1] == v) return KDC_EXIT_OK;
  kd_array b;
  int64_t shape[2] = {a->shape[0], v};
  if (kd_array_alloc_uninit(&b, a->dtype, 2, shape) != KD_OK)
    return input_error("out of memory");
  size_t es = kd_dtype_size(a->dtype);
  int64_t keep = a->shape[1] < v ? a->shape[1] : v;
  for (int64_t r = 0; r < a->shape[0]; r++) {
    char *dst = (char *)b.data + (size_t)(r * v) * es;
    memcpy(dst, (char *)a->data + (size_t)(r * a->shape[1]) * es, (size_t)keep * es);
    for (int64_t c = keep; c < v; c++) {
      if (a->dtype == KD_BF16) ((uint16_t *)dst)[c] = kd_f32_to_bf16(-INFINITY);
      else ((float *)dst)[c] = -INFINITY;
    }
  }
  kd_array_free(a);
  *a = b;
  return KDC_EXIT_OK;
}

/* Makes teacher and student agree on V as the objective's vocab_align says. */
static int align_vocab(const eval_args *args, kd_vocab_align how, kd_array *t, kd_array *s) {
  int64_t vt = t->shape[1], vs = s->shape[1];
  if (t->shape[0] != s->shape[0]) {
    char msg[512];
    snprintf(msg, sizeof msg,
             "teacher and student disagree on the number of rows: %lld (%s) and %lld (%s)",
             (long long)t->shape[0], args->teacher, (long long)s->shape[0], args->student);
    return input_error(msg);
  }
  if (vt == vs) return KDC_EXIT_OK;
  if (how == KD_ALIGN_ERROR) {
    char msg[512];
    snprintf(msg, sizeof msg,
             "vocabulary mismatch: the teacher's logits have %lld entries per row, the "
             "student's %lld (to align them, set vocab_align = \"pad\" or \"truncate\" in "
             "the objective)",
             (long long)vt, (long long)vs);
    return input_error(msg);
  }
  int64_t v = how == KD_ALIGN_PAD ? (vt > vs ? vt : vs) : (vt < vs ? vt : vs);
  int rc = resize_vocab(t, v);
  return rc ? rc : resize_vocab(s, v);
}

/* ---- running --------------------------------------------------------------- */

/* The reference executor: loss and gradient in double. grad is [N, V]. */
static int run_reference(const kd_graph *g, const kd_array *t, const kd_array *s,
                         const kd_array *labels, double *loss, double **grad) {
  kd_ref_input in[3];
  size_t nin = 0;
  in[nin++] = (kd_ref_input){"student", s->dtype, 2, {s->shape[0], s->shape[1]}, s->data};
  if (kd_graph_find_input(g, "teacher") != KD_NONE)
    in[nin++] = (kd_ref_input){"teacher", t->dtype, 2, {t->shape[0], t->shape[1]}, t->data};
  if (kd_graph_find_input(g, "labels") != KD_NONE)
    in[nin++] = (kd_ref_input){"labels", labels->dtype, 2, {labels->shape[0], 1}, labels->data};
  size_t nout = kd_graph_noutputs(g);
  kd_ref_value *out = calloc(nout ? nout : 1, sizeof *out);
  if (!out) return input_error("out of memory");
  char err[512];
  if (kd_ref_exec(g, in, nin, out, err, sizeof err) != KD_OK) {
    free(out);
    fprintf(stderr, CMD ": the reference executor failed: %s\n", err);
    return KDC_EXIT_USER;
  }
  int rc = KDC_EXIT_OK;
  for (size_t i = 0; i < nout; i++) {
    const char *name = kd_graph_output_name(g, i);
    if (!strcmp(name, "loss")) *loss = out[i].data[0];
    if (!strcmp(name, "grad")) {
      *grad = out[i].data; /* ownership moves to the caller */
      out[i].data = NULL;
    }
    kd_ref_value_free(&out[i]);
  }
  free(out);
  return rc;
}

/* Writes the gradient as float32 [N, vs]: the first columns of the [N, v]
 * gradient; columns the vocabulary alignment dropped get 0. */
static int write_grad(const char *path, const double *grad, int64_t n, int64_t v, int64_t vs) {
  kd_array out;
  int64_t shape[2] = {n, vs};
  if (kd_array_alloc(&out, KD_F32, 2, shape) != KD_OK) return input_error("out of memory");
  float *o = out.data;
  int64_t keep = v < vs ? v : vs;
  for (int64_t r = 0; r < n; r++)
    for (int64_t c = 0; c < keep; c++) o[r * vs + c] = (float)grad[r * v + c];
  char err[512];
  kd_status st = kd_npy_write(path, &out, err, sizeof err);
  kd_array_free(&out);
  return st == KD_OK ? KDC_EXIT_OK : input_error(err);
}

int kdc_cmd_eval_loss(int argc, char **argv) {
  eval_args args = {0};
  int rc = parse_args(argc, argv, &args);
  if (rc) return rc < 0 ? KDC_EXIT_OK : rc;

  kd_array t = {0}, s = {0}, labels = {0};
  kd_graph *g = NULL;
  double *grad = NULL;
  if ((rc = read_array(args.student, &s)) || (rc = check_logits("student", args.student, &s)))
    goto done;
  if (args.teacher &&
      ((rc = read_array(args.teacher, &t)) || (rc = check_logits("teacher", args.teacher, &t))))
    goto done;
  if (args.labels && (rc = read_array(args.labels, &labels))) goto done;

  kd_lower_options opt = {.teacher_dtype = args.teacher ? t.dtype : KD_F32,
                          .student_dtype = s.dtype,
                          .labels = args.labels != NULL};
  kd_lower_info info;
  if ((rc = kdc_lower_spec(args.spec, &opt, &g, &info))) goto done;
  if (info.uses_teacher && !args.teacher) {
    rc = usage_error("the objective reads the teacher's logits: --teacher is required%s", "");
    goto done;
  }
  if (info.uses_labels && !args.labels) {
    rc = usage_error("the objective reads labels: --labels is required%s", "");
    goto done;
  }
  int64_t vs = s.shape[1];
  if (info.uses_teacher && (rc = align_vocab(&args, info.vocab_align, &t, &s))) goto done;
  int64_t n = s.shape[0], v = s.shape[1];
  if (args.labels && (rc = check_labels(args.labels, &labels, n, v, info.ignore_index)))
    goto done;
  if ((rc = kdc_run_pipeline(CMD, &g, NULL))) goto done;

  double loss = NAN;
  if ((rc = run_reference(g, &t, &s, &labels, &loss, &grad))) goto done;
  printf("loss: %.9g\n", loss);
  if (args.grad_out) {
    if (!grad) rc = input_error("the pipeline produced no gradient");
    else rc = write_grad(args.grad_out, grad, n, v, vs);
  }
done:
  free(grad);
  kd_graph_free(g);
  kd_array_free(&t);
  kd_array_free(&s);
  kd_array_free(&labels);
  return rc;
}
