/* The row scheduler on the standard losses after the whole pass pipeline:
 * the passes over a row and the exps per element that the fused kernels
 * will do are pinned here, so a change in the simplifier or the scheduler
 * that costs a pass shows up as a failure, not as a slower benchmark. */
#include <stdio.h>
#include <string.h>

#include "fuse.h"
#include "loss.h"
#include "losses.h"

static int failures;

typedef struct expect {
  kd_tl_kind kind;
  int masked;
  int stages, passes, exps;
  int no_grad; /* the loss alone */
} expect;

/* The minimum for the row-at-a-time schedule (DESIGN.md, "The hot loop"):
 * fkl and rkl: pass 0 finds both log-sum-exps (and, for rkl, folds the
 * softmax-weighted loss sum online), pass 1 writes the gradient; 2 exps per
 * element in each pass (p and q). ce: one exp for lse(s), one for softmax(s).
 * jsd and tvd need sum_i q_i g_i of the gradient, which reads the log-sum-
 * exps: a third pass. That middle pass stores nothing, so it takes p and q
 * from pass 0's kept exps (fuse.h, "Cached exps"), and so does the gradient
 * pass: 2 exps per element in all. The count of valid rows is a stage of
 * its own with no pass over the logits (labels only), so masking adds a
 * stage, not a pass. */
static const expect cases[] = {
  {TL_FKL, 0, 2, 2, 4, 0}, {TL_FKL, 1, 2, 2, 4, 0}, {TL_RKL, 0, 2, 2, 3, 0}, {TL_RKL, 1, 2, 2, 3, 0},
  {TL_CE, 1, 2, 2, 2, 0},  {TL_JSD, 0, 2, 3, 2, 0}, {TL_TVD, 0, 2, 3, 2, 0},
  /* the loss alone: the softmax-weighted sums fold into the log-sum-exp
   * pass, so forward and reverse KL read each row once, and the count of
   * valid rows shares their stage (no row work reads it) */
  {TL_FKL, 1, 1, 1, 2, 1}, {TL_RKL, 0, 1, 1, 2, 1},
};

int main(void) {
  char err[512];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const expect *x = &cases[i];
    kd_tl_spec sp = {x->kind, 2.0, x->masked, KD_F32, x->no_grad};
    kd_graph *g = kd_tl_build(&sp, err, sizeof err);
    if (!g) {
      printf("FAIL %s: %s\n", kd_tl_name(x->kind), err);
      failures++;
      continue;
    }
    kd_schedule *s;
    if (kd_fuse(g, &s, err, sizeof err)) {
      printf("FAIL %s: %s\n", kd_tl_name(x->kind), err);
      kd_graph_print(g, stdout);
      failures++;
      kd_graph_free(g);
      continue;
    }
    printf("== %s%s%s\n", kd_tl_name(x->kind), x->masked ? " (masked)" : "",
           x->no_grad ? " (loss only)" : "");
    kd_schedule_print(s, stdout);
    int passes = kd_schedule_passes(s), exps = kd_schedule_exps(s);
    if (s->nstages != x->stages || passes != x->passes || exps != x->exps) {
      printf("FAIL %s%s: %d stages, %d passes, %d exp/element; want %d, %d, %d\n",
             kd_tl_name(x->kind), x->masked ? " masked" : "", s->nstages, passes, exps, x->stages,
             x->passes, x->exps);
      kd_graph_print(g, stdout);
      failures++;
    }
    kd_schedule_free(s);
    kd_graph_free(g);
  }
  /* what the scheduler and the emitter refuse, with a message naming it */
  kd_tl_spec sp = {TL_FKL, 2.0, 0, KD_F32, 0};
  kd_graph *raw = kd_tl_forward(&sp); /* softmax not canonicalised */
  kd_schedule *s = NULL;
  kd_status st = kd_fuse(raw, &s, err, sizeof err);
  printf("%s uncanonicalised softmax: %s\n", st == KD_ERR_UNSUPPORTED ? "ok  " : "FAIL", err);
  failures += st != KD_ERR_UNSUPPORTED || !strstr(err, "canonicalised");
  kd_schedule_free(s);
  kd_graph_free(raw);
  kd_graph *g = kd_tl_build(&sp, err, sizeof err);
  kd_loss *l = NULL;
  st = g ? kd_graph_add_output(g, "q", kd_graph_find_input(g, "teacher")) : KD_ERR_INVALID;
  if (!st) st = kd_loss_compile(g, NULL, &l, err, sizeof err);
  printf("%s a second [N, V] output: %s\n", st == KD_ERR_UNSUPPORTED ? "ok  " : "FAIL", err);
  failures += st != KD_ERR_UNSUPPORTED;
  kd_loss_free(l);
  kd_graph_free(g);

  printf(failures ? "FAILED (%d)\n" : "ok\n", failures);
  return failures != 0;
}
