/* kdc: the compiled knowledge-distillation command. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"

bool kdc_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *v) {
  char *end;
  long long x = strtoll(s, &end, 10);
  if (!*s || *end || x < lo || x > hi) return false;
  *v = x;
  return true;
}

static const kdc_command commands[] = {
  {"check", "parse and check .kd files; print diagnostics", kdc_cmd_check},
  {"fmt", "rewrite .kd files in the canonical layout (--check: only report)", kdc_cmd_fmt},
  {"dump-ast", "print the syntax tree of a .kd file", kdc_cmd_dump_ast},
  {"emit-ir", "print a spec's loss graph after a stage of the pass pipeline", kdc_cmd_emit_ir},
  {"eval-loss", "evaluate a spec's objective and its gradient on logits in .npy files",
   kdc_cmd_eval_loss},
  {"tokenize", "write a text file's bytes as a token file (.bin) for training", kdc_cmd_tokenize},
  {"compile-loss", "compile a spec's objective to a library, an object file or PTX", kdc_cmd_compile_loss},
  {"init", "write a model instance's initialised weights (safetensors)", kdc_cmd_init},
  {"params", "list a model instance's parameters; check a weights file against them",
   kdc_cmd_params},
  {"run", "train a spec's models (step programs and JIT-compiled loss kernels)", kdc_cmd_run},
  {"build", "write a standalone training binary for a spec's train block", kdc_cmd_build},
  {"sample", "generate text from a model's weights file or checkpoint", kdc_cmd_sample},
};

static void usage(FILE *out) {
  fprintf(out,
          "usage: kdc [--help] [--version] COMMAND [ARGS...]\n"
          "\n"
          "kdc compiles knowledge-distillation pipelines written in .kd files.\n"
          "\n"
          "commands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\n'kdc COMMAND --help' describes one command.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return KDC_EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    usage(stdout);
    return KDC_EXIT_OK;
  }
  if (!strcmp(cmd, "--version")) {
    printf("kdc %s\n", KDC_VERSION);
    return KDC_EXIT_OK;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(cmd, commands[i].name)) return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "kdc: unknown command '%s' (see 'kdc --help')\n", cmd);
  return KDC_EXIT_USAGE;
}
