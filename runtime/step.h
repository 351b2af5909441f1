/* Step programs: a model's forward and backward as a flat list of
 * instructions over one arena, run by the runtime with no IR and no LLVM.
 *
 * codegen/stepgen.c lowers a planned graph (passes/memplan.h) to a program;
 * `kdc run` runs it in process, and `kdc build` serialises it into the
 * training binary, which links only libkdc_runtime. Matrix products are
 * OpenBLAS sgemm calls (runtime/kernels.h); embedding gathers and their
 * adjoints are the kernels of kernels.h; everything else is an elementwise
 * map, a reduction over one axis or a softmax over the last axis, split over
 * the thread pool. A FUSED instruction is a chain of maps in one pass
 * (codegen/stepfuse.h), its intermediates never stored.
 *
 * Memory. A program names `nvalues` buffers. An ARENA value lives at a fixed
 * byte offset of the caller's arena (arena_bytes, 64-byte aligned); a SLOT
 * value is the caller's memory, bound by name at run time (the parameters,
 * the token batch, the logits the step hands out, the gradients it writes).
 * Instructions read and write through refs: a value, an element offset into
 * it, and one stride per dimension of the instruction's iteration shape, in
 * elements. A broadcast operand has stride 0 along the broadcast dims; a
 * permuted one has permuted strides; a constant operand has value = -1 and
 * its number in `imm`. So RESHAPE, EXPAND, PERMUTE (as an operand) and
 * STOPGRAD cost nothing: they are refs, not instructions.
 *
 * Phases. Instructions [0, split) are the first phase, [split, ninstr) the
 * second. A training step runs the first (the forward pass: tokens to
 * logits), runs the fused loss kernel (runtime/lossrun.h), which writes the
 * logits' gradient into a slot, then the second (the backward pass: that
 * gradient to the parameters' gradients). Evaluation runs the first only.
 *
 * Determinism: every instruction gives bit-identical results whatever the
 * pool's size (reductions run in a fixed order inside one row, rows are
 * split between threads, never a row).
 *
 * Serialisation: kd_step_serialize writes a versioned little-endian byte
 * string; kd_step_deserialize reads one back and validates it (every ref
 * within its value's bounds for every index of its shape, every value and
 * slot index in range, every expression's operand codes and functions), so
 * a corrupted program is an error, never an out-of-bounds access. */
#ifndef KD_STEP_H
#define KD_STEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dtype.h"
#include "kernels.h"
#include "status.h"
#include "threadpool.h"

#define KD_STEP_MAX_RANK 4 /* as the IR's KD_MAX_RANK */
#define KD_STEP_MAX_SRC 3
#define KD_STEP_NAME_MAX 128 /* a slot's name, NUL included */
#define KD_STEP_MAGIC 0x5044534bu /* "KSDP" little-endian */
#define KD_STEP_VERSION 3

typedef enum kd_step_kind {
  KD_STEP_MAP,         /* dst = fn(src[0..nsrc)) at every index of shape */
  KD_STEP_REDUCE,      /* dst = fn over `axis` of src[0]; shape is the source's,
                          dst has stride 0 along axis (fn: SUM, MAX, LSE) */
  KD_STEP_SOFTMAX,     /* dst = softmax (fn SOFTMAX) or log_softmax (fn
                          LOG_SOFTMAX) of src[0] along `axis` */
  KD_STEP_GEMM,        /* kd_gemm_run(&gemm, src[0], src[1], dst); refs give
                          value and offset only */
  KD_STEP_GATHER,      /* dst [n, D] = table src[0] [rows, D] at ids src[1] [n]
                          (i64); shape = {n, D}; contiguous refs */
  KD_STEP_SCATTER_ADD, /* dst [rows, D] = sum of src[0] [n, D] at ids src[1];
                          dst zeroed first unless accumulate; shape = {n, D} */
  KD_STEP_FUSED,       /* dst (f32) = exprs[expr] at every index of shape: a chain
                          of maps in one pass, its intermediates never stored */
  KD_STEP_KIND_COUNT
} kd_step_kind;

/* MAP's and REDUCE's functions; semantics as the IR op of the same name
 * (ir/ops.def, ir/refexec.c). Comparisons give 1 or 0 in dst's dtype (bool
 * is one byte). COPY converts to dst's dtype (CAST) or materialises a
 * permuted or broadcast ref. IOTA writes the index along `axis`; FILL writes
 * imm of src[0] (nsrc = 1 with value -1). */
typedef enum kd_step_fn {
  KD_SF_COPY, KD_SF_FILL, KD_SF_IOTA,
  KD_SF_NEG, KD_SF_EXP, KD_SF_LOG, KD_SF_SQRT, KD_SF_ABS, KD_SF_SIGN, KD_SF_TANH,
  KD_SF_ADD, KD_SF_SUB, KD_SF_MUL, KD_SF_MULZ, KD_SF_DIV, KD_SF_POW, KD_SF_MAX, KD_SF_MIN,
  KD_SF_LT, KD_SF_LE, KD_SF_GT, KD_SF_GE, KD_SF_EQ, KD_SF_NE,
  KD_SF_SELECT,                 /* src[0] ? src[1] : src[2] */
  KD_SF_SUM, KD_SF_RMAX, KD_SF_LSE,       /* REDUCE */
  KD_SF_SOFTMAX, KD_SF_LOG_SOFTMAX,       /* SOFTMAX */
  KD_SF_COUNT
} kd_step_fn;

typedef enum kd_step_loc { KD_LOC_ARENA, KD_LOC_SLOT } kd_step_loc;

typedef struct kd_step_value {
  kd_step_loc loc;
  kd_dtype dtype;  /* KD_F32, KD_I64 or KD_BOOL */
  int64_t elems;   /* its size; refs stay inside [0, elems) */
  int64_t offset;  /* ARENA: bytes from the arena's start, a multiple of 64 */
  int32_t slot;    /* SLOT: index into slots */
} kd_step_value;

typedef struct kd_step_ref {
  int32_t value;  /* index into values, or -1: the constant imm */
  int64_t offset; /* elements from the value's start */
  int64_t stride[KD_STEP_MAX_RANK]; /* elements, per dim of the instruction's shape */
  double imm;
} kd_step_ref;

typedef struct kd_step_instr {
  kd_step_kind kind;
  kd_step_fn fn;
  int32_t rank;
  int64_t shape[KD_STEP_MAX_RANK];
  int32_t axis;  /* REDUCE, SOFTMAX, IOTA */
  int32_t nsrc;
  kd_step_ref dst, src[KD_STEP_MAX_SRC];
  kd_gemm gemm;      /* GEMM */
  int64_t rows;      /* GATHER, SCATTER_ADD: the table's rows */
  bool accumulate;   /* SCATTER_ADD */
  int32_t node;      /* the IR node it computes, for printing and profiles; -1 if none */
  int32_t expr;      /* FUSED: index into exprs (ignored by the other kinds) */
} kd_step_instr;

/* A FUSED instruction's expression (codegen/stepfuse.h makes them): ops
 * evaluated in order at every index of the instruction's shape, each one
 * computing what one MAP would, into a register. An operand code k >= 0 is
 * op k's register (k < the op's own index), k < 0 is leaf -1 - k. Leaves are
 * refs over the instruction's shape as MAP's sources are: f32, i64 or bool
 * memory, or a constant (value -1, imm). An op computes as the MAP it
 * replaces did: on the f32 path when fn is not SELECT and every operand is
 * a register, an f32 leaf or a constant, else in double from its operands
 * and rounded to f32 once (registers are f32: what the MAP's dst held). The
 * last op's register is the result. Operands past fn's arity are ignored. */
typedef struct kd_step_eop {
  kd_step_fn fn; /* a map fn: not IOTA */
  int32_t a[KD_STEP_MAX_SRC];
} kd_step_eop;

typedef struct kd_step_expr {
  int32_t nleaf, nop; /* nop >= 1 */
  kd_step_ref *leaf;
  kd_step_eop *op;
} kd_step_expr;

/* A FUSED expression compiled to native code (codegen/fusedgen.h): for
 * j < m, dst[j] = the expression at leaves leaf[k][j], each leaf a block of
 * m floats (m bytes for a bool leaf; a constant leaf's pointer is not read:
 * it is an immediate), with the bits the interpreter gives (a NaN's payload
 * aside). dst may be one of the leaves (an in-place map). */
typedef void (*kd_step_fused_fn)(int64_t m, float *dst, const float *const *leaf);

typedef struct kd_step_slot {
  char name[KD_STEP_NAME_MAX]; /* "tokens", "embed_1.weight", "logits", "logits.grad",
                                  "grad.embed_1.weight" */
  kd_dtype dtype;
  int32_t rank;
  int64_t shape[KD_STEP_MAX_RANK];
  bool output; /* written by the program (else only read) */
} kd_step_slot;

typedef struct kd_step_prog {
  int32_t nvalues, ninstr, nslots;
  int32_t split;        /* first instruction of the second phase; ninstr if none */
  int64_t arena_bytes;
  kd_step_value *values;
  kd_step_instr *instr;
  kd_step_slot *slots;
  int32_t nexprs;     /* FUSED instructions' expressions; each owns its leaf and op */
  kd_step_expr *exprs; /* arrays (malloc'd; kd_step_free frees them) */
  kd_step_fused_fn *compiled; /* nexprs entries (NULL: interpreted), or NULL: all are;
                                 not serialised (kd_step_set_compiled) */
} kd_step_prog;

/* A zeroed program with room for the given counts (split = ninstr) and no
 * expressions; NULL when out of memory. kd_step_free(NULL) does nothing. */
kd_step_prog *kd_step_alloc(int32_t nvalues, int32_t ninstr, int32_t nslots);
void kd_step_free(kd_step_prog *p);

/* Attaches compiled expressions: fns[e] computes exprs[e], NULL leaves it
 * to the interpreter; n must be nexprs (the table was made for this very
 * program: the same expressions in the same order, as a serialised and
 * deserialised program keeps them). The table is copied; the code must
 * outlive p's runs. fns NULL detaches. KD_ERR_INVALID when n differs, or
 * when a compiled expression has an i64 leaf or a POW or IOTA op (which
 * compiled code does not take). Change no expression after attaching. */
kd_status kd_step_set_compiled(kd_step_prog *p, const kd_step_fused_fn *fns, int32_t n, char *err,
                               size_t errlen);

/* Checks every index and every ref's bounds (as deserialisation does):
 * KD_ERR_FORMAT naming the instruction. */
kd_status kd_step_validate(const kd_step_prog *p, char *err, size_t errlen);

/* The slot named `name`, or -1. */
int32_t kd_step_find_slot(const kd_step_prog *p, const char *name);

/* Runs instructions [begin, end). arena: arena_bytes, 64-byte aligned;
 * slots[i]: slot i's memory (slots[i] may be NULL for a slot no instruction
 * of [begin, end) touches). Maps and reductions split their outer indices
 * over pool (NULL: one thread), products too (kernels.h: tiles of C, one
 * single-threaded sgemm each).
 * KD_ERR_INVALID for a gathered id outside the table (err says which), a
 * missing slot, or a range outside [0, ninstr]; err names the instruction:
 * "instruction 3: gather: id 300 at position 17 is outside the table's 256
 * rows". p must be valid (kd_step_validate, or read by kd_step_deserialize):
 * run checks no bounds itself. Validation also refuses what would make the
 * pool's threads race: a dst written twice through its strides, or
 * overlapping a source it is not read as (a map or softmax may work in
 * place through the identical ref). Dtypes: maps and reductions take any
 * mix (computed in double, stored as CAST does; NaN to i64 is 0 and
 * out-of-range values saturate), except that a map whose dst and memory
 * sources are all f32 (not IOTA or SELECT) computes in f32 with its
 * constants rounded to f32, as an f32 framework does (exp, log and tanh
 * from runtime/vmath.h); softmax, products, gathers and scatters are f32
 * (ids i64). */
kd_status kd_step_run(const kd_step_prog *p, void *arena, void *const *slots, int32_t begin,
                      int32_t end, kd_pool *pool, char *err, size_t errlen);

/* The byte string described at the top; *buf is malloc'd. */
kd_status kd_step_serialize(const kd_step_prog *p, uint8_t **buf, size_t *len);
kd_status kd_step_deserialize(const uint8_t *buf, size_t len, kd_step_prog **out, char *err,
                              size_t errlen);

/* "map", "gemm", ...; "exp", "sum", ...: the names kd_step_print uses ("?"
 * out of range). */
const char *kd_step_kind_name(kd_step_kind k);
const char *kd_step_fn_name(kd_step_fn f);

/* One line per value, slot and instruction, for `kdc emit-ir --after step`:
 *   step: 412 instructions (split 190), 37 slots, arena 18874368 bytes
 *   [12] map mul f32 [16, 128, 384] <- %3 +0 [49152 384 1 0], imm 0.5 */
void kd_step_print(const kd_step_prog *p, FILE *out);

#endif /* KD_STEP_H */
