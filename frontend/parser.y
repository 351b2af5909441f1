/* The .kd grammar (docs/grammar.md has it in EBNF).
 *
 * A pure (reentrant) LALR(1) parser with locations. The parser state kd_parser
 * travels with both the parser and the scanner (as the scanner's extra data):
 * the source, the diagnostics, the open brackets, the comments. Syntax errors
 * are reported by yyreport_syntax_error below in words a person can act on;
 * `error` rules per block let one run report several. */

%code top {
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
}

%code requires {
#include <setjmp.h>
#include <stdbool.h>

#include "ast.h"

#ifndef KD_YYSCAN_T_DEFINED
#define KD_YYSCAN_T_DEFINED
typedef void *yyscan_t;
#endif

/* An expression and the height of its tree, kept so that no tree is deeper
 * than KD_PARSE_MAX_DEPTH (every pass over the tree recurses). */
typedef struct kd_expr {
  kd_ast *node;
  int depth;
} kd_expr;

/* A '(' or '{' that is still open, for "expected '}' to close ...". */
typedef struct kd_open {
  kd_loc loc;
  char bracket;         /* '(' or '{' */
  const char *keyword;  /* the reserved word that opened the block ("data"), or NULL */
} kd_open;

typedef struct kd_parser {
  const kd_source *src;
  kd_diag *diag;
  int errors;                /* errors this parse reported */
  bool too_deep;             /* the nesting error was reported */
  bool stop;                 /* the scanner returns end of file from now on */
  bool nomem;                /* an allocation failed */
  int line, column;          /* the scanner's position */
  kd_open open[KD_PARSE_MAX_DEPTH];
  int nopen;
  char pending_close;        /* ')' or '}' just read: leaves `open` on the next token */
  int closing;               /* a token met inside brackets it cannot be in (a
                                top-level keyword, a '}' in parentheses), to
                                return once they are closed */
  kd_loc closing_loc;        /* where that token is */
  bool made_up;              /* the last token is a closing bracket the scanner made up */
  const char *keyword;       /* the last block keyword seen */
  kd_loc prev;               /* the previous token's location */
  char lookahead[48];        /* the last token's spelling, cut short */
  kd_comment *comments;
  size_t ncomments, comments_cap;
  kd_ast *file;              /* the result */
  jmp_buf fatal;             /* where flex's YY_FATAL_ERROR (out of memory) lands,
                                instead of calling exit() */
} kd_parser;

void kd_parser_error(kd_parser *ps, kd_loc loc, const char *fmt, ...)
#if defined(__GNUC__)
  __attribute__((format(printf, 3, 4)))
#endif
  ;
}

%code provides {
int kd_yylex(KD_YYSTYPE *yylval_param, KD_YYLTYPE *yylloc_param, yyscan_t yyscanner);
}

%define api.pure full
%define api.prefix {kd_yy}
%define api.token.prefix {TOK_}
%define api.location.type {kd_loc}
%define parse.error custom
%define parse.lac full
%locations
%expect 0
%param {yyscan_t scanner}
%parse-param {kd_parser *ps}

%code {
/* bison's default, plus the source pointer; an empty rule sits at the end
 * of what came before it. */
#define YYLLOC_DEFAULT(Cur, Rhs, N)                                   \
  do {                                                                \
    if (N) {                                                          \
      (Cur) = YYRHSLOC(Rhs, 1);                                       \
      (Cur).last_line = YYRHSLOC(Rhs, N).last_line;                   \
      (Cur).last_column = YYRHSLOC(Rhs, N).last_column;               \
    } else {                                                          \
      (Cur) = YYRHSLOC(Rhs, 0);                                       \
      (Cur).first_line = (Cur).last_line;                             \
      (Cur).first_column = (Cur).last_column;                         \
    }                                                                 \
  } while (0)

static void kd_yyerror(const kd_loc *loc, yyscan_t scanner, kd_parser *ps, const char *msg);

static kd_loc span(kd_loc a, kd_loc b) {
  a.last_line = b.last_line;
  a.last_column = b.last_column;
  return a;
}

/* A node named by an identifier the scanner allocated; takes the name. */
static kd_ast *named(kd_ast_kind kind, kd_loc loc, char *name, kd_loc name_loc) {
  kd_ast *n = kd_ast_new(kind, loc);
  if (!n) {
    free(name);
    return NULL;
  }
  n->name = name;
  n->name_loc = name_loc;
  return n;
}

static kd_expr leaf(kd_ast *n) { return (kd_expr){n, 1}; }

/* Wraps children into one expression node, unless that would make the tree
 * too deep: then the error is reported once and the children are dropped
 * for a placeholder, so the tree stays shallow whatever the input. A NULL
 * node means out of memory. */
static kd_expr node2(kd_parser *ps, kd_ast_kind kind, kd_ast_op op, kd_loc loc, kd_expr a,
                     kd_expr b) {
  int depth = 1 + (a.depth > b.depth ? a.depth : b.depth);
  if (depth > KD_PARSE_MAX_DEPTH) {
    if (!ps->too_deep)
      kd_parser_error(ps, loc, "expression nested too deeply (more than %d levels)",
                      KD_PARSE_MAX_DEPTH);
    ps->too_deep = true;
    kd_ast_free(a.node);
    kd_ast_free(b.node);
    return (kd_expr){kd_ast_new(KD_AST_NAME, loc), 1};
  }
  kd_ast *n = kd_ast_new(kind, loc);
  if (!n) {
    kd_ast_free(a.node);
    kd_ast_free(b.node);
    return (kd_expr){NULL, 0};
  }
  n->op = op;
  n->a = a.node;
  n->b = b.node;
  return (kd_expr){n, depth};
}

static kd_expr binary(kd_parser *ps, kd_ast_op op, kd_loc loc, kd_expr a, kd_expr b) {
  return node2(ps, KD_AST_BINARY, op, loc, a, b);
}

static bool is_named_arg(const kd_ast *arg) { return arg->name != NULL; }

/* Out of memory inside an action: stop parsing. bison does not free the
 * values of the rule whose action stops it, so what that rule held leaks;
 * nothing else does. */
#define NOMEM_IF(cond)      \
  do {                      \
    if (cond) {             \
      ps->nomem = true;     \
      YYNOMEM;              \
    }                       \
  } while (0)
}

%union {
  kd_ast *node;
  kd_expr expr;
  char *id;
}

%token <id> NAME "name"
%token <node> NUMBER "number" STRING "string"
%token IMPORT "'import'" DATA "'data'" MODEL "'model'" REPEAT "'repeat'"
       DIVERGENCE "'divergence'" OBJECTIVE "'objective'" TRAIN "'train'"
       LOAD "'load'" EVERY "'every'"
%token LE "'<='" GE "'>='" EQ "'=='" NE "'!='"

%type <node> file item import data model divergence objective train bind
%type <node> settings train_settings setting stmts stmt lets let params param params_opt args
%type <expr> expr sum term unary pow postfix primary arg
%type <node> args_opt hypers

%destructor { free($$); } <id>
%destructor { kd_ast_free($$); } <node>
%destructor { kd_ast_free($$.node); } <expr>

%start start
%initial-action { @$ = (kd_loc){ps->src, 1, 1, 1, 1}; }

%%

/* The result leaves through ps->file rather than as the start symbol's
 * value, which bison would free on success. */
start: file { ps->file = $1; ps->file->loc = span(@$, ps->prev); } ;

/* ---- top level -------------------------------------------------------- */

file:
    %empty            { $$ = kd_ast_new(KD_AST_FILE, @$); NOMEM_IF(!$$); }
  | file item         { $$ = $1; NOMEM_IF(!kd_ast_list_push(&$$->items, $2)); }
  | file ';'          { $$ = $1; }
  | file error        { $$ = $1; }
  ;

item: import | data | model | divergence | objective | train | bind ;

import:
    IMPORT STRING {
      $$ = $2; $$->kind = KD_AST_IMPORT; $$->loc = @$;
    }
  ;

data:
    DATA NAME '{' settings '}' {
      $$ = $4; $$->kind = KD_AST_DATA; $$->loc = @$; $$->name = $2; $$->name_loc = @2;
    }
  ;

train:
    TRAIN NAME '{' train_settings '}' {
      $$ = $4; $$->kind = KD_AST_TRAIN; $$->loc = @$; $$->name = $2; $$->name_loc = @2;
    }
  ;

/* A data or train body; the node's kind and name are set by the block. */
settings:
    %empty            { $$ = kd_ast_new(KD_AST_DATA, @$); NOMEM_IF(!$$); }
  | settings setting  { $$ = $1; NOMEM_IF(!kd_ast_list_push(&$$->items, $2)); }
  | settings ';'      { $$ = $1; }
  | settings error    { $$ = $1; }
  ;

/* A train block names its objective with the reserved word: `objective mix`. */
train_settings:
    %empty                  { $$ = kd_ast_new(KD_AST_TRAIN, @$); NOMEM_IF(!$$); }
  | train_settings setting  { $$ = $1; NOMEM_IF(!kd_ast_list_push(&$$->items, $2)); }
  | train_settings OBJECTIVE expr {
      $$ = $1;
      kd_ast *n = named(KD_AST_SETTING, span(@2, @3), strdup("objective"), @2);
      if (n) n->a = $3.node; else kd_ast_free($3.node);
      NOMEM_IF(!n || !n->name || !kd_ast_list_push(&$$->items, n));
    }
  | train_settings ';'      { $$ = $1; }
  | train_settings error    { $$ = $1; }
  ;

setting:
    NAME expr {
      $$ = named(KD_AST_SETTING, @$, $1, @1); NOMEM_IF(!$$); $$->a = $2.node;
    }
  | NAME expr EVERY expr {
      $$ = named(KD_AST_SETTING, @$, $1, @1); NOMEM_IF(!$$); $$->a = $2.node; $$->b = $4.node;
    }
  | NAME EVERY expr {
      $$ = named(KD_AST_SETTING, @$, $1, @1); NOMEM_IF(!$$); $$->b = $3.node;
    }
  ;

model:
    MODEL NAME '(' params_opt ')' '{' stmts '}' {
      $$ = $7; $$->kind = KD_AST_MODEL; $$->loc = @$; $$->name = $2; $$->name_loc = @2;
      $$->params = $4->params; $4->params = (kd_ast_list){0}; kd_ast_free($4);
    }
  ;

/* Statements of a model or repeat body, collected in a node's items. */
stmts:
    %empty            { $$ = kd_ast_new(KD_AST_REPEAT, @$); NOMEM_IF(!$$); }
  | stmts stmt        { $$ = $1; NOMEM_IF(!kd_ast_list_push(&$$->items, $2)); }
  | stmts ';'         { $$ = $1; }
  | stmts error       { $$ = $1; }
  ;

stmt:
    let
  | REPEAT expr '{' stmts '}' {
      $$ = $4; $$->loc = @$; $$->a = $2.node;
    }
  ;

let:
    NAME '=' expr {
      $$ = named(KD_AST_ASSIGN, @$, $1, @1); NOMEM_IF(!$$); $$->a = $3.node;
    }
  ;

/* Parameters go in a holder node's params list. */
params_opt:
    %empty            { $$ = kd_ast_new(KD_AST_PARAM, @$); NOMEM_IF(!$$); }
  | params
  ;

params:
    param {
      $$ = kd_ast_new(KD_AST_PARAM, @$); NOMEM_IF(!$$ || !kd_ast_list_push(&$$->params, $1));
    }
  | params ',' param  { $$ = $1; NOMEM_IF(!kd_ast_list_push(&$$->params, $3)); }
  ;

param:
    NAME              { $$ = named(KD_AST_PARAM, @$, $1, @1); NOMEM_IF(!$$); }
  | NAME '=' expr     { $$ = named(KD_AST_PARAM, @$, $1, @1); NOMEM_IF(!$$); $$->a = $3.node; }
  ;

divergence:
    DIVERGENCE NAME '(' params_opt hypers ')' '=' expr {
      $$ = $4; $$->kind = KD_AST_DIVERGENCE; $$->loc = @$; $$->name = $2; $$->name_loc = @2;
      $$->items = $5->params; $5->params = (kd_ast_list){0}; kd_ast_free($5);
      $$->a = $8.node;
    }
  ;

/* `; alpha = 0.1, ...`: the hyperparameters, in a holder's params. */
hypers:
    %empty            { $$ = kd_ast_new(KD_AST_PARAM, @$); NOMEM_IF(!$$); }
  | ';' params_opt    { $$ = $2; }
  ;

objective:
    OBJECTIVE '{' lets '}' {
      $$ = $3; $$->kind = KD_AST_OBJECTIVE; $$->loc = @$;
    }
  | OBJECTIVE NAME '{' lets '}' {
      $$ = $4; $$->kind = KD_AST_OBJECTIVE; $$->loc = @$; $$->name = $2; $$->name_loc = @2;
    }
  ;

lets:
    %empty            { $$ = kd_ast_new(KD_AST_OBJECTIVE, @$); NOMEM_IF(!$$); }
  | lets let          { $$ = $1; NOMEM_IF(!kd_ast_list_push(&$$->items, $2)); }
  | lets ';'          { $$ = $1; }
  | lets error        { $$ = $1; }
  ;

bind:
    NAME '=' expr {
      $$ = named(KD_AST_BIND, @$, $1, @1); NOMEM_IF(!$$); $$->a = $3.node;
    }
  | NAME '=' expr LOAD expr {
      $$ = named(KD_AST_BIND, @$, $1, @1); NOMEM_IF(!$$); $$->a = $3.node; $$->b = $5.node;
    }
  ;

/* ---- expressions, loosest first ------------------------------------------ */

expr:
    sum
  | sum '<' sum       { $$ = binary(ps, KD_OP_LT, @$, $1, $3); NOMEM_IF(!$$.node); }
  | sum LE sum        { $$ = binary(ps, KD_OP_LE, @$, $1, $3); NOMEM_IF(!$$.node); }
  | sum '>' sum       { $$ = binary(ps, KD_OP_GT, @$, $1, $3); NOMEM_IF(!$$.node); }
  | sum GE sum        { $$ = binary(ps, KD_OP_GE, @$, $1, $3); NOMEM_IF(!$$.node); }
  | sum EQ sum        { $$ = binary(ps, KD_OP_EQ, @$, $1, $3); NOMEM_IF(!$$.node); }
  | sum NE sum        { $$ = binary(ps, KD_OP_NE, @$, $1, $3); NOMEM_IF(!$$.node); }
  ;

sum:
    term
  | sum '+' term      { $$ = binary(ps, KD_OP_ADD, @$, $1, $3); NOMEM_IF(!$$.node); }
  | sum '-' term      { $$ = binary(ps, KD_OP_SUB, @$, $1, $3); NOMEM_IF(!$$.node); }
  ;

term:
    unary
  | term '*' unary    { $$ = binary(ps, KD_OP_MUL, @$, $1, $3); NOMEM_IF(!$$.node); }
  | term '/' unary    { $$ = binary(ps, KD_OP_DIV, @$, $1, $3); NOMEM_IF(!$$.node); }
  ;

/* -x^2 is -(x^2); 2^-x is allowed. */
unary:
    pow
  | '-' unary {
      $$ = node2(ps, KD_AST_UNARY, KD_OP_NEG, @$, $2, (kd_expr){0}); NOMEM_IF(!$$.node);
    }
  ;

pow:
    postfix
  | postfix '^' unary { $$ = binary(ps, KD_OP_POW, @$, $1, $3); NOMEM_IF(!$$.node); }
  ;

postfix:
    primary
  | postfix '(' args_opt ')' {
      $$ = node2(ps, KD_AST_CALL, KD_OP_NONE, @$, $1, (kd_expr){NULL, (int)$3->num});
      if ($$.node && $$.node->kind == KD_AST_CALL) {
        $$.node->items = $3->items; $3->items = (kd_ast_list){0};
      }
      kd_ast_free($3);
      NOMEM_IF(!$$.node);
    }
  | postfix '.' NAME {
      $$ = node2(ps, KD_AST_MEMBER, KD_OP_NONE, @$, $1, (kd_expr){0});
      if ($$.node && $$.node->kind == KD_AST_MEMBER) {
        $$.node->name = $3; $$.node->name_loc = @3;
      } else {
        free($3);
      }
      NOMEM_IF(!$$.node);
    }
  ;

primary:
    NUMBER            { $$ = leaf($1); }
  | STRING            { $$ = leaf($1); }
  | NAME              { $$ = leaf(named(KD_AST_NAME, @$, $1, @1)); NOMEM_IF(!$$.node); }
  | '(' expr ')'      { $$ = $2; }
  ;

/* Arguments go in a holder's items; named ones come after positional ones.
 * The holder's num is the height of the deepest argument, so that a call
 * counts its arguments in the height of its tree. */
args_opt:
    %empty            { $$ = kd_ast_new(KD_AST_CALL, @$); NOMEM_IF(!$$); }
  | args
  ;

args:
    arg {
      $$ = kd_ast_new(KD_AST_CALL, @$);
      NOMEM_IF(!$$ || !kd_ast_list_push(&$$->items, $1.node));
      $$->num = $1.depth;
    }
  | args ',' arg {
      $$ = $1;
      const kd_ast_list *l = &$$->items;
      if (!is_named_arg($3.node) && l->n > 0 && is_named_arg(l->v[l->n - 1]))
        kd_parser_error(ps, @3, "positional argument after a named argument");
      NOMEM_IF(!kd_ast_list_push(&$$->items, $3.node));
      if ($3.depth > $$->num) $$->num = $3.depth;
    }
  ;

arg:
    expr {
      kd_ast *n = kd_ast_new(KD_AST_ARG, @$);
      if (n) n->a = $1.node; else kd_ast_free($1.node);
      $$ = (kd_expr){n, $1.depth + 1}; NOMEM_IF(!n);
    }
  | NAME '=' expr {
      kd_ast *n = named(KD_AST_ARG, @$, $1, @1);
      if (n) n->a = $3.node; else kd_ast_free($3.node);
      $$ = (kd_expr){n, $3.depth + 1}; NOMEM_IF(!n);
    }
  ;

%%

#define YYSTYPE KD_YYSTYPE
#define YYLTYPE KD_YYLTYPE
#include "lexer.h"

/* ---- diagnostics -------------------------------------------------------- */

void kd_parser_error(kd_parser *ps, kd_loc loc, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  ps->errors++;
  kd_error(ps->diag, loc, "%s", msg);
}

/* Only stack exhaustion and failed allocations come here; syntax errors go
 * to yyreport_syntax_error. */
static void kd_yyerror(const kd_loc *loc, yyscan_t scanner, kd_parser *ps, const char *msg) {
  (void)scanner;
  (void)msg;
  if (ps->nomem) return; /* kd_parse returns KD_ERR_NOMEM; nothing to point at */
  /* The stack only overflows on thousands of nested unary minuses or '^'. */
  if (!ps->too_deep)
    kd_parser_error(ps, *loc, "expression nested too deeply (more than %d levels)",
                    KD_PARSE_MAX_DEPTH);
  ps->too_deep = true;
}

static yysymbol_kind_t sym(int c) { return YYTRANSLATE(c); }

static bool has(const yysymbol_kind_t *v, int n, yysymbol_kind_t s) {
  for (int i = 0; i < n; i++)
    if (v[i] == s) return true;
  return false;
}

static bool is_top_keyword(yysymbol_kind_t s) {
  return s == YYSYMBOL_IMPORT || s == YYSYMBOL_DATA || s == YYSYMBOL_MODEL ||
         s == YYSYMBOL_DIVERGENCE || s == YYSYMBOL_OBJECTIVE || s == YYSYMBOL_TRAIN;
}

/* Tokens that can only continue an expression already complete. */
static bool is_operator(yysymbol_kind_t s) {
  static const char ops[] = "+-*/^<>(.";
  for (const char *c = ops; *c; c++)
    if (s == sym(*c)) return true;
  return s == YYSYMBOL_LE || s == YYSYMBOL_GE || s == YYSYMBOL_EQ || s == YYSYMBOL_NE;
}

static bool is_keyword(yysymbol_kind_t s) {
  return is_top_keyword(s) || s == YYSYMBOL_REPEAT || s == YYSYMBOL_LOAD || s == YYSYMBOL_EVERY;
}

static bool is_comparison(yysymbol_kind_t s) {
  return s == sym('<') || s == sym('>') || s == YYSYMBOL_LE || s == YYSYMBOL_GE ||
         s == YYSYMBOL_EQ || s == YYSYMBOL_NE;
}

/* How a token reads in "expected ...". */
static const char *expected_name(yysymbol_kind_t s) {
  switch (s) {
  case YYSYMBOL_NAME: return "a name";
  case YYSYMBOL_NUMBER: return "a number";
  case YYSYMBOL_STRING: return "a string";
  default: return yysymbol_name(s);
  }
}

static void describe_unexpected(const kd_parser *ps, yysymbol_kind_t s, char *buf,
                                size_t len) {
  switch (s) {
  case YYSYMBOL_NAME: snprintf(buf, len, "name '%s'", ps->lookahead); break;
  case YYSYMBOL_NUMBER: snprintf(buf, len, "number"); break;
  case YYSYMBOL_STRING: snprintf(buf, len, "string"); break;
  default: snprintf(buf, len, "%s", yysymbol_name(s)); break;
  }
}

/* What a block of each kind holds, for "expected a setting name". */
static const char *block_contents(const char *keyword) {
  if (!keyword) return "a name or '}'";
  if (!strcmp(keyword, "data") || !strcmp(keyword, "train")) return "a setting name";
  if (!strcmp(keyword, "objective")) return "a binding (name = expression)";
  return "a statement (name = expression, or repeat)";
}

/* Writes "expected ..." for the tokens the parser could take instead of s. */
static void describe_expected(const kd_parser *ps, yysymbol_kind_t s,
                              const yysymbol_kind_t *exp, int n, char *buf, size_t len) {
  const kd_open *open = ps->nopen > 0 ? &ps->open[ps->nopen - 1] : NULL;
  /* The end of the file with a bracket open. (A top-level keyword or a '}'
   * inside brackets never gets here: the scanner reports those itself.) */
  if (s == YYSYMBOL_YYEOF && open && open->bracket == '{' && has(exp, n, sym('}'))) {
    snprintf(buf, len, "expected '}' to close the %s%sblock opened at %d:%d",
             open->keyword ? open->keyword : "", open->keyword ? " " : "",
             open->loc.first_line, open->loc.first_column);
    return;
  }
  if (s == YYSYMBOL_YYEOF && open && open->bracket == '(' && has(exp, n, sym(')'))) {
    snprintf(buf, len, "expected ')' to close the '(' opened at %d:%d", open->loc.first_line,
             open->loc.first_column);
    return;
  }
  if (is_comparison(s) && !has(exp, n, YYSYMBOL_NUMBER)) {
    snprintf(buf, len, "comparisons do not chain; use parentheses, as in (a < b) == c");
    return;
  }
  if (is_keyword(s) && has(exp, n, YYSYMBOL_NAME)) {
    snprintf(buf, len, "expected a name (%s is a reserved word)", yysymbol_name(s));
    return;
  }
  if (has(exp, n, YYSYMBOL_NUMBER)) {
    snprintf(buf, len, "expected an expression%s%s",
             has(exp, n, sym(')')) ? " or ')'" : "",
             has(exp, n, YYSYMBOL_EVERY) ? " or 'every'" : "");
    return;
  }
  if (has(exp, n, YYSYMBOL_DATA)) {
    snprintf(buf, len, "expected a top-level item (import, data, model, divergence, "
                       "objective, train, or name = expression)");
    return;
  }
  if (has(exp, n, YYSYMBOL_NAME) && has(exp, n, sym('}'))) {
    snprintf(buf, len, "expected %s", block_contents(open ? open->keyword : NULL));
    return;
  }
  /* Otherwise name the few tokens that fit, leaving out the operators that
   * could extend the expression before (they are rarely what was meant). */
  yysymbol_kind_t keep[5];
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (is_operator(exp[i]) || exp[i] == sym(';')) continue;
    /* After a name in arguments, `name = value` is possible but unlikely meant. */
    if (exp[i] == sym('=') && has(exp, n, sym(','))) continue;
    if (k == 5) return;
    keep[k++] = exp[i];
  }
  size_t at = 0;
  for (int i = 0; i < k && at < len; i++)
    at += (size_t)snprintf(buf + at, len - at, "%s%s", i == 0 ? "expected " :
                           i == k - 1 ? " or " : ", ", expected_name(keep[i]));
}

static int yyreport_syntax_error(const yypcontext_t *ctx, yyscan_t scanner, kd_parser *ps) {
  (void)scanner;
  if (ps->made_up) {
    ps->errors++; /* the scanner reported the missing bracket */
    return 0;
  }
  yysymbol_kind_t exp[YYNTOKENS];
  int n = yypcontext_expected_tokens(ctx, exp, YYNTOKENS);
  if (n < 0) n = 0;
  yysymbol_kind_t s = yypcontext_token(ctx);
  char got[96], want[256] = "";
  describe_unexpected(ps, s, got, sizeof got);
  describe_expected(ps, s, exp, n, want, sizeof want);
  kd_parser_error(ps, *yypcontext_location(ctx), "unexpected %s%s%s", got, *want ? "; " : "",
                  want);
  return 0;
}

/* ---- the entry point -------------------------------------------------------- */

/* The text as the scanner reads it. flex takes a NUL for the end of its
 * buffer and, on one inside it, rescans the token so far: a long token full
 * of NULs would take quadratic time. So NUL bytes are reported here, one
 * error per run, and become spaces; the scanner never sees one except the two
 * that end its buffer. */
static char *scanner_text(kd_parser *ps) {
  const kd_source *src = ps->src;
  char *text = malloc(src->len + 2);
  if (!text) return NULL;
  memcpy(text, src->text, src->len);
  text[src->len] = text[src->len + 1] = '\0';
  int line = 1;
  size_t bol = 0;
  for (size_t i = 0; i < src->len; i++) {
    if (text[i] == '\n') {
      line++;
      bol = i + 1;
    } else if (text[i] == '\0') {
      size_t j = i;
      while (j < src->len && text[j] == '\0') text[j++] = ' ';
      kd_loc loc = {src, line, (int)(i - bol) + 1, line, (int)(j - bol) + 1};
      kd_parser_error(ps, loc, "stray byte 0x00 in program");
      i = j - 1;
    }
  }
  return text;
}

kd_status kd_parse(const kd_source *src, kd_diag *diag, kd_ast **out) {
  *out = NULL;
  if (src->len > INT_MAX) return KD_ERR_INVALID; /* yy_scan_bytes takes an int */
  kd_parser *ps = calloc(1, sizeof *ps);
  if (!ps) return KD_ERR_NOMEM;
  ps->src = src;
  ps->diag = diag;
  ps->line = ps->column = 1;
  ps->prev = (kd_loc){src, 1, 1, 1, 1};

  yyscan_t scanner;
  volatile kd_status st = KD_ERR_NOMEM;
  char *text = scanner_text(ps);
  if (text && kd_yylex_init_extra(ps, &scanner) == 0) {
    if (setjmp(ps->fatal) == 0) {
      YY_BUFFER_STATE buf = kd_yy_scan_buffer(text, src->len + 2, scanner);
      int rc = buf ? kd_yyparse(scanner, ps) : 2;
      if (buf) kd_yy_delete_buffer(buf, scanner);
      kd_yylex_destroy(scanner);
      st = ps->nomem || (rc == 2 && !ps->too_deep) ? KD_ERR_NOMEM
           : rc != 0 || ps->errors > 0             ? KD_ERR_SYNTAX
                                                   : KD_OK;
    }
    /* else flex ran out of memory: its state is abandoned (and leaks, on a
     * path that has no memory left anyway) and st stays KD_ERR_NOMEM. */
  }
  if (st == KD_OK) {
    ps->file->comments = ps->comments;
    ps->file->ncomments = ps->ncomments;
    *out = ps->file;
  } else {
    kd_ast_free(ps->file);
    for (size_t i = 0; i < ps->ncomments; i++) free(ps->comments[i].text);
    free(ps->comments);
  }
  free(text);
  free(ps);
  return st;
}
