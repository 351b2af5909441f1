/* One LLVM session: targets, a target machine for the host CPU, an ORC LLJIT,
 * the O3 pipeline and object-file emission. The code generators (cpu.c, and
 * later the PTX emitter) build modules with kd_session_module_new, and hand
 * them to kd_session_optimize and then kd_session_jit or kd_session_emit.
 *
 * This header exposes LLVM C API types and is internal to codegen/ (and its
 * tests); the public loss API is codegen/loss.h, which names no LLVM type.
 *
 * Environment: KDC_DUMP_IR=DIR writes every module to DIR/<name>.before.ll
 * and DIR/<name>.after.ll around the optimisation pipeline. */
#ifndef KD_SESSION_H
#define KD_SESSION_H

#include <stddef.h>

#include <llvm-c/Core.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/TargetMachine.h>

#include "../runtime/status.h"

typedef struct kd_session kd_session;

/* A module under construction in its own thread-safe context (the form the
 * LLJIT accepts). kd_session_jit consumes it; kd_module_dispose frees one
 * that was not handed over. */
typedef struct kd_module {
  LLVMOrcThreadSafeContextRef tsc;
  LLVMContextRef ctx; /* owned by tsc */
  LLVMModuleRef mod;
  char name[64];
} kd_module;

/* A session for the host CPU (its name and features, e.g. AVX-512). */
kd_status kd_session_new(kd_session **out, char *err, size_t errlen);
void kd_session_free(kd_session *s);

const char *kd_session_cpu(const kd_session *s);      /* "skylake-avx512", ... */
const char *kd_session_features(const kd_session *s); /* "+avx512f,+avx2,..." */
/* f32 lanes of the widest vector register the host has (16 with AVX-512,
 * 8 with AVX, 4 otherwise). */
int kd_session_vector_width(const kd_session *s);
LLVMTargetMachineRef kd_session_target_machine(const kd_session *s);

/* A fresh module with the session's triple and data layout. */
kd_status kd_session_module_new(kd_session *s, const char *name, kd_module *m);
void kd_module_dispose(kd_module *m);

/* Verifies the module, then runs default<O3> (dumping before and after when
 * KDC_DUMP_IR is set). */
kd_status kd_session_optimize(kd_session *s, kd_module *m, char *err, size_t errlen);

/* Adds the module to the JIT under a new resource tracker (returned in *rt,
 * so kd_session_unload can drop the code later). Consumes m. */
kd_status kd_session_jit(kd_session *s, kd_module *m, LLVMOrcResourceTrackerRef *rt,
                         char *err, size_t errlen);
/* The address of a JIT-compiled symbol; compiles on first lookup. */
kd_status kd_session_lookup(kd_session *s, const char *symbol, void **addr, char *err,
                            size_t errlen);
void kd_session_unload(kd_session *s, LLVMOrcResourceTrackerRef rt);

/* Writes the module as an object file (LLVMObjectFile) or assembly
 * (LLVMAssemblyFile) to `path`; the module stays the caller's. */
kd_status kd_session_emit(kd_session *s, kd_module *m, LLVMCodeGenFileType type,
                          const char *path, char *err, size_t errlen);
/* The same, into a malloc'd NUL-terminated string (*out, free() it). */
kd_status kd_session_emit_string(kd_session *s, kd_module *m, LLVMCodeGenFileType type,
                                 char **out, char *err, size_t errlen);

#endif /* KD_SESSION_H */
