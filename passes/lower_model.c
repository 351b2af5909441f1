/* Lowering of model instances to graphs (see lower_model.h): an evaluator
 * over the model's statements whose values are numbers or graph nodes. */
#include "lower_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A value: a number (a model parameter, arithmetic on them) or a node. */
typedef struct kd_mval {
  bool is_num;
  double num;
  kd_node_id id;
} kd_mval;

typedef struct kd_mbinding {
  const char *name; /* the AST's string */
  kd_mval v;
} kd_mbinding;

/* The short names of the layers with parameters, and of repeats. */
enum { KD_MN_EMBED, KD_MN_LINEAR, KD_MN_LN, KD_MN_NORM, KD_MN_ATTN, KD_MN_MLP, KD_MN_BLOCKS,
       KD_MN_COUNT };
static const char *const kd_mn_names[KD_MN_COUNT] = {"embed", "linear", "ln", "norm",
                                                     "attn", "mlp", "blocks"};

/* A naming scope: the model's body or one iteration of a repeat. */
typedef struct kd_mscope {
  char prefix[160]; /* "" or "blocks.0." */
  int total[KD_MN_COUNT], used[KD_MN_COUNT];
} kd_mscope;

typedef struct kd_mlower {
  const kd_program *prog;
  kd_diag *diag;
  kd_model *m;
  kd_node_id tokens, positions;
  /* for unembed: the embeddings so far of tokens [0] and positions [1], how
   * many and the first one's table */
  int nembeds[2];
  kd_node_id table[2];
  kd_mbinding *env;
  size_t nenv, cap;
  bool failed;
} kd_mlower;

static void kd_ml_error(kd_mlower *c, kd_loc loc, const char *fmt, const char *a) {
  kd_error(c->diag, loc, fmt, a);
  c->failed = true;
}

/* ---- environment -------------------------------------------------------- */

static kd_mbinding *kd_ml_lookup(kd_mlower *c, const char *name) {
  for (size_t i = c->nenv; i-- > 0;)
    if (!strcmp(c->env[i].name, name)) return &c->env[i];
  return NULL;
}

static void kd_ml_bind(kd_mlower *c, const char *name, kd_mval v) {
  kd_mbinding *b = kd_ml_lookup(c, name);
  if (b) {
    b->v = v; /* x = x + attention(...): a new value for the same name */
    return;
  }
  if (c->nenv == c->cap) {
    size_t cap = c->cap ? 2 * c->cap : 16;
    kd_mbinding *e = realloc(c->env, cap * sizeof *e);
    if (!e) {
      c->failed = true;
      return;
    }
    c->env = e;
    c->cap = cap;
  }
  c->env[c->nenv++] = (kd_mbinding){name, v};
}

/* ---- names -------------------------------------------------------------- */

/* The short-name index of a layer builtin with parameters, or -1. */
static int kd_ml_short(const kd_builtin *b) {
  if (!b || b->cls != KD_BI_LAYER) return -1;
  switch (b->id) {
  case KD_BUILTIN_EMBED: return KD_MN_EMBED;
  case KD_BUILTIN_LINEAR: return KD_MN_LINEAR;
  case KD_BUILTIN_LAYERNORM: return KD_MN_LN;
  case KD_BUILTIN_RMSNORM: return KD_MN_NORM;
  case KD_BUILTIN_ATTENTION: return KD_MN_ATTN;
  case KD_BUILTIN_MLP: case KD_BUILTIN_SWIGLU: return KD_MN_MLP;
  default: return -1; /* gelu, silu: no parameters */
  }
}

static const kd_builtin *kd_ml_builtin(const kd_mlower *c, const kd_ast *e) {
  const kd_ref *r = kd_program_ref(c->prog, e);
  return r && r->ref == KD_REF_BUILTIN ? r->builtin : NULL;
}

/* Counts the layer calls of an expression into s->total. */
static void kd_ml_count_expr(const kd_mlower *c, const kd_ast *e, kd_mscope *s) {
  if (!e) return;
  if (e->kind == KD_AST_CALL) {
    int k = kd_ml_short(kd_ml_builtin(c, e));
    if (k >= 0) s->total[k]++;
    for (size_t i = 0; i < e->items.n; i++) kd_ml_count_expr(c, e->items.v[i]->a, s);
    return;
  }
  kd_ml_count_expr(c, e->a, s);
  kd_ml_count_expr(c, e->b, s);
}

/* A scope for `items` under prefix (its repeats count as blocks); false
 * when the prefix does not fit (repeats nested too deeply). */
static bool kd_ml_scope(const kd_mlower *c, const kd_ast_list *items, const char *prefix,
                        kd_mscope *s) {
  memset(s, 0, sizeof *s);
  int w = snprintf(s->prefix, sizeof s->prefix, "%s", prefix);
  for (size_t i = 0; i < items->n; i++) {
    if (items->v[i]->kind == KD_AST_REPEAT) s->total[KD_MN_BLOCKS]++;
    kd_ml_count_expr(c, items->v[i]->a, s);
  }
  return w >= 0 && (size_t)w < sizeof s->prefix;
}

/* The next name of kind k in s: "prefix" + "attn" or "ln_2"; false when it
 * does not fit in len (a truncated name could repeat another). */
static bool kd_ml_name(kd_mscope *s, int k, char *buf, size_t len) {
  int n = ++s->used[k], w;
  if (s->total[k] > 1) w = snprintf(buf, len, "%s%s_%d", s->prefix, kd_mn_names[k], n);
  else w = snprintf(buf, len, "%s%s", s->prefix, kd_mn_names[k]);
  return w >= 0 && (size_t)w < len;
}

#define KD_ML_TOO_DEEP "'repeat' blocks are nested too deeply (their parameter names exceed %s bytes)"

/* ---- expressions -------------------------------------------------------- */

static kd_mval kd_ml_num(double v) { return (kd_mval){true, v, KD_NONE}; }
static kd_mval kd_ml_node(kd_node_id id) { return (kd_mval){false, 0, id}; }
static const kd_mval kd_ml_bad = {false, 0, KD_NONE};

static kd_mval kd_ml_expr(kd_mlower *c, const kd_ast *e, kd_mscope *s);

/* A value as a node (numbers become f32 constants). */
static kd_node_id kd_ml_as_node(kd_mlower *c, kd_mval v) {
  return v.is_num ? kd_const(c->m->g, v.num, KD_F32) : v.id;
}

/* A positive integer argument (a width, a count of heads). */
static int64_t kd_ml_dim(kd_mlower *c, const kd_ast *e, kd_mval v, const char *what) {
  if (!v.is_num || v.num != floor(v.num) || v.num < 1 || v.num > 1e9) {
    if (v.is_num || v.id != KD_NONE) kd_ml_error(c, e->loc, "%s must be a positive integer", what);
    return -1;
  }
  return (int64_t)v.num;
}

static kd_mval kd_ml_binary(kd_mlower *c, const kd_ast *e, kd_mval a, kd_mval b) {
  static const kd_opcode ops[KD_OP_COUNT] = {
      [KD_OP_ADD] = KD_IR_ADD, [KD_OP_SUB] = KD_IR_SUB, [KD_OP_MUL] = KD_IR_MUL,
      [KD_OP_DIV] = KD_IR_DIV, [KD_OP_POW] = KD_IR_POW};
  if (e->op > KD_OP_POW) {
    kd_ml_error(c, e->loc, "'%s' is not supported in a model", kd_ast_op_spelling(e->op));
    return kd_ml_bad;
  }
  if (a.is_num && b.is_num) {
    switch (e->op) {
    case KD_OP_ADD: return kd_ml_num(a.num + b.num);
    case KD_OP_SUB: return kd_ml_num(a.num - b.num);
    case KD_OP_MUL: return kd_ml_num(a.num * b.num);
    case KD_OP_DIV: return kd_ml_num(a.num / b.num);
    default: return kd_ml_num(pow(a.num, b.num));
    }
  }
  if ((!a.is_num && a.id == KD_NONE) || (!b.is_num && b.id == KD_NONE)) return kd_ml_bad;
  return kd_ml_node(kd_binary(c->m->g, ops[e->op], kd_ml_as_node(c, a), kd_ml_as_node(c, b)));
}

/* A layer call: the arguments evaluated, then the builder. */
static kd_mval kd_ml_layer(kd_mlower *c, const kd_ast *e, const kd_builtin *b, kd_mscope *s) {
  kd_layers *L = &c->m->layers;
  kd_mval arg[3] = {kd_ml_bad, kd_ml_bad, kd_ml_bad};
  const kd_ast *at[3] = {e, e, e};
  const kd_ast *bias_at = NULL; /* linear's only named argument */
  size_t n = 0;
  for (size_t i = 0; i < e->items.n; i++) {
    const kd_ast *it = e->items.v[i];
    if (it->name) {
      if (!strcmp(it->name, "bias")) bias_at = it->a;
      continue;
    }
    if (n == 3) continue;
    at[n] = it->a;
    arg[n] = kd_ml_expr(c, at[n], s);
    n++;
  }
  if (c->failed) return kd_ml_bad;
  char name[256] = "";
  int k = kd_ml_short(b);
  if (k >= 0 && !kd_ml_name(s, k, name, sizeof name)) {
    kd_ml_error(c, e->loc, KD_ML_TOO_DEEP, "255");
    return kd_ml_bad;
  }
  kd_node_id x = kd_ml_as_node(c, arg[0]), y = KD_NONE;
  switch (b->id) {
  case KD_BUILTIN_EMBED: {
    int64_t rows = kd_ml_dim(c, at[1], arg[1], "the number of rows of embed()");
    int64_t dim = kd_ml_dim(c, at[2], arg[2], "the width of embed()");
    if (rows > 0 && dim > 0) y = kd_layer_embedding(L, name, x, rows, dim);
    if (y != KD_NONE) {
      int w = x == c->tokens ? 0 : 1; /* ids are tokens or positions (the checker's IDS) */
      if (c->nembeds[w]++ == 0) c->table[w] = kd_graph_node(c->m->g, y)->src[0];
    }
    break;
  }
  case KD_BUILTIN_UNEMBED: {
    int w = arg[1].id == c->tokens ? 0 : 1;
    if (c->nembeds[w] != 1) {
      kd_ml_error(c, e->loc,
                  c->nembeds[w] ? "unembed(x, %s): the model embeds them more than once, so "
                                  "the table to share is ambiguous"
                                : "unembed(x, %s) shares the table of an earlier embed of the "
                                  "same ids, and the model has none",
                  w ? "positions" : "tokens");
      return kd_ml_bad;
    }
    y = kd_layer_unembed(L, x, c->table[w]);
    break;
  }
  case KD_BUILTIN_LINEAR: {
    int64_t out = kd_ml_dim(c, at[1], arg[1], "the width of linear()");
    kd_mval bias = bias_at ? kd_ml_expr(c, bias_at, s) : kd_ml_num(1);
    if (!bias.is_num || (bias.num != 0 && bias.num != 1)) {
      if (bias.is_num || bias.id != KD_NONE)
        kd_ml_error(c, bias_at->loc, "%s(): bias must be 1 (with) or 0 (without)", b->name);
      return kd_ml_bad;
    }
    if (out > 0) y = kd_layer_linear(L, name, x, out, bias.num != 0);
    break;
  }
  case KD_BUILTIN_LAYERNORM: y = kd_layer_layernorm(L, name, x); break;
  case KD_BUILTIN_RMSNORM: y = kd_layer_rmsnorm(L, name, x); break;
  case KD_BUILTIN_GELU: y = kd_layer_gelu(L, x); break;
  case KD_BUILTIN_SILU: y = kd_layer_silu(L, x); break;
  case KD_BUILTIN_ATTENTION: {
    int64_t heads = kd_ml_dim(c, at[1], arg[1], "the number of heads");
    if (heads > 0) y = kd_layer_attention(L, name, x, heads);
    break;
  }
  case KD_BUILTIN_MLP:
  case KD_BUILTIN_SWIGLU: {
    int64_t hidden = kd_ml_dim(c, at[1], arg[1], "the hidden width");
    if (hidden > 0)
      y = b->id == KD_BUILTIN_MLP ? kd_layer_mlp(L, name, x, hidden)
                                  : kd_layer_swiglu(L, name, x, hidden);
    break;
  }
  default:
    kd_ml_error(c, e->loc, "%s() is not supported in a model yet", b->name);
    return kd_ml_bad;
  }
  if (y == KD_NONE && !c->failed)
    kd_ml_error(c, e->loc, "%s", kd_layers_error(L) ? kd_layers_error(L) : "a layer failed");
  return kd_ml_node(y);
}

/* exp, log, sqrt, abs on a node or a number. */
static kd_mval kd_ml_function(kd_mlower *c, const kd_ast *e, const kd_builtin *b, kd_mscope *s) {
  static const struct {
    kd_builtin_id id;
    kd_opcode op;
    double (*f)(double);
  } fns[] = {{KD_BUILTIN_EXP, KD_IR_EXP, exp}, {KD_BUILTIN_LOG, KD_IR_LOG, log},
             {KD_BUILTIN_SQRT, KD_IR_SQRT, sqrt}, {KD_BUILTIN_ABS, KD_IR_ABS, fabs}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    if (fns[i].id != b->id || e->items.n != 1) continue;
    kd_mval v = kd_ml_expr(c, e->items.v[0]->a, s);
    if (v.is_num) return kd_ml_num(fns[i].f(v.num));
    return v.id == KD_NONE ? v : kd_ml_node(kd_unary(c->m->g, fns[i].op, v.id));
  }
  kd_ml_error(c, e->loc, "%s() is not supported in a model yet", b->name);
  return kd_ml_bad;
}

static kd_mval kd_ml_expr(kd_mlower *c, const kd_ast *e, kd_mscope *s) {
  if (c->failed) return kd_ml_bad;
  switch (e->kind) {
  case KD_AST_NUMBER: return kd_ml_num(e->num);
  case KD_AST_NAME: {
    const kd_builtin *b = kd_ml_builtin(c, e);
    if (b && b->id == KD_BUILTIN_TOKENS) return kd_ml_node(c->tokens);
    if (b && b->id == KD_BUILTIN_POSITIONS) return kd_ml_node(c->positions);
    kd_mbinding *l = kd_ml_lookup(c, e->name);
    if (l) return l->v;
    kd_ml_error(c, e->loc, "'%s' has no value in a model", e->name);
    return kd_ml_bad;
  }
  case KD_AST_UNARY: {
    kd_mval v = kd_ml_expr(c, e->a, s);
    if (v.is_num) return kd_ml_num(-v.num);
    return v.id == KD_NONE ? v : kd_ml_node(kd_unary(c->m->g, KD_IR_NEG, v.id));
  }
  case KD_AST_BINARY: {
    kd_mval a = kd_ml_expr(c, e->a, s), b = kd_ml_expr(c, e->b, s);
    return c->failed ? kd_ml_bad : kd_ml_binary(c, e, a, b);
  }
  case KD_AST_CALL: {
    const kd_builtin *b = kd_ml_builtin(c, e);
    if (b && b->cls == KD_BI_LAYER) return kd_ml_layer(c, e, b, s);
    if (b && b->cls == KD_BI_FUNCTION) return kd_ml_function(c, e, b, s);
    kd_ml_error(c, e->loc, "%s", "only layers and elementwise functions can be called in a model");
    return kd_ml_bad;
  }
  default:
    kd_ml_error(c, e->loc, "a %s is not supported in a model", kd_ast_kind_name(e->kind));
    return kd_ml_bad;
  }
}

/* ---- statements --------------------------------------------------------- */

static void kd_ml_statements(kd_mlower *c, const kd_ast_list *items, kd_mscope *s) {
  for (size_t i = 0; i < items->n && !c->failed; i++) {
    const kd_ast *st = items->v[i];
    if (st->kind != KD_AST_REPEAT) {
      kd_ml_bind(c, st->name, kd_ml_expr(c, st->a, s));
      continue;
    }
    kd_mval n = kd_ml_expr(c, st->a, s);
    if (c->failed) return;
    if (!n.is_num || n.num != floor(n.num) || n.num < 0 || n.num > 1e4) {
      kd_ml_error(c, st->a->loc, "%s", "the count of 'repeat' must be an integer in 0..10000");
      return;
    }
    char blocks[160];
    if (!kd_ml_name(s, KD_MN_BLOCKS, blocks, sizeof blocks)) {
      kd_ml_error(c, st->loc, KD_ML_TOO_DEEP, "159");
      return;
    }
    if (n.num > 0) c->m->layers.resid_std = 0.02 / sqrt(2 * n.num); /* GPT-2's scaling */
    for (int k = 0; k < (int)n.num && !c->failed; k++) {
      char prefix[192];
      kd_mscope inner;
      int w = snprintf(prefix, sizeof prefix, "%s.%d.", blocks, k);
      if (w < 0 || (size_t)w >= sizeof prefix || !kd_ml_scope(c, &st->items, prefix, &inner)) {
        kd_ml_error(c, st->loc, KD_ML_TOO_DEEP, "159");
        return;
      }
      kd_ml_statements(c, &st->items, &inner);
    }
  }
}

/* ---- the instance ------------------------------------------------------- */

void kd_model_free(kd_model *m) {
  kd_layers_free(&m->layers);
  kd_graph_free(m->g);
  memset(m, 0, sizeof *m);
}

kd_status kd_lower_model(const kd_program *prog, const kd_symbol *inst, kd_diag *diag,
                         kd_model *out) {
  memset(out, 0, sizeof *out);
  if (!inst || inst->kind != KD_SYM_INSTANCE || !inst->model) return KD_ERR_INVALID;
  const kd_ast *model = inst->model->node;
  kd_mlower c = {.prog = prog, .diag = diag, .m = out, .tokens = KD_NONE, .positions = KD_NONE};
  out->g = kd_graph_new();
  if (!out->g) return KD_ERR_NOMEM;
  kd_layers_init(&out->layers, out->g);
  kd_dim bt[2] = {kd_graph_sym(out->g, "B"), kd_graph_sym(out->g, "T")}, t[2] = {1, bt[1]};
  c.tokens = kd_input(out->g, "tokens", KD_I64, 2, bt);
  c.positions = kd_iota(out->g, 2, t, 1); /* [1, T]: 0 .. T-1 */
  for (size_t i = 0; i < model->params.n; i++)
    kd_ml_bind(&c, model->params.v[i]->name, kd_ml_num(inst->args[i]));
  kd_mscope top;
  (void)kd_ml_scope(&c, &model->items, "", &top);
  kd_ml_statements(&c, &model->items, &top);
  kd_mbinding *lg = c.failed ? NULL : kd_ml_lookup(&c, "logits");
  const kd_node *n = lg && !lg->v.is_num ? kd_graph_node(out->g, lg->v.id) : NULL;
  if (!c.failed && (!n || n->rank != 3 || KD_DIM_IS_SYM(n->shape[2]) || n->shape[0] != bt[0] ||
                    n->shape[1] != bt[1]))
    kd_ml_error(&c, model->name_loc, "the logits of '%s' are not [B, T, V]", model->name);
  if (!c.failed) {
    out->vocab = n->shape[2];
    if (kd_graph_add_output(out->g, "logits", lg->v.id) != KD_OK || kd_graph_error(out->g)) {
      kd_ml_error(&c, model->name_loc, "%s",
                  kd_graph_error(out->g) ? kd_graph_error(out->g) : "out of memory");
    }
  }
  free(c.env);
  if (c.failed) {
    kd_model_free(out);
    return KD_ERR_SEMANTIC;
  }
  return KD_OK;
}
