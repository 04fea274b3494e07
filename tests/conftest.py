"""Shared fixtures. Tests run on 1 thread: small ops are fastest that way on a shared 2-core box."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def scan_inputs(
    M=3, Bt=2, D=5, N=4, L=7, dtype=torch.float64, device="cpu", seed=0,
    with_D=True, with_z=True, with_bias=True, with_state=False, requires_grad=True,
):
    """Fresh random inputs for coupled_selective_scan, never zeros.

    Returns a dict of keyword arguments (u, delta, A, B, C and the optional ones asked for).
    delta is centred so that softplus(delta + bias) lands in a typical Mamba range.
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    kw = dict(
        u=r(M, Bt, D, L),
        delta=r(M, Bt, D, L, scale=0.5, shift=-1.0),
        A=-torch.exp(r(M, D, N, scale=0.5)).to(dtype),
        B=r(M, Bt, N, L),
        C=r(M, Bt, N, L),
    )
    if with_D:
        kw["D"] = r(M, D)
    if with_z:
        kw["z"] = r(M, Bt, D, L)
    if with_bias:
        kw["delta_bias"] = r(M, D, scale=0.3)
    if with_state:
        kw["initial_state"] = r(M, Bt, D, N)
    for k, v in kw.items():
        kw[k] = v.to(device).requires_grad_(requires_grad)
    return kw


@pytest.fixture
def make_scan_inputs():
    return scan_inputs
