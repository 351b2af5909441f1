/* The kdc subcommands. Each takes the arguments after its name (argv[0] is
 * the subcommand's name) and returns the process exit status:
 *   0 success, 1 a user error (bad .kd input, bad data), 2 a usage error. */
#ifndef KDC_COMMANDS_H
#define KDC_COMMANDS_H

#include <stdbool.h>
#include <stdint.h>

enum { KDC_EXIT_OK = 0, KDC_EXIT_USER = 1, KDC_EXIT_USAGE = 2 };

/* An option's decimal integer in [lo, hi] (the whole string); false for
   anything else, *v then untouched. Shared by the subcommands' parsers. */
bool kdc_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *v);

typedef struct kdc_command {
  const char *name;
  const char *summary; /* one line for `kdc --help` */
  int (*run)(int argc, char **argv);
} kdc_command;

/* Declared here, defined in cmd_<name>.c; listed in main.c. */
int kdc_cmd_check(int argc, char **argv);
int kdc_cmd_fmt(int argc, char **argv);
int kdc_cmd_dump_ast(int argc, char **argv);
int kdc_cmd_emit_ir(int argc, char **argv);
int kdc_cmd_eval_loss(int argc, char **argv);
int kdc_cmd_tokenize(int argc, char **argv);
int kdc_cmd_compile_loss(int argc, char **argv);
int kdc_cmd_init(int argc, char **argv);
int kdc_cmd_params(int argc, char **argv);
int kdc_cmd_run(int argc, char **argv);
int kdc_cmd_build(int argc, char **argv);
int kdc_cmd_sample(int argc, char **argv);

#endif /* KDC_COMMANDS_H */
