/* kdc compile-loss SPEC.kd [--target cpu|ptx] [--gpu sm_XX] [--block B] [-S]
 *                  [--kind object|asm|shared|static] [--name NAME] [-H HEADER]
 *                  [--dtype f32|bf16] [--grad-dtype f32|bf16] [--labels]
 *                  [--objective NAME] -o OUT
 *
 * Compiles a spec's objective (lowered, differentiated, simplified: the
 * whole pass pipeline) to a fused loss. For the CPU, the kind follows OUT's
 * suffix: an object file exporting NAME_program (codegen/loss.h), assembly
 * (.s or -S), a shared library (.so) or a static archive (.a) exporting the
 * plain C ABI NAME_eval / NAME_info (runtime/lossapi.h, docs/abi.md), each
 * with a header NAME.h. For NVIDIA GPUs PTX text that runtime/gpuloss.h runs
 * (docs/gpu.md).
 *
 * A library is the object, a generated glue file and the runtime kdc embeds
 * (runtime/rtarchive.h), linked by the system C compiler ($CC, else cc; a
 * static archive also needs $AR, else ar) in a private temporary directory;
 * the result is renamed into place, so a failed build leaves no OUT. */
#include <ctype.h>
#include <errno.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "loss.h"
#include "loss_spec.h"
#include "ptx.h"
#include "rtarchive.h"
#include "toolrun.h"

#define CMD "kdc compile-loss"

static void compile_usage(FILE *out) {
  fprintf(out,
          "usage: kdc compile-loss SPEC.kd -o OUT [--target cpu|ptx] [--gpu sm_XX]\n"
          "                        [--block B] [-S] [--kind KIND] [--name NAME]\n"
          "                        [-H HEADER] [--dtype f32|bf16]\n"
          "                        [--grad-dtype f32|bf16] [--labels] [--objective NAME]\n"
          "\n"
          "Compiles SPEC.kd's objective and its gradient into fused kernels.\n"
          "\n"
          "options:\n"
          "  -o OUT           the output file; for --target cpu its suffix picks the kind:\n"
          "                   .so a shared library and .a a static archive exporting\n"
          "                   NAME_eval and NAME_info (docs/abi.md; linked with $CC, else\n"
          "                   cc, and $AR, else ar), .s assembly, anything else an object\n"
          "                   file exporting NAME_program\n"
          "  --kind KIND      object, asm, shared or static, whatever OUT's suffix\n"
          "  --target cpu     code for this host's CPU (default)\n"
          "  --target ptx     PTX for an NVIDIA GPU (run with 'kdc eval-loss --device cuda'\n"
          "                   or runtime/gpuloss.h)\n"
          "  --gpu sm_XX      the GPU for --target ptx: sm_75, sm_80 (default), sm_86,\n"
          "                   sm_87, sm_89, sm_90, sm_90a\n"
          "  --block B        threads per row for --target ptx (a multiple of 32 up to\n"
          "                   1024; default 256)\n"
          "  -S               assembly instead of an object file (--target cpu)\n"
          "  --name NAME      the symbol prefix (default: OUT's name without directory,\n"
          "                   'lib' and suffix, e.g. fkl for libfkl.so; kd_loss for PTX)\n"
          "  -H HEADER        the C header's path (default NAME.h next to OUT; none for\n"
          "                   assembly or PTX)\n"
          "  --dtype bf16     the kernels read bfloat16 logits (default f32)\n"
          "  --grad-dtype bf16 the kernels write the gradient in bfloat16, rounded to\n"
          "                   nearest even (default f32)\n"
          "  --objective NAME the objective to compile (as for eval-loss)\n"
          "  --labels         mask rows by labels even if the objective reads none\n"
          "  -h, --help       print this help\n"
          "\n"
          "exit status: 0 success, 1 a bad spec or a compile error, 2 a usage error.\n");
}

static int compile_usage_error(const char *msg, const char *arg) {
  fprintf(stderr, CMD ": %s%s\n(see 'kdc compile-loss --help')\n", msg, arg);
  return KDC_EXIT_USAGE;
}

/* What --target cpu writes. */
typedef enum out_kind { OUT_OBJECT, OUT_ASM, OUT_SHARED, OUT_STATIC } out_kind;
static const char *const out_kind_names[] = {"object", "asm", "shared", "static"};

typedef struct compile_args {
  const char *spec, *out, *target, *gpu, *name, *dtype, *grad_dtype_name, *kind, *header;
  int block, asm_text;
  kd_dtype grad_dtype;
  kd_lower_options lower;
} compile_args;

static bool kind_of(const char *s, out_kind *k) {
  for (size_t i = 0; i < sizeof out_kind_names / sizeof out_kind_names[0]; i++)
    if (!strcmp(s, out_kind_names[i])) return *k = (out_kind)i, true;
  return false;
}

/* ... and short enough for the symbols derived from it (NAME_program, ...). */
static bool is_c_identifier(const char *s) {
  if (!*s || isdigit((unsigned char)*s) || strlen(s) > 100) return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '_') return false;
  return true;
}

static int parse(int argc, char **argv, compile_args *a) {
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    const char **slot = !strcmp(s, "-o")           ? &a->out
                        : !strcmp(s, "--target")    ? &a->target
                        : !strcmp(s, "--gpu")       ? &a->gpu
                        : !strcmp(s, "--name")      ? &a->name
                        : !strcmp(s, "--dtype")     ? &a->dtype
                        : !strcmp(s, "--grad-dtype") ? &a->grad_dtype_name
                        : !strcmp(s, "--kind")      ? &a->kind
                        : !strcmp(s, "-H")          ? &a->header
                        : !strcmp(s, "--objective") ? &a->lower.objective
                                                    : NULL;
    if (slot || !strcmp(s, "--block")) {
      if (i + 1 >= argc) return compile_usage_error("missing value after ", s);
      const char *v = argv[++i];
      if (slot) {
        *slot = v;
        continue;
      }
      char *end;
      long b = strtol(v, &end, 10);
      if (*end || b < 32 || b > 1024 || b % 32) return compile_usage_error("--block needs a multiple of 32 up to 1024, not ", v);
      a->block = (int)b;
    } else if (!strcmp(s, "-S")) {
      a->asm_text = 1;
    } else if (!strcmp(s, "--labels")) {
      a->lower.labels = true;
    } else if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
      compile_usage(stdout);
      return -1;
    } else if (s[0] == '-' && s[1]) {
      return compile_usage_error("unknown option ", s);
    } else if (a->spec) {
      return compile_usage_error("one spec at a time, not also ", s);
    } else {
      a->spec = s;
    }
  }
  if (!a->spec) return compile_usage_error("no spec given", "");
  if (!a->out) return compile_usage_error("no output file given (-o OUT)", "");
  if (strcmp(a->target, "cpu") && strcmp(a->target, "ptx"))
    return compile_usage_error("--target is cpu or ptx, not ", a->target);
  if (a->dtype && strcmp(a->dtype, "f32") && strcmp(a->dtype, "bf16"))
    return compile_usage_error("--dtype is f32 or bf16, not ", a->dtype);
  if (a->dtype && !strcmp(a->dtype, "bf16")) a->lower.teacher_dtype = a->lower.student_dtype = KD_BF16;
  if (a->grad_dtype_name && strcmp(a->grad_dtype_name, "f32") && strcmp(a->grad_dtype_name, "bf16"))
    return compile_usage_error("--grad-dtype is f32 or bf16, not ", a->grad_dtype_name);
  if (a->grad_dtype_name && !strcmp(a->grad_dtype_name, "bf16")) a->grad_dtype = KD_BF16;
  if (a->gpu && strcmp(a->target, "ptx")) return compile_usage_error("--gpu needs --target ptx", "");
  if (a->gpu && !kd_ptx_sm_known(a->gpu, NULL)) return compile_usage_error("unknown GPU ", a->gpu);
  if (a->kind && !strcmp(a->target, "ptx")) return compile_usage_error("--kind needs --target cpu", "");
  if (a->kind && !kind_of(a->kind, &(out_kind){0}))
    return compile_usage_error("--kind is object, asm, shared or static, not ", a->kind);
  if (a->name && !is_c_identifier(a->name))
    return compile_usage_error("--name needs a C identifier of at most 100 characters, not ", a->name);
  return KDC_EXIT_OK;
}

static bool has_suffix(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcmp(s + n - k, suffix);
}

/* --kind, else -S, else OUT's suffix. */
static out_kind resolve_kind(const compile_args *a) {
  out_kind k = OUT_OBJECT;
  if (a->kind) kind_of(a->kind, &k);
  else if (a->asm_text || has_suffix(a->out, ".s")) k = OUT_ASM;
  else if (has_suffix(a->out, ".so")) k = OUT_SHARED;
  else if (has_suffix(a->out, ".a")) k = OUT_STATIC;
  return k;
}

/* OUT's file name without directory, "lib" (for a library) and suffix, each
 * character that cannot be in a C identifier made '_': libfkl.so -> fkl. */
static void default_name(const char *out, out_kind k, char *name, size_t n) {
  const char *base = strrchr(out, '/') ? strrchr(out, '/') + 1 : out;
  if ((k == OUT_SHARED || k == OUT_STATIC) && !strncmp(base, "lib", 3) && base[3] && base[3] != '.')
    base += 3;
  size_t len = strcspn(base, ".");
  if (len == 0) base = "kd_loss", len = 7;
  size_t j = 0;
  if (isdigit((unsigned char)base[0])) name[j++] = '_';
  for (size_t i = 0; i < len && j + 1 < n; i++)
    name[j++] = isalnum((unsigned char)base[i]) ? base[i] : '_';
  name[j] = 0;
}

/* Writes the header through a temporary file renamed into place. */
static int write_header(const kd_graph *g, const kd_loss_options *o, out_kind k, const char *path) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  kd_status st = !f                  ? KD_ERR_IO
                 : k == OUT_OBJECT   ? kd_loss_write_header(g, o, f)
                                     : kd_loss_write_abi_header(g, o, f);
  if ((f && fclose(f)) || st || rename(tmp, path)) {
    fprintf(stderr, CMD ": cannot write the header %s\n", path);
    remove(tmp);
    return KDC_EXIT_USER;
  }
  return KDC_EXIT_OK;
}

#define KD_NEED_CC "a C compiler (e.g. apt-get install gcc)"

/* libNAME.so: glue + kernels + the runtime, only NAME_eval and NAME_info
 * exported (the version script also hides NAME_program). */
static int link_shared(const char *dir, const char *name, const char *out) {
  char glue[4096], obj[4096], rt[4096], map[4096], script[4200];
  kdc_join(glue, sizeof glue, dir, "abi.c"), kdc_join(obj, sizeof obj, dir, "loss.o");
  kdc_join(rt, sizeof rt, dir, "libkdc_runtime.a"), kdc_join(map, sizeof map, dir, "exports.map");
  char text[600];
  snprintf(text, sizeof text, "{\n  global: %s_eval; %s_info;\n  local: *;\n};\n", name, name);
  snprintf(script, sizeof script, "-Wl,--version-script=%s", map);
  if (kdc_write_text(CMD, map, text) || kdc_write_bytes(CMD, rt, kd_rtarchive, kd_rtarchive_size)) return KDC_EXIT_USER;
  const char *args[] = {"-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", out, glue, obj,
                        rt, script, "-Wl,--no-undefined", "-lpthread", "-lm", NULL};
  return kdc_run_tool(CMD, "CC", "cc", KD_NEED_CC, args);
}

/* libNAME.a: a copy of the runtime archive with the kernels and the glue added, so a
 * C program links it with -lpthread -lm alone. */
static int link_static(const char *dir, const char *name, const char *out) {
  char glue[4096], glue_o[4096], obj[4096];
  kdc_join(glue, sizeof glue, dir, "abi.c"), kdc_join(glue_o, sizeof glue_o, dir, "abi.o");
  kdc_join(obj, sizeof obj, dir, "loss.o");
  const char *cc[] = {"-c", "-fPIC", "-O2", "-fvisibility=hidden", "-o", glue_o, glue, NULL};
  int rc = kdc_run_tool(CMD, "CC", "cc", KD_NEED_CC, cc);
  /* archive members are named after their files: give them the loss's name,
   * so two losses' archives list apart */
  char member[4096], member_abi[4096], file[300];
  snprintf(file, sizeof file, "%s.o", name);
  kdc_join(member, sizeof member, dir, file);
  snprintf(file, sizeof file, "%s_abi.o", name);
  kdc_join(member_abi, sizeof member_abi, dir, file);
  if (!rc && (rename(obj, member) || rename(glue_o, member_abi))) rc = KDC_EXIT_USER;
  if (!rc) rc = kdc_write_bytes(CMD, out, kd_rtarchive, kd_rtarchive_size);
  const char *ar[] = {"rcs", out, member, member_abi, NULL};
  if (!rc) rc = kdc_run_tool(CMD, "AR", "ar", "binutils (e.g. apt-get install binutils)", ar);
  remove(member), remove(member_abi); /* named after the loss: workdir_free does not know them */
  return rc;
}

/* Builds the library in a private directory, links it to OUT.<pid>.tmp and
 * renames that into place: OUT is either the whole library or untouched. */
static int build_library(const kd_graph *g, const kd_loss_options *o, out_kind k, const char *out) {
  static const char *const files[] = {"loss.o", "abi.c", "abi.o", "libkdc_runtime.a",
                                      "exports.map", NULL};
  char dir[4096], path[4096], tmp[4096], err[1024] = "";
  if (kdc_workdir_new(CMD, dir, sizeof dir)) return KDC_EXIT_USER;
  snprintf(tmp, sizeof tmp, "%s.%ld.tmp", out, (long)getpid());
  int rc = KDC_EXIT_OK;
  kdc_join(path, sizeof path, dir, "loss.o");
  if (kd_loss_emit_file(g, o, path, 0, err, sizeof err)) {
    fprintf(stderr, CMD ": %s\n", err);
    rc = KDC_EXIT_USER;
  }
  kdc_join(path, sizeof path, dir, "abi.c");
  FILE *f = rc ? NULL : fopen(path, "w");
  if (!rc && (!f || kd_loss_write_abi_glue(o, f) | fclose(f))) {
    fprintf(stderr, CMD ": cannot write %s\n", path);
    rc = KDC_EXIT_USER;
  }
  if (!rc) rc = k == OUT_SHARED ? link_shared(dir, o->name, tmp) : link_static(dir, o->name, tmp);
  rc = kdc_finish_output(CMD, rc, tmp, out);
  kdc_workdir_free(dir, files);
  return rc;
}

static int compile_ptx(const compile_args *a, const kd_graph *g) {
  char err[1024] = "";
  kd_ptx_options o = {a->name, a->gpu, a->block, a->grad_dtype};
  char *ptx = NULL;
  if (kd_ptx_emit(g, &o, 0, &ptx, NULL, err, sizeof err)) {
    fprintf(stderr, CMD ": %s\n", err);
    return KDC_EXIT_USER;
  }
  int rc = kdc_write_text(CMD, a->out, ptx);
  free(ptx);
  return rc;
}

static int compile(const compile_args *a, const kd_graph *g) {
  if (!strcmp(a->target, "ptx")) return compile_ptx(a, g);
  out_kind k = resolve_kind(a);
  char name[128], header[4096];
  if (a->name) snprintf(name, sizeof name, "%s", a->name);
  else default_name(a->out, k, name, sizeof name);
  kd_loss_options o = {.name = name, .grad_dtype = a->grad_dtype};
  int rc = KDC_EXIT_OK;
  if (k == OUT_SHARED || k == OUT_STATIC) {
    rc = build_library(g, &o, k, a->out);
  } else {
    char err[1024] = "";
    if (kd_loss_emit_file(g, &o, a->out, k == OUT_ASM, err, sizeof err)) {
      fprintf(stderr, CMD ": %s\n", err);
      rc = KDC_EXIT_USER;
    }
  }
  if (rc || k == OUT_ASM) return rc;
  if (a->header) return write_header(g, &o, k, a->header);
  /* NAME.h next to OUT */
  const char *slash = strrchr(a->out, '/');
  snprintf(header, sizeof header, "%.*s%s.h", slash ? (int)(slash - a->out + 1) : 0, a->out, name);
  return write_header(g, &o, k, header);
}

int kdc_cmd_compile_loss(int argc, char **argv) {
  compile_args a = {0};
  a.target = "cpu";
  int rc = parse(argc, argv, &a);
  if (rc) return rc < 0 ? KDC_EXIT_OK : rc;
  kd_graph *g = NULL;
  rc = kdc_lower_spec(a.spec, &a.lower, &g, NULL);
  if (!rc) rc = kdc_run_pipeline(CMD, &g, NULL);
  if (!rc) rc = compile(&a, g);
  kd_graph_free(g);
  return rc;
}
