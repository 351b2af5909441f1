/* Semantic checks (see check.h for the result, docs/language.md for the rules).
 *
 * The pipeline: load the prelude and the user's file with its imports
 * (parse_unit, depth first, import cycles found on the way), declare every
 * top-level name (declare), then check each definition (check_symbol):
 * expressions get a kind and a resolution (check_expr), blocks get their
 * settings checked and evaluated. Errors are reported and checking goes on,
 * with KD_KIND_ERROR silencing the follow-on errors of a bad expression. */
#define _XOPEN_SOURCE 700 /* realpath */
#include "check.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "prelude.h"

/* ---- the program --------------------------------------------------------- */

/* One parsed file. */
typedef struct unit {
  kd_source *src;
  kd_ast *ast;    /* NULL when it did not parse */
  char *path;     /* as displayed: the user's path, or joined to the importer's folder */
  char *real;     /* realpath(), identifies the file; NULL for the prelude */
  bool prelude;
  bool loading;   /* on the import stack */
} unit;

/* A symbol and what only the checker needs of it. kd_symbol comes first so a
 * kd_symbol * is a sym *. */
typedef struct sym {
  kd_symbol pub;
  const unit *u;
  int state;      /* 0 unchecked, 1 being checked, 2 checked */
} sym;

typedef struct ref_slot {
  const kd_ast *key;
  kd_ref ref;
} ref_slot;

/* A map from names to indexes (open addressing), so that lookups stay O(1)
 * in a file of 100,000 definitions. The keys are owned by the AST. */
typedef struct name_slot {
  const char *key;
  size_t val;
} name_slot;

typedef struct name_map {
  name_slot *v;
  size_t n, cap;
} name_map;

#define KD_NO_NAME SIZE_MAX

struct kd_program {
  unit **units; /* in post-order: a file after the files it imports; prelude first */
  size_t nunits, capunits;
  sym **syms;
  size_t nsyms, capsyms;
  name_map names[2]; /* top-level names -> index in syms: [0] the user's, [1] the prelude's */
  ref_slot *refs; /* open addressing on the node's address */
  size_t nrefs, caprefs;
  const kd_symbol *data;
  const kd_symbol **trains;
  size_t ntrains, captrains;
};

size_t kd_program_nsymbols(const kd_program *p) { return p->nsyms; }
const kd_symbol *kd_program_symbol(const kd_program *p, size_t i) { return &p->syms[i]->pub; }
const kd_symbol *kd_program_data(const kd_program *p) { return p->data; }
size_t kd_program_ntrains(const kd_program *p) { return p->ntrains; }
const kd_symbol *kd_program_train(const kd_program *p, size_t i) { return p->trains[i]; }

static size_t ref_hash(const kd_ast *key, size_t cap) {
  uintptr_t h = (uintptr_t)key;
  h ^= h >> 17;
  h *= (uintptr_t)0x9E3779B97F4A7C15ull;
  return (size_t)(h ^ (h >> 29)) & (cap - 1);
}

const kd_ref *kd_program_ref(const kd_program *p, const kd_ast *expr) {
  if (!p->caprefs) return NULL;
  for (size_t i = ref_hash(expr, p->caprefs);; i = (i + 1) & (p->caprefs - 1)) {
    if (!p->refs[i].key) return NULL;
    if (p->refs[i].key == expr) return &p->refs[i].ref;
  }
}

/* Grows by doubling; false when out of memory. */
static bool grow(void **v, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t ncap = *cap ? *cap * 2 : 8;
  while (ncap < need) ncap *= 2;
  void *nv = realloc(*v, ncap * elem);
  if (!nv) return false;
  *v = nv;
  *cap = ncap;
  return true;
}

static size_t name_hash(const char *s, size_t cap) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return (size_t)h & (cap - 1);
}

static size_t name_get(const name_map *m, const char *key) {
  if (!m->cap) return KD_NO_NAME;
  for (size_t i = name_hash(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
    if (!m->v[i].key) return KD_NO_NAME;
    if (!strcmp(m->v[i].key, key)) return m->v[i].val;
  }
}

/* Inserts or replaces; false when out of memory. */
static bool name_put(name_map *m, const char *key, size_t val) {
  if ((m->n + 1) * 2 > m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 16;
    name_slot *nv = calloc(ncap, sizeof *nv);
    if (!nv) return false;
    for (size_t i = 0; i < m->cap; i++) {
      if (!m->v[i].key) continue;
      size_t j = name_hash(m->v[i].key, ncap);
      while (nv[j].key) j = (j + 1) & (ncap - 1);
      nv[j] = m->v[i];
    }
    free(m->v);
    m->v = nv;
    m->cap = ncap;
  }
  size_t i = name_hash(key, m->cap);
  while (m->v[i].key && strcmp(m->v[i].key, key)) i = (i + 1) & (m->cap - 1);
  if (!m->v[i].key) m->n++;
  m->v[i] = (name_slot){key, val};
  return true;
}

static bool ref_put(kd_program *p, const kd_ast *key, kd_ref ref) {
  if ((p->nrefs + 1) * 2 > p->caprefs) {
    size_t ncap = p->caprefs ? p->caprefs * 2 : 64;
    ref_slot *nr = calloc(ncap, sizeof *nr);
    if (!nr) return false;
    for (size_t i = 0; i < p->caprefs; i++) {
      if (!p->refs[i].key) continue;
      size_t j = ref_hash(p->refs[i].key, ncap);
      while (nr[j].key) j = (j + 1) & (ncap - 1);
      nr[j] = p->refs[i];
    }
    free(p->refs);
    p->refs = nr;
    p->caprefs = ncap;
  }
  size_t i = ref_hash(key, p->caprefs);
  while (p->refs[i].key && p->refs[i].key != key) i = (i + 1) & (p->caprefs - 1);
  if (!p->refs[i].key) p->nrefs++;
  p->refs[i].key = key;
  p->refs[i].ref = ref;
  return true;
}

void kd_program_free(kd_program *p) {
  if (!p) return;
  for (size_t i = 0; i < p->nsyms; i++) {
    kd_symbol *s = &p->syms[i]->pub;
    free(s->args);
    free(s->file);
    free(s->data.path);
    free(s->train.save_path);
    free(p->syms[i]);
  }
  for (size_t i = 0; i < p->nunits; i++) {
    unit *u = p->units[i];
    kd_ast_free(u->ast);
    kd_source_free(u->src);
    free(u->path);
    free(u->real);
    free(u);
  }
  free(p->units);
  free(p->syms);
  free(p->names[0].v);
  free(p->names[1].v);
  free(p->refs);
  free(p->trains);
  free(p);
}

/* ---- the checker's state --------------------------------------------------- */

/* A local name: a parameter or a binding of the block being checked. */
typedef struct local {
  const char *name;
  const kd_ast *decl; /* PARAM or ASSIGN */
  kd_kind kind;
  bool has_value;     /* a constant whose value is known (objective lets) */
  double value;
  bool used;          /* named by an expression: unused ones are warned about */
} local;

typedef struct scope {
  local *v;
  size_t n, cap;
  name_map index; /* name -> index in v; names are unique in a scope */
} scope;

typedef struct checker {
  kd_program *p;
  kd_diag *diag;
  bool nomem;
  bool no_file_check;  /* kd_check_options.no_file_check */
  unsigned ctx;        /* KD_CTX_* of the expressions being checked */
  sym *block;          /* the definition being checked */
  scope *sc;           /* its locals, or NULL */
  int nsuggest;        /* did-you-mean searches so far (each scans every name) */
  name_map trained;    /* instance name -> index in syms of its train block */
  const sym *unnamed_objective[2]; /* [0] the user's, [1] the prelude's */
  size_t nobjectives;  /* the user's objectives */
  const sym *last_objective;
  sym **divstack;      /* divergences being checked, for recursion */
  size_t ndiv, capdiv;
  /* `load` files, checked for existence once the train blocks are known: a
   * file a train block of the program saves is not missing, only not made yet */
  struct pending_load { const kd_ast *e; const kd_symbol *inst; } *loads;
  size_t nloads, caploads;
  unit **stack;        /* the import stack */
  size_t nstack, capstack;
} checker;

static char *dupstr(checker *c, const char *s) {
  char *d = s ? strdup(s) : NULL;
  if (s && !d) c->nomem = true;
  return d;
}

/* A location covering `len` bytes from the start of `loc`: the keyword that
 * opens a block, rather than the whole block. */
static kd_loc head_loc(kd_loc loc, int len) {
  loc.last_line = loc.first_line;
  loc.last_column = loc.first_column + len;
  return loc;
}

/* ---- did you mean ---------------------------------------------------------- */

/* Optimal string alignment distance (Levenshtein plus transpositions), capped
 * at 64 bytes: names longer than that get no suggestion. */
static int edit_distance(const char *a, const char *b) {
  size_t n = strlen(a), m = strlen(b);
  if (n > 64 || m > 64) return INT_MAX;
  int d[65][65];
  for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
  for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
  for (size_t i = 1; i <= n; i++)
    for (size_t j = 1; j <= m; j++) {
      int cost = a[i - 1] != b[j - 1];
      int best = d[i - 1][j - 1] + cost;
      if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
          d[i - 2][j - 2] + 1 < best)
        best = d[i - 2][j - 2] + 1;
      d[i][j] = best;
    }
  return d[n][m];
}

/* The closest candidate seen so far, if close enough: at most a third of the
 * name's length in edits (at least one), and never the whole name. */
typedef struct suggest {
  const char *name;
  const char *best;
  int dist;
} suggest;

static suggest suggest_start(const char *name) { return (suggest){name, NULL, INT_MAX}; }

static void suggest_add(suggest *s, const char *cand) {
  if (!cand || !strcmp(cand, s->name)) return;
  int len = (int)strlen(s->name);
  int limit = len / 3 > 1 ? len / 3 : 1;
  int d = edit_distance(s->name, cand);
  if (d <= limit && d < len && d < s->dist) {
    s->best = cand;
    s->dist = d;
  }
}

/* "; did you mean 'x'?" or "". Valid until the next call. */
static const char *suggest_text(const suggest *s) {
  static char buf[128];
  if (!s->best) return "";
  snprintf(buf, sizeof buf, "; did you mean '%s'?", s->best);
  return buf;
}

/* ---- symbols and scopes ---------------------------------------------------- */

static bool is_value_symbol(const sym *s) {
  return s->pub.kind != KD_SYM_TRAIN && s->pub.name;
}

/* A top-level name as seen from a file: the prelude sees only itself; the
 * user's files see their own definitions first, then the prelude's. */
static sym *lookup_global(const kd_program *p, const char *name, bool from_prelude) {
  size_t i = from_prelude ? KD_NO_NAME : name_get(&p->names[0], name);
  if (i == KD_NO_NAME) i = name_get(&p->names[1], name);
  return i == KD_NO_NAME ? NULL : p->syms[i];
}

const kd_symbol *kd_program_lookup(const kd_program *p, const char *name) {
  sym *s = lookup_global(p, name, false);
  return s ? &s->pub : NULL;
}

static bool in_prelude(const checker *c) { return c->block && c->block->u->prelude; }

static local *lookup_local(checker *c, const char *name) {
  size_t i = c->sc ? name_get(&c->sc->index, name) : KD_NO_NAME;
  return i == KD_NO_NAME ? NULL : &c->sc->v[i];
}

/* Adds a name the scope does not hold yet. */
static local *add_local(checker *c, const char *name, const kd_ast *decl, kd_kind kind) {
  if (!grow((void **)&c->sc->v, &c->sc->cap, c->sc->n + 1, sizeof(local)) ||
      !name_put(&c->sc->index, name, c->sc->n)) {
    c->nomem = true;
    return NULL;
  }
  local *l = &c->sc->v[c->sc->n++];
  *l = (local){name, decl, kind, false, 0, false};
  return l;
}

/* Warns about the parameters (and, in an objective, the lets) of the block
 * just checked that nothing uses: a divergence that ignores q is a typo more
 * often than a choice. The objective's reserved bindings are used by kdc.
 * Only a block without errors gets these (after an error they are noise). */
static void warn_unused(checker *c, const char *what, int errors_before) {
  static const char *const reserved[] = {"loss", "reduction", "ignore_index", "vocab_align"};
  if (kd_diag_error_count(c->diag) > errors_before) return;
  for (size_t i = 0; i < c->sc->n; i++) {
    const local *l = &c->sc->v[i];
    if (l->used || (l->decl->kind != KD_AST_PARAM && strcmp(what, "objective"))) continue;
    bool skip = false;
    for (size_t j = 0; j < sizeof reserved / sizeof reserved[0]; j++)
      skip |= l->decl->kind == KD_AST_ASSIGN && !strcmp(l->name, reserved[j]);
    if (skip) continue;
    if (l->decl->kind == KD_AST_PARAM)
      kd_warning(c->diag, l->decl->name_loc, "parameter '%s' of %s '%s' is never used", l->name,
                 what, c->block->pub.name);
    else
      kd_warning(c->diag, l->decl->name_loc, "'%s' is bound but never used", l->name);
  }
}

static void free_scope(scope *sc) {
  free(sc->v);
  free(sc->index.v);
}

/* Builtins usable in expressions: functions, layers, names. */
static const kd_builtin *lookup_builtin(const char *name) {
  const kd_builtin *b = kd_builtin_find(name, KD_BI_FUNCTION);
  if (!b) b = kd_builtin_find(name, KD_BI_LAYER);
  if (!b) b = kd_builtin_find(name, KD_BI_NAME);
  return b;
}

static kd_kind sym_kind(const sym *s) {
  switch (s->pub.kind) {
  case KD_SYM_DATA: return KD_KIND_DATA;
  case KD_SYM_MODEL: return KD_KIND_MODEL;
  case KD_SYM_DIVERGENCE: return KD_KIND_DIVERGENCE;
  case KD_SYM_INSTANCE: return KD_KIND_INSTANCE;
  case KD_SYM_CONST: return s->pub.value_kind;
  case KD_SYM_OBJECTIVE: return KD_KIND_OBJECTIVE;
  case KD_SYM_TRAIN: break;
  }
  return KD_KIND_ERROR;
}

/* Every name visible from the current block, for suggestions. Each search
 * scans every name, so only the first 100 errors of a run get one: a file
 * of 100,000 undefined names must not take 10^10 steps. */
static void suggest_visible(checker *c, suggest *s) {
  if (++c->nsuggest > 100) return;
  if (c->sc)
    for (size_t i = 0; i < c->sc->n; i++) suggest_add(s, c->sc->v[i].name);
  if (!(c->ctx & (KD_CTX_MODEL | KD_CTX_DIVERGENCE)))
    for (size_t i = 0; i < c->p->nsyms; i++)
      if (is_value_symbol(c->p->syms[i])) suggest_add(s, c->p->syms[i]->pub.name);
  if (c->ctx & KD_CTX_DIVERGENCE)
    for (size_t i = 0; i < c->p->nsyms; i++)
      if (c->p->syms[i]->pub.kind == KD_SYM_DIVERGENCE) suggest_add(s, c->p->syms[i]->pub.name);
  for (int i = 0; i < KD_BUILTIN_COUNT; i++) {
    const kd_builtin *b = &kd_builtins[i];
    if (b->cls <= KD_BI_NAME && (b->contexts & c->ctx)) suggest_add(s, b->name);
  }
}

/* ---- constants ------------------------------------------------------------- */

/* The value of a constant expression: numbers, constant names and arithmetic.
 * False when the expression is not constant. */
static bool eval_const(checker *c, const kd_ast *e, double *out) {
  double a, b;
  switch (e->kind) {
  case KD_AST_NUMBER: *out = e->num; return true;
  case KD_AST_NAME: {
    local *l = lookup_local(c, e->name);
    if (l) {
      *out = l->value;
      return l->has_value;
    }
    sym *s = lookup_global(c->p, e->name, in_prelude(c));
    if (!s || s->pub.kind != KD_SYM_CONST || !(KD_KM(s->pub.value_kind) & KD_KM_NUM))
      return false;
    *out = s->pub.value;
    return true;
  }
  case KD_AST_UNARY:
    if (!eval_const(c, e->a, &a)) return false;
    *out = -a;
    return true;
  case KD_AST_BINARY:
    if (!eval_const(c, e->a, &a) || !eval_const(c, e->b, &b)) return false;
    switch (e->op) {
    case KD_OP_ADD: *out = a + b; return true;
    case KD_OP_SUB: *out = a - b; return true;
    case KD_OP_MUL: *out = a * b; return true;
    case KD_OP_DIV: *out = a / b; return true;
    case KD_OP_POW: *out = pow(a, b); return true;
    default: return false;
    }
  default: return false;
  }
}

/* ---- kinds ----------------------------------------------------------------- */

static void record(checker *c, const kd_ast *e, kd_ref ref) {
  if (!ref_put(c->p, e, ref)) c->nomem = true;
}

static kd_kind set_kind(checker *c, const kd_ast *e, kd_kind k) {
  record(c, e, (kd_ref){.kind = k});
  return k;
}

/* "a number or a per-token scalar" for a set of kinds. */
static void mask_phrase(unsigned mask, char *buf, size_t len) {
  if (mask == KD_KM_VALUE) {
    snprintf(buf, len, "a value");
    return;
  }
  if ((mask & KD_KM_NUM) == KD_KM_NUM) mask &= ~KD_KM(KD_KIND_INTEGER);
  buf[0] = 0;
  for (int k = 0; k < KD_KIND_COUNT; k++) {
    if (!(mask & KD_KM(k))) continue;
    size_t used = strlen(buf);
    snprintf(buf + used, len - used, "%s%s%s", used ? " or " : "", kd_kind_phrase(k),
             k == KD_KIND_TENSOR ? " (logits)" : "");
  }
}

/* Reports `what` must be one of `mask` when kind k is not. False on a report
 * (or an earlier error). */
static bool expect(checker *c, const kd_ast *e, kd_kind k, unsigned mask, const char *what) {
  if (k == KD_KIND_ERROR) return false;
  if (KD_KM(k) & mask) return true;
  char want[256];
  mask_phrase(mask, want, sizeof want);
  const char *hint = "";
  if (k == KD_KIND_MODEL) hint = " (instantiate it first: student = model(...))";
  else if (k == KD_KIND_DIST && (mask & KD_KM(KD_KIND_TENSOR)))
    hint = " (pass the logits, not their softmax)";
  else if (k == KD_KIND_TENSOR && (mask & KD_KM(KD_KIND_DIST)))
    hint = " (wrap logits in softmax(...))";
  kd_error(c->diag, e->loc, "%s must be %s, got %s%s", what, want, kd_kind_phrase(k), hint);
  return false;
}

/* The kind of `a op b` for value kinds a and b; KD_KIND_ERROR when they do
 * not combine (reported here). Distributions lose their status: p / q is
 * just a tensor. */
static kd_kind join(checker *c, const kd_ast *e, kd_ast_op op, const char *where, kd_kind a,
                     kd_kind b) {
  if (a == KD_KIND_ERROR || b == KD_KIND_ERROR) return KD_KIND_ERROR;
  if (a == KD_KIND_DIST) a = KD_KIND_TENSOR;
  if (b == KD_KIND_DIST) b = KD_KIND_TENSOR;
  bool num_a = KD_KM(a) & KD_KM_NUM, num_b = KD_KM(b) & KD_KM_NUM;
  if (a == KD_KIND_HIDDEN || b == KD_KIND_HIDDEN) {
    if ((a == KD_KIND_HIDDEN || num_a) && (b == KD_KIND_HIDDEN || num_b)) return KD_KIND_HIDDEN;
    kd_error(c->diag, e->loc, "cannot combine %s and %s %s", kd_kind_phrase(a),
             kd_kind_phrase(b), where);
    return KD_KIND_ERROR;
  }
  if (num_a && num_b) {
    bool ints = a == KD_KIND_INTEGER && b == KD_KIND_INTEGER;
    return ints && op != KD_OP_DIV && op != KD_OP_POW ? KD_KIND_INTEGER : KD_KIND_NUMBER;
  }
  /* Per-token kinds: number < ids < scalar < tensor. positions + 1 stays ids. */
  if ((a == KD_KIND_IDS && b == KD_KIND_INTEGER) || (a == KD_KIND_INTEGER && b == KD_KIND_IDS) ||
      (a == KD_KIND_IDS && b == KD_KIND_IDS))
    return op == KD_OP_ADD || op == KD_OP_SUB ? KD_KIND_IDS : KD_KIND_SCALAR;
  if (a == KD_KIND_TENSOR || b == KD_KIND_TENSOR) return KD_KIND_TENSOR;
  return KD_KIND_SCALAR;
}

/* ---- calls ----------------------------------------------------------------- */

/* A parameter of whatever is called. */
typedef struct param {
  const char *name;  /* NULL: positional only (builtin functions) */
  unsigned kinds;    /* KD_KM_* */
  bool required;
  bool positional;   /* may be passed by position */
  bool named;        /* may be passed by name */
} param;

enum { MAX_PARAMS = 32 };

/* Matches a call's arguments to params; args[i] is the argument of param i
 * or NULL. Reports arity errors, unknown and repeated names, positional after
 * named. `what` names the callee ("'softmax'", "divergence 'jsd'"); `unit`
 * names a positional parameter in arity messages ("argument",
 * "distribution"). Returns false when a report was made. */
static bool match_args(checker *c, const kd_ast *call, const char *what, const char *unit_word,
                       const param *ps, int np, const kd_ast **args) {
  bool ok = true, unknown = false;
  int npos = 0, given_pos = 0;
  for (int i = 0; i < np; i++) {
    args[i] = NULL;
    if (ps[i].positional) npos++;
  }
  const kd_ast *first_named = NULL;
  for (size_t i = 0; i < call->items.n; i++) {
    const kd_ast *arg = call->items.v[i];
    if (!arg->name) {
      if (first_named) {
        kd_error(c->diag, arg->loc, "positional argument after the named argument '%s'",
                 first_named->name);
        ok = false;
        continue;
      }
      given_pos++;
      int k = -1;
      for (int j = 0, seen = 0; j < np; j++)
        if (ps[j].positional && seen++ == given_pos - 1) k = j;
      if (k >= 0) args[k] = arg->a;
      continue;
    }
    if (!first_named) first_named = arg;
    int k = -1;
    suggest s = suggest_start(arg->name);
    for (int j = 0; j < np; j++) {
      if (!ps[j].named) continue;
      if (!strcmp(ps[j].name, arg->name)) k = j;
      suggest_add(&s, ps[j].name);
    }
    if (k < 0) {
      char known[256] = "";
      for (int j = 0; j < np && !s.best; j++) {
        size_t n = strlen(known);
        if (ps[j].named) snprintf(known + n, sizeof known - n, "%s%s", n ? ", " : " (known: ", ps[j].name);
      }
      if (known[0]) strncat(known, ")", sizeof known - strlen(known) - 1);
      kd_error(c->diag, arg->name_loc, "%s has no parameter '%s'%s%s", what, arg->name,
               suggest_text(&s), known);
      ok = false;
      unknown = true;
    } else if (args[k]) {
      kd_error(c->diag, arg->name_loc, "argument '%s' is given twice", arg->name);
      ok = false;
    } else {
      args[k] = arg->a;
    }
  }
  if (given_pos > npos) {
    const char *named_only = NULL;
    for (int i = 0; i < np && !named_only; i++)
      if (!ps[i].positional) named_only = ps[i].name;
    kd_error(c->diag, call->loc, "%s takes %d %s%s, got %d%s%s%s", what, npos, unit_word,
             npos == 1 ? "" : "s", given_pos, named_only ? "; pass the others by name (" : "",
             named_only ? named_only : "", named_only ? " = ...)" : "");
    return false;
  }
  /* A misspelt name already explains a missing argument. */
  for (int i = 0; i < np && !unknown; i++) {
    if (args[i] || !ps[i].required) continue;
    if (ps[i].positional && !ps[i].named) {
      kd_error(c->diag, call->loc, "%s takes %d %s%s, got %d", what, npos, unit_word,
               npos == 1 ? "" : "s", given_pos);
      return false;
    }
    kd_error(c->diag, call->loc, "%s needs the argument '%s'", what, ps[i].name);
    ok = false;
  }
  return ok;
}

static kd_kind check_expr(checker *c, const kd_ast *e);

/* Checks the argument of param i against its kinds; returns its kind. */
static kd_kind check_arg(checker *c, const kd_ast *arg, const param *ps, int i, const char *what) {
  kd_kind k = check_expr(c, arg);
  char desc[320]; /* what: up to 159 bytes */
  if (ps[i].name) snprintf(desc, sizeof desc, "argument '%s' of %s", ps[i].name, what);
  else snprintf(desc, sizeof desc, "argument %d of %s", i + 1, what);
  return expect(c, arg, k, ps[i].kinds, desc) ? k : KD_KIND_ERROR;
}

static kd_kind check_builtin_call(checker *c, const kd_ast *call, const kd_builtin *b) {
  char what[64];
  snprintf(what, sizeof what, "'%s'", b->name);
  param ps[3 + KD_MAX_NAMED] = {0};
  int np = 0;
  for (int i = 0; i < b->npos; i++) ps[np++] = (param){NULL, b->pos[i], true, true, false};
  for (int i = 0; i < kd_builtin_nnamed(b); i++)
    ps[np++] = (param){b->named[i].name, b->named[i].kinds, false, false, true};
  const kd_ast *args[3 + KD_MAX_NAMED];
  bool ok = match_args(c, call, what, "argument", ps, np, args);
  kd_kind kinds[3 + KD_MAX_NAMED];
  for (int i = 0; i < np; i++) {
    kinds[i] = args[i] ? check_arg(c, args[i], ps, i, what) : KD_KIND_ERROR;
    if (args[i] && kinds[i] == KD_KIND_ERROR) ok = false;
  }
  if (!ok) return KD_KIND_ERROR;
  switch (b->rule) {
  case KD_RES_FIXED: return b->result;
  case KD_RES_SAME: return kinds[0];
  case KD_RES_JOIN:
  case KD_RES_JOIN_TAIL: {
    int first = b->rule == KD_RES_JOIN ? 0 : 1;
    kd_kind k = kinds[first];
    char where[64];
    snprintf(where, sizeof where, "in '%s'", b->name);
    for (int i = first + 1; i < b->npos; i++) k = join(c, call, KD_OP_NONE, where, k, kinds[i]);
    return k == KD_KIND_DIST ? KD_KIND_TENSOR : k;
  }
  }
  return KD_KIND_ERROR;
}

static void check_divergence(checker *c, sym *s);

/* jsd(p, q, beta = 0.5): distributions by position, hyperparameters by name. */
static kd_kind check_divergence_call(checker *c, const kd_ast *call, sym *d) {
  if (!(c->ctx & (KD_CTX_OBJECTIVE | KD_CTX_DIVERGENCE))) {
    kd_error(c->diag, call->a->loc,
             "divergence '%s' can only be called in an objective or a divergence", d->pub.name);
    return KD_KIND_ERROR;
  }
  check_divergence(c, d); /* its signature must be sound, and recursion is found here */
  const kd_ast *node = d->pub.node;
  param ps[MAX_PARAMS] = {0};
  int np = 0;
  for (size_t i = 0; i < node->params.n && np < MAX_PARAMS; i++)
    ps[np++] = (param){node->params.v[i]->name, KD_KM(KD_KIND_DIST), true, true, false};
  for (size_t i = 0; i < node->items.n && np < MAX_PARAMS; i++) {
    const kd_ast *hp = node->items.v[i];
    ps[np++] = (param){hp->name, KD_KM_NUM, hp->a == NULL, false, true};
  }
  char what[160];
  snprintf(what, sizeof what, "divergence '%s'", d->pub.name);
  const kd_ast *args[MAX_PARAMS];
  bool ok = match_args(c, call, what, "distribution", ps, np, args);
  for (int i = 0; i < np; i++)
    if (args[i] && check_arg(c, args[i], ps, i, what) == KD_KIND_ERROR) ok = false;
  return ok ? KD_KIND_SCALAR : KD_KIND_ERROR;
}

/* gpt(layers = 4, dim = 256, heads = 8): constant numbers, by name or position. */
static kd_kind check_model_call(checker *c, const kd_ast *call, sym *m, double **values) {
  if (!(c->ctx & KD_CTX_TOP)) {
    kd_error(c->diag, call->a->loc,
             "model '%s' can only be instantiated at the top level (student = %s(...))",
             m->pub.name, m->pub.name);
    return KD_KIND_ERROR;
  }
  const kd_ast *node = m->pub.node;
  param ps[MAX_PARAMS] = {0};
  int np = 0;
  for (size_t i = 0; i < node->params.n && np < MAX_PARAMS; i++) {
    const kd_ast *fp = node->params.v[i];
    ps[np++] = (param){fp->name, KD_KM_NUM, fp->a == NULL, true, true};
  }
  char what[160];
  snprintf(what, sizeof what, "model '%s'", m->pub.name);
  const kd_ast *args[MAX_PARAMS];
  bool ok = match_args(c, call, what, "argument", ps, np, args);
  double *v = calloc(np ? (size_t)np : 1, sizeof *v);
  if (!v) {
    c->nomem = true;
    return KD_KIND_ERROR;
  }
  for (int i = 0; i < np; i++) {
    const kd_ast *e = args[i] ? args[i] : node->params.v[i]->a;
    if (!e) continue;
    if (args[i] && check_arg(c, e, ps, i, what) == KD_KIND_ERROR) {
      ok = false;
    } else if (!eval_const(c, e, &v[i])) {
      /* Defaults are checked with the model; only the arguments are reported. */
      if (args[i]) kd_error(c->diag, e->loc, "argument '%s' of %s must be a constant",
                            ps[i].name, what);
      ok = false;
    }
  }
  if (!ok) {
    free(v);
    return KD_KIND_ERROR;
  }
  *values = v;
  return KD_KIND_INSTANCE;
}

/* "inside a model", "in an objective or a divergence", ... */
static const char *contexts_phrase(unsigned ctx) {
  switch (ctx) {
  case KD_CTX_MODEL: return "inside a model";
  case KD_CTX_OBJECTIVE: return "in an objective";
  case KD_CTX_TOP: return "at the top level (teacher = logits(\"f.npy\"))";
  case KD_CTX_DIVERGENCE | KD_CTX_OBJECTIVE: return "in an objective or a divergence";
  default: return "in a model, an objective or a divergence";
  }
}

static kd_kind check_call(checker *c, const kd_ast *call) {
  const kd_ast *callee = call->a;
  kd_ref ref = {.kind = KD_KIND_ERROR};
  if (callee->kind != KD_AST_NAME) {
    kd_error(c->diag, callee->loc, "only functions, layers, divergences and models can be called");
    for (size_t i = 0; i < call->items.n; i++) check_expr(c, call->items.v[i]->a);
    record(c, call, ref);
    return KD_KIND_ERROR;
  }
  const char *name = callee->name;
  local *l = lookup_local(c, name);
  sym *s = l ? NULL : lookup_global(c->p, name, in_prelude(c));
  const kd_builtin *b = l || s ? NULL : lookup_builtin(name);
  if (l) {
    kd_error(c->diag, callee->loc, "'%s' is %s, not a function", name, kd_kind_phrase(l->kind));
  } else if (s && s->pub.kind == KD_SYM_DIVERGENCE) {
    ref = (kd_ref){check_divergence_call(c, call, s), KD_REF_SYMBOL, &s->pub, NULL, NULL};
  } else if (s && s->pub.kind == KD_SYM_MODEL) {
    double *values = NULL;
    ref = (kd_ref){check_model_call(c, call, s, &values), KD_REF_SYMBOL, &s->pub, NULL, NULL};
    free(values); /* the binding that wants them calls check_model_call itself */
  } else if (s) {
    kd_error(c->diag, callee->loc, "'%s' is %s, not a function", name, kd_kind_phrase(sym_kind(s)));
  } else if (b && b->cls == KD_BI_NAME) {
    kd_error(c->diag, callee->loc, "'%s' is %s, not a function", name, kd_kind_phrase(b->result));
  } else if (b && !(b->contexts & c->ctx)) {
    kd_error(c->diag, callee->loc, "%s '%s' can only be used %s",
             b->cls == KD_BI_LAYER ? "layer" : "function", name, contexts_phrase(b->contexts));
  } else if (b) {
    ref = (kd_ref){check_builtin_call(c, call, b), KD_REF_BUILTIN, NULL, b, NULL};
  } else {
    suggest sg = suggest_start(name);
    suggest_visible(c, &sg);
    kd_error(c->diag, callee->loc, "undefined function '%s'%s", name, suggest_text(&sg));
  }
  if (ref.ref == KD_REF_NONE)
    for (size_t i = 0; i < call->items.n; i++) check_expr(c, call->items.v[i]->a);
  record(c, callee, ref);
  record(c, call, ref);
  return ref.kind;
}

/* ---- names and members ----------------------------------------------------- */

static kd_kind check_name(checker *c, const kd_ast *e) {
  local *l = lookup_local(c, e->name);
  if (l) {
    l->used = true;
    record(c, e, (kd_ref){l->kind, KD_REF_LOCAL, NULL, NULL, l->decl});
    return l->kind;
  }
  sym *s = lookup_global(c->p, e->name, in_prelude(c));
  const kd_builtin *b = s ? NULL : lookup_builtin(e->name);
  if (s && (c->ctx & KD_CTX_DIVERGENCE) && s->pub.kind != KD_SYM_DIVERGENCE) {
    kd_error(c->diag, e->loc, "'%s' is not a parameter of divergence '%s'", e->name,
             c->block->pub.name);
    return set_kind(c, e, KD_KIND_ERROR);
  }
  if (s && (c->ctx & KD_CTX_MODEL)) {
    kd_error(c->diag, e->loc, "'%s' is not a parameter or a binding of model '%s'", e->name,
             c->block->pub.name);
    return set_kind(c, e, KD_KIND_ERROR);
  }
  if (s && (s->pub.kind == KD_SYM_CONST || s->pub.kind == KD_SYM_INSTANCE) && s->state != 2) {
    kd_error(c->diag, e->loc, "'%s' is used before its definition", e->name);
    return set_kind(c, e, KD_KIND_ERROR);
  }
  if (s) {
    record(c, e, (kd_ref){sym_kind(s), KD_REF_SYMBOL, &s->pub, NULL, NULL});
    return sym_kind(s);
  }
  if (b && b->cls == KD_BI_NAME && !(b->contexts & c->ctx)) {
    kd_error(c->diag, e->loc, "'%s' can only be used %s", e->name, contexts_phrase(b->contexts));
    return set_kind(c, e, KD_KIND_ERROR);
  }
  if (b) {
    kd_kind k = b->cls == KD_BI_NAME ? b->result : KD_KIND_BUILTIN;
    record(c, e, (kd_ref){k, KD_REF_BUILTIN, NULL, b, NULL});
    return k;
  }
  suggest sg = suggest_start(e->name);
  suggest_visible(c, &sg);
  if (c->ctx & KD_CTX_DIVERGENCE)
    kd_error(c->diag, e->loc, "'%s' is not a parameter of divergence '%s'%s", e->name,
             c->block->pub.name, suggest_text(&sg));
  else
    kd_error(c->diag, e->loc, "undefined name '%s'%s", e->name, suggest_text(&sg));
  return set_kind(c, e, KD_KIND_ERROR);
}

/* Whether model m assigns `name` anywhere in its body. */
static bool assigns(const kd_ast_list *items, const char *name) {
  for (size_t i = 0; i < items->n; i++) {
    const kd_ast *st = items->v[i];
    if (st->kind == KD_AST_ASSIGN && !strcmp(st->name, name)) return true;
    if (st->kind == KD_AST_REPEAT && assigns(&st->items, name)) return true;
  }
  return false;
}

static void suggest_outputs(suggest *s, const kd_ast_list *items) {
  for (size_t i = 0; i < items->n; i++) {
    const kd_ast *st = items->v[i];
    if (st->kind == KD_AST_ASSIGN) suggest_add(s, st->name);
    if (st->kind == KD_AST_REPEAT) suggest_outputs(s, &st->items);
  }
}

/* teacher.logits: a tensor; any other assigned name of the model: activations. */
static kd_kind check_member(checker *c, const kd_ast *e) {
  kd_kind k = check_expr(c, e->a);
  if (k == KD_KIND_ERROR) return set_kind(c, e, KD_KIND_ERROR);
  if (k != KD_KIND_INSTANCE) {
    kd_error(c->diag, e->a->loc, "'.%s' needs a model instance, got %s%s", e->name,
             kd_kind_phrase(k),
             k == KD_KIND_MODEL ? " (instantiate it first: student = model(...))" : "");
    return set_kind(c, e, KD_KIND_ERROR);
  }
  const kd_ref *r = kd_program_ref(c->p, e->a);
  const kd_symbol *inst = r ? r->sym : NULL;
  const kd_symbol *model = inst ? inst->model : NULL;
  bool is_logits = !strcmp(e->name, "logits");
  if (is_logits || (model && assigns(&model->node->items, e->name))) {
    kd_kind mk = is_logits ? KD_KIND_TENSOR : KD_KIND_HIDDEN;
    record(c, e, (kd_ref){mk, KD_REF_SYMBOL, inst, NULL, NULL});
    return mk;
  }
  suggest sg = suggest_start(e->name);
  suggest_add(&sg, "logits");
  if (model) suggest_outputs(&sg, &model->node->items);
  kd_error(c->diag, e->name_loc, "'%s' has no output '%s'%s", inst ? inst->name : "?", e->name,
           suggest_text(&sg));
  return set_kind(c, e, KD_KIND_ERROR);
}

static kd_kind check_expr(checker *c, const kd_ast *e) {
  switch (e->kind) {
  case KD_AST_NUMBER: return set_kind(c, e, e->is_int ? KD_KIND_INTEGER : KD_KIND_NUMBER);
  case KD_AST_STRING: return set_kind(c, e, KD_KIND_STRING);
  case KD_AST_NAME: return check_name(c, e);
  case KD_AST_MEMBER: return check_member(c, e);
  case KD_AST_CALL: return check_call(c, e);
  case KD_AST_UNARY: {
    kd_kind k = check_expr(c, e->a);
    if (!expect(c, e->a, k, KD_KM_VALUE, "the operand of '-'")) return set_kind(c, e, KD_KIND_ERROR);
    return set_kind(c, e, k == KD_KIND_DIST ? KD_KIND_TENSOR : k == KD_KIND_IDS ? KD_KIND_SCALAR : k);
  }
  case KD_AST_BINARY: {
    kd_kind a = check_expr(c, e->a), b = check_expr(c, e->b);
    char what[64];
    snprintf(what, sizeof what, "the left operand of '%s'", kd_ast_op_spelling(e->op));
    bool ok = expect(c, e->a, a, KD_KM_VALUE, what);
    snprintf(what, sizeof what, "the right operand of '%s'", kd_ast_op_spelling(e->op));
    ok = expect(c, e->b, b, KD_KM_VALUE, what) && ok;
    snprintf(what, sizeof what, "with '%s'", kd_ast_op_spelling(e->op));
    return set_kind(c, e, ok ? join(c, e, e->op, what, a, b) : KD_KIND_ERROR);
  }
  default:
    /* Statements never reach here; a parser that made one would be a bug. */
    kd_error(c->diag, e->loc, "internal error: %s node in an expression", kd_ast_kind_name(e->kind));
    return KD_KIND_ERROR;
  }
}

/* ---- files ------------------------------------------------------------------ */

/* `rel` joined to the folder of `base` (a .kd file); rel itself when absolute
 * or when base has no folder. */
static char *join_path(checker *c, const char *base, const char *rel) {
  const char *slash = strrchr(base, '/');
  if (rel[0] == '/' || !slash) return dupstr(c, rel);
  size_t dir = (size_t)(slash - base) + 1, n = strlen(rel);
  char *out = malloc(dir + n + 1);
  if (!out) {
    c->nomem = true;
    return NULL;
  }
  memcpy(out, base, dir);
  memcpy(out + dir, rel, n + 1);
  return out;
}

/* The string literal an expression of kind string stands for: itself, or
 * the literal a string constant was bound to. */
static const kd_ast *string_literal(checker *c, const kd_ast *e) {
  if (e->kind == KD_AST_STRING) return e;
  if (e->kind != KD_AST_NAME) return NULL;
  const kd_ref *r = kd_program_ref(c->p, e);
  if (!r || !r->sym || r->sym->kind != KD_SYM_CONST || r->sym->value_kind != KD_KIND_STRING)
    return NULL;
  return string_literal(c, r->sym->node->a);
}

/* Warns that the file written `name` at e, found at path, does not exist. */
static void warn_missing(checker *c, const kd_ast *e, const char *name, const char *path) {
  struct stat st;
  if (!path || stat(path, &st) == 0) return;
  if (strcmp(path, name))
    kd_warning(c->diag, e->loc, "file '%s' does not exist (looked for '%s')", name, path);
  else
    kd_warning(c->diag, e->loc, "file '%s' does not exist", name);
}

/* A string argument naming a file, joined to the folder of the .kd file;
 * warns when an input file does not exist. Returns the path (owned) or NULL. */
static char *file_path(checker *c, const kd_ast *e, bool input) {
  const kd_ast *lit = string_literal(c, e);
  if (!lit) return NULL;
  if (memchr(lit->str, 0, lit->str_len)) {
    kd_error(c->diag, e->loc, "a file name cannot contain a NUL byte");
    return NULL;
  }
  char *path = join_path(c, c->block->u->path, lit->str);
  if (input && !c->no_file_check) warn_missing(c, e, lit->str, path);
  return path;
}

/* ---- settings --------------------------------------------------------------- */

/* How to show a constant's value in a message: as written when it is a
 * literal (1e3 rather than 1000). */
static const char *spelling(const kd_ast *e, double v, char *buf, size_t len) {
  if (e->kind == KD_AST_NUMBER && e->str) return e->str;
  snprintf(buf, len, "%g", v);
  return buf;
}

/* An integer constant; reports and returns false otherwise. */
static bool const_int(checker *c, const kd_ast *e, const char *what, int64_t min, int64_t *out) {
  kd_kind k = check_expr(c, e);
  if (!expect(c, e, k, KD_KM_NUM, what)) return false;
  double v;
  if (!eval_const(c, e, &v)) {
    kd_error(c->diag, e->loc, "%s must be a constant", what);
    return false;
  }
  char buf[32];
  if (k != KD_KIND_INTEGER || v != floor(v) || fabs(v) > 9e15) {
    kd_error(c->diag, e->loc, "%s must be an integer, got %s", what, spelling(e, v, buf, sizeof buf));
    return false;
  }
  if (v < (double)min) {
    kd_error(c->diag, e->loc, "%s must be %s, got %s", what,
             min > 0 ? "a positive integer" : "a non-negative integer",
             spelling(e, v, buf, sizeof buf));
    return false;
  }
  *out = (int64_t)v;
  return true;
}

static bool const_num(checker *c, const kd_ast *e, const char *what, double *out) {
  kd_kind k = check_expr(c, e);
  if (!expect(c, e, k, KD_KM_NUM, what)) return false;
  if (!eval_const(c, e, out)) {
    kd_error(c->diag, e->loc, "%s must be a constant", what);
    return false;
  }
  return true;
}

/* `optimizer adamw(lr = 1e-3)` or `schedule cosine`: a name from the table,
 * named constant arguments. Fills args with the defaults overridden. */
static const kd_builtin *check_named_call(checker *c, const kd_ast *e, kd_builtin_class cls,
                                          double *args) {
  const char *what = cls == KD_BI_OPTIMIZER ? "optimizer" : "schedule";
  const kd_ast *callee = e->kind == KD_AST_CALL ? e->a : e;
  if (callee->kind != KD_AST_NAME) {
    kd_error(c->diag, e->loc, "expected %s name such as %s", cls == KD_BI_OPTIMIZER ? "an optimizer" : "a schedule",
             cls == KD_BI_OPTIMIZER ? "adamw(lr = 1e-3)" : "cosine(warmup = 100)");
    return NULL;
  }
  const kd_builtin *b = kd_builtin_find(callee->name, cls);
  if (!b) {
    suggest sg = suggest_start(callee->name);
    char known[128] = "";
    for (int i = 0; i < KD_BUILTIN_COUNT; i++) {
      if (kd_builtins[i].cls != cls) continue;
      suggest_add(&sg, kd_builtins[i].name);
      size_t n = strlen(known);
      snprintf(known + n, sizeof known - n, "%s%s", n ? ", " : "", kd_builtins[i].name);
    }
    if (sg.best)
      kd_error(c->diag, callee->loc, "unknown %s '%s'%s", what, callee->name, suggest_text(&sg));
    else
      kd_error(c->diag, callee->loc, "unknown %s '%s' (known: %s)", what, callee->name, known);
    return NULL;
  }
  record(c, callee, (kd_ref){KD_KIND_BUILTIN, KD_REF_BUILTIN, NULL, b, NULL});
  int nn = kd_builtin_nnamed(b);
  for (int i = 0; i < nn; i++) args[i] = b->named[i].def;
  if (e->kind != KD_AST_CALL) return b;
  param ps[KD_MAX_NAMED] = {0};
  for (int i = 0; i < nn; i++) ps[i] = (param){b->named[i].name, b->named[i].kinds, false, false, true};
  char desc[64];
  snprintf(desc, sizeof desc, "%s '%s'", what, b->name);
  const kd_ast *given[KD_MAX_NAMED];
  for (size_t i = 0; i < e->items.n; i++)
    if (!e->items.v[i]->name) {
      kd_error(c->diag, e->items.v[i]->loc, "%s arguments are named: %s(%s = ...)", what, b->name,
               nn ? b->named[0].name : "");
      return NULL;
    }
  bool ok = match_args(c, e, desc, "argument", ps, nn, given);
  for (int i = 0; i < nn; i++) {
    if (!given[i]) continue;
    char argwhat[160];
    snprintf(argwhat, sizeof argwhat, "argument '%s' of %s", ps[i].name, desc);
    int64_t iv;
    if (ps[i].kinds == KD_KM_INT) {
      if (const_int(c, given[i], argwhat, 0, &iv)) args[i] = (double)iv;
      else ok = false;
    } else if (!const_num(c, given[i], argwhat, &args[i])) {
      ok = false;
    } else if (args[i] < 0) {
      kd_error(c->diag, given[i]->loc, "%s must not be negative, got %g", argwhat, args[i]);
      ok = false;
    }
  }
  record(c, e, (kd_ref){KD_KIND_BUILTIN, KD_REF_BUILTIN, NULL, b, NULL});
  return ok ? b : NULL;
}

/* One checked setting; `seen` remembers the first of each key for duplicates. */
typedef struct setting_seen {
  const kd_setting_spec *spec;
  const kd_ast *node;
} setting_seen;

static const kd_ast *find_setting(const setting_seen *seen, size_t n, const char *key) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(seen[i].spec->key, key)) return seen[i].node;
  return NULL;
}

/* Checks the shape of every setting of a block (known key, once, value and
 * `every` as the table says) and the kinds and ranges of their values, then
 * calls apply() for each valid one. */
typedef void (*apply_fn)(checker *c, sym *s, const kd_setting_spec *spec, const kd_ast *st);

static size_t check_settings(checker *c, sym *s, kd_block block, setting_seen *seen,
                             size_t maxseen, apply_fn apply, bool *unknown) {
  size_t n = 0;
  *unknown = false;
  const kd_ast *node = s->pub.node;
  for (size_t i = 0; i < node->items.n; i++) {
    const kd_ast *st = node->items.v[i];
    const kd_setting_spec *spec = kd_setting_find(block, st->name);
    if (!spec) {
      suggest sg = suggest_start(st->name);
      for (size_t j = 0; j < kd_nsettings; j++)
        if (kd_settings[j].block == block) suggest_add(&sg, kd_settings[j].key);
      kd_block other = block == KD_BLOCK_DATA ? KD_BLOCK_TRAIN : KD_BLOCK_DATA;
      if (!sg.best && kd_setting_find(other, st->name))
        kd_error(c->diag, st->name_loc, "'%s' is a %s setting, not a %s one", st->name,
                 kd_block_name(other), kd_block_name(block));
      else
        kd_error(c->diag, st->name_loc, "unknown %s setting '%s'%s", kd_block_name(block),
                 st->name, suggest_text(&sg));
      *unknown = true;
      continue;
    }
    const kd_ast *first = find_setting(seen, n, st->name);
    if (first) {
      kd_error(c->diag, st->name_loc, "'%s' is set twice", st->name);
      kd_note(c->diag, first->name_loc, "first set here");
      continue;
    }
    if (n < maxseen) seen[n++] = (setting_seen){spec, st};
    bool ok = true;
    if (spec->value == KD_SV_NONE && st->a) {
      kd_error(c->diag, st->a->loc, "'%s' takes no value; write '%s every N'", st->name, st->name);
      ok = false;
    } else if (spec->value != KD_SV_NONE && !st->a) {
      kd_error(c->diag, st->name_loc, "'%s' needs a value", st->name);
      ok = false;
    }
    if (spec->every == KD_EVERY_NO && st->b) {
      kd_error(c->diag, st->b->loc, "'%s' does not take 'every'", st->name);
      ok = false;
    } else if (spec->every == KD_EVERY_REQUIRED && !st->b && ok) {
      kd_error(c->diag, st->name_loc, "'%s' needs 'every N'", st->name);
      ok = false;
    }
    int64_t every;
    if (st->b && spec->every != KD_EVERY_NO && !const_int(c, st->b, "the interval after 'every'", 1, &every))
      ok = false;
    if (ok) apply(c, s, spec, st);
  }
  return n;
}

/* The value checks shared by both blocks; returns false after a report. */
static bool setting_value(checker *c, const kd_setting_spec *spec, const kd_ast *v, double *num,
                          int64_t *integer) {
  char what[64];
  snprintf(what, sizeof what, "'%s'", spec->key);
  switch (spec->value) {
  case KD_SV_PATH:
  case KD_SV_OUTPUT: return expect(c, v, check_expr(c, v), KD_KM(KD_KIND_STRING), what);
  case KD_SV_INT_POS: return const_int(c, v, what, 1, integer);
  case KD_SV_INT: return const_int(c, v, what, 0, integer);
  case KD_SV_FRACTION:
    if (!const_num(c, v, what, num)) return false;
    if (!(*num > 0 && *num < 1)) {
      kd_error(c->diag, v->loc, "'%s' must be between 0 and 1 (exclusive), got %g", spec->key, *num);
      return false;
    }
    return true;
  case KD_SV_NUM_POS:
    if (!const_num(c, v, what, num)) return false;
    if (!(*num > 0)) {
      kd_error(c->diag, v->loc, "'%s' must be positive, got %g", spec->key, *num);
      return false;
    }
    return true;
  default: return true; /* block-specific: handled by the caller */
  }
}

static void apply_data(checker *c, sym *s, const kd_setting_spec *spec, const kd_ast *st) {
  kd_data_info *d = &s->pub.data;
  double num = 0;
  int64_t integer = 0;
  if (!setting_value(c, spec, st->a, &num, &integer)) return;
  const char *key = spec->key;
  if (spec->value == KD_SV_PATH) {
    free(d->path);
    d->path = file_path(c, st->a, true);
    d->is_tokens = !strcmp(key, "tokens");
  } else if (!strcmp(key, "vocab")) d->vocab = integer;
  else if (!strcmp(key, "split")) d->split = num;
  else if (!strcmp(key, "seq")) d->seq = integer;
  else if (!strcmp(key, "batch")) d->batch = integer;
  else if (!strcmp(key, "seed")) d->seed = integer;
}

static void check_data(checker *c, sym *s) {
  kd_data_info *d = &s->pub.data;
  *d = (kd_data_info){NULL, false, 0, 0.9, 128, 16, 1};
  setting_seen seen[32];
  bool unknown;
  size_t n = check_settings(c, s, KD_BLOCK_DATA, seen, 32, apply_data, &unknown);
  const kd_ast *text = find_setting(seen, n, "text"), *tokens = find_setting(seen, n, "tokens");
  if (text && tokens) {
    const kd_ast *second = text->loc.first_line > tokens->loc.first_line ||
                                   (text->loc.first_line == tokens->loc.first_line &&
                                    text->loc.first_column > tokens->loc.first_column)
                               ? text
                               : tokens;
    kd_error(c->diag, second->name_loc, "data block '%s' has both 'text' and 'tokens'; keep one",
             s->pub.name);
    kd_note(c->diag, (second == text ? tokens : text)->name_loc, "the other one is here");
  } else if (!text && !tokens && !unknown) {
    kd_error(c->diag, s->pub.node->name_loc, "data block '%s' needs a 'text' or a 'tokens' file",
             s->pub.name);
  }
  if (!d->vocab) d->vocab = d->is_tokens ? 65536 : 256;
}

static void apply_train(checker *c, sym *s, const kd_setting_spec *spec, const kd_ast *st) {
  kd_train_info *t = &s->pub.train;
  double num = 0;
  int64_t integer = 0;
  const char *key = spec->key;
  if (spec->value == KD_SV_OPTIMIZER) {
    const kd_builtin *b = check_named_call(c, st->a, KD_BI_OPTIMIZER, t->optimizer_args);
    if (b) t->optimizer = b;
    return;
  }
  if (spec->value == KD_SV_SCHEDULE) {
    const kd_builtin *b = check_named_call(c, st->a, KD_BI_SCHEDULE, t->schedule_args);
    if (b) t->schedule = b;
    return;
  }
  if (spec->value == KD_SV_OBJECTIVE) {
    kd_kind k = check_expr(c, st->a);
    if (k == KD_KIND_ERROR) return;
    const kd_ref *r = kd_program_ref(c->p, st->a);
    if (k != KD_KIND_OBJECTIVE || !r || !r->sym) {
      kd_error(c->diag, st->a->loc, "'objective' must name an objective, got %s", kd_kind_phrase(k));
      return;
    }
    t->objective = r->sym;
    return;
  }
  if (spec->value == KD_SV_NONE) {
    /* eval every N: the interval was checked with the setting */
    double v = 0;
    if (eval_const(c, st->b, &v)) t->eval_every = (int64_t)v;
    return;
  }
  if (!setting_value(c, spec, st->a, &num, &integer)) return;
  if (!strcmp(key, "save")) {
    free(t->save_path);
    t->save_path = file_path(c, st->a, false);
    double v = 0;
    if (st->b && eval_const(c, st->b, &v)) t->save_every = (int64_t)v;
  } else if (!strcmp(key, "steps")) t->steps = integer;
  else if (!strcmp(key, "seed")) t->seed = integer;
  else if (!strcmp(key, "clip")) t->clip = num;
  else if (!strcmp(key, "accumulate")) t->accumulate = integer;
}

static void check_train(checker *c, sym *s) {
  kd_train_info *t = &s->pub.train;
  const kd_ast *node = s->pub.node;
  t->seed = 1;
  t->accumulate = 1;
  t->optimizer = &kd_builtins[KD_BUILTIN_ADAMW];
  for (int i = 0; i < kd_builtin_nnamed(t->optimizer); i++)
    t->optimizer_args[i] = t->optimizer->named[i].def;
  t->schedule = &kd_builtins[KD_BUILTIN_CONSTANT];
  t->schedule_args[0] = 0;

  /* The model trained: a top-level instance built from a model. */
  sym *inst = lookup_global(c->p, node->name, false);
  if (!inst) {
    suggest sg = suggest_start(node->name);
    for (size_t i = 0; i < c->p->nsyms; i++)
      if (c->p->syms[i]->pub.kind == KD_SYM_INSTANCE) suggest_add(&sg, c->p->syms[i]->pub.name);
    kd_error(c->diag, node->name_loc, "undefined name '%s'%s", node->name, suggest_text(&sg));
  } else if (inst->pub.kind != KD_SYM_INSTANCE) {
    kd_error(c->diag, node->name_loc, "'train' needs a model instance, but '%s' is %s%s",
             node->name, kd_kind_phrase(sym_kind(inst)),
             inst->pub.kind == KD_SYM_MODEL ? " (instantiate it first: student = model(...))" : "");
  } else if (!inst->pub.model && inst->state == 2) {
    kd_error(c->diag, node->name_loc, "cannot train '%s': it is given as precomputed logits",
             node->name);
  } else {
    t->instance = &inst->pub;
  }

  setting_seen seen[32];
  bool unknown; /* a misspelt key already explains a missing one */
  size_t n = check_settings(c, s, KD_BLOCK_TRAIN, seen, 32, apply_train, &unknown);
  if (!find_setting(seen, n, "steps") && !unknown)
    kd_error(c->diag, node->name_loc, "train block for '%s' has no 'steps' setting", node->name);

  /* The data and the objective: the program's own, or the named one. */
  t->data = c->p->data;
  if (!t->data)
    kd_error(c->diag, head_loc(node->loc, 5), "nothing to train on: the program has no data block");
  if (find_setting(seen, n, "objective")) return;
  if (c->nobjectives == 0)
    kd_error(c->diag, head_loc(node->loc, 5), "nothing to minimise: the program has no objective");
  else if (c->nobjectives > 1)
    kd_error(c->diag, head_loc(node->loc, 5),
             "the program has %zu objectives; name the one to minimise with 'objective NAME'",
             c->nobjectives);
  else
    t->objective = &c->last_objective->pub;
}

/* ---- definitions ------------------------------------------------------------ */

/* The first NAME in an expression, or NULL. */
static const kd_ast *first_name(const kd_ast *e) {
  if (!e) return NULL;
  if (e->kind == KD_AST_NAME) return e;
  const kd_ast *n = first_name(e->a);
  if (!n) n = first_name(e->b);
  for (size_t i = 0; !n && i < e->items.n; i++) n = first_name(e->items.v[i]);
  return n;
}

/* Parameters: unique names, constant defaults. Distribution parameters (the
 * divergence's p, q) take no default. */
static void declare_params(checker *c, const kd_ast_list *list, kd_kind kind, bool defaults_ok,
                           const char *what) {
  for (size_t i = 0; i < list->n; i++) {
    const kd_ast *prm = list->v[i];
    local *dup = lookup_local(c, prm->name);
    if (dup) {
      kd_error(c->diag, prm->name_loc, "duplicate parameter '%s'", prm->name);
      kd_note(c->diag, dup->decl->name_loc, "first declared here");
      continue;
    }
    local *l = add_local(c, prm->name, prm, kind);
    if (!l || !prm->a) continue;
    if (!defaults_ok) {
      kd_error(c->diag, prm->a->loc, "%s parameter '%s' cannot have a default", what, prm->name);
      continue;
    }
    char desc[160];
    snprintf(desc, sizeof desc, "the default of '%s'", prm->name);
    double v;
    /* A default is a number written out: were it to name another parameter,
     * it would mean that parameter's value at each call, not its default. */
    const kd_ast *name = first_name(prm->a);
    if (name) {
      kd_error(c->diag, name->loc, "the default of '%s' must be a constant number, not a name",
               prm->name);
    } else if (const_num(c, prm->a, desc, &v)) {
      l = lookup_local(c, prm->name); /* add_local may have moved the array */
      l->has_value = true;
      l->value = v;
    }
  }
}

static void check_statements(checker *c, const kd_ast_list *items) {
  for (size_t i = 0; i < items->n; i++) {
    const kd_ast *st = items->v[i];
    if (st->kind == KD_AST_REPEAT) {
      kd_kind k = check_expr(c, st->a);
      expect(c, st->a, k, KD_KM_NUM, "the count of 'repeat'");
      check_statements(c, &st->items);
      continue;
    }
    kd_kind k = check_expr(c, st->a);
    char what[160];
    snprintf(what, sizeof what, "the value of '%s'", st->name);
    if (!expect(c, st->a, k, KD_KM_NUM | KD_KM(KD_KIND_HIDDEN), what)) k = KD_KIND_ERROR;
    local *l = lookup_local(c, st->name);
    if (l && l->decl->kind == KD_AST_PARAM) {
      kd_error(c->diag, st->name_loc, "cannot assign to the parameter '%s'", st->name);
    } else if (l) {
      l->kind = k; /* x = x + attention(...): a new value for the same name */
      l->decl = st;
    } else {
      add_local(c, st->name, st, k);
    }
  }
}

/* Calls match at most MAX_PARAMS parameters (match_args). */
static void check_param_count(checker *c, const sym *s, size_t n) {
  if (n > MAX_PARAMS)
    kd_error(c->diag, s->pub.node->name_loc, "'%s' has %zu parameters; at most %d are allowed",
             s->pub.name, n, MAX_PARAMS);
}

static void check_model(checker *c, sym *s) {
  const kd_ast *node = s->pub.node;
  int errors_before = kd_diag_error_count(c->diag);
  check_param_count(c, s, node->params.n);
  declare_params(c, &node->params, KD_KIND_NUMBER, true, "model");
  check_statements(c, &node->items);
  if (!assigns(&node->items, "logits"))
    kd_error(c->diag, node->name_loc, "model '%s' never assigns 'logits', its output",
             s->pub.name);
  warn_unused(c, "model", errors_before);
}

static void check_divergence_body(checker *c, sym *s) {
  const kd_ast *node = s->pub.node;
  int errors_before = kd_diag_error_count(c->diag);
  check_param_count(c, s, node->params.n + node->items.n);
  declare_params(c, &node->params, KD_KIND_DIST, false, "distribution");
  declare_params(c, &node->items, KD_KIND_NUMBER, true, "hyperparameter");
  if (!node->params.n)
    kd_error(c->diag, node->name_loc, "divergence '%s' needs at least one distribution parameter",
             s->pub.name);
  kd_kind k = check_expr(c, node->a);
  if (k == KD_KIND_TENSOR || k == KD_KIND_DIST)
    kd_error(c->diag, node->a->loc,
             "divergence '%s' must be a per-token scalar, but its body is %s; "
             "did you forget sum(...)?",
             s->pub.name, kd_kind_phrase(k));
  else if (k != KD_KIND_SCALAR && k != KD_KIND_ERROR)
    kd_error(c->diag, node->a->loc, "divergence '%s' must be a per-token scalar, but its body is %s",
             s->pub.name, kd_kind_phrase(k));
  warn_unused(c, "divergence", errors_before);
}

/* Checks a divergence once, in its own context; reports recursion. Called
 * from a call in another divergence, it saves and restores that one's state. */
static void check_divergence(checker *c, sym *s) {
  if (s->state == 2) return;
  if (s->state == 1) {
    /* The cycle is the tail of the stack from s. */
    char chain[512] = "";
    size_t from = 0;
    while (from < c->ndiv && c->divstack[from] != s) from++;
    for (size_t i = from; i < c->ndiv; i++) {
      size_t n = strlen(chain);
      snprintf(chain + n, sizeof chain - n, "%s -> ", c->divstack[i]->pub.name);
    }
    size_t n = strlen(chain);
    snprintf(chain + n, sizeof chain - n, "%s", s->pub.name);
    const sym *caller = c->divstack[c->ndiv - 1];
    kd_error(c->diag, caller->pub.node->name_loc, "divergence '%s' is recursive (%s)",
             caller->pub.name, chain);
    return;
  }
  if (!grow((void **)&c->divstack, &c->capdiv, c->ndiv + 1, sizeof(sym *))) {
    c->nomem = true;
    return;
  }
  checker saved = *c;
  scope sc = {0};
  s->state = 1;
  c->divstack[c->ndiv++] = s;
  c->block = s;
  c->sc = &sc;
  c->ctx = KD_CTX_DIVERGENCE;
  check_divergence_body(c, s);
  c->ndiv--;
  s->state = 2;
  free_scope(&sc);
  c->block = saved.block;
  c->sc = saved.sc;
  c->ctx = saved.ctx;
}

/* `student = gpt(...) [load "f"]`, `teacher = logits("f")` or `T = 2.0`. */
static void check_binding(checker *c, sym *s) {
  const kd_ast *node = s->pub.node, *rhs = node->a;
  kd_symbol *pub = &s->pub;
  pub->kind = KD_SYM_CONST;
  pub->value_kind = KD_KIND_ERROR;
  sym *callee = NULL;
  if (rhs->kind == KD_AST_CALL && rhs->a->kind == KD_AST_NAME)
    callee = lookup_global(c->p, rhs->a->name, s->u->prelude);
  if (callee && callee->pub.kind == KD_SYM_MODEL) {
    pub->kind = KD_SYM_INSTANCE;
    pub->model = &callee->pub;
    kd_kind k = check_model_call(c, rhs, callee, &pub->args);
    record(c, rhs->a, (kd_ref){k, KD_REF_SYMBOL, &callee->pub, NULL, NULL});
    record(c, rhs, (kd_ref){k, KD_REF_SYMBOL, &callee->pub, NULL, NULL});
    if (node->b && expect(c, node->b, check_expr(c, node->b), KD_KM(KD_KIND_STRING),
                          "the file after 'load'"))
      pub->file = file_path(c, node->b, false);
    if (pub->file && !c->no_file_check) {
      if (grow((void **)&c->loads, &c->caploads, c->nloads + 1, sizeof *c->loads))
        c->loads[c->nloads++] = (struct pending_load){node->b, pub};
      else
        c->nomem = true;
    }
    return;
  }
  kd_kind k = check_expr(c, rhs);
  const kd_ref *r = kd_program_ref(c->p, rhs);
  if (k == KD_KIND_INSTANCE && r && r->builtin && r->builtin->id == KD_BUILTIN_LOGITS) {
    pub->kind = KD_SYM_INSTANCE;
    pub->file = file_path(c, rhs->items.v[0]->a, true);
    if (node->b)
      kd_error(c->diag, node->b->loc, "'load' needs a model instance; logits(...) reads its own file");
    return;
  }
  if (node->b) {
    kd_error(c->diag, node->b->loc, "'load' needs a model instance such as %s = model(...)",
             pub->name);
    check_expr(c, node->b);
  }
  if (k == KD_KIND_ERROR) return;
  if (k == KD_KIND_STRING) {
    const kd_ast *lit = string_literal(c, rhs);
    pub->value_kind = k;
    pub->str = lit ? lit->str : NULL;
  } else if (k == KD_KIND_INSTANCE) {
    kd_error(c->diag, rhs->loc, "an instance cannot be bound to another name; instantiate the "
                                "model again: %s = model(...)", pub->name);
  } else if (KD_KM(k) & KD_KM_NUM) {
    if (eval_const(c, rhs, &pub->value)) pub->value_kind = k;
    else kd_error(c->diag, rhs->loc, "a top-level binding must be a constant or a model instance");
  } else {
    kd_error(c->diag, rhs->loc,
             "a top-level binding must be a model instance (%s = model(...)) or a constant, got %s",
             pub->name, kd_kind_phrase(k));
  }
}

static void check_objective(checker *c, sym *s) {
  const kd_ast *node = s->pub.node;
  int errors_before = kd_diag_error_count(c->diag);
  kd_objective_info *o = &s->pub.objective;
  o->ignore_index = -100;
  for (size_t i = 0; i < node->items.n; i++) {
    const kd_ast *st = node->items.v[i];
    local *dup = lookup_local(c, st->name);
    if (dup) {
      kd_error(c->diag, st->name_loc, "'%s' is bound twice in this objective", st->name);
      kd_note(c->diag, dup->decl->name_loc, "first bound here");
      check_expr(c, st->a);
      continue;
    }
    kd_kind k = check_expr(c, st->a);
    if (!strcmp(st->name, "reduction")) {
      if (expect(c, st->a, k, KD_KM(KD_KIND_STRING), "'reduction'") && st->a->kind == KD_AST_STRING) {
        if (!strcmp(st->a->str, "sum")) o->reduce_sum = true;
        else if (strcmp(st->a->str, "mean"))
          kd_error(c->diag, st->a->loc, "'reduction' must be \"mean\" or \"sum\", got \"%s\"",
                   st->a->str);
      }
    } else if (!strcmp(st->name, "ignore_index")) {
      double v;
      if (expect(c, st->a, k, KD_KM_INT, "'ignore_index'") && eval_const(c, st->a, &v))
        o->ignore_index = (int64_t)v;
    } else if (!strcmp(st->name, "vocab_align")) {
      /* Read by the lowering (passes/lower.h): how eval-loss aligns a teacher
       * and a student whose vocabularies differ. */
      if (expect(c, st->a, k, KD_KM(KD_KIND_STRING), "'vocab_align'") &&
          st->a->kind == KD_AST_STRING && strcmp(st->a->str, "error") &&
          strcmp(st->a->str, "pad") && strcmp(st->a->str, "truncate"))
        kd_error(c->diag, st->a->loc,
                 "'vocab_align' must be \"error\", \"pad\" or \"truncate\", got \"%s\"",
                 st->a->str);
    } else if (!strcmp(st->name, "loss")) {
      o->loss = st->a;
      if (k == KD_KIND_TENSOR || k == KD_KIND_DIST)
        kd_error(c->diag, st->a->loc,
                 "'loss' must be a per-token scalar, got %s; reduce it with sum(...)",
                 kd_kind_phrase(k));
      else
        expect(c, st->a, k, KD_KM(KD_KIND_SCALAR), "'loss'");
    } else {
      char what[160];
      snprintf(what, sizeof what, "the value of '%s'", st->name);
      if (!expect(c, st->a, k, KD_KM_VALUE, what)) k = KD_KIND_ERROR;
    }
    local *l = add_local(c, st->name, st, k);
    double v;
    if (l && (KD_KM(k) & KD_KM_NUM) && eval_const(c, st->a, &v)) {
      l = lookup_local(c, st->name);
      l->has_value = true;
      l->value = v;
    }
  }
  if (!o->loss)
    kd_error(c->diag, s->pub.name ? node->name_loc : head_loc(node->loc, 9),
             "objective%s%s%s has no 'loss' binding", s->pub.name ? " '" : "",
             s->pub.name ? s->pub.name : "", s->pub.name ? "'" : "");
  warn_unused(c, "objective", errors_before);
}

static void check_symbol(checker *c, sym *s) {
  scope sc = {0};
  c->block = s;
  c->sc = &sc;
  switch (s->pub.kind) {
  case KD_SYM_DATA: c->ctx = KD_CTX_TOP; check_data(c, s); break;
  case KD_SYM_MODEL: c->ctx = KD_CTX_MODEL; check_model(c, s); break;
  case KD_SYM_DIVERGENCE: c->sc = NULL; check_divergence(c, s); break;
  case KD_SYM_INSTANCE:
  case KD_SYM_CONST: c->ctx = KD_CTX_TOP; check_binding(c, s); break;
  case KD_SYM_OBJECTIVE: c->ctx = KD_CTX_OBJECTIVE; check_objective(c, s); break;
  case KD_SYM_TRAIN: c->ctx = KD_CTX_TOP; check_train(c, s); break;
  }
  s->state = 2;
  free_scope(&sc);
  c->sc = NULL;
  c->block = NULL;
}

/* ---- declarations ----------------------------------------------------------- */

static const char *builtin_class_phrase(kd_builtin_class cls) {
  switch (cls) {
  case KD_BI_FUNCTION: return "a builtin function";
  case KD_BI_LAYER: return "a builtin layer";
  case KD_BI_NAME: return "a builtin name";
  default: return "a builtin";
  }
}

static sym *declare(checker *c, unit *u, const kd_ast *item) {
  kd_sym_kind kind;
  switch (item->kind) {
  case KD_AST_DATA: kind = KD_SYM_DATA; break;
  case KD_AST_MODEL: kind = KD_SYM_MODEL; break;
  case KD_AST_DIVERGENCE: kind = KD_SYM_DIVERGENCE; break;
  case KD_AST_BIND: kind = KD_SYM_CONST; break; /* or INSTANCE, once checked */
  case KD_AST_OBJECTIVE: kind = KD_SYM_OBJECTIVE; break;
  case KD_AST_TRAIN: kind = KD_SYM_TRAIN; break;
  default: return NULL;
  }
  const char *name = item->name;
  if (name && kind != KD_SYM_TRAIN) {
    const kd_builtin *b = lookup_builtin(name);
    if (b) {
      kd_error(c->diag, item->name_loc, "'%s' is %s; choose another name", name,
               builtin_class_phrase(b->cls));
      return NULL;
    }
    size_t prev_i = name_get(&c->p->names[u->prelude], name);
    sym *prev = prev_i == KD_NO_NAME ? NULL : c->p->syms[prev_i];
    if (prev) {
      kd_error(c->diag, item->name_loc, "redefinition of '%s'", name);
      kd_note(c->diag, prev->pub.node->name_loc, "'%s' was first defined here", name);
      return NULL;
    }
  }
  if (kind == KD_SYM_DATA && c->p->data) {
    kd_error(c->diag, item->name_loc, "a program has one data block; '%s' is a second one", name);
    kd_note(c->diag, c->p->data->node->name_loc, "the first one is here");
    return NULL;
  }
  const sym *first = kind == KD_SYM_OBJECTIVE && !name ? c->unnamed_objective[u->prelude] : NULL;
  if (first) {
    kd_error(c->diag, head_loc(item->loc, 9),
             "a second unnamed objective; name them (objective NAME { ... })");
    kd_note(c->diag, head_loc(first->pub.node->loc, 9), "the first one is here");
    return NULL;
  }
  size_t trained = kind == KD_SYM_TRAIN ? name_get(&c->trained, name) : KD_NO_NAME;
  if (trained != KD_NO_NAME) {
    kd_error(c->diag, item->name_loc, "'%s' is trained twice", name);
    kd_note(c->diag, c->p->syms[trained]->pub.node->name_loc, "the first train block is here");
    return NULL;
  }
  sym *s = calloc(1, sizeof *s);
  if (!s || !grow((void **)&c->p->syms, &c->p->capsyms, c->p->nsyms + 1, sizeof(sym *))) {
    free(s);
    c->nomem = true;
    return NULL;
  }
  s->pub.kind = kind;
  s->pub.name = name;
  s->pub.node = item;
  s->pub.in_prelude = u->prelude;
  s->u = u;
  size_t index = c->p->nsyms++;
  c->p->syms[index] = s;
  bool ok = true;
  if (kind == KD_SYM_TRAIN) ok = name_put(&c->trained, name, index);
  else if (name) ok = name_put(&c->p->names[u->prelude], name, index);
  if (!ok) c->nomem = true;
  if (kind == KD_SYM_DATA) c->p->data = &s->pub;
  if (kind == KD_SYM_OBJECTIVE && !name) c->unnamed_objective[u->prelude] = s;
  if (kind == KD_SYM_OBJECTIVE && !u->prelude) {
    c->nobjectives++;
    c->last_objective = s;
  }
  return s;
}

/* ---- loading ---------------------------------------------------------------- */

static void load_imports(checker *c, unit *u);

/* Takes ownership of src, path and real (NULL only for the prelude). */
static unit *add_unit(checker *c, kd_source *src, char *path, char *real, bool prelude) {
  unit *u = path && (real || prelude) ? calloc(1, sizeof *u) : NULL;
  if (!u) {
    kd_source_free(src);
    free(path);
    free(real);
    c->nomem = true;
    return NULL;
  }
  *u = (unit){src, NULL, path, real, prelude, false};
  return u;
}

/* Keeps u in the program (post-order: after its imports). */
static void keep_unit(checker *c, unit *u) {
  if (!grow((void **)&c->p->units, &c->p->capunits, c->p->nunits + 1, sizeof(unit *))) {
    kd_ast_free(u->ast);
    kd_source_free(u->src);
    free(u->path);
    free(u->real);
    free(u);
    c->nomem = true;
    return;
  }
  c->p->units[c->p->nunits++] = u;
}

/* Parses u and, depth first, what it imports; then keeps it. */
static void parse_unit(checker *c, unit *u) {
  kd_status st = kd_parse(u->src, c->diag, &u->ast);
  if (st == KD_ERR_NOMEM) c->nomem = true;
  if (st != KD_OK) u->ast = NULL;
  if (u->ast && !u->prelude) {
    u->loading = true;
    if (grow((void **)&c->stack, &c->capstack, c->nstack + 1, sizeof(unit *))) {
      c->stack[c->nstack++] = u;
      load_imports(c, u);
      c->nstack--;
    } else {
      c->nomem = true;
    }
    u->loading = false;
  }
  keep_unit(c, u);
}

static unit *find_unit(checker *c, const char *real) {
  for (size_t i = 0; i < c->p->nunits; i++)
    if (c->p->units[i]->real && !strcmp(c->p->units[i]->real, real)) return c->p->units[i];
  for (size_t i = 0; i < c->nstack; i++)
    if (!strcmp(c->stack[i]->real, real)) return c->stack[i];
  return NULL;
}

static void import_cycle(checker *c, const kd_ast *imp, const unit *target) {
  char chain[1024] = "";
  size_t from = 0;
  while (from < c->nstack && c->stack[from] != target) from++;
  for (size_t i = from; i < c->nstack; i++) {
    size_t n = strlen(chain);
    snprintf(chain + n, sizeof chain - n, "%s -> ", c->stack[i]->path);
  }
  size_t n = strlen(chain);
  snprintf(chain + n, sizeof chain - n, "%s", target->path);
  kd_error(c->diag, imp->loc, "import cycle: %s", chain);
}

static void load_imports(checker *c, unit *u) {
  for (size_t i = 0; i < u->ast->items.n; i++) {
    const kd_ast *imp = u->ast->items.v[i];
    if (imp->kind != KD_AST_IMPORT) continue;
    if (!imp->str || memchr(imp->str, 0, imp->str_len)) {
      kd_error(c->diag, imp->loc, "an import path cannot contain a NUL byte");
      continue;
    }
    char *path = join_path(c, u->path, imp->str);
    if (!path) return;
    char *real = realpath(path, NULL);
    if (!real) {
      if (strcmp(path, imp->str))
        kd_error(c->diag, imp->loc, "cannot import '%s': no such file (looked for '%s')",
                 imp->str, path);
      else
        kd_error(c->diag, imp->loc, "cannot import '%s': no such file", imp->str);
      free(path);
      continue;
    }
    unit *seen = find_unit(c, real);
    if (seen) {
      if (seen->loading) import_cycle(c, imp, seen);
      free(path);
      free(real);
      continue;
    }
    char errbuf[256];
    kd_source *src = NULL;
    if (kd_source_load(path, &src, errbuf, sizeof errbuf) != KD_OK) {
      kd_error(c->diag, imp->loc, "%s", errbuf);
      free(path);
      free(real);
      continue;
    }
    unit *nu = add_unit(c, src, path, real, false);
    if (nu) parse_unit(c, nu);
  }
}

static void load_prelude(checker *c) {
  for (size_t i = 0; i < kd_prelude_nfiles; i++) {
    const kd_prelude_file *f = &kd_prelude_files[i];
    kd_source *src = NULL;
    if (kd_source_from_memory(f->name, f->data, f->len, &src) != KD_OK) {
      c->nomem = true;
      return;
    }
    char *path = dupstr(c, f->name);
    unit *u = add_unit(c, src, path, NULL, true);
    if (u) parse_unit(c, u);
  }
}

/* ---- the driver ------------------------------------------------------------- */

static void check_all(checker *c) {
  for (size_t i = 0; i < c->p->nunits; i++) {
    unit *u = c->p->units[i];
    for (size_t j = 0; j < u->ast->items.n; j++) declare(c, u, u->ast->items.v[j]);
  }
  /* Definitions first, then bindings in order (each sees the ones above it),
   * then the blocks that use them (settings may name constants). */
  static const kd_sym_kind order[] = {KD_SYM_MODEL, KD_SYM_DIVERGENCE, KD_SYM_CONST, KD_SYM_DATA,
                                      KD_SYM_OBJECTIVE, KD_SYM_TRAIN};
  for (size_t k = 0; k < sizeof order / sizeof order[0]; k++)
    for (size_t i = 0; i < c->p->nsyms; i++) {
      sym *s = c->p->syms[i];
      if (s->pub.kind == order[k] && s->state != 2) check_symbol(c, s);
    }
  for (size_t i = 0; i < c->p->nsyms; i++) {
    sym *s = c->p->syms[i];
    if (s->pub.kind != KD_SYM_TRAIN) continue;
    if (!grow((void **)&c->p->trains, &c->p->captrains, c->p->ntrains + 1, sizeof(kd_symbol *))) {
      c->nomem = true;
      return;
    }
    c->p->trains[c->p->ntrains++] = &s->pub;
  }
  for (size_t i = 0; i < c->nloads; i++) {
    const kd_symbol *inst = c->loads[i].inst;
    bool saved = false;
    for (size_t t = 0; t < c->p->ntrains && !saved; t++) {
      const char *save = c->p->trains[t]->train.save_path;
      saved = save && !strcmp(save, inst->file);
    }
    if (!saved) warn_missing(c, c->loads[i].e, string_literal(c, c->loads[i].e)->str, inst->file);
  }
}

kd_status kd_check_file(const char *path, const kd_check_options *opts, kd_diag *diag,
                        kd_program **out) {
  *out = NULL;
  kd_program *p = calloc(1, sizeof *p);
  if (!p) return KD_ERR_NOMEM;
  checker c = {.p = p, .diag = diag, .no_file_check = opts && opts->no_file_check};
  int errors_before = kd_diag_error_count(diag);

  if (!opts || !opts->no_prelude) load_prelude(&c);
  char errbuf[256];
  kd_source *src = NULL;
  if (kd_source_load(path, &src, errbuf, sizeof errbuf) != KD_OK) {
    kd_error(diag, (kd_loc){0}, "%s", errbuf);
    kd_program_free(p);
    return KD_ERR_IO;
  }
  char *display = dupstr(&c, path), *real = realpath(path, NULL);
  if (!real) real = dupstr(&c, path);
  unit *root = add_unit(&c, src, display, real, false);
  if (root) parse_unit(&c, root);

  kd_status st = KD_OK;
  bool parsed = !c.nomem;
  for (size_t i = 0; i < p->nunits; i++)
    if (!p->units[i]->ast) parsed = false;
  if (parsed) check_all(&c);
  else st = KD_ERR_SYNTAX;
  free(c.stack);
  free(c.divstack);
  free(c.loads);
  free(c.trained.v);
  if (c.nomem) st = KD_ERR_NOMEM;
  else if (st == KD_OK && kd_diag_error_count(diag) > errors_before) st = KD_ERR_SEMANTIC;
  if (st != KD_OK) {
    kd_diag_flush(diag); /* it may still point into p's sources */
    kd_program_free(p);
    return st;
  }
  *out = p;
  return KD_OK;
}
