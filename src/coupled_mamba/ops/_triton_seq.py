"""Sequential Triton variant ("seq", every coupling): its launcher and autograd Function.

    h[t][m] = exp(dt A)[m] * sum_k W[m, k] h[t-1][k] + dt B u;   y = (C h + D u) * silu(z)

Kernels: ``_triton_seq_kernels.py``; public entry and variant choice:
:func:`coupled_mamba.ops._triton.coupled_selective_scan_triton`. Shapes: u, delta, z
(M, Bt, D, L); A (M, D, N); B, C (M, Bt, N, L); D, delta_bias (M, D); initial_state (M, Bt, D, N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._coupling import KIND_IDS
from ._triton_launch import (
    _check_device,
    _check_pow2,
    _contiguous,
    _grad_buffers,
    _grad_wanted,
    _launch,
    _opt,
    _pow2,
    _tl_dtype,
    triton_cdiv,
)

# Defaults (see docs/triton_kernel.md): a state checkpoint every CHUNK steps; the backward keeps
# SUB_CHUNK states in registers (8 doubles its compile time for no fewer registers); a program's
# state tile holds about *_TILE elements (MP * BD * NP), which sets the channels per program BD.
CHUNK = 64
SUB_CHUNK = 4
FWD_TILE = 512
BWD_TILE = 256


@dataclass(frozen=True)
class _Config:
    """Everything the kernels specialise on, besides the tensors."""

    kind: int  # KIND_IDS of the resolved coupling
    weight: float  # w of a rank-one coupling
    softplus: bool
    grad: bool  # grad mode on at the call (see _grad_wanted)
    chunk: int
    sub_chunk: int
    block_d_fwd: int
    block_d_bwd: int
    num_warps: int


def _block_d(D: int, MP: int, NP: int, tile: int) -> int:
    return max(1, min(_pow2(D), _pow2(max(1, tile // (MP * NP)))))


def _fwd_launch(u, delta, A, B, C, D, z, delta_bias, W, h0, y, last, ckpt, cfg, save):
    """Positional arguments and constexpr keywords of _fwd_kernel (absent tensors -> u, unread)."""
    M, Bt, Dd, L = u.shape
    N = A.shape[-1]

    opt = _opt(u)
    args = [u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), opt(W), opt(h0), y, last, ckpt,
            Bt, Dd, N, L, cfg.weight]
    meta = dict(
        M=M, MP=_pow2(M), BD=cfg.block_d_fwd, NP=_pow2(N), CHUNK=cfg.chunk, KIND=cfg.kind,
        SOFTPLUS=cfg.softplus, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, HAS_H0=h0 is not None, SAVE=save,
        CT=_tl_dtype(last.dtype),
    )
    return args, meta


def _bwd_launch(u, delta, A, B, C, D, z, delta_bias, W, ckpt, dy, dlast, scratch, grads, cfg,
                need_dw, atomic):
    """Positional arguments and constexpr keywords of _bwd_kernel (absent tensors -> u, unread)."""
    M, Bt, Dd, L = u.shape
    N = A.shape[-1]

    opt = _opt(u)
    args = [u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), opt(W), ckpt, dy, opt(dlast),
            scratch, *map(opt, grads), Bt, Dd, N, L, cfg.weight]
    meta = dict(
        M=M, MP=_pow2(M), BD=cfg.block_d_bwd, NP=_pow2(N), CHUNK=cfg.chunk, S=cfg.sub_chunk,
        KIND=cfg.kind, SOFTPLUS=cfg.softplus, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, HAS_H0=grads[-1] is not None,
        HAS_DLAST=dlast is not None, NEED_DW=need_dw, ATOMIC_BC=atomic,
        CT=_tl_dtype(ckpt.dtype),
    )
    return args, meta


class _CoupledScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, W, h0, cfg: _Config):
        M, Bt, Dd, L = u.shape
        N = A.shape[-1]
        ct = torch.float64 if u.dtype == torch.float64 else torch.float32
        save = cfg.grad and any(ctx.needs_input_grad[:10])
        n_chunks = -(-L // cfg.chunk)
        y = torch.empty_like(u)
        last = torch.empty(M, Bt, Dd, N, device=u.device, dtype=ct)
        ckpt = torch.empty(n_chunks if save else 1, M, Bt, Dd, N, device=u.device, dtype=ct)
        args, meta = _fwd_launch(u, delta, A, B, C, D, z, delta_bias, W, h0, y, last, ckpt,
                                 cfg, save)
        _launch("_fwd_kernel", (triton_cdiv(Dd, cfg.block_d_fwd), Bt), args, meta, cfg)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, W, h0, ckpt)
        ctx.cfg = cfg
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, D, z, delta_bias, W, h0, ckpt = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        M, Bt, Dd, L = u.shape
        N = A.shape[-1]
        ct = ckpt.dtype
        MP, NP = _pow2(M), _pow2(N)
        bd = cfg.block_d_bwd
        n_dblk = triton_cdiv(Dd, bd)
        dev = u.device
        need_dw = W is not None and ctx.needs_input_grad[8]
        atomic = n_dblk > 1
        dy = dy.contiguous()
        du, ddelta, dz, dB, dC, dA, dD, dbias = _grad_buffers(
            u, delta, B, C, z, D, delta_bias, N, atomic, torch.empty, ct)
        dW = torch.empty(Bt, n_dblk, M, M, device=dev, dtype=ct) if need_dw else None
        dh0 = torch.empty_like(h0) if h0 is not None else None
        scratch = torch.empty(Bt * n_dblk * (cfg.chunk // cfg.sub_chunk) * MP * bd * NP,
                              device=dev, dtype=ct)
        args, meta = _bwd_launch(
            u, delta, A, B, C, D, z, delta_bias, W, ckpt, dy,
            None if dlast is None else dlast.contiguous(), scratch,
            (du, ddelta, dz, dB, dC, dA, dD, dbias, dW, dh0), cfg, need_dw, atomic,
        )
        _launch("_bwd_kernel", (n_dblk, Bt), args, meta, cfg)
        return (
            du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype), dz,
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype),
            dW.sum((0, 1)).to(W.dtype) if need_dw else None, dh0, None,
        )



def _seq(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cp, initial_state,
         return_last_state, chunk, sub_chunk, block_d, block_d_bwd, num_warps):
    """coupled_selective_scan_triton's sequential variant (a resolved coupling ``cp``)."""
    for name, value in (("chunk", chunk), ("sub_chunk", sub_chunk)):
        _check_pow2(name, value)
    if chunk % sub_chunk:
        raise ValueError(f"sub_chunk: {sub_chunk} must divide chunk={chunk}")
    M, Bt, Dd, L = u.shape
    N = A.shape[-1]
    MP, NP = _pow2(M), _pow2(N)
    bd_f = block_d or _block_d(Dd, MP, NP, FWD_TILE)
    bd_b = block_d_bwd or _block_d(Dd, MP, NP, BWD_TILE)
    for name, value in (("block_d", bd_f), ("block_d_bwd", bd_b)):
        _check_pow2(name, value)
    _check_device(u)
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    W = None
    kind = KIND_IDS[cp.kind]
    if kind == 2:
        W = cp.matrix.to(device=u.device, dtype=ct).contiguous()
    cfg = _Config(
        kind=kind, weight=float(cp.weight), softplus=bool(delta_softplus), grad=_grad_wanted(),
        chunk=chunk, sub_chunk=sub_chunk, block_d_fwd=bd_f, block_d_bwd=bd_b, num_warps=num_warps,
    )
    u, delta, A, B, C, D, z, delta_bias, initial_state = _contiguous(
        u, delta, A, B, C, D, z, delta_bias, initial_state)
    y, last = _CoupledScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, W, initial_state, cfg)
    return (y, last) if return_last_state else y
