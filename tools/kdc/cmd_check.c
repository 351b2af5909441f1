/* kdc check FILE...: parse and check .kd files, print their diagnostics. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "commands.h"

static void check_usage(FILE *out) {
  fprintf(out,
          "usage: kdc check [--no-prelude] FILE...\n"
          "\n"
          "Parses and checks each .kd file with the files it imports and the prelude\n"
          "(the standard divergences), and prints every diagnostic to stderr as\n"
          "file:line:col: error|warning: message, with the source line and a caret.\n"
          "Files the spec names that do not exist (data, weights) are warnings.\n"
          "\n"
          "options:\n"
          "  --no-prelude  do not import the prelude implicitly\n"
          "  -h, --help    print this help\n"
          "\n"
          "exit status: 0 no errors (warnings allowed), 1 errors, 2 usage error\n");
}

int kdc_cmd_check(int argc, char **argv) {
  kd_check_options opts = {0};
  int first = 1;
  for (; first < argc && argv[first][0] == '-' && argv[first][1]; first++) {
    const char *a = argv[first];
    if (!strcmp(a, "--")) {
      first++;
      break;
    }
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      check_usage(stdout);
      return KDC_EXIT_OK;
    }
    if (!strcmp(a, "--no-prelude")) {
      opts.no_prelude = true;
      continue;
    }
    fprintf(stderr, "kdc check: unknown option '%s' (see 'kdc check --help')\n", a);
    return KDC_EXIT_USAGE;
  }
  if (first >= argc) {
    fprintf(stderr, "kdc check: no input file (see 'kdc check --help')\n");
    return KDC_EXIT_USAGE;
  }
  kd_diag *diag = kd_diag_new(stderr);
  if (!diag) {
    fprintf(stderr, "kdc check: out of memory\n");
    return KDC_EXIT_USER;
  }
  int status = KDC_EXIT_OK;
  for (int i = first; i < argc; i++) {
    kd_program *prog = NULL;
    kd_status st = kd_check_file(argv[i], &opts, diag, &prog);
    if (st == KD_ERR_NOMEM) fprintf(stderr, "kdc check: %s: out of memory\n", argv[i]);
    if (st != KD_OK) status = KDC_EXIT_USER;
    kd_program_free(prog);
  }
  kd_diag_free(diag);
  return status;
}
