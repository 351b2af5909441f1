/* The .kd abstract syntax tree.
 *
 * One node struct for every construct (as in chibicc and ggml): a kind, a
 * source range, and a few fields whose meaning depends on the kind, listed
 * next to each kind below. Every node owns its children; kd_ast_free frees a
 * whole tree. Nothing here knows about the IR or LLVM. */
#ifndef KD_AST_H
#define KD_AST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "diag.h"

typedef enum kd_ast_kind {
  /* ---- top level ---- */
  KD_AST_FILE,       /* items: top-level items; comments: every comment in the file */
  KD_AST_IMPORT,     /* str: the path as written (relative to the importing file) */
  KD_AST_DATA,       /* name; items: SETTING */
  KD_AST_MODEL,      /* name; params: PARAM; items: statements (ASSIGN, REPEAT) */
  KD_AST_DIVERGENCE, /* name; params: PARAM (the distributions, before ';');
                        items: PARAM (hyperparameters with defaults, after ';'); a: body */
  KD_AST_OBJECTIVE,  /* name: optional (NULL); items: ASSIGN */
  KD_AST_TRAIN,      /* name: the model trained; items: SETTING */
  KD_AST_BIND,       /* top-level `name = a [load b]`; b: NULL when there is no load */
  /* ---- statements ---- */
  KD_AST_ASSIGN,     /* name = a */
  KD_AST_REPEAT,     /* repeat a { items } */
  KD_AST_SETTING,    /* name [a] [every b]: `steps 2000`, `eval every 200`,
                        `save "s.safetensors" every 500`; a or b may be NULL (not both) */
  KD_AST_PARAM,      /* name [= a]: a formal parameter; a is its default or NULL */
  /* ---- expressions ---- */
  KD_AST_NUMBER,     /* num: value; str: the spelling as written ("1e-3"); is_int */
  KD_AST_STRING,     /* str, str_len: the bytes after escapes are decoded */
  KD_AST_NAME,       /* name */
  KD_AST_UNARY,      /* op a */
  KD_AST_BINARY,     /* a op b */
  KD_AST_CALL,       /* a: the callee (NAME or MEMBER); items: ARG */
  KD_AST_ARG,        /* name: NULL when positional; a: the value */
  KD_AST_MEMBER,     /* a.name, as in teacher.logits */
  KD_AST_KIND_COUNT
} kd_ast_kind;

typedef enum kd_ast_op {
  KD_OP_NONE,
  KD_OP_ADD, KD_OP_SUB, KD_OP_MUL, KD_OP_DIV, KD_OP_POW, /* binary */
  KD_OP_LT, KD_OP_LE, KD_OP_GT, KD_OP_GE, KD_OP_EQ, KD_OP_NE,
  KD_OP_NEG,                                              /* unary */
  KD_OP_COUNT
} kd_ast_op;

typedef struct kd_ast kd_ast;

typedef struct kd_ast_list {
  kd_ast **v;
  size_t n, cap;
} kd_ast_list;

/* A comment, kept so that `kdc fmt` can put it back. text excludes the '#'
 * and the newline. */
typedef struct kd_comment {
  kd_loc loc;
  char *text;
} kd_comment;

struct kd_ast {
  kd_ast_kind kind;
  kd_loc loc;         /* the whole construct */
  kd_loc name_loc;    /* where `name` is written, when there is a name */
  char *name;         /* identifier (owned) or NULL */
  char *str;          /* string bytes / number spelling (owned) or NULL */
  size_t str_len;
  double num;
  bool is_int;        /* NUMBER written without '.', exponent or fraction */
  kd_ast_op op;
  kd_ast *a, *b;      /* children, by kind (see above) */
  kd_ast_list params; /* by kind (see above) */
  kd_ast_list items;  /* by kind (see above) */
  kd_comment *comments; /* FILE only */
  size_t ncomments;
};

kd_ast *kd_ast_new(kd_ast_kind kind, kd_loc loc);
void kd_ast_free(kd_ast *node);
/* Appends; returns false when out of memory (the node is then freed). */
bool kd_ast_list_push(kd_ast_list *list, kd_ast *node);

const char *kd_ast_kind_name(kd_ast_kind kind); /* "call", "binary", ... */
const char *kd_ast_op_spelling(kd_ast_op op);   /* "+", "^", "<=", "-" ... */

/* Structural equality that ignores source locations and comments; number
 * literals compare by value. Used to prove `kdc fmt` preserves meaning. */
bool kd_ast_equal(const kd_ast *x, const kd_ast *y);

/* `kdc dump-ast`: one node per line, indented, with line:col ranges. */
void kd_ast_dump(const kd_ast *node, FILE *out);

/* Deepest nesting kd_parse accepts: of brackets, and of the expression tree
 * (so every recursive walk of a tree from kd_parse is bounded). */
#define KD_PARSE_MAX_DEPTH 200

/* Parses a whole source file. Syntax errors go to diag (several per run where
 * recovery allows). On success *out is the FILE node; on a syntax error
 * returns KD_ERR_SYNTAX and *out is NULL. */
kd_status kd_parse(const kd_source *src, kd_diag *diag, kd_ast **out);

#endif /* KD_AST_H */
