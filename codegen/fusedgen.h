/* FUSED step expressions (runtime/step.h's kd_step_expr) compiled by LLVM:
 * one function per expression, a loop over a block whose every
 * intermediate stays in a vector register, where the interpreter
 * (runtime/step_fused.c) runs one loop per op through memory.
 *
 * Each function is a kd_step_fused_fn: for j < m, dst[j] = the expression
 * at leaf[k][j], in vectors of the session's width, then a scalar tail.
 * An expression is compiled when each op is either on the interpreter's
 * f32 path, POW excepted (libm's pow in double), or a SELECT (exact in
 * double: a choice between f32 operands), and each leaf is f32, a constant,
 * or a bool read only as a SELECT's condition (kd_fused_compilable). The
 * others stay interpreted.
 *
 * Bits: the compiled code gives exactly the interpreter's results (step.c's
 * map_f32): the same float operations in the same order, constants rounded
 * to float as the interpreter rounds them, no fast-math flags (LLVM does not
 * contract an fmul and an fadd into an FMA without them), exp, log and tanh
 * as instruction-for-instruction transcriptions of runtime/vmath.h, sqrt as
 * llvm.sqrt (correctly rounded, as sqrtf). Only a NaN's sign and payload
 * may differ: LLVM folds x * 1 to x and x / -1 to -x (exact for numbers),
 * and x86 returns the first of two NaN operands, which compilers may
 * commute. No op makes a number of a NaN's sign or payload.
 *
 * Two uses: `kdc run` JIT-compiles the programs it trains (kd_fused_jit);
 * `kdc build` writes the same functions to an object file linked into the
 * training binary (kd_fused_emit_file), exporting for program k a table
 * names[k]: `const kd_step_fused_fn names[k][nexprs]` (NULL where
 * interpreted), to hand to kd_step_set_compiled. */
#ifndef KD_FUSEDGEN_H
#define KD_FUSEDGEN_H

#include <stdbool.h>
#include <stddef.h>

#include "../runtime/status.h"
#include "../runtime/step.h"

/* Whether expression e of p can be compiled (see above). */
bool kd_fused_compilable(const kd_step_prog *p, int32_t e);

typedef struct kd_fused_jit kd_fused_jit;

/* Compiles the expressions of progs[0..n) in one module of a new LLVM
 * session (vector_width f32 lanes; 0: the host's widest). The code lives
 * until kd_fused_jit_free. */
kd_status kd_fused_jit_new(const kd_step_prog *const *progs, int n, int vector_width,
                           kd_fused_jit **out, char *err, size_t errlen);
void kd_fused_jit_free(kd_fused_jit *j);

/* Program k's table: progs[k]->nexprs entries, NULL where interpreted
 * (NULL when the program has no expressions). */
const kd_step_fused_fn *kd_fused_jit_table(const kd_fused_jit *j, int k);
/* How many of program k's expressions were compiled. */
int32_t kd_fused_jit_count(const kd_fused_jit *j, int k);

/* Writes the functions of progs[0..n) and their tables names[0..n) (C
 * identifiers) as an object file for the host to path. A program with no
 * expressions gets no table. */
kd_status kd_fused_emit_file(const kd_step_prog *const *progs, const char *const *names, int n,
                             const char *path, char *err, size_t errlen);

#endif /* KD_FUSEDGEN_H */
