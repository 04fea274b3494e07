"""Global convolution kernel of the time-invariant coupled SSM (docs/MATH.md, section 3).

Shapes: M modalities, Bt batch, D channels, N state size, L length.

With dt, B, C constant in time, T_n = diag(Abar[:, n]) W is one M x M matrix per (d, n), and from a
zero state

    y[t][m] = sum_{s<=t} sum_k K[m, k, t-s] u[s][k] + D[m] u[t][m]
    K[m, k, j] = sum_n C[m, n] (T_n^j)[m, k] dt[k] B[k, n]                  (per channel d)

so y is a causal, M x M matrix-valued convolution, computed here by FFT in O(M^2 D L log L).
Derivation: docs/conv_kernel.md.
"""

from __future__ import annotations

import torch

from ._coupling import resolve_coupling


def _check(delta, A, B, C):
    if A.dim() != 3:
        raise ValueError(f"A: got shape {tuple(A.shape)}, expected (M, D, N)")
    M, Dc, N = A.shape
    for name, t, exp in (("delta", delta, (M, Dc)), ("B", B, (M, N)), ("C", C, (M, N))):
        if tuple(t.shape) != exp:
            raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected {exp}")
    return M, Dc, N


def _matrix_powers(T: torch.Tensor, length: int) -> torch.Tensor:
    """[T^0, T^1, ..., T^(length-1)] for a batch of matrices T (..., M, M) -> (length, ..., M, M).

    Doubling: given P_0..P_{k-1}, the next k powers are T^k @ P_j; log2(length) batched products.
    """
    M = T.shape[-1]
    eye = torch.eye(M, dtype=T.dtype, device=T.device).expand_as(T)
    powers = eye[None]
    step = T  # T^k for the current k = powers.shape[0]
    while powers.shape[0] < length:
        powers = torch.cat([powers, step[None] @ powers], dim=0)
        step = step @ step
    return powers[:length]


def coupled_conv_kernel(
    delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, coupling, length: int
) -> torch.Tensor:
    """The M x M matrix-valued convolution kernel of a time-invariant coupled SSM.

    Args:
        delta: (M, D) the step dt itself (apply any bias and softplus before).
        A: (M, D, N) state matrix.
        B, C: (M, N) time-invariant input and output projections.
        coupling: as in :func:`coupled_selective_scan` ("none", "mean", "sum", alpha, (M, M)).
        length: kernel length L.

    Returns:
        K: (M, M, D, length) with K[m, k, :, j] the response of output m to input k, j steps back.
    """
    M, Dc, N = _check(delta, A, B, C)
    cp = resolve_coupling(coupling, M)
    Abar = torch.exp(delta[..., None] * A)  # (M, D, N)
    bin_ = delta[..., None] * B[:, None, :]  # (M, D, N): dt[k] B[k, n]
    cout = C[:, None, :]  # (M, 1, N)
    j = torch.arange(length, dtype=A.dtype, device=A.device)
    if cp.kind == "diag":
        # T_n^j = diag(Abar^j): no cross terms.
        pw = Abar[..., None] ** j  # (M, D, N, L)
        diag = (cout[..., None] * pw * bin_[..., None]).sum(2)  # (M, D, L)
        K = torch.zeros(M, M, Dc, length, dtype=A.dtype, device=A.device)
        idx = torch.arange(M, device=A.device)
        K[idx, idx] = diag
        return K
    if cp.kind == "rank1":
        # W = (w/M) 11^T gives T^j = (w/M) diag(Abar) 1 (w abar)^(j-1) 1^T for j >= 1, with
        # abar = mean_m Abar (docs/MATH.md, section 3): no matrix powers needed.
        w = cp.weight
        abar = Abar.mean(0)  # (D, N)
        geo = (w * abar[..., None]) ** (j[1:] - 1)  # (D, N, L-1)
        left = cout * Abar * (w / M)  # (M, D, N): C[m] Abar[m]
        K_tail = torch.einsum("mdn,kdn,dnj->mkdj", left, bin_, geo)
        K0 = torch.zeros(M, M, Dc, 1, dtype=A.dtype, device=A.device)
        idx = torch.arange(M, device=A.device)
        K0[idx, idx, :, 0] = (cout * bin_).sum(-1)
        return torch.cat([K0, K_tail], dim=-1)
    W = cp.matrix.to(dtype=A.dtype, device=A.device)
    T = Abar.permute(1, 2, 0)[..., :, None] * W  # (D, N, M, M): T[m, k] = Abar[m] W[m, k]
    P = _matrix_powers(T, length)  # (L, D, N, M, M)
    return torch.einsum("mdn,jdnmk,kdn->mkdj", cout.expand(M, Dc, N), P, bin_)


def coupled_conv(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    coupling="mean",
) -> torch.Tensor:
    """Time-invariant coupled SSM as an FFT convolution with :func:`coupled_conv_kernel`.

    Equals :func:`coupled_selective_scan` from a zero state with delta, B and C held constant over
    batch and time (and no bias, softplus or gate).

    Args:
        u: (M, Bt, D, L) input.
        delta: (M, D) step; A: (M, D, N); B, C: (M, N); D: (M, D) skip or None.
        coupling: as in :func:`coupled_selective_scan`.

    Returns:
        y: (M, Bt, D, L).
    """
    if u.dim() != 4:
        raise ValueError(f"u: got shape {tuple(u.shape)}, expected (M, Bt, D, L)")
    M, Bt, Dc, L = u.shape
    if A.shape[:2] != (M, Dc):
        raise ValueError(f"A: got shape {tuple(A.shape)}, expected (M, D, N) = ({M}, {Dc}, N)")
    K = coupled_conv_kernel(delta, A, B, C, coupling, L)  # (M, M, D, L)
    n = 2 * L  # zero padding makes the circular FFT convolution causal and linear
    Kf = torch.fft.rfft(K, n=n)  # (M, M, D, F)
    Uf = torch.fft.rfft(u, n=n)  # (M, Bt, D, F)
    y = torch.fft.irfft(torch.einsum("mkdf,kbdf->mbdf", Kf, Uf), n=n)[..., :L]
    if D is not None:
        y = y + D[:, None, :, None] * u
    return y
