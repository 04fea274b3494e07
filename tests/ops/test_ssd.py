"""coupled_ssd (docs/MATH.md, section 7): the chunked implementation against the reference loop,
and coupling "none" against an independent Mamba-2 SSD oracle."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import coupled_mamba
from coupled_mamba.ops import coupled_ssd, coupled_ssd_chunked, coupled_ssd_ref

TOL = {torch.float64: 1e-10, torch.float32: 3e-5}
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")
COUPLINGS = ["none", "mean", "sum", 0.3, "matrix"]


def make_inputs(M=3, Bt=2, L=37, H=4, P=3, G=2, N=5, dtype=torch.float64, seed=0,
                optional=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    kw = {"x": r(M, Bt, L, H, P), "dt": r(M, Bt, L, H, scale=0.5),
          "A": (-torch.rand(M, H, generator=g, dtype=torch.float64) * 2 - 0.1).to(dtype),
          "B": r(M, Bt, L, G, N), "C": r(M, Bt, L, G, N)}
    if optional:
        kw.update(D=r(M, H), z=r(M, Bt, L, H, P), dt_bias=r(M, H, scale=0.3),
                  initial_state=r(M, Bt, H, P, N))
    return {k: v.requires_grad_(True) for k, v in kw.items()}


def _coupling(c, M, dtype):
    if c != "matrix":
        return c
    g = torch.Generator().manual_seed(5)
    return (torch.rand(M, M, generator=g, dtype=torch.float64) / M).to(dtype).requires_grad_(True)


def _run(fn, kw, coupling, **extra):
    """y, final state and the gradients of a fixed random projection of both."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "sum" warns once
        y, h = fn(**kw, coupling=coupling, return_final_state=True, **extra)
    g = torch.Generator().manual_seed(9)
    loss = (y * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)).sum() + (
        h * torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)).sum()
    names = list(kw)
    tensors = [kw[n] for n in names]
    if isinstance(coupling, torch.Tensor):
        names.append("coupling")
        tensors.append(coupling)
    return y, h, dict(zip(names, torch.autograd.grad(loss, tensors), strict=True))


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _assert_close(got, want, tol):
    (y1, h1, g1), (y0, h0, g0) = got, want
    assert _rel(y1, y0) < tol, "y"
    assert _rel(h1, h0) < tol, "final state"
    assert set(g1) == set(g0)
    for name in g0:
        assert _rel(g1[name], g0[name]) < tol, f"grad {name}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("L,chunk", [(37, 8), (64, 16), (1, 64), (20, 64)],
                         ids=["odd-L", "multiple", "one-step", "one-chunk"])
def test_chunked_matches_reference(dtype, coupling, L, chunk):
    kw = make_inputs(L=L, dtype=dtype)
    c = _coupling(coupling, 3, dtype)
    want = _run(coupled_ssd_ref, kw, c)
    got = _run(coupled_ssd_chunked, kw, c, chunk_size=chunk)
    _assert_close(got, want, TOL[dtype])


@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("M", [2, 4])
def test_groups_and_modalities(G, M):
    kw = make_inputs(M=M, G=G, L=19, H=4)
    _assert_close(_run(coupled_ssd_chunked, kw, "mean", chunk_size=8),
                  _run(coupled_ssd_ref, kw, "mean"), TOL[torch.float64])


@pytest.mark.parametrize("coupling", ["none", "mean"])
def test_without_optional_inputs(coupling):
    kw = make_inputs(optional=False)
    y0 = coupled_ssd_ref(**kw, coupling=coupling, dt_softplus=False)
    y1 = coupled_ssd(**kw, coupling=coupling, dt_softplus=False, chunk_size=8)
    assert _rel(y1, y0) < 1e-10


def test_strong_decay_stays_finite():
    """dt' A of about -50 per step: the chain's decays underflow in float32, and the read-out
    ratios r_m = a_m / mean a must still come out finite (they are formed in log space)."""
    kw = make_inputs(dtype=torch.float32, L=70)
    with torch.no_grad():
        kw["A"].mul_(0).sub_(25.0)
        kw["dt"].abs_().add_(2.0)
    y0, h0 = coupled_ssd_ref(**kw, coupling="mean", return_final_state=True)
    y1, h1 = coupled_ssd(**kw, coupling="mean", chunk_size=64, return_final_state=True)
    assert torch.isfinite(y1).all() and torch.isfinite(h1).all()
    assert _rel(y1, y0) < 1e-5 and _rel(h1, h0) < 1e-5


def _segsum(x):
    T = x.size(-1)
    x = x[..., None].repeat(*([1] * x.dim()), T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), -1), 0)
    x = x.cumsum(dim=-2)
    return x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), -torch.inf)


def ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None):
    """Mamba-2's SSD in its minimal discrete form (the semantics of mamba-ssm's
    ``ssd_minimal_discrete``): X (b, l, h, p) = dt x, A (b, l, h) = dt A, B, C (b, l, h, n).
    Returns Y (b, l, h, p) and the final state (b, h, p, n). l must be a multiple of block_len."""
    b, l, h, p = X.shape
    c = l // block_len
    X, B, C = (t.reshape(b, c, block_len, *t.shape[2:]) for t in (X, B, C))
    A = A.reshape(b, c, block_len, h).permute(0, 3, 1, 2)  # b h c l
    A_cumsum = A.cumsum(dim=-1)
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, torch.exp(_segsum(A)), X)
    decay_states = torch.exp(A_cumsum[..., -1:] - A_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    if initial_states is None:
        initial_states = torch.zeros_like(states[:, :1])
    states = torch.cat([initial_states, states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(A_cumsum[..., -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final = new_states[:, :-1], new_states[:, -1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, l, h, p), final


@pytest.mark.parametrize("impl", ["chunked", "ref"])
def test_none_is_mamba2_ssd_per_modality(impl):
    M, L, H, G = 3, 48, 4, 2
    kw = make_inputs(M=M, L=L, H=H, G=G)
    with torch.no_grad():
        y, h = coupled_ssd(**kw, coupling="none", chunk_size=16, return_final_state=True,
                           impl=impl)
        dtp = F.softplus(kw["dt"] + kw["dt_bias"][:, None, None, :])
        for m in range(M):
            Bh = kw["B"][m].repeat_interleave(H // G, dim=2)
            Ch = kw["C"][m].repeat_interleave(H // G, dim=2)
            ym, hm = ssd_minimal_discrete(kw["x"][m] * dtp[m][..., None],
                                          kw["A"][m] * dtp[m], Bh, Ch, 12,
                                          kw["initial_state"][m][:, None])
            ym = (ym + kw["D"][m][:, None] * kw["x"][m]) * F.silu(kw["z"][m])
            assert _rel(y[m], ym) < 1e-10
            assert _rel(h[m], hm) < 1e-10


def test_pieces_with_carried_state_equal_one_call():
    kw = make_inputs(L=30)
    with torch.no_grad():
        y, h = coupled_ssd(**kw, return_final_state=True, chunk_size=8)
        cut = 13
        first = {k: (v[:, :, :cut] if v.dim() >= 4 and k != "initial_state" else v)
                 for k, v in kw.items()}
        second = {k: (v[:, :, cut:] if v.dim() >= 4 and k != "initial_state" else v)
                  for k, v in kw.items()}
        y1, h1 = coupled_ssd(**first, return_final_state=True, chunk_size=8)
        second["initial_state"] = h1
        y2, h2 = coupled_ssd(**second, return_final_state=True, chunk_size=8)
    assert _rel(torch.cat([y1, y2], dim=2), y) < 1e-10
    assert _rel(h2, h) < 1e-10


def test_half_precision_runs_in_float32():
    kw = {k: v.detach() for k, v in make_inputs(dtype=torch.float32).items()}
    half = {k: (v.to(torch.bfloat16) if k in ("x", "dt", "B", "C", "z") else v)
            for k, v in kw.items()}
    y, h = coupled_ssd(**half, return_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    want = coupled_ssd(**{k: (v.float() if k in half else v) for k, v in half.items()})
    assert _rel(y.float(), want) < 1e-2


def test_exported_from_the_package():
    assert coupled_mamba.coupled_ssd is coupled_ssd


@pytest.mark.parametrize("name,shape,pattern", [
    ("dt", (3, 2, 37, 3), r"dt: got shape \(3, 2, 37, 3\), expected \(M, Bt, L, H\) = "
                          r"\(3, 2, 37, 4\)"),
    ("A", (3, 4, 1), r"A: got shape \(3, 4, 1\), expected \(M, H\)"),
    ("C", (3, 2, 37, 2, 4), r"C: got shape"),
    ("D", (4,), r"D: got shape \(4,\)"),
    ("initial_state", (3, 2, 4, 3, 4), r"initial_state: got shape"),
])
def test_wrong_shapes_name_the_argument(name, shape, pattern):
    kw = {k: v.detach() for k, v in make_inputs().items()}
    kw[name] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=pattern):
        coupled_ssd(**kw)


def test_other_bad_arguments():
    kw = {k: v.detach() for k, v in make_inputs(H=4, G=2).items()}
    with pytest.raises(ValueError, match="x: got shape"):
        coupled_ssd(**{**kw, "x": kw["x"][0]})
    with pytest.raises(ValueError, match="groups do not divide"):
        coupled_ssd(**{**kw, "B": torch.zeros(3, 2, 37, 3, 5, dtype=torch.float64),
                       "C": torch.zeros(3, 2, 37, 3, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match="chunk_size"):
        coupled_ssd(**kw, chunk_size=0)
    with pytest.raises(ValueError, match="impl"):
        coupled_ssd(**kw, impl="triton")
    with pytest.raises(ValueError, match="differs from x's dtype"):
        coupled_ssd(**{**kw, "B": kw["B"].float()})
    with pytest.raises(ValueError, match="coupling"):
        coupled_ssd(**kw, coupling="max")
