/* From a lowered model (passes/lower_model.h) to its run-time parameter set
 * (runtime/params.h): the same names, in the same order, with their
 * concrete shapes and init specs. */
#ifndef KDC_MODEL_PARAMS_H
#define KDC_MODEL_PARAMS_H

#include "lower_model.h"
#include "params.h"

/* Adds every parameter of m to P (normally empty). A parameter whose shape
   holds a symbol (B, T, ...) is KD_ERR_INVALID naming it and the symbol:
   parameters must have concrete shapes. On error P may hold the
   parameters before the bad one; the caller frees it either way. */
kd_status kd_model_params(const kd_model *m, kd_params *P, char *err, size_t errlen);

/* The model instance `name` of prog, or NULL after printing why to stderr
   ("kdc CMD: SPEC: no model instance 'x' (instances: a, b)"). */
const kd_symbol *kdc_find_instance(const kd_program *prog, const char *cmd, const char *spec,
                                   const char *name);

#endif /* KDC_MODEL_PARAMS_H */
