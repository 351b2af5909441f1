/* kdc emit-ir SPEC.kd [--after PASS | --gpu SM] [--labels] [--objective NAME]
 *
 * Prints the loss graph of a spec's objective after a stage of the pipeline
 * (lower, canonicalize, autodiff, simplify, cse, dce), in the textual form of
 * kd_graph_print; after `fuse`, the whole pipeline's graph and then its row
 * schedule. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "fuse.h"
#include "loss_spec.h"
#include "passes.h"
#include "ptx.h"

#define CMD "kdc emit-ir"

static void emit_usage(FILE *out) {
  fprintf(out,
          "usage: kdc emit-ir SPEC.kd [--after PASS | --gpu SM] [--labels] [--objective NAME]\n"
          "\n"
          "Prints the loss graph of SPEC.kd's objective after the stage PASS (default: the\n"
          "whole pipeline), one node per line. The stages, in order:\n");
  kdc_print_stages(out, "  ");
  fprintf(out, "  %-13s %s\n", "fuse", "the row schedule of the fused kernel (after dce)");
  fprintf(out,
          "\n"
          "options:\n"
          "  --after PASS  stop after this stage\n"
          "  --objective NAME\n"
          "                the objective to lower (default: the one a train block\n"
          "                minimises, else the unnamed one)\n"
          "  --gpu SM      print the NVPTX module of the fused loss for GPU SM (sm_80,\n"
          "                sm_90, ...; docs/gpu.md) after the whole pipeline, optimised\n"
          "  --labels      mask rows by labels even if the objective reads none (as\n"
          "                eval-loss does when given --labels)\n"
          "  -h, --help    print this help\n"
          "\n"
          "exit status: 0 success, 1 a bad spec, 2 a usage error.\n");
}

static int emit_usage_error(const char *msg, const char *arg) {
  fprintf(stderr, CMD ": %s%s\n(see 'kdc emit-ir --help')\n", msg, arg);
  return KDC_EXIT_USAGE;
}

static int print_nvptx(const kd_graph *g, const char *sm) {
  char err[512], *ir = NULL;
  kd_ptx_options o = {.sm = sm};
  if (kd_ptx_emit(g, &o, 1, &ir, NULL, err, sizeof err) != KD_OK) {
    fprintf(stderr, CMD ": %s\n", err);
    return KDC_EXIT_USER;
  }
  fputs(ir, stdout);
  free(ir);
  return KDC_EXIT_OK;
}

static int print_schedule(const kd_graph *g) {
  char err[512];
  kd_schedule *s = NULL;
  if (kd_fuse(g, &s, err, sizeof err) != KD_OK) {
    fprintf(stderr, CMD ": %s\n", err);
    return KDC_EXIT_USER;
  }
  kd_schedule_print(s, stdout);
  kd_schedule_free(s);
  return KDC_EXIT_OK;
}

int kdc_cmd_emit_ir(int argc, char **argv) {
  const char *spec = NULL, *after = NULL, *gpu = NULL;
  kd_lower_options opt = {0};
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    if (!strcmp(s, "--after")) {
      if (i + 1 >= argc) return emit_usage_error("--after needs a stage name", "");
      after = argv[++i];
      if (strcmp(after, "lower") && strcmp(after, "fuse") && !kd_pipeline_find(after))
        return emit_usage_error("no stage named ", after);
    } else if (!strcmp(s, "--gpu")) {
      if (i + 1 >= argc) return emit_usage_error("--gpu needs an SM name", "");
      gpu = argv[++i];
      if (!kd_ptx_sm_known(gpu, NULL)) return emit_usage_error("unknown GPU ", gpu);
    } else if (!strcmp(s, "--objective")) {
      if (i + 1 >= argc) return emit_usage_error("--objective needs a name", "");
      opt.objective = argv[++i];
    } else if (!strcmp(s, "--labels")) {
      opt.labels = true;
    } else if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
      emit_usage(stdout);
      return KDC_EXIT_OK;
    } else if (s[0] == '-' && s[1]) {
      return emit_usage_error("unknown option ", s);
    } else if (spec) {
      return emit_usage_error("one spec at a time, not also ", s);
    } else {
      spec = s;
    }
  }
  if (!spec) return emit_usage_error("no spec given", "");
  if (gpu && after) return emit_usage_error("--gpu takes the whole pipeline, not --after", "");
  kd_graph *g = NULL;
  int rc = kdc_lower_spec(spec, &opt, &g, NULL);
  bool fuse = after && !strcmp(after, "fuse");
  if (!rc) rc = kdc_run_pipeline(CMD, &g, fuse ? NULL : after);
  if (!rc && gpu) rc = print_nvptx(g, gpu);
  else if (!rc) kd_graph_print(g, stdout);
  if (!rc && fuse) rc = print_schedule(g);
  kd_graph_free(g);
  return rc;
}
