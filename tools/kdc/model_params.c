/* A lowered model's parameters as a kd_params (model_params.h). */
#include "model_params.h"

#include "fileio.h"

static kd_pinit kd_pinit_of(kd_init init) {
  switch (init.kind) {
  case KD_INIT_ZEROS: return kd_pinit_zeros();
  case KD_INIT_ONES: return kd_pinit_ones();
  case KD_INIT_NORMAL: break;
  }
  return kd_pinit_normal(init.mean, init.std);
}

kd_status kd_model_params(const kd_model *m, kd_params *P, char *err, size_t errlen) {
  for (size_t i = 0; i < m->layers.nparams; i++) {
    const kd_model_param *p = &m->layers.params[i];
    const kd_node *n = kd_graph_node(m->g, p->id);
    int64_t shape[KD_PARAMS_MAX_RANK];
    if (n->rank > KD_PARAMS_MAX_RANK)
      return kd_errf(err, errlen, KD_ERR_INVALID, "parameter \"%s\": rank %d is above %d", p->name,
                     n->rank, KD_PARAMS_MAX_RANK);
    for (int d = 0; d < n->rank; d++) {
      if (KD_DIM_IS_SYM(n->shape[d]))
        return kd_errf(err, errlen, KD_ERR_INVALID,
                       "parameter \"%s\": dimension %d is the symbol %s; "
                       "parameters need concrete shapes",
                       p->name, d, kd_graph_sym_name(m->g, n->shape[d]));
      shape[d] = n->shape[d];
    }
    kd_status st = kd_params_add(P, p->name, n->rank, shape, kd_pinit_of(p->init), err, errlen);
    if (st) return st;
  }
  return KD_OK;
}
