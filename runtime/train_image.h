/* A training image: everything a training run needs except its loss
 * kernels, as one byte string. `kdc build` embeds it in the binary it
 * writes, whose main is kd_train_main; `kdc run` makes the same image in
 * memory and calls kd_train_main too, so the two run the same code on the
 * same data and give the same losses for the same seed.
 *
 * Layout (little-endian):
 *   "KDTRIMG1"            8 bytes
 *   json_len, json        u64, then the configuration as JSON (below)
 *   student_len, student  u64, then a step program (runtime/step.h)
 *   teacher_len, teacher  u64 (0: no teacher), then its step program
 * The JSON holds the kd_train_config fields by name, the optimiser and the
 * schedule, the files (data, save, checkpoint, metrics, the teacher's
 * weights) and the parameters: [{"name", "shape", "init", "mean", "std"}],
 * the student's and the teacher's, in order. Numbers round-trip exactly
 * (cJSON prints 17 significant digits when 15 do not). */
#ifndef KD_TRAIN_IMAGE_H
#define KD_TRAIN_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "lossrun.h"
#include "params.h"
#include "status.h"
#include "step.h"
#include "train.h"

typedef struct kd_train_image {
  kd_train_config config; /* its pointers point into this image */
  kd_params params, teacher_params;
  kd_step_prog *student, *teacher;
  char *model_name, *teacher_name, *teacher_file;
  char *data_path, *save_path, *ckpt_path, *metrics_path;
} kd_train_image;

/* Writes c (its programs, parameter specs and files; not the loss programs,
 * threads, log or resume, which belong to the run) and the teacher's name
 * and weights file (NULL when no teacher). *buf is malloc'd. */
kd_status kd_train_image_write(const kd_train_config *c, const char *teacher_name,
                               const char *teacher_file, uint8_t **buf, size_t *len, char *err,
                               size_t errlen);

/* Reads and validates an image (KD_ERR_FORMAT with a message when it is not
 * one); free with kd_train_image_free. The teacher's weights are not loaded. */
kd_status kd_train_image_read(const uint8_t *buf, size_t len, kd_train_image *out, char *err,
                              size_t errlen);
void kd_train_image_free(kd_train_image *im);

/* The image's FUSED expressions compiled to native code (codegen/fusedgen.h):
 * a table per program for kd_step_set_compiled, nexprs entries, NULL where
 * interpreted; a NULL table interprets the whole program. */
typedef struct kd_train_fused {
  const kd_step_fused_fn *student, *teacher;
  int32_t nstudent, nteacher;
} kd_train_fused;

/* The main of a training binary, and of `kdc run` (prog is "kdc run" there,
 * the binary's name in one): parses argv (--steps N, --out DIR, --threads N,
 * --resume, --eval-batches N, --data FILE, --teacher FILE, --help; argv[0] is
 * skipped), loads the teacher's weights, trains with the two loss programs
 * and the compiled expressions (fused may be NULL; the environment's
 * KDC_NO_FUSED_JIT=1 interprets every one) and prints a summary line on
 * stdout. Returns the exit status: 0, 1 (bad
 * data, an I/O error), 2 (usage), 130 (stopped by Ctrl-C after saving). */
int kd_train_main(const char *prog, const uint8_t *image, size_t len,
                  const kd_loss_program *objective, const kd_loss_program *eval_ce,
                  const kd_train_fused *fused, int argc, char **argv);

#endif /* KD_TRAIN_IMAGE_H */
