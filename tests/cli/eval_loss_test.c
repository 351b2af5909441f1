/* End-to-end tests of `kdc eval-loss`.
 *
 * Usage: eval_loss_test KDC EXAMPLES_DIR SPECS_DIR WORK_DIR PART
 * PART (examples, semantics or errors) picks a third of the checks, so ctest
 * can run them side by side; each part works in its own WORK_DIR.
 *
 * Writes small .npy inputs (with its own writer: no numpy, no kdc code), runs
 * the kdc binary, and checks:
 *   - the loss of every examples/losses spec against a direct computation
 *     of the divergence in double, written here from the formulas and not
 *     through the IR;
 *   - the gradient file against central differences of that direct
 *     computation, and a few elements against central differences of the
 *     loss printed by eval-loss itself;
 *   - jsd's endpoints, a user-defined divergence, a hard/soft mix with
 *     reduction "sum", masking (all-masked batches too), bf16 inputs,
 *     vocabulary padding;
 *   - every bad input gives its exact message and exit status 1, and usage
 *     errors exit 2.
 * Legend: N = rows, V = vocabulary. */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* ---- tolerances ------------------------------------------------------------
 * LOSS_REL: the reference executor computes in double from the same f32
 *   values this test reads, so the only difference is the 9 significant
 *   digits printed: 5e-9 relative; 2e-8 leaves room for summation order.
 * GRAD_ABS: the gradient file is float32: rounding is under 6e-8 of an
 *   element's size; the double central difference (step 1e-5) is good to
 *   about 1e-10. 2e-7, relative for elements above 1, fails a wrong term of
 *   any real size.
 * FD_ABS: central differences through eval-loss use a step h of 1/512
 *   (exact in f32 for logits on a 1/256 grid): truncation h^2/6 |f'''| is
 *   under 1e-6 for these softmax losses with |f'''| < 1; 3e-6 covers it.
 *   The 9 printed digits add up to 2 x 5e-9 |L| / (2h), which grows with
 *   the loss L, so that term is added per spec (FD_PRINT). */
#define LOSS_REL 2e-8
#define GRAD_ABS 2e-7
#define FD_ABS 3e-6
#define FD_STEP (1.0 / 512)
#define FD_PRINT(loss) (1e-8 * fabs(loss) / (2 * FD_STEP))
/* KERNEL_REL, KERNEL_ABS: the compiled kernel computes in f32 (accumulating
 * row sums in f32 lanes, exp and log to about 1e-7 relative); over rows of
 * at most 64 logits its loss stays within a few 1e-7 of the double
 * reference (1.4e-7 measured on jsd), and gradient elements within 1e-7
 * (relative above 1). The kernel's own tests (tests/codegen) cover large V. */
#define KERNEL_REL 2e-6
#define KERNEL_ABS 1e-6

static const char *kdc, *examples, *specs, *work;
static int failures;

static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "FAIL: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  failures++;
}

/* ---- files ----------------------------------------------------------------- */

/* dir/name in one of a ring of buffers: valid for the next 15 calls; a path
 * kept longer is copied. */
static char *path_in(const char *dir, const char *name) {
  static char buf[16][1024];
  static int k;
  char *p = buf[k++ % 16];
  snprintf(p, sizeof buf[0], "%s/%s", dir, name);
  return p;
}

/* A version 1.0 .npy file. */
static void write_npy(const char *path, const char *descr, int rank, const int64_t *shape,
                      const void *data, size_t nbytes) {
  char dims[128] = "", hdr[256];
  size_t k = 0;
  for (int i = 0; i < rank; i++)
    k += (size_t)snprintf(dims + k, sizeof dims - k, "%lld,%s", (long long)shape[i],
                          i + 1 < rank ? " " : "");
  if (rank > 1) dims[k - 1] = '\0'; /* (4, 8) but (4,) */
  int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                   descr, dims);
  int total = 10 + n + 1;
  int pad = (64 - total % 64) % 64;
  FILE *f = fopen(path, "wb");
  if (!f) {
    fail("cannot write %s", path);
    return;
  }
  uint16_t hlen = (uint16_t)(n + pad + 1);
  fwrite("\x93NUMPY\x01\x00", 1, 8, f);
  fputc(hlen & 0xff, f);
  fputc(hlen >> 8, f);
  fwrite(hdr, 1, (size_t)n, f);
  for (int i = 0; i < pad; i++) fputc(' ', f);
  fputc('\n', f);
  fwrite(data, 1, nbytes, f);
  fclose(f);
}

static void write_f32(const char *path, int64_t n, int64_t v, const float *x) {
  int64_t shape[2] = {n, v};
  write_npy(path, "<f4", 2, shape, x, (size_t)(n * v) * sizeof(float));
}

static void write_labels(const char *path, int64_t n, const int64_t *y) {
  write_npy(path, "<i8", 1, &n, y, (size_t)n * sizeof(int64_t));
}

/* Reads the float32 [N, V] gradient eval-loss writes (any header version). */
/* An [n, v] .npy of descr ('<f4', '<u2') with elements of size bytes,
 * or NULL. */
static void *read_npy(const char *path, int64_t n, int64_t v, const char *descr, size_t size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char pre[12];
  char *g = NULL;
  if (fread(pre, 1, 10, f) == 10 && !memcmp(pre, "\x93NUMPY", 6)) {
    size_t hlen = pre[8] | (size_t)pre[9] << 8;
    if (pre[6] != 1 && fread(pre + 10, 1, 2, f) == 2)
      hlen |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    char *hdr = calloc(1, hlen + 1);
    char want[64];
    snprintf(want, sizeof want, "(%lld, %lld)", (long long)n, (long long)v);
    char quoted[16];
    snprintf(quoted, sizeof quoted, "'%s'", descr);
    if (hdr && fread(hdr, 1, hlen, f) == hlen && strstr(hdr, quoted) && strstr(hdr, want)) {
      g = malloc((size_t)(n * v) * size + 1); /* + 1: an empty array is not NULL */
      if (g && fread(g, size, (size_t)(n * v), f) != (size_t)(n * v)) {
        free(g);
        g = NULL;
      }
    }
    free(hdr);
  }
  fclose(f);
  return g;
}

static float *read_grad(const char *path, int64_t n, int64_t v) { return read_npy(path, n, v, "<f4", 4); }

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return calloc(1, 1);
  char *buf = calloc(1, 1 << 16);
  size_t n = fread(buf, 1, (1 << 16) - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* Runs `kdc ARGS` in WORK_DIR; returns its exit status, with stdout and
 * stderr in *out and *err (malloc'd). */
static int run_kdc(char **out, char **err, const char *fmt, ...) {
  char args[4096], cmd[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s >out.txt 2>err.txt", work, kdc, args);
  int st = system(cmd);
  *out = slurp(path_in(work, "out.txt"));
  *err = slurp(path_in(work, "err.txt"));
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The loss eval-loss printed, or NAN. extra holds --reference to run the
 * reference executor rather than the compiled kernel. */
static double eval_loss(const char *spec, const char *extra, bool labels) {
  char *out, *err;
  int rc = run_kdc(&out, &err, "eval-loss '%s' --teacher teacher.npy "
                   "--student student.npy %s %s", spec, labels ? "--labels labels.npy" : "",
                   extra);
  double loss = NAN;
  if (rc != 0 || sscanf(out, "loss: %lf", &loss) != 1)
    fail("%s: exit %d, stdout '%s', stderr '%s'", spec, rc, out, err);
  free(out);
  free(err);
  return loss;
}

static void expect(const char *what, int want_rc, const char *want_err, const char *fmt, ...);

/* ---- the direct computation -------------------------------------------------- */

#define VMAX 64

/* Softmax and log-softmax of x / T in double. */
static void softmax_row(const double *x, int v, double T, double *p, double *lp) {
  double m = -INFINITY, z = 0;
  for (int i = 0; i < v; i++) m = fmax(m, x[i] / T);
  for (int i = 0; i < v; i++) z += exp(x[i] / T - m);
  for (int i = 0; i < v; i++) {
    lp[i] = x[i] / T - m - log(z);
    p[i] = exp(lp[i]);
  }
}

typedef struct row_ctx {
  int v;
  double p[VMAX], q[VMAX], lp[VMAX], lq[VMAX];
  const double *t, *s;
  int64_t label;
} row_ctx;

typedef double (*row_fn)(const row_ctx *r, const double *prm);

static double kl(const double *p, const double *lp, const double *lq, int v) {
  double a = 0;
  for (int i = 0; i < v; i++)
    if (p[i] > 0) a += p[i] * (lp[i] - lq[i]);
  return a;
}

static double d_fkl(const row_ctx *r, const double *prm) { return kl(r->p, r->lp, r->lq, r->v); }
static double d_rkl(const row_ctx *r, const double *prm) { return kl(r->q, r->lq, r->lp, r->v); }
static double d_sym(const row_ctx *r, const double *prm) { return d_fkl(r, prm) + d_rkl(r, prm); }

/* beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q */
static double d_jsd(const row_ctx *r, const double *prm) {
  double b = prm[0], a = 0;
  for (int i = 0; i < r->v; i++) {
    double lm = log(b * r->p[i] + (1 - b) * r->q[i]);
    if (r->p[i] > 0) a += b * r->p[i] * (r->lp[i] - lm);
    a += (1 - b) * r->q[i] * (r->lq[i] - lm);
  }
  return a;
}

static double d_tvd(const row_ctx *r, const double *prm) {
  double a = 0;
  for (int i = 0; i < r->v; i++) a += fabs(r->p[i] - r->q[i]);
  return 0.5 * a;
}

/* KL(x || alpha x + (1 - alpha) y) */
static double skew(const double *x, const double *lx, const double *y, int v, double al) {
  double a = 0;
  for (int i = 0; i < v; i++) a += x[i] * (lx[i] - log(al * x[i] + (1 - al) * y[i]));
  return a;
}
static double d_skew_fkl(const row_ctx *r, const double *prm) {
  return skew(r->p, r->lp, r->q, r->v, prm[0]);
}
static double d_skew_rkl(const row_ctx *r, const double *prm) {
  return skew(r->q, r->lq, r->p, r->v, prm[0]);
}

/* Cichocki's alpha-beta divergence (Entropy 13, 2011, eq. 5) with its
 * cases where alpha, beta or alpha + beta is 0, term by term with pow. */
static double d_abkd(const row_ctx *r, const double *prm) {
  double al = prm[0], be = prm[1], a = 0;
  for (int i = 0; i < r->v; i++) {
    double p = r->p[i], q = r->q[i], lpq = r->lp[i] - r->lq[i];
    if (al != 0 && be != 0 && al + be != 0)
      a += -(pow(p, al) * pow(q, be) - al / (al + be) * pow(p, al + be) -
             be / (al + be) * pow(q, al + be)) / (al * be);
    else if (al != 0 && be == 0)
      a += (pow(p, al) * al * lpq - pow(p, al) + pow(q, al)) / (al * al);
    else if (al == 0 && be != 0)
      a += (pow(q, be) * be * -lpq - pow(q, be) + pow(p, be)) / (be * be);
    else if (al != 0)
      a += (-al * lpq + pow(p / q, al) - 1) / (al * al);
    else
      a += 0.5 * lpq * lpq;
  }
  return a;
}

static double d_hellinger(const row_ctx *r, const double *prm) {
  double a = 0;
  for (int i = 0; i < r->v; i++) a += pow(sqrt(r->p[i]) - sqrt(r->q[i]), 2);
  return 0.5 * a;
}

/* tests/cli/specs/clipped.kd: sum(p * min(c, log p - log q)) at c = 1.5 plus
 * a quarter of the student's negative entropy. */
static double d_clipped(const row_ctx *r, const double *prm) {
  double a = 0;
  for (int i = 0; i < r->v; i++)
    a += r->p[i] * fmin(1.5, r->lp[i] - r->lq[i]) + 0.25 * r->q[i] * r->lq[i];
  return a;
}

/* -log softmax(s)[label], at T = 1 */
static double d_ce(const row_ctx *r, const double *prm) {
  double p[VMAX], lp[VMAX];
  softmax_row(r->s, r->v, 1.0, p, lp);
  return -lp[r->label];
}

/* The mix of tests/cli/specs/mix.kd: 0.7 T^2 fkl at T = 2 + 0.3 ce. */
static double d_mix(const row_ctx *r, const double *prm) {
  return 0.7 * 4 * d_fkl(r, prm) + 0.3 * d_ce(r, prm);
}

typedef struct problem {
  int n, v, vt;   /* vt: the teacher's vocabulary (v unless padding is tested) */
  double T;       /* the temperature the spec uses */
  bool labels;    /* the objective is masked by labels */
  bool sum;       /* reduction "sum" */
  int64_t ignore; /* ignore_index */
  float t[8 * VMAX], s[8 * VMAX];
  int64_t y[8];
} problem;

/* The objective: reduced per-row losses, with s given in double. */
static double objective(const problem *pb, const double *s, row_fn f, const double *prm) {
  double total = 0;
  int count = 0;
  for (int r = 0; r < pb->n; r++) {
    if (pb->labels && pb->y[r] == pb->ignore) continue;
    row_ctx c = {.v = pb->v, .s = s + r * pb->v, .label = pb->labels ? pb->y[r] : 0};
    double t[VMAX];
    for (int i = 0; i < pb->v; i++) t[i] = i < pb->vt ? pb->t[r * pb->vt + i] : -INFINITY;
    c.t = t;
    softmax_row(t, pb->v, pb->T, c.p, c.lp);
    softmax_row(c.s, pb->v, pb->T, c.q, c.lq);
    total += f(&c, prm);
    count++;
  }
  if (pb->sum) return total;
  return count ? total / count : 0;
}

/* ---- problems ------------------------------------------------------------------ */

static uint64_t rng = 0x9e3779b97f4a7c15u;

static double uniform(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0;
}

/* Logits on a 1/256 grid in [-6, 6): exact in f32 and in bf16 up to 8 bits. */
static float grid_logit(void) { return (float)(floor((uniform() * 12 - 6) * 256) / 256); }

static void make_problem(problem *pb, int n, int v, double T) {
  memset(pb, 0, sizeof *pb);
  pb->n = n, pb->v = v, pb->vt = v, pb->T = T, pb->ignore = -100;
  for (int i = 0; i < n * v; i++) pb->t[i] = grid_logit();
  for (int i = 0; i < n * v; i++) pb->s[i] = grid_logit();
  for (int r = 0; r < n; r++) pb->y[r] = (int64_t)(uniform() * v);
}

static void write_problem(const problem *pb) {
  write_f32(path_in(work, "teacher.npy"), pb->n, pb->vt, pb->t);
  write_f32(path_in(work, "student.npy"), pb->n, pb->v, pb->s);
  write_labels(path_in(work, "labels.npy"), pb->n, pb->y);
}

static void student_double(const problem *pb, double *s) {
  for (int i = 0; i < pb->n * pb->v; i++) s[i] = pb->s[i];
}

/* The compiled kernel (eval-loss without --reference, 2 threads) against
 * the reference executor's loss and gradient on the same files. */
static void check_kernel(const char *name, const char *spec, const problem *pb, double loss,
                         const float *g) {
  double got = eval_loss(spec, "--threads 2 --grad-out grad_jit.npy", pb->labels);
  if (!(fabs(got - loss) <= KERNEL_REL * fmax(1.0, fabs(loss))))
    fail("%s: compiled kernel's loss %.9g, reference %.9g", name, got, loss);
  float *k = read_grad(path_in(work, "grad_jit.npy"), pb->n, pb->v);
  for (int i = 0; k && i < pb->n * pb->v; i++)
    if (!(fabs(k[i] - g[i]) <= KERNEL_ABS * fmax(1.0, fabs(g[i])))) {
      fail("%s: compiled kernel's gradient[%d, %d] = %.9g, reference %.9g", name, i / pb->v,
           i % pb->v, k[i], g[i]);
      break;
    }
  if (!k) fail("%s: the compiled kernel wrote no gradient", name);
  free(k);
}

/* Checks a spec on problem pb: the loss against the direct objective f, the
 * gradient file against its central differences, fd_elems gradient elements
 * against central differences of eval-loss's own printed loss (each costs
 * two runs: the examples use it, the other cases rely on the direct check),
 * and the compiled kernel against the reference. */
static void check_spec(const char *name, const char *spec_path, problem *pb, row_fn f,
                       const double *prm, int fd_elems) {
  char spec[1024];
  snprintf(spec, sizeof spec, "%s", spec_path);
  write_problem(pb);
  double s[8 * VMAX];
  student_double(pb, s);
  double want = objective(pb, s, f, prm);
  double got = eval_loss(spec, "--reference --grad-out grad.npy", pb->labels);
  if (!(fabs(got - want) <= LOSS_REL * fmax(1.0, fabs(want))))
    fail("%s: loss %.12g, direct computation %.12g", name, got, want);
  float *g = read_grad(path_in(work, "grad.npy"), pb->n, pb->v);
  if (!g) {
    fail("%s: no float32 [%d, %d] gradient in grad.npy", name, pb->n, pb->v);
    return;
  }
  double worst = 0;
  int at = 0;
  for (int i = 0; i < pb->n * pb->v; i++) {
    double keep = s[i], h = 1e-5;
    s[i] = keep + h;
    double up = objective(pb, s, f, prm);
    s[i] = keep - h;
    double down = objective(pb, s, f, prm);
    s[i] = keep;
    double err = fabs(g[i] - (up - down) / (2 * h)) / fmax(1.0, fabs(g[i]));
    if (!(err <= worst)) worst = err, at = i;
  }
  if (!(worst <= GRAD_ABS))
    fail("%s: gradient[%d, %d] = %.9g is off by %.3g (relative above 1) from the direct "
         "central difference", name,
         at / pb->v, at % pb->v, g[at], worst);
  /* Central differences of eval-loss's own loss, at elements spread over the rows. */
  for (int k = 0; k < fd_elems; k++) {
    int i = (k * 7 * pb->v / 3 + 5) % (pb->n * pb->v);
    float keep = pb->s[i];
    pb->s[i] = keep + (float)FD_STEP;
    write_problem(pb);
    double up = eval_loss(spec, "--reference", pb->labels);
    pb->s[i] = keep - (float)FD_STEP;
    write_problem(pb);
    double down = eval_loss(spec, "--reference", pb->labels);
    pb->s[i] = keep;
    double fd = (up - down) / (2 * FD_STEP);
    if (!(fabs(fd - g[i]) <= FD_ABS + FD_PRINT(want)))
      fail("%s: gradient[%d, %d] = %.9g, central difference of eval-loss %.9g", name,
           i / pb->v, i % pb->v, g[i], fd);
  }
  write_problem(pb);
  check_kernel(name, spec, pb, got, g);
  free(g);
}

static void test_examples(void) {
  static const struct {
    const char *name;
    row_fn f;
    double prm[2];
  } cases[] = {
      {"fkl", d_fkl, {0}},           {"rkl", d_rkl, {0}},
      {"sym_kl", d_sym, {0}},        {"jsd", d_jsd, {0.5}},
      {"tvd", d_tvd, {0}},           {"skew_fkl", d_skew_fkl, {0.1}},
      {"skew_rkl", d_skew_rkl, {0.1}}, {"abkd", d_abkd, {0.5, 0.5}},
      {"ce", d_ce, {0}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    problem pb;
    make_problem(&pb, 5, 33, 1.0);
    pb.labels = true;
    pb.y[1] = -100; /* a masked row */
    char file[64];
    snprintf(file, sizeof file, "%s.kd", cases[i].name);
    check_spec(cases[i].name, path_in(examples, file), &pb, cases[i].f, cases[i].prm, 1);
  }
}

/* The same spec without labels: the mean over every row. */
static void test_no_labels(void) {
  problem pb;
  make_problem(&pb, 4, 7, 1.0);
  check_spec("fkl without labels", path_in(examples, "fkl.kd"), &pb, d_fkl, NULL, 0);
}

static void test_custom_and_mix(void) {
  problem pb;
  make_problem(&pb, 5, 17, 1.0);
  check_spec("user divergence (hellinger)", path_in(specs, "hellinger.kd"), &pb, d_hellinger,
             NULL, 0);
  make_problem(&pb, 6, 9, 2.0);
  pb.labels = true, pb.sum = true, pb.ignore = -1;
  pb.y[2] = -1, pb.y[4] = -1;
  check_spec("fkl + ce mix, sum", path_in(specs, "mix.kd"), &pb, d_mix, NULL, 1);
  make_problem(&pb, 4, 10, 1.0);
  check_spec("user divergence with a data-dependent where", path_in(specs, "clipped.kd"), &pb,
             d_clipped, NULL, 0);
  make_problem(&pb, 3, 12, 1.0);
  check_spec("abkd at alpha = 1, beta = 0", path_in(specs, "abkd_limits.kd"), &pb, d_fkl, NULL,
             0);
}

/* Writes WORK_DIR/file: a spec whose objective is `loss = LOSS`, with the
 * given temperature T; returns its path (path_in's rules). */
static const char *write_spec(const char *file, double T, const char *loss) {
  const char *path = path_in(work, file);
  FILE *f = fopen(path, "w");
  if (!f) {
    fail("cannot write %s", path);
    return path;
  }
  fprintf(f,
          "teacher = logits(\"teacher.npy\")\nstudent = logits(\"student.npy\")\n"
          "objective {\n  T = %.17g\n  loss = %s\n}\n",
          T, loss);
  fclose(f);
  return path;
}

/* abkd in each of its five cases: alpha, beta, alpha + beta nonzero; beta = 0;
 * alpha = 0; alpha = -beta; both 0. */
static void test_abkd_cases(void) {
  static const double cases[][2] = {{0.3, 0.9}, {0.5, 0}, {0, 0.7}, {0.5, -0.5}, {0, 0}, {0, 1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[64], loss[256];
    snprintf(loss, sizeof loss,
             "abkd(softmax(teacher.logits), softmax(student.logits), alpha = %g, beta = %g)",
             cases[i][0], cases[i][1]);
    snprintf(name, sizeof name, "abkd(alpha = %g, beta = %g)", cases[i][0], cases[i][1]);
    problem pb;
    make_problem(&pb, 3, 8, 1.0);
    check_spec(name, write_spec("abkd.kd", 1, loss), &pb, d_abkd, cases[i], 0);
  }
}

/* T^2 fkl at extreme temperatures: logits / 0.05 reach 120, so the softmax
 * is nearly one-hot; at T = 20 it is nearly flat. prm[0] is T^2. */
static double d_fkl_scaled(const row_ctx *r, const double *prm) { return prm[0] * d_fkl(r, prm); }

static void test_temperatures(void) {
  static const double temps[] = {0.05, 20};
  for (size_t i = 0; i < 2; i++) {
    char name[64];
    snprintf(name, sizeof name, "T^2 fkl at T = %g", temps[i]);
    problem pb;
    make_problem(&pb, 3, 10, temps[i]);
    double t2 = temps[i] * temps[i];
    check_spec(name,
               write_spec("temperature.kd", temps[i],
                          "T^2 * fkl(softmax(teacher.logits / T), softmax(student.logits / T))"),
               &pb, d_fkl_scaled, &t2, 0);
  }
}

/* jsd at beta = 0 and 1 prints exactly what fkl and rkl print. */
static void test_jsd_endpoints(void) {
  problem pb;
  make_problem(&pb, 4, 10, 1.0);
  write_problem(&pb);
  const char *pairs[2][2] = {{"jsd_beta0.kd", "fkl.kd"}, {"jsd_beta1.kd", "rkl.kd"}};
  for (int i = 0; i < 2; i++) {
    double a = eval_loss(path_in(specs, pairs[i][0]), "--reference", false);
    double b = eval_loss(path_in(examples, pairs[i][1]), "--reference", false);
    if (!(a == b)) fail("%s gives %.12g, %s %.12g", pairs[i][0], a, pairs[i][1], b);
  }
}

/* Every row masked: loss 0 and a zero gradient, not 0 / 0. */
static void test_all_masked(void) {
  problem pb;
  make_problem(&pb, 3, 8, 1.0);
  pb.labels = true;
  for (int r = 0; r < 3; r++) pb.y[r] = -100;
  check_spec("all rows masked", path_in(examples, "jsd.kd"), &pb, d_jsd, (double[]){0.5}, 0);
  float *g = read_grad(path_in(work, "grad.npy"), 3, 8);
  for (int i = 0; g && i < 24; i++)
    if (g[i] != 0) {
      fail("all rows masked: gradient[%d] = %g, not 0", i, g[i]);
      break;
    }
  free(g);
}

/* The teacher as a tensor of a safetensors file (FILE.safetensors:NAME), as
 * log-probabilities rather than logits (softmax is blind to a per-row
 * shift, at any T), and the loss the same whatever the thread count. */
static void test_teacher_forms(void) {
  problem pb;
  make_problem(&pb, 3, 5, 1.0);
  write_problem(&pb);
  char spec[1024];
  snprintf(spec, sizeof spec, "%s", path_in(examples, "fkl.kd"));
  double want = eval_loss(spec, "--reference", false);

  /* safetensors: an 8-byte little-endian header length, JSON padded to 8 bytes, data. */
  char hdr[256];
  int n = snprintf(hdr, sizeof hdr,
                   "{\"t\":{\"dtype\":\"F32\",\"shape\":[3,5],\"data_offsets\":[0,60]}}");
  while (n % 8) hdr[n++] = ' ';
  FILE *f = fopen(path_in(work, "teacher.safetensors"), "wb");
  if (f) {
    uint64_t len = (uint64_t)n;
    for (int i = 0; i < 8; i++) fputc((int)(len >> (8 * i)) & 0xff, f);
    fwrite(hdr, 1, (size_t)n, f);
    fwrite(pb.t, sizeof(float), 15, f);
    fclose(f);
  }
  char *out, *err;
  int rc = run_kdc(&out, &err, "eval-loss '%s' --reference --teacher teacher.safetensors:t "
                   "--student student.npy", spec);
  double got = NAN;
  if (rc != 0 || sscanf(out, "loss: %lf", &got) != 1 || got != want)
    fail("safetensors teacher: exit %d, '%s' (npy gives %.9g) %s", rc, out, want, err);
  free(out);
  free(err);
  expect("no such tensor", 1,
         "kdc eval-loss: teacher.safetensors: no tensor named 'logits'\n",
         "eval-loss '%s' --teacher teacher.safetensors:logits --student student.npy", spec);

  /* log-probabilities, rounded to f32: 1e-6 relative covers that rounding. */
  float lt[15];
  for (int r = 0; r < 3; r++) {
    double x[5], p[5], lp[5];
    for (int i = 0; i < 5; i++) x[i] = pb.t[r * 5 + i];
    softmax_row(x, 5, 1.0, p, lp);
    for (int i = 0; i < 5; i++) lt[r * 5 + i] = (float)lp[i];
  }
  write_f32(path_in(work, "teacher.npy"), 3, 5, lt);
  got = eval_loss(spec, "--reference", false);
  if (!(fabs(got - want) <= 1e-6 * fabs(want)))
    fail("teacher as log-probabilities: loss %.9g, as logits %.9g", got, want);

  /* The compiled kernel's loss does not depend on the thread count. */
  write_problem(&pb);
  double one = eval_loss(spec, "--threads 1", false);
  double two = eval_loss(spec, "--threads 2", false);
  if (!(one == two)) fail("loss with 1 thread %.9g, with 2 threads %.9g", one, two);
}

/* tests/cli/specs/two_teachers.kd: fkl from each of two teachers, given as
 * --teacher t1=FILE --teacher t2=FILE (in either order). The loss is checked
 * against the direct computation, the gradient against the sum of the two
 * single-teacher gradients (each checked by the examples part). */
static void test_two_teachers(void) {
  problem a, b;
  make_problem(&a, 3, 7, 1.0);
  b = a;
  for (int i = 0; i < 21; i++) b.t[i] = grid_logit();
  double s[3 * 7];
  student_double(&a, s);
  double want = objective(&a, s, d_fkl, NULL) + objective(&b, s, d_fkl, NULL);
  float ga[21], gb[21];
  const problem *pbs[2] = {&a, &b};
  float *gs[2] = {ga, gb};
  for (int k = 0; k < 2; k++) {
    write_problem(pbs[k]);
    eval_loss(path_in(examples, "fkl.kd"), "--reference --grad-out grad.npy", false);
    float *g = read_grad(path_in(work, "grad.npy"), 3, 7);
    if (g) memcpy(gs[k], g, sizeof ga);
    else fail("two teachers: no gradient from fkl.kd");
    free(g);
  }
  write_f32(path_in(work, "t1.npy"), 3, 7, a.t);
  write_f32(path_in(work, "t2.npy"), 3, 7, b.t);
  char *out, *err;
  int rc = run_kdc(&out, &err,
                   "eval-loss '%s' --reference --student student.npy --teacher t2=t2.npy "
                   "--teacher t1=t1.npy --grad-out grad.npy",
                   path_in(specs, "two_teachers.kd"));
  double got = NAN;
  if (rc != 0 || sscanf(out, "loss: %lf", &got) != 1 ||
      !(fabs(got - want) <= LOSS_REL * fmax(1.0, fabs(want))))
    fail("two teachers: exit %d, '%s', direct computation %.12g; %s", rc, out, want, err);
  float *g = read_grad(path_in(work, "grad.npy"), 3, 7);
  for (int i = 0; g && i < 21; i++)
    if (!(fabs(g[i] - (ga[i] + gb[i])) <= GRAD_ABS)) {
      fail("two teachers: gradient[%d] = %.9g, the teachers' sum %.9g", i, g[i], ga[i] + gb[i]);
      break;
    }
  if (!g) fail("two teachers: no gradient");
  free(g);
  free(out);
  free(err);
}

/* An empty batch ([0, V] logits): loss 0 and an empty [0, V] gradient. */
static void test_empty(void) {
  int64_t shape[2] = {0, 6};
  float none[1] = {0};
  write_npy(path_in(work, "teacher.npy"), "<f4", 2, shape, none, 0);
  write_npy(path_in(work, "student.npy"), "<f4", 2, shape, none, 0);
  double got = eval_loss(path_in(examples, "fkl.kd"), "--grad-out grad.npy", false);
  if (got != 0) fail("empty batch: loss %.9g, not 0", got);
  float *g = read_grad(path_in(work, "grad.npy"), 0, 6);
  if (!g) fail("empty batch: no float32 [0, 6] gradient");
  free(g);
}

/* bfloat16 inputs (uint16 .npy): logits on the 1/256 grid within [-6, 6)
 * have at most 11 significant bits; rounded to bf16's 8 bits first, so the
 * direct computation sees exactly what kdc reads. */
static void test_bf16(void) {
  problem pb;
  make_problem(&pb, 4, 11, 1.0);
  uint16_t t[4 * 11], s[4 * 11];
  for (int i = 0; i < 44; i++) {
    uint32_t u;
    memcpy(&u, &pb.t[i], 4);
    t[i] = (uint16_t)(u >> 16), u &= 0xffff0000u, memcpy(&pb.t[i], &u, 4);
    memcpy(&u, &pb.s[i], 4);
    s[i] = (uint16_t)(u >> 16), u &= 0xffff0000u, memcpy(&pb.s[i], &u, 4);
  }
  int64_t shape[2] = {4, 11};
  write_npy(path_in(work, "teacher.npy"), "<u2", 2, shape, t, sizeof t);
  write_npy(path_in(work, "student.npy"), "<u2", 2, shape, s, sizeof s);
  double sd[4 * 11];
  student_double(&pb, sd);
  double want = objective(&pb, sd, d_rkl, NULL);
  double got = eval_loss(path_in(examples, "rkl.kd"), "--reference", false);
  if (!(fabs(got - want) <= LOSS_REL * fmax(1.0, fabs(want))))
    fail("bf16 inputs: loss %.12g, direct computation %.12g", got, want);
  double kernel = eval_loss(path_in(examples, "rkl.kd"), "", false);
  if (!(fabs(kernel - want) <= KERNEL_REL * fmax(1.0, fabs(want))))
    fail("bf16 inputs: the compiled kernel's loss %.12g, direct computation %.12g", kernel, want);
}

/* --grad-dtype bf16: the kernel's gradient is the f32 one rounded to
 * nearest even, element for element, written as uint16 [N, V], with the
 * same loss; the reference's, rounded once from double, differs from it by
 * at most one bf16 step (2^-7 of the larger) plus the f32 kernel's own
 * error (KERNEL_ABS, as check_kernel allows the f32 gradient). */
static float bf16_value(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_grad_bf16(void) {
  problem pb;
  make_problem(&pb, 5, 37, 2.0);
  write_problem(&pb);
  const char *spec = path_in(examples, "jsd.kd");
  double l32 = eval_loss(spec, "--grad-out g32.npy", true);
  double l16 = eval_loss(spec, "--grad-out g16.npy --grad-dtype bf16", true);
  eval_loss(spec, "--grad-out r16.npy --grad-dtype bf16 --reference", true);
  float *g = read_grad(path_in(work, "g32.npy"), 5, 37);
  uint16_t *h = read_npy(path_in(work, "g16.npy"), 5, 37, "<u2", 2);
  uint16_t *r = read_npy(path_in(work, "r16.npy"), 5, 37, "<u2", 2);
  if (!g || !h || !r) fail("--grad-dtype bf16: no [5, 37] gradients (f32 %p, bf16 %p, reference %p)", (void *)g,
                           (void *)h, (void *)r);
  if (l32 != l16) fail("--grad-dtype bf16: loss %.9g, with the f32 gradient %.9g", l16, l32);
  for (int i = 0; g && h && r && i < 5 * 37; i++) {
    uint32_t u;
    memcpy(&u, &g[i], 4);
    uint16_t want = (uint16_t)((u + 0x7fffu + (u >> 16 & 1u)) >> 16);
    float hv = bf16_value(h[i]), rv = bf16_value(r[i]);
    if (h[i] != want || !(fabsf(hv - rv) <= 0x1p-7f * fmaxf(fabsf(hv), fabsf(rv)) + KERNEL_ABS)) {
      fail("--grad-dtype bf16: grad[%d] = 0x%04x, f32 %.9g rounds to 0x%04x, reference 0x%04x", i, h[i], g[i],
           want, r[i]);
      break;
    }
  }
  free(g), free(h), free(r);
}

/* Teacher logits of -inf (tokens the teacher rules out: p = 0 exactly) give
 * finite losses and gradients where the divergence is finite there. */
static void test_minus_inf(void) {
  problem pb;
  make_problem(&pb, 4, 9, 1.0);
  for (int i = 0; i < 4 * 9; i += 4) pb.t[i] = -INFINITY;
  check_spec("fkl, -inf teacher logits", path_in(examples, "fkl.kd"), &pb, d_fkl, NULL, 0);
  check_spec("jsd, -inf teacher logits", path_in(examples, "jsd.kd"), &pb, d_jsd,
             (double[]){0.5}, 0);
}

/* Logits of magnitude up to 6000 (the 1/256 grid scaled by 1000: still exact
 * in f32): canonicalisation keeps every log finite. (sym_kl's gradient
 * holds log-ratios of that size, which the f32 kernel carries to about 1e-4
 * absolute, beyond KERNEL_ABS; tests/codegen owns the kernel's tolerances
 * at large magnitudes.) */
static void test_large_logits(void) {
  static const struct {
    const char *spec;
    row_fn f;
  } cases[] = {{"fkl.kd", d_fkl}, {"rkl.kd", d_rkl}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    problem pb;
    make_problem(&pb, 3, 9, 1.0);
    for (int k = 0; k < 27; k++) pb.t[k] *= 1000, pb.s[k] *= 1000;
    char name[64];
    snprintf(name, sizeof name, "%s, logits up to 6000", cases[i].spec);
    check_spec(name, path_in(examples, cases[i].spec), &pb, cases[i].f, NULL, 0);
  }
}

/* vocab_align = "pad": a teacher with 5 fewer tokens than the student
 * (padded with -inf logits: probability 0). */
static void test_pad(void) {
  problem pb;
  make_problem(&pb, 3, 13, 1.0);
  pb.vt = 8;
  check_spec("vocab_align pad", path_in(specs, "pad.kd"), &pb, d_fkl, NULL, 0);
  /* "truncate": a teacher with 4 more tokens, which the loss never sees. */
  make_problem(&pb, 3, 9, 1.0);
  pb.vt = 13;
  check_spec("vocab_align truncate", path_in(specs, "truncate.kd"), &pb, d_jsd, (double[]){0.3},
             0);
}

/* ---- bad inputs and usage ------------------------------------------------------ */

static void expect(const char *what, int want_rc, const char *want_err, const char *fmt, ...) {
  char args[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  char *out, *err;
  int rc = run_kdc(&out, &err, "%s", args);
  if (rc != want_rc) fail("%s: exit status %d, expected %d (stderr: %s)", what, rc, want_rc, err);
  else if (want_err && strcmp(err, want_err))
    fail("%s: stderr\n  got:      %s  expected: %s", what, err, want_err);
  free(out);
  free(err);
}

static void test_bad_inputs(void) {
  problem pb;
  make_problem(&pb, 3, 5, 1.0);
  write_problem(&pb);
  char fkl[1024], base[2048];
  snprintf(fkl, sizeof fkl, "%s", path_in(examples, "fkl.kd"));
  snprintf(base, sizeof base, "eval-loss '%s' --student student.npy", fkl);

  write_f32(path_in(work, "rows4.npy"), 4, 5, pb.s);
  expect("rows disagree", 1,
         "kdc eval-loss: teacher and student disagree on the number of rows: 4 (rows4.npy) "
         "and 3 (student.npy)\n",
         "%s --teacher rows4.npy", base);

  write_f32(path_in(work, "vocab6.npy"), 3, 6, pb.t);
  expect("vocabulary mismatch", 1,
         "kdc eval-loss: vocabulary mismatch: the teacher's logits have 6 entries per row, the "
         "student's 5 (to align them, set vocab_align = \"pad\" or \"truncate\" in the "
         "objective)\n",
         "%s --teacher vocab6.npy", base);

  int64_t shape[2] = {3, 5};
  int32_t ints[15] = {0};
  write_npy(path_in(work, "int.npy"), "<i4", 2, shape, ints, sizeof ints);
  expect("integer logits", 1,
         "kdc eval-loss: int.npy: teacher logits must be float32 or bfloat16 (as uint16), "
         "not i32\n",
         "%s --teacher int.npy", base);

  int64_t flat = 15;
  write_npy(path_in(work, "flat.npy"), "<f4", 1, &flat, pb.t, 15 * sizeof(float));
  expect("1-d logits", 1,
         "kdc eval-loss: flat.npy: teacher logits must be a 2-d array [N, V], not 1-d\n",
         "%s --teacher flat.npy", base);

  float nan_t[15];
  memcpy(nan_t, pb.t, sizeof nan_t);
  nan_t[7] = NAN;
  write_f32(path_in(work, "nan.npy"), 3, 5, nan_t);
  expect("NaN in the logits", 1,
         "kdc eval-loss: nan.npy: teacher logits hold NaN at row 1, column 2\n",
         "%s --teacher nan.npy", base);

  float dead[15];
  memcpy(dead, pb.s, sizeof dead);
  for (int i = 5; i < 10; i++) dead[i] = -INFINITY;
  write_f32(path_in(work, "dead.npy"), 3, 5, dead);
  expect("a row of -inf", 1,
         "kdc eval-loss: dead.npy: student logits are -inf everywhere in row 1\n",
         "eval-loss '%s' --teacher teacher.npy --student dead.npy", fkl);

  /* A file cut short, and one that is not .npy at all: the reader's own
   * messages, which start with the path. */
  FILE *f = fopen(path_in(work, "teacher.npy"), "rb");
  char buf[512];
  size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
  if (f) fclose(f);
  f = fopen(path_in(work, "short.npy"), "wb");
  if (f) fwrite(buf, 1, n - 9, f), fclose(f);
  expect("truncated .npy", 1,
         "kdc eval-loss: short.npy: truncated data: the header's shape needs 60 bytes, the "
         "file holds 51\n",
         "%s --teacher short.npy", base);
  f = fopen(path_in(work, "junk.npy"), "wb");
  if (f) fputs("this is not an array\n", f), fclose(f);
  expect("not an .npy", 1, "kdc eval-loss: junk.npy: not a .npy file (no \\x93NUMPY magic)\n",
         "%s --teacher junk.npy", base);
  expect("missing file", 1, "kdc eval-loss: nowhere.npy: No such file or directory\n",
         "%s --teacher nowhere.npy", base);

  float lab_f[3] = {1, 2, 3};
  int64_t three = 3;
  write_npy(path_in(work, "flabels.npy"), "<f4", 1, &three, lab_f, sizeof lab_f);
  expect("float labels", 1, "kdc eval-loss: flabels.npy: labels must be int32 or int64, not f32\n",
         "%s --teacher teacher.npy --labels flabels.npy", base);
  int64_t four = 4, lab4[4] = {0, 1, 2, 3};
  write_npy(path_in(work, "labels4.npy"), "<i8", 1, &four, lab4, sizeof lab4);
  expect("labels of the wrong length", 1,
         "kdc eval-loss: labels4.npy: labels must be a 1-d array of 3 entries (one per row)\n",
         "%s --teacher teacher.npy --labels labels4.npy", base);
  int64_t lab_big[3] = {0, 5, -100};
  write_labels(path_in(work, "labels_big.npy"), 3, lab_big);
  expect("label outside the vocabulary", 1,
         "kdc eval-loss: labels_big.npy: label 5 at row 1 is outside the vocabulary [0, 5) and "
         "is not ignore_index (-100)\n",
         "%s --teacher teacher.npy --labels labels_big.npy", base);

  /* A binary file as the spec: many syntax errors, past the diagnostics' cap. */
  expect("a spec that is not .kd", 1, NULL, "eval-loss rows4.npy --student student.npy");

  /* Usage errors: exit status 2. */
  expect("no arguments", 2, "kdc eval-loss: no spec given\n(see 'kdc eval-loss --help')\n",
         "eval-loss");
  expect("unknown option", 2,
         "kdc eval-loss: unknown option '--frobnicate'\n(see 'kdc eval-loss --help')\n",
         "%s --teacher teacher.npy --frobnicate", base);
  expect("no --student", 2, "kdc eval-loss: --student is required\n(see 'kdc eval-loss --help')\n",
         "eval-loss '%s' --teacher teacher.npy", fkl);
  expect("--threads 0", 2,
         "kdc eval-loss: --threads needs a number from 1 to 1024, not '0'\n"
         "(see 'kdc eval-loss --help')\n",
         "%s --teacher teacher.npy --threads 0", base);
  expect("missing --teacher", 2,
         "kdc eval-loss: the objective reads the teacher's logits: --teacher is required\n"
         "(see 'kdc eval-loss --help')\n",
         "%s", base);
  expect("ce without --labels", 2,
         "kdc eval-loss: the objective reads labels: --labels is required\n"
         "(see 'kdc eval-loss --help')\n",
         "eval-loss '%s' --student student.npy", path_in(examples, "ce.kd"));
  expect("--help", 0, "", "eval-loss --help");
  expect("--grad-dtype f16", 2,
         "kdc eval-loss: --grad-dtype is f32 or bf16, not 'f16'\n(see 'kdc eval-loss --help')\n",
         "%s --teacher teacher.npy --grad-dtype f16", base);

  /* Teachers given by instance name, when the objective reads several. */
  char two[1024], want[4096];
  snprintf(two, sizeof two, "%s", path_in(specs, "two_teachers.kd"));
  expect("a teacher missing", 2,
         "kdc eval-loss: the objective reads teacher 't2': pass --teacher t2=FILE\n"
         "(see 'kdc eval-loss --help')\n",
         "eval-loss '%s' --student student.npy --teacher t1=teacher.npy", two);
  expect("an unnamed teacher among several", 2,
         "kdc eval-loss: the objective reads teacher 't1': pass --teacher t1=FILE\n"
         "(see 'kdc eval-loss --help')\n",
         "eval-loss '%s' --student student.npy --teacher teacher.npy --teacher t2=teacher.npy",
         two);
  expect("a teacher too many", 2,
         "kdc eval-loss: the objective reads no teacher 't3'\n(see 'kdc eval-loss --help')\n",
         "eval-loss '%s' --student student.npy --teacher t1=teacher.npy --teacher t2=teacher.npy "
         "--teacher t3=teacher.npy", two);
  expect("two teachers for one", 2,
         "kdc eval-loss: the objective reads one teacher, not 2\n(see 'kdc eval-loss --help')\n",
         "%s --teacher teacher.npy --teacher teacher.npy", base);

  /* Objectives chosen by name; emit-ir usage errors. */
  snprintf(two, sizeof two, "%s", path_in(specs, "two_objectives.kd"));
  snprintf(want, sizeof want,
           "%s:5:1: error: several named objectives: say which one to lower\n"
           "    5 | objective soft {\n"
           "      | ^~~~~~~~~~~~~~~~\n",
           two);
  expect("two named objectives", 1, want, "emit-ir '%s'", two);
  expect("--objective picks one", 0, "",
         "eval-loss '%s' --objective hard --student student.npy --labels labels.npy", two);
  expect("--objective names none", 1, "kdc: error: no objective named 'nope'\n",
         "eval-loss '%s' --objective nope --student student.npy --teacher teacher.npy", two);
  expect("emit-ir unknown stage", 2, "kdc emit-ir: no stage named bogus\n(see 'kdc emit-ir --help')\n",
         "emit-ir '%s' --after bogus", fkl);
  expect("emit-ir without a spec", 2, "kdc emit-ir: no spec given\n(see 'kdc emit-ir --help')\n",
         "emit-ir --after lower");
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: eval_loss_test KDC EXAMPLES_DIR SPECS_DIR WORK_DIR "
                    "examples|semantics|errors\n");
    return 2;
  }
  kdc = argv[1], examples = argv[2], specs = argv[3], work = argv[4];
  const char *part = argv[5];
  if (!strcmp(part, "examples")) {
    test_examples();
  } else if (!strcmp(part, "semantics")) {
    test_no_labels();
    test_custom_and_mix();
    test_jsd_endpoints();
    test_abkd_cases();
    test_temperatures();
    test_all_masked();
    test_bf16();
    test_grad_bf16();
    test_pad();
    test_minus_inf();
    test_large_logits();
    test_empty();
    test_teacher_forms();
    test_two_teachers();
  } else if (!strcmp(part, "errors")) {
    test_bad_inputs();
  } else {
    fprintf(stderr, "eval_loss_test: no part named '%s'\n", part);
    return 2;
  }
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  else printf("eval-loss %s: all checks passed\n", part);
  return failures ? 1 : 0;
}
