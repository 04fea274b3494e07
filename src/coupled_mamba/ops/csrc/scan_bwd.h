// Backward kernels (reverse pass over chunks): the pointwise backward of a chunk's rows
// (finish_rows_bwd), rank one and diagonal (bwd_rank1), general W (bwd_general).
//
// Part of scan_kernel_impl.h, which includes it inside namespace SCAN_NS after the parts
// listed before it there; not a standalone header.

// Backward of the pointwise parts for one (m, b, d) chunk, given from the reverse pass (as
// per-step vectors) s1[t] = sum_n dh B, s2[t] = sum_n dh g Abar A2 (g: the coupled previous state)
// and ys[t] = sum_n C h. Writes du, ddelta, dz; adds the chunk's parts of dD and dbias.
template <typename T>
static void finish_rows_bwd(const Ctx<T>& c, Rows<T>& r, int64_t m, int64_t b, int64_t d,
                            int64_t t0, int64_t Tc, T* dD_acc, T* dbias_acc) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Tn = c.T_, Tv = rows_used(Tc);
  reduce_rows_n(r.acc_1, Tc, r.s1);
  reduce_rows_n(r.acc_2, Tc, r.s2);
  if (c.z) reduce_rows_n(r.acc_y, Tc, r.ys);
  for (int64_t j = Tc; j < Tv; ++j) r.s1[j] = r.s2[j] = r.ys[j] = T(0);  // unused tail rows
  const T Dm = c.Dskip ? c.Dskip[m * c.D + d] : T(0);
  const T ln2 = T(0.6931471805599453094);  // s2 was summed against A2 = A log2(e)
  const bool full = Tc == Tn;
  const int64_t off = c.row(m, b, d) + t0;
  T* du = full ? c.du + off : r.pad_u;
  T* dd = full ? c.ddelta + off : r.dt;
  T* dz = full && c.z ? c.dz + off : r.pad_dl;
  V accD = bc<V>(T(0)), accb = bc<V>(T(0));
  for (int64_t j = 0; j < Tv; j += W) {
    const V dy = ld<V>(r.dy + j), uv = ld<V>(r.u + j), s1 = ld<V>(r.s1 + j);
    const V s2 = ld<V>(r.s2 + j) * ln2;
    if (c.z) {
      const V zv = ld<V>(r.z + j);
      const V sg = vsigmoid(zv);
      const V ypre = ld<V>(r.ys + j) + Dm * uv;
      // d silu(z) / dz = sigmoid(z) (1 + z (1 - sigmoid(z)))
      st(dz + j, ld<V>(r.dout + j) * ypre * (sg * (T(1) + zv * (T(1) - sg))));
    }
    accD += dy * uv;
    const V dtv = ld<V>(r.dt + j);
    V ddt = s2 + uv * s1;
    if (c.a.softplus) ddt = ddt * ld<V>(r.spg + j);
    accb += ddt;
    st(du + j, dy * Dm + dtv * s1);
    st(dd + j, ddt);
  }
  if (!full) {
    for (int64_t j = 0; j < Tc; ++j) {
      c.du[off + j] = du[j];
      c.ddelta[off + j] = dd[j];
    }
    if (c.z)
      for (int64_t j = 0; j < Tc; ++j) c.dz[off + j] = dz[j];
  }
  *dD_acc += hsum(accD);
  *dbias_acc += hsum(accb);
}

// ---------------------------------------------------------------------------------------------
// Backward, rank one. Reverse recurrence, with dS[t] the gradient w.r.t. S[t] = sum_m h[t][m]
// from later steps:
//   dh[t][m] = dS[t] + dy[t][m] C[t][m] (+ dlast[m] at t = L-1)
//   dS[t-1]  = (w / MG) sum_m dh[t][m] Abar[t][m]
//   dAbar    = dh G (G = (w / MG) S[t-1]);  dbbar = dh
// then the chain rule through Abar = 2^(dt A2), bbar = dt B u.
template <typename T, int MG, bool COUPLED, bool WITH_DLAST>
static inline void bwd_rank1_step(const Ctx<T>& c, T wM, int64_t j, Rows<T>* rw, const T* q,
                                  T* dq, const T* Ap, T* dAp, const T* Sp, const T* Ab, T* dS,
                                  const T* dl) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t nv = c.Np / W;
  V dym[MG], dtm[MG], dtum[MG], s1[MG], s2[MG], ya[MG];
  for (int mi = 0; mi < MG; ++mi) {
    dym[mi] = bcl<V>(rw[mi].dy + j);
    dtm[mi] = bcl<V>(rw[mi].dt + j);
    dtum[mi] = bcl<V>(rw[mi].dtu + j);
    s1[mi] = s2[mi] = ya[mi] = bc<V>(T(0));
  }
  for (int64_t v = 0; v < nv; ++v) {
    const T *qv = q + v * 2 * MG * W, *av = Ap + v * MG * W, *abv = Ab + v * MG * W;
    T *dqv = dq + v * 2 * MG * W, *dav = dAp + v * MG * W;
    const T* spv = Sp + (COUPLED ? v : v * MG) * W;
    T* dsv = dS + (COUPLED ? v : v * MG) * W;
    V G = ld<V>(spv);
    if (COUPLED && MG > 1) G = wM * G;
    const V dSv = ld<V>(dsv);
    V dGa = bc<V>(T(0));
    for (int mi = 0; mi < MG; ++mi) {
      const V a = ld<V>(abv + mi * W);
      const V Bv = ld<V>(qv + mi * W), Cv = ld<V>(qv + (MG + mi) * W);
      const V Gm = COUPLED ? G : ld<V>(spv + mi * W);
      V dh = (COUPLED ? dSv : ld<V>(dsv + mi * W)) + dym[mi] * Cv;
      if (WITH_DLAST) dh += ld<V>(dl + mi * c.Np + v * W);
      const V h = a * Gm + dtum[mi] * Bv;
      add_to(dqv + (MG + mi) * W, dym[mi] * h);  // dC
      ya[mi] += Cv * h;
      add_to(dqv + mi * W, dh * dtum[mi]);  // dB
      s1[mi] += dh * Bv;
      const V dha = dh * a;
      const V da = dha * Gm;  // d loss / d(dt A) = dAbar Abar
      add_to(dav + mi * W, da * dtm[mi]);
      s2[mi] += da * ld<V>(av + mi * W);
      if (COUPLED) dGa += dha;
      else st(dsv + mi * W, dha);  // the gradient reaching h[t-1][m]
    }
    if (COUPLED) st(dsv, MG > 1 ? wM * dGa : dGa);
  }
  for (int mi = 0; mi < MG; ++mi) {
    st(rw[mi].acc_1 + j * W, s1[mi]);
    st(rw[mi].acc_2 + j * W, s2[mi]);
    st(rw[mi].acc_y + j * W, ya[mi]);
  }
}

template <typename T, int MG, bool COUPLED>
static void bwd_rank1(const Ctx<T>& c, const TaskRange& r, int64_t b, int64_t m0, T wM,
                      T* carry, int64_t cstride, int64_t soff, T* rows, T* buf) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Np = c.Np, N = c.N, Tn = c.T_, L = c.L, nv = Np / W, SW = nv * 2 * MG * W;
  const int64_t SS = COUPLED ? Np : MG * Np;  // carried state per unit (as in the forward)
  T* Sbuf = buf;                        // (T + 1) x SS: states at t0 - 1 .. t0 + Tc - 1
  T* Abuf = Sbuf + (Tn + 1) * c.S;      // T x [n-vector][modality][lane]: Abar
  T* dl = Abuf + Tn * c.M * Np;         // MG x Np: dlast, padded
  T* Ap = dl + c.M * Np;                // packed A and dA of the channel
  T* dAp = Ap + c.M * Np;
  T* pbc = dAp + 2 * c.M * Np + c.M * c.M * kMaxLanes;  // packed B, C and dB, dC of the block
  T* pdbc = pbc + packed_block_elems(c.a);
  Rows<T> rw[MG];
  for (int mi = 0; mi < MG; ++mi) rw[mi] = rows_at(rows, mi, Tn);
  for (int64_t d = r.d0; d < r.d1; ++d) {
    T* dS = carry + (d - r.d0) * cstride;
    for (int64_t n = 0; n < SS; ++n) dS[n] = T(0);
  }
  const int64_t CB = chunks_per_block(c, MG);
  for (int64_t cb1 = c.a.nchunks; cb1 > 0; cb1 -= CB) {
    const int64_t cb0 = imax(cb1 - CB, int64_t(0)), tb0 = cb0 * Tn, tb1 = imin(cb1 * Tn, L);
    pack_bc<T, MG>(c, b, m0, tb0, tb1, pbc);
    for (int64_t i = 0; i < (tb1 - tb0) * SW; ++i) pdbc[i] = T(0);
    for (int64_t d = r.d0; d < r.d1; ++d) {
      T* dS = carry + (d - r.d0) * cstride;
      pack_a<T, MG>(c, m0, d, Ap);
      for (int64_t i = 0; i < MG * Np; ++i) dAp[i] = T(0);
      for (int64_t ch = cb1 - 1; ch >= cb0; --ch) {
        const int64_t t0 = ch * Tn, Tc = (L - t0 < Tn) ? L - t0 : Tn;
        for (int mi = 0; mi < MG; ++mi) {
          prefetch_next(c, r, m0 + mi, b, d, ch, cb0, cb1, true);
          prep_rows(c, rw[mi], m0 + mi, b, d, t0, Tc, true);
        }
        // Recompute S over the chunk (and keep Abar) from the state saved at its start.
        const T* sv = c.saved_at(b, d, ch) + soff;
        for (int64_t n = 0; n < SS; ++n) Sbuf[n] = sv[n];
        for (int64_t j = 0; j < Tc; ++j) {
          const T* Sp = Sbuf + j * SS;
          T* Sn = Sbuf + (j + 1) * SS;
          T* Ab = Abuf + j * MG * Np;
          const T* q = pbc + (t0 + j - tb0) * SW;
          V dtm[MG], dtum[MG];
          for (int mi = 0; mi < MG; ++mi) {
            dtm[mi] = bcl<V>(rw[mi].dt + j);
            dtum[mi] = bcl<V>(rw[mi].dtu + j);
          }
          for (int64_t v = 0; v < nv; ++v) {
            const int64_t o = (COUPLED ? v : v * MG) * W;
            V G = ld<V>(Sp + o);
            if (COUPLED && MG > 1) G = wM * G;
            V s = bc<V>(T(0));
            for (int mi = 0; mi < MG; ++mi) {
              const V a = vexp2(dtm[mi] * ld<V>(Ap + (v * MG + mi) * W));
              st(Ab + (v * MG + mi) * W, a);
              const V Gm = COUPLED ? G : ld<V>(Sp + o + mi * W);
              const V h = a * Gm + dtum[mi] * ld<V>(q + (v * 2 * MG + mi) * W);
              if (COUPLED) s = mi == 0 ? h : s + h;
              else st(Sn + o + mi * W, h);
            }
            if (COUPLED) st(Sn + o, s);
          }
        }
        // Reverse over the chunk.
        for (int64_t j = Tc - 1; j >= 0; --j) {
          const int64_t t = t0 + j;
          const T* q = pbc + (t - tb0) * SW;
          T* dq = pdbc + (t - tb0) * SW;
          const T *Sp = Sbuf + j * SS, *Ab = Abuf + j * MG * Np;
          if (t == L - 1 && c.dlast) {
            for (int mi = 0; mi < MG; ++mi) {
              const T* src = c.dlast + c.st_off(m0 + mi, b, d);
              for (int64_t n = 0; n < Np; ++n) dl[mi * Np + n] = n < N ? src[n] : T(0);
            }
            bwd_rank1_step<T, MG, COUPLED, true>(c, wM, j, rw, q, dq, Ap, dAp, Sp, Ab, dS, dl);
          } else {
            bwd_rank1_step<T, MG, COUPLED, false>(c, wM, j, rw, q, dq, Ap, dAp, Sp, Ab, dS, dl);
          }
        }
        for (int mi = 0; mi < MG; ++mi) {
          const int64_t m = m0 + mi;
          finish_rows_bwd(c, rw[mi], m, b, d, t0, Tc, c.dD + c.md(r, m, d),
                          c.dbias + c.md(r, m, d));
        }
      }
      for (int mi = 0; mi < MG; ++mi) {
        T* dAm = c.dArow(r, m0 + mi, d);
        for (int64_t v = 0; v < nv; ++v) add_to(dAm + v * W, ld<V>(dAp + (v * MG + mi) * W));
      }
    }
    unpack_add_bc<T, MG>(c, r, b, m0, tb0, tb1, pdbc);
  }
  // Rank one: S[-1] = sum_m h0[m], so every h0[m] receives dS[-1]; diagonal: its own.
  if (c.dinit)
    for (int64_t d = r.d0; d < r.d1; ++d) {
      const T* dS = carry + (d - r.d0) * cstride;
      for (int mi = 0; mi < MG; ++mi) {
        T* out = c.dinit + c.st_off(m0 + mi, b, d);
        for (int64_t n = 0; n < N; ++n) out[n] = dS[COUPLED ? n : pk<T, MG>(mi, n)];
      }
    }
}

// Backward, general W: carry dh[m] (gradient w.r.t. h[t][m] from later steps):
//   dh[t][m]   += dy[t][m] C[t][m];   dg[m] = dh[t][m] Abar[t][m]
//   dh[t-1][k]  = sum_m W[m, k] dg[m];  dW[m, k] += sum dg[m] h[t-1][k]
template <typename T>
static void bwd_general(const Ctx<T>& c, const TaskRange& r, int64_t b, T* carry, T* rows,
                        T* buf) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t M = c.M, Np = c.Np, N = c.N, Tn = c.T_, L = c.L, S = c.S;
  T* hbuf = buf;                        // (T + 1) x M x Np: h[t0 - 1 .. t0 + Tc - 1]
  T* Abuf = hbuf + (Tn + 1) * S;        // T x M x Np
  T* dn = Abuf + Tn * S;                // M x Np
  T* dWacc = dn + 2 * S;                // M x M x W
  for (int64_t d = r.d0; d < r.d1; ++d) {
    T* dh = carry + (d - r.d0) * S;
    for (int64_t i = 0; i < S; ++i) dh[i] = T(0);
    if (c.dlast)
      for (int64_t m = 0; m < M; ++m) {
        const T* src = c.dlast + c.st_off(m, b, d);
        for (int64_t n = 0; n < N; ++n) dh[m * Np + n] = src[n];
      }
  }
  for (int64_t i = 0; i < M * M * W; ++i) dWacc[i] = T(0);
  const int64_t CB = chunks_per_block(c, M);
  for (int64_t cb1 = c.a.nchunks; cb1 > 0; cb1 -= CB)
  for (int64_t d = r.d0; d < r.d1; ++d)
  for (int64_t cb0 = imax(cb1 - CB, int64_t(0)), ch = cb1 - 1; ch >= cb0; --ch) {
    const int64_t t0 = ch * Tn, Tc = (L - t0 < Tn) ? L - t0 : Tn;
    {
      T* dhc = carry + (d - r.d0) * S;
      for (int64_t m = 0; m < M; ++m) {
        Rows<T> rw = rows_at(rows, m, Tn);
        prefetch_next(c, r, m, b, d, ch, cb0, cb1, true);
        prep_rows(c, rw, m, b, d, t0, Tc, true);
      }
      const T* sv = c.saved_at(b, d, ch);
      for (int64_t i = 0; i < S; ++i) hbuf[i] = sv[i];
      for (int64_t j = 0; j < Tc; ++j) {
        const int64_t t = t0 + j;
        const T* hp = hbuf + j * S;
        T* hn = hbuf + (j + 1) * S;
        for (int64_t m = 0; m < M; ++m) {
          Rows<T> rw = rows_at(rows, m, Tn);
          const T dtm = rw.dt[j], dtum = rw.dtu[j];
          const T *Am = c.Arow(m, d), *Bj = c.Brow(m, b, t), *Wm = c.W + m * M;
          T* Ab = Abuf + (j * M + m) * Np;
          for (int64_t v = 0; v < Np; v += W) {
            V g = bc<V>(T(0));
            for (int64_t k = 0; k < M; ++k) g += Wm[k] * ld<V>(hp + k * Np + v);
            const V a = vexp2(dtm * ld<V>(Am + v));
            st(Ab + v, a);
            st(hn + m * Np + v, a * g + dtum * ld<V>(Bj + v));
          }
        }
      }
      for (int64_t j = Tc - 1; j >= 0; --j) {
        const int64_t t = t0 + j;
        const T* hp = hbuf + j * S;
        const T* hc = hbuf + (j + 1) * S;
        for (int64_t i = 0; i < S; ++i) dn[i] = T(0);
        for (int64_t m = 0; m < M; ++m) {
          Rows<T> rw = rows_at(rows, m, Tn);
          const T dym = rw.dy[j], dtm = rw.dt[j], dtum = rw.dtu[j];
          const T *Am = c.Arow(m, d), *Bj = c.Brow(m, b, t), *Cj = c.Crow(m, b, t);
          const T* Wm = c.W + m * M;
          const T* Ab = Abuf + (j * M + m) * Np;
          T* dAm = c.dArow(r, m, d);
          T* dBj = c.dB + c.dbc_off(r, m, b, t);
          T* dCj = c.dC + c.dbc_off(r, m, b, t);
          V s1 = bc<V>(T(0)), s2 = bc<V>(T(0)), ya = bc<V>(T(0));
          for (int64_t v = 0; v < Np; v += W) {
            V g = bc<V>(T(0));
            for (int64_t k = 0; k < M; ++k) g += Wm[k] * ld<V>(hp + k * Np + v);
            const V a = ld<V>(Ab + v), h = ld<V>(hc + m * Np + v);
            const V Bv = ld<V>(Bj + v), Cv = ld<V>(Cj + v);
            const V dh = ld<V>(dhc + m * Np + v) + dym * Cv;
            add_to(dCj + v, dym * h);
            ya += Cv * h;
            add_to(dBj + v, dh * dtum);
            s1 += dh * Bv;
            const V dg = dh * a;
            const V da = dg * g;
            add_to(dAm + v, da * dtm);
            s2 += da * ld<V>(Am + v);
            for (int64_t k = 0; k < M; ++k) {
              add_to(dn + k * Np + v, Wm[k] * dg);
              add_to(dWacc + (m * M + k) * W, dg * ld<V>(hp + k * Np + v));
            }
          }
          st(rw.acc_1 + j * W, s1);
          st(rw.acc_2 + j * W, s2);
          st(rw.acc_y + j * W, ya);
        }
        for (int64_t i = 0; i < S; ++i) dhc[i] = dn[i];
      }
      for (int64_t m = 0; m < M; ++m) {
        Rows<T> rw = rows_at(rows, m, Tn);
        bind_rows(c, rw, m, b, d, t0, Tc, true);
        finish_rows_bwd(c, rw, m, b, d, t0, Tc, c.dD + c.md(r, m, d), c.dbias + c.md(r, m, d));
      }
    }
  }
  if (c.dinit)
    for (int64_t d = r.d0; d < r.d1; ++d) {
      const T* dh = carry + (d - r.d0) * S;
      for (int64_t m = 0; m < M; ++m) {
        T* out = c.dinit + c.st_off(m, b, d);
        for (int64_t n = 0; n < N; ++n) out[n] = dh[m * Np + n];
      }
    }
  for (int64_t i = 0; i < M * M; ++i) c.dW[r.task * M * M + i] += hsum(ld<V>(dWacc + i * W));
}
