/* The LLVM session: one target machine for the host, one LLJIT.
 *
 * Modelled on PostgreSQL's llvmjit.c: targets are initialised once per
 * process, the JIT gets its own copy of the host target machine (the LLJIT
 * takes ownership of what it is given), and every hand-off of ownership to
 * LLVM is marked with a comment. */
#include "session.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Error.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>

#if LLVM_VERSION_MAJOR < 17
#error "kdc needs LLVM 17 or newer (the new-pass-manager C API, LLVMRunPasses)"
#endif /* LLVM_VERSION_MAJOR < 17 */

struct kd_session {
  char *triple;   /* LLVM-allocated: LLVMDisposeMessage */
  char *cpu;      /* LLVM-allocated */
  char *features; /* LLVM-allocated */
  LLVMTargetMachineRef tm; /* ours: optimisation and object files */
  char *layout;   /* LLVM-allocated data-layout string */
  LLVMOrcLLJITRef jit;
  int vector_width;
  unsigned nmodules; /* names dumps uniquely */
};

/* Writes an LLVMErrorRef's text into err and consumes the error. */
static kd_status backend_error(LLVMErrorRef e, const char *what, char *err, size_t errlen) {
  char *msg = LLVMGetErrorMessage(e); /* consumes e */
  if (err && errlen) snprintf(err, errlen, "%s: %s", what, msg);
  LLVMDisposeErrorMessage(msg);
  return KD_ERR_BACKEND;
}

static kd_status fail(char *err, size_t errlen, kd_status st, const char *what,
                      const char *detail) {
  if (err && errlen) snprintf(err, errlen, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
  return st;
}

static void init_targets(void) {
  /* Native for the CPU JIT and objects; NVPTX is initialised by the PTX
   * emitter when it needs it. */
  LLVMInitializeNativeTarget();
  LLVMInitializeNativeAsmPrinter();
  LLVMInitializeNativeAsmParser();
}

/* The widest f32 vector the host features admit. */
static int width_from_features(const char *f) {
  if (strstr(f, "+avx512f")) return 16;
  if (strstr(f, "+avx")) return 8;
  return 4; /* SSE2 on x86-64, NEON on AArch64 */
}

static LLVMTargetMachineRef host_machine(kd_session *s, LLVMTargetRef target) {
  /* PIC so the same code serves the JIT and a shared object. */
  return LLVMCreateTargetMachine(target, s->triple, s->cpu, s->features,
                                 LLVMCodeGenLevelAggressive, LLVMRelocPIC,
                                 LLVMCodeModelDefault);
}

static kd_status make_jit(kd_session *s, LLVMTargetRef target, char *err, size_t errlen) {
  LLVMTargetMachineRef jtm = host_machine(s, target);
  if (!jtm) return fail(err, errlen, KD_ERR_BACKEND, "cannot create the JIT target machine", NULL);
  LLVMOrcJITTargetMachineBuilderRef jtmb =
      LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(jtm); /* owns jtm from here */
  LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
  LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder, jtmb); /* builder owns jtmb */
  LLVMErrorRef e = LLVMOrcCreateLLJIT(&s->jit, builder);        /* consumes builder */
  if (e) return backend_error(e, "cannot create the LLJIT", err, errlen);

  /* Resolve memset/memcpy and friends that the optimiser may introduce from
   * this process's symbols. */
  LLVMOrcDefinitionGeneratorRef gen;
  e = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
      &gen, LLVMOrcLLJITGetGlobalPrefix(s->jit), NULL, NULL);
  if (e) return backend_error(e, "cannot search the process for symbols", err, errlen);
  LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(s->jit), gen); /* dylib owns gen */
  return KD_OK;
}

kd_status kd_session_new(kd_session **out, char *err, size_t errlen) {
  *out = NULL;
  static pthread_once_t once = PTHREAD_ONCE_INIT; /* sessions may start on several threads */
  pthread_once(&once, init_targets);
  kd_session *s = calloc(1, sizeof *s);
  if (!s) return KD_ERR_NOMEM;
  s->triple = LLVMGetDefaultTargetTriple();
  s->cpu = LLVMGetHostCPUName();
  s->features = LLVMGetHostCPUFeatures();
  s->vector_width = width_from_features(s->features);

  LLVMTargetRef target;
  char *msg = NULL;
  if (LLVMGetTargetFromTriple(s->triple, &target, &msg)) {
    kd_status st = fail(err, errlen, KD_ERR_BACKEND, "no LLVM target for the host", msg);
    LLVMDisposeMessage(msg);
    kd_session_free(s);
    return st;
  }
  s->tm = host_machine(s, target);
  if (!s->tm) {
    kd_session_free(s);
    return fail(err, errlen, KD_ERR_BACKEND, "cannot create the host target machine", NULL);
  }
  LLVMTargetDataRef td = LLVMCreateTargetDataLayout(s->tm);
  s->layout = LLVMCopyStringRepOfTargetData(td);
  LLVMDisposeTargetData(td);

  kd_status st = make_jit(s, target, err, errlen);
  if (st) {
    kd_session_free(s);
    return st;
  }
  *out = s;
  return KD_OK;
}

void kd_session_free(kd_session *s) {
  if (!s) return;
  if (s->jit) {
    LLVMErrorRef e = LLVMOrcDisposeLLJIT(s->jit);
    if (e) LLVMConsumeError(e); /* nothing useful to do at teardown */
  }
  if (s->tm) LLVMDisposeTargetMachine(s->tm);
  LLVMDisposeMessage(s->layout);
  LLVMDisposeMessage(s->triple);
  LLVMDisposeMessage(s->cpu);
  LLVMDisposeMessage(s->features);
  free(s);
}

const char *kd_session_cpu(const kd_session *s) { return s->cpu; }
const char *kd_session_features(const kd_session *s) { return s->features; }
int kd_session_vector_width(const kd_session *s) { return s->vector_width; }
LLVMTargetMachineRef kd_session_target_machine(const kd_session *s) { return s->tm; }

kd_status kd_session_module_new(kd_session *s, const char *name, kd_module *m) {
  memset(m, 0, sizeof *m);
  snprintf(m->name, sizeof m->name, "%s", name);
  m->tsc = LLVMOrcCreateNewThreadSafeContext();
  m->ctx = LLVMOrcThreadSafeContextGetContext(m->tsc);
  m->mod = LLVMModuleCreateWithNameInContext(name, m->ctx);
  if (!m->mod) {
    kd_module_dispose(m);
    return KD_ERR_NOMEM;
  }
  LLVMSetTarget(m->mod, s->triple);
  LLVMSetDataLayout(m->mod, s->layout);
  s->nmodules++;
  return KD_OK;
}

void kd_module_dispose(kd_module *m) {
  if (m->mod) LLVMDisposeModule(m->mod);
  if (m->tsc) LLVMOrcDisposeThreadSafeContext(m->tsc);
  memset(m, 0, sizeof *m);
}

/* KDC_DUMP_IR=DIR: DIR/<module>.<stage>.ll */
static void dump_module(const kd_module *m, const char *stage) {
  const char *dir = getenv("KDC_DUMP_IR");
  if (!dir || !*dir) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.%s.ll", dir, m->name, stage);
  char *msg = NULL;
  if (LLVMPrintModuleToFile(m->mod, path, &msg)) {
    fprintf(stderr, "kdc: KDC_DUMP_IR: cannot write %s: %s\n", path, msg ? msg : "");
  }
  LLVMDisposeMessage(msg);
}

kd_status kd_session_optimize(kd_session *s, kd_module *m, char *err, size_t errlen) {
  dump_module(m, "before");
  char *msg = NULL;
  if (LLVMVerifyModule(m->mod, LLVMReturnStatusAction, &msg)) {
    kd_status st = fail(err, errlen, KD_ERR_BACKEND, "invalid LLVM module (a kdc bug)", msg);
    LLVMDisposeMessage(msg);
    return st;
  }
  LLVMDisposeMessage(msg);
  LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
  LLVMPassBuilderOptionsSetLoopVectorization(opts, 1);
  LLVMPassBuilderOptionsSetSLPVectorization(opts, 1);
  LLVMPassBuilderOptionsSetLoopUnrolling(opts, 1);
  LLVMErrorRef e = LLVMRunPasses(m->mod, "default<O3>", s->tm, opts);
  LLVMDisposePassBuilderOptions(opts);
  if (e) return backend_error(e, "the O3 pipeline failed", err, errlen);
  dump_module(m, "after");
  return KD_OK;
}

kd_status kd_session_jit(kd_session *s, kd_module *m, LLVMOrcResourceTrackerRef *rt,
                         char *err, size_t errlen) {
  LLVMOrcJITDylibRef jd = LLVMOrcLLJITGetMainJITDylib(s->jit);
  *rt = LLVMOrcJITDylibCreateResourceTracker(jd);
  LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(m->mod, m->tsc);
  /* owned by tsm from here: the module; tsm shares the context */
  LLVMOrcDisposeThreadSafeContext(m->tsc);
  m->mod = NULL;
  m->tsc = NULL;
  LLVMErrorRef e = LLVMOrcLLJITAddLLVMIRModuleWithRT(s->jit, *rt, tsm); /* owned by LLJIT from here */
  if (e) {
    LLVMOrcDisposeThreadSafeModule(tsm); /* on failure ownership stays with us */
    LLVMOrcReleaseResourceTracker(*rt);
    *rt = NULL;
    return backend_error(e, "cannot add the module to the JIT", err, errlen);
  }
  return KD_OK;
}

kd_status kd_session_lookup(kd_session *s, const char *symbol, void **addr, char *err,
                            size_t errlen) {
  LLVMOrcExecutorAddress a = 0;
  LLVMErrorRef e = LLVMOrcLLJITLookup(s->jit, &a, symbol);
  if (e) return backend_error(e, "JIT lookup failed", err, errlen);
  *addr = (void *)(uintptr_t)a;
  return KD_OK;
}

void kd_session_unload(kd_session *s, LLVMOrcResourceTrackerRef rt) {
  (void)s;
  if (!rt) return;
  LLVMErrorRef e = LLVMOrcResourceTrackerRemove(rt); /* frees the code */
  if (e) LLVMConsumeError(e);
  LLVMOrcReleaseResourceTracker(rt);
}

kd_status kd_session_emit(kd_session *s, kd_module *m, LLVMCodeGenFileType type,
                          const char *path, char *err, size_t errlen) {
  char *msg = NULL;
  /* LLVMTargetMachineEmitToFile takes a char * it does not modify. */
  char *p = strdup(path);
  if (!p) return KD_ERR_NOMEM;
  LLVMBool bad = LLVMTargetMachineEmitToFile(s->tm, m->mod, p, type, &msg);
  free(p);
  if (bad) {
    kd_status st = fail(err, errlen, KD_ERR_IO, "cannot emit code", msg);
    LLVMDisposeMessage(msg);
    return st;
  }
  return KD_OK;
}

kd_status kd_session_emit_string(kd_session *s, kd_module *m, LLVMCodeGenFileType type,
                                 char **out, char *err, size_t errlen) {
  char *msg = NULL;
  LLVMMemoryBufferRef buf;
  if (LLVMTargetMachineEmitToMemoryBuffer(s->tm, m->mod, type, &msg, &buf)) {
    kd_status st = fail(err, errlen, KD_ERR_BACKEND, "cannot emit code", msg);
    LLVMDisposeMessage(msg);
    return st;
  }
  size_t n = LLVMGetBufferSize(buf);
  *out = malloc(n + 1);
  if (*out) {
    memcpy(*out, LLVMGetBufferStart(buf), n);
    (*out)[n] = 0;
  }
  LLVMDisposeMemoryBuffer(buf);
  return *out ? KD_OK : KD_ERR_NOMEM;
}
