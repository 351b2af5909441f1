/* A stand-in libcuda for machines without a GPU: it exports every symbol
 * runtime/cuda.c looks up, and each answers CUDA_ERROR_NO_DEVICE (100)
 * without setting anything, as a driver with no GPU behind it would. It
 * checks symbol loading and the no-device path; it runs no kernels. */
#include "cuda.h"

#define KD_CU_FN(name, params) kd_cu_result name params;
#include "cuda_api.def"
#undef KD_CU_FN

#define KD_CU_FN(name, params) \
  kd_cu_result name params { return 100; }
#include "cuda_api.def"
#undef KD_CU_FN
