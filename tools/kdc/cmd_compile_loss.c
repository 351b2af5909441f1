/* kdc compile-loss SPEC.kd [--target cpu|ptx] [--gpu sm_XX] [--block B] [-S]
 *                  [--name NAME] [--dtype f32|bf16] [--labels] [--objective NAME] -o OUT
 *
 * Compiles a spec's objective (lowered, differentiated, simplified: the
 * whole pass pipeline) to a fused loss: for the CPU an object file (or
 * assembly with -S) exporting NAME_program (codegen/loss.h, docs/abi.md);
 * for NVIDIA GPUs PTX text that runtime/gpuloss.h runs (docs/gpu.md). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "loss.h"
#include "loss_spec.h"
#include "ptx.h"

#define CMD "kdc compile-loss"

static void compile_usage(FILE *out) {
  fprintf(out,
          "usage: kdc compile-loss SPEC.kd -o OUT [--target cpu|ptx] [--gpu sm_XX]\n"
          "                        [--block B] [-S] [--name NAME] [--dtype f32|bf16]\n"
          "                        [--labels]\n"
          "                        [--objective NAME]\n"
          "\n"
          "Compiles SPEC.kd's objective and its gradient into fused kernels.\n"
          "\n"
          "options:\n"
          "  -o OUT           the output file\n"
          "  --target cpu     an object file for this host, exporting NAME_program (default)\n"
          "  --target ptx     PTX for an NVIDIA GPU (run with 'kdc eval-loss --device cuda'\n"
          "                   or runtime/gpuloss.h)\n"
          "  --gpu sm_XX      the GPU for --target ptx: sm_75, sm_80 (default), sm_86,\n"
          "                   sm_87, sm_89, sm_90, sm_90a\n"
          "  --block B        threads per row for --target ptx (a multiple of 32 up to\n"
          "                   1024; default 256)\n"
          "  -S               assembly instead of an object file (--target cpu)\n"
          "  --name NAME      the symbol prefix (default kd_loss)\n"
          "  --dtype bf16     the kernels read bfloat16 logits (default f32)\n"
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

typedef struct compile_args {
  const char *spec, *out, *target, *gpu, *name, *dtype;
  int block, asm_text;
  kd_lower_options lower;
} compile_args;

static int parse(int argc, char **argv, compile_args *a) {
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    const char **slot = !strcmp(s, "-o")           ? &a->out
                        : !strcmp(s, "--target")    ? &a->target
                        : !strcmp(s, "--gpu")       ? &a->gpu
                        : !strcmp(s, "--name")      ? &a->name
                        : !strcmp(s, "--dtype")     ? &a->dtype
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
  if (a->gpu && strcmp(a->target, "ptx")) return compile_usage_error("--gpu needs --target ptx", "");
  if (a->gpu && !kd_ptx_sm_known(a->gpu, NULL)) return compile_usage_error("unknown GPU ", a->gpu);
  return KDC_EXIT_OK;
}

static int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f || fputs(text, f) < 0 || fclose(f)) {
    fprintf(stderr, CMD ": cannot write %s\n", path);
    if (f) fclose(f);
    return KDC_EXIT_USER;
  }
  return KDC_EXIT_OK;
}

static int compile(const compile_args *a, const kd_graph *g) {
  char err[1024] = "";
  kd_status st;
  if (!strcmp(a->target, "ptx")) {
    kd_ptx_options o = {a->name, a->gpu, a->block};
    char *ptx = NULL;
    st = kd_ptx_emit(g, &o, 0, &ptx, NULL, err, sizeof err);
    if (!st) {
      int rc = write_text(a->out, ptx);
      free(ptx);
      return rc;
    }
  } else {
    kd_loss_options o = {a->name, 0, 0};
    st = kd_loss_emit_file(g, &o, a->out, a->asm_text, err, sizeof err);
    if (!st) return KDC_EXIT_OK;
  }
  fprintf(stderr, CMD ": %s\n", err);
  return KDC_EXIT_USER;
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
