// Accuracy of the CPU kernel's float exp2 (vexp2 in src/coupled_mamba/ops/csrc/scan_vec.h)
// for each instruction set, against exp2 in double: maximum error in ulp (of the exact result)
// and maximum relative error, over every 8th float in [-125, 128). Not part of the test suite
// (it sweeps 250 million values); the kernel's end-to-end accuracy is tested against the
// reference scan in tests/ops. Build and run (x86-64, from the repository root):
//
//   g++ -O2 -std=c++20 -ffp-contract=fast -Isrc/coupled_mamba/ops/csrc
//       benchmarks/exp_ulp.cpp -o /tmp/exp_ulp && /tmp/exp_ulp      (one line)
//
// -ffp-contract=fast as in the extension's build (_cpu.py), so a * b + c becomes an FMA.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

// Each unit defines the kernels of one instruction set in its own namespace.
#include "scan_isa_avx2.cpp"
#undef SCAN_NS
#undef SCAN_VBYTES
#undef SCAN_ISA_NAME
#include "scan_isa_avx512.cpp"
#undef SCAN_NS
#undef SCAN_VBYTES
#undef SCAN_ISA_NAME
#include "scan_isa_base.cpp"

// exp2 of W floats, by one ISA's vexp2. Vectors cross no function boundary here: a vector
// argument of a wider ISA cannot be passed from code compiled for the base target.
#define EXP2_OF(ns, target_attr)                                              \
  target_attr static void exp2_##ns(const float* in, float* out) {          \
    ns::VF v;                                                                \
    std::memcpy(&v, in, sizeof v);                                           \
    const ns::VF r = ns::vexp2(v);                                           \
    std::memcpy(out, &r, sizeof r);                                          \
  }
EXP2_OF(coupled_scan_base, )
EXP2_OF(coupled_scan_avx2, __attribute__((target("avx2,fma"))))
EXP2_OF(coupled_scan_avx512, __attribute__((target("avx512f,avx512dq,avx2,fma"))))

static void sweep(const char* name, int W, void (*exp2v)(const float*, float*)) {
  double max_ulp = 0, max_rel = 0, worst = 0;
  long count = 0;
  float in[16], out[16];
  for (float x = -125.0f; x < 128.0f;) {
    for (int k = 0; k < W; ++k) {
      in[k] = x;
      for (int s = 0; s < 8; ++s) x = std::nextafter(x, 128.0f);
    }
    exp2v(in, out);
    for (int k = 0; k < W; ++k) {
      const double e = std::exp2(double(in[k]));
      if (e < 1.2e-38 || e > 3.4e38) continue;  // outside the normal float range
      const double err = std::fabs(double(out[k]) - e);
      const double ulp = err / std::ldexp(1.0, std::ilogb(e) - 23);
      if (ulp > max_ulp) { max_ulp = ulp; worst = in[k]; }
      if (err / e > max_rel) max_rel = err / e;
      ++count;
    }
  }
  std::printf("%-7s max %.2f ulp (at x = %.9g), max relative error %.3g, %ld values\n", name,
              max_ulp, worst, max_rel, count);
}

int main() {
  // The kernels run with flush-to-zero (FlushToZero in scan_kernel_impl.h); so does this sweep.
  _mm_setcsr(_mm_getcsr() | 0x8000u);
  sweep("base", 4, exp2_coupled_scan_base);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    sweep("avx2", 8, exp2_coupled_scan_avx2);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
    sweep("avx512", 16, exp2_coupled_scan_avx512);
}
