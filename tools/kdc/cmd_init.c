/* kdc init and kdc params: a model instance's parameters.
 *
 *   kdc init SPEC.kd --model NAME [-o FILE] [--seed N] [--force]
 *       lowers the instance and writes its initialised weights
 *   kdc params SPEC.kd --model NAME [--check FILE]
 *       lists its parameters; checks a weights file against them
 *
 * Both lower the instance (passes/lower_model.h), turn its layers into a
 * kd_params (model_params.h) and use runtime/params.h. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "commands.h"
#include "model_params.h"

typedef struct kdc_params_args {
  const char *cmd; /* "init" or "params", for messages */
  const char *spec;
  const char *model;
  const char *out;   /* init: -o */
  const char *check; /* params: --check */
  uint64_t seed;
  int has_seed, force;
} kdc_params_args;

static void init_usage(FILE *out) {
  fprintf(out,
          "usage: kdc init SPEC.kd --model NAME [-o FILE.safetensors] [--seed N] [--force]\n"
          "\n"
          "Lowers the model instance NAME of SPEC.kd and writes its parameters, each\n"
          "drawn from its init spec (normal, zeros or ones), to a safetensors file,\n"
          "atomically. A tensor's values depend only on the seed and its name\n"
          "(docs/architecture.md, \"Parameters\"). Prints the parameter count and the file.\n"
          "\n"
          "options:\n"
          "  --model NAME  the instance (`NAME = model(...)` in SPEC.kd)\n"
          "  -o FILE       the output; default: the instance's `load` file\n"
          "  --seed N      the seed (default: the seed of the instance's train block, else 1)\n"
          "  --force       replace FILE if it exists\n"
          "  -h, --help    print this help\n"
          "\n"
          "exit status: 0 written, 1 a bad spec or an I/O error, 2 usage error\n");
}

static void params_usage(FILE *out) {
  fprintf(out,
          "usage: kdc params SPEC.kd --model NAME [--check FILE.safetensors]\n"
          "\n"
          "Lists the parameters of the model instance NAME of SPEC.kd: name, shape and\n"
          "init spec, in the order the model makes them, and the total count. With\n"
          "--check, validates FILE against them (every tensor present, none unknown,\n"
          "the same shapes, dtype F32, BF16 or F16) and prints what does not match.\n"
          "\n"
          "options:\n"
          "  --model NAME  the instance (`NAME = model(...)` in SPEC.kd)\n"
          "  --check FILE  the weights file to validate\n"
          "  -h, --help    print this help\n"
          "\n"
          "exit status: 0 listed (and FILE matches), 1 a bad spec or FILE does not match,\n"
          "2 usage error\n");
}

static int parse_u64(const char *s, uint64_t *v) {
  if (!*s || *s == '-' || *s == '+') return 0;
  char *end;
  unsigned long long x = strtoull(s, &end, 10);
  if (*end) return 0;
  *v = x;
  return 1;
}

/* Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, kdc_params_args *a, void (*usage)(FILE *)) {
  int init = !strcmp(a->cmd, "init");
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    int has_value = i + 1 < argc;
    if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
      usage(stdout);
      return KDC_EXIT_OK;
    } else if (!strcmp(s, "--model") && has_value) {
      a->model = argv[++i];
    } else if (init && !strcmp(s, "-o") && has_value) {
      a->out = argv[++i];
    } else if (init && !strcmp(s, "--seed") && has_value) {
      if (!parse_u64(argv[++i], &a->seed)) {
        fprintf(stderr, "kdc init: --seed takes an integer >= 0, not '%s'\n", argv[i]);
        return KDC_EXIT_USAGE;
      }
      a->has_seed = 1;
    } else if (init && !strcmp(s, "--force")) {
      a->force = 1;
    } else if (!init && !strcmp(s, "--check") && has_value) {
      a->check = argv[++i];
    } else if (s[0] == '-' || a->spec) {
      fprintf(stderr, "kdc %s: unexpected argument '%s' (see 'kdc %s --help')\n", a->cmd, s,
              a->cmd);
      return KDC_EXIT_USAGE;
    } else {
      a->spec = s;
    }
  }
  if (!a->spec || !a->model) {
    fprintf(stderr, "kdc %s: %s (see 'kdc %s --help')\n", a->cmd,
            a->spec ? "no --model NAME" : "no SPEC.kd", a->cmd);
    return KDC_EXIT_USAGE;
  }
  return -1;
}


/* Checks and lowers the spec and fills P; *inst gets the instance. */
static int load_params(const kdc_params_args *a, kd_params *P, kd_program **progp,
                       const kd_symbol **inst) {
  kd_check_options opts = {.no_file_check = true}; /* init writes the `load` file */
  kd_diag *diag = kd_diag_new(stderr);
  if (!diag) {
    fprintf(stderr, "kdc %s: out of memory\n", a->cmd);
    return KDC_EXIT_USER;
  }
  kd_program *prog = NULL;
  int rc = KDC_EXIT_USER;
  if (kd_check_file(a->spec, &opts, diag, &prog) == KD_OK && (*inst = kdc_find_instance(prog, a->cmd, a->spec, a->model))) {
    kd_model m;
    if (kd_lower_model(prog, *inst, diag, &m) == KD_OK) {
      char err[512];
      if (kd_model_params(&m, P, err, sizeof err) == KD_OK)
        rc = KDC_EXIT_OK;
      else
        fprintf(stderr, "kdc %s: %s: %s\n", a->cmd, a->model, err);
      kd_model_free(&m);
    }
  }
  kd_diag_free(diag);
  if (rc == KDC_EXIT_OK)
    *progp = prog;
  else
    kd_program_free(prog);
  return rc;
}

/* The seed of the instance's train block, or the language's default, 1. */
static uint64_t default_seed(const kd_program *prog, const kd_symbol *inst) {
  for (size_t i = 0; i < kd_program_ntrains(prog); i++) {
    const kd_symbol *t = kd_program_train(prog, i);
    if (t->train.instance == inst) return (uint64_t)t->train.seed;
  }
  return 1;
}

int kdc_cmd_init(int argc, char **argv) {
  kdc_params_args a = {.cmd = "init"};
  int rc = parse_args(argc, argv, &a, init_usage);
  if (rc >= 0) return rc;
  kd_params P = {0};
  kd_program *prog = NULL;
  const kd_symbol *inst = NULL;
  if ((rc = load_params(&a, &P, &prog, &inst)) != KDC_EXIT_OK) {
    kd_params_free(&P);
    return rc;
  }
  const char *out = a.out ? a.out : inst->file;
  uint64_t seed = a.has_seed ? a.seed : default_seed(prog, inst);
  char err[512];
  if (!out) {
    fprintf(stderr, "kdc init: '%s' has no `load` file: give one with -o FILE.safetensors\n",
            a.model);
    rc = KDC_EXIT_USAGE;
  } else if (!a.force && access(out, F_OK) == 0) {
    fprintf(stderr, "kdc init: %s exists; --force replaces it\n", out);
    rc = KDC_EXIT_USER;
  } else {
    kd_params_meta meta = {.kdc_version = KDC_VERSION, .model = a.model, .seed = &seed};
    if (kd_params_init(&P, seed, err, sizeof err) ||
        kd_params_save(&P, out, &meta, err, sizeof err)) {
      fprintf(stderr, "kdc init: %s\n", err);
      rc = KDC_EXIT_USER;
    } else {
      printf("%s: %" PRId64 " parameters in %d tensors, seed %" PRIu64 " -> %s\n", a.model,
             kd_params_count(&P), P.n, seed, out);
    }
  }
  kd_params_free(&P);
  kd_program_free(prog);
  return rc;
}

/* One row per tensor, columns as wide as their longest entry. */
static void print_params(const kd_params *P) {
  int wname = 4, wshape = 5;
  char shape[256], init[64];
  for (int i = 0; i < P->n; i++) {
    const kd_ptensor *t = &P->t[i];
    int n = (int)strlen(t->name),
        m = (int)strlen(kd_params_shape_str(t->rank, t->shape, shape, sizeof shape));
    if (n > wname) wname = n;
    if (m > wshape) wshape = m;
  }
  printf("%-*s  %-*s  %s\n", wname, "name", wshape, "shape", "init");
  for (int i = 0; i < P->n; i++) {
    const kd_ptensor *t = &P->t[i];
    printf("%-*s  %-*s  %s\n", wname, t->name, wshape,
           kd_params_shape_str(t->rank, t->shape, shape, sizeof shape),
           kd_pinit_str(t->init, init, sizeof init));
  }
  printf("total: %" PRId64 " parameters in %d tensors\n", kd_params_count(P), P->n);
}

int kdc_cmd_params(int argc, char **argv) {
  kdc_params_args a = {.cmd = "params"};
  int rc = parse_args(argc, argv, &a, params_usage);
  if (rc >= 0) return rc;
  kd_params P = {0};
  kd_program *prog = NULL;
  const kd_symbol *inst = NULL;
  if ((rc = load_params(&a, &P, &prog, &inst)) == KDC_EXIT_OK) {
    print_params(&P);
    if (a.check) {
      char err[4096];
      kd_safetensors *st = NULL;
      if (kd_st_open(a.check, &st, err, sizeof err) == KD_OK &&
          kd_params_check(&P, st, a.check, err, sizeof err) == KD_OK) {
        printf("%s: matches %s\n", a.check, a.model);
      } else {
        fprintf(stderr, "%s\n", err);
        rc = KDC_EXIT_USER;
      }
      kd_st_close(st);
    }
  }
  kd_params_free(&P);
  kd_program_free(prog);
  return rc;
}
