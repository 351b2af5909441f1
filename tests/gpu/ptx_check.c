/* ptx_check KDC SPEC SM DTYPE FILECHECK CHECKFILE OUTDIR
 *
 * One divergence compiled to PTX by `kdc compile-loss --target ptx` and
 * checked without a GPU:
 *   - FileCheck (CHECKFILE) on the text: the SM, 4-wide global loads and
 *     warp shuffles in the row kernels, no local memory anywhere;
 *   - the gradient's 4-wide stores: st.global.v4.f32, or for DTYPE
 *     bf16grad (f32 logits, --grad-dtype bf16) cvt.rn.bf16.f32 and
 *     st.global.v4.b16;
 *   - loops over the row: in the row kernels, the distinct targets of
 *     backward branches are 2 per pass of the schedule (the 4-wide loop and
 *     the one-column loop; `kdc emit-ir --after fuse` gives the passes);
 *   - ptxas -v assembles it for SM with 0 bytes of stack, spill stores and
 *     spill loads in every kernel.
 * ptxas is looked up on PATH and in $CUDA_HOME/bin; without it the test
 * exits 77 (ctest: skipped) after the checks that need no ptxas. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SKIPPED 77

static int failures;

static void fail(const char *fmt, const char *a, const char *b) {
  printf("FAIL: ");
  printf(fmt, a, b);
  printf("\n");
  failures++;
}

/* The output of a shell command (malloc'd), and its exit status in *rc. */
static char *run(const char *cmd, int *rc) {
  FILE *p = popen(cmd, "r");
  if (!p) return NULL;
  size_t len = 0, cap = 1 << 16;
  char *out = malloc(cap);
  size_t n;
  while (out && (n = fread(out + len, 1, cap - len - 1, p)) > 0) {
    len += n;
    if (cap - len < 4096) out = realloc(out, cap *= 2);
  }
  int st = pclose(p);
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  if (out) out[len] = 0;
  return out;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
    free(s);
    s = NULL;
  }
  if (s) s[n] = 0;
  fclose(f);
  return s;
}

static int contains(const char *s, size_t len, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= len; i++)
    if (!memcmp(s + i, needle, n)) return 1;
  return 0;
}

/* Loops in the row kernels: distinct labels that a branch jumps back to. */
static int row_loops(const char *ptx) {
  enum { MAXL = 4096 };
  static char seen[MAXL][64], heads[MAXL][64];
  int nseen = 0, nheads = 0, total = 0, in_row = 0;
  for (const char *line = ptx; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    char buf[64]; /* labels ($L__BB12_345) and the start of an instruction */
    snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf - 1 ? len : sizeof buf - 1), line);
    char *lab;
    if (len > 7 && contains(line, len, ".entry ")) {
      total += nheads;
      nseen = nheads = 0;
      in_row = contains(line, len, "_row");
    } else if (buf[0] == '$' && (lab = strchr(buf, ':')) && nseen < MAXL) {
      *lab = 0;
      snprintf(seen[nseen++], 64, "%s", buf);
    } else if (in_row && (lab = strstr(buf, "bra")) && (lab = strchr(lab, '$'))) {
      lab[strcspn(lab, "; \t")] = 0;
      int back = 0, dup = 0;
      for (int i = 0; i < nseen; i++) back |= !strcmp(seen[i], lab);
      for (int i = 0; i < nheads; i++) dup |= !strcmp(heads[i], lab);
      if (back && !dup && nheads < MAXL) snprintf(heads[nheads++], 64, "%s", lab);
    }
    line = end ? end + 1 : NULL;
  }
  return total + (in_row ? nheads : 0);
}

/* ptxas on PATH or in $CUDA_HOME/bin, or NULL */
static const char *find_ptxas(char *buf, size_t cap) {
  int rc;
  char *p = run("command -v ptxas 2>/dev/null", &rc);
  if (p && rc == 0 && p[0]) {
    p[strcspn(p, "\n")] = 0;
    snprintf(buf, cap, "%s", p);
    free(p);
    return buf;
  }
  free(p);
  const char *home = getenv("CUDA_HOME");
  if (home) {
    snprintf(buf, cap, "%s/bin/ptxas", home);
    if (access(buf, X_OK) == 0) return buf;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 8) {
    printf("usage: ptx_check KDC SPEC SM DTYPE FILECHECK CHECKFILE OUTDIR\n");
    return 2;
  }
  const char *kdc = argv[1], *spec = argv[2], *sm = argv[3], *dtype = argv[4], *filecheck = argv[5],
             *checkfile = argv[6], *outdir = argv[7];
  const char *base = strrchr(spec, '/') ? strrchr(spec, '/') + 1 : spec;
  char ptx_path[1024], cmd[4096];
  snprintf(ptx_path, sizeof ptx_path, "%s/%.*s.%s.%s.ptx", outdir, (int)strcspn(base, "."), base, sm, dtype);
  int rc;
  int grad16 = !strcmp(dtype, "bf16grad");
  snprintf(cmd, sizeof cmd, "'%s' compile-loss '%s' --target ptx --gpu %s %s -o '%s' 2>&1", kdc, spec, sm,
           grad16 ? "--grad-dtype bf16" : !strcmp(dtype, "bf16") ? "--dtype bf16" : "--dtype f32", ptx_path);
  char *out = run(cmd, &rc);
  if (rc != 0) {
    printf("FAIL: %s\n%s", cmd, out ? out : "");
    return 1;
  }
  free(out);
  char *ptx = slurp(ptx_path);
  if (!ptx) {
    printf("FAIL: no %s\n", ptx_path);
    return 1;
  }

  snprintf(cmd, sizeof cmd, "'%s' -DSM=%s -DLOAD=%s '%s' < '%s' 2>&1", filecheck, sm,
           strcmp(dtype, "bf16") ? "f32" : "u16", checkfile, ptx_path);
  out = run(cmd, &rc);
  if (rc != 0) fail("FileCheck %s:\n%s", checkfile, out ? out : "");
  free(out);
  size_t plen = strlen(ptx);
  if (grad16 ? !contains(ptx, plen, "cvt.rn.bf16.f32") || !contains(ptx, plen, "st.global.v4.b16")
             : !contains(ptx, plen, "st.global.v4.f32"))
    fail("no 4-wide %s gradient stores in %s", grad16 ? "bf16" : "f32", ptx_path);

  snprintf(cmd, sizeof cmd, "'%s' emit-ir '%s' --after fuse 2>&1", kdc, spec);
  out = run(cmd, &rc);
  const char *sched = out ? strstr(out, "schedule: ") : NULL;
  int stages = 0, passes = -1;
  if (!sched || sscanf(sched, "schedule: %d stages, %d passes", &stages, &passes) != 2)
    fail("no schedule from %s%s", cmd, "");
  free(out);
  int loops = row_loops(ptx);
  if (passes >= 0 && loops != 2 * passes) {
    char a[64], b[64];
    snprintf(a, sizeof a, "%d", loops);
    snprintf(b, sizeof b, "%d", 2 * passes);
    fail("%s loops over the row in the row kernels, expected %s (2 a pass)", a, b);
  }
  free(ptx);

  char ptxas[1024];
  if (!find_ptxas(ptxas, sizeof ptxas)) {
    printf(failures ? "FAILED\n" : "SKIPPED: ptxas not found (PATH, $CUDA_HOME/bin); the text checks passed\n");
    return failures ? 1 : SKIPPED;
  }
  snprintf(cmd, sizeof cmd, "'%s' -v -arch=%s '%s' -o /dev/null 2>&1", ptxas, sm, ptx_path);
  out = run(cmd, &rc);
  if (rc != 0 || !out) {
    fail("ptxas rejects %s:\n%s", ptx_path, out ? out : "");
  } else {
    int kernels = 0, clean = 0;
    for (const char *p = out; (p = strstr(p, "Function properties for")); p++) kernels++;
    for (const char *p = out; (p = strstr(p, "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads")); p++)
      clean++;
    if (kernels == 0 || clean != kernels) fail("stack or spills in %s:\n%s", ptx_path, out);
  }
  free(out);
  printf(failures ? "FAILED\n" : "ok\n");
  return failures != 0;
}
