/* `kdc fmt`: prints a parsed .kd file in the canonical layout.
 *
 * The layout: 2-space indent; one item, statement or setting per line; single
 * spaces around `=` and binary operators; no space inside parentheses; named
 * arguments as `name = value`; the fewest parentheses that keep the tree;
 * strings re-escaped; numbers spelled as written; lines broken at 100
 * columns (a long chain of + - or * / puts one operand per line, operator
 * first; a long call one argument per line; a long divergence body starts on
 * the line after its `=`). Top-level items are separated by one blank line,
 * except that consecutive imports, bindings (`teacher = ...` then `student =
 * ...`) or divergences keep their source spacing of zero or one blank line.
 * Inside blocks at most one blank line is kept.
 *
 * Comments come back from the FILE node's `comments` array: a comment that
 * trails code on its line stays at the end of that line; every other comment
 * goes on its own line before the item or statement that follows it (a
 * comment written inside a multi-line expression goes before its statement).
 *
 * fmt(parse(fmt(x))) == fmt(x), and parse(fmt(x)) equals parse(x) under
 * kd_ast_equal; tests/frontend/fmt and fuzz/fuzz_parser.c check both. */
#ifndef KD_FMT_H
#define KD_FMT_H

#include <stddef.h>

#include "ast.h"

/* Formats the FILE node `file` into a new malloc'd, NUL-terminated buffer
 * *out holding *len bytes (the caller frees it). Blank lines are read from
 * the source text the nodes' locations point to. */
kd_status kd_fmt(const kd_ast *file, char **out, size_t *len);

/* Parses src (syntax errors go to diag) and formats it. On success *ast, if
 * given, receives the tree (the caller frees it). */
kd_status kd_fmt_source(const kd_source *src, kd_diag *diag, char **out, size_t *len,
                        kd_ast **ast);

#endif /* KD_FMT_H */
