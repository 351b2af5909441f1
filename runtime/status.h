/* kdc status codes, shared by every library layer.
 *
 * Library code returns one of these and never exits; only the command-line
 * tool turns them into exit codes. Zero is success. */
#ifndef KD_STATUS_H
#define KD_STATUS_H

typedef enum kd_status {
  KD_OK = 0,
  KD_ERR_SYNTAX,      /* the .kd text does not parse */
  KD_ERR_SEMANTIC,    /* it parses but a check failed (diagnostics printed) */
  KD_ERR_IO,          /* a file could not be read or written */
  KD_ERR_FORMAT,      /* a data file (.npy, .safetensors, ...) is malformed */
  KD_ERR_INVALID,     /* an argument or input value is out of range */
  KD_ERR_UNSUPPORTED, /* valid, but not implemented for this target */
  KD_ERR_NOMEM,       /* an allocation failed */
  KD_ERR_BACKEND,     /* LLVM or the CUDA driver reported an error */
  KD_STATUS_COUNT
} kd_status;

/* A short, static, lower-case description such as "syntax error". */
const char *kd_status_str(kd_status s);

#endif /* KD_STATUS_H */
