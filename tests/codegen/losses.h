/* Loss graphs for the codegen tests, built with the ir.h builder the way the
 * lowering builds them (softmax / log_softmax over the row, a mean over
 * valid rows), then taken through canonicalize, autodiff, simplify, cse and
 * dce: the graphs the fused kernels are compiled from. */
#ifndef KD_TEST_LOSSES_H
#define KD_TEST_LOSSES_H

#include "ir.h"

typedef enum kd_tl_kind { TL_FKL, TL_RKL, TL_JSD, TL_TVD, TL_CE, TL_COUNT } kd_tl_kind;

typedef struct kd_tl_spec {
  kd_tl_kind kind;
  double T;           /* temperature (not used by TL_CE) */
  int masked;         /* rows with labels == -100 count in no mean and get 0 gradient */
  kd_dtype dtype;     /* of teacher and student: KD_F32 or KD_BF16 */
  int no_grad;        /* skip autodiff: the loss alone */
} kd_tl_spec;

const char *kd_tl_name(kd_tl_kind k);

/* The forward graph (output "loss"). */
kd_graph *kd_tl_forward(const kd_tl_spec *sp);

/* Forward -> canonicalize -> autodiff -> simplify -> cse -> dce: outputs
 * "loss" and "grad" ("loss" only with no_grad). NULL on failure (err says
 * why). */
kd_graph *kd_tl_build(const kd_tl_spec *sp, char *err, size_t errlen);

#endif /* KD_TEST_LOSSES_H */
