/* kdc tokenize TEXT -o OUT.bin: converts a text file into a token file.
 *
 * Byte-level: every byte becomes one token (vocab 256), the same stream
 * that training on TEXT directly reads. The token file is the format a
 * real tokenizer's output takes (docs/data-format.md); this command makes
 * one from any text and is what the loader's hint points to. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "data.h"

static void tokenize_usage(FILE *out) {
  fprintf(out,
          "usage: kdc tokenize TEXT -o OUT.bin\n"
          "\n"
          "Writes the bytes of TEXT as a kdc token file (vocabulary 256, one uint16\n"
          "token per byte, after a header with the magic \"KDTK\" and the version;\n"
          "see docs/data-format.md). The file is replaced atomically.\n"
          "\n"
          "options:\n"
          "  -o OUT.bin  the token file to write\n"
          "  -h, --help  print this help\n");
}

int kdc_cmd_tokenize(int argc, char **argv) {
  const char *in = NULL, *out = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      tokenize_usage(stdout);
      return KDC_EXIT_OK;
    } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
      out = argv[++i];
    } else if (argv[i][0] == '-' || in) {
      tokenize_usage(stderr);
      return KDC_EXIT_USAGE;
    } else {
      in = argv[i];
    }
  }
  if (!in || !out) {
    tokenize_usage(stderr);
    return KDC_EXIT_USAGE;
  }
  size_t n = strlen(in);
  if (n >= 4 && !strcmp(in + n - 4, ".bin")) {
    fprintf(stderr, "kdc tokenize: %s is already a token file (.bin)\n", in);
    return KDC_EXIT_USER;
  }
  char err[512];
  kd_dataset *ds;
  if (kd_data_open(in, &ds, err, sizeof err)) {
    fprintf(stderr, "kdc tokenize: %s\n", err);
    return KDC_EXIT_USER;
  }
  int64_t count = kd_data_tokens(ds);
  uint16_t *tok = malloc((size_t)count * sizeof *tok + 1);
  int rc = KDC_EXIT_OK;
  if (!tok) {
    fprintf(stderr, "kdc tokenize: out of memory for %lld tokens\n", (long long)count);
    rc = KDC_EXIT_USER;
  } else {
    for (int64_t i = 0; i < count; i++) tok[i] = (uint16_t)kd_data_token(ds, i);
    if (kd_tokfile_write(out, tok, count, kd_data_vocab(ds), err, sizeof err)) {
      fprintf(stderr, "kdc tokenize: %s\n", err);
      rc = KDC_EXIT_USER;
    } else {
      printf("wrote %lld tokens (vocabulary %d) to %s\n", (long long)count, kd_data_vocab(ds), out);
    }
  }
  free(tok);
  kd_data_close(ds);
  return rc;
}
