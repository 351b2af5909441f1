/* Build-time helper for test_aot: compiles forward KL (T = 2, masked) to an
 * object file exporting kd_aot_fkl_program (kd_loss_emit_file), the way
 * `kdc compile-loss` does. usage: emit_loss OUT.o */
#include <stdio.h>

#include "loss.h"
#include "losses.h"

int main(int argc, char **argv) {
  char err[512];
  if (argc != 2) {
    fprintf(stderr, "usage: emit_loss OUT.o\n");
    return 2;
  }
  kd_tl_spec sp = {TL_FKL, 2.0, 1, KD_F32};
  kd_graph *g = kd_tl_build(&sp, err, sizeof err);
  kd_loss_options o = {"kd_aot_fkl", 0, 0};
  if (!g || kd_loss_emit_file(g, &o, argv[1], 0, err, sizeof err)) {
    fprintf(stderr, "emit_loss: %s\n", err);
    kd_graph_free(g);
    return 1;
  }
  kd_graph_free(g);
  return 0;
}
