"""Fused Triton coupled selective scan (docs/MATH.md, section 2): launcher, autograd, availability.

    h[t][m] = exp(dt A)[m] * sum_k W[m, k] h[t-1][k] + dt B u;   y = (C h + D u) * silu(z)

Shapes: M modalities, Bt batch, D channels, N state size, L length. The kernels live in
``_triton_kernels.py``: a chunked design (associative scan over chunks of time; couplings "none",
"mean", "sum"), a time-parallel forward for the same couplings (no autograd) and a sequential
design (every coupling); ``variant`` picks. Their design (grid,
registers, checkpoints, reverse pass, reductions) is in docs/triton_kernel.md.

Devices. CUDA tensors run the compiled kernels. With ``TRITON_INTERPRET=1`` set before triton is
first imported, Triton's interpreter runs them instead (numpy, slow, on CPU tensors too; the
tests use it in a subprocess). The process-wide choice is Triton's: its own library functions are
compiled or interpreted from that first import on.

Precision. fp32 and fp64 inputs are computed in their own dtype; bf16 and fp16 in fp32. y and the
input gradients come back in the input dtypes; the last state in the compute dtype.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from ._coupling import KIND_IDS, resolve_coupling

# Defaults (see docs/triton_kernel.md): a state checkpoint every CHUNK steps; the backward keeps
# SUB_CHUNK states in registers (8 doubles its compile time for no fewer registers); a program's
# state tile holds about *_TILE elements (MP * BD * NP), which sets the channels per program BD.
CHUNK = 64
SUB_CHUNK = 4
FWD_TILE = 512
BWD_TILE = 256
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
# The parallel layout's backward under autograd for variant "parallel" (else the chunked kernels).
# Off: correct in the interpreter and compiled for sm_90 without spills, not yet timed on a GPU.
PAR_BACKWARD = False
VARIANTS = ("auto", "seq", "chunked", "parallel")
# Overrides variant="auto" process-wide (benchmarks, A/B runs): "seq", "chunked" or "parallel".
VARIANT_ENV = "COUPLED_MAMBA_TRITON_VARIANT"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available() -> tuple[bool, str | None]:
    """(True, None) if the kernels can run here, else (False, why).

    True when triton imports and either a CUDA device exists or TRITON_INTERPRET=1 (CPU
    interpreter; :func:`coupled_selective_scan_triton` still needs CUDA tensors without it).
    """
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install 'coupled-mamba[triton]')"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install: say so instead of failing at the first call
        return False, f"triton does not import ({type(exc).__name__}: {exc})"
    if _interpreting():
        return True, None
    if not torch.cuda.is_available():
        return False, "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU, slowly)"
    return True, None


def _kernels():
    """(kernel module, interpreted?).

    triton.jit decides at decoration time whether a function is compiled or interpreted, and
    Triton's own library (tl.zeros, tl.sigmoid, ...) is decorated when triton is first imported:
    the interpreter works only if TRITON_INTERPRET=1 was set before that first import.
    """
    import triton.language.standard as std
    from triton.runtime.interpreter import InterpretedFunction

    from . import _triton_kernels as kernels

    ours = isinstance(kernels._fwd_kernel, InterpretedFunction)
    theirs = isinstance(getattr(std, "zeros", None), InterpretedFunction)
    if ours != theirs:
        raise RuntimeError(
            "TRITON_INTERPRET changed between importing triton and importing "
            "coupled_mamba.ops._triton_kernels; set it (or not) before triton is first imported"
        )
    return kernels, ours


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


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


def _grad_wanted() -> bool:
    # Read before Function.apply: inside forward() grad mode is always off, and
    # ctx.needs_input_grad stays True under no_grad / inference_mode whenever an input requires
    # grad (model parameters always do), which would make inference save checkpoints.
    return torch.is_grad_enabled()


def _launch_options(cfg: _Config) -> dict:
    # FMA contraction on, said explicitly: Triton 3.9 warns that its default will flip to off.
    return {"num_warps": cfg.num_warps, "enable_fp_fusion": True}


def _block_d(D: int, MP: int, NP: int, tile: int) -> int:
    return max(1, min(_pow2(D), _pow2(max(1, tile // (MP * NP)))))


def _opt(u):
    """opt(x) -> x, or u where x is None: absent optional tensors are passed as u (unread by the
    kernels). With several arguments, a list."""
    def opt(*xs):
        out = [u if x is None else x for x in xs]
        return out[0] if len(xs) == 1 else out
    return opt


def _check_pow2(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name}: must be a power of two >= 1, got {value}")


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


def _grad_buffers(u, delta, B, C, z, D, delta_bias, N, atomic, part_alloc, ct):
    """du, ddelta, dz (input shapes), dB, dC (fp32 when summed with atomics) and the per batch
    row partial sums of dA (Bt, M, D, N), dD and d delta_bias (Bt, M, D; None where absent)."""
    dev = u.device
    M, Bt, Dd, _ = u.shape
    partial_shapes = [(Bt, M, Dd, N), None if D is None else (Bt, M, Dd),
                      None if delta_bias is None else (Bt, M, Dd)]
    bc_dtype = torch.float32 if atomic and B.dtype != torch.float64 else B.dtype
    alloc = torch.zeros if atomic else torch.empty
    out = [torch.empty_like(u), torch.empty_like(delta),
           torch.empty_like(z) if z is not None else None,
           alloc(B.shape, device=u.device, dtype=bc_dtype),
           alloc(C.shape, device=u.device, dtype=bc_dtype)]
    out += [None if shape is None else part_alloc(shape, device=dev, dtype=ct)
            for shape in partial_shapes]
    return out


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
            _kernels()[0]._fwd_chunk_kernel[grid](*args, **meta, **_launch_options(cfg))
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
            _kernels()[0]._bwd_chunk_kernel[(n_dblk, Bt, chains)](
                *args, **meta, **_launch_options(cfg))
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
        _kernels()[0]._fwd_kernel[(triton_cdiv(Dd, cfg.block_d_fwd), Bt)](
            *args, **meta, **_launch_options(cfg)
        )
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
        _kernels()[0]._bwd_kernel[(n_dblk, Bt)](*args, **meta, **_launch_options(cfg))
        return (
            du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype), dz,
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype),
            dW.sum((0, 1)).to(W.dtype) if need_dw else None, dh0, None,
        )


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def coupled_selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    coupling="mean", initial_state=None, return_last_state=False,
    *,
    chunk: int = CHUNK,
    sub_chunk: int = SUB_CHUNK,
    block_d: int | None = None,
    block_d_bwd: int | None = None,
    num_warps: int = 4,
    variant: str = "auto",
    time_block: int | None = None,
    time_block_bwd: int | None = None,
    parallel_backward: bool | None = None,
):
    """Coupled selective scan with fused Triton kernels, forward and backward.

    Same signature, shapes and semantics as
    :func:`coupled_mamba.ops.coupled_selective_scan_ref`:
    u, delta, z (M, Bt, D, L); A (M, D, N); B, C (M, Bt, N, L); D, delta_bias (M, D);
    initial_state (M, Bt, D, N). Returns y (M, Bt, D, L) [, h[L-1] (M, Bt, D, N)].

    Two kernel designs (docs/triton_kernel.md), keyword ``variant``:

    - ``"chunked"``: couplings "none", "mean", "sum" (and alpha 0 or 1). Time in chunks of
      ``time_block`` steps (``time_block_bwd`` under autograd, also the checkpoint interval:
      memory (M or 1) Bt D N L / time_block_bwd), each chunk solved by an associative scan in
      registers; rank one scans the single mean state.
    - ``"seq"``: every coupling, general (M, M) W included; one step at a time per program.
      ``chunk`` steps between stored state checkpoints (memory M Bt D N L / chunk),
      ``sub_chunk`` states the backward keeps in registers (divides ``chunk``).
    - ``"parallel"``: the couplings of "chunked". Its forward without autograd is a
      time-parallel kernel (blocks of up to ``time_block`` steps spread over the threads, the
      state index looped, ``block_d`` channels per program, nothing stored for a backward);
      under autograd it runs the chunked kernels at their default forward tiling, or, with
      ``parallel_backward=True``, the parallel forward storing the chain state before every
      block and a backward in the same layout (default: PAR_BACKWARD, off until it has been
      timed on a GPU).
    - ``"auto"`` (default): "parallel" where it applies (so the parallel forward without
      autograd, the chunked kernels with it), else "seq"; the environment variable
      COUPLED_MAMBA_TRITON_VARIANT ("seq", "chunked" or "parallel") overrides it.

    ``block_d`` / ``block_d_bwd`` are the channels per program, ``num_warps`` the warps per
    program. All tuning values are powers of two.

    Raises:
        ValueError: a bad tuning value or variant ("chunked" with a general coupling), or CPU
            tensors outside the interpreter.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    M = u.shape[0]
    cp = resolve_coupling(coupling, M)
    if variant == "auto":
        variant = os.environ.get(VARIANT_ENV, "") or "parallel"
        if variant not in VARIANTS[1:]:
            raise ValueError(f"{VARIANT_ENV}: expected one of {VARIANTS[1:]}, got {variant!r}")
        if cp.kind == "general":
            variant = "seq"
    if variant in ("chunked", "parallel"):
        return _chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cp,
                        initial_state, return_last_state, block_d, block_d_bwd, num_warps,
                        time_block, time_block_bwd, parallel=variant == "parallel",
                        parallel_backward=parallel_backward)
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

    if u.device.type != "cuda" and not _kernels()[1]:
        raise ValueError(
            f"impl='triton' needs CUDA tensors, got tensors on {u.device} (with "
            "TRITON_INTERPRET=1 set before triton is first imported, the kernels run in "
            "Triton's CPU interpreter)"
        )
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    W = None
    kind = KIND_IDS[cp.kind]
    if kind == 2:
        W = cp.matrix.to(device=u.device, dtype=ct).contiguous()
    cfg = _Config(
        kind=kind, weight=float(cp.weight), softplus=bool(delta_softplus), grad=_grad_wanted(),
        chunk=chunk, sub_chunk=sub_chunk, block_d_fwd=bd_f, block_d_bwd=bd_b, num_warps=num_warps,
    )

    def c(x):
        return None if x is None else x.contiguous()

    y, last = _CoupledScanTriton.apply(
        c(u), c(delta), c(A), c(B), c(C), c(D), c(z), c(delta_bias), W, c(initial_state), cfg
    )
    return (y, last) if return_last_state else y


def _chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cp, initial_state,
             return_last_state, block_d, block_d_bwd, num_warps, time_block, time_block_bwd,
             parallel=False, parallel_backward=None):
    """coupled_selective_scan_triton's chunked and parallel variants (a resolved coupling
    ``cp``). The parallel one runs its own forward without autograd; under autograd the chunked
    forward and backward, unless ``parallel_backward`` (default PAR_BACKWARD) asks for the
    parallel pair. Its ``time_block`` and ``block_d`` set the parallel kernels' tiling; the
    chunked forward under autograd keeps its own."""
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
    if u.device.type != "cuda" and not _kernels()[1]:
        raise ValueError(
            f"impl='triton' needs CUDA tensors, got tensors on {u.device} (with "
            "TRITON_INTERPRET=1 set before triton is first imported, the kernels run in "
            "Triton's CPU interpreter)"
        )
    if parallel:  # the chunked forward under autograd keeps its default tiling
        par = dict(parallel=True, par_t=t_f, par_bd=bd_f,
                   par_bwd=PAR_BACKWARD if parallel_backward is None else bool(parallel_backward))
        t_f, bd_f = _chunk_t_fwd(A.shape[-1]), _chunk_block_d(Dd, NP, num_warps)
    else:
        par = {}
    cfg = _ChunkConfig(
        n_mod=M if rank1 else 1, weight=float(cp.weight) if rank1 else 1.0,
        softplus=bool(delta_softplus), grad=_grad_wanted(), t_fwd=t_f, t_bwd=t_b, block_d_fwd=bd_f,
        block_d_bwd=bd_b, num_warps=num_warps, **par,
    )

    def c(x):
        return None if x is None else x.contiguous()

    y, last = _CoupledScanTritonChunked.apply(
        c(u), c(delta), c(A), c(B), c(C), c(D), c(z), c(delta_bias), c(initial_state), cfg
    )
    return (y, last) if return_last_state else y


_TYPE = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16",
         torch.float16: "fp16"}


def _compile_for(kernel, args, meta, num_warps: int, capability: int = 90):
    """Compile one launch ahead of time for an NVIDIA target, on any machine (no GPU needed).

    Runs Triton's real compiler (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the bundled ptxas),
    which the interpreter does not; used by tests and the GPU script to catch compile errors early.
    Returns the compiled kernel (``.asm["ptx"]``, ``.metadata``).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature, constexprs = {}, {}
    for name, value in zip(names, args, strict=False):  # the constexprs come after args
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPE[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        else:
            signature[name] = "fp32"
    for name, value in meta.items():
        signature[name] = "constexpr"
        constexprs[name] = value
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "enable_fp_fusion": True})
