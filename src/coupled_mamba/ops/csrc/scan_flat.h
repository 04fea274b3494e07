// Short-sequence flat passes (L <= T, one chunk per row): the forward's pointwise work over
// the rows of many channels at once.
//
// Part of scan_kernel_impl.h, which includes it inside namespace SCAN_NS after the parts
// listed before it there; not a standalone header.

// Short sequences (L <= T: one chunk per row). The rows of consecutive channels of one (m, b) are
// contiguous in u, delta, z, y, so the pointwise work of a block of channels runs over one flat
// array of (d1 - d0) L elements: a 50-step row costs 50 elements of softplus and sigmoid rather
// than a padded 64, and no row is copied, padded or handled by a call of its own. The main loop
// reads dt, dt u from these arrays; each row's y is written as soon as its sums over n are
// reduced (flat_finish_row).
template <typename T> struct Flat {
  T *dt, *dtu, *sz;  // dt, dt u, silu(z): (d1 - d0) L elements each (+ slack)
};
// Channels per flat block, and the elements of one flat array: kFlatElems plus a vector of slack
// (the last vector may pass the block's end).
constexpr int64_t kFlatElems = 4096;
constexpr int64_t kFlatArray = kFlatElems + kMaxLanes;
constexpr int kFlatArrays = 3;  // per modality
static inline int64_t flat_channels(int64_t L) { return L >= kFlatElems ? 1 : kFlatElems / L; }
// Whether the forward takes the flat passes: rank-one and diagonal kernels, one chunk per row.
static inline bool uses_flat(const ScanArgs& a) {
  return a.mode != coupled_scan::kGeneral && a.nchunks == 1;
}

template <typename T> static inline Flat<T> flat_at(T* base, int64_t mi) {
  T* p = base + mi * kFlatArrays * kFlatArray;
  return Flat<T>{p, p + kFlatArray, p + 2 * kFlatArray};
}

// A full vector at p, or the k < W elements left there (the rest zero).
template <typename V, typename T> static inline V ld_or_n(const T* p, int64_t k) {
  return k >= VT<T>::W ? ld<V>(p) : ld_n<V>(p, k);
}

// dt = softplus(delta + bias), dt u and silu(z) of channels [d0, d1) of (m, b).
template <typename T>
static void flat_prep(const Ctx<T>& c, int64_t m, int64_t b, int64_t d0, int64_t d1,
                      const Flat<T>& f) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t L = c.L, n = (d1 - d0) * L, off = c.row(m, b, d0);
  const T* x = c.delta + off;
  const T* bias = c.bias ? c.bias + m * c.D + d0 : nullptr;  // per channel
  if (bias && L < W) {  // several rows per vector: add the bias row by row, into f.dt
    for (int64_t d = 0; d < d1 - d0; ++d)
      for (int64_t j = 0; j < L; ++j) f.dt[d * L + j] = x[d * L + j] + bias[d];
    x = f.dt;  // then softplus in place
    bias = nullptr;
  }
  V lane;
  for (int j = 0; j < W; ++j) lane[j] = T(j);
  // With L >= W a vector spans at most two rows: dr (the row of element i) and the next one.
  int64_t dr = 0, row_end = L;
  for (int64_t i = 0; i < n; i += W) {
    const int64_t k = n - i;
    V dt = ld_or_n<V>(x + i, k);
    if (bias) {
      if (i >= row_end) {
        ++dr;
        row_end += L;
      }
      const T b0 = bias[dr], b1 = d0 + dr + 1 < d1 ? bias[dr + 1] : b0;
      dt += lane < T(row_end - i) ? bc<V>(b0) : bc<V>(b1);
    }
    if (c.a.softplus) dt = vsoftplus(dt, (V*)nullptr);
    st(f.dt + i, dt);
    st(f.dtu + i, dt * ld_or_n<V>(c.u + off + i, k));
    if (c.z) {
      const V zv = ld_or_n<V>(c.z + off + i, k);
      st(f.sz + i, vsilu(zv));
    }
  }
}

// y = (ys + D u) silu(z) for the row of channel d of (m, b), from its sums over n (ys, just
// reduced and still in L1, where a separate pass over the whole flat block afterwards would
// read them back from further away) and its silu(z) in the flat array (sz).
template <typename T>
static inline void flat_finish_row(const Ctx<T>& c, int64_t m, int64_t b, int64_t d,
                                   const T* ys, const T* sz) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t L = c.L, off = c.row(m, b, d);
  const T Dm = c.Dskip ? c.Dskip[m * c.D + d] : T(0);
  const T* u = c.u + off;
  T* y = c.y + off;
  // ys has room for T >= rows_used(L) elements (those past L unset, their lanes never stored)
  // and sz a vector of slack: full loads stay inside both.
  for (int64_t j = 0; j < L; j += W) {
    const int64_t k = L - j;
    V yv = ld<V>(ys + j) + Dm * ld_or_n<V>(u + j, k);
    if (c.z) yv = yv * ld<V>(sz + j);
    if (k >= W) st(y + j, yv);
    else st_n(y + j, yv, k);
  }
}
