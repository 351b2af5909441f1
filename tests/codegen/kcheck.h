/* Runs a compiled loss and the reference executor on the same random inputs
 * and compares loss and gradient under the tolerance table in kcheck.c.
 * Shared by the kernel tests (hand-built graphs, the prelude's specs). */
#ifndef KD_TEST_KCHECK_H
#define KD_TEST_KCHECK_H

#include <stdint.h>

#include "ir.h"
#include "threadpool.h"

typedef struct kd_kc_case {
  const kd_graph *g; /* loss and grad outputs; inputs teacher (optional), student, labels (optional) */
  int64_t N, V;
  double T;          /* the loss's temperature: scales the tolerance (1 when none) */
  double mag;        /* logits uniform in [-mag, mag]; 0: normal with sigma 3 */
  double ninf;       /* fraction of teacher logits set to -inf */
  int masked;        /* 1: some labels -100; 2: all labels -100 */
  kd_dtype dtype;    /* of teacher and student: KD_F32 or KD_BF16 */
  int width;         /* f32 lanes of the kernel; 0: the host's */
  int nontemporal;   /* kd_loss_options.nontemporal */
  int grad_bf16;     /* also the same loss compiled to store its gradient as bf16: the
                        loss the same bits, each element the f32 gradient rounded to
                        nearest even */
} kd_kc_case;

/* Prints one line ("ok" or "FAIL", what, the errors and tolerances) and
 * returns 1 on failure. Also checks that 1 and pool's threads agree bit for
 * bit. */
int kd_kc_run(const char *what, const kd_kc_case *c, kd_pool *pool);

/* Frees the compiled loss kd_kc_run keeps for the next case with the same
 * graph and options; call before freeing that graph, and at the end. */
void kd_kc_done(void);

/* The worst error / tolerance ratios seen so far, printed at the end. */
void kd_kc_report(void);

#endif /* KD_TEST_KCHECK_H */
