"""The global convolution kernel (docs/MATH.md, section 3) equals the constant recurrence."""

from __future__ import annotations

import warnings

import pytest
import torch

from coupled_mamba.ops import coupled_conv, coupled_conv_kernel, coupled_selective_scan_ref


def _params(M=3, Bt=2, D=4, N=5, L=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(
        u=r(M, Bt, D, L),
        delta=torch.rand(M, D, generator=g, dtype=torch.float64) * 0.5 + 0.01,
        A=-torch.exp(r(M, D, N) * 0.5),
        B=r(M, N),
        C=r(M, N),
        D=r(M, D),
    )


def _recurrence(p, coupling):
    M, Bt, D, L = p["u"].shape
    N = p["A"].shape[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return coupled_selective_scan_ref(
            p["u"], p["delta"][:, None, :, None].expand(M, Bt, D, L), p["A"],
            p["B"][:, None, :, None].expand(M, Bt, N, L),
            p["C"][:, None, :, None].expand(M, Bt, N, L), D=p["D"], coupling=coupling,
        )


@pytest.mark.parametrize("coupling", ["none", "mean", "sum", 0.35, "matrix"])
def test_fft_convolution_equals_recurrence(coupling):
    p = _params()
    if coupling == "matrix":
        coupling = torch.rand(3, 3, generator=torch.Generator().manual_seed(5),
                              dtype=torch.float64) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y = coupled_conv(**p, coupling=coupling)
    want = _recurrence(p, coupling)
    assert ((y - want).norm() / want.norm()).item() < 1e-10


@pytest.mark.parametrize("coupling", ["mean", "sum", 0.6])
def test_rank_one_closed_form_equals_matrix_powers(coupling):
    """The paper's closed form for rank-one W equals the generic matrix-power kernel."""
    p = _params(L=17)
    M = 3
    f64 = dict(dtype=torch.float64)
    W = {"mean": torch.full((M, M), 1 / M, **f64), "sum": torch.ones(M, M, **f64)}.get(coupling)
    if W is None:  # alpha in (0, 1) is not rank one: compare with its dense matrix instead
        W = (1 - coupling) * torch.eye(M, **f64) + coupling * torch.full((M, M), 1 / M, **f64)
    args = (p["delta"], p["A"], p["B"], p["C"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        K = coupled_conv_kernel(*args, coupling, 17)
    K_general = coupled_conv_kernel(*args, W, 17)
    assert K.shape == (3, 3, 4, 17)
    assert torch.allclose(K, K_general, rtol=1e-10, atol=1e-12)


def test_kernel_first_taps_by_hand():
    """K[:, :, 0] = diag(C dt B); K[m, k, 1] = C[m] Abar[m] W[m, k] dt[k] B[k] (one channel)."""
    p = _params(M=2, D=1, N=1)
    W = torch.tensor([[0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
    K = coupled_conv_kernel(p["delta"], p["A"], p["B"], p["C"], W, 3)
    dt, A, B, C = p["delta"][:, 0], p["A"][:, 0, 0], p["B"][:, 0], p["C"][:, 0]
    Abar = torch.exp(dt * A)
    assert torch.allclose(K[:, :, 0, 0], torch.diag(C * dt * B))
    want1 = C[:, None] * Abar[:, None] * W * (dt * B)[None, :]
    assert torch.allclose(K[:, :, 0, 1], want1)


def test_bad_shapes_raise():
    p = _params()
    with pytest.raises(ValueError, match="B: got shape"):
        coupled_conv_kernel(p["delta"], p["A"], p["B"][:, :2], p["C"], "mean", 5)
    with pytest.raises(ValueError, match="u: got shape"):
        coupled_conv(p["u"][0], p["delta"], p["A"], p["B"], p["C"])
