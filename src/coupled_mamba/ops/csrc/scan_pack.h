// Scratch layout of a task and the packed operands of the rank-one kernels.
//
// Part of scan_kernel_impl.h, which includes it inside namespace SCAN_NS after the parts
// listed before it there; not a standalone header.

// Scratch per task (elements): carry (channels x S), rows, then the mode-specific buffers.
static int64_t round_up(int64_t x, int64_t k) { return (x + k - 1) / k * k; }

// Elements of one packed B/C block of the rank-one kernels (see pack_bc): a time block holds at
// most 512 KiB of B, C, dB, dC (chunks_per_block), so 256 KiB of packed B and C, or one chunk.
static int64_t packed_block_elems(const ScanArgs& a) {
  const int64_t one_chunk = a.T * a.Np * 2 * a.M;
  return one_chunk > 65536 ? one_chunk : 65536;
}

static int64_t scratch_layout(const ScanArgs& a, bool backward, int64_t* rows_off,
                              int64_t* buf_off) {
  const int64_t S = a.mode == coupled_scan::kRank1 ? a.Np : a.M * a.Np;
  int64_t off = round_up(a.D * S, 16);
  *rows_off = off;
  off += round_up(a.M * kRowsPerM * a.T, 16);
  *buf_off = off;
  // forward: G, h staging and packed A (M Np each), packed B/C block, flat arrays of a short
  // sequence (rank-one and diagonal kernels: kFlatArrays per modality);
  // backward: states (T + 1) x S, Abar T x M x Np, dlast staging, packed A and dA (M Np each),
  // dW accumulators (M M lanes), packed B/C and dB/dC blocks.
  const int64_t buf = backward ? (a.T + 1) * S + a.T * a.M * a.Np + 4 * a.M * a.Np +
                                     a.M * a.M * kMaxLanes + 2 * packed_block_elems(a)
                               : 3 * a.M * a.Np + packed_block_elems(a) +
                                     (uses_flat(a) ? kFlatArrays * a.M * kFlatArray : 0);
  return off + round_up(buf, 16);
}

static int64_t scratch_elems(const ScanArgs& a, bool backward) {
  int64_t r, b;
  return scratch_layout(a, backward, &r, &b);
}

// ---------------------------------------------------------------------------------------------
// Packed operands of the rank-one kernels. Inside the unrolled modality loop, separate pointers to
// A, B, C of each modality would need more registers than x86-64 has (GCC then moves them through
// vector registers, on the FMA ports). So a time block of B and C is copied once per batch row
// into [step][n-vector][B | C][modality][lane], and A once per channel into
// [n-vector][modality][lane]: one pointer each, with constant offsets per modality. The copies
// are amortised over all channels (B, C) or all steps (A).
template <typename T, int MG>
static void pack_bc(const Ctx<T>& c, int64_t b, int64_t m0, int64_t tb0, int64_t tb1, T* dst) {
  const int W = VT<T>::W;
  const int64_t N = c.N, L = c.L, nv = c.Np / W, SW = nv * 2 * MG * W;
  // B, C arrive as the caller's (M, Bt, N, L): element n of step t is at n L + t.
  // Steps outer, n inner: the N cache lines a step reads serve the next steps too.
  for (int64_t t = tb0; t < tb1; ++t)
    for (int mi = 0; mi < MG; ++mi) {
      const int64_t row = ((m0 + mi) * c.Bt + b) * N * L + t;
      const T *Bs = c.Bm + row, *Cs = c.Cm + row;
      T* q = dst + (t - tb0) * SW + mi * W;
      for (int64_t v = 0; v < nv; ++v)
        for (int k = 0; k < W; ++k) {
          const int64_t n = v * W + k;
          q[v * 2 * MG * W + k] = n < N ? Bs[n * L] : T(0);
          q[(v * 2 + 1) * MG * W + k] = n < N ? Cs[n * L] : T(0);
        }
    }
}

// The reverse of pack_bc for the gradients: dB, dC of the block += the packed accumulators.
template <typename T, int MG>
static void unpack_add_bc(const Ctx<T>& c, const TaskRange& r, int64_t b, int64_t m0,
                          int64_t tb0, int64_t tb1, const T* src) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t nv = c.Np / W, SW = nv * 2 * MG * W;
  for (int64_t t = tb0; t < tb1; ++t)
    for (int mi = 0; mi < MG; ++mi) {
      T* dBs = c.dB + c.dbc_off(r, m0 + mi, b, t);
      T* dCs = c.dC + c.dbc_off(r, m0 + mi, b, t);
      const T* q = src + (t - tb0) * SW + mi * W;
      for (int64_t v = 0; v < nv; ++v) {
        add_to(dBs + v * W, ld<V>(q + v * 2 * MG * W));
        add_to(dCs + v * W, ld<V>(q + (v * 2 + 1) * MG * W));
      }
    }
}

// A arrives as the caller's (M, D, N); packed as A log2(e), zero-padded to Np (the
// same product the host forms for the general kernel).
template <typename T, int MG>
static inline void pack_a(const Ctx<T>& c, int64_t m0, int64_t d, T* dst) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const T log2e = T(kLog2e);
  for (int mi = 0; mi < MG; ++mi) {
    const T* Am = c.A2 + ((m0 + mi) * c.D + d) * c.N;
    for (int64_t v = 0; v < c.Np / W; ++v) {
      T* q = dst + (v * MG + mi) * W;
      if ((v + 1) * W <= c.N) {
        st(q, ld<V>(Am + v * W) * log2e);
      } else {  // the partial last vector: zero-pad
        for (int k = 0; k < W; ++k) q[k] = v * W + k < c.N ? Am[v * W + k] * log2e : T(0);
      }
    }
  }
}

// Element (modality mi, state n) of a packed per-modality state [n-vector][modality][lane].
template <typename T, int MG> static inline int64_t pk(int64_t mi, int64_t n) {
  const int W = VT<T>::W;
  return ((n / W) * MG + mi) * W + n % W;
}
