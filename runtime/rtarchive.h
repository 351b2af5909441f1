/* The runtime a loss library carries: the bytes of a static archive of
 * lossapi.c, lossrun.c, threadpool.c, status.c and dtype.c, compiled position
 * independent with hidden symbols (runtime/CMakeLists.txt). `kdc compile-loss`
 * writes it out and links it into libNAME.so, or copies it into libNAME.a. */
#ifndef KD_RTARCHIVE_H
#define KD_RTARCHIVE_H

#include <stddef.h>

extern const unsigned char kd_rtarchive[]; /* [kd_rtarchive_size] bytes, an ar archive */
extern const size_t kd_rtarchive_size;

#endif /* KD_RTARCHIVE_H */
