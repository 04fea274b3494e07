"""Triton kernels of the coupled selective scan (docs/MATH.md, section 2): forward, backward.

    dt      = softplus(delta + delta_bias)          Abar = exp(dt A),   bbar = dt B u
    h[t][m] = Abar[t][m] * sum_k W[m, k] h[t-1][k] + bbar[t][m]
    y[t][m] = sum_n C[m, n, t] h[t][m, :, n] + D[m] u[m, t],   y *= silu(z)

Shapes: M modalities (MP = M padded to a power of two), Bt batch, D channels (BD per program),
N state size (NP padded), L length, CHUNK checkpoint interval, S sub-chunk length.

Two designs. The chunked kernels (_fwd_chunk_kernel, _bwd_chunk_kernel; bottom of this file) serve
the couplings "none", "mean", "sum" with an associative scan over chunks of time. The sequential
kernels (_fwd_kernel, _bwd_kernel; described next) serve every coupling, a general W included.

Grid: (cdiv(D, BD), Bt). One program walks the whole sequence for one batch row and one block of
BD channels, all M modalities at once: the coupled state is one register tile (MP, BD, NP), so
the coupling sum over modalities never leaves the program. Abar and bbar are made on the fly from
u, delta, A, B; y, the D skip and the silu(z) gate are fused into the same pass.

Coupling kinds (KIND, a constexpr): 0 = "none" (W = I, nothing to do), 1 = rank one
(W = (w / M) 11^T: the coupled state is w times the mean state, one sum over the modality axis;
this is the single mean-state recurrence of docs/MATH.md section 2.1, computed in registers),
2 = a general (M, M) W (a small matrix product over the modality axis).

Backward (see docs/triton_kernel.md): the forward stores the state every CHUNK steps
(ckpt, (L / CHUNK, M, Bt, D, N)). The backward walks the chunks in reverse. For each chunk it
recomputes the state at every S-th step into a small per-program scratch (phase 1), then for each
sub-chunk, last first, recomputes its S states into registers (an unrolled loop; the states live
in a tuple) and steps backwards through them with the adjoint g = dL/dh[t] (phase 2):

    g[t]    = W^T (Abar[t+1] * g[t+1]) + C[t] dy'[t]          (dy' = dy * silu(z))
    dAbar   = g[t] * (W h[t-1]),   dbbar = g[t],   dC[t] = sum_d h[t] dy'[t]

Reductions across programs: dB and dC (summed over channels) use atomic adds when there is more
than one channel block, plain stores otherwise; dA, dD, d(delta_bias) and dW are written as
per-program partial sums that the launcher adds up with torch (deterministic, small).
"""

import triton
import triton.language as tl


@triton.jit
def _softplus(x, SOFTPLUS: tl.constexpr):
    """(softplus(x), d softplus / dx) with torch's threshold (x > 20 -> x); identity if off."""
    if SOFTPLUS:
        e = tl.exp(tl.minimum(x, 20.0))
        w = 1.0 + e
        # log1p(e) without a log1p: log(w) * e / (w - 1) is exact to rounding (Goldberg), while
        # log(1 + e) alone loses all digits of tiny e.
        lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
        dt = tl.where(x > 20.0, x, lp)
        dsp = tl.where(x > 20.0, 1.0, e / w)
    else:
        dt = x
        dsp = x * 0.0 + 1.0
    return dt, dsp


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
def _maybe_load(ptr, off, mask, PRESENT: tl.constexpr, CT: tl.constexpr):
    """ptr[off] in the compute dtype, or zeros shaped like off when the input is absent."""
    if PRESENT:
        x = tl.load(ptr + off, mask=mask, other=0.0).to(CT)
    else:
        x = (off * 0).to(CT)
    return x


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


# Sizes are not specialised on (Triton would compile L = 50 and L = 1024 separately); the only
# strided accesses are per time step, where divisibility hints buy nothing.
_RUNTIME = ["Bt", "Dd", "N", "L"]


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
def _affine_pair(a1, b1, p1, q1, a2, b2, p2, q2):
    """(F, G) of the segment "left then right"; F = (a, b), G = (p, q) are maps x -> a x + b."""
    return a1 * a2, a2 * b1 + b2, p2 * a1, p2 * b1 + q2


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


# ---------------------------------------------------------------------------------------------
# Time-parallel kernels (variant "parallel"; couplings "none", "mean", "sum"): the forward, and a
# backward in the same layout (opt-in, parallel_backward=True).
#
# The chunked kernel keeps T steps inside each thread and spreads the (n, d) pairs over the
# threads, so every chunk ends in a cross-thread reduction over n for y, and a program covers only
# 128 / NP channels (BD = 2 at N = 64): short, latency-bound chains. Here the layout is turned
# around, as in mamba-ssm's scan: the TT steps of a block are spread over the threads (coalesced
# loads along L), the state index n is a loop, and y accumulates over n inside each thread. Per
# (block, n) the chain is one associative scan along time (2-tuples for "none"; the (F, G)
# 4-tuples of _affine_pair for rank one, whose G gives the exclusive x[t-1] that h_m needs). The
# chain state at the end of a block is carried to the next block through a tiny scratch
# (chains, Bt, D, N) owned by the program; a barrier at the top of each block orders it.
# Tiles are (NMP, BD, TT): the program's modalities (padded to a power of two, masked) and
# channels are per-thread repeats, time is spread over the threads.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _affine(a1, b1, a2, b2):
    """The map x -> a2 (a1 x + b1) + b2 of "left then right"."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _par_program(Bt, Dd, N, L, NM: tl.constexpr, NMP: tl.constexpr, BD: tl.constexpr,
                 IDX64: tl.constexpr):
    """This program's batch row b, chain k, modalities m (NMP, 1, 1), channels d3 (1, BD, 1), their
    masks, and the offsets of its rows. Pointers: a scalar int64 base for the program's batch
    row and first channel plus int32 offset tiles (they stay live across the n loop; 64-bit
    pointer tiles would take twice the registers)."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    k = tl.program_id(2)  # the chain: 0 for rank one, the modality for "none"
    mm = tl.arange(0, NMP)[:, None, None]
    m = k * NM + mm
    if IDX64:
        m = m.to(tl.int64)
    mask_m = mm < NM
    d0 = pid_d * BD
    dl = tl.arange(0, BD)[None, :, None]  # channel within the program
    d3 = d0 + dl
    mask_md = mask_m & (d3 < Dd)  # (NMP, BD, 1)
    mask_d = d3 < Dd  # (1, BD, 1)
    return (b, k, m, mask_m, d3, mask_md, mask_d,
            (b * Dd + d0) * L,  # base_row: u, delta, z, y and gradients (M, Bt, D, L)
            (m * Bt * Dd + dl) * L,  # row (NMP, BD, 1)
            b * N * L,  # base_bc: B, C and gradients (M, Bt, N, L)
            m * Bt * N * L,  # off_bc (NMP, 1, 1)
            (b * Dd + d0) * N,  # base_state: states (M, Bt, D, N)
            (m * Bt * Dd + dl) * N,  # off_state (NMP, BD, 1)
            ((k * Bt + b) * Dd + d3) * N,  # off_carry (1, BD, 1): carries (chains, Bt, D, N)
            (m * Dd + d3) * N)  # off_a: A (M, D, N)


@triton.jit
def _par_param(ptr, m, d3, Dd, mask_md, PRESENT: tl.constexpr, NMP: tl.constexpr,
               BD: tl.constexpr, CT: tl.constexpr):
    """A per-channel parameter (M, D) (delta_bias, D) as an (NMP, BD, 1) tile; zeros if absent."""
    x = tl.zeros((NMP, BD, 1), dtype=CT)
    if PRESENT:
        x += tl.load(ptr + m * Dd + d3, mask=mask_md, other=0.0).to(CT)
    return x


@triton.jit
def _par_rows(u_ptr, delta_ptr, at, mask, bias, SOFTPLUS: tl.constexpr, CT: tl.constexpr):
    """A block's u, dt = softplus(delta + bias), d softplus and dt u, (NMP, BD, TT) each."""
    u = tl.load(u_ptr + at, mask=mask, other=0.0).to(CT)
    x = tl.load(delta_ptr + at, mask=mask, other=0.0).to(CT) + bias
    dt, dsp = _softplus(x, SOFTPLUS)
    return u, dt, dsp, dt * u


@triton.jit
def _par_state_n(A_ptr, B_ptr, C_ptr, off_a, base_bc, off_bc, n, L, t, mask_md, mask_mt,
                 CT: tl.constexpr):
    """State index n of a block: A[m, d, n] (NMP, BD, 1), B[m, n, t] and C[m, n, t] (NMP, 1, TT)."""
    at = (base_bc + n * L) + (off_bc + t)
    return (tl.load(A_ptr + off_a + n, mask=mask_md, other=0.0).to(CT),
            tl.load(B_ptr + at, mask=mask_mt, other=0.0).to(CT),
            tl.load(C_ptr + at, mask=mask_mt, other=0.0).to(CT))


@triton.jit
def _par_ckpt(c, k, b, d3, Bt, Dd, N, CHAINS: tl.constexpr):
    """Offset of the chain state before block c in a checkpoint (n_blocks, chains, Bt, D, N)."""
    return (((c * CHAINS + k) * Bt + b) * Dd + d3) * N


@triton.jit(do_not_specialize=_RUNTIME)
def _fwd_par_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    y_ptr, last_ptr, carry_ptr, ckpt_ptr,
    Bt, Dd, N, L, w_rank1,
    M: tl.constexpr, NM: tl.constexpr, NMP: tl.constexpr, BD: tl.constexpr, TT: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE: tl.constexpr, IDX64: tl.constexpr, CT: tl.constexpr,
):
    """Grid (cdiv(D, BD), Bt, M // NM). carry: (M // NM, Bt, D, N) scratch, the chain state at the
    end of the block before (any contents on entry). ckpt (SAVE, for _bwd_par_kernel):
    (n_blocks, M // NM, Bt, D, N), the chain state before each block. IDX64: an input has 2^31
    elements or more."""
    (b, k, m, mask_m, d3, mask_md, mask_d, base_row, row, base_bc, off_bc, base_state,
     off_state, off_carry, off_a) = _par_program(Bt, Dd, N, L, NM, NMP, BD, IDX64)
    bias = _par_param(bias_ptr, m, d3, Dd, mask_md, HAS_BIAS, NMP, BD, CT)
    Dv = _par_param(D_ptr, m, d3, Dd, mask_md, HAS_D, NMP, BD, CT)
    w = (tl.zeros((1, 1, 1), dtype=CT) + w_rank1) / NM
    tt = tl.arange(0, TT)[None, None, :]
    n_blocks = tl.cdiv(L, TT)
    for c in range(0, n_blocks):
        t = c * TT + tt
        valid = t < L  # (1, 1, TT)
        mtd = mask_md & valid
        at = base_row + row + t
        u, dt, _, dtu = _par_rows(u_ptr, delta_ptr, at, mtd, bias, SOFTPLUS, CT)
        y = Dv * u
        is_end = (t == c * TT + TT - 1) & mask_d  # where the carry is read off
        is_last = (t == L - 1) & mask_md
        # (1, BD, 1) tiles: and-ing a 0-d bool into a mask breaks Triton 3.9's interpreter
        first = (d3 * 0 + c) == 0
        later = (d3 * 0 + c) > 0
        to_carry = off_carry + t * 0  # store pointers shaped like the values (1, BD, TT)
        to_last = off_state + t * 0
        last_block = c == n_blocks - 1
        # The carries were written by other threads in the block before.
        tl.debug_barrier()
        for n in range(0, N):
            # The chain state before the block: h0 (the mean of the chain's modalities) first.
            if HAS_H0:
                h0 = tl.load(h0_ptr + base_state + n + off_state, mask=mask_md & first,
                             other=0.0).to(CT)
                xc = tl.sum(h0, axis=0, keep_dims=True) / NM
            else:
                xc = tl.zeros((1, BD, 1), dtype=CT)
            xc += tl.load(carry_ptr + off_carry + n, mask=mask_d & later, other=0.0)
            if SAVE:
                tl.store(ckpt_ptr + _par_ckpt(c, k, b, d3, Bt, Dd, N, M // NM) + n, xc,
                         mask=mask_d)
            A, Bn, Cn = _par_state_n(A_ptr, B_ptr, C_ptr, off_a, base_bc, off_bc, n, L, t,
                                     mask_md, mask_m & valid, CT)
            Abar = tl.exp(dt * A)
            bbar = dtu * Bn
            if NM == 1:
                a = tl.where(valid, Abar, 1.0)
                cc = tl.where(valid, bbar, 0.0)
                fa, fb = tl.associative_scan((a, cc), 2, _affine)
                h = fa * xc + fb
                xe = h
            else:
                a = tl.where(valid, w * tl.sum(tl.where(mask_m, Abar, 0.0), axis=0,
                                               keep_dims=True), 1.0)
                cc = tl.where(valid, tl.sum(bbar, axis=0, keep_dims=True) / NM, 0.0)
                one = tl.full(a.shape, 1.0, CT)
                fa, fb, ga, gb = tl.associative_scan((a, cc, one, one * 0.0), 2, _affine_pair)
                xprev = ga * xc + gb  # the mean state at t - 1
                h = (w * NM) * Abar * xprev + bbar
                xe = fa * xc + fb
            y += Cn * h
            tl.store(carry_ptr + to_carry + n, xe.to(carry_ptr.dtype.element_ty), mask=is_end)
            if last_block:
                tl.store(last_ptr + (base_state + n) + to_last, h.to(last_ptr.dtype.element_ty),
                         mask=is_last)
        if HAS_Z:
            zz = tl.load(z_ptr + at, mask=mtd, other=0.0).to(CT)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=mtd)


@triton.jit(do_not_specialize=_RUNTIME)
def _bwd_par_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dy_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr, carry_ptr,
    Bt, Dd, N, L, w_rank1,
    M: tl.constexpr, NM: tl.constexpr, NMP: tl.constexpr, BD: tl.constexpr, TT: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
    IDX64: tl.constexpr, CT: tl.constexpr,
):
    """Backward of _fwd_par_kernel in its layout: blocks last to first, n looped; same grid.

    Per (block, n): the chain is rescanned forward from ckpt (x[t-1] for every step, as in the
    forward), then the adjoint is scanned backwards along time (reverse 4-tuple scan; its G gives
    mu[t+1], its F at the block's first step the carry for the block before, passed through the
    scratch ``carry`` (M // NM, Bt, D, N)). With e_m = C_m dy'_m (plus dL/dh_m[L-1] at the last
    step), as in _bwd_chunk_kernel:
        mu[t] = a[t] mu[t+1] + w sum_m Abar_m[t] e_m[t],     g_m[t] = e_m[t] + mu[t+1] / NM.
    The sums over n (d dt, du, the pre-gate y for dz) accumulate in registers across the n loop;
    dB and dC (sums over channels) go out per (n, block) by atomic adds when there are several
    channel programs; dA, dD, d delta_bias into this program's slots of per-batch-row partial
    sums (Bt, M, D, N) / (Bt, M, D) that the launcher adds up.
    """
    (b, k, m, mask_m, d3, mask_md, mask_d, base_row, row, base_bc, off_bc, base_state,
     off_state, off_carry, off_a) = _par_program(Bt, Dd, N, L, NM, NMP, BD, IDX64)
    off_part = ((b * M + m) * Dd + d3)  # (NMP, BD, 1): this program's partial-sum slots
    bias = _par_param(bias_ptr, m, d3, Dd, mask_md, HAS_BIAS, NMP, BD, CT)
    Dv = _par_param(D_ptr, m, d3, Dd, mask_md, HAS_D, NMP, BD, CT)
    w = tl.zeros((1, 1, 1), dtype=CT) + w_rank1  # rank one: w; "none": 1
    tt = tl.arange(0, TT)[None, None, :]
    n_blocks = tl.cdiv(L, TT)
    for ci in range(0, n_blocks):
        c = n_blocks - 1 - ci
        t = c * TT + tt
        valid = t < L  # (1, 1, TT)
        mtd = mask_md & valid
        at = base_row + row + t
        u, dt, dsp, dtu = _par_rows(u_ptr, delta_ptr, at, mtd, bias, SOFTPLUS, CT)
        dy = tl.load(dy_ptr + at, mask=mtd, other=0.0).to(CT)
        if HAS_Z:
            zz = tl.load(z_ptr + at, mask=mtd, other=0.0).to(CT)
            sig = tl.sigmoid(zz)
            dyp = dy * zz * sig
        else:
            dyp = dy
        # Sums over n, accumulated across the n loop.
        sA = tl.zeros((NMP, BD, TT), dtype=CT)  # sum_n dL/d(dt A) A
        sB = tl.zeros((NMP, BD, TT), dtype=CT)  # sum_n g B
        ypre = Dv * u  # y before the gate
        is_last = (t == L - 1) & mask_md
        later = (d3 * 0 + ci) > 0  # (1, BD, 1): a block after this one carried mu back
        first = (d3 * 0 + c) == 0
        at_start = (tt == 0) & mask_d  # where mu for the block before is read off
        to_carry = off_carry + tt * 0
        to_state = off_state + tt * 0
        one = tl.full((1, BD, TT), 1.0, CT)
        tl.debug_barrier()  # the carries were written by another thread in the block after
        for n in range(0, N):
            xc = tl.load(ckpt_ptr + _par_ckpt(c, k, b, d3, Bt, Dd, N, M // NM) + n, mask=mask_d,
                         other=0.0)
            A, Bn, Cn = _par_state_n(A_ptr, B_ptr, C_ptr, off_a, base_bc, off_bc, n, L, t,
                                     mask_md, mask_m & valid, CT)
            Abar = tl.where(mask_m, tl.exp(dt * A), 0.0)
            bbar = dtu * Bn
            # Forward again: x[t - 1] and h_m[t].
            a = tl.where(valid, tl.sum(Abar, axis=0, keep_dims=True) * (w / NM), 1.0)
            cc = tl.where(valid, tl.sum(bbar, axis=0, keep_dims=True) / NM, 0.0)
            _, _, ga, gb = tl.associative_scan((a, cc, one, one * 0.0), 2, _affine_pair)
            xprev = ga * xc + gb
            h = w * Abar * xprev + bbar
            # The adjoint, backwards from the carry of the block after.
            e = Cn * dyp
            if HAS_DLAST:
                dlv = tl.load(dlast_ptr + (base_state + n) + off_state, mask=mask_md,
                              other=0.0).to(CT)
                e = tl.where(is_last, e + dlv, e)
            r = w * tl.sum(Abar * e, axis=0, keep_dims=True)
            fa, fb, ga2, gb2 = tl.associative_scan((a, r, one, one * 0.0), 2, _affine_pair,
                                                   reverse=True)
            mu_c = tl.load(carry_ptr + off_carry + n, mask=mask_d & later, other=0.0).to(CT)
            mu_next = ga2 * mu_c + gb2  # mu[t + 1]
            mu_first = fa * mu_c + fb  # mu[t]; at the block's first step, the carry before it
            tl.store(carry_ptr + to_carry + n, mu_first.to(carry_ptr.dtype.element_ty),
                     mask=at_start)
            if HAS_H0:
                tl.store(dh0_ptr + (base_state + n) + to_state,
                         tl.broadcast_to(mu_first / NM, h.shape).to(dh0_ptr.dtype.element_ty),
                         mask=mask_md & at_start & first)
            g = e + mu_next / NM  # dL/dh_m[t]
            dtA = tl.where(valid, g * w * xprev * Abar, 0.0)  # dL/d(dt A); 0 past L
            sA += dtA * A
            sB += g * Bn
            ypre += Cn * h
            tl.atomic_add(dA_ptr + off_part * N + n, tl.sum(dtA * dt, axis=2, keep_dims=True),
                          mask=mask_md)
            dB = tl.sum(g * dtu, axis=1, keep_dims=True)  # (NMP, 1, TT)
            dC = tl.sum(h * dyp, axis=1, keep_dims=True)
            mbt = mask_m & valid
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + (base_bc + n * L) + (off_bc + t), dB, mask=mbt)
                tl.atomic_add(dC_ptr + (base_bc + n * L) + (off_bc + t), dC, mask=mbt)
            else:
                tl.store(dB_ptr + (base_bc + n * L) + (off_bc + t),
                         dB.to(dB_ptr.dtype.element_ty), mask=mbt)
                tl.store(dC_ptr + (base_bc + n * L) + (off_bc + t),
                         dC.to(dC_ptr.dtype.element_ty), mask=mbt)
        ddt = sA + sB * u
        dx = ddt * dsp
        tl.store(du_ptr + at, (sB * dt + Dv * dyp).to(du_ptr.dtype.element_ty), mask=mtd)
        tl.store(ddelta_ptr + at, dx.to(ddelta_ptr.dtype.element_ty), mask=mtd)
        if HAS_Z:
            dz = dy * ypre * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + at, dz.to(dz_ptr.dtype.element_ty), mask=mtd)
        if HAS_D:
            tl.atomic_add(dD_ptr + off_part, tl.sum(dyp * u, axis=2, keep_dims=True),
                          mask=mask_md)
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + off_part, tl.sum(tl.where(mtd, dx, 0.0), axis=2,
                                                       keep_dims=True), mask=mask_md)
