/* Optimisers over float32 parameter tensors: SGD with momentum, Adam, AdamW.
 *
 * The caller owns the parameters and their gradients (kd_param, borrowed
 * for the optimiser's life) and marks which ones decay: by convention the
 * matrices (rank >= 2), not biases, norms' gains or positions' offsets.
 * The optimiser owns its state (the moments m and v, and the step count t),
 * which checkpoints export by name ("optim.m.<name>", "optim.v.<name>").
 *
 * The updates, for a gradient g at step t = 1, 2, ... and learning rate lr:
 *   SGD:   g += wd p (if decay);  m = mu m + g;  p -= lr m      (m = g when mu = 0)
 *   Adam:  g += wd p (if decay, the coupled L2 of the original paper);
 *          m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *          p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 *   AdamW: p -= lr wd p (if decay, decoupled: Loshchilov and Hutter), then
 *          Adam's update with no L2 term.
 * These match PyTorch's SGD (dampening 0, no Nesterov), Adam and AdamW. */
#ifndef KD_OPTIM_H
#define KD_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define KD_PARAM_MAX_RANK 4

typedef struct kd_param {
  const char *name;                  /* its safetensors key, e.g. "blocks.0.attn.qkv.weight" */
  float *data;                       /* numel values, updated in place */
  float *grad;                       /* numel values, read (clipping scales them) */
  int rank;
  int64_t shape[KD_PARAM_MAX_RANK];  /* entries past rank are 0 */
  int decay;                         /* non-zero: weight decay applies */
} kd_param;

int64_t kd_param_numel(const kd_param *p);

typedef enum kd_optim_kind { KD_OPTIM_SGD, KD_OPTIM_ADAM, KD_OPTIM_ADAMW, KD_OPTIM_KIND_COUNT } kd_optim_kind;

const char *kd_optim_kind_name(kd_optim_kind k); /* "sgd", "adam", "adamw" */
int kd_optim_kind_from_name(const char *name);   /* the kind, or -1 */

typedef struct kd_optim_config {
  kd_optim_kind kind;
  float beta1, beta2, eps; /* Adam(W) */
  float momentum;          /* SGD */
  float weight_decay;
} kd_optim_config;

/* The PyTorch defaults for a kind: betas (0.9, 0.999), eps 1e-8, momentum 0,
   weight decay 0.01 for AdamW and 0 for the others. */
kd_optim_config kd_optim_defaults(kd_optim_kind kind);

typedef struct kd_optim kd_optim;

/* Validates the configuration and the parameters (names unique and
   non-empty, ranks in range) and allocates zeroed state. */
kd_status kd_optim_create(const kd_optim_config *cfg, const kd_param *params, int n,
                          kd_optim **out, char *err, size_t errlen);
void kd_optim_free(kd_optim *o);

/* One update of every parameter from its gradient at learning rate lr. */
void kd_optim_step(kd_optim *o, float lr);

/* The state, for checkpoints. moment(i, 0) is m and moment(i, 1) v of
   parameter i, numel floats each, or NULL when the kind keeps none (SGD
   keeps m only when momentum != 0; v is Adam's alone). */
const kd_optim_config *kd_optim_get_config(const kd_optim *o);
int kd_optim_count(const kd_optim *o);
const kd_param *kd_optim_param(const kd_optim *o, int i);
float *kd_optim_moment(kd_optim *o, int i, int which);
int64_t kd_optim_steps(const kd_optim *o);
void kd_optim_set_steps(kd_optim *o, int64_t t);

/* Global L2 norm of all gradients (accumulated in double). When max_norm
   > 0 and the norm exceeds it, every gradient is scaled by
   max_norm / (norm + 1e-6) as PyTorch's clip_grad_norm_ does. A norm that is
   not finite is returned and the gradients are left alone, so the caller
   can skip the step. */
double kd_grad_clip(const kd_param *params, int n, double max_norm);

#endif /* KD_OPTIM_H */
