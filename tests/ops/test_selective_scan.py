"""Every implementation of coupled_selective_scan against the reference loop (docs/MATH.md, 2)."""

from __future__ import annotations

import itertools
import warnings
import zlib

import pytest
import torch

from coupled_mamba import coupled_selective_scan
from coupled_mamba.ops import coupled_selective_scan_ref
from coupled_mamba.ops.selective_scan import _cpu_backend

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _available(impl: str) -> bool:
    if impl == "cpu":
        return _cpu_backend()[0] is not None
    return True


FAST = [pytest.param(i, id=i) for i in ("torch", "cpu")]
COUPLINGS = ["none", "mean", "sum", 0.3, "matrix"]


def _coupling(c, M, dtype, seed=1):
    if c != "matrix":
        return c
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(M, M, generator=g, dtype=torch.float64) / M
    return W.to(dtype).requires_grad_(True)


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _run(impl, kw, coupling, softplus, with_grad=True):
    """Outputs, last state and gradients of a random projection of both."""
    y, h = coupled_selective_scan(
        **kw, coupling=coupling, delta_softplus=softplus, return_last_state=True, impl=impl
    )
    if not with_grad:
        return y, h, {}
    g = torch.Generator().manual_seed(123)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    loss = (y * gy).sum() + (h * gh).sum()
    names = [n for n in GRAD_NAMES if n in kw]
    tensors = [kw[n] for n in names]
    if isinstance(coupling, torch.Tensor):
        names.append("coupling")
        tensors.append(coupling)
    grads = torch.autograd.grad(loss, tensors)
    return y, h, dict(zip(names, grads, strict=True))


def _compare(impl, kw, coupling, softplus, dtype):
    if not _available(impl):
        pytest.skip(f"impl {impl} unavailable here")
    y_r, h_r, g_r = _run("ref", kw, coupling, softplus)
    y_f, h_f, g_f = _run(impl, kw, coupling, softplus)
    tol = TOL[dtype]
    assert y_f.dtype == kw["u"].dtype and y_f.shape == y_r.shape
    assert _rel(y_f, y_r) < tol, "y"
    assert _rel(h_f, h_r) < tol, "last state"
    assert set(g_f) == set(g_r)
    for name in g_r:
        assert torch.isfinite(g_f[name]).all(), name
        assert _rel(g_f[name], g_r[name]) < tol * 10, f"grad {name}: {_rel(g_f[name], g_r[name])}"


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_matches_reference_all_couplings(impl, coupling, dtype, make_scan_inputs):
    # A seed per case that is the same in every process (str hashing is salted per process).
    seed = zlib.crc32(f"{coupling}/{impl}".encode()) % 97
    kw = make_scan_inputs(dtype=dtype, with_state=True, L=37, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _compare(impl, kw, _coupling(coupling, 3, dtype), True, dtype)


OPTIONAL = list(itertools.product([False, True], repeat=5))


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize(
    "with_D,with_z,with_bias,with_state,softplus",
    OPTIONAL,
    ids=["".join("DZbSs"[i] if f else "-" for i, f in enumerate(o)) for o in OPTIONAL],
)
def test_optional_arguments(impl, with_D, with_z, with_bias, with_state, softplus,
                            make_scan_inputs):
    kw = make_scan_inputs(
        M=2, L=9, with_D=with_D, with_z=with_z, with_bias=with_bias, with_state=with_state,
    )
    if not softplus:
        # Without softplus delta must already be a positive step.
        kw["delta"] = kw["delta"].detach().abs().add(0.05).requires_grad_(True)
    for coupling in ("none", "mean", 0.5):
        _compare(impl, kw, coupling, softplus, torch.float64)


@pytest.mark.parametrize("impl", ["ref", *FAST])
def test_single_modality_and_long_sequence(impl, make_scan_inputs):
    # M = 1 (every coupling reduces to one chain) and L past several chunk boundaries.
    kw = make_scan_inputs(M=1, L=3, with_state=True)
    _compare(impl, kw, "mean", True, torch.float64)
    kw = make_scan_inputs(M=3, Bt=1, D=2, N=3, L=200, with_state=True)
    _compare(impl, kw, "mean", True, torch.float64)
    _compare(impl, kw, 0.7, True, torch.float64)


def _mambapy_scan(u, delta, A, B, C, D):
    """mambapy's sequential selective scan for one chain, in its (B, L, ED) layout."""
    from types import SimpleNamespace

    from mambapy.mamba import MambaBlock

    Bt, Dc, L = u.shape
    N = A.shape[-1]
    fake = SimpleNamespace(config=SimpleNamespace(d_inner=Dc, d_state=N))
    return MambaBlock.selective_scan_seq(
        fake, u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
        C.transpose(1, 2), D,
    ).transpose(1, 2)


@pytest.mark.parametrize("impl", ["ref", *FAST])
def test_uncoupled_equals_mambapy_per_modality(impl, make_scan_inputs):
    """coupling='none' is M independent Mamba scans (independent oracle: mambapy)."""
    pytest.importorskip("mambapy")
    if not _available(impl):
        pytest.skip(f"impl {impl} unavailable here")
    kw = make_scan_inputs(dtype=torch.float32, L=23, with_z=False, with_bias=False,
                          requires_grad=False)
    kw["delta"] = torch.nn.functional.softplus(kw["delta"])
    y = coupled_selective_scan(**kw, coupling="none", impl=impl)
    for m in range(3):
        want = _mambapy_scan(kw["u"][m], kw["delta"][m], kw["A"][m], kw["B"][m], kw["C"][m],
                             kw["D"][m])
        assert _rel(y[m], want) < 1e-5
    # And coupling really changes the answer (the oracle would catch a path ignoring W).
    y_mean = coupled_selective_scan(**kw, coupling="mean", impl=impl)
    assert _rel(y_mean, y) > 1e-2


@pytest.mark.parametrize("impl", ["ref", *FAST])
@pytest.mark.parametrize("coupling", ["none", "mean", 0.4, "matrix"])
def test_piecewise_and_streaming_equal_whole(impl, coupling, make_scan_inputs):
    if not _available(impl):
        pytest.skip(f"impl {impl} unavailable here")
    kw = make_scan_inputs(L=70, with_state=True, requires_grad=False)
    W = _coupling(coupling, 3, torch.float64)
    if isinstance(W, torch.Tensor):
        W = W.detach()
    common = dict(coupling=W, delta_softplus=True, impl=impl, return_last_state=True)
    y, h = coupled_selective_scan(**kw, **common)

    def piece(s, e, state):
        sub = {k: (v[..., s:e] if v.dim() == 4 and k != "initial_state" else v)
               for k, v in kw.items() if k != "initial_state"}
        return coupled_selective_scan(**sub, initial_state=state, **common)

    ys, state = [], kw["initial_state"]
    for s, e in [(0, 13), (13, 64), (64, 65), (65, 70)]:
        yp, state = piece(s, e, state)
        ys.append(yp)
    assert _rel(torch.cat(ys, -1), y) < 1e-12
    assert _rel(state, h) < 1e-12

    ys, state = [], kw["initial_state"]
    for t in range(70):
        yp, state = piece(t, t + 1, state)
        ys.append(yp)
    assert _rel(torch.cat(ys, -1), y) < 1e-12
    assert _rel(state, h) < 1e-12


@pytest.mark.parametrize("impl", ["ref", *FAST])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_inputs_computed_in_fp32(impl, dtype, make_scan_inputs):
    if not _available(impl):
        pytest.skip(f"impl {impl} unavailable here")
    kw = make_scan_inputs(dtype=dtype, L=20, requires_grad=False)
    kw["A"] = kw["A"].float()  # parameters may stay fp32, as mamba keeps them
    y, h = coupled_selective_scan(**kw, delta_softplus=True, return_last_state=True, impl=impl)
    assert y.dtype == dtype and h.dtype == torch.float32
    kw32 = {k: v.float() for k, v in kw.items()}
    y32 = coupled_selective_scan_ref(**kw32, delta_softplus=True)
    # Error of one rounding to the half type, not of a half-precision recurrence.
    eps = torch.finfo(dtype).eps
    assert _rel(y.float(), y32) < 4 * eps


@pytest.mark.parametrize("impl", ["ref", *FAST])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_inputs_backward(impl, dtype, make_scan_inputs):
    """Gradients of half inputs: each in the dtype of its input, equal to the float32
    reference's up to the rounding of the inputs and of the gradients to the half type."""
    if not _available(impl):
        pytest.skip(f"impl {impl} unavailable here")
    kw = make_scan_inputs(dtype=dtype, L=20, with_state=True, requires_grad=False)
    for name in ("A", "D", "delta_bias", "initial_state"):  # fp32 parameters, as mamba keeps
        kw[name] = kw[name].float()
    kw = {k: v.requires_grad_(True) for k, v in kw.items()}
    kw32 = {k: v.detach().float().requires_grad_(True) for k, v in kw.items()}
    _, _, g = _run(impl, kw, "mean", True)
    _, _, g32 = _run("ref", kw32, "mean", True)
    eps = torch.finfo(dtype).eps
    for name, grad in g.items():
        assert grad.dtype == kw[name].dtype, name
        assert _rel(grad.float(), g32[name]) < 16 * eps, f"grad {name}"


def test_sum_warns_once_and_mean_does_not(make_scan_inputs):
    import coupled_mamba.ops._coupling as cpl

    kw = make_scan_inputs(requires_grad=False)
    cpl._warned_sum = False
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        coupled_selective_scan(**kw, coupling="mean", impl="ref")
        assert not [w for w in rec if "coupling='sum'" in str(w.message)]
        coupled_selective_scan(**kw, coupling="sum", impl="ref")
        coupled_selective_scan(**kw, coupling="sum", impl="ref")
    assert len([w for w in rec if "coupling='sum'" in str(w.message)]) == 1


def test_sum_coupling_grows_like_M(make_scan_inputs):
    """'sum' has transition factors up to M: with dt -> 0 (Abar -> 1) the state grows by M/step."""
    kw = make_scan_inputs(M=3, Bt=1, D=1, N=1, L=6, with_D=False, with_z=False,
                          with_bias=False, requires_grad=False)
    kw["delta"] = torch.full_like(kw["delta"], 1e-9)
    kw["initial_state"] = torch.ones(3, 1, 1, 1, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, h = coupled_selective_scan(**kw, coupling="sum", return_last_state=True, impl="ref")
    assert torch.allclose(h, torch.full_like(h, 3.0**6), rtol=1e-6)


# --- which backend runs -----------------------------------------------------------------------

def test_scan_backend_names_the_implementation_that_runs(monkeypatch, make_scan_inputs):
    """scan_backend answers from the dispatcher's own decision, for tensors or devices."""
    from coupled_mamba import scan_backend
    from coupled_mamba.ops import _cpu
    from coupled_mamba.ops import selective_scan as dispatch

    kw = make_scan_inputs(L=9, requires_grad=False)
    expected = "cpu" if _available("cpu") else "torch"
    assert scan_backend(kw["u"]) == scan_backend("cpu") == scan_backend(torch.device("cpu"))
    assert scan_backend(kw["u"]) == expected
    assert scan_backend(kw["u"], "ref") == "ref" and scan_backend("cpu", "torch") == "torch"
    assert scan_backend("meta") == "torch"  # no kernel for other devices
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        scan_backend(kw["u"], "fast")
    with pytest.raises(ValueError, match="needs CPU tensors"):
        scan_backend("cuda", "cpu")

    # Without a usable kernel, "auto" falls back, and the answer follows without a warning.
    monkeypatch.setattr(_cpu, "is_available", lambda: (False, "no C++ compiler (test)"))
    monkeypatch.setattr(dispatch, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_backend(kw["u"]) == "torch"
    calls = []
    real = dispatch.coupled_selective_scan_torch
    monkeypatch.setattr(dispatch, "coupled_selective_scan_torch",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.warns(RuntimeWarning, match="compiled CPU kernel unavailable"):
        coupled_selective_scan(**kw)
    assert calls == [1]
