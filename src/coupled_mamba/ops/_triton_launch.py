"""Launcher helpers shared by the Triton scan variants (``_triton_seq.py``, ``_triton_chunked.py``).

Loading the kernels (compiled or interpreted), tiling arithmetic, the optional-tensor convention,
gradient buffers and the device check. Shapes: M modalities, Bt batch, D channels, N state size,
L length; scan tensors as in :func:`coupled_mamba.ops.coupled_selective_scan_ref`.
"""

from __future__ import annotations

import os

import torch


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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


def _grad_wanted() -> bool:
    # Read before Function.apply: inside forward() grad mode is always off, and
    # ctx.needs_input_grad stays True under no_grad / inference_mode whenever an input requires
    # grad (model parameters always do), which would make inference save checkpoints.
    return torch.is_grad_enabled()


def _launch_options(cfg) -> dict:
    """Launch options of a _Config or _ChunkConfig."""
    # FMA contraction on, said explicitly: Triton 3.9 warns that its default will flip to off.
    return {"num_warps": cfg.num_warps, "enable_fp_fusion": True}


def _launch(kernel: str, grid: tuple, args: list, meta: dict, cfg) -> None:
    """Run ``_triton_kernels.<kernel>`` over ``grid`` with the config's launch options."""
    getattr(_kernels()[0], kernel)[grid](*args, **meta, **_launch_options(cfg))


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


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32



def _check_device(u: torch.Tensor) -> None:
    """CUDA tensors, or any tensors where Triton's interpreter runs the kernels."""
    if u.device.type != "cuda" and not _kernels()[1]:
        raise ValueError(
            f"impl='triton' needs CUDA tensors, got tensors on {u.device} (with "
            "TRITON_INTERPRET=1 set before triton is first imported, the kernels run in "
            "Triton's CPU interpreter)"
        )


def _contiguous(*xs):
    """The tensors made contiguous, None kept: what the autograd Functions take."""
    return [None if x is None else x.contiguous() for x in xs]
