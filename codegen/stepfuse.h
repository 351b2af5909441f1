/* Fusion of elementwise chains in a step program (runtime/step.h): a map
 * and the maps that produce its operands become one FUSED instruction, whose
 * intermediates never go to memory.
 *
 * A map here is a MAP other than IOTA, or a FUSED. Producer P (a map
 * writing an f32 ARENA value v) fuses into a later map J of the same phase
 * when J writes f32 over the same shape and reads v only through P's dst
 * ref (the element P wrote at each index), no other instruction of the
 * program reads v, no instruction between P and J writes a value P reads
 * (P's work moves down to J), and J's dst overlaps none of P's sources
 * unless it reads them as the same elements (memplan may give J's dst the
 * bytes of a source that died at P: fused, that source is still read while
 * J's dst is written). Repeated as each instruction is added, a chain or
 * tree of maps becomes one instruction at the place of its last map, with
 * that map's dst and node. Each op computes what its MAP computed, so the
 * results are the same bits (step.h's kd_step_expr). split counts the
 * instructions left in the first phase. The arena stays as memplan planned
 * it: v's bytes are simply never written.
 *
 * kd_stepgen runs it last unless the environment sets KDC_NO_FUSE=1.
 * KD_ERR_NOMEM leaves p as it was. */
#ifndef KD_STEPFUSE_H
#define KD_STEPFUSE_H

#include <stddef.h>

#include "../runtime/step.h"

kd_status kd_step_fuse(kd_step_prog *p, char *err, size_t errlen);

#endif /* KD_STEPFUSE_H */
