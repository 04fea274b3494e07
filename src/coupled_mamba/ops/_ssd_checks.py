"""Input validation for the coupled SSD op (docs/MATH.md, section 7) and the steps before and
after its recurrence that both implementations share.

Shapes: M modalities, Bt batch, L length, H heads of P channels, G groups of B/C (H % G == 0),
N state size. Errors name the argument, the shape received and the shape expected.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._checks import _SUPPORTED, check_arguments


class SSDDims(NamedTuple):
    M: int
    Bt: int
    L: int
    H: int
    P: int
    G: int
    N: int


def _dims_error(name: str, t, ndim: int, letters: str) -> None:
    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
    raise ValueError(f"{name}: got shape {got}, expected {ndim} dims {letters}")


def check_ssd_inputs(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None,
                     chunk_size: int = 64) -> SSDDims:
    """Validate shapes, devices and dtypes of a ``coupled_ssd`` call; return its dimensions.

    x, dt, B, C, z share one dtype (fp32, fp64, fp16 or bf16); A, D, dt_bias and initial_state
    have that dtype too, or float32 when the inputs are half precision.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        _dims_error("x", x, 5, "(M, Bt, L, H, P)")
    M, Bt, L, H, P = x.shape
    if not isinstance(B, torch.Tensor) or B.dim() != 5:
        _dims_error("B", B, 5, "(M, Bt, L, G, N)")
    G, N = B.shape[3], B.shape[4]
    if min(M, Bt, L, H, P, G, N) == 0:
        raise ValueError(f"x/B: empty dimension (M={M}, Bt={Bt}, L={L}, H={H}, P={P}, G={G}, "
                         f"N={N}); all must be >= 1")
    if H % G:
        raise ValueError(f"B: {G} groups do not divide the {H} heads of x (H % G must be 0)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    dtype, device = x.dtype, x.device
    if dtype not in _SUPPORTED:
        raise ValueError(f"x: dtype {dtype} not supported; use fp32, fp64, fp16 or bf16")
    check_arguments((
        ("dt", dt, (M, Bt, L, H), "(M, Bt, L, H)", True),
        ("A", A, (M, H), "(M, H)", False),
        ("B", B, (M, Bt, L, G, N), "(M, Bt, L, G, N)", True),
        ("C", C, (M, Bt, L, G, N), "(M, Bt, L, G, N)", True),
        ("D", D, (M, H), "(M, H)", False),
        ("z", z, (M, Bt, L, H, P), "(M, Bt, L, H, P)", True),
        ("dt_bias", dt_bias, (M, H), "(M, H)", False),
        ("initial_state", initial_state, (M, Bt, H, P, N), "(M, Bt, H, P, N)", False),
    ), device, dtype, "x")
    return SSDDims(M, Bt, L, H, P, G, N)


def ssd_step_sizes(dt: torch.Tensor, dt_bias: torch.Tensor | None,
                   softplus: bool) -> torch.Tensor:
    """dt' = softplus(dt + dt_bias), each step optional: dt (M, Bt, L, H), dt_bias (M, H) ->
    (M, Bt, L, H)."""
    if dt_bias is not None:
        dt = dt + dt_bias[:, None, None, :]
    return F.softplus(dt) if softplus else dt


def heads_of_groups(t: torch.Tensor, H: int) -> torch.Tensor:
    """(M, Bt, L, G, N) -> (M, Bt, L, H, N): head h reads group h // (H / G)."""
    G = t.shape[3]
    return t if G == H else t.repeat_interleave(H // G, dim=3)


def ssd_skip_and_gate(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None,
                      z: torch.Tensor | None) -> torch.Tensor:
    """(y + D x) * silu(z), each term optional: y, x, z (M, Bt, L, H, P), D (M, H)."""
    if D is not None:
        y = y + D[:, None, None, :, None] * x
    return y * F.silu(z) if z is not None else y
