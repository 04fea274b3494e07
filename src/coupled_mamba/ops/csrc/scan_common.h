// Shared, torch-free declarations of the compiled coupled selective scan (docs/MATH.md, section 2).
//
// Shapes: M modalities, Bt batch, D channels, N state size (Np: N padded to the vector width),
// L length, T chunk length. The host (scan_host.cpp) prepares contiguous buffers and calls one of
// the kernel tables below; each table is the same source (scan_kernel_impl.h) compiled for one
// instruction set in its own translation unit. This header holds only plain structs: it is
// included under different target pragmas, so it must not define functions (an inline function
// compiled for AVX-512 in one unit could be picked by the linker for a caller in the baseline unit).
#pragma once

#include <cstdint>

namespace coupled_scan {

// The same numbers as KIND_IDS in _coupling.py, which the Python side passes as "mode".
enum Mode : int { kDiag = 0, kRank1 = 1, kGeneral = 2 };

// Everything a kernel needs, as raw pointers (element type: float or double, by table entry).
// Layouts (all contiguous, row-major):
//   u, delta, z, y, dout, du, ddelta, dz: (M, Bt, D, L)
//   A, Bm, Cm for kDiag and kRank1: as the caller gave them, A (M, D, N), Bm, Cm (M, Bt, N, L);
//     those kernels scale, transpose and pad them while packing.
//   For kGeneral: A (M, D, Np) = A log2(e) zero-padded over n, Bm, Cm (M, Bt, L, Np) transposed,
//     zero-padded.
//   Dskip, bias: (M, D)                    W: (M, M)
//   init, last, dlast, dinit: (M, Bt, D, N); last may be null (the caller does not want it)
//   saved: (Bt, D, nchunks, S) with S = Np (rank1) or M * Np (diag, general): the state at the
//          start of each chunk, written by the forward when a backward will follow.
struct ScanArgs {
  int64_t M, Bt, D, N, Np, L, T, nchunks;
  int mode;
  double w;  // rank1 only: W = (w / M) 11^T
  bool softplus;
  const void *u, *delta, *A, *Bm, *Cm, *Dskip, *z, *bias, *init, *W;
  void *y, *last, *saved;
  // Backward only.
  const void *dout, *dlast;
  void *du, *ddelta, *dz, *dinit;
  // Reductions over batch (dA, dD, dbias) or over everything (dW) go to per-task slices:
  //   dA + task * M*D*Np, dD / dbias + task * M*D, dW + task * M*M.
  void *dA, *dD, *dbias, *dW;
  // dB, dC (reductions over channels): (M, Bt, L, Np) written directly when every task owns whole
  // batch rows (bc_private == false), else one (M, L, Np) slice per task.
  void *dB, *dC;
  bool bc_private;
};

// One work item: batch rows [b0, b1) x channels [d0, d1).
struct TaskRange {
  int64_t task, b0, b1, d0, d1;
};

typedef int64_t (*ScratchFn)(const ScanArgs&, bool backward);
typedef void (*TaskFn)(const ScanArgs&, const TaskRange&, void* scratch);

struct KernelTable {
  const char* isa;
  int vector_bytes;
  ScratchFn scratch_elems;  // per task, in elements of the compute dtype
  TaskFn fwd_f32, fwd_f64, bwd_f32, bwd_f64;
};

}  // namespace coupled_scan

namespace coupled_scan_base { extern const coupled_scan::KernelTable table; }
#if defined(__x86_64__) || defined(_M_X64)
namespace coupled_scan_avx2 { extern const coupled_scan::KernelTable table; }
namespace coupled_scan_avx512 { extern const coupled_scan::KernelTable table; }
#endif
