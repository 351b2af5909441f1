/* Lowering a checked objective to a loss graph (see lower.h).
 *
 * The lowering is an evaluator over the AST: every expression evaluates to a
 * value, which is a compile-time number, a string, a graph node, or a model
 * instance (whose .logits is a graph input). Names resolve as the checker
 * resolved them (kd_program_ref), so shadowing follows its rules.
 * Arithmetic on two numbers is folded here, so hyperparameters never reach
 * the graph except as the constants of the ops that use them. */
#include "lower.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builtins.h"

/* Divergence calls are inlined; this bounds a divergence that calls itself. */
#define KD_LOWER_MAX_DEPTH 64

typedef enum kd_lval_kind {
  KD_LV_NUM,      /* num */
  KD_LV_STR,      /* str (borrowed from the AST) */
  KD_LV_NODE,     /* id: a tensor in the graph */
  KD_LV_INSTANCE, /* sym: the instance */
} kd_lval_kind;

typedef struct kd_lval {
  kd_lval_kind kind;
  double num;
  const char *str;
  kd_node_id id;
  const kd_symbol *sym;
} kd_lval;

/* A scope: the objective's lets, or a divergence's parameters. */
typedef struct kd_binding {
  const char *name;
  kd_lval val;
} kd_binding;

typedef struct kd_scope {
  kd_binding *v;
  size_t n, cap;
} kd_scope;

typedef struct kd_lowering {
  const kd_program *prog; /* names resolve as the checker resolved them */
  const kd_lower_options *opt;
  kd_diag *diag;
  kd_graph *g;
  kd_dim N, V;
  kd_node_id student, labels;          /* created on first use */
  const kd_symbol *student_sym;        /* the instance trained, or NULL */
  /* The teachers the objective reads, in order of appearance, and their
   * inputs: "teacher" when there is one, "teacher.NAME" when several. */
  const kd_symbol *teachers[KD_LOWER_MAX_TEACHERS];
  kd_node_id teacher_ids[KD_LOWER_MAX_TEACHERS];
  int nteachers;
  bool uses_labels;
  int depth;
  bool failed;
} kd_lowering;

static kd_lval kd_num(double x) { return (kd_lval){.kind = KD_LV_NUM, .num = x, .id = KD_NONE}; }
static kd_lval kd_nodev(kd_node_id id) { return (kd_lval){.kind = KD_LV_NODE, .id = id}; }

/* Reports an error (the first one only: later ones would be consequences)
 * and returns an error value. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static kd_lval kd_fail_at(kd_lowering *L, kd_loc loc, const char *fmt, ...) {
  if (!L->failed) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kd_error(L->diag, loc, "%s", msg);
  }
  L->failed = true;
  return kd_nodev(KD_NONE);
}

static bool kd_scope_push(kd_scope *s, const char *name, kd_lval val) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 8;
    kd_binding *v = realloc(s->v, cap * sizeof *v);
    if (!v) return false;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = (kd_binding){name, val};
  return true;
}

/* The newest binding of name (a let may shadow an earlier one). */
static const kd_lval *kd_scope_find(const kd_scope *s, const char *name) {
  for (size_t i = s->n; i-- > 0;)
    if (!strcmp(s->v[i].name, name)) return &s->v[i].val;
  return NULL;
}

/* What the checker resolved a NAME or a CALL's callee to, or NULL. */
static const kd_ref *kd_resolved(const kd_lowering *L, const kd_ast *e) {
  const kd_ref *r = kd_program_ref(L->prog, e);
  return r && r->ref != KD_REF_NONE ? r : NULL;
}

/* The student is the instance a train block trains, else the one named
 * "student"; every other instance is a teacher. */
static bool kd_is_teacher(const kd_lowering *L, const kd_symbol *inst) {
  return L->student_sym ? inst != L->student_sym : strcmp(inst->name, "student") != 0;
}

/* ---- graph helpers ------------------------------------------------------ */

static kd_node_id kd_as_node(kd_lowering *L, kd_lval v) {
  return v.kind == KD_LV_NUM ? kd_const(L->g, v.num, KD_F32) : v.id;
}

static kd_node_id kd_student_input(kd_lowering *L) {
  if (L->student == KD_NONE) {
    kd_dim shape[2] = {L->N, L->V};
    L->student = kd_input(L->g, "student", L->opt->student_dtype, 2, shape);
  }
  return L->student;
}

/* Teacher i's logits (an index into L->teachers). */
static kd_node_id kd_teacher_input(kd_lowering *L, int i) {
  if (L->teacher_ids[i] == KD_NONE) {
    kd_dim shape[2] = {L->N, L->V};
    char name[160] = "teacher";
    if (L->nteachers > 1) snprintf(name, sizeof name, "teacher.%s", L->teachers[i]->name);
    L->teacher_ids[i] = kd_input(L->g, name, L->opt->teacher_dtype, 2, shape);
  }
  return L->teacher_ids[i];
}

static kd_node_id kd_labels_input(kd_lowering *L) {
  if (L->labels == KD_NONE) {
    kd_dim shape[2] = {L->N, 1};
    L->labels = kd_input(L->g, "labels", KD_I64, 2, shape);
  }
  return L->labels;
}

/* Names a let's node after the let, for `kdc emit-ir` (an input keeps its
 * name: that is how the graph's inputs are found). */
static void kd_name_node(kd_lowering *L, kd_lval v, const char *name) {
  const kd_node *n = v.kind == KD_LV_NODE ? kd_graph_node(L->g, v.id) : NULL;
  if (n && n->op != KD_IR_INPUT) kd_set_name(L->g, v.id, name);
}

static bool kd_is_per_token(const kd_node *n) {
  return n && n->rank == 2 && n->shape[1] == 1;
}

/* ---- expressions -------------------------------------------------------- */

static kd_lval kd_lower_expr(kd_lowering *L, const kd_scope *scope, const kd_ast *e);

static kd_lval kd_lower_name(kd_lowering *L, const kd_scope *scope, const kd_ast *e) {
  const kd_lval *v = kd_scope_find(scope, e->name);
  if (v) return *v;
  const kd_ref *r = kd_resolved(L, e);
  if (r && r->ref == KD_REF_BUILTIN && r->builtin->id == KD_BUILTIN_LABELS) {
    L->uses_labels = true;
    return kd_nodev(kd_labels_input(L));
  }
  const kd_symbol *sym = r && r->ref == KD_REF_SYMBOL ? r->sym : NULL;
  if (sym && sym->kind == KD_SYM_INSTANCE) {
    return (kd_lval){.kind = KD_LV_INSTANCE, .sym = sym, .id = KD_NONE};
  }
  if (sym && sym->kind == KD_SYM_CONST && sym->value_kind == KD_KIND_STRING)
    return (kd_lval){.kind = KD_LV_STR, .str = sym->node->a->str, .id = KD_NONE};
  if (sym && sym->kind == KD_SYM_CONST) return kd_num(sym->value);
  return kd_fail_at(L, e->loc, "'%s' cannot be used in a loss", e->name);
}

static kd_lval kd_lower_member(kd_lowering *L, const kd_scope *scope, const kd_ast *e) {
  kd_lval obj = kd_lower_expr(L, scope, e->a);
  if (L->failed) return obj;
  if (obj.kind != KD_LV_INSTANCE)
    return kd_fail_at(L, e->loc, "'.%s' needs a model instance", e->name);
  if (strcmp(e->name, "logits"))
    return kd_fail_at(L, e->name_loc, "the loss compiler reads only '.logits', not '.%s'",
                      e->name);
  if (!kd_is_teacher(L, obj.sym)) return kd_nodev(kd_student_input(L));
  for (int i = 0; i < L->nteachers; i++)
    if (L->teachers[i] == obj.sym) return kd_nodev(kd_teacher_input(L, i));
  return kd_fail_at(L, e->loc, "internal error: teacher '%s' was not found by the scan",
                    obj.sym->name);
}

static kd_lval kd_lower_unary(kd_lowering *L, const kd_scope *scope, const kd_ast *e) {
  kd_lval a = kd_lower_expr(L, scope, e->a);
  if (L->failed) return a;
  if (a.kind == KD_LV_NUM) return kd_num(-a.num);
  return kd_nodev(kd_unary(L->g, KD_IR_NEG, kd_as_node(L, a)));
}

static double kd_fold_binary(kd_ast_op op, double x, double y) {
  switch (op) {
  case KD_OP_ADD: return x + y;
  case KD_OP_SUB: return x - y;
  case KD_OP_MUL: return x * y;
  case KD_OP_DIV: return x / y;
  case KD_OP_POW: return pow(x, y);
  case KD_OP_LT: return x < y;
  case KD_OP_LE: return x <= y;
  case KD_OP_GT: return x > y;
  case KD_OP_GE: return x >= y;
  case KD_OP_EQ: return x == y;
  case KD_OP_NE: return x != y;
  default: return NAN;
  }
}

static kd_opcode kd_ir_binary(kd_ast_op op) {
  switch (op) {
  case KD_OP_ADD: return KD_IR_ADD;
  case KD_OP_SUB: return KD_IR_SUB;
  case KD_OP_MUL: return KD_IR_MUL;
  case KD_OP_DIV: return KD_IR_DIV;
  case KD_OP_POW: return KD_IR_POW;
  case KD_OP_LT: return KD_IR_LT;
  case KD_OP_LE: return KD_IR_LE;
  case KD_OP_GT: return KD_IR_GT;
  case KD_OP_GE: return KD_IR_GE;
  case KD_OP_EQ: return KD_IR_EQ;
  default: return KD_IR_NE;
  }
}

static kd_lval kd_lower_binary(kd_lowering *L, const kd_scope *scope, const kd_ast *e) {
  kd_lval a = kd_lower_expr(L, scope, e->a);
  if (L->failed) return a;
  kd_lval b = kd_lower_expr(L, scope, e->b);
  if (L->failed) return b;
  if (a.kind == KD_LV_NUM && b.kind == KD_LV_NUM) return kd_num(kd_fold_binary(e->op, a.num, b.num));
  if (a.kind != KD_LV_NUM && a.kind != KD_LV_NODE)
    return kd_fail_at(L, e->a->loc, "this operand of '%s' is not a value",
                      kd_ast_op_spelling(e->op));
  if (b.kind != KD_LV_NUM && b.kind != KD_LV_NODE)
    return kd_fail_at(L, e->b->loc, "this operand of '%s' is not a value",
                      kd_ast_op_spelling(e->op));
  /* Identities with a number are exact in IEEE arithmetic, so they are
   * dropped here: T = 1 makes softmax(x / T) plain softmax(x). */
  kd_ast_op op = e->op;
  if (b.kind == KD_LV_NUM &&
      ((b.num == 1 && (op == KD_OP_MUL || op == KD_OP_DIV || op == KD_OP_POW)) ||
       (b.num == 0 && (op == KD_OP_ADD || op == KD_OP_SUB))))
    return a;
  if (a.kind == KD_LV_NUM && ((a.num == 1 && op == KD_OP_MUL) || (a.num == 0 && op == KD_OP_ADD)))
    return b;
  return kd_nodev(kd_binary(L->g, kd_ir_binary(op), kd_as_node(L, a), kd_as_node(L, b)));
}

/* The call's positional argument i, or NULL. */
static const kd_ast *kd_arg(const kd_ast *call, size_t i) {
  size_t k = 0;
  for (size_t j = 0; j < call->items.n; j++) {
    const kd_ast *arg = call->items.v[j];
    if (!arg->name && k++ == i) return arg->a;
  }
  return NULL;
}

static kd_lval kd_lower_arg(kd_lowering *L, const kd_scope *scope, const kd_ast *call, size_t i) {
  const kd_ast *a = kd_arg(call, i);
  if (!a) return kd_fail_at(L, call->loc, "'%s' is missing an argument", call->a->name);
  return kd_lower_expr(L, scope, a);
}

/* The last axis: the vocabulary for [N, V], the only one for a rank-1 tensor. */
static int kd_last_axis(kd_lowering *L, kd_node_id id) {
  const kd_node *n = kd_graph_node(L->g, id);
  return n && n->rank > 0 ? n->rank - 1 : 0;
}

static kd_lval kd_unary_builtin(kd_lowering *L, kd_lval a, kd_opcode op, double (*fold)(double)) {
  if (a.kind == KD_LV_NUM) return kd_num(fold(a.num));
  return kd_nodev(kd_unary(L->g, op, a.id));
}

/* cross_entropy(logits, labels) per token: logsumexp(x) - x[label], the
 * label's logit picked with a one-hot SELECT over an iota of the vocabulary
 * (a label outside [0, V), such as ignore_index, picks nothing; its row is
 * masked by the reduction). */
static kd_lval kd_cross_entropy(kd_lowering *L, kd_node_id x, kd_node_id labels) {
  kd_graph *g = L->g;
  const kd_node *xn = kd_graph_node(g, x);
  if (!xn || xn->rank != 2) return kd_nodev(KD_NONE);
  kd_dim vshape[2] = {1, xn->shape[1]};
  kd_node_id iota = kd_iota(g, 2, vshape, 1);                       /* [1, V] */
  kd_node_id onehot = kd_binary(g, KD_IR_EQ, iota, labels);         /* [N, V] */
  kd_node_id picked = kd_select(g, onehot, x, kd_const(g, 0, KD_F32));
  kd_node_id xl = kd_reduce(g, KD_IR_SUM, picked, 1);               /* [N, 1] */
  return kd_nodev(kd_binary(g, KD_IR_SUB, kd_reduce(g, KD_IR_LSE, x, 1), xl));
}

static kd_lval kd_lower_divergence_call(kd_lowering *L, const kd_scope *scope, const kd_ast *call,
                                        const kd_ast *div);

static kd_lval kd_lower_call(kd_lowering *L, const kd_scope *scope, const kd_ast *e) {
  if (e->a->kind != KD_AST_NAME) return kd_fail_at(L, e->a->loc, "this cannot be called");
  const char *name = e->a->name;
  const kd_ref *r = kd_resolved(L, e);
  if (r && r->ref == KD_REF_SYMBOL && r->sym->kind == KD_SYM_DIVERGENCE)
    return kd_lower_divergence_call(L, scope, e, r->sym->node);
  const kd_builtin *b = r && r->ref == KD_REF_BUILTIN ? r->builtin : NULL;
  if (!b || b->cls != KD_BI_FUNCTION)
    return kd_fail_at(L, e->a->loc, "'%s' cannot be called in a loss", name);
  if (b->id == KD_BUILTIN_WHERE) {
    /* A condition known now picks one branch; the other is never lowered. */
    kd_lval c = kd_lower_arg(L, scope, e, 0);
    if (L->failed) return c;
    if (c.kind == KD_LV_NUM) return kd_lower_arg(L, scope, e, c.num != 0 ? 1 : 2);
    kd_lval x = kd_lower_arg(L, scope, e, 1);
    if (L->failed) return x;
    kd_lval y = kd_lower_arg(L, scope, e, 2);
    if (L->failed) return y;
    kd_node_id cond = c.id;
    const kd_node *cn = kd_graph_node(L->g, cond);
    if (cn && cn->dtype != KD_BOOL)
      cond = kd_binary(L->g, KD_IR_NE, cond, kd_const(L->g, 0, KD_F32));
    return kd_nodev(kd_select(L->g, cond, kd_as_node(L, x), kd_as_node(L, y)));
  }
  kd_lval a = kd_lower_arg(L, scope, e, 0);
  if (L->failed) return a;
  bool num = a.kind == KD_LV_NUM;
  if (a.kind != KD_LV_NUM && a.kind != KD_LV_NODE)
    return kd_fail_at(L, kd_arg(e, 0)->loc, "the argument of '%s' is not a value", name);
  switch (b->id) {
  case KD_BUILTIN_LOG: return kd_unary_builtin(L, a, KD_IR_LOG, log);
  case KD_BUILTIN_EXP: return kd_unary_builtin(L, a, KD_IR_EXP, exp);
  case KD_BUILTIN_SQRT: return kd_unary_builtin(L, a, KD_IR_SQRT, sqrt);
  case KD_BUILTIN_ABS: return kd_unary_builtin(L, a, KD_IR_ABS, fabs);
  case KD_BUILTIN_STOP_GRADIENT:
    return num ? a : kd_nodev(kd_unary(L->g, KD_IR_STOPGRAD, a.id));
  case KD_BUILTIN_MAX:
  case KD_BUILTIN_MIN: {
    kd_lval y = kd_lower_arg(L, scope, e, 1);
    if (L->failed) return y;
    bool mx = b->id == KD_BUILTIN_MAX;
    if (num && y.kind == KD_LV_NUM) return kd_num(mx ? fmax(a.num, y.num) : fmin(a.num, y.num));
    return kd_nodev(kd_binary(L->g, mx ? KD_IR_MAX : KD_IR_MIN, kd_as_node(L, a),
                             kd_as_node(L, y)));
  }
  default:
    break;
  }
  if (num) return kd_fail_at(L, e->loc, "'%s' needs a tensor, not a number", name);
  switch (b->id) {
  case KD_BUILTIN_SOFTMAX:
    return kd_nodev(kd_row(L->g, KD_IR_SOFTMAX, a.id, kd_last_axis(L, a.id)));
  case KD_BUILTIN_LOG_SOFTMAX:
    return kd_nodev(kd_row(L->g, KD_IR_LOG_SOFTMAX, a.id, kd_last_axis(L, a.id)));
  case KD_BUILTIN_SUM:
    return kd_nodev(kd_reduce(L->g, KD_IR_SUM, a.id, kd_last_axis(L, a.id)));
  case KD_BUILTIN_CROSS_ENTROPY: {
    kd_lval y = kd_lower_arg(L, scope, e, 1);
    if (L->failed) return y;
    if (y.kind != KD_LV_NODE || y.id != L->labels)
      return kd_fail_at(L, kd_arg(e, 1)->loc, "cross_entropy's second argument must be labels");
    return kd_cross_entropy(L, a.id, y.id);
  }
  default:
    return kd_fail_at(L, e->a->loc, "'%s' cannot be used in a loss", name);
  }
}

/* Inlines a divergence: its distributions bound positionally, its
 * hyperparameters by name or by their defaults, in a scope of their own. */
static kd_lval kd_lower_divergence_call(kd_lowering *L, const kd_scope *scope, const kd_ast *call,
                                        const kd_ast *div) {
  if (L->depth >= KD_LOWER_MAX_DEPTH)
    return kd_fail_at(L, call->loc, "divergence '%s' calls itself", div->name);
  kd_scope inner = {0};
  kd_lval r = kd_nodev(KD_NONE);
  for (size_t i = 0; i < div->params.n && !L->failed; i++) {
    kd_lval v = kd_lower_arg(L, scope, call, i);
    if (!L->failed && !kd_scope_push(&inner, div->params.v[i]->name, v))
      kd_fail_at(L, call->loc, "out of memory");
  }
  for (size_t i = 0; i < div->items.n && !L->failed; i++) {
    const kd_ast *param = div->items.v[i];
    const kd_ast *given = NULL;
    for (size_t j = 0; j < call->items.n; j++) {
      const kd_ast *arg = call->items.v[j];
      if (arg->name && !strcmp(arg->name, param->name)) given = arg->a;
    }
    if (!given && !param->a) {
      kd_fail_at(L, call->loc, "missing hyperparameter '%s'", param->name);
      break;
    }
    /* A default is evaluated in the divergence's own scope: earlier
     * hyperparameters are visible, the caller's lets are not. */
    kd_lval v = given ? kd_lower_expr(L, scope, given) : kd_lower_expr(L, &inner, param->a);
    if (!L->failed && !kd_scope_push(&inner, param->name, v))
      kd_fail_at(L, call->loc, "out of memory");
  }
  if (!L->failed) {
    L->depth++;
    r = kd_lower_expr(L, &inner, div->a);
    L->depth--;
  }
  free(inner.v);
  return r;
}

static kd_lval kd_lower_expr(kd_lowering *L, const kd_scope *scope, const kd_ast *e) {
  if (L->failed) return kd_nodev(KD_NONE);
  switch (e->kind) {
  case KD_AST_NUMBER: return kd_num(e->num);
  case KD_AST_STRING: return (kd_lval){.kind = KD_LV_STR, .str = e->str, .id = KD_NONE};
  case KD_AST_NAME: return kd_lower_name(L, scope, e);
  case KD_AST_MEMBER: return kd_lower_member(L, scope, e);
  case KD_AST_UNARY: return kd_lower_unary(L, scope, e);
  case KD_AST_BINARY: return kd_lower_binary(L, scope, e);
  case KD_AST_CALL: return kd_lower_call(L, scope, e);
  default: return kd_fail_at(L, e->loc, "a %s cannot be lowered to a loss", kd_ast_kind_name(e->kind));
  }
}

/* ---- the objective ------------------------------------------------------ */

/* Finds the teachers whose .logits expression e reads, before lowering, so
 * that their inputs are named knowing how many there are. (Only an
 * objective's own expressions name instances: divergence bodies cannot.) */
static void kd_scan_teachers(kd_lowering *L, const kd_ast *e) {
  if (!e || L->failed) return;
  if (e->kind == KD_AST_MEMBER && e->a->kind == KD_AST_NAME) {
    const kd_ref *r = kd_resolved(L, e->a);
    const kd_symbol *sym = r && r->ref == KD_REF_SYMBOL ? r->sym : NULL;
    if (sym && sym->kind == KD_SYM_INSTANCE && kd_is_teacher(L, sym)) {
      for (int i = 0; i < L->nteachers; i++)
        if (L->teachers[i] == sym) return;
      if (L->nteachers == KD_LOWER_MAX_TEACHERS) {
        kd_fail_at(L, e->loc, "more than %d teachers in one objective", KD_LOWER_MAX_TEACHERS);
        return;
      }
      L->teacher_ids[L->nteachers] = KD_NONE;
      L->teachers[L->nteachers++] = sym;
    }
  }
  kd_scan_teachers(L, e->a);
  kd_scan_teachers(L, e->b);
  for (size_t i = 0; i < e->items.n; i++) kd_scan_teachers(L, e->items.v[i]);
}

/* The objective to lower: the one named in the options, else the one the
 * train block of the options (else the first) minimises, else the unnamed one, else the only one. */
static const kd_ast *kd_find_objective(kd_lowering *L) {
  const kd_symbol *train = L->opt->train                ? L->opt->train
                           : kd_program_ntrains(L->prog) ? kd_program_train(L->prog, 0)
                                                         : NULL;
  const char *want = L->opt->objective;
  const kd_symbol *found = NULL;
  kd_loc none = {0};
  if (want) {
    found = kd_program_lookup(L->prog, want);
    if (!found || found->kind != KD_SYM_OBJECTIVE)
      kd_fail_at(L, none, "no objective named '%s'", want);
  } else if (train && train->train.objective) {
    found = train->train.objective;
  } else {
    int count = 0;
    for (size_t i = 0; i < kd_program_nsymbols(L->prog); i++) {
      const kd_symbol *s = kd_program_symbol(L->prog, i);
      if (s->kind != KD_SYM_OBJECTIVE) continue;
      count++;
      if (!found || !s->name) found = s;
    }
    if (!found) kd_fail_at(L, none, "the spec has no objective");
    else if (count > 1 && found->name)
      kd_fail_at(L, found->node->loc, "several named objectives: say which one to lower");
  }
  L->student_sym = train ? train->train.instance : NULL;
  return L->failed ? NULL : found->node;
}

/* A reserved binding's string value ("mean", "pad"), checked against `allowed`
 * (NUL-separated); returns its index there. */
static int kd_pick(kd_lowering *L, const kd_ast *bind, kd_lval v, const char *allowed) {
  if (v.kind != KD_LV_STR) {
    kd_fail_at(L, bind->a->loc, "'%s' must be a string", bind->name);
    return 0;
  }
  int k = 0;
  for (const char *s = allowed; *s; s += strlen(s) + 1, k++)
    if (!strcmp(s, v.str)) return k;
  kd_fail_at(L, bind->a->loc, "unknown value \"%s\" here", v.str);
  return 0;
}

/* loss = reduce(per-token loss) over the rows (see lower.h). */
static kd_node_id kd_reduce_loss(kd_lowering *L, kd_node_id tok, const kd_lower_info *info) {
  kd_graph *g = L->g;
  if (L->labels != KD_NONE) {
    kd_node_id zero = kd_const(g, 0, KD_F32);
    kd_node_id valid = kd_binary(g, KD_IR_NE, L->labels,
                                 kd_const(g, (double)info->ignore_index, KD_I64)); /* [N, 1] */
    kd_node_id total = kd_reduce(g, KD_IR_SUM, kd_select(g, valid, tok, zero), KD_AXIS_ALL);
    if (info->sum) return total;
    kd_node_id count = kd_reduce(g, KD_IR_SUM, valid, KD_AXIS_ALL); /* i64 [] */
    count = kd_binary(g, KD_IR_MAX, kd_cast(g, count, KD_F32), kd_const(g, 1, KD_F32));
    return kd_binary(g, KD_IR_DIV, total, count);
  }
  kd_node_id total = kd_reduce(g, KD_IR_SUM, tok, KD_AXIS_ALL);
  if (info->sum) return total;
  /* N as a graph value: the sum of ones over the rows (at least 1, so an
   * empty batch has loss 0 as an all-masked one does). */
  kd_dim rows[2] = {L->N, 1};
  kd_node_id one = kd_const(g, 1, KD_F32);
  kd_node_id count = kd_reduce(g, KD_IR_SUM, kd_expand(g, one, 2, rows), KD_AXIS_ALL);
  return kd_binary(g, KD_IR_DIV, total, kd_binary(g, KD_IR_MAX, count, one));
}

static kd_status kd_lower_objective(kd_lowering *L, const kd_ast *obj, kd_lower_info *info) {
  kd_scope scope = {0};
  const kd_ast *loss_bind = NULL;
  kd_lval loss = kd_nodev(KD_NONE);
  for (size_t i = 0; i < obj->items.n && !L->failed; i++) {
    const kd_ast *bind = obj->items.v[i];
    kd_lval v = kd_lower_expr(L, &scope, bind->a);
    if (L->failed) break;
    if (!strcmp(bind->name, "loss")) {
      loss_bind = bind;
      loss = v;
    } else if (!strcmp(bind->name, "reduction")) {
      info->sum = kd_pick(L, bind, v, "mean\0sum\0") == 1;
    } else if (!strcmp(bind->name, "vocab_align")) {
      info->vocab_align = (kd_vocab_align)kd_pick(L, bind, v, "error\0pad\0truncate\0");
    } else if (!strcmp(bind->name, "ignore_index")) {
      if (v.kind != KD_LV_NUM || v.num != floor(v.num) || fabs(v.num) > 1e15)
        kd_fail_at(L, bind->a->loc, "'%s' must be an integer", bind->name);
      info->ignore_index = (long long)v.num;
    }
    if (!L->failed && !kd_scope_push(&scope, bind->name, v))
      kd_fail_at(L, bind->loc, "out of memory");
    kd_name_node(L, v, bind->name);
  }
  free(scope.v);
  if (L->failed) return KD_ERR_SEMANTIC;
  if (!loss_bind) {
    kd_fail_at(L, obj->loc, "the objective has no `loss`");
    return KD_ERR_SEMANTIC;
  }
  const kd_node *n = loss.kind == KD_LV_NODE ? kd_graph_node(L->g, loss.id) : NULL;
  if (loss.kind == KD_LV_NODE && loss.id == KD_NONE) {
    kd_fail_at(L, loss_bind->a->loc, "cannot lower this loss: %s", kd_graph_error(L->g));
    return KD_ERR_SEMANTIC;
  }
  if (!kd_is_per_token(n)) {
    kd_fail_at(L, loss_bind->a->loc,
               "the loss must be a per-token value (did a divergence forget sum(...)?)");
    return KD_ERR_SEMANTIC;
  }
  if (L->opt->labels) kd_labels_input(L);
  kd_node_id out = kd_reduce_loss(L, loss.id, info);
  if (out == KD_NONE) {
    kd_fail_at(L, loss_bind->loc, "cannot lower this loss: %s", kd_graph_error(L->g));
    return KD_ERR_SEMANTIC;
  }
  if (kd_graph_node(L->g, out)->dtype != KD_F32) out = kd_cast(L->g, out, KD_F32);
  return kd_graph_add_output(L->g, "loss", out);
}

kd_status kd_lower(const kd_program *prog, const kd_lower_options *opt, kd_diag *diag,
                   kd_graph **out, kd_lower_info *info) {
  kd_lower_options defaults = {0};
  kd_lower_info scratch;
  if (!info) info = &scratch;
  *info = (kd_lower_info){.ignore_index = -100};
  *out = NULL;
  kd_lowering L = {.prog = prog, .opt = opt ? opt : &defaults, .diag = diag,
                   .student = KD_NONE, .labels = KD_NONE};
  L.g = kd_graph_new();
  if (!L.g) return KD_ERR_NOMEM;
  L.N = kd_graph_sym(L.g, "N");
  L.V = kd_graph_sym(L.g, "V");
  /* The gradient is taken with respect to the student, so it is always an
   * input, even for a loss that does not read it. */
  kd_student_input(&L);
  const kd_ast *obj = kd_find_objective(&L);
  if (obj) kd_scan_teachers(&L, obj);
  kd_status st = obj ? kd_lower_objective(&L, obj, info) : KD_ERR_SEMANTIC;
  char err[256];
  if (st == KD_OK && kd_graph_verify(L.g, err, sizeof err) != KD_OK) {
    kd_fail_at(&L, obj->loc, "internal error: the lowered graph is invalid: %s", err);
    st = KD_ERR_SEMANTIC;
  }
  if (st != KD_OK) {
    kd_graph_free(L.g);
    return st;
  }
  info->nteachers = L.nteachers;
  for (int i = 0; i < L.nteachers; i++) info->teachers[i] = L.teachers[i];
  info->uses_labels = L.uses_labels;
  *out = L.g;
  return KD_OK;
}

kd_status kd_lower_cross_entropy(long long ignore_index, kd_graph **out) {
  kd_lower_options opt = {.labels = true};
  kd_lower_info info = {.ignore_index = ignore_index};
  kd_lowering L = {.opt = &opt, .student = KD_NONE, .labels = KD_NONE};
  *out = NULL;
  if (!(L.g = kd_graph_new())) return KD_ERR_NOMEM;
  L.N = kd_graph_sym(L.g, "N");
  L.V = kd_graph_sym(L.g, "V");
  kd_lval ce = kd_cross_entropy(&L, kd_student_input(&L), kd_labels_input(&L));
  kd_node_id loss = kd_reduce_loss(&L, ce.id, &info);
  char err[256];
  if (loss == KD_NONE || kd_graph_add_output(L.g, "loss", loss) != KD_OK ||
      kd_graph_verify(L.g, err, sizeof err) != KD_OK) {
    kd_graph_free(L.g);
    return KD_ERR_NOMEM; /* the builders fail only when out of memory */
  }
  *out = L.g;
  return KD_OK;
}
