"""Input validation for the coupled selective scan (docs/MATH.md, section 2), and the steps
before and after the recurrence that the pure-PyTorch implementations share.

Shapes: M modalities, Bt batch, D channels (d_inner), N state size, L length.
Errors name the argument, the shape received and the shape expected.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)
_SUPPORTED = (torch.float32, torch.float64, *_HALF)


class ScanDims(NamedTuple):  # a NamedTuple: built on every call, cheaper than a dataclass
    M: int
    Bt: int
    D: int
    N: int
    L: int
    compute_dtype: torch.dtype


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def _shape_error(name: str, t, expected: tuple, letters: str) -> None:
    """Raise the ValueError for an argument that is not a tensor of the expected shape."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {letters}, got {type(t).__name__}")
    raise ValueError(f"{name}: got shape {_shape(t)}, expected {letters} = {expected}")


def _check_dtype(name: str, got: torch.dtype, dtype: torch.dtype, same_dtype: bool,
                 ref: str = "u") -> None:
    """Raise unless `got` is allowed for an argument next to the `dtype` of the op's main input
    (named `ref`: u for the selective scan, x for the SSD)."""
    if got not in _SUPPORTED:
        raise ValueError(f"{name}: dtype {got} not supported; use fp32, fp64, fp16 or bf16")
    if same_dtype:
        raise ValueError(f"{name}: dtype {got} differs from {ref}'s dtype {dtype}")
    if not (dtype in _HALF and got == torch.float32):
        raise ValueError(
            f"{name}: dtype {got} differs from {ref}'s dtype {dtype} "
            f"(float32 is accepted when {ref} is fp16/bf16)"
        )


def check_arguments(specs, device: torch.device, dtype: torch.dtype, ref: str) -> None:
    """Check each ``(name, tensor or None, expected shape, shape letters, same_dtype)`` of
    ``specs`` against the op's main input ``ref`` (its device and dtype): the loop both ops'
    validations share. ``same_dtype`` False also accepts float32 next to half inputs."""
    for name, t, expected, letters, same_dtype in specs:
        if t is None:
            continue
        # torch.Size compares equal to a tuple of the same ints
        if not isinstance(t, torch.Tensor) or t.shape != expected:
            _shape_error(name, t, expected, letters)
        if t.device != device:
            raise ValueError(f"{name}: on device {t.device}, but {ref} is on {device}")
        if t.dtype != dtype:
            _check_dtype(name, t.dtype, dtype, same_dtype, ref)


def check_scan_inputs(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None
) -> ScanDims:
    """Validate shapes, devices and dtypes; return the dimensions and the compute dtype.

    u, delta, B, C, z share one dtype (fp32, fp64, fp16 or bf16); A, D, delta_bias and
    initial_state have that dtype too, or float32 when the inputs are half precision (mamba
    keeps its parameters in fp32). Half inputs are computed in fp32.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 4:
        got = _shape(u) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u: got shape {got}, expected 4 dims (M, Bt, D, L)")
    M, Bt, Dc, L = u.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 3:
        got = _shape(A) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A: got shape {got}, expected 3 dims (M, D, N) = ({M}, {Dc}, N)")
    N = A.shape[2]
    if L == 0 or N == 0 or M == 0:
        raise ValueError(f"u/A: empty dimension (M={M}, L={L}, N={N}); all must be >= 1")
    device, dtype = u.device, u.dtype
    if dtype not in _SUPPORTED:
        raise ValueError(f"u: dtype {dtype} not supported; use fp32, fp64, fp16 or bf16")
    # One pass over the inputs, cheap on the happy path (this runs on every call, the streaming
    # step's L = 1 included): shape, device, then dtype; the messages are built only on failure.
    # A, D, delta_bias and initial_state may be float32 when u is half precision.
    bdl = (M, Bt, Dc, L)
    bnl = (M, Bt, N, L)
    md = (M, Dc)
    check_arguments((
        ("delta", delta, bdl, "(M, Bt, D, L)", True),
        ("A", A, (M, Dc, N), "(M, D, N)", False),
        ("B", B, bnl, "(M, Bt, N, L)", True),
        ("C", C, bnl, "(M, Bt, N, L)", True),
        ("D", D, md, "(M, D)", False),
        ("z", z, bdl, "(M, Bt, D, L)", True),
        ("delta_bias", delta_bias, md, "(M, D)", False),
        ("initial_state", initial_state, (M, Bt, Dc, N), "(M, Bt, D, N)", False),
    ), device, dtype, "u")
    compute = torch.float32 if dtype in _HALF else dtype
    return ScanDims(M, Bt, Dc, N, L, compute)


def to_compute_dtype(u: torch.Tensor, *tensors):
    """(compute dtype, tensors cast to it): float64 stays float64, everything else runs in
    float32 (half inputs are upcast once here rather than inside every implementation).
    None entries pass through."""
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    for t in tensors:
        if t is not None and t.dtype != work:
            return work, tuple(t if t is None or t.dtype == work else t.to(work) for t in tensors)
    return work, tensors  # nothing to cast (the usual case): no new tuple


def step_sizes(delta: torch.Tensor, delta_bias: torch.Tensor | None,
               softplus: bool) -> torch.Tensor:
    """dt = softplus(delta + delta_bias), each step optional: delta (M, Bt, D, L), delta_bias
    (M, D) -> (M, Bt, D, L). The pure-PyTorch scans' first step (docs/MATH.md, section 2)."""
    dt = delta
    if delta_bias is not None:
        dt = dt + delta_bias[:, None, :, None]
    return F.softplus(dt) if softplus else dt


def skip_and_gate(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None,
                  z: torch.Tensor | None) -> torch.Tensor:
    """(y + D u) * silu(z), each term optional: y, u, z (M, Bt, D, L), D (M, D) ->
    (M, Bt, D, L). The pure-PyTorch scans' last step (docs/MATH.md, section 2)."""
    if D is not None:
        y = y + D[:, None, :, None] * u
    return y * F.silu(z) if z is not None else y
