/* The runtime a training binary links: the bytes of a static archive of
 * every runtime source, compiled position independent
 * (runtime/CMakeLists.txt, kdc_runtime_aot). `kdc build` writes it out and
 * links it with the generated main and the loss objects. */
#ifndef KDC_TRAINARCHIVE_H
#define KDC_TRAINARCHIVE_H

#include <stddef.h>

extern const unsigned char kd_trainarchive[]; /* [kd_trainarchive_size] bytes, an ar archive */
extern const size_t kd_trainarchive_size;

#endif /* KDC_TRAINARCHIVE_H */
