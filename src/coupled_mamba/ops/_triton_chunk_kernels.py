"""Chunked Triton kernels of the coupled selective scan (variant "chunked").

_fwd_chunk_kernel and _bwd_chunk_kernel: couplings "none", "mean", "sum", time in chunks
solved by an associative scan in registers (the design below and docs/triton_kernel.md).
Shapes: M modalities (NM per program), Bt batch, D channels (BD per program), N state size
(NP padded), L length, T steps per chunk.
"""

import triton
import triton.language as tl

from ._triton_jit import _RUNTIME, _affine_pair, _softplus

# ---------------------------------------------------------------------------------------------
# Chunked kernels: rank-one ("mean", "sum") and uncoupled ("none") couplings.
#
# Both reduce to diagonal chains x[t] = a[t] x[t-1] + c[t] per (b, d, n):
#   rank one: one chain per program, the mean state Hbar over its M modalities, with
#             a = (w / M) sum_m Abar_m, c = (1 / M) sum_m bbar_m, and every modality's state is
#             pointwise, h_m[t] = w Abar_m[t] Hbar[t-1] + bbar_m[t] (docs/MATH.md, section 2);
#   "none":   one program per modality (grid axis 2), its own chain, a = Abar, c = bbar, w = 1.
# NM (the modalities of one program) is M or 1; the formulas below hold for both with the chain
# x = (1 / NM) sum_m h_m.
#
# Time is walked in chunks of T steps. The tiles are (T, NP, BD) with the channel axis last, so
# Triton's default layout spreads channels and states over the threads and keeps the T steps of a
# chunk inside each thread: tl.associative_scan along axis 0 then runs in registers (no shuffles,
# no shared memory), and the chunk's inputs are loaded up front, off the dependency chain. The
# carried state enters through the first element of the scan.
#
# Exclusive values (x[t-1], needed for h_m[t] and for d Abar) come from a 4-tuple scan: each
# element is (F, G), F the affine map of the segment and G the map of the segment without its
# last element (the identity for one element); combine(L, R) = (F_R o F_L, G_R o F_L). Applied
# to the carried state, F gives x[t] and G gives x[t-1], without recomputing exponentials.
# The backward's adjoint is the reverse recurrence mu[t] = a[t] mu[t+1] + r[t] (mu[t] = dL/dx[t-1]
# through the future), scanned with reverse=True and the same combine.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _chunk_modality(u_ptr, delta_ptr, B_ptr, A_ptr, bias_ptr, m, b, Bt, Dd, N, L, t, valid,
                    d1, n1, mask_d, mask_n, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr,
                    CT: tl.constexpr):
    """One modality's chunk: u, dt, dsoftplus (T, BD); B (T, NP); A (NP, BD); Abar (T, NP, BD)."""
    # Scalar int64 bases of the (m, b) slabs, int32 offsets inside them (D L, N L < 2^31).
    off_td = d1[None, :] * L + t[:, None]
    mtd = valid[:, None] & mask_d[None, :]
    base = (m * Bt + b) * Dd * L
    u = tl.load(u_ptr + base + off_td, mask=mtd, other=0.0).to(CT)
    x = tl.load(delta_ptr + base + off_td, mask=mtd, other=0.0).to(CT)
    if HAS_BIAS:
        x = x + tl.load(bias_ptr + m * Dd + d1, mask=mask_d, other=0.0).to(CT)[None, :]
    dt, dsp = _softplus(x, SOFTPLUS)
    Bm = tl.load(B_ptr + (m * Bt + b) * N * L + n1[None, :] * L + t[:, None],
                 mask=valid[:, None] & mask_n[None, :], other=0.0).to(CT)
    A = tl.load(A_ptr + m * Dd * N + d1[None, :] * N + n1[:, None],
                mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(CT)
    Abar = tl.exp(dt[:, None, :] * A[None, :, :])
    return u, dt, dsp, Bm, A, Abar


@triton.jit
def _last_along_t(x, sel):
    """x at the one step where sel (T, 1, 1) holds, as (NP, BD) (a reduction inside threads)."""
    return tl.sum(tl.where(sel, x, 0.0), axis=0)


@triton.jit(do_not_specialize=_RUNTIME)
def _fwd_chunk_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    y_ptr, last_ptr, ckpt_ptr,
    Bt, Dd, N, L, w_rank1,
    M: tl.constexpr, NM: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE: tl.constexpr, CT: tl.constexpr,
):
    """Grid (cdiv(D, BD), Bt, M // NM). ckpt: (n_chunks, M // NM, Bt, D, N), the chain's state
    before each chunk."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    k = tl.program_id(2)  # the chain: 0 for rank one, the modality for "none"
    m0 = k * NM
    tt = tl.arange(0, T)
    d1 = pid_d * BD + tl.arange(0, BD)
    n1 = tl.arange(0, NP)
    mask_d = d1 < Dd
    mask_n = n1 < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    off_nd = d1[None, :] * N + n1[:, None]  # (NP, BD) within one (m, b) state
    w = (tl.zeros((1, 1, 1), dtype=CT) + w_rank1)

    x = tl.zeros((NP, BD), dtype=CT)  # the chain's state before the chunk
    if HAS_H0:
        for i in tl.static_range(NM):
            x += tl.load(h0_ptr + ((m0 + i) * Bt + b) * Dd * N + off_nd, mask=mask_nd,
                         other=0.0).to(CT)
        x = x / NM
    one = tl.full((T, NP, BD), 1.0, CT)
    zero = tl.zeros((T, NP, BD), dtype=CT)
    n_chunks = tl.cdiv(L, T)
    for c in range(0, n_chunks):
        c0 = c * T
        t = c0 + tt
        valid = t < L
        if SAVE:
            tl.store(ckpt_ptr + ((c * (M // NM) + k) * Bt + b) * Dd * N + off_nd, x,
                     mask=mask_nd)
        asum = zero
        csum = zero
        mods = ()
        for i in tl.static_range(NM):
            u, dt, dsp, Bm, A, Abar = _chunk_modality(
                u_ptr, delta_ptr, B_ptr, A_ptr, bias_ptr, m0 + i, b, Bt, Dd, N, L, t, valid,
                d1, n1, mask_d, mask_n, SOFTPLUS, HAS_BIAS, CT)
            asum += Abar
            csum += (dt * u)[:, None, :] * Bm[:, :, None]
            mods = mods + ((u, dt, Bm, Abar),)
        v3 = valid[:, None, None]
        a = tl.where(v3, asum * w / NM, 1.0)
        cc = tl.where(v3, csum / NM, 0.0)
        fa, fb, ga, gb = tl.associative_scan((a, cc, one, zero), 0, _affine_pair)
        xprev = ga * x[None, :, :] + gb  # x[t - 1]
        x = _last_along_t(fa * x[None, :, :] + fb, (tt == T - 1)[:, None, None])
        is_last = (t == L - 1)[:, None, None]
        for i in tl.static_range(NM):
            m = m0 + i
            u, dt, Bm, Abar = mods[i]
            h = w * Abar * xprev + (dt * u)[:, None, :] * Bm[:, :, None]
            Cm = tl.load(C_ptr + (m * Bt + b) * N * L + n1[None, :] * L + t[:, None],
                         mask=valid[:, None] & mask_n[None, :], other=0.0).to(CT)
            y = tl.sum(Cm[:, :, None] * h, axis=1)
            if HAS_D:
                y += tl.load(D_ptr + m * Dd + d1, mask=mask_d, other=0.0).to(CT)[None, :] * u
            base = (m * Bt + b) * Dd * L
            off_td = d1[None, :] * L + t[:, None]
            mtd = valid[:, None] & mask_d[None, :]
            if HAS_Z:
                zz = tl.load(z_ptr + base + off_td, mask=mtd, other=0.0).to(CT)
                y = y * zz * tl.sigmoid(zz)
            tl.store(y_ptr + base + off_td, y.to(y_ptr.dtype.element_ty), mask=mtd)
            if c == n_chunks - 1:
                tl.store(last_ptr + (m * Bt + b) * Dd * N + off_nd,
                         _last_along_t(h, is_last).to(last_ptr.dtype.element_ty), mask=mask_nd)


@triton.jit
def _chunk_dy(C_ptr, D_ptr, z_ptr, dy_ptr, dlast_ptr, m, b, Bt, Dd, N, L, t, valid, d1, n1,
              mask_d, mask_n, off_nd, is_last, BD: tl.constexpr, HAS_D: tl.constexpr,
              HAS_Z: tl.constexpr, HAS_DLAST: tl.constexpr, CT: tl.constexpr):
    """One modality's chunk of the output side: C (T, NP), D (1, BD), z and dy (T, BD), the
    gated dy' = dy silu(z) (T, BD), and e = dL/dh_m through y_m[t] and the last state
    (T, NP, BD)."""
    Cm = tl.load(C_ptr + (m * Bt + b) * N * L + n1[None, :] * L + t[:, None],
                 mask=valid[:, None] & mask_n[None, :], other=0.0).to(CT)
    base = (m * Bt + b) * Dd * L
    off_td = d1[None, :] * L + t[:, None]
    mtd = valid[:, None] & mask_d[None, :]
    dy = tl.load(dy_ptr + base + off_td, mask=mtd, other=0.0).to(CT)
    if HAS_D:
        Dv = tl.load(D_ptr + m * Dd + d1, mask=mask_d, other=0.0).to(CT)[None, :]
    else:
        Dv = tl.zeros((1, BD), dtype=CT)
    if HAS_Z:
        zz = tl.load(z_ptr + base + off_td, mask=mtd, other=0.0).to(CT)
        dyp = dy * zz * tl.sigmoid(zz)
    else:
        zz = dy
        dyp = dy
    e = Cm[:, :, None] * dyp[:, None, :]
    if HAS_DLAST:
        dl = tl.load(dlast_ptr + (m * Bt + b) * Dd * N + off_nd, mask=n1[:, None] < N, other=0.0)
        e = tl.where(is_last, e + dl.to(CT)[None, :, :], e)
    return Cm, Dv, zz, dy, dyp, e


@triton.jit
def _chunk_both(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dy_ptr, dlast_ptr,
                m, b, Bt, Dd, N, L, t, valid, d1, n1, mask_d, mask_n, off_nd, is_last,
                BD: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
                HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DLAST: tl.constexpr,
                CT: tl.constexpr):
    """_chunk_modality and _chunk_dy of one modality (what the backward's passes 2 and 3 need)."""
    u, dt, dsp, Bm, A, Abar = _chunk_modality(
        u_ptr, delta_ptr, B_ptr, A_ptr, bias_ptr, m, b, Bt, Dd, N, L, t, valid,
        d1, n1, mask_d, mask_n, SOFTPLUS, HAS_BIAS, CT)
    Cm, Dv, zz, dy, dyp, e = _chunk_dy(
        C_ptr, D_ptr, z_ptr, dy_ptr, dlast_ptr, m, b, Bt, Dd, N, L, t, valid, d1, n1,
        mask_d, mask_n, off_nd, is_last, BD, HAS_D, HAS_Z, HAS_DLAST, CT)
    return u, dt, dsp, Bm, A, Abar, Cm, Dv, zz, dy, dyp, e


@triton.jit
def _chunk_offsets(m, b, Bt, Dd, N, L, t, d1, n1):
    """Scalar int64 slab bases and int32 in-slab offsets: (T, BD) into (M, Bt, D, L) tensors and
    (T, NP) into (M, Bt, N, L) tensors."""
    return ((m * Bt + b) * Dd * L, d1[None, :] * L + t[:, None], (m * Bt + b) * N * L,
            n1[None, :] * L + t[:, None])


@triton.jit(do_not_specialize=_RUNTIME)
def _bwd_chunk_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dy_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    Bt, Dd, N, L, w_rank1,
    M: tl.constexpr, NM: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr, CT: tl.constexpr,
):
    """Reverse pass over chunks, last first; same grid as _fwd_chunk_kernel.

    Per chunk: reload the chain's state from ckpt and rescan forward (x[t-1] for every step),
    then scan the adjoint backwards. With e_m = C_m dy'_m (plus dL/dh_m[L-1] at the last step):
        mu[t] = a[t] mu[t+1] + w sum_m Abar_m[t] e_m[t],     g_m[t] = e_m[t] + mu[t+1] / NM
    (g_m = dL/dh_m[t]), and dL/dAbar_m = g_m w x[t-1], dL/dbbar_m = g_m, dh0_m = mu[0] / NM.
    Registers, not exponentials, are what is scarce here: each of the three passes over the
    modalities recomputes its inputs and Abar instead of keeping them (three exponentials per
    element instead of one).
    dA, dD, d delta_bias are added (atomically, but only by this program) into per-batch-row
    partial sums (Bt, M, D, N) / (Bt, M, D) that the launcher sums; dB and dC are summed over the
    program's channels in registers, then atomically over channel blocks if there are several.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    k = tl.program_id(2)
    m0 = k * NM
    tt = tl.arange(0, T)
    d1 = pid_d * BD + tl.arange(0, BD)
    n1 = tl.arange(0, NP)
    mask_d = d1 < Dd
    mask_n = n1 < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    off_nd = d1[None, :] * N + n1[:, None]
    w = (tl.zeros((1, 1, 1), dtype=CT) + w_rank1)

    one = tl.full((T, NP, BD), 1.0, CT)
    zero = tl.zeros((T, NP, BD), dtype=CT)
    mu = tl.sum(zero, axis=0)  # dL/dx[c_end - 1] through the steps after the chunk
    n_chunks = tl.cdiv(L, T)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        c0 = c * T
        t = c0 + tt
        valid = t < L
        v3 = valid[:, None, None]
        mtd = valid[:, None] & mask_d[None, :]
        mtn = valid[:, None] & mask_n[None, :]
        is_last = (t == L - 1)[:, None, None]
        x = tl.load(ckpt_ptr + ((c * (M // NM) + k) * Bt + b) * Dd * N + off_nd, mask=mask_nd,
                    other=0.0)
        # Pass 1, forward again: x[t - 1] for every step of the chunk.
        asum = zero
        csum = zero
        for i in range(0, NM):  # a loop, not unrolled: fewer live registers
            u, dt, dsp, Bm, A, Abar = _chunk_modality(
                u_ptr, delta_ptr, B_ptr, A_ptr, bias_ptr, m0 + i, b, Bt, Dd, N, L, t, valid,
                d1, n1, mask_d, mask_n, SOFTPLUS, HAS_BIAS, CT)
            asum += Abar
            csum += (dt * u)[:, None, :] * Bm[:, :, None]
        a = tl.where(v3, asum * w / NM, 1.0)
        cc = tl.where(v3, csum / NM, 0.0)
        _, _, ga, gb = tl.associative_scan((a, cc, one, zero), 0, _affine_pair)
        xprev = ga * x[None, :, :] + gb

        # Pass 2: dz, dC and the adjoint's input r = w sum_m Abar_m e_m.
        r = zero
        for i in range(0, NM):  # a loop, not unrolled: fewer live registers
            m = m0 + i
            u, dt, dsp, Bm, A, Abar, Cm, Dv, zz, dy, dyp, e = _chunk_both(
                u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dy_ptr, dlast_ptr,
                m, b, Bt, Dd, N, L, t, valid, d1, n1, mask_d, mask_n, off_nd, is_last, BD,
                SOFTPLUS, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, CT)
            h = w * Abar * xprev + (dt * u)[:, None, :] * Bm[:, :, None]
            base, off_td, base_n, off_tn = _chunk_offsets(m, b, Bt, Dd, N, L, t, d1, n1)
            if HAS_Z:
                sig = tl.sigmoid(zz)
                ypre = tl.sum(Cm[:, :, None] * h, axis=1) + Dv * u
                dz = dy * ypre * sig * (1.0 + zz * (1.0 - sig))
                tl.store(dz_ptr + base + off_td, dz.to(dz_ptr.dtype.element_ty), mask=mtd)
            dC = tl.sum(h * dyp[:, None, :], axis=2)
            if ATOMIC_BC:
                tl.atomic_add(dC_ptr + base_n + off_tn, dC, mask=mtn)
            else:
                tl.store(dC_ptr + base_n + off_tn, dC.to(dC_ptr.dtype.element_ty), mask=mtn)
            r += Abar * e

        # The adjoint, backwards: mu[t + 1] for every step, and mu[c0] for the chunk before.
        fa, fb, ga, gb = tl.associative_scan((a, w * r, one, zero), 0, _affine_pair,
                                             reverse=True)
        mu_next = ga * mu[None, :, :] + gb
        mu = _last_along_t(fa * mu[None, :, :] + fb, (tt == 0)[:, None, None])

        # Pass 3: the gradients of the inputs.
        for i in range(0, NM):  # a loop, not unrolled: fewer live registers
            m = m0 + i
            u, dt, dsp, Bm, A, Abar, Cm, Dv, zz, dy, dyp, e = _chunk_both(
                u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dy_ptr, dlast_ptr,
                m, b, Bt, Dd, N, L, t, valid, d1, n1, mask_d, mask_n, off_nd, is_last, BD,
                SOFTPLUS, HAS_D, HAS_Z, HAS_BIAS, HAS_DLAST, CT)
            base, off_td, base_n, off_tn = _chunk_offsets(m, b, Bt, Dd, N, L, t, d1, n1)
            g = e + mu_next / NM  # dL/dh_m[t]
            dtA = g * w * xprev * Abar  # dL/d(dt A)
            gB = tl.sum(g * Bm[:, :, None], axis=1)  # (T, BD)
            ddt = tl.sum(dtA * A[None, :, :], axis=1) + gB * u
            du = gB * dt + Dv * dyp
            dx = ddt * dsp
            tl.store(du_ptr + base + off_td, du.to(du_ptr.dtype.element_ty), mask=mtd)
            tl.store(ddelta_ptr + base + off_td, dx.to(ddelta_ptr.dtype.element_ty), mask=mtd)
            dB = tl.sum(g * (dt * u)[:, None, :], axis=2)
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + base_n + off_tn, dB, mask=mtn)
            else:
                tl.store(dB_ptr + base_n + off_tn, dB.to(dB_ptr.dtype.element_ty), mask=mtn)
            # This program's own slots of the partial sums: the atomics only order the chunks.
            part = (b * M + m) * Dd
            tl.atomic_add(dA_ptr + part * N + off_nd, tl.sum(dtA * dt[:, None, :], axis=0),
                          mask=mask_nd)
            if HAS_D:
                tl.atomic_add(dD_ptr + part + d1, tl.sum(dyp * u, axis=0), mask=mask_d)
            if HAS_BIAS:
                tl.atomic_add(dbias_ptr + part + d1, tl.sum(tl.where(mtd, dx, 0.0), axis=0),
                              mask=mask_d)

    if HAS_H0:
        for i in tl.static_range(NM):
            tl.store(dh0_ptr + ((m0 + i) * Bt + b) * Dd * N + off_nd,
                     (mu / NM).to(dh0_ptr.dtype.element_ty), mask=mask_nd)
