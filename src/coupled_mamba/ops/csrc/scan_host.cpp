// Host side of the compiled coupled selective scan (docs/MATH.md, section 2): input layout, work
// split, instruction-set selection, and the torch operators coupled_mamba_scan::{fwd, bwd, isa}.
//
// Shapes: M modalities, Bt batch, D channels, N state (Np padded to the vector width), L length.
// The kernels themselves live in scan_kernel_impl.h, compiled once per instruction set.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "scan_common.h"

namespace {

using at::Tensor;
using coupled_scan::KernelTable;
using coupled_scan::ScanArgs;
using coupled_scan::TaskRange;

constexpr int64_t kChunk = 64;  // time steps per chunk; a multiple of every vector width

const KernelTable* best_table() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
    return &coupled_scan_avx512::table;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return &coupled_scan_avx2::table;
#endif
  return &coupled_scan_base::table;
}

const KernelTable* table_named(const std::string& name) {
  if (name == "base") return &coupled_scan_base::table;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  const KernelTable* best = best_table();
  if (name == "avx2" && best != &coupled_scan_base::table) return &coupled_scan_avx2::table;
  if (name == "avx512" && best == &coupled_scan_avx512::table) return &coupled_scan_avx512::table;
#endif
  TORCH_CHECK(false, "coupled scan: instruction set '", name,
              "' is not built or not supported by this CPU");
}

// The table in use: the best the CPU supports, or COUPLED_MAMBA_CPU_ISA, or set by isa(name).
const KernelTable*& current_table() {
  static const KernelTable* t = [] {
    const char* env = std::getenv("COUPLED_MAMBA_CPU_ISA");
    return (env && *env) ? table_named(env) : best_table();
  }();
  return t;
}

std::string isa(const std::string& name) {
  if (!name.empty()) current_table() = name == "auto" ? best_table() : table_named(name);
  return current_table()->isa;
}

// How many distinct threads at::parallel_for used for n one-item tasks. 1 when the extension was
// built without OpenMP: ATen's parallel_for is a header template, serial unless this translation
// unit is compiled with -fopenmp (see _cpu.py), whatever torch.get_num_threads() says.
int64_t parallel_threads(int64_t n) {
  std::vector<int64_t> tid(static_cast<size_t>(std::max<int64_t>(n, 0)), -1);
  at::parallel_for(0, n, 1, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) tid[i] = at::get_thread_num();
  });
  std::sort(tid.begin(), tid.end());
  return std::unique(tid.begin(), tid.end()) - tid.begin();
}

const void* ptr_or_null(const std::optional<Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr() : nullptr;
}

std::optional<Tensor> contig(const std::optional<Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->contiguous();
}

// Split batch rows x channels into tasks for at::parallel_for. Whole batch rows per task when
// that balances the threads (dB, dC then need no private copies); otherwise (b, channel range).
std::vector<TaskRange> make_tasks(int64_t Bt, int64_t D, bool* split_channels) {
  const int64_t P = std::max<int64_t>(1, at::get_num_threads());
  std::vector<TaskRange> tasks;
  if (P == 1 || Bt % P == 0 || Bt >= 4 * P || D == 1) {
    const int64_t n = std::min(P, Bt);
    for (int64_t i = 0; i < n; ++i) tasks.push_back({i, Bt * i / n, Bt * (i + 1) / n, 0, D});
    *split_channels = false;
  } else {
    const int64_t S = std::min(D, P / std::gcd(Bt, P));
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = static_cast<int64_t>(tasks.size());
        tasks.push_back({i, b, b + 1, D * s / S, D * (s + 1) / S});
      }
    *split_channels = true;
  }
  return tasks;
}

struct Prepared {
  ScanArgs a;
  Tensor u, delta, Ap, Bp, Cp;
  std::optional<Tensor> D, z, bias, init, W;
};

Prepared prepare(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                 const Tensor& C, const std::optional<Tensor>& D, const std::optional<Tensor>& z,
                 const std::optional<Tensor>& bias, const std::optional<Tensor>& init,
                 const std::optional<Tensor>& W, int64_t mode, double w, bool softplus) {
  TORCH_CHECK(u.device().is_cpu(), "coupled scan (cpu): tensors must be on the CPU");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "coupled scan (cpu): compute dtype must be float32 or float64, got ",
              u.scalar_type());
  TORCH_CHECK(u.dim() == 4 && A.dim() == 3, "coupled scan (cpu): bad ranks");
  TORCH_CHECK(mode >= 0 && mode <= 2, "coupled scan (cpu): bad mode ", mode);
  TORCH_CHECK(mode != coupled_scan::kGeneral || (W.has_value() && W->defined()),
              "coupled scan (cpu): general coupling needs W");

  const KernelTable* tb = current_table();
  const int64_t M = u.size(0), Bt = u.size(1), Dm = u.size(2), L = u.size(3), N = A.size(2);
  // Shape, device and dtype of every argument: selective_scan.py's CPU fast path skips its
  // Python validation and relies on these checks. When one fails there, Python reruns its own
  // validation, which raises the documented ValueError naming the argument.
  TORCH_CHECK(M > 0 && L > 0 && N > 0, "coupled scan (cpu): empty dimension");
  const auto expect = [&](const Tensor& t, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(t.sizes() == shape && t.device() == u.device() &&
                    t.scalar_type() == u.scalar_type(),
                "coupled scan (cpu): ", name, " is ", t.scalar_type(), " ", t.sizes(), " on ",
                t.device(), ", expected ", u.scalar_type(), " ", shape, " on ", u.device());
  };
  const auto expect_opt = [&](const std::optional<Tensor>& t, at::IntArrayRef shape,
                              const char* name) {
    if (t.has_value() && t->defined()) expect(*t, shape, name);
  };
  expect(delta, {M, Bt, Dm, L}, "delta");
  expect(A, {M, Dm, N}, "A");
  expect(B, {M, Bt, N, L}, "B");
  expect(C, {M, Bt, N, L}, "C");
  expect_opt(D, {M, Dm}, "D");
  expect_opt(z, {M, Bt, Dm, L}, "z");
  expect_opt(bias, {M, Dm}, "delta_bias");
  expect_opt(init, {M, Bt, Dm, N}, "initial_state");
  expect_opt(W, {M, M}, "W");
  const int64_t lanes = tb->vector_bytes / static_cast<int64_t>(u.element_size());
  const int64_t Np = (N + lanes - 1) / lanes * lanes;

  Prepared p;
  p.u = u.contiguous();
  p.delta = delta.contiguous();
  p.D = contig(D);
  p.z = contig(z);
  p.bias = contig(bias);
  p.init = contig(init);
  p.W = contig(W);
  if (mode == coupled_scan::kRank1 && M > 4) {
    // The rank-one kernels are unrolled for up to 4 modalities; beyond, use the dense W.
    p.W = at::full({M, M}, w / static_cast<double>(M), u.options());
    mode = coupled_scan::kGeneral;
  }
  if (mode != coupled_scan::kGeneral) {
    // The diagonal and rank-one kernels copy A, B and C into packed buffers anyway (pack_a,
    // pack_bc) and scale, transpose and pad them there: no extra pass over B and C here.
    p.Ap = A.contiguous();
    p.Bp = B.contiguous();
    p.Cp = C.contiguous();
  } else {
    // The kernels compute Abar = 2^(dt A log2(e)) (see scan_kernel_impl.h).
    p.Ap = at::constant_pad_nd(A.mul(1.4426950408889634074), {0, Np - N}).contiguous();
    // (M, Bt, N, L) -> (M, Bt, L, Np): the inner loop runs over contiguous n.
    p.Bp = at::constant_pad_nd(B.transpose(2, 3), {0, Np - N}).contiguous();
    p.Cp = at::constant_pad_nd(C.transpose(2, 3), {0, Np - N}).contiguous();
  }

  ScanArgs& a = p.a;
  std::memset(&a, 0, sizeof(a));
  a.M = M; a.Bt = Bt; a.D = Dm; a.N = N; a.Np = Np; a.L = L; a.T = kChunk;
  a.nchunks = (L + kChunk - 1) / kChunk;
  a.mode = static_cast<int>(mode);
  a.w = w;
  a.softplus = softplus;
  a.u = p.u.data_ptr(); a.delta = p.delta.data_ptr(); a.A = p.Ap.data_ptr();
  a.Bm = p.Bp.data_ptr(); a.Cm = p.Cp.data_ptr();
  a.Dskip = ptr_or_null(p.D); a.z = ptr_or_null(p.z); a.bias = ptr_or_null(p.bias);
  a.init = ptr_or_null(p.init); a.W = ptr_or_null(p.W);
  return p;
}

coupled_scan::TaskFn pick(const KernelTable* tb, at::ScalarType dt, bool backward) {
  if (dt == at::kFloat) return backward ? tb->bwd_f32 : tb->fwd_f32;
  return backward ? tb->bwd_f64 : tb->fwd_f64;
}

void run_tasks(const KernelTable* tb, const ScanArgs& a, const std::vector<TaskRange>& tasks,
               at::ScalarType dt, bool backward) {
  const int64_t per = tb->scratch_elems(a, backward);
  const int64_t n = static_cast<int64_t>(tasks.size());
  Tensor scratch = at::empty({n, per}, at::TensorOptions().dtype(dt));
  char* base = static_cast<char*>(scratch.data_ptr());
  const int64_t bytes = per * static_cast<int64_t>(scratch.element_size());
  coupled_scan::TaskFn fn = pick(tb, dt, backward);
  at::parallel_for(0, n, 1, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) fn(a, tasks[i], base + i * bytes);
  });
}

// Returns y (M, Bt, D, L), the last state (M, Bt, D, N; an empty tensor unless want_last) and,
// when save is true, the states at chunk starts (Bt, D, nchunks, S) needed by bwd (an empty
// tensor otherwise).
std::tuple<Tensor, Tensor, Tensor> fwd(const Tensor& u, const Tensor& delta, const Tensor& A,
                                       const Tensor& B, const Tensor& C,
                                       const std::optional<Tensor>& D,
                                       const std::optional<Tensor>& z,
                                       const std::optional<Tensor>& bias,
                                       const std::optional<Tensor>& init,
                                       const std::optional<Tensor>& W, int64_t mode, double w,
                                       bool softplus, bool save, bool want_last) {
  const KernelTable* tb = current_table();
  Prepared p = prepare(u, delta, A, B, C, D, z, bias, init, W, mode, w, softplus);
  ScanArgs& a = p.a;
  auto opt = p.u.options();
  Tensor y = at::empty_like(p.u);
  Tensor last = want_last ? at::empty({a.M, a.Bt, a.D, a.N}, opt) : at::empty({0}, opt);
  const int64_t S = a.mode == coupled_scan::kRank1 ? a.Np : a.M * a.Np;
  Tensor saved = save ? at::empty({a.Bt, a.D, a.nchunks, S}, opt) : at::empty({0}, opt);
  a.y = y.data_ptr();
  a.last = want_last ? last.data_ptr() : nullptr;
  a.saved = save ? saved.data_ptr() : nullptr;
  bool split = false;
  std::vector<TaskRange> tasks = make_tasks(a.Bt, a.D, &split);
  run_tasks(tb, a, tasks, p.u.scalar_type(), false);
  return {y, last, saved};
}

// Gradients of every input: du, ddelta (M, Bt, D, L); dA (M, D, N); dB, dC (M, Bt, N, L);
// dD, dbias (M, D); dz (M, Bt, D, L); dinit (M, Bt, D, N); dW (M, M). Entries for absent
// optional inputs are still returned (zeros or unused values); the caller drops them.
std::vector<Tensor> bwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                        const Tensor& C, const std::optional<Tensor>& D,
                        const std::optional<Tensor>& z, const std::optional<Tensor>& bias,
                        const std::optional<Tensor>& init, const std::optional<Tensor>& W,
                        int64_t mode, double w, bool softplus, const Tensor& saved,
                        const Tensor& dout, const std::optional<Tensor>& dlast) {
  const KernelTable* tb = current_table();
  Prepared p = prepare(u, delta, A, B, C, D, z, bias, init, W, mode, w, softplus);
  ScanArgs& a = p.a;
  const int64_t S = a.mode == coupled_scan::kRank1 ? a.Np : a.M * a.Np;
  TORCH_CHECK(saved.dim() == 4 && saved.size(0) == a.Bt && saved.size(1) == a.D &&
                  saved.size(2) == a.nchunks && saved.size(3) == S,
              "coupled scan (cpu): saved states do not match the inputs (was the forward run "
              "with another instruction set?)");
  auto opt = p.u.options();
  Tensor dout_c = dout.contiguous();
  std::optional<Tensor> dlast_c = contig(dlast);
  bool split = false;
  std::vector<TaskRange> tasks = make_tasks(a.Bt, a.D, &split);
  const int64_t nt = static_cast<int64_t>(tasks.size());

  Tensor du = at::empty_like(p.u), ddelta = at::empty_like(p.u);
  Tensor dz = p.z.has_value() ? at::empty_like(p.u) : at::empty({0}, opt);
  Tensor dinit = at::empty({a.M, a.Bt, a.D, a.N}, opt);
  Tensor dA = at::zeros({nt, a.M, a.D, a.Np}, opt);
  Tensor dD = at::zeros({nt, a.M, a.D}, opt), dbias = at::zeros({nt, a.M, a.D}, opt);
  Tensor dW = at::zeros({nt, a.M, a.M}, opt);
  Tensor dB = split ? at::zeros({nt, a.M, a.L, a.Np}, opt) : at::zeros({a.M, a.Bt, a.L, a.Np}, opt);
  Tensor dC = at::zeros_like(dB);

  a.saved = saved.data_ptr();
  a.dout = dout_c.data_ptr();
  a.dlast = ptr_or_null(dlast_c);
  a.du = du.data_ptr(); a.ddelta = ddelta.data_ptr();
  a.dz = p.z.has_value() ? dz.data_ptr() : nullptr;
  a.dinit = dinit.data_ptr();
  a.dA = dA.data_ptr(); a.dD = dD.data_ptr(); a.dbias = dbias.data_ptr(); a.dW = dW.data_ptr();
  a.dB = dB.data_ptr(); a.dC = dC.data_ptr();
  a.bc_private = split;
  run_tasks(tb, a, tasks, p.u.scalar_type(), true);

  if (split) {
    // Private (task, M, L, Np) slices, tasks ordered batch-major: sum the channel splits.
    const int64_t per_b = nt / a.Bt;
    dB = dB.view({a.Bt, per_b, a.M, a.L, a.Np}).sum(1).permute({1, 0, 2, 3});
    dC = dC.view({a.Bt, per_b, a.M, a.L, a.Np}).sum(1).permute({1, 0, 2, 3});
  }
  const int64_t N = a.N;
  dB = dB.narrow(3, 0, N).transpose(2, 3).contiguous();
  dC = dC.narrow(3, 0, N).transpose(2, 3).contiguous();
  return {du, ddelta, dA.sum(0).narrow(2, 0, N).contiguous(), dB, dC, dD.sum(0), dz,
          dbias.sum(0), dinit, dW.sum(0)};
}

}  // namespace

TORCH_LIBRARY(coupled_mamba_scan, m) {
  m.def(
      "fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
      "Tensor? delta_bias, Tensor? initial_state, Tensor? W, int mode, float w, bool softplus, "
      "bool save, bool want_last) -> (Tensor, Tensor, Tensor)",
      &fwd);
  m.def(
      "bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
      "Tensor? delta_bias, Tensor? initial_state, Tensor? W, int mode, float w, bool softplus, "
      "Tensor saved, Tensor dout, Tensor? dlast) -> Tensor[]",
      &bwd);
  m.def("isa(str name) -> str", &isa);
  m.def("parallel_threads(int n) -> int", &parallel_threads);
}
