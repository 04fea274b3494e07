// Forward kernels: rank one and diagonal (fwd_rank1), general W (fwd_general).
//
// Part of scan_kernel_impl.h, which includes it inside namespace SCAN_NS after the parts
// listed before it there; not a standalone header.

// The steps of one chunk when the state is a single vector (N <= W, e.g. N = 16 in float with
// AVX-512). With one vector per step there is no independent work across n to hide latency, so
// the state stays in registers for the whole chunk instead of a store and reload on the
// step-to-step chain. Rank one: h[m] = Abar_m (w S) + bbar_m (w = wM for MG > 1, else 1),
// S' = sum_m h[m]; the factor w goes into the exponent, Abar_m w = 2^(dt A2 + log2 w) (lw), so
// the multiply by w is an FMA that is already there and leaves the step-to-step chain (which is
// then h = a S + bbar and the sum over m). (Moving the sums off the chain,
// S' = (w sum_m Abar_m) S + sum_m bbar_m, was tried: no faster, since the loop is then bound by
// vector-op throughput.) "none" keeps one state per modality, MG independent chains. jl: the step
// of this chunk that is the sequence's last (its G = w S goes to Glast for the last state),
// negative or >= Tc if none.
template <typename T, int MG, bool COUPLED>
static inline void fwd_steps_one_vector(Rows<T>* rw, const T* Ap, const T* q0, int64_t SW,
                                        T* Sd, T* Glast, T wM, T lw, int64_t Tc, int64_t jl) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  constexpr int NS = COUPLED ? 1 : MG;
  const V lwv = bc<V>((COUPLED && MG > 1) ? lw : T(0));
  V S[NS], Am[MG];
  for (int i = 0; i < NS; ++i) S[i] = ld<V>(Sd + i * W);
  for (int mi = 0; mi < MG; ++mi) Am[mi] = ld<V>(Ap + mi * W);
  for (int64_t j = 0; j < Tc; ++j) {
    const T* q = q0 + j * SW;  // B of modality mi at q + mi W, C at q + (MG + mi) W
    if (COUPLED) {
      if (MG > 1 && j == jl) st(Glast, wM * S[0]);
      V Sn = bc<V>(T(0));
      for (int mi = 0; mi < MG; ++mi) {
        const V a = vexp2(bcl<V>(rw[mi].dt + j) * Am[mi] + lwv);  // Abar w
        const V h = a * S[0] + bcl<V>(rw[mi].dtu + j) * ld<V>(q + mi * W);
        st(rw[mi].acc_y + j * W, ld<V>(q + (MG + mi) * W) * h);
        Sn = mi == 0 ? h : Sn + h;
      }
      S[0] = Sn;
    } else {
      for (int mi = 0; mi < MG; ++mi) {
        const V a = vexp2(bcl<V>(rw[mi].dt + j) * Am[mi]);
        S[mi] = a * S[mi] + bcl<V>(rw[mi].dtu + j) * ld<V>(q + mi * W);
        st(rw[mi].acc_y + j * W, ld<V>(q + (MG + mi) * W) * S[mi]);
      }
    }
  }
  for (int i = 0; i < NS; ++i) st(Sd + i * W, S[i]);
}

// Forward of the rank-one and diagonal couplings, MG modalities [m0, m0 + MG) in one loop.
//   COUPLED (rank one): carries S = sum_m h[m]; h[t][m] = Abar[t][m] G + bbar[t][m] with
//     G = (w / MG) S[t-1] (the single recurrence of docs/MATH.md section 2).
//   !COUPLED ("none"): carries each h[m] (packed [n-vector][modality][lane]); G = h[t-1][m].
// The modality loop is innermost, so the states and the y accumulators stay in registers.
template <typename T, int MG, bool COUPLED>
static void fwd_rank1(const Ctx<T>& c, const TaskRange& r, int64_t b, int64_t m0, T wM,
                      T* carry, int64_t cstride, int64_t soff, T* rows, T* buf) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Np = c.Np, N = c.N, Tn = c.T_, L = c.L, nv = Np / W, SW = nv * 2 * MG * W;
  const int64_t SS = COUPLED ? Np : MG * Np;  // carried state per unit
  const T lw = T(__builtin_log2(double(wM)));  // for fwd_steps_one_vector (wM > 0 in rank one)
  for (int64_t d = r.d0; d < r.d1; ++d) {
    T* Sd = carry + (d - r.d0) * cstride;
    for (int64_t n = 0; n < SS; ++n) Sd[n] = T(0);
    if (c.init)
      for (int mi = 0; mi < MG; ++mi) {
        const T* h0 = c.init + c.st_off(m0 + mi, b, d);
        for (int64_t n = 0; n < N; ++n) Sd[COUPLED ? n : pk<T, MG>(mi, n)] += h0[n];
      }
  }
  T* Glast = buf;              // G of step L-1, for the last state
  T* hl = Glast + c.M * Np;    // last-state staging
  T* Ap = hl + c.M * Np;       // packed A of the channel
  T* pbc = Ap + c.M * Np;      // packed B, C of the time block
  Rows<T> rw[MG];
  Flat<T> fl[MG];
  for (int mi = 0; mi < MG; ++mi) {
    rw[mi] = rows_at(rows, mi, Tn);
    fl[mi] = flat_at(pbc + packed_block_elems(c.a), mi);
  }
  // One chunk per row (L <= T): the pointwise passes run over blocks of fc channels (flat_prep).
  const bool flat = uses_flat(c.a);
  const int64_t fc = flat_channels(L);
  int64_t fd0 = r.d0, fd1 = r.d0;  // the current flat block
  const int64_t CB = chunks_per_block(c, MG);
  for (int64_t cb0 = 0; cb0 < c.a.nchunks; cb0 += CB) {
    const int64_t cb1 = imin(cb0 + CB, c.a.nchunks), tb0 = cb0 * Tn, tb1 = imin(cb1 * Tn, L);
    pack_bc<T, MG>(c, b, m0, tb0, tb1, pbc);
    for (int64_t d = r.d0; d < r.d1; ++d) {
      T* Sd = carry + (d - r.d0) * cstride;
      pack_a<T, MG>(c, m0, d, Ap);
      if (flat && d == fd1) {
        fd0 = d;
        fd1 = imin(d + fc, r.d1);
        for (int mi = 0; mi < MG; ++mi) flat_prep(c, m0 + mi, b, fd0, fd1, fl[mi]);
      }
      for (int64_t ch = cb0; ch < cb1; ++ch) {
        const int64_t t0 = ch * Tn, Tc = (L - t0 < Tn) ? L - t0 : Tn;
        if (c.saved) {
          T* sv = c.saved_at(b, d, ch) + soff;
          for (int64_t n = 0; n < SS; ++n) sv[n] = Sd[n];
        }
        for (int mi = 0; mi < MG; ++mi) {
          if (flat) {
            rw[mi].dt = fl[mi].dt + (d - fd0) * L;
            rw[mi].dtu = fl[mi].dtu + (d - fd0) * L;
            continue;
          }
          prefetch_next(c, r, m0 + mi, b, d, ch, cb0, cb1, false);
          prep_rows(c, rw[mi], m0 + mi, b, d, t0, Tc, false);
        }
        if (nv == 1) {
          fwd_steps_one_vector<T, MG, COUPLED>(rw, Ap, pbc + (t0 - tb0) * SW, SW, Sd, Glast,
                                               wM, lw, Tc, L - 1 - t0);
        } else
        for (int64_t j = 0; j < Tc; ++j) {
          const int64_t t = t0 + j;
          if (COUPLED && MG > 1 && t == L - 1)
            for (int64_t v = 0; v < Np; v += W) st(Glast + v, wM * ld<V>(Sd + v));
          V dtm[MG], dtum[MG], acc[MG];
          for (int mi = 0; mi < MG; ++mi) {
            dtm[mi] = bcl<V>(rw[mi].dt + j);
            dtum[mi] = bcl<V>(rw[mi].dtu + j);
            acc[mi] = bc<V>(T(0));
          }
          const T* q = pbc + (t - tb0) * SW;
          for (int64_t v = 0; v < nv; ++v) {
            const T *qv = q + v * 2 * MG * W, *av = Ap + v * MG * W;
            T* sv = Sd + (COUPLED ? v : v * MG) * W;
            V G = ld<V>(sv);
            if (COUPLED && MG > 1) G = wM * G;
            V Sn = bc<V>(T(0));
            for (int mi = 0; mi < MG; ++mi) {
              const V a = vexp2(dtm[mi] * ld<V>(av + mi * W));
              const V Gm = COUPLED ? G : ld<V>(sv + mi * W);
              const V h = a * Gm + dtum[mi] * ld<V>(qv + mi * W);
              acc[mi] += ld<V>(qv + (MG + mi) * W) * h;
              if (COUPLED) Sn = mi == 0 ? h : Sn + h;
              else st(sv + mi * W, h);
            }
            if (COUPLED) st(sv, Sn);
          }
          for (int mi = 0; mi < MG; ++mi) st(rw[mi].acc_y + j * W, acc[mi]);
        }
        for (int mi = 0; mi < MG; ++mi) {
          if (flat) {
            reduce_rows_n(rw[mi].acc_y, Tc, rw[mi].ys);
            flat_finish_row(c, m0 + mi, b, d, rw[mi].ys, fl[mi].sz + (d - fd0) * L);
          } else {
            finish_rows_fwd(c, rw[mi], m0 + mi, b, d, t0, Tc);
          }
        }
        if (t0 + Tc == L && c.last) {
          // Last state per modality (when asked for): the carry itself (diagonal, or one
          // modality), else h[L-1][m] = Abar G + bbar from G of the last step (one step of exps).
          for (int mi = 0; mi < MG; ++mi) {
            T* out = c.last + c.st_off(m0 + mi, b, d);
            if (!COUPLED || MG == 1) {
              for (int64_t n = 0; n < N; ++n) out[n] = Sd[pk<T, MG>(mi, n)];
              continue;
            }
            const V dtm = bcl<V>(rw[mi].dt + Tc - 1), dtum = bcl<V>(rw[mi].dtu + Tc - 1);
            const T* q = pbc + (L - 1 - tb0) * SW;
            for (int64_t v = 0; v < nv; ++v) {
              const V a = vexp2(dtm * ld<V>(Ap + (v * MG + mi) * W));
              st(hl + v * W, a * ld<V>(Glast + v * W) + dtum * ld<V>(q + (v * 2 * MG + mi) * W));
            }
            for (int64_t n = 0; n < N; ++n) out[n] = hl[n];
          }
        }
      }
    }
  }
}

// Forward, general W: carry the M states, h[t][m] = Abar[t][m] sum_k W[m, k] h[t-1][k] + bbar.
template <typename T>
static void fwd_general(const Ctx<T>& c, const TaskRange& r, int64_t b, T* carry, T* rows,
                        T* buf) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t M = c.M, Np = c.Np, N = c.N, Tn = c.T_, L = c.L, S = c.S;
  for (int64_t d = r.d0; d < r.d1; ++d) {
    T* hs = carry + (d - r.d0) * S;
    for (int64_t i = 0; i < S; ++i) hs[i] = T(0);
    if (c.init)
      for (int64_t m = 0; m < M; ++m) {
        const T* h0 = c.init + c.st_off(m, b, d);
        for (int64_t n = 0; n < N; ++n) hs[m * Np + n] = h0[n];
      }
  }
  T* hn = buf;
  const int64_t CB = chunks_per_block(c, M);
  for (int64_t cb0 = 0; cb0 < c.a.nchunks; cb0 += CB)
  for (int64_t d = r.d0; d < r.d1; ++d)
  for (int64_t ch = cb0, cb1 = imin(cb0 + CB, c.a.nchunks); ch < cb1; ++ch) {
    const int64_t t0 = ch * Tn, Tc = (L - t0 < Tn) ? L - t0 : Tn;
    {
      T* hs = carry + (d - r.d0) * S;
      if (c.saved) {
        T* sv = c.saved_at(b, d, ch);
        for (int64_t i = 0; i < S; ++i) sv[i] = hs[i];
      }
      for (int64_t m = 0; m < M; ++m) {
        Rows<T> rw = rows_at(rows, m, Tn);
        prefetch_next(c, r, m, b, d, ch, cb0, cb1, false);
        prep_rows(c, rw, m, b, d, t0, Tc, false);
      }
      for (int64_t j = 0; j < Tc; ++j) {
        const int64_t t = t0 + j;
        for (int64_t m = 0; m < M; ++m) {
          Rows<T> rw = rows_at(rows, m, Tn);
          const T dtm = rw.dt[j], dtum = rw.dtu[j];
          const T *Am = c.Arow(m, d), *Bj = c.Brow(m, b, t), *Cj = c.Crow(m, b, t);
          const T* Wm = c.W + m * M;
          V acc = bc<V>(T(0));
          for (int64_t v = 0; v < Np; v += W) {
            V g = bc<V>(T(0));
            for (int64_t k = 0; k < M; ++k) g += Wm[k] * ld<V>(hs + k * Np + v);
            const V h = vexp2(dtm * ld<V>(Am + v)) * g + dtum * ld<V>(Bj + v);
            st(hn + m * Np + v, h);
            acc += ld<V>(Cj + v) * h;
          }
          st(rw.acc_y + j * W, acc);
        }
        for (int64_t i = 0; i < S; ++i) hs[i] = hn[i];
      }
      for (int64_t m = 0; m < M; ++m) {
        Rows<T> rw = rows_at(rows, m, Tn);
        bind_rows(c, rw, m, b, d, t0, Tc, false);
        finish_rows_fwd(c, rw, m, b, d, t0, Tc);
      }
      if (t0 + Tc == L && c.last)
        for (int64_t m = 0; m < M; ++m) {
          T* out = c.last + c.st_off(m, b, d);
          for (int64_t n = 0; n < N; ++n) out[n] = hs[m * Np + n];
        }
    }
  }
}
