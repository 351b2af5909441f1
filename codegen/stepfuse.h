/* Fusion of elementwise chains in a step program (runtime/step.h): a MAP
 * and the map right after it that alone reads its result become one FUSED
 * instruction, whose intermediate never goes to memory; repeated, chains
 * of maps over one shape become one pass.
 *
 * Instruction I (a MAP other than IOTA, or a FUSED, writing an f32 ARENA
 * value v) and J = the next instruction, in the same phase, fuse when J is
 * such a map too, over the same shape, with an f32 dst; J reads v only
 * through I's dst ref exactly (the same element at every index); no other
 * instruction of the program reads v; and J's dst overlaps none of I's
 * sources unless it reads them as the same elements (memplan may give J's
 * dst the bytes of a source that died at I: fused, that source is still
 * read while J's dst is written). The fused instruction keeps J's node and
 * dst; each op computes what its MAP computed, so the results are the same
 * bits (step.h's kd_step_expr). split counts the instructions left in the
 * first phase. The arena is left as memplan planned it: v's bytes are
 * simply never written.
 *
 * kd_stepgen runs it last unless the environment sets KDC_NO_FUSE=1.
 * KD_ERR_NOMEM leaves p as it was. */
#ifndef KD_STEPFUSE_H
#define KD_STEPFUSE_H

#include <stddef.h>

#include "../runtime/step.h"

kd_status kd_step_fuse(kd_step_prog *p, char *err, size_t errlen);

#endif /* KD_STEPFUSE_H */
