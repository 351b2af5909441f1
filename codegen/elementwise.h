/* The expression emitter shared by the CPU and PTX back ends: one IR node
 * (unary, binary, compare, select) from its sources' LLVM values, scalar or
 * vector alike. What differs per target (how values convert between
 * classes, how exp and log are built) comes in through callbacks. */
#ifndef KD_ELEMENTWISE_H
#define KD_ELEMENTWISE_H

#include <llvm-c/Core.h>

#include "../ir/ir.h"

/* The LLVM class of a value: float (f32 lanes / double scalars), integer, bool. */
typedef enum kd_vclass { KD_CL_F, KD_CL_I, KD_CL_B } kd_vclass;

kd_vclass kd_vclass_of(kd_dtype t);

typedef struct kd_elem {
  LLVMBuilderRef b;
  const kd_graph *g;
  void *ctx; /* the back end's emitter, passed to the callbacks */
  LLVMValueRef (*convert)(void *ctx, LLVMValueRef v, kd_vclass from, kd_vclass to);
  LLVMValueRef (*exp)(void *ctx, LLVMValueRef x);
  LLVMValueRef (*log)(void *ctx, LLVMValueRef x);
  /* [graph size] lanes where a value is known to be 0 for free (an exp's
   * underflow test), or NULL entries / a NULL array: MULZ then compares. */
  LLVMValueRef *vzero;
  const char *who;     /* message prefix: "codegen", "ptx" */
  kd_status *st;       /* the first failure is recorded here, */
  char *err;           /* with its message */
  size_t errlen;
} kd_elem;

/* Emits node id from v[] (its sources' values). identity: the node only
 * forwards src[0] (a reduction over size-1 axes, EXPAND). An op with no
 * emitter records KD_ERR_UNSUPPORTED and returns a placeholder value. */
LLVMValueRef kd_elem_op(kd_elem *x, kd_node_id id, const LLVMValueRef *v, int identity);

#endif /* KD_ELEMENTWISE_H */
