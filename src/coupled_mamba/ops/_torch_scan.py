"""Pure-PyTorch coupled selective scan (docs/MATH.md, section 2): any device, backward by autograd.

Shapes: M modalities, Bt batch, D channels, N state size, L length, T chunk length.

The sequence is cut into chunks of T steps. Inside a chunk the linear recurrence is solved by a
Hillis-Steele doubling scan (log2 T vectorised steps, so few kernel launches on a GPU); the state
is carried from chunk to chunk. Per chunk it materialises (M, Bt, D, N, T) tensors, never the
whole (M, Bt, D, N, L).

- "none" (W = I): one diagonal scan of all M chains.
- "mean"/"sum" (W = (w/M) 11^T): the mean state Hbar obeys Hbar[t] = w mean_m(Abar) Hbar[t-1]
  + mean_m(bbar); one diagonal scan of Hbar, then h[t][m] = Abar[t][m] w Hbar[t-1] + bbar[t][m]
  pointwise (the paper's "expedite" form, docs/MATH.md section 2).
- general W: the stacked state h in R^M obeys h[t] = diag(Abar[t]) W h[t-1] + bbar[t], scanned as
  affine maps with M x M matrices.
"""

from __future__ import annotations

import torch

from ._checks import skip_and_gate, step_sizes, to_compute_dtype
from ._coupling import resolve_coupling

CHUNK = 64


def _diag_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h[t] = a[t] * h[t-1] + b[t] along the last dim.

    a, b: (..., T); h0: (...). Returns h: (..., T).
    """
    T = a.shape[-1]
    b = torch.cat([a[..., :1] * h0[..., None] + b[..., :1], b[..., 1:]], dim=-1)
    k = 1
    while k < T:
        b = torch.cat([b[..., :k], a[..., k:] * b[..., :-k] + b[..., k:]], dim=-1)
        if 2 * k < T:
            a = torch.cat([a[..., :k], a[..., k:] * a[..., :-k]], dim=-1)
        k *= 2
    return b


def _matrix_scan(Tm: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h[t] = Tm[t] @ h[t-1] + b[t]. Tm: (..., T, M, M); b: (..., T, M); h0: (..., M)."""
    T = Tm.shape[-3]
    first = (Tm[..., 0, :, :] @ h0[..., None])[..., 0] + b[..., 0, :]
    b = torch.cat([first[..., None, :], b[..., 1:, :]], dim=-2)
    k = 1
    while k < T:
        moved = (Tm[..., k:, :, :] @ b[..., :-k, :, None])[..., 0]
        b = torch.cat([b[..., :k, :], moved + b[..., k:, :]], dim=-2)
        if 2 * k < T:
            Tm = torch.cat([Tm[..., :k, :, :], Tm[..., k:, :, :] @ Tm[..., :-k, :, :]], dim=-3)
        k *= 2
    return b


def coupled_selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    coupling="mean", initial_state=None, return_last_state=False,
):
    """Coupled selective scan in plain PyTorch ops (chunked doubling scan).

    Same signature, shapes and semantics as
    :func:`coupled_mamba.ops.coupled_selective_scan_ref`:
    u, delta, z (M, Bt, D, L); A (M, D, N); B, C (M, Bt, N, L); D, delta_bias (M, D);
    initial_state (M, Bt, D, N). Returns y (M, Bt, D, L) [, h[L-1] (M, Bt, D, N)].
    """
    out_dtype = u.dtype
    work, (u, delta, A, B, C, D, z, delta_bias, initial_state) = to_compute_dtype(
        u, u, delta, A, B, C, D, z, delta_bias, initial_state
    )
    M, Bt, Dc, L = u.shape
    N = A.shape[-1]
    cp = resolve_coupling(coupling, M)
    W = cp.dense(M, device=u.device, dtype=work) if cp.kind == "general" else None

    dt = step_sizes(delta, delta_bias, delta_softplus)  # (M, Bt, D, L)

    h = initial_state if initial_state is not None else u.new_zeros(M, Bt, Dc, N)
    ys = []
    for s in range(0, L, CHUNK):
        e = min(s + CHUNK, L)
        dt_c = dt[..., s:e].unsqueeze(-2)  # (M, Bt, D, 1, T)
        Abar = torch.exp(dt_c * A[:, None, :, :, None])  # (M, Bt, D, N, T)
        bbar = dt_c * B[:, :, None, :, s:e] * u[..., None, s:e]  # (M, Bt, D, N, T)
        if cp.kind == "diag":
            hs = _diag_scan(Abar, bbar, h)
        elif cp.kind == "rank1":
            w = cp.weight
            hbar0 = h.mean(0)  # (Bt, D, N)
            hbar = _diag_scan(w * Abar.mean(0), bbar.mean(0), hbar0)  # (Bt, D, N, T)
            hprev = torch.cat([hbar0[..., None], hbar[..., :-1]], dim=-1)
            hs = Abar * (w * hprev) + bbar
        else:
            Tm = Abar.permute(1, 2, 3, 4, 0)[..., :, None] * W  # (Bt, D, N, T, M, M)
            hs = _matrix_scan(Tm, bbar.permute(1, 2, 3, 4, 0), h.permute(1, 2, 3, 0))
            hs = hs.permute(4, 0, 1, 2, 3)  # (M, Bt, D, N, T)
        ys.append((hs * C[:, :, None, :, s:e]).sum(dim=-2))
        h = hs[..., -1]
    y = torch.cat(ys, dim=-1)
    y = skip_and_gate(y, u, D, z).to(out_dtype)
    return (y, h) if return_last_state else y
