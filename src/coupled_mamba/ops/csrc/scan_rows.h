// Typed view of the kernel arguments and the per-chunk rows of one (m, b, d): loading,
// prefetching, the forward's pointwise passes before and after the scan over n.
//
// Part of scan_kernel_impl.h, which includes it inside namespace SCAN_NS after the parts
// listed before it there; not a standalone header.

// Typed view of the arguments and index helpers.
template <typename T> struct Ctx {
  const ScanArgs& a;
  int64_t M, Bt, D, N, Np, L, T_, S;  // S: size of the carried state per (b, d)
  const T *u, *delta, *A2, *Bm, *Cm, *Dskip, *z, *bias, *init, *W, *dout, *dlast;
  T *y, *last, *saved, *du, *ddelta, *dz, *dinit, *dA, *dD, *dbias, *dW, *dB, *dC;
  explicit Ctx(const ScanArgs& args) : a(args) {
    M = a.M; Bt = a.Bt; D = a.D; N = a.N; Np = a.Np; L = a.L; T_ = a.T;
    S = a.mode == coupled_scan::kRank1 ? Np : M * Np;
    u = (const T*)a.u; delta = (const T*)a.delta; A2 = (const T*)a.A;
    Bm = (const T*)a.Bm; Cm = (const T*)a.Cm; Dskip = (const T*)a.Dskip; z = (const T*)a.z;
    bias = (const T*)a.bias; init = (const T*)a.init; W = (const T*)a.W;
    dout = (const T*)a.dout; dlast = (const T*)a.dlast;
    y = (T*)a.y; last = (T*)a.last; saved = (T*)a.saved; du = (T*)a.du;
    ddelta = (T*)a.ddelta; dz = (T*)a.dz; dinit = (T*)a.dinit; dA = (T*)a.dA;
    dD = (T*)a.dD; dbias = (T*)a.dbias; dW = (T*)a.dW; dB = (T*)a.dB; dC = (T*)a.dC;
  }
  int64_t row(int64_t m, int64_t b, int64_t d) const { return ((m * Bt + b) * D + d) * L; }
  int64_t st_off(int64_t m, int64_t b, int64_t d) const { return ((m * Bt + b) * D + d) * N; }
  // Rows of the host-prepared layouts (general W only; the other kernels get the caller's
  // layouts and read them in pack_a / pack_bc).
  const T* Arow(int64_t m, int64_t d) const { return A2 + (m * D + d) * Np; }
  const T* Brow(int64_t m, int64_t b, int64_t t) const { return Bm + ((m * Bt + b) * L + t) * Np; }
  const T* Crow(int64_t m, int64_t b, int64_t t) const { return Cm + ((m * Bt + b) * L + t) * Np; }
  T* saved_at(int64_t b, int64_t d, int64_t c) const {
    return saved + ((b * D + d) * a.nchunks + c) * S;
  }
  // dB / dC row (m, b, t): the shared output or the task's private (M, L, Np) slice.
  int64_t dbc_off(const TaskRange& r, int64_t m, int64_t b, int64_t t) const {
    return a.bc_private ? ((r.task * M + m) * L + t) * Np : ((m * Bt + b) * L + t) * Np;
  }
  T* dArow(const TaskRange& r, int64_t m, int64_t d) const {
    return dA + ((r.task * M + m) * D + d) * Np;
  }
  int64_t md(const TaskRange& r, int64_t m, int64_t d) const { return (r.task * M + m) * D + d; }
};

// Rows of one (m, b, d) over one chunk. Inputs point into the tensors for a full chunk, or at
// copies padded to T with zeros for the last, partial one (zeros are harmless everywhere).
template <typename T> struct Rows {
  const T *u, *z, *dout;
  T *dt, *dtu, *spg, *dy;        // dt, dt u, softplus' factor, dout silu(z)
  T *ys, *s1, *s2;               // per-step sums over n
  T *acc_y, *acc_1, *acc_2;      // their per-step vectors (T x W), reduced per chunk
  T *pad_u, *pad_z, *pad_o, *pad_dl;
};
// Per-modality row storage, in units of T: 11 rows and 3 T x kMaxLanes accumulators.
constexpr int64_t kRowsPerM = 11 + 3 * kMaxLanes;

template <typename T> static inline Rows<T> rows_at(T* base, int64_t mi, int64_t Tn) {
  T* p = base + mi * kRowsPerM * Tn;
  Rows<T> r;
  r.pad_u = p; r.pad_z = p + Tn; r.pad_o = p + 2 * Tn; r.pad_dl = p + 3 * Tn;
  r.dt = p + 4 * Tn; r.dtu = p + 5 * Tn; r.spg = p + 6 * Tn; r.dy = p + 7 * Tn;
  r.ys = p + 8 * Tn; r.s1 = p + 9 * Tn; r.s2 = p + 10 * Tn;
  r.acc_y = p + 11 * Tn; r.acc_1 = r.acc_y + kMaxLanes * Tn; r.acc_2 = r.acc_1 + kMaxLanes * Tn;
  r.u = r.z = r.dout = nullptr;
  return r;
}

// Rows a chunk of Tc steps occupies in the pointwise passes: Tc rounded up to 16 (a multiple of
// every vector width), not the full T, so that a short last chunk (a short
// sequence, a streaming step with L = 1) costs its length rather than a whole chunk.
static inline int64_t rows_used(int64_t Tc) { return (Tc + 15) / 16 * 16; }

template <typename T>
static inline const T* src_or_pad(const T* src, T* pad, int64_t Tc, int64_t Tn) {
  if (Tc == Tn) return src;
  for (int64_t j = 0; j < Tc; ++j) pad[j] = src[j];
  for (int64_t j = Tc, Tv = rows_used(Tc); j < Tv; ++j) pad[j] = T(0);
  return pad;
}

// Point u, z (dout) of a chunk's rows at the tensors (full chunk) or at the padded copies that
// prep_rows made (last chunk).
template <typename T>
static inline void bind_rows(const Ctx<T>& c, Rows<T>& r, int64_t m, int64_t b, int64_t d,
                             int64_t t0, int64_t Tc, bool backward) {
  const bool full = Tc == c.T_;
  const int64_t off = c.row(m, b, d) + t0;
  r.u = full ? c.u + off : r.pad_u;
  r.z = c.z ? (full ? c.z + off : r.pad_z) : nullptr;
  if (backward) r.dout = full ? c.dout + off : r.pad_o;
}

// Row segments of one (m, b, d) chunk are T elements at a stride of L between channels: too far
// apart for the hardware prefetcher once L is large. Prefetch those of the next channel while
// the current one runs (one unit is thousands of cycles, more than a memory latency).
// Always inlined: GCC models __builtin_prefetch as touching no memory, so a separate function
// holding only prefetches is judged free of side effects and its calls are deleted (GCC 12 at
// -O3 removed every prefetch of this file that way).
template <typename T>
__attribute__((always_inline)) static inline void prefetch_rows(
    const Ctx<T>& c, int64_t m, int64_t b, int64_t d, int64_t t0, int64_t Tc, bool backward) {
  const int64_t off = c.row(m, b, d) + t0;
  const int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t j = 0; j < Tc; j += line) {
    __builtin_prefetch(c.u + off + j, 0, 3);
    __builtin_prefetch(c.delta + off + j, 0, 3);
    if (c.z) __builtin_prefetch(c.z + off + j, 0, 3);
    if (backward) {
      __builtin_prefetch(c.dout + off + j, 0, 3);
      __builtin_prefetch(c.du + off + j, 1, 3);
      __builtin_prefetch(c.ddelta + off + j, 1, 3);
      if (c.z) __builtin_prefetch(c.dz + off + j, 1, 3);
    } else {
      __builtin_prefetch(c.y + off + j, 1, 3);
    }
  }
}

// Time blocks: the loop order inside a task is block -> channel -> chunk, so that each channel
// reads its rows of u, delta, z (T x chunks_per_block contiguous elements) sequentially, while
// the block's slice of B, C (and dB, dC) -- MG x block x Np each -- stays in L2 (~512 KiB)
// across all channels of the task.
template <typename T> static inline int64_t chunks_per_block(const Ctx<T>& c, int64_t MG) {
  const int64_t per_chunk = MG * c.T_ * c.Np * 4 * static_cast<int64_t>(sizeof(T));
  const int64_t cb = (int64_t(512) << 10) / per_chunk;
  return cb < 1 ? 1 : cb;
}

// Prefetch the rows of the unit that comes after (d, ch) in block [cb0, cb1) (chunks ascending
// in the forward, descending in the backward).
template <typename T>
__attribute__((always_inline)) static inline void prefetch_next(
    const Ctx<T>& c, const TaskRange& r, int64_t m, int64_t b, int64_t d, int64_t ch, int64_t cb0,
    int64_t cb1, bool backward) {
  int64_t dn = d, cn = backward ? ch - 1 : ch + 1;
  if (cn < cb0 || cn >= cb1) {
    dn = d + 1;
    cn = backward ? cb1 - 1 : cb0;
  }
  if (dn >= r.d1) return;
  const int64_t t0 = cn * c.T_, Tc = (c.L - t0 < c.T_) ? c.L - t0 : c.T_;
  prefetch_rows(c, m, b, dn, t0, Tc, backward);
}

// Load u, z (dout) and compute dt, dt u (softplus' factor, dy = dout silu(z)) for a chunk.
template <typename T>
static void prep_rows(const Ctx<T>& c, Rows<T>& r, int64_t m, int64_t b, int64_t d, int64_t t0,
                      int64_t Tc, bool backward) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Tn = c.T_;
  const int64_t off = c.row(m, b, d) + t0;
  r.u = src_or_pad(c.u + off, r.pad_u, Tc, Tn);
  const T* dl = src_or_pad(c.delta + off, r.dt, Tc, Tn);  // computed in place when padded
  r.z = c.z ? src_or_pad(c.z + off, r.pad_z, Tc, Tn) : nullptr;
  if (backward) r.dout = src_or_pad(c.dout + off, r.pad_o, Tc, Tn);
  const T bias = c.bias ? c.bias[m * c.D + d] : T(0);
  for (int64_t j = 0, Tv = rows_used(Tc); j < Tv; j += W) {
    const V x = ld<V>(dl + j) + bias;
    V g = bc<V>(T(1));
    const V dt = c.a.softplus ? vsoftplus(x, backward ? &g : nullptr) : x;
    st(r.dt + j, dt);
    st(r.dtu + j, dt * ld<V>(r.u + j));
    if (backward) {
      st(r.spg + j, g);
      V dy = ld<V>(r.dout + j);
      if (c.z) {
        const V zv = ld<V>(r.z + j);
        dy = dy * (zv * vsigmoid(zv));
      }
      st(r.dy + j, dy);
    }
  }
}

// y = (sum_n C h + D u) silu(z) for one (m, b, d) chunk, from the per-step vectors in acc_y.
template <typename T>
static void finish_rows_fwd(const Ctx<T>& c, Rows<T>& r, int64_t m, int64_t b, int64_t d,
                            int64_t t0, int64_t Tc) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Tn = c.T_, Tv = rows_used(Tc);
  reduce_rows_n(r.acc_y, Tc, r.ys);  // rows Tc..Tv of ys are left unset: never written out
  const T Dm = c.Dskip ? c.Dskip[m * c.D + d] : T(0);
  T* out = c.y + c.row(m, b, d) + t0;
  T* dst = Tc == Tn ? out : r.ys;
  for (int64_t j = 0; j < Tv; j += W) {
    V yv = ld<V>(r.ys + j) + Dm * ld<V>(r.u + j);
    if (c.z) yv = yv * vsilu(ld<V>(r.z + j));
    st(dst + j, yv);
  }
  if (Tc != Tn)
    for (int64_t j = 0; j < Tc; ++j) out[j] = r.ys[j];
}
