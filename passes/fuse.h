/* Fusion and row scheduling: how a differentiated, simplified loss graph is
 * computed row by row with the fewest passes over each row of logits.
 *
 * Every node gets a kind from its shape (right-aligned, rows then columns):
 *   GLOBAL  no N and no V dimension ([], [1, 1]): constants, reductions over
 *           rows (the loss, the number of valid rows), arithmetic on those;
 *   ROW     [N, 1]: a row scalar (labels, log-sum-exps, the per-row loss);
 *   ELEM    [N, V] or [1, V]: one value per logit, never stored as an N x V
 *           temporary: recomputed in every pass that needs it.
 *
 * Stages. A reduction over rows (SUM over axis 0 or over all axes of a ROW
 * node) is a barrier: its value exists only after every row has been seen.
 * The schedule is a sequence of stages; stage k is one row kernel that runs
 * over all rows (in parallel), preceded by a global step that computes the
 * GLOBAL nodes of phase k in double, and the program ends with the global
 * step K. A row reduction is accumulated in the latest stage that still
 * comes before its first reader, so the masked mean's count (labels only) is
 * stage 0 and the loss rows and the gradient share stage 1.
 *
 * Passes. Inside a stage, each reduction over a row (axis 1 of an ELEM node)
 * is assigned a pass over the row: a reduction whose argument reads row
 * scalars finalised in pass k runs in pass k + 1. LSE and RMAX are online
 * (one pass: running max and rescaled sum). A SUM of exp(a - c) * f, with c
 * a row scalar that would force a later pass, is folded online: accumulated
 * against the running max of a, rescaled as it moves, and multiplied by
 * exp(max - c) once the pass is over (the FlashAttention trick). Online
 * reductions over the same a in the same pass share the running max and the
 * exp. ELEM outputs ("grad") are stored in the earliest pass that can
 * compute them.
 *
 * Cached exps. A softmax exp(a - lse(a)) needed in a pass after the one
 * whose online group found lse(a) can be taken from that group's exps
 * exp(a - m), m its running reference, kept in the per-thread row cache
 * with the reference of each block of the row: the later pass multiplies by
 * exp(m - lse(a)), one exp per block. A group is kept when a pass that
 * stores nothing reads it (jsd's and tvd's middle pass); the gradient pass
 * alone hides its exps behind its stores, and keeping costs a store per exp
 * (fkl and rkl recompute). The exp counts below assume the cache; the CPU
 * emitter recomputes when a row is too long for it or the gradient stores
 * are non-temporal, the PTX emitter always.
 *
 * Legend: N = rows (tokens), V = vocabulary (columns). */
#ifndef KD_FUSE_H
#define KD_FUSE_H

#include <stdint.h>
#include <stdio.h>

#include "../ir/ir.h"

typedef enum kd_fuse_kind { KD_FUSE_GLOBAL, KD_FUSE_ROW, KD_FUSE_ELEM } kd_fuse_kind;

typedef enum kd_fuse_role {
  KD_ROLE_PLAIN,    /* computed from its sources in its own context */
  KD_ROLE_ROWRED,   /* SUM/RMAX/LSE over a row: ELEM -> ROW, in pass `pass` */
  KD_ROLE_FOLDED,   /* a ROWRED SUM of exp(a - c) * f folded online */
  KD_ROLE_NRED,     /* a reduction over rows: ROW -> GLOBAL, accumulated in stage `stage` */
  KD_ROLE_IDENTITY, /* a reduction over size-1 axes only, or EXPAND: the value of src[0] */
} kd_fuse_role;

#define KD_FUSE_MAX_STAGES 8
#define KD_FUSE_MAX_PASSES 8

typedef struct kd_fuse_node {
  kd_fuse_kind kind;
  kd_fuse_role role;
  int live;         /* some output depends on it; the rest is never computed */
  int phase;        /* GLOBAL: the global step that computes it (0: constants) */
  int stage;        /* NRED: the stage that accumulates its rows (-1 when not live) */
  int pass;         /* ROWRED/FOLDED: the pass over the row */
  int avail;        /* ROW/ELEM: the first pass in which the value can be computed */
  uint32_t stages;  /* ROW/ELEM: bit k set when stage k computes it */
  int slot;         /* NRED: its row array in the kernel arguments */
  kd_node_id fold_a, fold_c, fold_f; /* FOLDED: exp(a - c) * f; fold_f KD_NONE means 1 */
  int mulz;         /* FOLDED: f is taken as 0 where the exp is 0 (MULZ) */
  int exp_group;    /* ELEM exp(a - c), c = lse(a) or max(a): the online group whose exps
                     * exp(a - m) give it in later passes (one multiply by exp(m - c)), or -1 */
} kd_fuse_node;

/* One online group: the reductions of one pass that share a running max. */
typedef struct kd_fuse_group {
  kd_node_id a;        /* the ELEM node whose running max is kept */
  int pass;
  int nexp;            /* 1 when a member needs exp(a - max) (LSE, FOLDED), else 0 */
  int cached;          /* a later pass reads exp(a - c) from its exps (see exp_group) */
} kd_fuse_group;

typedef struct kd_fuse_stage {
  int npasses;
  int exps[KD_FUSE_MAX_PASSES]; /* exps per element in each pass (EXP nodes + groups; a
                                 * cached exp counts in its group's pass only) */
  int logs[KD_FUSE_MAX_PASSES]; /* logs per element in each pass */
  int has_rows;                 /* runs a row kernel (else it only has global work) */
} kd_fuse_stage;

typedef struct kd_schedule {
  const kd_graph *g;    /* not owned; must outlive the schedule */
  kd_fuse_node *node;   /* [kd_graph_size(g)] */
  int nstages;          /* row kernels; the global steps are 0 .. nstages */
  kd_fuse_stage stage[KD_FUSE_MAX_STAGES];
  int nslots;           /* reductions over rows: each one [N] doubles of kernel output */
  kd_fuse_group *group; /* online groups, over all stages */
  int ngroups;
  kd_node_id teacher, student, labels; /* inputs, or KD_NONE */
  kd_dim N, V;          /* the row and column dimensions (symbols) */
} kd_schedule;

/* Schedules g. Unsupported graphs (a reduction over rows of an N x V
 * value, a shape that is not one of the kinds above, more stages or passes
 * than the limits) give KD_ERR_UNSUPPORTED naming the node. */
kd_status kd_fuse(const kd_graph *g, kd_schedule **out, char *err, size_t errlen);
void kd_schedule_free(kd_schedule *s);

/* Total passes over a row of logits, over all stages. */
int kd_schedule_passes(const kd_schedule *s);
/* Exps per logit over all passes. */
int kd_schedule_exps(const kd_schedule *s);

/* Whether stage `stage` computes node id (ROW/ELEM nodes). */
static inline int kd_fuse_in_stage(const kd_schedule *s, kd_node_id id, int stage) {
  return (s->node[id].stages >> stage) & 1u;
}

/* The schedule as text (`kdc emit-ir --after fuse`):
 *   schedule: 2 stages, 2 passes over the row, 4 exp/element
 *   stage 0: rows: %5 -> slot 0
 *   stage 1, pass 0: lse %8 (online a=%7), ... ; exp 2, log 0
 *   ... */
void kd_schedule_print(const kd_schedule *s, FILE *out);

#endif /* KD_FUSE_H */
