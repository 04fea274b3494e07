// Coupled selective scan kernels, forward and reverse-pass backward (docs/MATH.md, section 2).
//
//   dt      = softplus(delta + bias)                      (each optional)
//   Abar    = exp(dt A),  bbar = dt B u                   per (m, b, d, n, t)
//   h[t][m] = Abar[t][m] * sum_k W[m, k] h[t-1][k] + bbar[t][m]
//   y[t][m] = sum_n C[m, n, t] h[t][m, n] + D[m] u[t][m];   y *= silu(z)
//
// Shapes: M modalities, Bt batch, D channels, N state (Np padded to the vector width), L length,
// T chunk length. Included by scan_isa_*.cpp with SCAN_NS (namespace), SCAN_VBYTES (vector bytes)
// and SCAN_ISA_NAME defined, inside a target pragma. Design (docs/cpu_kernel.md), in short:
//
// - Vectors run over the state index n (GCC vector extensions, VBYTES wide); time is sequential.
// - Work unit: one (b, d) with all M modalities (coupling mixes modalities at equal (b, d, n)).
//   A task owns batch rows x a channel range; inside it the loop order is b -> chunk -> d, so the
//   chunk of B, C (and of dB, dC in the backward) stays in cache while all channels pass over it.
// - Couplings: rank one ("mean", "sum") carries only S[t] = sum_m h[t][m] (the single recurrence
//   of docs/MATH.md section 2.1: every h[t][m] = Abar (w/M) S[t-1] + bbar is pointwise); "none"
//   is the same code with one modality at a time; a general W carries the M states and does the
//   M x M mix.
// - The forward writes the state at each chunk start ("saved", 1/T of the states) when a backward
//   will follow. The backward walks chunks in reverse: recompute the chunk's states from the saved
//   one into a small buffer (T x M x Np, with Abar), then run the reverse recurrence over it.
// - The kernels use A2 = A log2(e) (formed by the host for the general kernel, by pack_a for the
//   others), so Abar = 2^(dt A2): our own vectorised exp2 (rounding to an integer, a degree-5
//   (AVX-512) or degree-6 polynomial, then the power of two; at most 2.4 ulp in float).
// - Sums over n (y = C.h and two sums of the backward) are kept as vectors per step and reduced
//   for a whole chunk at once (a transpose-and-add), not one horizontal sum per step.
// - Pointwise work (softplus, dt u, the gate) runs per (m, b, d) chunk row, except in the
//   forward of a sequence of one chunk (L <= T, rank one and "none"): there it runs over flat
//   arrays of many channels at once (flat_prep).

#ifndef SCAN_NS
#error "define SCAN_NS, SCAN_VBYTES and SCAN_ISA_NAME before including scan_kernel_impl.h"
#endif

namespace SCAN_NS {

using coupled_scan::KernelTable;
using coupled_scan::ScanArgs;
using coupled_scan::TaskRange;

// The parts, in dependency order (each is included once, inside this namespace):
#include "scan_vec.h"   // vector types and math
#include "scan_rows.h"  // argument view, per-chunk rows, forward pointwise passes
#include "scan_flat.h"  // short-sequence flat passes
#include "scan_pack.h"  // scratch layout, packed operands
#include "scan_fwd.h"   // forward kernels
#include "scan_bwd.h"   // backward kernels

// One task: every batch row of the task, in the mode's kernel (forward or backward).
template <typename T, int MG, bool COUPLED, bool BWD>
static inline void rank1(const Ctx<T>& c, const TaskRange& r, int64_t b, int64_t m0, T wM,
                         T* carry, int64_t cstride, int64_t soff, T* rows, T* buf) {
  if (BWD) bwd_rank1<T, MG, COUPLED>(c, r, b, m0, wM, carry, cstride, soff, rows, buf);
  else fwd_rank1<T, MG, COUPLED>(c, r, b, m0, wM, carry, cstride, soff, rows, buf);
}

// Flush-to-zero (x86 MXCSR.FTZ) while a task runs: a result below the smallest normal number
// (2^-126 in float) becomes 0 instead of a denormal. Denormal results cost a microcode assist,
// many times the cost of the instruction (docs/cpu_kernel.md), and a decaying
// state or a very negative dt A produces them; they carry no information at that scale. Inputs
// are not touched (no DAZ). The caller's mode is restored when the task ends.
struct FlushToZero {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned saved;
  FlushToZero() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8000u); }
  ~FlushToZero() { _mm_setcsr(saved); }
#endif
};

template <typename T, bool BWD>
static void run_task(const ScanArgs& a, const TaskRange& r, void* scr) {
  FlushToZero ftz;  // restores the caller's mode on return
  Ctx<T> c(a);
  int64_t rows_off, buf_off;
  scratch_layout(a, BWD, &rows_off, &buf_off);
  T* base = (T*)scr;
  T *carry = base, *rows = base + rows_off, *buf = base + buf_off;
  const T wM = T(a.w / double(c.M));
  for (int64_t b = r.b0; b < r.b1; ++b) {
    if (a.mode == coupled_scan::kDiag) {
      // Packed per-modality states (c.S = M Np); M > 4: one modality at a time.
      switch (c.M) {
        case 1: rank1<T, 1, false, BWD>(c, r, b, 0, T(1), carry, c.S, 0, rows, buf); break;
        case 2: rank1<T, 2, false, BWD>(c, r, b, 0, T(1), carry, c.S, 0, rows, buf); break;
        case 3: rank1<T, 3, false, BWD>(c, r, b, 0, T(1), carry, c.S, 0, rows, buf); break;
        case 4: rank1<T, 4, false, BWD>(c, r, b, 0, T(1), carry, c.S, 0, rows, buf); break;
        default:
          for (int64_t m = 0; m < c.M; ++m)
            rank1<T, 1, false, BWD>(c, r, b, m, T(1), carry + m * c.Np, c.S, m * c.Np, rows,
                                    buf);
      }
    } else if (a.mode == coupled_scan::kRank1) {
      switch (c.M) {  // the host sends rank one with M > 4 as a general W
        case 1: rank1<T, 1, true, BWD>(c, r, b, 0, wM, carry, c.S, 0, rows, buf); break;
        case 2: rank1<T, 2, true, BWD>(c, r, b, 0, wM, carry, c.S, 0, rows, buf); break;
        case 3: rank1<T, 3, true, BWD>(c, r, b, 0, wM, carry, c.S, 0, rows, buf); break;
        default: rank1<T, 4, true, BWD>(c, r, b, 0, wM, carry, c.S, 0, rows, buf); break;
      }
    } else if (BWD) {
      bwd_general<T>(c, r, b, carry, rows, buf);
    } else {
      fwd_general<T>(c, r, b, carry, rows, buf);
    }
  }
}

const KernelTable table = {
    SCAN_ISA_NAME, SCAN_VBYTES, &scratch_elems,
    &run_task<float, false>, &run_task<double, false>, &run_task<float, true>,
    &run_task<double, true>,
};

}  // namespace SCAN_NS
