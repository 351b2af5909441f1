/* Training checkpoints: parameters, optimiser state, step and the data
 * generator's state in one safetensors file, written atomically.
 *
 * Layout (docs/training.md):
 *   tensors     "<name>"            every parameter, F32, its own shape
 *               "optim.m.<name>"    first moment (Adam, AdamW; SGD with momentum)
 *               "optim.v.<name>"    second moment (Adam, AdamW)
 *   __metadata__ "format": "kdc-checkpoint", "version": "1",
 *               "step", "seed" (decimal), "rng" (the kd_rng state, 4 x 16
 *               hex digits), "optim" (the kind) and "optim.step" (its t)
 *
 * kd_st_write writes a temporary file, fsyncs it and renames it over the
 * target, so a crash at any point leaves the old checkpoint or the new one,
 * never a torn file. The writer sorts names and lays the data out
 * deterministically: saving what was loaded gives the same bytes. */
#ifndef KD_CHECKPOINT_H
#define KD_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "optim.h"

typedef struct kd_ckpt_info {
  int64_t step;  /* training steps completed */
  uint64_t seed; /* the run's seed */
  kd_rng rng;    /* the training loader's generator, to resume its sequence */
} kd_ckpt_info;

/* opt may be NULL (weights only); otherwise its parameters are params[0..n)
   in the same order. */
kd_status kd_ckpt_save(const char *path, const kd_param *params, int n, kd_optim *opt,
                       const kd_ckpt_info *info, char *err, size_t errlen);

/* Validates the whole file against the model before writing anything:
   every parameter present as F32 with the model's shape, no tensor the
   model does not know, and (when opt is given) the optimiser's kind and
   every moment it keeps. Then copies the values into params[i].data and
   the optimiser, and fills *info (when not NULL). With opt NULL the
   optimiser state in the file is ignored (loading weights to sample or to
   use as a teacher). */
kd_status kd_ckpt_load(const char *path, const kd_param *params, int n, kd_optim *opt,
                       kd_ckpt_info *info, char *err, size_t errlen);

#endif /* KD_CHECKPOINT_H */
