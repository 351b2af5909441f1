/* `kdc dump-ast FILE`: the syntax tree of one .kd file, as the parser built it. */
#include <stdio.h>
#include <string.h>

#include "ast.h"
#include "commands.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: kdc dump-ast FILE\n"
          "\n"
          "Parses FILE and prints its syntax tree: one\n"
          "node per line, indented by depth, as\n"
          "  KIND [OP] [NAME] [VALUE] @FIRST_LINE:FIRST_COL-LAST_LINE:LAST_COL\n"
          "where the last column is one past the node's last byte. A child whose\n"
          "place is not clear from its kind is labelled (load:, every:, hyper:,\n"
          "body:). Imports are not followed and names are not checked.\n"
          "\n"
          "Exit status: 0 parsed, 1 syntax errors (printed on stderr), 2 usage error.\n");
}

int kdc_cmd_dump_ast(int argc, char **argv) {
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return KDC_EXIT_OK;
    }
    if (argv[i][0] == '-') {
      fprintf(stderr, "kdc dump-ast: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return KDC_EXIT_USAGE;
    }
    if (path) {
      fprintf(stderr, "kdc dump-ast: one file at a time\n");
      return KDC_EXIT_USAGE;
    }
    path = argv[i];
  }
  if (!path) {
    usage(stderr);
    return KDC_EXIT_USAGE;
  }

  char err[512];
  kd_source *src = NULL;
  kd_status st = kd_source_load(path, &src, err, sizeof err);
  if (st != KD_OK) {
    fprintf(stderr, "kdc dump-ast: %s\n", st == KD_ERR_IO ? err : kd_status_str(st));
    return KDC_EXIT_USER;
  }
  kd_diag *diag = kd_diag_new(stderr);
  kd_ast *file = NULL;
  st = diag ? kd_parse(src, diag, &file) : KD_ERR_NOMEM;
  if (st == KD_OK) kd_ast_dump(file, stdout);
  else if (st != KD_ERR_SYNTAX) fprintf(stderr, "kdc dump-ast: %s\n", kd_status_str(st));
  kd_ast_free(file);
  kd_diag_free(diag);
  kd_source_free(src);
  return st == KD_OK ? KDC_EXIT_OK : KDC_EXIT_USER;
}
