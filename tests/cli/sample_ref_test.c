/* `kdc sample --temperature 0` against the reference executor.
 *
 * Usage: sample_ref_test KDC SPEC WORK_DIR
 *
 * Writes weights for SPEC's `student` (its init, scaled up so the logits
 * spread over several units instead of a few hundredths and the likeliest
 * token wins by a clear margin), runs the kdc binary greedily from a short
 * prompt on past the window's length (8), and recomputes every token here:
 * the model's graph (passes/lower_model.h) in double by ir/refexec.h on the
 * last min(len, T) tokens of the context, NOT padded (the symbol T takes the
 * window's length), then the argmax at the last position. So the test checks
 * the step program's forward pass, the sliding window and the claim that
 * zero padding after the last real token changes nothing (causal attention).
 * (Reading the logits at position T - 1 instead of the last real one fails
 * here on the first token.)
 *
 * Tolerance: the step program computes in f32. Its logits here are a few
 * units, each the end of sums of 16 to 64 terms through one block, so f32
 * rounding moves them by an estimated 1e-5 at most (a few ulps per op, tens
 * of ops deep), two orders below MARGIN. A token whose two likeliest
 * candidates are closer than MARGIN in the reference is a tie the f32
 * program may break either way: the comparison stops there and says so. The
 * smallest gap met is printed (with these weights all 12 tokens compare).
 * At least MIN_COMPARED tokens must be compared, so the test cannot pass by
 * stopping at once. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lower_model.h"
#include "model_params.h"
#include "refexec.h"

#define MARGIN 1e-3
#define MIN_COMPARED 8
#define NTOKENS 12
#define PROMPT "Hi" /* 2 bytes: windows of 2 .. 7 tokens padded, then full ones sliding */
#define SCALE 25.0            /* normal(0, 0.02) becomes std 0.5 */

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: sample_ref_test KDC SPEC WORK_DIR\n");
    return 2;
  }
  const char *kdc = argv[1], *spec = argv[2], *work = argv[3];
  char path[1024], cmd[4096], err[4096];
  snprintf(path, sizeof path, "%s/ref.safetensors", work);

  kd_diag *diag = kd_diag_new(stderr);
  kd_program *prog = NULL;
  kd_check_options opts = {.no_file_check = true};
  kd_model m = {0};
  kd_params P = {0};
  const kd_symbol *inst;
  if (!diag || kd_check_file(spec, &opts, diag, &prog) != KD_OK ||
      !(inst = kd_program_lookup(prog, "student")) ||
      kd_lower_model(prog, inst, diag, &m) != KD_OK) {
    fprintf(stderr, "FAIL: cannot lower %s's student\n", spec);
    return 1;
  }
  int64_t T = kd_program_data(prog)->data.seq, V = m.vocab;
  if (kd_model_params(&m, &P, err, sizeof err) || kd_params_alloc(&P, err, sizeof err) ||
      kd_params_init(&P, 7, err, sizeof err)) {
    fprintf(stderr, "FAIL: %s\n", err);
    return 1;
  }
  for (int i = 0; i < P.n; i++)
    if (P.t[i].init.kind == KD_PINIT_NORMAL)
      for (int64_t j = 0; j < P.t[i].numel; j++) kd_params_data(&P, i)[j] *= (float)SCALE;
  if (kd_params_save(&P, path, &(kd_params_meta){0}, err, sizeof err)) {
    fprintf(stderr, "FAIL: %s\n", err);
    return 1;
  }

  /* what kdc prints: the prompt, NTOKENS bytes, a newline */
  snprintf(cmd, sizeof cmd,
           "'%s' sample '%s' --spec '%s' --model student --prompt '" PROMPT
           "' --tokens %d --temperature 0",
           kdc, path, spec, NTOKENS);
  FILE *f = popen(cmd, "r");
  unsigned char out[256];
  size_t nout = f ? fread(out, 1, sizeof out, f) : 0;
  int status = f ? pclose(f) : -1;
  size_t plen = strlen(PROMPT);
  if (status != 0 || nout != plen + NTOKENS + 1 || memcmp(out, PROMPT, plen) ||
      out[nout - 1] != '\n') {
    fprintf(stderr, "FAIL: %s: status %d, %zu bytes\n", cmd, status, nout);
    return 1;
  }

  /* the reference, token by token on kdc's own context */
  int failures = 0, compared = 0;
  double min_gap = INFINITY;
  int64_t *tokens = malloc((size_t)T * sizeof *tokens);
  kd_ref_input *in = calloc((size_t)P.n + 1, sizeof *in);
  if (!tokens || !in) return 1;
  for (int i = 0; i < P.n; i++) {
    const kd_ptensor *t = &P.t[i];
    in[i + 1] = (kd_ref_input){.name = t->name, .dtype = KD_F32, .rank = t->rank,
                               .data = kd_params_data(&P, i)};
    memcpy(in[i + 1].shape, t->shape, sizeof(int64_t) * (size_t)t->rank);
  }
  size_t nouts = kd_graph_noutputs(m.g);
  kd_ref_value *vals = calloc(nouts, sizeof *vals);
  int logits = -1;
  for (size_t i = 0; i < nouts; i++)
    if (!strcmp(kd_graph_output_name(m.g, i), "logits")) logits = (int)i;
  if (!vals || logits < 0) return 1;
  for (size_t len = plen; len < plen + NTOKENS; len++) {
    size_t n = len < (size_t)T ? len : (size_t)T, start = len - n;
    for (size_t t = 0; t < n; t++) tokens[t] = out[start + t];
    in[0] = (kd_ref_input){.name = "tokens", .dtype = KD_I64, .rank = 2, .shape = {1, (int64_t)n},
                           .data = tokens};
    if (kd_ref_exec(m.g, in, (size_t)P.n + 1, vals, err, sizeof err) != KD_OK) {
      fprintf(stderr, "FAIL: the reference executor: %s\n", err);
      return 1;
    }
    const double *row = vals[logits].data + (n - 1) * (size_t)V;
    int64_t best = 0, second = -1;
    for (int64_t v = 1; v < V; v++) {
      if (row[v] > row[best]) second = best, best = v;
      else if (second < 0 || row[v] > row[second]) second = v;
    }
    double gap = row[best] - row[second];
    for (size_t i = 0; i < nouts; i++) kd_ref_value_free(&vals[i]);
    if (gap < MARGIN) {
      printf("token %zu: a near tie in the reference (%g); compared %d\n", len - plen, gap,
             compared);
      break;
    }
    compared++;
    if (gap < min_gap) min_gap = gap;
    if (out[len] != best) {
      fprintf(stderr, "FAIL: token %zu: kdc sampled %d, the reference's argmax is %lld\n",
              len - plen, out[len], (long long)best);
      failures++;
    }
  }
  if (compared < MIN_COMPARED) {
    fprintf(stderr, "FAIL: only %d tokens compared (want %d)\n", compared, MIN_COMPARED);
    failures++;
  }
  printf("%d tokens compared (smallest top-two gap %.4g), %d mismatches\n", compared, min_gap,
         failures);
  free(vals);
  free(in);
  free(tokens);
  kd_params_free(&P);
  kd_model_free(&m);
  kd_program_free(prog);
  kd_diag_free(diag);
  return failures ? 1 : 0;
}
