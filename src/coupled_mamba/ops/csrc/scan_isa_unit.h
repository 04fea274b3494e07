// One instruction set's translation unit: compiles scan_kernel_impl.h under a target pragma for
// SCAN_TARGET (a string such as "avx2,fma"), for this file's own code only (the includer has
// included every system header before). Included by scan_isa_avx2.cpp and scan_isa_avx512.cpp
// after they define SCAN_TARGET, SCAN_NS, SCAN_VBYTES and SCAN_ISA_NAME.
#define SCAN_STRINGIFY(x) #x
#define SCAN_PRAGMA(x) _Pragma(SCAN_STRINGIFY(x))

#if defined(__clang__)
SCAN_PRAGMA(clang attribute push(__attribute__((target(SCAN_TARGET))), apply_to = function))
#elif defined(__GNUC__)
#pragma GCC push_options
SCAN_PRAGMA(GCC target(SCAN_TARGET))
#endif

#include "scan_kernel_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
