/* kdc run SPEC.kd [--steps N] [--out DIR] [--threads N] [--resume] [--train NAME]
 *              [--eval-batches N]
 *
 * Trains every train block of the spec in order (a teacher's block before
 * the student that loads its weights), in process: the plan of each block
 * (train_plan.h), its loss kernels and the step programs' fused maps
 * JIT-compiled (codegen/loss.h, codegen/fusedgen.h; KDC_NO_FUSED_JIT=1
 * leaves the maps to the interpreter), the loop of runtime/train.h. Prints one summary line per block on stdout and where its
 * files went; the progress goes to stderr. Exit status 0, 1 (a bad spec, bad
 * data, an I/O error), 2 (usage), 130 (stopped by Ctrl-C after saving). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "commands.h"
#include "diag.h"
#include "loss.h"
#include "fileio.h"
#include "fusedgen.h"
#include "train_image.h"
#include "train_plan.h"

#define CMD "kdc run"

typedef struct run_args {
  const char *spec, *out, *only, *data;
  int64_t steps, eval_batches;
  int threads;
  bool resume;
} run_args;

static void run_usage(FILE *out) {
  fprintf(out,
          "usage: kdc run SPEC.kd [--steps N] [--out DIR] [--threads N] [--resume]\n"
          "               [--train NAME] [--eval-batches N] [--data FILE]\n"
          "\n"
          "Trains the spec's train blocks in order: the student's (and a teacher's)\n"
          "forward and backward as compiled step programs, the objective as a fused\n"
          "loss kernel, JIT-compiled for this CPU. Progress goes to stderr, one\n"
          "summary line per block to stdout. Ctrl-C saves a checkpoint and stops.\n"
          "\n"
          "options:\n"
          "  --steps N         train N steps instead of the block's `steps`\n"
          "  --out DIR         write every file to DIR (default: beside the spec);\n"
          "                    a teacher's `load` file is looked for there first\n"
          "  --threads N       threads (default: every CPU)\n"
          "  --resume          continue each block from its checkpoint in DIR\n"
          "  --train NAME      train only the block that trains instance NAME\n"
          "  --eval-batches N  evaluate on at most N validation batches (default: all)\n"
          "  --data FILE       train on FILE instead of the data block's file\n"
          "  -h, --help        print this help\n"
          "\n"
          "files (in DIR): the block's `save` file (weights), NAME.ckpt.safetensors\n"
          "(weights, optimiser state, step), NAME.metrics.jsonl (a JSON object per step\n"
          "and per evaluation)\n"
          "\n"
          "exit status: 0 trained, 1 a bad spec, data or I/O error, 2 usage error,\n"
          "130 stopped by Ctrl-C (the checkpoint is saved)\n");
}

/* -1 to go on, else the exit status. */
static int run_parse(int argc, char **argv, run_args *a) {
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    bool more = i + 1 < argc;
    int64_t v;
    if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
      run_usage(stdout);
      return KDC_EXIT_OK;
    } else if (!strcmp(s, "--resume")) {
      a->resume = true;
    } else if ((!strcmp(s, "--steps") || !strcmp(s, "--threads") ||
                !strcmp(s, "--eval-batches")) && more) {
      if (!kdc_parse_int(argv[++i], 1, (int64_t)1 << 40, &v)) {
        fprintf(stderr, CMD ": %s takes an integer >= 1, not '%s'\n", s, argv[i]);
        return KDC_EXIT_USAGE;
      }
      if (!strcmp(s, "--steps")) a->steps = v;
      else if (!strcmp(s, "--threads")) a->threads = v > 4096 ? 4096 : (int)v;
      else a->eval_batches = v;
    } else if (!strcmp(s, "--out") && more) {
      a->out = argv[++i];
    } else if (!strcmp(s, "--train") && more) {
      a->only = argv[++i];
    } else if (!strcmp(s, "--data") && more) {
      a->data = argv[++i];
    } else if (s[0] == '-' || a->spec) {
      fprintf(stderr, CMD ": unexpected argument '%s' (see 'kdc run --help')\n", s);
      return KDC_EXIT_USAGE;
    } else {
      a->spec = s;
    }
  }
  if (!a->spec) {
    fprintf(stderr, CMD ": no SPEC.kd (see 'kdc run --help')\n");
    return KDC_EXIT_USAGE;
  }
  return -1;
}

/* The fused maps of the plan's programs compiled (*j stays NULL when
   KDC_NO_FUSED_JIT=1), their tables in *f. */
static int compile_fused(const kdc_train_plan *plan, kd_fused_jit **j, kd_train_fused *f) {
  const char *off = getenv("KDC_NO_FUSED_JIT");
  if (off && !strcmp(off, "1")) return KDC_EXIT_OK;
  const kd_step_prog *progs[2] = {plan->student_prog, plan->teacher_prog};
  int n = plan->teacher_prog ? 2 : 1;
  char err[2048];
  if (kd_fused_jit_new(progs, n, 0, j, err, sizeof err) != KD_OK) {
    fprintf(stderr, CMD ": compiling the fused maps: %s\n", err);
    return KDC_EXIT_USER;
  }
  *f = (kd_train_fused){.student = kd_fused_jit_table(*j, 0),
                        .teacher = n > 1 ? kd_fused_jit_table(*j, 1) : NULL,
                        .nstudent = plan->student_prog->nexprs,
                        .nteacher = n > 1 ? plan->teacher_prog->nexprs : 0};
  return KDC_EXIT_OK;
}

static int run_block(const run_args *a, const kd_program *prog, kd_diag *diag,
                     const kd_symbol *train) {
  kdc_plan_options po = {
      .cmd = CMD, .spec = a->spec, .diag = diag, .out_dir = a->out, .steps = a->steps};
  kdc_train_plan plan;
  kd_loss *obj = NULL, *ce = NULL;
  kd_fused_jit *fj = NULL;
  kd_train_fused fused = {0};
  char err[2048];
  int rc = kdc_train_plan_make(prog, train, &po, true, &plan);
  if (!rc && a->out && kd_mkdirs(a->out, err, sizeof err) != KD_OK) {
    fprintf(stderr, CMD ": %s\n", err);
    rc = KDC_EXIT_USER;
  }
  if (!rc && (kd_loss_compile(plan.objective, NULL, &obj, err, sizeof err) != KD_OK ||
              kd_loss_compile(plan.eval_ce, NULL, &ce, err, sizeof err) != KD_OK)) {
    fprintf(stderr, CMD ": compiling the loss kernels: %s\n", err);
    rc = KDC_EXIT_USER;
  }
  if (!rc) rc = compile_fused(&plan, &fj, &fused);
  uint8_t *image = NULL;
  size_t len = 0;
  if (!rc && kd_train_image_write(&plan.config, plan.teacher_sym ? plan.teacher_sym->name : NULL,
                                  plan.teacher_file, &image, &len, err, sizeof err) != KD_OK) {
    fprintf(stderr, CMD ": %s\n", err);
    rc = KDC_EXIT_USER;
  }
  if (!rc) {
    /* the run's own options, as a training binary takes them */
    char threads[32], batches[32];
    char *argv[12] = {CMD};
    int argc = 1;
    snprintf(threads, sizeof threads, "%d", a->threads);
    snprintf(batches, sizeof batches, "%" PRId64, a->eval_batches);
    if (a->threads > 0) argv[argc++] = "--threads", argv[argc++] = threads;
    if (a->eval_batches > 0) argv[argc++] = "--eval-batches", argv[argc++] = batches;
    if (a->resume) argv[argc++] = "--resume";
    if (a->data) argv[argc++] = "--data", argv[argc++] = (char *)a->data;
    rc = kd_train_main(CMD, image, len, kd_loss_program_of(obj), kd_loss_program_of(ce),
                       fj ? &fused : NULL, argc, argv);
  }
  free(image);
  kd_fused_jit_free(fj);
  kd_loss_free(obj);
  kd_loss_free(ce);
  kdc_train_plan_free(&plan);
  return rc;
}

int kdc_cmd_run(int argc, char **argv) {
  run_args a = {0};
  int rc = run_parse(argc, argv, &a);
  if (rc >= 0) return rc;
  kd_diag *diag = kd_diag_new(stderr);
  kd_program *prog = NULL;
  if (!diag) return KDC_EXIT_USER;
  kd_check_options opts = {0};
  if (kd_check_file(a.spec, &opts, diag, &prog) != KD_OK) {
    kd_program_free(prog);
    kd_diag_free(diag);
    return KDC_EXIT_USER;
  }
  size_t n = kd_program_ntrains(prog), ran = 0;
  rc = KDC_EXIT_OK;
  for (size_t i = 0; i < n && rc == KDC_EXIT_OK; i++) {
    const kd_symbol *t = kd_program_train(prog, i);
    if (a.only && strcmp(t->train.instance->name, a.only)) continue;
    ran++;
    rc = run_block(&a, prog, diag, t);
  }
  if (rc == KDC_EXIT_OK && !ran) {
    if (a.only) fprintf(stderr, CMD ": %s: no train block trains '%s'\n", a.spec, a.only);
    else fprintf(stderr, CMD ": %s: no train block\n", a.spec);
    rc = KDC_EXIT_USER;
  }
  kd_program_free(prog);
  kd_diag_free(diag);
  return rc;
}
