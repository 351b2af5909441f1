/* The layers (passes/layers.h): each one's gradient with respect to its
 * input and every parameter against central finite differences (a tied
 * embedding's table gets both of its uses' gradients)
 * (gradcheck.h), on x [B, T, 4] with B = 2, T = 3 bound at run time (the
 * layers see symbols); parameter names, shapes and init specs; values
 * against direct C computations (layernorm, gelu, silu, attention), and
 * causality: attention's output at t < 2 does not move when x at t = 2 does.
 *
 * Tolerances: gradients 1e-6 absolute and relative, as test_model_ops.c (the
 * losses here are O(1) and smooth; layernorm's 1/sqrt(var + eps) has var of
 * order 0.3, far from the eps scale where finite differences would lose
 * accuracy). Values 1e-12: the same double operations in another order. */
#include "gradcheck.h"
#include "layers.h"

#define ATOL 1e-6
#define RTOL 1e-6

enum { NB = 2, NT = 3, ND = 4, NV = 5 };

typedef kd_node_id (*layer_fn)(kd_layers *L, kd_node_id x, kd_node_id ids);

static kd_node_id l_embedding(kd_layers *L, kd_node_id x, kd_node_id ids) {
  return kd_layer_embedding(L, "wte", ids, NV, ND);
}
static kd_node_id l_linear(kd_layers *L, kd_node_id x, kd_node_id ids) {
  return kd_layer_linear(L, "lm_head", x, 3, true);
}
static kd_node_id l_linear_nobias(kd_layers *L, kd_node_id x, kd_node_id ids) {
  return kd_layer_linear(L, "lm_head", x, 3, false);
}
static kd_node_id l_layernorm(kd_layers *L, kd_node_id x, kd_node_id ids) {
  return kd_layer_layernorm(L, "ln_f", x);
}
static kd_node_id l_rmsnorm(kd_layers *L, kd_node_id x, kd_node_id ids) {
  return kd_layer_rmsnorm(L, "norm", x);
}
static kd_node_id l_gelu(kd_layers *L, kd_node_id x, kd_node_id ids) { return kd_layer_gelu(L, x); }
static kd_node_id l_silu(kd_layers *L, kd_node_id x, kd_node_id ids) { return kd_layer_silu(L, x); }
static kd_node_id l_mlp(kd_layers *L, kd_node_id x, kd_node_id ids) {
  return kd_layer_mlp(L, "blocks.0.mlp", x, 8);
}
static kd_node_id l_swiglu(kd_layers *L, kd_node_id x, kd_node_id ids) {
  return kd_layer_swiglu(L, "layers.0.mlp", x, 6);
}
/* tied embeddings: the table gathers rows and is the output projection */
static kd_node_id l_tied(kd_layers *L, kd_node_id x, kd_node_id ids) {
  kd_node_id e = kd_layer_embedding(L, "wte", ids, NV, ND);
  if (e == KD_NONE) return KD_NONE;
  kd_node_id table = kd_graph_node(L->g, e)->src[0];
  return kd_layer_unembed(L, kd_binary(L->g, KD_IR_ADD, x, e), table);
}
static kd_node_id l_attention(kd_layers *L, kd_node_id x, kd_node_id ids) {
  return kd_layer_attention(L, "blocks.0.attn", x, 2);
}
static kd_node_id l_block(kd_layers *L, kd_node_id x, kd_node_id ids) {
  x = kd_layer_residual(L, x, kd_layer_attention(L, "blocks.0.attn",
                                                 kd_layer_layernorm(L, "blocks.0.ln_1", x), 2));
  return kd_layer_residual(L, x, kd_layer_mlp(L, "blocks.0.mlp",
                                              kd_layer_layernorm(L, "blocks.0.ln_2", x), 16));
}

static const struct {
  const char *name;
  layer_fn f;
  const char *params; /* every parameter, "name [shape]", in order */
} cases[] = {
    {"embedding", l_embedding, "wte.weight [5, 4]"},
    {"linear", l_linear, "lm_head.weight [4, 3] lm_head.bias [3]"},
    {"linear without bias", l_linear_nobias, "lm_head.weight [4, 3]"},
    {"tied embedding", l_tied, "wte.weight [5, 4]"},
    {"layernorm", l_layernorm, "ln_f.weight [4] ln_f.bias [4]"},
    {"rmsnorm", l_rmsnorm, "norm.weight [4]"},
    {"gelu", l_gelu, ""},
    {"silu", l_silu, ""},
    {"mlp", l_mlp,
     "blocks.0.mlp.fc.weight [4, 8] blocks.0.mlp.fc.bias [8] blocks.0.mlp.proj.weight [8, 4] "
     "blocks.0.mlp.proj.bias [4]"},
    {"swiglu", l_swiglu,
     "layers.0.mlp.gate.weight [4, 6] layers.0.mlp.up.weight [4, 6] "
     "layers.0.mlp.down.weight [6, 4]"},
    {"attention", l_attention,
     "blocks.0.attn.qkv.weight [4, 12] blocks.0.attn.qkv.bias [12] "
     "blocks.0.attn.proj.weight [4, 4] blocks.0.attn.proj.bias [4]"},
    {"transformer block", l_block,
     "blocks.0.ln_1.weight [4] blocks.0.ln_1.bias [4] blocks.0.attn.qkv.weight [4, 12] "
     "blocks.0.attn.qkv.bias [12] blocks.0.attn.proj.weight [4, 4] blocks.0.attn.proj.bias [4] "
     "blocks.0.ln_2.weight [4] blocks.0.ln_2.bias [4] blocks.0.mlp.fc.weight [4, 16] "
     "blocks.0.mlp.fc.bias [16] blocks.0.mlp.proj.weight [16, 4] blocks.0.mlp.proj.bias [4]"},
};

static const int64_t ids_data[NB * NT] = {4, 0, 4, 1, 3, 0};

/* "name [d0, d1] ..." for every parameter. */
static void param_list(const kd_layers *L, char *buf, size_t len) {
  size_t k = 0;
  buf[0] = 0;
  for (size_t i = 0; i < L->nparams && k < len; i++) {
    const kd_node *n = kd_graph_node(L->g, L->params[i].id);
    k += (size_t)snprintf(buf + k, len - k, "%s%s [", i ? " " : "", L->params[i].name);
    for (int d = 0; d < n->rank && k < len; d++)
      k += (size_t)snprintf(buf + k, len - k, "%s%lld", d ? ", " : "", (long long)n->shape[d]);
    if (k < len) k += (size_t)snprintf(buf + k, len - k, "]");
  }
}

/* A layer graph: x [B, T, 4], ids [B, T], w like the layer's output;
 * loss = sum(f * w). */
static kd_graph *build(layer_fn f, kd_layers *L, kd_node *out) {
  kd_graph *g = kd_graph_new();
  kd_layers_init(L, g);
  L->resid_std = 0.01;
  kd_dim btd[3] = {kd_graph_sym(g, "B"), kd_graph_sym(g, "T"), ND};
  kd_node_id x = kd_input(g, "x", KD_F32, 3, btd);
  kd_node_id ids = kd_input(g, "ids", KD_I64, 2, btd);
  kd_node_id y = f(L, x, ids);
  const kd_node *yn = kd_graph_node(g, y);
  if (!yn) return g;
  *out = *yn;
  kd_node_id w = kd_input(g, "w", KD_F32, yn->rank, yn->shape);
  kd_graph_add_output(g, "out", y);
  kd_graph_add_output(g, "loss", kd_reduce(g, KD_IR_SUM, kd_binary(g, KD_IR_MUL, y, w),
                                           KD_AXIS_ALL));
  return g;
}

/* The concrete shape of node n with B = 2, T = 3. */
static int concrete(const kd_graph *g, const kd_node *n, int64_t *shape) {
  size_t size = 1;
  for (int i = 0; i < n->rank; i++) {
    const char *s = kd_graph_sym_name(g, n->shape[i]);
    shape[i] = !s ? n->shape[i] : !strcmp(s, "B") ? NB : NT;
    size *= (size_t)shape[i];
  }
  return (int)size;
}

typedef struct bound {
  kd_ref_input in[GC_MAXWRT + 3];
  double *data[GC_MAXWRT + 3];
  size_t n;
} bound;

/* Binds x, w, ids and every parameter to random data. */
static void bind(bound *b, const kd_graph *g, const kd_layers *L, const kd_node *out,
                 unsigned long long *seed) {
  static int64_t sx[3] = {NB, NT, ND}, sids[2] = {NB, NT};
  int64_t sw[KD_MAX_RANK];
  memset(b, 0, sizeof *b);
  int nw = concrete(g, out, sw);
  const struct {
    const char *name;
    int rank;
    const int64_t *shape;
    int n;
  } fixed[2] = {{"x", 3, sx, NB * NT * ND}, {"w", out->rank, sw, nw}};
  for (int k = 0; k < 2; k++) {
    b->data[b->n] = malloc((size_t)fixed[k].n * sizeof(double));
    for (int i = 0; i < fixed[k].n; i++) b->data[b->n][i] = tu_uniform(seed, -1, 1);
    b->in[b->n] = tu_input(fixed[k].name, fixed[k].rank, fixed[k].shape, b->data[b->n]);
    b->n++;
  }
  for (size_t p = 0; p < L->nparams && b->n < GC_MAXWRT + 2; p++) {
    const kd_node *n = kd_graph_node(g, L->params[p].id);
    int64_t shape[KD_MAX_RANK];
    int size = concrete(g, n, shape);
    b->data[b->n] = malloc((size_t)size * sizeof(double));
    for (int i = 0; i < size; i++) b->data[b->n][i] = tu_uniform(seed, -1, 1);
    b->in[b->n] = tu_input(L->params[p].name, n->rank, shape, b->data[b->n]);
    b->n++;
  }
  b->in[b->n++] = tu_input_i64("ids", 2, sids, ids_data);
}

static void unbind(bound *b) {
  for (size_t i = 0; i < b->n; i++) free(b->data[i]);
}

static void test_layer(size_t c, unsigned long long *seed) {
  kd_layers L;
  kd_node out;
  kd_graph *g = build(cases[c].f, &L, &out);
  TU_CHECK(!kd_layers_error(&L), "%s: %s", cases[c].name, kd_layers_error(&L));
  if (kd_layers_error(&L)) {
    kd_layers_free(&L);
    kd_graph_free(g);
    return;
  }
  char got[1024];
  param_list(&L, got, sizeof got);
  TU_CHECK(!strcmp(got, cases[c].params), "%s: parameters\n  %s\nwant\n  %s", cases[c].name,
           got, cases[c].params);
  bound b;
  bind(&b, g, &L, &out, seed);
  size_t wrt[GC_MAXWRT], nwrt = 0;
  for (size_t i = 0; i + 1 < b.n && nwrt < GC_MAXWRT; i++)
    if (i != 1) wrt[nwrt++] = i; /* x and the parameters, not w */
  gc_check(cases[c].name, g, b.in, b.n, wrt, nwrt, ATOL, RTOL);
  unbind(&b);
  kd_layers_free(&L);
  kd_graph_free(g);
}

/* ---- values ------------------------------------------------------------- */

static kd_ref_value run_out(const kd_graph *g, bound *b) { return tu_run(g, b->in, b->n, "out"); }

/* The data bound to a parameter. */
static const double *param_data(const bound *b, const char *name) {
  for (size_t i = 0; i < b->n; i++)
    if (!strcmp(b->in[i].name, name)) return b->in[i].data;
  return NULL;
}

static void test_values(unsigned long long *seed) {
  kd_layers L;
  kd_node out;
  bound b;
  /* layernorm against the formula, row by row */
  kd_graph *g = build(l_layernorm, &L, &out);
  bind(&b, g, &L, &out, seed);
  kd_ref_value v = run_out(g, &b);
  const double *x = b.data[0], *w = param_data(&b, "ln_f.weight"), *bi = param_data(&b, "ln_f.bias");
  for (int r = 0; r < NB * NT && v.data; r++) {
    double mean = 0, var = 0;
    for (int i = 0; i < ND; i++) mean += x[r * ND + i] / ND;
    for (int i = 0; i < ND; i++) var += (x[r * ND + i] - mean) * (x[r * ND + i] - mean) / ND;
    for (int i = 0; i < ND; i++) {
      double want = (x[r * ND + i] - mean) / sqrt(var + 1e-5) * w[i] + bi[i];
      TU_CHECK(tu_close(v.data[r * ND + i], want, 1e-12, 1e-12), "layernorm[%d]: %.15g, want %.15g",
               r * ND + i, v.data[r * ND + i], want);
    }
  }
  kd_ref_value_free(&v);
  unbind(&b);
  kd_layers_free(&L);
  kd_graph_free(g);

  /* gelu(1) (tanh approximation) and silu(1), published values */
  const struct {
    layer_fn f;
    double want;
  } pts[2] = {{l_gelu, 0.8411919906082768}, {l_silu, 0.7310585786300049}};
  for (int k = 0; k < 2; k++) {
    g = build(pts[k].f, &L, &out);
    bind(&b, g, &L, &out, seed);
    b.data[0][5] = 1;
    v = run_out(g, &b);
    TU_CHECK(v.data && tu_close(v.data[5], pts[k].want, 1e-15, 1e-15), "%s(1) = %.17g",
             k ? "silu" : "gelu", v.data ? v.data[5] : NAN);
    kd_ref_value_free(&v);
    unbind(&b);
    kd_layers_free(&L);
    kd_graph_free(g);
  }
}

/* Attention computed directly: qkv = x Wqkv + b, per head softmax over
 * keys j <= i of q_i . k_j / sqrt(Dh), then the projection. */
static void attention_direct(const bound *b, double *y) {
  const double *x = b->data[0];
  const double *wq = param_data(b, "blocks.0.attn.qkv.weight");
  const double *bq = param_data(b, "blocks.0.attn.qkv.bias");
  const double *wp = param_data(b, "blocks.0.attn.proj.weight");
  const double *bp = param_data(b, "blocks.0.attn.proj.bias");
  enum { H = 2, DH = ND / 2 };
  double qkv[NB][NT][3 * ND], o[NB][NT][ND];
  for (int bb = 0; bb < NB; bb++)
    for (int t = 0; t < NT; t++)
      for (int j = 0; j < 3 * ND; j++) {
        double acc = bq[j];
        for (int i = 0; i < ND; i++) acc += x[(bb * NT + t) * ND + i] * wq[i * 3 * ND + j];
        qkv[bb][t][j] = acc;
      }
  for (int bb = 0; bb < NB; bb++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < NT; t++) {
        double s[NT], m = -INFINITY, z = 0;
        for (int u = 0; u <= t; u++) {
          s[u] = 0;
          for (int d = 0; d < DH; d++)
            s[u] += qkv[bb][t][h * DH + d] * qkv[bb][u][ND + h * DH + d];
          s[u] /= sqrt((double)DH);
          m = fmax(m, s[u]);
        }
        for (int u = 0; u <= t; u++) z += exp(s[u] - m);
        for (int d = 0; d < DH; d++) {
          double acc = 0;
          for (int u = 0; u <= t; u++) acc += exp(s[u] - m) / z * qkv[bb][u][2 * ND + h * DH + d];
          o[bb][t][h * DH + d] = acc;
        }
      }
  for (int bb = 0; bb < NB; bb++)
    for (int t = 0; t < NT; t++)
      for (int j = 0; j < ND; j++) {
        double acc = bp[j];
        for (int i = 0; i < ND; i++) acc += o[bb][t][i] * wp[i * ND + j];
        y[(bb * NT + t) * ND + j] = acc;
      }
}

static void test_attention(unsigned long long *seed) {
  kd_layers L;
  kd_node out;
  bound b;
  kd_graph *g = build(l_attention, &L, &out);
  bind(&b, g, &L, &out, seed);
  double want[NB * NT * ND];
  attention_direct(&b, want);
  kd_ref_value v = run_out(g, &b);
  for (int i = 0; i < NB * NT * ND && v.data; i++)
    TU_CHECK(tu_close(v.data[i], want[i], 1e-12, 1e-12), "attention[%d] = %.15g, want %.15g", i,
             v.data[i], want[i]);
  /* causality: moving x at t = 2 moves only the outputs at t = 2 */
  for (int bb = 0; bb < NB; bb++)
    for (int i = 0; i < ND; i++) b.data[0][(bb * NT + 2) * ND + i] += 0.5;
  kd_ref_value v2 = run_out(g, &b);
  for (int i = 0; i < NB * NT * ND && v.data && v2.data; i++) {
    int t = (i / ND) % NT;
    if (t < 2) TU_CHECK(v2.data[i] == v.data[i], "attention[%d] sees the future", i);
    else TU_CHECK(v2.data[i] != v.data[i], "attention[%d] does not see its own token", i);
  }
  kd_ref_value_free(&v);
  kd_ref_value_free(&v2);
  unbind(&b);
  kd_layers_free(&L);
  kd_graph_free(g);
}

/* Init specs and the layers' own errors. */
static void test_specs(void) {
  kd_layers L;
  kd_node out;
  kd_graph *g = build(l_block, &L, &out);
  const kd_model_param *qkv = kd_layers_find(&L, "blocks.0.attn.qkv.weight");
  const kd_model_param *proj = kd_layers_find(&L, "blocks.0.mlp.proj.weight");
  const kd_model_param *ln = kd_layers_find(&L, "blocks.0.ln_1.weight");
  const kd_model_param *bias = kd_layers_find(&L, "blocks.0.ln_1.bias");
  TU_CHECK(qkv && qkv->init.kind == KD_INIT_NORMAL && qkv->init.std == 0.02, "qkv: normal(0, 0.02)");
  TU_CHECK(proj && proj->init.kind == KD_INIT_NORMAL && proj->init.std == 0.01,
           "a residual projection takes resid_std");
  TU_CHECK(ln && ln->init.kind == KD_INIT_ONES, "a norm's weight starts at 1");
  TU_CHECK(bias && bias->init.kind == KD_INIT_ZEROS, "biases start at 0");
  kd_layers_free(&L);
  kd_graph_free(g);

  g = kd_graph_new();
  kd_layers_init(&L, g);
  kd_dim btd[3] = {kd_graph_sym(g, "B"), kd_graph_sym(g, "T"), 6};
  kd_node_id x = kd_input(g, "x", KD_F32, 3, btd);
  TU_CHECK(kd_layer_attention(&L, "attn", x, 4) == KD_NONE &&
               strstr(kd_layers_error(&L), "4 heads do not divide the width 6"),
           "heads: %s", kd_layers_error(&L));
  kd_layers_free(&L);
  kd_layers_init(&L, g);
  kd_layer_layernorm(&L, "ln", x);
  TU_CHECK(kd_layer_layernorm(&L, "ln", x) == KD_NONE &&
               strstr(kd_layers_error(&L), "parameter ln.weight is made twice"),
           "a name used twice: %s", kd_layers_error(&L));
  kd_layers_free(&L);
  kd_graph_free(g);
}

int main(void) {
  unsigned long long seed = 0x853c49e6748fea9bull;
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) test_layer(c, &seed);
  test_values(&seed);
  test_attention(&seed);
  test_specs();
  return tu_done("test_layers");
}
