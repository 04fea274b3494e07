// The coupled scan kernels compiled for AVX2 + FMA (32-byte vectors), x86-64 only. The target is
// set by pragma for this file's own code only (system headers are included before it), and the
// host calls it only when the CPU reports avx2 and fma at run time, so the library still loads
// and runs on any x86-64.
#include <cstdint>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include "scan_common.h"

#define SCAN_TARGET "avx2,fma"
#define SCAN_NS coupled_scan_avx2
#define SCAN_VBYTES 32
#define SCAN_ISA_NAME "avx2"
#include "scan_isa_unit.h"
#endif
