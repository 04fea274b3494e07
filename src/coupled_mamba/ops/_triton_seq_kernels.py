"""Sequential Triton kernels of the coupled selective scan (variant "seq"; every coupling).

_fwd_kernel and _bwd_kernel, with the tile helpers only they use. The design (grid, coupling
kinds, checkpoints, the reverse pass) is in the docstring of ``_triton_kernels.py`` and in
docs/triton_kernel.md. Shapes: M modalities (MP padded), Bt batch, D channels (BD per
program), N state size (NP padded), L length.
"""

import triton
import triton.language as tl

from ._triton_jit import _RUNTIME, _maybe_load, _softplus


@triton.jit
def _couple(h, W4, wv3, KIND: tl.constexpr):
    """sum_k W[m, k] h[k] for a state tile h (MP, BD, NP)."""
    if KIND == 1:
        out = wv3 * tl.sum(h, axis=0)[None, :, :]
    elif KIND == 2:
        out = tl.sum(W4 * h[None, :, :, :], axis=1)
    else:
        out = h
    return out


@triton.jit
def _couple_t(g, W4, wv3, KIND: tl.constexpr):
    """sum_m W[m, k] g[m] (the transpose), for an adjoint tile g (MP, BD, NP)."""
    if KIND == 1:
        out = wv3 * tl.sum(g, axis=0)[None, :, :]
    elif KIND == 2:
        out = tl.sum(W4 * g[:, None, :, :], axis=0)
    else:
        out = g
    return out


@triton.jit
def _valid(t, end):
    """t < end as a (1, 1) tile: and-ing a 0-d bool into a mask breaks Triton 3.9's interpreter."""
    return (tl.zeros((1, 1), dtype=tl.int32) + t) < end


@triton.jit
def _step_inputs(u_ptr, delta_ptr, B_ptr, off_md, mask_md, off_mn, mask_mn, t, bias,
                 SOFTPLUS: tl.constexpr, CT: tl.constexpr):
    """u[t], dt[t], dsoftplus[t] as (MP, BD) tiles and B[t] as (MP, NP)."""
    u_t = tl.load(u_ptr + off_md + t, mask=mask_md, other=0.0).to(CT)
    x = tl.load(delta_ptr + off_md + t, mask=mask_md, other=0.0).to(CT) + bias
    dt, dsp = _softplus(x, SOFTPLUS)
    B_t = tl.load(B_ptr + off_mn + t, mask=mask_mn, other=0.0).to(CT)
    return u_t, dt, dsp, B_t


@triton.jit
def _step(h, u_ptr, delta_ptr, B_ptr, off_md, mask_md, off_mn, mask_mn, t, bias, A, W4, wv3,
          KIND: tl.constexpr, SOFTPLUS: tl.constexpr, CT: tl.constexpr):
    """One step of the recurrence from h[t-1]: (h[t], u[t])."""
    u_t, dt, dsp, B_t = _step_inputs(u_ptr, delta_ptr, B_ptr, off_md, mask_md, off_mn, mask_mn,
                                     t, bias, SOFTPLUS, CT)
    Abar = tl.exp(dt[:, :, None] * A)
    h = Abar * _couple(h, W4, wv3, KIND) + (dt * u_t)[:, :, None] * B_t[:, None, :]
    return h, u_t


@triton.jit
def _tiles(Bt, Dd, N, L, M: tl.constexpr, MP: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr):
    """Offsets and masks of one program's tiles (int64 where they index big tensors)."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    m1 = tl.arange(0, MP)
    d1 = pid_d * BD + tl.arange(0, BD)
    n1 = tl.arange(0, NP)
    m2 = m1[:, None]
    mask_md = (m2 < M) & (d1[None, :] < Dd)
    off_md = ((m2 * Bt + b) * Dd + d1[None, :]) * L  # (MP, BD): + t indexes u, delta, z, y
    mask_mn = (m2 < M) & (n1[None, :] < N)
    off_mn = ((m2 * Bt + b) * N + n1[None, :]) * L  # (MP, NP): + t indexes B, C
    mask3 = mask_md[:, :, None] & (n1[None, None, :] < N)
    # (MP, BD, NP) into an (M, Bt, D, N) state tensor, and into A (M, D, N).
    off_h = ((m2[:, :, None] * Bt + b) * Dd + d1[None, :, None]) * N + n1[None, None, :]
    off_a = (m2[:, :, None] * Dd + d1[None, :, None]) * N + n1[None, None, :]
    off_p = m2 * Dd + d1[None, :]  # (MP, BD) into (M, D) parameters
    return b, pid_d, m1, off_md, mask_md, off_mn, mask_mn, off_h, off_a, off_p, mask3


@triton.jit
def _coupling_tiles(W_ptr, w_rank1, m1, M: tl.constexpr, MP: tl.constexpr, KIND: tl.constexpr,
                    CT: tl.constexpr):
    """W as an (MP, MP, 1, 1) tile (general kind) and w / M per modality as (MP, 1, 1) (rank one).

    Padded modalities get zero rows and columns, so their state stays zero.
    """
    # w is 1 or M, exact in the fp32 scalar argument; divide in the compute dtype.
    wv3 = tl.where(m1 < M, (tl.zeros((MP,), dtype=CT) + w_rank1) / M, 0.0)[:, None, None]
    W4 = tl.zeros((MP, MP, 1, 1), dtype=CT)
    if KIND == 2:
        wmask = (m1[:, None] < M) & (m1[None, :] < M)
        W2 = tl.load(W_ptr + m1[:, None] * M + m1[None, :], mask=wmask, other=0.0).to(CT)
        W4 = W2[:, :, None, None]
    return W4, wv3


@triton.jit
def _params(A_ptr, W_ptr, bias_ptr, D_ptr, w_rank1, m1, off_a, mask3, off_p, mask_md,
            M: tl.constexpr, MP: tl.constexpr, KIND: tl.constexpr, HAS_BIAS: tl.constexpr,
            HAS_D: tl.constexpr, CT: tl.constexpr):
    """What stays in registers for the whole sequence: A, the coupling, delta_bias and D."""
    A = tl.load(A_ptr + off_a, mask=mask3, other=0.0).to(CT)
    W4, wv3 = _coupling_tiles(W_ptr, w_rank1, m1, M, MP, KIND, CT)
    bias = _maybe_load(bias_ptr, off_p, mask_md, HAS_BIAS, CT)
    Dv = _maybe_load(D_ptr, off_p, mask_md, HAS_D, CT)
    return A, W4, wv3, bias, Dv



@triton.jit(do_not_specialize=_RUNTIME)
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, W_ptr, h0_ptr,
    y_ptr, last_ptr, ckpt_ptr,
    Bt, Dd, N, L, w_rank1,
    M: tl.constexpr, MP: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
    CHUNK: tl.constexpr, KIND: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SAVE: tl.constexpr, CT: tl.constexpr,
):
    b, pid_d, m1, off_md, mask_md, off_mn, mask_mn, off_h, off_a, off_p, mask3 = _tiles(
        Bt, Dd, N, L, M, MP, BD, NP)
    A, W4, wv3, bias, Dv = _params(A_ptr, W_ptr, bias_ptr, D_ptr, w_rank1, m1, off_a, mask3,
                                   off_p, mask_md, M, MP, KIND, HAS_BIAS, HAS_D, CT)
    h = _maybe_load(h0_ptr, off_h, mask3, HAS_H0, CT)
    state_numel = M * Bt * Dd * N
    n_chunks = tl.cdiv(L, CHUNK)
    for c in range(0, n_chunks):
        if SAVE:
            # ckpt[c] = the state before step c * CHUNK: where the backward restarts.
            tl.store(ckpt_ptr + (b * 0 + c) * state_numel + off_h, h, mask=mask3)
        for t in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, L)):
            h, u_t = _step(h, u_ptr, delta_ptr, B_ptr, off_md, mask_md, off_mn, mask_mn, t,
                           bias, A, W4, wv3, KIND, SOFTPLUS, CT)
            C_t = tl.load(C_ptr + off_mn + t, mask=mask_mn, other=0.0).to(CT)
            y = tl.sum(h * C_t[:, None, :], axis=2) + Dv * u_t
            if HAS_Z:
                z_t = tl.load(z_ptr + off_md + t, mask=mask_md, other=0.0).to(CT)
                y = y * z_t * tl.sigmoid(z_t)
            tl.store(y_ptr + off_md + t, y.to(y_ptr.dtype.element_ty), mask=mask_md)
    tl.store(last_ptr + off_h, h.to(last_ptr.dtype.element_ty), mask=mask3)


@triton.jit(do_not_specialize=_RUNTIME)
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, W_ptr, ckpt_ptr,
    dy_ptr, dlast_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dW_ptr, dh0_ptr,
    Bt, Dd, N, L, w_rank1,
    M: tl.constexpr, MP: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
    CHUNK: tl.constexpr, S: tl.constexpr, KIND: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_DLAST: tl.constexpr, NEED_DW: tl.constexpr, ATOMIC_BC: tl.constexpr, CT: tl.constexpr,
):
    b, pid_d, m1, off_md, mask_md, off_mn, mask_mn, off_h, off_a, off_p, mask3 = _tiles(
        Bt, Dd, N, L, M, MP, BD, NP)
    A, W4, wv3, bias, Dv = _params(A_ptr, W_ptr, bias_ptr, D_ptr, w_rank1, m1, off_a, mask3,
                                   off_p, mask_md, M, MP, KIND, HAS_BIAS, HAS_D, CT)

    # Adjoint carried backwards in time: W^T (Abar[t+1] * g[t+1]), seeded by dL/dh[L-1].
    gcar = _maybe_load(dlast_ptr, off_h, mask3, HAS_DLAST, CT)
    dA_acc = tl.zeros((MP, BD, NP), dtype=CT)
    dD_acc = tl.zeros((MP, BD), dtype=CT)
    dbias_acc = tl.zeros((MP, BD), dtype=CT)
    if NEED_DW:
        dW_acc = tl.zeros((MP, MP, BD, NP), dtype=CT)
    else:
        dW_acc = tl.zeros((MP, MP, 1, 1), dtype=CT)

    # This program's scratch: CHUNK / S states of (MP, BD, NP), reused by every chunk.
    tile = MP * BD * NP
    loc = (m1[:, None, None] * BD + tl.arange(0, BD)[None, :, None]) * NP \
        + tl.arange(0, NP)[None, None, :]
    scratch = scratch_ptr + (b * tl.num_programs(0) + pid_d) * ((CHUNK // S) * tile)
    state_numel = M * Bt * Dd * N
    n_chunks = tl.cdiv(L, CHUNK)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        c0 = c * CHUNK
        c_end = tl.minimum(c0 + CHUNK, L)
        n_sub = tl.cdiv(c_end - c0, S)
        # Phase 1: states at the start of every sub-chunk of this chunk, from its checkpoint.
        h = tl.load(ckpt_ptr + (b * 0 + c) * state_numel + off_h, mask=mask3, other=0.0)
        for j in range(0, n_sub - 1):
            tl.store(scratch + j * tile + loc, h)
            for t in range(c0 + j * S, c0 + j * S + S):
                h, u_t = _step(h, u_ptr, delta_ptr, B_ptr, off_md, mask_md, off_mn, mask_mn, t,
                               bias, A, W4, wv3, KIND, SOFTPLUS, CT)
        tl.store(scratch + (n_sub - 1) * tile + loc, h)
        tl.debug_barrier()  # the scratch is read back below by other threads of this program

        # Phase 2: sub-chunks last to first.
        for jj in range(0, n_sub):
            j = n_sub - 1 - jj
            t0 = c0 + j * S
            h = tl.load(scratch + j * tile + loc)
            # Recompute the S states into registers (unrolled); hps[s] = h[t0 + s - 1].
            hps = ()
            for s in tl.static_range(S):
                t = t0 + s
                valid = _valid(t, c_end)
                hps = hps + (h,)
                h_new, u_t = _step(h, u_ptr, delta_ptr, B_ptr, off_md, mask_md & valid, off_mn,
                                   mask_mn & valid, t, bias, A, W4, wv3, KIND, SOFTPLUS, CT)
                h = tl.where(valid[:, :, None], h_new, h)
            # Step backwards through them; steps past the end (t >= L) leave everything as is.
            hn = h  # h[t]
            for s in tl.static_range(S):
                t = t0 + S - 1 - s
                valid = _valid(t, c_end)
                mmd = mask_md & valid
                mmn = mask_mn & valid
                hp = hps[S - 1 - s]  # h[t - 1]
                u_t, dt, dsp, B_t = _step_inputs(u_ptr, delta_ptr, B_ptr, off_md, mmd, off_mn,
                                                 mmn, t, bias, SOFTPLUS, CT)
                C_t = tl.load(C_ptr + off_mn + t, mask=mmn, other=0.0).to(CT)
                dyp = tl.load(dy_ptr + off_md + t, mask=mmd, other=0.0).to(CT)
                Abar = tl.exp(dt[:, :, None] * A)
                if HAS_Z:
                    z_t = tl.load(z_ptr + off_md + t, mask=mmd, other=0.0).to(CT)
                    sig = tl.sigmoid(z_t)
                    ypre = tl.sum(hn * C_t[:, None, :], axis=2) + Dv * u_t
                    dz = dyp * ypre * sig * (1.0 + z_t * (1.0 - sig))
                    tl.store(dz_ptr + off_md + t, dz.to(dz_ptr.dtype.element_ty), mask=mmd)
                    dyp = dyp * z_t * sig
                g = tl.where(valid[:, :, None], gcar + C_t[:, None, :] * dyp[:, :, None], 0.0)
                dC_t = tl.sum(hn * dyp[:, :, None], axis=1)
                dB_t = tl.sum(g * (dt * u_t)[:, :, None], axis=1)
                gB = tl.sum(g * B_t[:, None, :], axis=2)
                dAbar_a = g * _couple(hp, W4, wv3, KIND) * Abar  # dL/d(dt * A)
                ddt = tl.sum(dAbar_a * A, axis=2) + gB * u_t
                dA_acc += dAbar_a * dt[:, :, None]
                du = gB * dt + Dv * dyp
                dD_acc += dyp * u_t
                dx = ddt * dsp
                dbias_acc += tl.where(mmd, dx, 0.0)
                tl.store(du_ptr + off_md + t, du.to(du_ptr.dtype.element_ty), mask=mmd)
                tl.store(ddelta_ptr + off_md + t, dx.to(ddelta_ptr.dtype.element_ty), mask=mmd)
                if ATOMIC_BC:
                    tl.atomic_add(dB_ptr + off_mn + t, dB_t, mask=mmn)
                    tl.atomic_add(dC_ptr + off_mn + t, dC_t, mask=mmn)
                else:
                    tl.store(dB_ptr + off_mn + t, dB_t.to(dB_ptr.dtype.element_ty), mask=mmn)
                    tl.store(dC_ptr + off_mn + t, dC_t.to(dC_ptr.dtype.element_ty), mask=mmn)
                ga = g * Abar  # dL/d(W h[t-1])
                if NEED_DW:
                    dW_acc += ga[:, None, :, :] * hp[None, :, :, :]
                gcar = tl.where(valid[:, :, None], _couple_t(ga, W4, wv3, KIND), gcar)
                hn = hp
        tl.debug_barrier()  # the next chunk overwrites the scratch

    # Per-program partial sums; the launcher adds them up over batch rows (and channel blocks).
    part = b * (M * Dd * N)
    tl.store(dA_ptr + part + off_a, dA_acc, mask=mask3)
    if HAS_D:
        tl.store(dD_ptr + b * (M * Dd) + off_p, dD_acc, mask=mask_md)
    if HAS_BIAS:
        tl.store(dbias_ptr + b * (M * Dd) + off_p, dbias_acc, mask=mask_md)
    if NEED_DW:
        dW = tl.sum(tl.sum(dW_acc, axis=3), axis=2)
        wmask = (m1[:, None] < M) & (m1[None, :] < M)
        wpart = (b * tl.num_programs(0) + pid_d) * (M * M)
        tl.store(dW_ptr + wpart + m1[:, None] * M + m1[None, :], dW, mask=wmask)
    if HAS_H0:
        tl.store(dh0_ptr + off_h, gcar.to(dh0_ptr.dtype.element_ty), mask=mask3)
