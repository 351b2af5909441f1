/* A .kd spec's objective as a loss graph: check, lower, run the pipeline. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "commands.h"
#include "loss_spec.h"
#include "passes.h"

int kdc_lower_spec(const char *path, const kd_lower_options *opt, kd_graph **g,
                   kd_lower_info *info) {
  *g = NULL;
  kd_diag *diag = kd_diag_new(stderr);
  if (!diag) {
    fprintf(stderr, "kdc: out of memory\n");
    return KDC_EXIT_USER;
  }
  kd_program *prog = NULL;
  /* The logits come from the command line, not from the files the spec names. */
  kd_check_options copts = {.no_file_check = true};
  kd_status st = kd_check_file(path, &copts, diag, &prog);
  if (st == KD_OK) st = kd_lower(prog, opt, diag, g, info);
  if (st != KD_OK && kd_diag_error_count(diag) == 0)
    fprintf(stderr, "kdc: %s: %s\n", path, kd_status_str(st));
  kd_diag_flush(diag); /* it may still point into prog's sources */
  kd_program_free(prog);
  kd_diag_free(diag);
  return st == KD_OK ? KDC_EXIT_OK : KDC_EXIT_USER;
}

int kdc_run_pipeline(const char *cmd, kd_graph **g, const char *last) {
  if (last && !strcmp(last, "lower")) return KDC_EXIT_OK;
  char err[512];
  kd_graph *out = NULL;
  kd_status st = kd_pipeline_run(*g, last, &out, err, sizeof err);
  if (st != KD_OK) {
    fprintf(stderr, "%s: %s\n", cmd, err);
    return KDC_EXIT_USER;
  }
  kd_graph_free(*g);
  *g = out;
  return KDC_EXIT_OK;
}

void kdc_print_stages(FILE *out, const char *indent) {
  size_t n;
  const kd_pass *p = kd_pipeline(&n);
  fprintf(out, "%s%-13s %s\n", indent, "lower", "the objective as written (AST -> graph)");
  for (size_t i = 0; i < n; i++) fprintf(out, "%s%-13s %s\n", indent, p[i].name, p[i].summary);
}
