"""Chunked and time-parallel Triton variants ("none", "mean", "sum"): launchers, autograd Function.

    h[t][m] = exp(dt A)[m] * sum_k W[m, k] h[t-1][k] + dt B u;   y = (C h + D u) * silu(z)

Kernels: ``_triton_chunk_kernels.py`` and ``_triton_par_kernels.py``; public entry and variant
choice: :func:`coupled_mamba.ops._triton.coupled_selective_scan_triton`. Shapes as there; the
checkpoints hold one state per chain (M chains for "none", one mean-state chain for rank one):
(chunks or blocks, chains, Bt, D, N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._triton_launch import (
    _check_device,
    _check_pow2,
    _contiguous,
    _grad_buffers,
    _grad_wanted,
    _kernels,
    _launch,
    _opt,
    _pow2,
    _tl_dtype,
    triton_cdiv,
)

# Chunked variant ("none", "mean", "sum"): T steps per chunk (the backward's T is also its
# checkpoint interval) and channels per program so that NP * BD spans the threads (T stays
# inside each thread). Register-count guesses until the GPU sweep has run.
CHUNK_T_FWD = 8
CHUNK_T_BWD = 4
CHUNK_ND = 128  # NP * BD with 4 warps: one (n, d) pair per thread
# Parallel variant's forward without autograd: blocks of up to PAR_T[rank one?] steps spread over
# the threads (shorter for short sequences), BD channels per program. The fastest of the H100
# sweep at N in {16, 64}, L = 1024 (docs/triton_kernel.md).
PAR_T = {True: 256, False: 512}
PAR_BD = 1


@dataclass(frozen=True)
class _ChunkConfig:
    """What the chunked kernels specialise on, besides the tensors."""

    n_mod: int  # modalities per program: M (rank one) or 1 ("none", one program per modality)
    weight: float  # w of a rank-one coupling (1 for "none")
    softplus: bool
    grad: bool  # grad mode on at the call (see _grad_wanted)
    t_fwd: int  # steps per chunk without gradient
    t_bwd: int  # steps per chunk with gradient = checkpoint interval
    block_d_fwd: int
    block_d_bwd: int
    num_warps: int
    parallel: bool = False  # the time-parallel forward (without autograd, or with par_bwd)
    par_bwd: bool = False  # the parallel layout's backward too (else chunked under autograd)
    par_t: int = PAR_T[True]
    par_bd: int = PAR_BD


def _par_tiling(L: int, time_block: int, num_warps: int) -> tuple[int, int]:
    """(steps per block, warps) of the parallel forward.

    A block holds up to ``time_block`` steps but not many more than L (a fixed block would be
    mostly padding for short sequences and the model's inference chunks); one warp per 64 steps
    at most (two steps per thread; for 128-step blocks within 20% of the fastest warp count in
    both H100 runs that measured it, docs/triton_kernel.md), ``num_warps`` at most.
    """
    tt = min(time_block, max(16, _pow2(L)))
    return tt, max(1, min(num_warps, tt // 64))


def _par_meta(u, B, D, z, delta_bias, h0, ct, cfg):
    """Constexpr keywords (but SAVE / HAS_DLAST, ATOMIC_BC) and launch options shared by
    _fwd_par_kernel and _bwd_par_kernel; the two must run with the same block length."""
    M, Bt, Dd, L = u.shape
    tt, warps = _par_tiling(L, cfg.par_t, cfg.num_warps)
    meta = dict(
        M=M, NM=cfg.n_mod, NMP=_pow2(cfg.n_mod), BD=cfg.par_bd, TT=tt,
        SOFTPLUS=cfg.softplus, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None,
        IDX64=max(u.numel(), B.numel(), M * Bt * Dd * B.shape[2]) >= 2**31, CT=_tl_dtype(ct),
    )
    return meta, {"num_warps": warps, "enable_fp_fusion": True}


def _chunk_fwd_launch(u, delta, A, B, C, D, z, delta_bias, h0, y, last, ckpt, cfg, save):
    """Positional arguments and constexpr keywords of _fwd_chunk_kernel."""
    M, Bt, Dd, L = u.shape
    N = A.shape[-1]

    opt = _opt(u)
    args = [u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), opt(h0), y, last, ckpt,
            Bt, Dd, N, L, cfg.weight]
    meta = dict(
        M=M, NM=cfg.n_mod, BD=cfg.block_d_fwd, NP=_pow2(N),
        T=cfg.t_bwd if save else cfg.t_fwd, SOFTPLUS=cfg.softplus, HAS_D=D is not None,
        HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None, SAVE=save,
        CT=_tl_dtype(last.dtype),
    )
    return args, meta


def _chunk_bwd_launch(u, delta, A, B, C, D, z, delta_bias, ckpt, dy, dlast, grads, cfg, atomic):
    """Positional arguments and constexpr keywords of _bwd_chunk_kernel."""
    M, Bt, Dd, L = u.shape
    N = A.shape[-1]

    opt = _opt(u)
    args = [u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), ckpt, dy, opt(dlast),
            *map(opt, grads), Bt, Dd, N, L, cfg.weight]
    meta = dict(
        M=M, NM=cfg.n_mod, BD=cfg.block_d_bwd, NP=_pow2(N), T=cfg.t_bwd,
        SOFTPLUS=cfg.softplus, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, HAS_H0=grads[-1] is not None,
        HAS_DLAST=dlast is not None, ATOMIC_BC=atomic, CT=_tl_dtype(ckpt.dtype),
    )
    return args, meta



class _CoupledScanTritonChunked(torch.autograd.Function):
    """Autograd around the chunked and parallel kernels ("none" and rank-one couplings).

    The parallel forward runs where ``cfg.parallel`` is set and either nothing is saved for a
    backward or ``cfg.par_bwd`` asks for the parallel backward; otherwise the chunked pair.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, cfg: _ChunkConfig):
        M, Bt, Dd, L = u.shape
        N = A.shape[-1]
        ct = torch.float64 if u.dtype == torch.float64 else torch.float32
        save = cfg.grad and any(ctx.needs_input_grad[:9])
        par = cfg.parallel and (cfg.par_bwd or not save)
        chains = M // cfg.n_mod
        y = torch.empty_like(u)
        last = torch.empty(M, Bt, Dd, N, device=u.device, dtype=ct)
        if par:
            tt, _ = _par_tiling(L, cfg.par_t, cfg.num_warps)
            # The chain state before every block: 1 / TT of the chain states.
            ckpt = torch.empty(triton_cdiv(L, tt) if save else 1, chains, Bt, Dd, N,
                               device=u.device, dtype=ct)
            carry = torch.empty(chains, Bt, Dd, N, device=u.device, dtype=ct)
            meta, options = _par_meta(u, B, D, z, delta_bias, h0, ct, cfg)
            _kernels()[0]._fwd_par_kernel[(triton_cdiv(Dd, cfg.par_bd), Bt, chains)](
                u, delta, A, B, C, *_opt(u)(D, z, delta_bias, h0), y, last, carry, ckpt,
                Bt, Dd, N, L, cfg.weight, **meta, SAVE=save, **options)
        else:
            # One state per chain and chunk: 1 / M of the coupled states for rank one.
            ckpt = torch.empty(-(-L // cfg.t_bwd) if save else 1, chains, Bt, Dd, N,
                               device=u.device, dtype=ct)
            args, meta = _chunk_fwd_launch(u, delta, A, B, C, D, z, delta_bias, h0, y, last,
                                           ckpt, cfg, save)
            grid = (triton_cdiv(Dd, cfg.block_d_fwd), Bt, chains)
            _launch("_fwd_chunk_kernel", grid, args, meta, cfg)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, ckpt)
        ctx.cfg, ctx.par = cfg, par
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, D, z, delta_bias, h0, ckpt = ctx.saved_tensors
        cfg: _ChunkConfig = ctx.cfg
        M, Bt, Dd, L = u.shape
        N = A.shape[-1]
        ct = ckpt.dtype
        chains = M // cfg.n_mod
        n_dblk = triton_cdiv(Dd, cfg.par_bd if ctx.par else cfg.block_d_bwd)
        atomic = n_dblk > 1
        dy = dy.contiguous()
        dlast = None if dlast is None else dlast.contiguous()
        # Per batch row partial sums of dA, dD, d delta_bias, accumulated chunk by chunk.
        du, ddelta, dz, dB, dC, dA, dD, dbias = _grad_buffers(
            u, delta, B, C, z, D, delta_bias, N, atomic, torch.zeros, ct)
        dh0 = torch.empty_like(h0) if h0 is not None else None
        grads = (du, ddelta, dz, dB, dC, dA, dD, dbias, dh0)
        if ctx.par:
            carry = torch.empty(chains, Bt, Dd, N, device=u.device, dtype=ct)
            meta, options = _par_meta(u, B, D, z, delta_bias, h0, ct, cfg)
            opt = _opt(u)
            _kernels()[0]._bwd_par_kernel[(n_dblk, Bt, chains)](
                u, delta, A, B, C, *opt(D, z, delta_bias), ckpt, dy, *opt(dlast, *grads), carry,
                Bt, Dd, N, L, cfg.weight, **meta, HAS_DLAST=dlast is not None,
                ATOMIC_BC=atomic, **options)
        else:
            args, meta = _chunk_bwd_launch(u, delta, A, B, C, D, z, delta_bias, ckpt, dy, dlast,
                                           grads, cfg, atomic)
            _launch("_bwd_chunk_kernel", (n_dblk, Bt, chains), args, meta, cfg)
        return (
            du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype), dz,
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype), dh0, None,
        )


def _chunk_t_fwd(N: int) -> int:
    """Default steps per chunk without autograd: 8, or 4 from N = 64 (registers)."""
    return CHUNK_T_FWD if _pow2(N) < 64 else CHUNK_T_FWD // 2


def _chunk_block_d(D: int, NP: int, num_warps: int) -> int:
    return max(1, min(_pow2(D), _pow2(max(1, CHUNK_ND * num_warps // (4 * NP)))))


def _chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cp, initial_state,
             return_last_state, block_d, block_d_bwd, num_warps, time_block, time_block_bwd,
             parallel=False, parallel_backward=False):
    """coupled_selective_scan_triton's chunked and parallel variants (a resolved coupling
    ``cp``). The parallel one runs its own forward without autograd; under autograd the chunked
    forward and backward, unless ``parallel_backward`` (the caller passes ``_triton.PAR_BACKWARD``
    by default) asks for the parallel pair. Its ``time_block`` and ``block_d`` set the parallel
    kernels' tiling; the chunked forward under autograd keeps its own."""
    if cp.kind == "general":
        name = "parallel" if parallel else "chunked"
        raise ValueError(f"variant={name!r} supports the couplings 'none', 'mean', 'sum' (rank "
                         "one or diagonal); a general (M, M) coupling needs variant='seq'")
    M, Bt, Dd, L = u.shape
    NP = _pow2(A.shape[-1])
    rank1 = cp.kind == "rank1"
    t_f = time_block or (PAR_T[rank1] if parallel else _chunk_t_fwd(A.shape[-1]))
    t_b = time_block_bwd or CHUNK_T_BWD
    bd_f = block_d or (PAR_BD if parallel else _chunk_block_d(Dd, NP, num_warps))
    bd_b = block_d_bwd or _chunk_block_d(Dd, NP, num_warps)
    for name, value in (("time_block", t_f), ("time_block_bwd", t_b), ("block_d", bd_f),
                        ("block_d_bwd", bd_b)):
        _check_pow2(name, value)
    _check_device(u)
    if parallel:  # the chunked forward under autograd keeps its default tiling
        par = dict(parallel=True, par_t=t_f, par_bd=bd_f, par_bwd=bool(parallel_backward))
        t_f, bd_f = _chunk_t_fwd(A.shape[-1]), _chunk_block_d(Dd, NP, num_warps)
    else:
        par = {}
    cfg = _ChunkConfig(
        n_mod=M if rank1 else 1, weight=float(cp.weight) if rank1 else 1.0,
        softplus=bool(delta_softplus), grad=_grad_wanted(), t_fwd=t_f, t_bwd=t_b, block_d_fwd=bd_f,
        block_d_bwd=bd_b, num_warps=num_warps, **par,
    )
    u, delta, A, B, C, D, z, delta_bias, initial_state = _contiguous(
        u, delta, A, B, C, D, z, delta_bias, initial_state)
    y, last = _CoupledScanTritonChunked.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                              cfg)
    return (y, last) if return_last_state else y
