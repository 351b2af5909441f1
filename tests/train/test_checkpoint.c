/* Checkpoints: save -> load -> save is byte-identical, a resumed run
 * continues exactly as an uninterrupted one, a crash before the rename
 * leaves the old checkpoint intact, and every mismatch with the model is
 * refused with a message that names the tensor, leaving the model as it was. */
#include <string.h>

#include "check.h"
#include "checkpoint.h"
#include "fileio.h"
#include "safetensors.h"
#include "tmpdir.h"

static char err[512];

/* A tiny model: an embedding [5, 2] and a linear layer [4, 3] + bias [3]. */
typedef struct model {
  float emb[10], w[12], b[3];
  float gemb[10], gw[12], gb[3];
  kd_param p[3];
} model;

static void model_init(model *m, float base) {
  memset(m, 0, sizeof *m);
  for (int i = 0; i < 10; i++) m->emb[i] = base + 0.01f * (float)i;
  for (int i = 0; i < 12; i++) m->w[i] = base - 0.02f * (float)i;
  for (int i = 0; i < 3; i++) m->b[i] = base * 0.5f;
  m->p[0] = (kd_param){.name = "tok_emb.weight", .data = m->emb, .grad = m->gemb, .rank = 2, .shape = {5, 2}, .decay = 1};
  m->p[1] = (kd_param){.name = "head.weight", .data = m->w, .grad = m->gw, .rank = 2, .shape = {4, 3}, .decay = 1};
  m->p[2] = (kd_param){.name = "head.bias", .data = m->b, .grad = m->gb, .rank = 1, .shape = {3}, .decay = 0};
}

/* A "training step": gradients from the data generator, then AdamW. */
static void train_step(model *m, kd_optim *o, kd_rng *rng) {
  float *g[3] = {m->gemb, m->gw, m->gb};
  int k[3] = {10, 12, 3};
  for (int t = 0; t < 3; t++)
    for (int i = 0; i < k[t]; i++) g[t][i] = (float)kd_rng_uniform(rng) - 0.5f;
  kd_grad_clip(m->p, 3, 1.0);
  kd_optim_step(o, 1e-2f);
}

static int same_model(const model *a, const model *b) {
  return !memcmp(a->emb, b->emb, sizeof a->emb) && !memcmp(a->w, b->w, sizeof a->w) &&
         !memcmp(a->b, b->b, sizeof a->b);
}

static kd_optim *make_optim(model *m, kd_optim_kind kind) {
  kd_optim_config c = kd_optim_defaults(kind);
  kd_optim *o = NULL;
  CHECK(kd_optim_create(&c, m->p, 3, &o, err, sizeof err) == KD_OK);
  return o;
}

static int files_equal(const char *a, const char *b) {
  size_t na, nb;
  unsigned char *x = read_bytes(a, &na), *y = read_bytes(b, &nb);
  int eq = x && y && na == nb && memcmp(x, y, na) == 0;
  free(x);
  free(y);
  return eq;
}

static void test_roundtrip_and_resume(void) {
  char pa[512], pb[512];
  tmpdir_file(pa, sizeof pa, "a.safetensors");
  tmpdir_file(pb, sizeof pb, "b.safetensors");
  model run;
  model_init(&run, 0.3f);
  kd_optim *o = make_optim(&run, KD_OPTIM_ADAMW);
  kd_rng rng;
  kd_rng_seed(&rng, 42);
  for (int s = 0; s < 3; s++) train_step(&run, o, &rng);
  kd_ckpt_info info = {.step = 3, .seed = 42, .rng = rng};
  CHECK(kd_ckpt_save(pa, run.p, 3, o, &info, err, sizeof err) == KD_OK);

  /* What the file says, read back with the plain safetensors reader. */
  kd_safetensors *st;
  CHECK(kd_st_open(pa, &st, err, sizeof err) == KD_OK);
  CHECK(kd_st_count(st) == 9); /* 3 parameters, m and v of each */
  CHECK(kd_st_find(st, "optim.m.head.weight") && kd_st_find(st, "optim.v.head.bias"));
  CHECK(!strcmp(kd_st_metadata_get(st, "step"), "3") && !strcmp(kd_st_metadata_get(st, "seed"), "42"));
  CHECK(!strcmp(kd_st_metadata_get(st, "optim"), "adamw"));
  CHECK(!strcmp(kd_st_metadata_get(st, "optim.step"), "3"));
  const kd_st_tensor *t = kd_st_find(st, "optim.m.head.weight");
  float m0;
  memcpy(&m0, t->data, sizeof m0);
  CHECK(m0 == kd_optim_moment(o, 1, 0)[0]);
  kd_st_close(st);

  /* Load into a fresh model and optimiser, save again: the same bytes. */
  model back;
  model_init(&back, -1.0f);
  kd_optim *o2 = make_optim(&back, KD_OPTIM_ADAMW);
  kd_ckpt_info got;
  memset(&got, 0xff, sizeof got);
  CHECK(kd_ckpt_load(pa, back.p, 3, o2, &got, err, sizeof err) == KD_OK);
  CHECK(same_model(&run, &back));
  CHECK(got.step == 3 && got.seed == 42 && !memcmp(&got.rng, &rng, sizeof rng));
  CHECK(kd_optim_steps(o2) == 3);
  CHECK(kd_ckpt_save(pb, back.p, 3, o2, &got, err, sizeof err) == KD_OK);
  CHECK(files_equal(pa, pb));
  model snap = back;

  /* Resume: two more steps from the loaded state, and from the running
     one, give bit-identical parameters (moments, bias correction's t and
     the generator all came back). */
  kd_rng rng2 = got.rng;
  for (int s = 0; s < 2; s++) {
    train_step(&run, o, &rng);
    train_step(&back, o2, &rng2);
  }
  CHECK(same_model(&run, &back));
  CHECK(!memcmp(kd_optim_moment(o, 0, 1), kd_optim_moment(o2, 0, 1), sizeof run.emb));

  /* Weights only: loading with no optimiser ignores the moments. */
  model w;
  model_init(&w, 7.0f);
  CHECK(kd_ckpt_load(pa, w.p, 3, NULL, NULL, err, sizeof err) == KD_OK);
  CHECK(same_model(&w, &snap));
  kd_optim_free(o);
  kd_optim_free(o2);
}

/* A crash between writing the temporary and renaming it. */
static void test_crash_before_rename(void) {
  char path[512];
  tmpdir_file(path, sizeof path, "crash.safetensors");
  model m;
  model_init(&m, 0.25f);
  kd_optim *o = make_optim(&m, KD_OPTIM_ADAM);
  kd_ckpt_info info = {.step = 100, .seed = 1};
  kd_rng_seed(&info.rng, 1);
  CHECK(kd_ckpt_save(path, m.p, 3, o, &info, err, sizeof err) == KD_OK);
  size_t n_old;
  unsigned char *old = read_bytes(path, &n_old);

  /* The next save gets as far as a full, synced temporary file (the new
     checkpoint's bytes, made at step 200 elsewhere) and the process dies
     before rename: kd_atomic_begin's temporary is written and closed, and
     nothing else happens. */
  char other[512];
  tmpdir_file(other, sizeof other, "new-elsewhere.safetensors");
  m.w[0] = 99;
  info.step = 200;
  CHECK(kd_ckpt_save(other, m.p, 3, o, &info, err, sizeof err) == KD_OK);
  size_t n_new;
  unsigned char *fresh = read_bytes(other, &n_new);
  kd_atomic_file af;
  CHECK(kd_atomic_begin(&af, path, err, sizeof err) == KD_OK);
  fwrite(fresh, 1, n_new, af.f);
  fflush(af.f);
  fclose(af.f); /* the crash: no commit, the temporary stays behind */
  free(af.tmp);
  free(af.path);
  CHECK(tmpdir_count("crash.safetensors.tmp.") == 1);

  size_t n_now;
  unsigned char *now = read_bytes(path, &n_now);
  CHECK(now && n_now == n_old && memcmp(now, old, n_old) == 0);
  model r;
  model_init(&r, 0);
  kd_optim *o2 = make_optim(&r, KD_OPTIM_ADAM);
  kd_ckpt_info got;
  CHECK(kd_ckpt_load(path, r.p, 3, o2, &got, err, sizeof err) == KD_OK);
  CHECK(got.step == 100 && r.w[0] == 0.25f);

  /* The next successful save replaces it; the stray temporary is harmless. */
  CHECK(kd_ckpt_save(path, m.p, 3, o, &info, err, sizeof err) == KD_OK);
  CHECK(kd_ckpt_load(path, r.p, 3, o2, &got, err, sizeof err) == KD_OK);
  CHECK(got.step == 200 && r.w[0] == 99);
  CHECK(tmpdir_count("crash.safetensors.tmp.") == 1);
  free(old);
  free(fresh);
  free(now);
  kd_optim_free(o);
  kd_optim_free(o2);
}

/* Loads path into m (AdamW) expecting failure with needle in the message
   and the model untouched. */
static void expect_refused(const char *path, model *m, kd_optim *o, const char *needle) {
  model before = *m;
  err[0] = '\0';
  CHECK(kd_ckpt_load(path, m->p, 3, o, NULL, err, sizeof err) == KD_ERR_FORMAT);
  if (!strstr(err, needle)) fprintf(stderr, "message '%s' lacks '%s'\n", err, needle);
  CHECK(strstr(err, needle) != NULL);
  CHECK(same_model(&before, m));
}

static void test_mismatches(void) {
  char path[512], wonly[512], sgd[512];
  tmpdir_file(path, sizeof path, "ref.safetensors");
  tmpdir_file(wonly, sizeof wonly, "weights.safetensors");
  tmpdir_file(sgd, sizeof sgd, "sgd.safetensors");
  model m;
  model_init(&m, 0.5f);
  kd_optim *o = make_optim(&m, KD_OPTIM_ADAMW);
  kd_ckpt_info info = {.step = 1};
  CHECK(kd_ckpt_save(path, m.p, 3, o, &info, err, sizeof err) == KD_OK);
  CHECK(kd_ckpt_save(wonly, m.p, 3, NULL, &info, err, sizeof err) == KD_OK);
  kd_optim_config sc = kd_optim_defaults(KD_OPTIM_SGD);
  sc.momentum = 0.9f;
  kd_optim *os;
  CHECK(kd_optim_create(&sc, m.p, 3, &os, err, sizeof err) == KD_OK);
  CHECK(kd_ckpt_save(sgd, m.p, 3, os, &info, err, sizeof err) == KD_OK);

  model x;
  model_init(&x, 2.0f);
  kd_optim *ox = make_optim(&x, KD_OPTIM_ADAMW);
  /* A model whose head is [3, 4]: the message names the tensor and both shapes. */
  x.p[1].shape[0] = 3;
  x.p[1].shape[1] = 4;
  expect_refused(path, &x, ox, "tensor 'head.weight' is F32 [4, 3] in the checkpoint but F32 [3, 4] in the model");
  x.p[1].shape[0] = 4;
  x.p[1].shape[1] = 3;
  /* A renamed parameter: the checkpoint's name is unknown. */
  x.p[2].name = "head.b";
  expect_refused(path, &x, NULL, "tensor 'head.bias' is not in the model");
  x.p[2].name = "head.bias";
  /* A model with fewer parameters. */
  CHECK(kd_ckpt_load(path, x.p, 2, NULL, NULL, err, sizeof err) == KD_ERR_FORMAT);
  CHECK(strstr(err, "'head.bias' is not in the model") != NULL);
  /* Weights only, but the run wants AdamW state. */
  expect_refused(wonly, &x, ox, "the checkpoint holds none state, the run uses adamw");
  /* SGD state into an AdamW run. */
  expect_refused(sgd, &x, ox, "the checkpoint holds sgd state, the run uses adamw");
  /* A safetensors file that is not a checkpoint. */
  char plain[512];
  tmpdir_file(plain, sizeof plain, "plain.safetensors");
  kd_st_tensor t = {.name = "w", .dtype = KD_ST_F32, .rank = 1, .shape = {1}, .data = x.b, .nbytes = 4};
  CHECK(kd_st_write(plain, &t, 1, NULL, 0, err, sizeof err) == KD_OK);
  expect_refused(plain, &x, NULL, "not a kdc checkpoint");
  /* A torn file (what a non-atomic writer leaves): the reader refuses it. */
  size_t n;
  unsigned char *b = read_bytes(path, &n);
  char torn[512];
  write_bytes(tmpdir_file(torn, sizeof torn, "torn.safetensors"), b, n / 2);
  CHECK(kd_ckpt_load(torn, x.p, 3, ox, NULL, err, sizeof err) == KD_ERR_FORMAT);
  free(b);
  /* An optimiser over the parameters in another order is a caller's bug. */
  kd_param swapped[3] = {x.p[1], x.p[0], x.p[2]};
  CHECK(kd_ckpt_load(path, swapped, 3, ox, NULL, err, sizeof err) == KD_ERR_INVALID);
  CHECK(strstr(err, "parameter 0 is 'head.weight' in the model but 'tok_emb.weight' in the optimiser") != NULL);
  CHECK(kd_ckpt_save(path, swapped, 3, ox, &info, err, sizeof err) == KD_ERR_INVALID);
  /* And the good file still loads into the same model. */
  CHECK(kd_ckpt_load(path, x.p, 3, ox, NULL, err, sizeof err) == KD_OK);
  CHECK(x.w[0] == 0.5f);
  kd_optim_free(o);
  kd_optim_free(os);
  kd_optim_free(ox);
}

int main(void) {
  if (!tmpdir_make()) {
    perror("mkdtemp");
    return 1;
  }
  test_roundtrip_and_resume();
  test_crash_before_rename();
  test_mismatches();
  tmpdir_remove();
  return check_exit("test_checkpoint");
}
