"""Fused Triton coupled selective scan (docs/MATH.md, section 2): entry point, variant choice.

    h[t][m] = exp(dt A)[m] * sum_k W[m, k] h[t-1][k] + dt B u;   y = (C h + D u) * silu(z)

Shapes: M modalities, Bt batch, D channels, N state size, L length. One file per kernel variant:
``_triton_seq_kernels.py`` (sequential design, every coupling), ``_triton_chunk_kernels.py``
(associative scan over chunks of time; couplings "none", "mean", "sum") and
``_triton_par_kernels.py`` (time-parallel, the same couplings), indexed by ``_triton_kernels.py``;
their launchers and autograd Functions in ``_triton_seq.py`` and ``_triton_chunked.py``. This
module is the entry point: availability, ``variant`` choice, process-wide switches. The kernels'
design (grid, registers, checkpoints, reverse pass, reductions) is in docs/triton_kernel.md.

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

import torch

from ._coupling import resolve_coupling
from ._triton_chunked import (  # noqa: F401  (re-exported: tests and benchmarks tune these)
    CHUNK_ND,
    CHUNK_T_BWD,
    CHUNK_T_FWD,
    PAR_BD,
    PAR_T,
    _chunk_block_d,
    _chunk_bwd_launch,
    _chunk_fwd_launch,
    _chunk_t_fwd,
    _ChunkConfig,
    _chunked,
    _CoupledScanTritonChunked,
    _par_meta,
    _par_tiling,
)
from ._triton_compile import _compile_for  # noqa: F401
from ._triton_launch import _interpreting, _kernels, _pow2, triton_cdiv  # noqa: F401
from ._triton_seq import (  # noqa: F401
    BWD_TILE,
    CHUNK,
    FWD_TILE,
    SUB_CHUNK,
    _bwd_launch,
    _Config,
    _CoupledScanTriton,
    _fwd_launch,
    _seq,
)

# The parallel layout's backward under autograd for variant "parallel" (else the chunked kernels).
# Off: correct in the interpreter and compiled for sm_90 without spills, not yet timed on a GPU.
PAR_BACKWARD = False
VARIANTS = ("auto", "seq", "chunked", "parallel")
# Overrides variant="auto" process-wide (benchmarks, A/B runs): "seq", "chunked" or "parallel".
VARIANT_ENV = "COUPLED_MAMBA_TRITON_VARIANT"


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
                        parallel_backward=PAR_BACKWARD if parallel_backward is None
                        else parallel_backward)
    return _seq(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cp, initial_state,
                return_last_state, chunk, sub_chunk, block_d, block_d_bwd, num_warps)
