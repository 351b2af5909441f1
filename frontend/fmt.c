/* `kdc fmt`: the canonical layout of a .kd file (fmt.h describes it).
 *
 * The printer walks the tree once and writes lines. Each line knows the span
 * of source it came from, which is all it takes to put comments back: before
 * a line, every pending comment that starts before the end of the line's
 * source goes on its own line; after it, a comment on the line's last source
 * line (and before the next sibling) trails it. Blank lines are read from the
 * source between the previous line's source and the next one's. */
#include "fmt.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A point in the source, ordered by line then column. */
typedef struct kd_pos {
  int line, col;
} kd_pos;

static const kd_pos POS_MAX = {INT32_MAX, INT32_MAX};

typedef struct printer {
  char *buf;
  size_t len, cap;
  size_t bol;               /* where the current output line begins */
  bool oom;
  bool measure;             /* count only: fits() sets it, with `stop` */
  size_t stop;              /* measuring: give up past this many bytes */
  bool over;                /* measuring: passed `stop` */
  bool flat;                /* print expressions on one line, no breaking */
  const kd_source *src;     /* for blank lines; may be NULL */
  const kd_comment *comments;
  size_t ncomments, next;   /* comments[next] is the first not yet printed */
  int indent;               /* nesting depth; 2 spaces each */
  int last_line;            /* last source line behind the output so far */
  bool blank_ok;            /* a blank line from the source may be kept here */
  bool force_blank;         /* the next line must follow a blank line */
} printer;

/* Binding strength of each expression form, loosest first (ast.h gives the
 * grammar): a child printed where a stronger form is needed gets parentheses. */
enum {
  PREC_ANY,
  PREC_CMP,     /* < <= > >= == != (non-associative) */
  PREC_ADD,     /* + - (left) */
  PREC_MUL,     /* * / (left) */
  PREC_UNARY,   /* -x */
  PREC_POW,     /* ^ (right; tighter than unary minus) */
  PREC_POSTFIX, /* f(x), a.b */
  PREC_PRIMARY
};

/* ---- output ---------------------------------------------------------- */

static void put(printer *f, const char *s, size_t n) {
  if (f->measure) {
    f->len += n;
    f->over |= f->len > f->stop;
    return;
  }
  if (f->oom) return;
  if (n + 1 > f->cap - f->len) {
    size_t cap = f->cap ? f->cap : 256;
    while (n + 1 > cap - f->len) {
      if (cap > SIZE_MAX / 2) {
        f->oom = true;
        return;
      }
      cap *= 2;
    }
    char *p = realloc(f->buf, cap);
    if (!p) {
      f->oom = true;
      return;
    }
    f->buf = p;
    f->cap = cap;
  }
  memcpy(f->buf + f->len, s, n);
  f->len += n;
  f->buf[f->len] = '\0';
  for (size_t i = n; i > 0; i--)
    if (s[i - 1] == '\n') {
      f->bol = f->len - n + i;
      break;
    }
}

static void puts_(printer *f, const char *s) { put(f, s, strlen(s)); }
static void putc_(printer *f, char c) { put(f, &c, 1); }

/* ---- source positions -------------------------------------------------- */

static kd_pos pos_start(kd_loc l) { return (kd_pos){l.first_line, l.first_column}; }
static kd_pos pos_end(kd_loc l) { return (kd_pos){l.last_line, l.last_column}; }

static bool pos_lt(kd_pos a, kd_pos b) {
  return a.line < b.line || (a.line == b.line && a.col < b.col);
}

/* True when some line strictly between lines l1 and l2 holds only blanks. */
static bool blank_between(const kd_source *src, int l1, int l2) {
  if (!src || l1 < 1) return false;
  for (int l = l1 + 1; l < l2 && (size_t)l <= src->nlines; l++) {
    size_t i = src->line_start[l - 1];
    size_t end = (size_t)l < src->nlines ? src->line_start[l] : src->len;
    while (i < end && src->text[i] && strchr(" \t\r\f\v", src->text[i])) i++;
    if (i == end || src->text[i] == '\n') return true;
  }
  return false;
}

/* ---- lines and comments ------------------------------------------------ */

/* Starts an output line whose source begins on `line`: a blank line first
 * when one is forced, or when the source had one and none is forbidden. */
static void line_open(printer *f, int line) {
  if (f->force_blank || (f->blank_ok && blank_between(f->src, f->last_line, line)))
    putc_(f, '\n');
  f->force_blank = false;
  for (int i = 0; i < f->indent; i++) puts_(f, "  ");
}

/* Writes `#text`, without the trailing blanks (a CRLF file leaves a '\r'). */
static void put_comment(printer *f, const kd_comment *c) {
  size_t n = strlen(c->text);
  while (n > 0 && strchr(" \t\r\f\v", c->text[n - 1])) n--;
  putc_(f, '#');
  put(f, c->text, n);
}

/* Ends a line whose source ends on `line`; a comment on that line that comes
 * before `limit` (where the next sibling starts) trails it. */
static void line_close(printer *f, int line, kd_pos limit) {
  if (f->next < f->ncomments) {
    const kd_comment *c = &f->comments[f->next];
    if (c->loc.first_line == line && pos_lt(pos_start(c->loc), limit)) {
      puts_(f, "  ");
      put_comment(f, c);
      f->next++;
    }
  }
  putc_(f, '\n');
  f->last_line = line;
  f->blank_ok = true;
}

/* Puts every pending comment that starts before `limit` on its own line. */
static void flush_comments(printer *f, kd_pos limit) {
  while (f->next < f->ncomments && pos_lt(pos_start(f->comments[f->next].loc), limit)) {
    const kd_comment *c = &f->comments[f->next++];
    line_open(f, c->loc.first_line);
    put_comment(f, c);
    putc_(f, '\n');
    f->last_line = c->loc.first_line;
    f->blank_ok = true;
  }
}

/* ---- expressions ------------------------------------------------------- */

static int binary_prec(kd_ast_op op) {
  switch (op) {
  case KD_OP_ADD: case KD_OP_SUB: return PREC_ADD;
  case KD_OP_MUL: case KD_OP_DIV: return PREC_MUL;
  case KD_OP_POW: return PREC_POW;
  default: return PREC_CMP;
  }
}

static int expr_prec(const kd_ast *e) {
  switch (e->kind) {
  case KD_AST_BINARY: return binary_prec(e->op);
  case KD_AST_UNARY: return PREC_UNARY;
  case KD_AST_CALL: case KD_AST_MEMBER: return PREC_POSTFIX;
  default: return PREC_PRIMARY;
  }
}

/* Writes bytes as a string literal with the lexer's escapes. Bytes from 0x80
 * up stay as they are, so UTF-8 text stays readable. */
static void put_string(printer *f, const char *s, size_t n) {
  putc_(f, '"');
  for (size_t i = 0; i < n; i++) {
    unsigned char b = (unsigned char)s[i];
    char esc[8];
    switch (b) {
    case '"': puts_(f, "\\\""); break;
    case '\\': puts_(f, "\\\\"); break;
    case '\n': puts_(f, "\\n"); break;
    case '\t': puts_(f, "\\t"); break;
    case '\r': puts_(f, "\\r"); break;
    case '\0': puts_(f, "\\0"); break;
    default:
      if (b < 0x20 || b == 0x7f) {
        snprintf(esc, sizeof esc, "\\x%02x", b);
        puts_(f, esc);
      } else {
        putc_(f, (char)b);
      }
    }
  }
  putc_(f, '"');
}

static void put_expr(printer *f, const kd_ast *e, int min_prec);

/* `name = value` when named, `value` otherwise (call arguments, parameters). */
static void put_named(printer *f, const kd_ast *n) {
  if (n->name) {
    puts_(f, n->name);
    if (n->a) puts_(f, " = ");
  }
  if (n->a) put_expr(f, n->a, PREC_ANY);
}

static void put_list(printer *f, const kd_ast_list *l) {
  for (size_t i = 0; i < l->n; i++) {
    if (i) puts_(f, ", ");
    put_named(f, l->v[i]);
  }
}

/* Line breaking. An expression that does not fit in KD_FMT_WIDTH columns
 * from where it starts is broken at its top: a chain of + - (or * /) puts
 * each further operand on its own line, operator first; a call puts each
 * argument on its own line. Continuation lines are indented 2 columns more
 * than the line the construct starts on. The choice depends only on the tree
 * and the column, so formatting stays a fixed point. */
enum { KD_FMT_WIDTH = 100 };

static void newline_indent(printer *f, size_t indent) {
  putc_(f, '\n');
  for (size_t i = 0; i < indent; i++) putc_(f, ' ');
}

static size_t line_indent(const printer *f) {
  size_t i = f->bol;
  while (i < f->len && f->buf[i] == ' ') i++;
  return i - f->bol;
}

/* Whether e, printed on one line from column col, ends within the width.
 * Measuring stops at the width, so a huge expression costs little. */
static bool fits_at(const kd_ast *e, int min_prec, size_t col) {
  if (col >= KD_FMT_WIDTH) return false;
  printer m = {.measure = true, .flat = true, .stop = KD_FMT_WIDTH - col};
  put_expr(&m, e, min_prec);
  return !m.over;
}

static bool fits(const printer *f, const kd_ast *e, int min_prec) {
  return fits_at(e, min_prec, f->len - f->bol);
}

/* The operand precedences a binary operator needs on its left and right. */
static void operand_prec(kd_ast_op op, int *lp, int *rp) {
  int p = binary_prec(op);
  *lp = p, *rp = p + 1;                                     /* left-associative */
  if (op == KD_OP_POW) *lp = PREC_POSTFIX, *rp = PREC_UNARY; /* right; 2 ^ -x */
  if (p == PREC_CMP) *lp = *rp = PREC_CMP + 1;              /* non-associative */
}

/* A chain of left-associative operators of one precedence, broken along its
 * left spine: one `op operand` per line at `indent`. */
static void put_chain(printer *f, const kd_ast *e, int prec, size_t indent) {
  if (e->kind == KD_AST_BINARY && binary_prec(e->op) == prec) {
    put_chain(f, e->a, prec, indent);
    newline_indent(f, indent);
    puts_(f, kd_ast_op_spelling(e->op));
    putc_(f, ' ');
    put_expr(f, e->b, prec + 1);
  } else {
    put_expr(f, e, prec);
  }
}

static void put_binary(printer *f, const kd_ast *e) {
  int lp, rp;
  operand_prec(e->op, &lp, &rp);
  if (!f->flat && lp == binary_prec(e->op)) {
    put_chain(f, e, lp, line_indent(f) + 2);
    return;
  }
  put_expr(f, e->a, lp);
  putc_(f, ' ');
  puts_(f, kd_ast_op_spelling(e->op));
  putc_(f, ' ');
  put_expr(f, e->b, rp);
}

/* The object of a call or member access. A number gets parentheses: `1.x`
 * would lex as the number `1.` followed by a name. */
static void put_object(printer *f, const kd_ast *a) {
  put_expr(f, a, a->kind == KD_AST_NUMBER ? PREC_PRIMARY + 1 : PREC_POSTFIX);
}

static void put_call(printer *f, const kd_ast *e) {
  put_object(f, e->a);
  putc_(f, '(');
  if (f->flat) {
    put_list(f, &e->items);
  } else {
    size_t indent = line_indent(f) + 2;
    for (size_t i = 0; i < e->items.n; i++) {
      newline_indent(f, indent);
      put_named(f, e->items.v[i]);
      if (i + 1 < e->items.n) putc_(f, ',');
    }
  }
  putc_(f, ')');
}

static void put_expr(printer *f, const kd_ast *e, int min_prec) {
  if (f->over) return;
  if (!f->flat && fits(f, e, min_prec)) {
    f->flat = true;
    put_expr(f, e, min_prec);
    f->flat = false;
    return;
  }
  bool paren = expr_prec(e) < min_prec;
  if (paren) putc_(f, '(');
  switch (e->kind) {
  case KD_AST_NUMBER: puts_(f, e->str ? e->str : "0"); break; /* as written */
  case KD_AST_STRING: put_string(f, e->str ? e->str : "", e->str_len); break;
  case KD_AST_NAME: puts_(f, e->name); break;
  case KD_AST_UNARY:
    puts_(f, kd_ast_op_spelling(e->op));
    put_expr(f, e->a, PREC_POW); /* `-(-x)`, never `--x` */
    break;
  case KD_AST_BINARY: put_binary(f, e); break;
  case KD_AST_CALL: put_call(f, e); break;
  case KD_AST_MEMBER:
    put_object(f, e->a);
    putc_(f, '.');
    puts_(f, e->name);
    break;
  default: puts_(f, "?"); break; /* not an expression: kd_parse never builds it */
  }
  if (paren) putc_(f, ')');
}

/* ---- items and statements ---------------------------------------------- */

static void put_node(printer *f, const kd_ast *n, kd_pos limit);

/* Where a block node's header (the text before `{`) ends in the source. */
static kd_pos header_end(const kd_ast *n) {
  switch (n->kind) {
  case KD_AST_REPEAT: return pos_end(n->a->loc);
  case KD_AST_MODEL:
    if (n->params.n) return pos_end(n->params.v[n->params.n - 1]->loc);
    return pos_end(n->name_loc);
  case KD_AST_OBJECTIVE: return n->name ? pos_end(n->name_loc) : pos_start(n->loc);
  default: return pos_end(n->name_loc);
  }
}

static void put_header(printer *f, const kd_ast *n) {
  switch (n->kind) {
  case KD_AST_REPEAT:
    puts_(f, "repeat ");
    put_expr(f, n->a, PREC_ANY);
    break;
  case KD_AST_MODEL:
    puts_(f, "model ");
    puts_(f, n->name);
    putc_(f, '(');
    put_list(f, &n->params);
    putc_(f, ')');
    break;
  case KD_AST_DATA: puts_(f, "data "); puts_(f, n->name); break;
  case KD_AST_TRAIN: puts_(f, "train "); puts_(f, n->name); break;
  default: /* objective */
    puts_(f, "objective");
    if (n->name) {
      putc_(f, ' ');
      puts_(f, n->name);
    }
    break;
  }
}

/* model, data, objective, train, repeat:
 *   HEADER {
 *     item ...
 *   }
 * or `HEADER {}` when nothing, not even a comment, is inside. */
static void put_block(printer *f, const kd_ast *n, kd_pos limit) {
  kd_pos hdr = header_end(n), end = pos_end(n->loc);
  flush_comments(f, hdr);
  line_open(f, pos_start(n->loc).line);
  put_header(f, n);
  bool inner_comment = f->next < f->ncomments &&
                       pos_lt(pos_start(f->comments[f->next].loc), end);
  if (n->items.n == 0 && !inner_comment) {
    puts_(f, " {}");
    line_close(f, end.line, limit);
    return;
  }
  puts_(f, " {");
  line_close(f, hdr.line, n->items.n ? pos_start(n->items.v[0]->loc) : end);
  f->blank_ok = false; /* no blank line after `{` */
  f->indent++;
  for (size_t i = 0; i < n->items.n; i++)
    put_node(f, n->items.v[i], i + 1 < n->items.n ? pos_start(n->items.v[i + 1]->loc) : end);
  flush_comments(f, end);
  f->indent--;
  f->force_blank = f->blank_ok = false; /* nor before `}` */
  line_open(f, end.line);
  putc_(f, '}');
  line_close(f, end.line, limit);
}

/* Everything that fits on one line: import, bindings, divergences, `name =
 * expr` statements, settings. */
static void put_simple(printer *f, const kd_ast *n) {
  switch (n->kind) {
  case KD_AST_IMPORT:
    puts_(f, "import ");
    put_string(f, n->str ? n->str : "", n->str_len);
    break;
  case KD_AST_BIND:
  case KD_AST_ASSIGN:
    puts_(f, n->name);
    puts_(f, " = ");
    put_expr(f, n->a, PREC_ANY);
    if (n->b) {
      puts_(f, " load ");
      put_expr(f, n->b, PREC_ANY);
    }
    break;
  case KD_AST_DIVERGENCE:
    puts_(f, "divergence ");
    puts_(f, n->name);
    putc_(f, '(');
    put_list(f, &n->params);
    if (n->items.n) {
      puts_(f, n->params.n ? "; " : ";");
      put_list(f, &n->items);
    }
    puts_(f, ") =");
    /* A body too long for the rest of the line starts on the next one. */
    if (fits_at(n->a, PREC_ANY, f->len - f->bol + 1))
      putc_(f, ' ');
    else
      newline_indent(f, (size_t)f->indent * 2 + 2);
    put_expr(f, n->a, PREC_ANY);
    break;
  case KD_AST_SETTING:
    puts_(f, n->name);
    if (n->a) {
      putc_(f, ' ');
      put_expr(f, n->a, PREC_ANY);
    }
    if (n->b) {
      puts_(f, " every ");
      put_expr(f, n->b, PREC_ANY);
    }
    break;
  default: puts_(f, "?"); break; /* not a statement: kd_parse never builds it */
  }
}

/* Prints one item or statement; `limit` is where its next sibling starts (or
 * where its parent ends), so that a trailing comment is not taken from it. */
static void put_node(printer *f, const kd_ast *n, kd_pos limit) {
  switch (n->kind) {
  case KD_AST_MODEL: case KD_AST_DATA: case KD_AST_OBJECTIVE:
  case KD_AST_TRAIN: case KD_AST_REPEAT:
    put_block(f, n, limit);
    return;
  default:
    /* A comment inside a multi-line statement goes before the statement. */
    flush_comments(f, pos_end(n->loc));
    line_open(f, pos_start(n->loc).line);
    put_simple(f, n);
    line_close(f, n->loc.last_line, limit);
  }
}

/* Consecutive imports, bindings or divergences may stay together. */
static bool same_group(const kd_ast *x, const kd_ast *y) {
  return x->kind == y->kind && (x->kind == KD_AST_IMPORT || x->kind == KD_AST_BIND ||
                                x->kind == KD_AST_DIVERGENCE);
}

static const kd_source *file_source(const kd_ast *file) {
  if (file->loc.src) return file->loc.src;
  if (file->items.n) return file->items.v[0]->loc.src;
  return file->ncomments ? file->comments[0].loc.src : NULL;
}

kd_status kd_fmt(const kd_ast *file, char **out, size_t *len) {
  *out = NULL;
  if (len) *len = 0;
  if (!file || file->kind != KD_AST_FILE) return KD_ERR_INVALID;
  printer f = {.src = file_source(file), .comments = file->comments,
              .ncomments = file->ncomments};
  put(&f, "", 0); /* an empty file is the empty string, not NULL */
  for (size_t i = 0; i < file->items.n; i++) {
    const kd_ast *item = file->items.v[i];
    if (i > 0 && !same_group(file->items.v[i - 1], item)) f.force_blank = true;
    put_node(&f, item, i + 1 < file->items.n ? pos_start(file->items.v[i + 1]->loc) : POS_MAX);
  }
  flush_comments(&f, POS_MAX); /* the comments after the last item */
  if (f.oom) {
    free(f.buf);
    return KD_ERR_NOMEM;
  }
  *out = f.buf;
  if (len) *len = f.len;
  return KD_OK;
}

kd_status kd_fmt_source(const kd_source *src, kd_diag *diag, char **out, size_t *len,
                        kd_ast **ast) {
  kd_ast *file = NULL;
  *out = NULL;
  if (ast) *ast = NULL;
  kd_status st = kd_parse(src, diag, &file);
  if (st != KD_OK) return st;
  st = kd_fmt(file, out, len);
  if (st == KD_OK && ast)
    *ast = file;
  else
    kd_ast_free(file);
  return st;
}
