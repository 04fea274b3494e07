"""Time-parallel Triton kernels of the coupled selective scan (variant "parallel").

_fwd_par_kernel and _bwd_par_kernel: couplings "none", "mean", "sum", the steps of a block
spread over the threads (the design below and docs/triton_kernel.md). Shapes: M modalities
(NM per program, NMP padded), Bt batch, D channels (BD per program), N state size, L
length, TT steps per block.
"""

import triton
import triton.language as tl

from ._triton_jit import _RUNTIME, _affine_pair, _softplus

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
