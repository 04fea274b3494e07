"""Reference coupled selective scan: the executable form of docs/MATH.md section 2.

    dt      = softplus(delta + delta_bias)                  (bias, softplus optional)
    Abar    = exp(dt[m,b,d,t] * A[m,d,n])
    bbar    = dt[m,b,d,t] * B[m,b,n,t] * u[m,b,d,t]
    h[t][m] = Abar[t][m] * sum_k W[m,k] h[t-1][k] + bbar[t][m]
    y[t][m] = sum_n C[m,b,n,t] h[t][m,b,d,n] + D[m,d] u[m,b,d,t];   y *= silu(z)

Shapes: M modalities, Bt batch, D channels, N state size, L length. A plain loop over time with the
dense (M, M) coupling matrix, computed in float32 (or float64 for float64 inputs). Slow on purpose:
every fast path is tested against it.
"""

from __future__ import annotations

import torch

from ._checks import skip_and_gate, step_sizes, to_compute_dtype
from ._coupling import resolve_coupling


def coupled_selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    coupling="mean",
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """Coupled selective scan, one time step at a time.

    Args:
        u: (M, Bt, D, L) input after conv + SiLU.
        delta: (M, Bt, D, L) raw timescale.
        A: (M, D, N) state matrix (negative).
        B, C: (M, Bt, N, L) input-dependent projections.
        D: (M, D) skip, or None.
        z: (M, Bt, D, L) gate, or None.
        delta_bias: (M, D) or None.
        delta_softplus: apply softplus to delta (+ bias).
        coupling: "none" | "mean" | "sum" | alpha in [0, 1] | (M, M) tensor.
        initial_state: (M, Bt, D, N) or None (zeros).
        return_last_state: also return h[L-1].

    Returns:
        y (M, Bt, D, L) in u's dtype, and h[L-1] (M, Bt, D, N) in the compute dtype if asked.
    """
    out_dtype = u.dtype
    work, (u, delta, A, B, C, D, z, delta_bias, initial_state) = to_compute_dtype(
        u, u, delta, A, B, C, D, z, delta_bias, initial_state
    )
    M, Bt, Dc, L = u.shape
    N = A.shape[-1]
    W = resolve_coupling(coupling, M).dense(M, device=u.device, dtype=work)

    dt = step_sizes(delta, delta_bias, delta_softplus)  # (M, Bt, D, L)

    h = initial_state if initial_state is not None else u.new_zeros(M, Bt, Dc, N)
    ys = []
    for t in range(L):
        dt_t = dt[..., t, None]  # (M, Bt, D, 1)
        Abar = torch.exp(dt_t * A[:, None])  # (M, Bt, D, N)
        bbar = dt_t * B[:, :, None, :, t] * u[..., t, None]  # (M, Bt, D, N)
        h = Abar * torch.einsum("mk,kbdn->mbdn", W, h) + bbar
        ys.append(torch.einsum("mbdn,mbn->mbd", h, C[..., t]))
    y = torch.stack(ys, dim=-1)
    y = skip_and_gate(y, u, D, z).to(out_dtype)
    return (y, h) if return_last_state else y
