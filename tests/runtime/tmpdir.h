/* A scratch folder per test run, removed (with its plain files) at the end. */
#ifndef KD_TEST_TMPDIR_H
#define KD_TEST_TMPDIR_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir_path[256];

static inline const char *tmpdir_make(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir_path, sizeof tmpdir_path, "%s/kdc-test-XXXXXX", base && *base ? base : "/tmp");
  return mkdtemp(tmpdir_path);
}

/* The path of name inside the scratch folder, written into buf. */
static inline const char *tmpdir_file(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", tmpdir_path, name);
  return buf;
}

/* Files in the folder whose name contains needle. */
static inline int tmpdir_count(const char *needle) {
  DIR *d = opendir(tmpdir_path);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, needle) != NULL;
  if (d) closedir(d);
  return n;
}

static inline void tmpdir_remove(void) {
  DIR *d = opendir(tmpdir_path);
  char p[512];
  for (struct dirent *e; d && (e = readdir(d));) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(p, sizeof p, "%s/%s", tmpdir_path, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(tmpdir_path);
}

/* Writes len bytes to path; returns 0 on success. */
static inline int write_bytes(const char *path, const void *buf, size_t len) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  int ok = fwrite(buf, 1, len, f) == len;
  return fclose(f) == 0 && ok ? 0 : -1;
}

/* Reads a whole file into a malloc'd buffer; NULL on failure. */
static inline unsigned char *read_bytes(const char *path, size_t *len) {
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

#endif /* KD_TEST_TMPDIR_H */
