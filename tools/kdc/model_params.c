/* A lowered model's parameters as a kd_params (model_params.h). */
#include "model_params.h"

#include <stdio.h>

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

const kd_symbol *kdc_find_instance(const kd_program *prog, const char *cmd, const char *spec,
                                   const char *name) {
  const kd_symbol *s = kd_program_lookup(prog, name);
  if (s && s->kind == KD_SYM_INSTANCE && s->model) return s;
  fprintf(stderr, "kdc %s: %s: ", cmd, spec);
  if (s && s->kind == KD_SYM_INSTANCE)
    fprintf(stderr, "'%s' is precomputed logits, not a model instance", name);
  else if (s && s->kind == KD_SYM_MODEL)
    fprintf(stderr, "'%s' is a model definition, not an instance", name);
  else
    fprintf(stderr, "no model instance '%s'", name);
  int any = 0;
  for (size_t i = 0; i < kd_program_nsymbols(prog); i++) {
    const kd_symbol *t = kd_program_symbol(prog, i);
    if (t->kind == KD_SYM_INSTANCE && t->model)
      fprintf(stderr, "%s%s", any++ ? ", " : " (instances: ", t->name);
  }
  fprintf(stderr, "%s\n", any ? ")" : " (the spec has no model instance)");
  return NULL;
}
