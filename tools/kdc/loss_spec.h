/* What `kdc emit-ir` and `kdc eval-loss` share: a .kd spec's objective
 * checked, lowered to a loss graph and taken through the pass pipeline. */
#ifndef KDC_LOSS_SPEC_H
#define KDC_LOSS_SPEC_H

#include "ir.h"
#include "lower.h"

/* Parses, checks and lowers the objective of the spec at path. Diagnostics
 * go to stderr. Returns a KDC_EXIT_* status; on KDC_EXIT_OK *g is the
 * lowered graph (the stage the pipeline calls "lower"). */
int kdc_lower_spec(const char *path, const kd_lower_options *opt, kd_graph **g,
                   kd_lower_info *info);

/* Takes *g through the pass pipeline after lowering, stopping after the pass
 * named `last` ("lower": none; NULL: every pass; the caller checks the name
 * with kd_pipeline_find). *g is replaced by the result. Errors are printed
 * prefixed by `cmd`; returns KDC_EXIT_*. */
int kdc_run_pipeline(const char *cmd, kd_graph **g, const char *last);

/* Prints the names of the stages, one line each, after `indent`. */
void kdc_print_stages(FILE *out, const char *indent);

#endif /* KDC_LOSS_SPEC_H */
