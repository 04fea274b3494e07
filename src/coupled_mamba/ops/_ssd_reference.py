"""Reference coupled SSD: the executable form of docs/MATH.md section 7 (Coupled Mamba-2).

    dt'      = softplus(dt + dt_bias)                            (bias, softplus optional)
    a[t][m]  = exp(dt'[t][m] * A[m])                             one scalar per (m, b, h)
    h[t][m]  = a[t][m] * sum_k W[m,k] h[t-1][k] + dt'[t][m] * x[t][m] (outer) B[t][m]
    y[t][m]  = h[t][m] C[t][m] + D[m] x[t][m];    y = y * silu(z) if z is given

Shapes: M modalities, Bt batch, L length, H heads of P channels, G groups of B/C (head h reads
group h // (H / G)), N state size. A plain loop over time with the dense (M, M) coupling matrix,
computed in float32 (or float64 for float64 inputs). Slow on purpose: the chunked path is tested
against it.
"""

from __future__ import annotations

import torch

from ._checks import to_compute_dtype
from ._coupling import resolve_coupling
from ._ssd_checks import heads_of_groups, ssd_skip_and_gate, ssd_step_sizes


def coupled_ssd_ref(x, dt, A, B, C, D=None, *, z=None, dt_bias=None, dt_softplus=True,
                    coupling="mean", chunk_size=64, initial_state=None,
                    return_final_state=False):
    """Coupled SSD, one time step at a time.

    Args:
        x: (M, Bt, L, H, P) inputs.
        dt: (M, Bt, L, H) raw step sizes (before bias and softplus).
        A: (M, H) negative decay rate per head.
        B, C: (M, Bt, L, G, N) input and output projections.
        D: (M, H) skip, or None.
        z: (M, Bt, L, H, P) gate, or None.
        dt_bias: (M, H) or None.
        dt_softplus: apply softplus to dt (+ bias).
        coupling: "none" | "mean" | "sum" | alpha in [0, 1] | (M, M) tensor (docs/MATH.md,
            section 2).
        chunk_size: unused here (the chunked implementation's block length).
        initial_state: (M, Bt, H, P, N) or None (zeros).
        return_final_state: also return h[L-1].

    Returns:
        y (M, Bt, L, H, P) in x's dtype, and h[L-1] (M, Bt, H, P, N) in the compute dtype if
        asked.
    """
    out_dtype = x.dtype
    work, (x, dt, A, B, C, D, z, dt_bias, initial_state) = to_compute_dtype(
        x, x, dt, A, B, C, D, z, dt_bias, initial_state)
    M, Bt, L, H, P = x.shape
    N = B.shape[-1]
    W = resolve_coupling(coupling, M).dense(M, device=x.device, dtype=work)
    dtp = ssd_step_sizes(dt, dt_bias, dt_softplus)  # (M, Bt, L, H)
    Bh, Ch = heads_of_groups(B, H), heads_of_groups(C, H)  # (M, Bt, L, H, N)

    h = initial_state if initial_state is not None else x.new_zeros(M, Bt, H, P, N)
    ys = []
    for t in range(L):
        a = torch.exp(dtp[:, :, t] * A[:, None, :])  # (M, Bt, H)
        inp = (dtp[:, :, t, :, None] * x[:, :, t])[..., None] * Bh[:, :, t, :, None, :]
        h = a[..., None, None] * torch.einsum("mk,kbhpn->mbhpn", W, h) + inp
        ys.append(torch.einsum("mbhpn,mbhn->mbhp", h, Ch[:, :, t]))
    y = ssd_skip_and_gate(torch.stack(ys, dim=2), x, D, z).to(out_dtype)
    return (y, h) if return_final_state else y
