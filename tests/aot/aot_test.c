/* Loss libraries end to end: `kdc compile-loss -o libNAME.so` and `.a`
 * built by the kdc under test, called through their plain C ABI
 * (runtime/lossapi.h, docs/abi.md) and checked against `kdc eval-loss
 * --reference` (the double-precision reference executor) on random inputs.
 *
 * Usage: aot_test KDC EXAMPLES_DIR WORK_DIR CC
 * Checks, for fkl and jsd (with labels, some rows masked):
 *   - NAME_info: ABI version, dtypes, labels and gradient flags;
 *   - NAME_eval's loss and gradient against the reference, at 1 and 2
 *     threads, and the two bit for bit the same (the result must not depend
 *     on threads);
 *   - fkl compiled for bf16 logits, against the reference on the same values;
 *   - fkl compiled with --grad-dtype bf16: info says has_grad 2, the loss is
 *     the f32 library's bit for bit and each gradient element is the f32
 *     library's rounded to nearest even;
 *   - both libraries loaded at once (their runtimes are private);
 *   - only NAME_eval and NAME_info are exported (NAME_program and the
 *     runtime are not visible through dlsym);
 *   - a C program linked with libNAME.a and -lpthread -lm alone (built here
 *     with CC) gives the same bits as the .so;
 *   - bad arguments (vocab 0, negative n_rows, no labels, no gradient array,
 *     too many threads) return 5 with a message, never crash;
 *   - a bad --kind or --name: exit status 2;
 *   - CC set to a program that does not exist: exit status 1, a message
 *     naming it, and no output, header or temporary file left behind.
 * Legend: N = rows, V = vocabulary. */
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>

/* KERNEL_REL, KERNEL_ABS: as in tests/cli/eval_loss_test.c: the compiled
 * kernel computes in f32 (row sums in f32 lanes, exp and log to about 1e-7
 * relative); over rows of 123 logits in [-4, 4] its loss stays within a few
 * 1e-7 of the double reference and gradient elements within 1e-7 (relative
 * above 1); a wrong term of any real size is far outside. */
#define KERNEL_REL 2e-6
#define KERNEL_ABS 1e-6

enum { N = 7, V = 123 };

typedef struct info {
  uint32_t abi_version;
  int32_t teacher_dtype, student_dtype, has_labels, has_grad, max_threads;
} info;
typedef int (*eval_fn)(const void *, const void *, const int64_t *, int64_t, int64_t, void *,
                       double *, int, char *, size_t);
typedef int (*info_fn)(info *);

static const char *kdc, *examples, *work, *cc;
static int failures;
static float teacher[N * V], student[N * V];
static int64_t labels[N] = {3, -100, 5, 122, -100, 0, 17};

static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("FAIL ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  failures++;
}

/* Runs a shell command; its exit status, or -1. */
static int run(const char *fmt, ...) {
  char cmd[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int st = system(cmd);
  return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

/* An .npy v1.0 file: dtype descr, shape [n] or [n, v], data. */
static void write_npy(const char *path, const char *descr, int64_t n, int64_t v, const void *data,
                      size_t size) {
  char dict[128];
  int len = v ? snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%lld, %lld), }",
                         descr, (long long)n, (long long)v)
              : snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%lld,), }",
                         descr, (long long)n);
  int total = (10 + len + 1 + 63) / 64 * 64; /* magic, version, length, dict, '\n' */
  FILE *f = fopen(path, "wb");
  if (!f) {
    fail("cannot write %s", path);
    return;
  }
  unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                            (unsigned char)((total - 10) & 255), (unsigned char)((total - 10) >> 8)};
  fwrite(head, 1, 10, f);
  fwrite(dict, 1, (size_t)len, f);
  for (int i = 10 + len; i < total - 1; i++) fputc(' ', f);
  fputc('\n', f);
  fwrite(data, 1, size, f);
  fclose(f);
}

/* The float32 data of an .npy file eval-loss wrote; 0 on success. */
static int read_npy_f32(const char *path, float *out, size_t n) {
  unsigned char head[10];
  FILE *f = fopen(path, "rb");
  int ok = f && fread(head, 1, 10, f) == 10 && !memcmp(head, "\x93NUMPY", 6);
  ok = ok && !fseek(f, 10 + head[8] + 256 * head[9], SEEK_SET) && fread(out, 4, n, f) == n;
  if (f) fclose(f);
  return !ok;
}

/* The reference: `kdc eval-loss --reference` on the inputs written to work
 * (t.npy and s.npy, or with dtype "_bf16" t_bf16.npy and s_bf16.npy). */
static int reference(const char *spec, const char *dtype, double *loss, float *grad) {
  char out[4096];
  snprintf(out, sizeof out, "%s/ref_%s.txt", work, spec);
  if (run("'%s' eval-loss '%s/%s.kd' --teacher '%s/t%s.npy' --student '%s/s%s.npy' "
          "--labels '%s/l.npy' --grad-out '%s/ref_grad.npy' --reference > '%s'",
          kdc, examples, spec, work, dtype, work, dtype, work, work, out)) {
    fail("%s: eval-loss --reference failed", spec);
    return 1;
  }
  FILE *f = fopen(out, "r");
  int ok = f && fscanf(f, "loss: %lf", loss) == 1;
  if (f) fclose(f);
  snprintf(out, sizeof out, "%s/ref_grad.npy", work);
  if (!ok || read_npy_f32(out, grad, N * V)) {
    fail("%s: cannot read the reference's output", spec);
    return 1;
  }
  return 0;
}

static void compare(const char *what, double loss, const float *grad, double ref_loss,
                    const float *ref_grad) {
  if (!(fabs(loss - ref_loss) <= KERNEL_REL * fabs(ref_loss) + KERNEL_ABS))
    fail("%s: loss %.9g, reference %.9g", what, loss, ref_loss);
  for (int i = 0; i < N * V; i++)
    if (!(fabs(grad[i] - ref_grad[i]) <= KERNEL_ABS * fmax(1, fabs(ref_grad[i])))) {
      fail("%s: grad[%d, %d] = %.9g, reference %.9g", what, i / V, i % V, grad[i], ref_grad[i]);
      return;
    }
}

/* Bad arguments: status 5 and a message, never a crash. */
static void check_errors(const char *spec, eval_fn eval) {
  static float grad[N * V];
  double loss;
  char err[256];
  struct {
    const char *what;
    int64_t n, v;
    const int64_t *lab;
    float *g;
    int threads;
  } cases[] = {{"vocab 0", N, 0, labels, grad, 1},       {"n_rows -1", -1, V, labels, grad, 1},
               {"no labels", N, V, NULL, grad, 1},       {"no gradient", N, V, labels, NULL, 1},
               {"threads 100000", N, V, labels, grad, 100000}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    err[0] = 0;
    int st = eval(teacher, student, cases[i].lab, cases[i].n, cases[i].v, cases[i].g, &loss,
                  cases[i].threads, err, sizeof err);
    if (st != 5 || !err[0]) fail("%s: %s: status %d, message '%s'", spec, cases[i].what, st, err);
  }
  /* err may be NULL */
  if (eval(teacher, student, labels, N, 0, grad, &loss, 1, NULL, 0) != 5)
    fail("%s: vocab 0 without an error buffer", spec);
}

/* A C program linked with the .a alone (plus -lpthread -lm) prints the
 * loss's bits and writes the gradient; it must match the .so bit for bit. */
static void check_static(const char *spec, double so_loss, const float *so_grad) {
  char path[4096];
  FILE *f = NULL;
  if (run("'%s' compile-loss '%s/%s.kd' --labels --name %s_static -o '%s/lib%s_static.a'", kdc,
          examples, spec, spec, work, spec)) {
    fail("%s: compile-loss -o lib%s_static.a failed", spec, spec);
    return;
  }
  snprintf(path, sizeof path, "%s/%s_main.c", work, spec);
  if (!(f = fopen(path, "w"))) {
    fail("cannot write %s", path);
    return;
  }
  fprintf(f,
          "#include <stdio.h>\n#include \"%s_static.h\"\n"
          "static float t[%d], s[%d], g[%d];\n"
          "int main(void) {\n"
          "  int64_t l[%d] = {3, -100, 5, 122, -100, 0, 17};\n"
          "  FILE *f = fopen(\"%s/inputs.bin\", \"rb\");\n"
          "  if (!f || fread(t, 4, %d, f) != %d || fread(s, 4, %d, f) != %d) return 3;\n"
          "  fclose(f);\n  double loss; char err[256];\n"
          "  kdc_loss_info in;\n"
          "  if (%s_static_info(&in) || in.abi_version != %s_STATIC_ABI_VERSION) return 4;\n"
          "  int st = %s_static_eval(t, s, l, %d, %d, g, &loss, 1, err, sizeof err);\n"
          "  if (st) { puts(err); return st; }\n"
          "  f = fopen(\"%s/static_grad.bin\", \"wb\");\n"
          "  if (!f || fwrite(g, 4, %d, f) != %d || fclose(f)) return 6;\n"
          "  printf(\"%%a\\n\", loss);\n  return 0;\n}\n",
          spec, N * V, N * V, N * V, N, work, N * V, N * V, N * V, N * V, spec,
          spec[0] == 'f' ? "FKL" : "JSD", spec, N, V, work, N * V, N * V);
  fclose(f);
  char out[4096];
  snprintf(out, sizeof out, "%s/%s_static.txt", work, spec);
  if (run("%s -std=c11 -Wall -Werror -I'%s' -o '%s/%s_main' '%s' '%s/lib%s_static.a' -lpthread -lm", cc,
          work, work, spec, path, work, spec) ||
      run("'%s/%s_main' > '%s'", work, spec, out)) {
    fail("%s: the program linked with lib%s_static.a did not build or run", spec, spec);
    return;
  }
  double loss = NAN;
  static float grad[N * V];
  f = fopen(out, "r");
  int ok = f && fscanf(f, "%la", &loss) == 1;
  if (f) fclose(f);
  snprintf(path, sizeof path, "%s/static_grad.bin", work);
  f = fopen(path, "rb");
  ok = ok && f && fread(grad, 4, N * V, f) == N * V;
  if (f) fclose(f);
  if (!ok || loss != so_loss || memcmp(grad, so_grad, sizeof grad))
    fail("%s: the static library's result differs from the shared one's", spec);
}

/* A spec through its .so; the library stays loaded (side by side with the
 * next one) until the end. */
static void check_spec(const char *spec, void **handle) {
  char path[4096], sym[64];
  if (run("'%s' compile-loss '%s/%s.kd' --labels -o '%s/lib%s.so'", kdc, examples, spec, work, spec)) {
    fail("%s: compile-loss -o lib%s.so failed", spec, spec);
    return;
  }
  snprintf(path, sizeof path, "%s/lib%s.so", work, spec);
  void *h = *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fail("%s: dlopen: %s", spec, dlerror());
    return;
  }
  snprintf(sym, sizeof sym, "%s_eval", spec);
  eval_fn eval;
  *(void **)&eval = dlsym(h, sym);
  snprintf(sym, sizeof sym, "%s_info", spec);
  info_fn get_info;
  *(void **)&get_info = dlsym(h, sym);
  if (!eval || !get_info) {
    fail("%s: %s_eval or %s_info not exported", spec, spec, spec);
    return;
  }
  snprintf(sym, sizeof sym, "%s_program", spec);
  if (dlsym(h, sym) || dlsym(h, "kd_loss_run") || dlsym(h, "kd_pool_new"))
    fail("%s: the library exports more than its ABI", spec);
  info in = {0};
  if (get_info(&in) || in.abi_version != 2 || in.teacher_dtype != 0 || in.student_dtype != 0 ||
      in.has_labels != 1 || in.has_grad != 1 || in.max_threads < 2)
    fail("%s: info %u %d %d %d %d %d", spec, in.abi_version, in.teacher_dtype, in.student_dtype,
         in.has_labels, in.has_grad, in.max_threads);
  double ref_loss, loss1 = NAN, loss2 = NAN;
  static float ref_grad[N * V], grad1[N * V], grad2[N * V];
  if (reference(spec, "", &ref_loss, ref_grad)) return;
  char err[256] = "";
  int st = eval(teacher, student, labels, N, V, grad1, &loss1, 1, err, sizeof err);
  if (!st) st = eval(teacher, student, labels, N, V, grad2, &loss2, 2, err, sizeof err);
  if (st) {
    fail("%s: eval returned %d: %s", spec, st, err);
    return;
  }
  snprintf(path, sizeof path, "%s.so, 1 thread", spec);
  compare(path, loss1, grad1, ref_loss, ref_grad);
  if (loss1 != loss2 || memcmp(grad1, grad2, sizeof grad1))
    fail("%s: 1 and 2 threads differ", spec);
  printf("%s: loss %.9g (reference %.9g)\n", spec, loss1, ref_loss);
  check_errors(spec, eval);
  check_static(spec, loss1, grad1);
}

/* --dtype bf16: the library reads bfloat16 (uint16_t) logits; info says so,
 * and it agrees with the reference on the same bf16 values. */
static void check_bf16(void) {
  static uint16_t tb[N * V], sb[N * V];
  static float grad[N * V], ref_grad[N * V];
  char path[4096], err[256] = "";
  for (int i = 0; i < N * V; i++) { /* truncation: any 16 top bits are a bf16 value */
    uint32_t u, w;
    memcpy(&u, &teacher[i], 4), memcpy(&w, &student[i], 4);
    tb[i] = (uint16_t)(u >> 16), sb[i] = (uint16_t)(w >> 16);
  }
  snprintf(path, sizeof path, "%s/t_bf16.npy", work);
  write_npy(path, "<u2", N, V, tb, sizeof tb);
  snprintf(path, sizeof path, "%s/s_bf16.npy", work);
  write_npy(path, "<u2", N, V, sb, sizeof sb);
  if (run("'%s' compile-loss '%s/fkl.kd' --labels --dtype bf16 -o '%s/libfkl_bf16.so'", kdc,
          examples, work)) {
    fail("fkl bf16: compile-loss failed");
    return;
  }
  snprintf(path, sizeof path, "%s/libfkl_bf16.so", work);
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  eval_fn eval = NULL;
  info_fn get_info = NULL;
  if (h) *(void **)&eval = dlsym(h, "fkl_bf16_eval"), *(void **)&get_info = dlsym(h, "fkl_bf16_info");
  info in = {0};
  double loss = NAN, ref_loss;
  if (!eval || !get_info || get_info(&in) || in.teacher_dtype != 1 || in.student_dtype != 1)
    fail("fkl bf16: not loaded, or info dtypes %d %d", in.teacher_dtype, in.student_dtype);
  else if (!reference("fkl", "_bf16", &ref_loss, ref_grad)) {
    int st = eval(tb, sb, labels, N, V, grad, &loss, 2, err, sizeof err);
    if (st) fail("fkl bf16: eval returned %d: %s", st, err);
    else compare("fkl_bf16.so", loss, grad, ref_loss, ref_grad);
    printf("fkl bf16: loss %.9g (reference %.9g)\n", loss, ref_loss);
  }
  if (h) dlclose(h);
}

/* f32 to bfloat16, round to nearest even, NaN kept (quiet) */
static uint16_t bf16_rne(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16 | 0x40);
  return (uint16_t)((u + 0x7fffu + (u >> 16 & 1u)) >> 16);
}

/* --grad-dtype bf16: the same kernels, the gradient rounded when stored.
 * fkl is the f32-gradient library check_spec loaded. */
static void check_bf16_grad(void *fkl) {
  static float grad[N * V];
  static uint16_t gb[N * V];
  char path[4096], err[256] = "";
  if (run("'%s' compile-loss '%s/fkl.kd' --labels --grad-dtype bf16 -o '%s/libfkl_g16.so'", kdc,
          examples, work)) {
    fail("fkl --grad-dtype bf16: compile-loss failed");
    return;
  }
  snprintf(path, sizeof path, "%s/libfkl_g16.so", work);
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  eval_fn eval = NULL, eval32 = NULL;
  info_fn get_info = NULL;
  if (h) *(void **)&eval = dlsym(h, "fkl_g16_eval"), *(void **)&get_info = dlsym(h, "fkl_g16_info");
  if (fkl) *(void **)&eval32 = dlsym(fkl, "fkl_eval");
  info in = {0};
  double loss = NAN, loss32 = NAN;
  if (!eval || !eval32 || !get_info || get_info(&in) || in.has_grad != 2) {
    fail("fkl --grad-dtype bf16: not loaded, or info has_grad %d", in.has_grad);
  } else if (eval(teacher, student, labels, N, V, gb, &loss, 2, err, sizeof err) ||
             eval32(teacher, student, labels, N, V, grad, &loss32, 2, err, sizeof err)) {
    fail("fkl --grad-dtype bf16: eval failed: %s", err);
  } else {
    if (memcmp(&loss, &loss32, sizeof loss)) fail("fkl --grad-dtype bf16: loss %.17g, f32 library %.17g", loss, loss32);
    int bad = 0;
    for (int i = 0; i < N * V && bad < 5; i++)
      if (gb[i] != bf16_rne(grad[i]))
        bad++, fail("fkl --grad-dtype bf16: grad[%d] = 0x%04x, f32 %.9g rounds to 0x%04x", i, gb[i], grad[i],
                    bf16_rne(grad[i]));
    printf("fkl --grad-dtype bf16: loss %.9g, %d gradient elements rounded as the f32 ones\n", loss, N * V);
  }
  if (h) dlclose(h);
}

static int dir_is_empty(const char *path) {
  DIR *d = opendir(path);
  int empty = d != NULL;
  for (struct dirent *e; d && (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
  if (d) closedir(d);
  return empty;
}

/* No C compiler: exit 1, a message naming what to install, nothing left. */
static void check_missing_cc(void) {
  char out[4096], path[4096];
  snprintf(out, sizeof out, "%s/missing_cc.txt", work);
  int st = run("CC=/nonexistent/cc '%s' compile-loss '%s/fkl.kd' -o '%s/libmissing.so' 2> '%s'", kdc,
               examples, work, out);
  char msg[1024] = "";
  FILE *f = fopen(out, "r");
  size_t n = f ? fread(msg, 1, sizeof msg - 1, f) : 0;
  msg[n] = 0;
  if (f) fclose(f);
  if (st != 1 || !strstr(msg, "cannot run '/nonexistent/cc'") || !strstr(msg, "C compiler"))
    fail("missing CC: status %d, message '%s'", st, msg);
  struct stat sb;
  snprintf(path, sizeof path, "%s/libmissing.so", work);
  if (!stat(path, &sb)) fail("missing CC: %s left behind", path);
  snprintf(path, sizeof path, "%s/missing.h", work);
  if (!stat(path, &sb)) fail("missing CC: %s left behind", path);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: aot_test KDC EXAMPLES_DIR WORK_DIR CC\n");
    return 2;
  }
  kdc = argv[1], examples = argv[2], work = argv[3], cc = argv[4];
  /* kdc's temporary directories go here, so the test sees they are removed */
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s/tmp", work);
  mkdir(tmp, 0755);
  setenv("TMPDIR", tmp, 1);
  uint64_t r = 0x9e3779b97f4a7c15u;
  for (int i = 0; i < N * V; i++) {
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    teacher[i] = (float)((double)(r >> 11) * 0x1p-53 * 8 - 4);
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    student[i] = (float)((double)(r >> 11) * 0x1p-53 * 8 - 4);
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/t.npy", work);
  write_npy(path, "<f4", N, V, teacher, sizeof teacher);
  snprintf(path, sizeof path, "%s/s.npy", work);
  write_npy(path, "<f4", N, V, student, sizeof student);
  snprintf(path, sizeof path, "%s/l.npy", work);
  write_npy(path, "<i8", N, 0, labels, sizeof labels);
  snprintf(path, sizeof path, "%s/inputs.bin", work);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(teacher, 4, N * V, f) != N * V || fwrite(student, 4, N * V, f) != N * V || fclose(f))
    fail("cannot write %s", path);
  void *fkl = NULL, *jsd = NULL;
  check_spec("fkl", &fkl);
  check_spec("jsd", &jsd);
  check_bf16();
  check_bf16_grad(fkl);
  check_missing_cc();
  /* usage errors: exit status 2 */
  if (run("'%s' compile-loss '%s/fkl.kd' --kind dynamic -o '%s/x.so' 2>/dev/null", kdc, examples, work) != 2 ||
      run("'%s' compile-loss '%s/fkl.kd' --name 9lives -o '%s/x.so' 2>/dev/null", kdc, examples, work) != 2)
    fail("a bad --kind or --name is not a usage error");
  if (!dir_is_empty(tmp)) fail("kdc left files in its temporary directory %s", tmp);
  if (fkl) dlclose(fkl);
  if (jsd) dlclose(jsd);
  printf("%s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
