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
def test_wrong_shapes_name_argument(kw, name, bad, pattern):
    kw[name] = torch.randn(*bad, dtype=torch.float64)
    with pytest.raises(ValueError, match=pattern):
        coupled_selective_scan(**kw, impl="ref")


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
