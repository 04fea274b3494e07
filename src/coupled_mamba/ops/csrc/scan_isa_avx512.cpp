// The coupled scan kernels compiled for AVX-512F + DQ (64-byte vectors), x86-64 only; see
// scan_isa_avx2.cpp for why a pragma and run-time selection keep the library portable.
#include <cstdint>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include "scan_common.h"

#define SCAN_TARGET "avx512f,avx512dq,avx2,fma"
#define SCAN_NS coupled_scan_avx512
#define SCAN_VBYTES 64
#define SCAN_ISA_NAME "avx512"
#include "scan_isa_unit.h"
#endif
