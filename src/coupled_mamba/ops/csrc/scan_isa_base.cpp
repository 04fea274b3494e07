// The coupled scan kernels for the baseline instruction set of the compiler's default target
// (SSE2 on x86-64, NEON on aarch64): 16-byte vectors. Always built; the fallback everywhere.
#include <cstdint>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include "scan_common.h"

#define SCAN_NS coupled_scan_base
#define SCAN_VBYTES 16
#define SCAN_ISA_NAME "base"
#include "scan_kernel_impl.h"
