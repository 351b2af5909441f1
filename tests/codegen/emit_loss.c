/* Build-time helper for test_aot: compiles forward KL (T = 2, masked) to an
 * object file exporting kd_aot_fkl_program (kd_loss_emit_file) and writes
 * its header, the way `kdc compile-loss` does. usage: emit_loss OUT.o OUT.h */
#include <stdio.h>

#include "loss.h"
#include "losses.h"

int main(int argc, char **argv) {
  char err[512];
  if (argc != 3) {
    fprintf(stderr, "usage: emit_loss OUT.o OUT.h\n");
    return 2;
  }
  kd_tl_spec sp = {TL_FKL, 2.0, 1, KD_F32, 0};
  kd_graph *g = kd_tl_build(&sp, err, sizeof err);
  kd_loss_options o = {.name = "kd_aot_fkl"};
  if (!g || kd_loss_emit_file(g, &o, argv[1], 0, err, sizeof err)) {
    fprintf(stderr, "emit_loss: %s\n", err);
    kd_graph_free(g);
    return 1;
  }
  FILE *h = fopen(argv[2], "w");
  kd_status st = h ? kd_loss_write_header(g, &o, h) : KD_ERR_IO;
  if (h && fclose(h)) st = KD_ERR_IO;
  kd_graph_free(g);
  if (st) fprintf(stderr, "emit_loss: cannot write %s\n", argv[2]);
  return st != KD_OK;
}
