// The coupled scan kernels compiled for AVX-512F + DQ (64-byte vectors), x86-64 only; see
// scan_isa_avx2.cpp for why a pragma and run-time selection keep the library portable.
#include <cstdint>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include "scan_common.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma")
#endif

#define SCAN_NS coupled_scan_avx512
#define SCAN_VBYTES 64
#define SCAN_ISA_NAME "avx512"
#include "scan_kernel_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif
