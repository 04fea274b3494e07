"""Bad inputs to coupled_selective_scan raise ValueErrors that name the argument and shapes."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba import coupled_selective_scan


@pytest.fixture
def kw(make_scan_inputs):
    return make_scan_inputs(M=3, Bt=2, D=5, N=4, L=7, requires_grad=False)


@pytest.mark.parametrize(
    "name,bad,pattern",
    [
        ("delta", (3, 2, 5, 6), r"delta: got shape \(3, 2, 5, 6\), expected \(M, Bt, D, L\) = \(3, 2, 5, 7\)"),
        ("A", (3, 4, 4), r"A: got shape \(3, 4, 4\), expected \(M, D, N\) = \(3, 5, 4\)"),
        ("B", (3, 2, 3, 7), r"B: got shape \(3, 2, 3, 7\), expected \(M, Bt, N, L\) = \(3, 2, 4, 7\)"),
        ("C", (2, 2, 4, 7), r"C: got shape"),
        ("D", (3, 4), r"D: got shape \(3, 4\), expected \(M, D\) = \(3, 5\)"),
        ("z", (3, 2, 5, 8), r"z: got shape"),
        ("delta_bias", (5,), r"delta_bias: got shape \(5,\)"),
        ("initial_state", (3, 2, 5, 3), r"initial_state: got shape \(3, 2, 5, 3\), expected"),
    ],
)
@pytest.mark.parametrize("impl", ["ref", "auto"])  # "auto" on CPU: the compiled fast path
def test_wrong_shapes_name_argument(kw, name, bad, pattern, impl):
    kw[name] = torch.randn(*bad, dtype=torch.float64)
    with pytest.raises(ValueError, match=pattern):
        coupled_selective_scan(**kw, impl=impl)


_BAD_FOR_KERNEL = {
    **{name: (name, torch.randn(*bad, dtype=torch.float64))
       for name, bad in [("delta", (3, 2, 5, 6)), ("A", (3, 4, 4)), ("B", (3, 2, 3, 7)),
                         ("C", (2, 2, 4, 7)), ("D", (3, 4)), ("z", (3, 2, 5, 8)),
                         ("delta_bias", (5,)), ("initial_state", (3, 2, 5, 3))]},
    "float32 B": ("B", None),
    "meta delta": ("delta", None),
    "L = 0": ("u", None),
}


@pytest.mark.parametrize("case", list(_BAD_FOR_KERNEL))
def test_kernel_checks_what_the_fast_path_skips(kw, case):
    """selective_scan.py's CPU fast path does not run the Python validation before the kernel:
    the C++ side must reject every bad input itself (then Python raises the ValueError)."""
    from coupled_mamba.ops import _cpu

    ok, reason = _cpu.is_available()
    if not ok:
        pytest.skip(reason)
    name, value = _BAD_FOR_KERNEL[case]
    if case == "float32 B":
        value = kw["B"].float()
    elif case == "meta delta":
        value = kw["delta"].to("meta")
    elif case == "L = 0":
        kw = {**kw, "delta": kw["delta"][..., :0], "B": kw["B"][..., :0], "C": kw["C"][..., :0],
              "z": kw["z"][..., :0]}
        value = kw["u"][..., :0]
    kw = {**kw, name: value}
    args = [kw[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    with pytest.raises(RuntimeError, match="coupled scan"):
        _cpu.scan_compute_dtype(*args, True, "mean", kw.get("initial_state"), False)
    with pytest.raises(ValueError) as err:  # the public call raises the documented error,
        coupled_selective_scan(**kw)
    assert err.value.__context__ is None  # without the kernel's message chained to it


def test_valid_cpu_call_skips_python_validation(kw, monkeypatch):
    """The fast path really skips check_scan_inputs on a valid fp64 CPU call (and only then)."""
    from coupled_mamba.ops import _cpu
    from coupled_mamba.ops import selective_scan as dispatch

    if not _cpu.is_available()[0]:
        pytest.skip("no compiled CPU kernel")
    calls = []
    real = dispatch.check_scan_inputs
    monkeypatch.setattr(dispatch, "check_scan_inputs", lambda *a: calls.append(1) or real(*a))
    y = coupled_selective_scan(**kw, delta_softplus=True)
    assert calls == []
    y_ref = coupled_selective_scan(**kw, delta_softplus=True, impl="ref")
    torch.testing.assert_close(y, y_ref)
    assert calls == [1]


def test_wrong_rank_of_u_and_A(kw):
    with pytest.raises(ValueError, match=r"u: got shape \(2, 5, 7\), expected 4 dims"):
        coupled_selective_scan(**{**kw, "u": kw["u"][0]})
    with pytest.raises(ValueError, match=r"A: got shape \(3, 5\), expected 3 dims"):
        coupled_selective_scan(**{**kw, "A": kw["A"][..., 0]})


def test_mixed_dtypes(kw):
    with pytest.raises(ValueError, match="B: dtype torch.float32 differs from u's dtype torch.float64"):
        coupled_selective_scan(**{**kw, "B": kw["B"].float()})
    with pytest.raises(ValueError, match="A: dtype torch.float32 differs"):
        coupled_selective_scan(**{**kw, "A": kw["A"].float()})
    with pytest.raises(ValueError, match="dtype torch.int64 not supported"):
        coupled_selective_scan(**{**kw, "u": kw["u"].long()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_mixed_devices(kw):
    with pytest.raises(ValueError, match="C: on device cuda"):
        coupled_selective_scan(**{**kw, "C": kw["C"].cuda()})


def test_mixed_devices_meta(kw):
    # The meta device stands in for a second device on a CPU-only machine.
    with pytest.raises(ValueError, match="delta: on device meta, but u is on cpu"):
        coupled_selective_scan(**{**kw, "delta": kw["delta"].to("meta")})


@pytest.mark.parametrize(
    "coupling,pattern",
    [
        ("max", "coupling: unknown mode 'max'"),
        (1.5, r"alpha must lie in \[0, 1\], got 1.5"),
        (-0.1, "alpha must lie in"),
        (torch.ones(2, 2), r"coupling: tensor has shape \(2, 2\), expected \(M, M\) = \(3, 3\)"),
        ([0.5], "coupling: expected"),
    ],
)
def test_bad_coupling(kw, coupling, pattern):
    with pytest.raises(ValueError, match=pattern):
        coupled_selective_scan(**kw, coupling=coupling)


def test_bad_impl(kw):
    with pytest.raises(ValueError, match="impl: unknown implementation 'fast'"):
        coupled_selective_scan(**kw, impl="fast")
