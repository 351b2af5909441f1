/* The .kd syntax tree: construction, names, equality and the dump format.
 * kd_parse itself is in parser.y. */
#include "ast.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

kd_ast *kd_ast_new(kd_ast_kind kind, kd_loc loc) {
  kd_ast *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->kind = kind;
  n->loc = loc;
  return n;
}

static void list_free(kd_ast_list *l) {
  for (size_t i = 0; i < l->n; i++) kd_ast_free(l->v[i]);
  free(l->v);
}

/* Recursion is bounded: kd_parse limits nesting to KD_PARSE_MAX_DEPTH. */
void kd_ast_free(kd_ast *n) {
  if (!n) return;
  free(n->name);
  free(n->str);
  kd_ast_free(n->a);
  kd_ast_free(n->b);
  list_free(&n->params);
  list_free(&n->items);
  for (size_t i = 0; i < n->ncomments; i++) free(n->comments[i].text);
  free(n->comments);
  free(n);
}

bool kd_ast_list_push(kd_ast_list *l, kd_ast *node) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    kd_ast **v = realloc(l->v, cap * sizeof *v);
    if (!v) {
      kd_ast_free(node);
      return false;
    }
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = node;
  return true;
}

static const char *const kind_names[] = {
  [KD_AST_FILE] = "file",         [KD_AST_IMPORT] = "import",
  [KD_AST_DATA] = "data",         [KD_AST_MODEL] = "model",
  [KD_AST_DIVERGENCE] = "divergence", [KD_AST_OBJECTIVE] = "objective",
  [KD_AST_TRAIN] = "train",       [KD_AST_BIND] = "bind",
  [KD_AST_ASSIGN] = "assign",     [KD_AST_REPEAT] = "repeat",
  [KD_AST_SETTING] = "setting",   [KD_AST_PARAM] = "param",
  [KD_AST_NUMBER] = "number",     [KD_AST_STRING] = "string",
  [KD_AST_NAME] = "name",         [KD_AST_UNARY] = "unary",
  [KD_AST_BINARY] = "binary",     [KD_AST_CALL] = "call",
  [KD_AST_ARG] = "arg",           [KD_AST_MEMBER] = "member",
};
static_assert(sizeof kind_names / sizeof kind_names[0] == KD_AST_KIND_COUNT,
              "kind_names must name every kd_ast_kind");

static const char *const op_spellings[] = {
  [KD_OP_NONE] = "", [KD_OP_ADD] = "+", [KD_OP_SUB] = "-", [KD_OP_MUL] = "*",
  [KD_OP_DIV] = "/", [KD_OP_POW] = "^", [KD_OP_LT] = "<",  [KD_OP_LE] = "<=",
  [KD_OP_GT] = ">",  [KD_OP_GE] = ">=", [KD_OP_EQ] = "==", [KD_OP_NE] = "!=",
  [KD_OP_NEG] = "-",
};
static_assert(sizeof op_spellings / sizeof op_spellings[0] == KD_OP_COUNT,
              "op_spellings must spell every kd_ast_op");

const char *kd_ast_kind_name(kd_ast_kind kind) {
  return (unsigned)kind < KD_AST_KIND_COUNT ? kind_names[kind] : "?";
}

const char *kd_ast_op_spelling(kd_ast_op op) {
  return (unsigned)op < KD_OP_COUNT ? op_spellings[op] : "?";
}

/* ---- equality ----------------------------------------------------------- */

static bool str_equal(const char *x, const char *y) {
  return x == y || (x && y && !strcmp(x, y));
}

static bool list_equal(const kd_ast_list *x, const kd_ast_list *y) {
  if (x->n != y->n) return false;
  for (size_t i = 0; i < x->n; i++)
    if (!kd_ast_equal(x->v[i], y->v[i])) return false;
  return true;
}

bool kd_ast_equal(const kd_ast *x, const kd_ast *y) {
  if (!x || !y) return x == y;
  if (x->kind != y->kind || x->op != y->op || !str_equal(x->name, y->name)) return false;
  switch (x->kind) {
  case KD_AST_NUMBER:
    if (x->num != y->num) return false;
    break;
  case KD_AST_STRING:
  case KD_AST_IMPORT:
    if (x->str_len != y->str_len || (x->str_len && memcmp(x->str, y->str, x->str_len)))
      return false;
    break;
  default: break;
  }
  return kd_ast_equal(x->a, y->a) && kd_ast_equal(x->b, y->b) &&
         list_equal(&x->params, &y->params) && list_equal(&x->items, &y->items);
}

/* ---- dump ------------------------------------------------------------- */

/* Strings print as C would spell them, so every byte is visible. */
static void dump_string(const char *s, size_t len, FILE *out) {
  fputc('"', out);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '\n': fputs("\\n", out); break;
    case '\t': fputs("\\t", out); break;
    case '\r': fputs("\\r", out); break;
    case '\\': fputs("\\\\", out); break;
    case '"': fputs("\\\"", out); break;
    default:
      if (c < 0x20 || c >= 0x7f) fprintf(out, "\\x%02x", c);
      else fputc(c, out);
    }
  }
  fputc('"', out);
}

static void dump_node(const kd_ast *n, const char *role, int depth, FILE *out);

static void dump_list(const kd_ast_list *l, const char *role, int depth, FILE *out) {
  for (size_t i = 0; i < l->n; i++) dump_node(l->v[i], role, depth, out);
}

/* role names a child whose place is not clear from its kind ("load",
 * "every", the hyperparameters of a divergence). */
static void dump_node(const kd_ast *n, const char *role, int depth, FILE *out) {
  fprintf(out, "%*s", depth * 2, "");
  if (role) fprintf(out, "%s: ", role);
  fputs(kd_ast_kind_name(n->kind), out);
  if (n->op != KD_OP_NONE) fprintf(out, " %s", kd_ast_op_spelling(n->op));
  if (n->name) fprintf(out, " %s", n->name);
  /* A number built by a pass rather than the parser has no spelling. */
  if (n->kind == KD_AST_NUMBER && n->str) fprintf(out, " %s", n->str);
  else if (n->kind == KD_AST_NUMBER) fprintf(out, " %.17g", n->num);
  if ((n->kind == KD_AST_STRING || n->kind == KD_AST_IMPORT) && n->str) {
    fputc(' ', out);
    dump_string(n->str, n->str_len, out);
  }
  fprintf(out, " @%d:%d-%d:%d\n", n->loc.first_line, n->loc.first_column, n->loc.last_line,
          n->loc.last_column);

  depth++;
  switch (n->kind) {
  case KD_AST_DIVERGENCE:
    dump_list(&n->params, NULL, depth, out);
    dump_list(&n->items, "hyper", depth, out);
    if (n->a) dump_node(n->a, "body", depth, out);
    return;
  case KD_AST_BIND:
    if (n->a) dump_node(n->a, NULL, depth, out);
    if (n->b) dump_node(n->b, "load", depth, out);
    return;
  case KD_AST_SETTING:
    if (n->a) dump_node(n->a, NULL, depth, out);
    if (n->b) dump_node(n->b, "every", depth, out);
    return;
  default:
    dump_list(&n->params, NULL, depth, out);
    if (n->a) dump_node(n->a, NULL, depth, out);
    if (n->b) dump_node(n->b, NULL, depth, out);
    dump_list(&n->items, NULL, depth, out);
    return;
  }
}

void kd_ast_dump(const kd_ast *node, FILE *out) {
  if (node) dump_node(node, NULL, 0, out);
}
