"""CoupledMambaMixer: mamba-ssm's mixer conventions on top of the coupled layer's computation."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba import CoupledMambaLayer, CoupledMambaMixer

M, D_MODEL, D_STATE, B, L = 3, 8, 4, 2, 11


def _inputs(dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, D_MODEL, generator=g, dtype=torch.float64).to(dtype)
            for _ in range(M)]


def test_list_in_list_out_with_factory_arguments():
    torch.manual_seed(0)
    mixer = CoupledMambaMixer(M, D_MODEL, d_state=D_STATE, layer_idx=4, dtype=torch.float64)
    assert mixer.layer_idx == 4 and mixer.norm is None
    assert {p.dtype for p in mixer.parameters()} == {torch.float64}
    xs = [x.requires_grad_(True) for x in _inputs(torch.float64)]
    ys = mixer(xs)
    assert isinstance(ys, list) and len(ys) == M
    assert all(y.shape == (B, L, D_MODEL) and y.dtype == torch.float64 for y in ys)
    sum(y.square().sum() for y in ys).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)
    assert all(p.grad is not None for p in mixer.parameters())
    masked = CoupledMambaMixer(M, D_MODEL, d_state=D_STATE, coupling_mask=[[1, 1, 0]] * 2
                               + [[0, 0, 1]], device="cpu", dtype=torch.float64)
    assert masked.fixed_coupling.dtype == torch.float64


@pytest.mark.parametrize("coupling", ["mean", 0.5, "learned"])
def test_the_layer_is_norm_mixer_residual(coupling):
    """layer(x) = x + mixer(LayerNorm(x)) with the same weights: one computation, two wrappers."""
    torch.manual_seed(0)
    layer = CoupledMambaLayer(M, D_MODEL, d_state=D_STATE, coupling=coupling).double()
    mixer = CoupledMambaMixer(M, D_MODEL, d_state=D_STATE, coupling=coupling).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {k: v for k, v in layer.state_dict().items() if not k.startswith("norm.")}
    mixer.load_state_dict(state)
    x = torch.stack(_inputs(torch.float64))
    want = layer(x) - x
    got = mixer(list(layer.norm(x).unbind(0)))
    torch.testing.assert_close(torch.stack(got), want, rtol=1e-12, atol=1e-12)


def test_uncoupled_mixer_keeps_modalities_apart():
    """coupling 'none': each output depends on its own modality only (M Mamba mixers)."""
    torch.manual_seed(0)
    mixer = CoupledMambaMixer(M, D_MODEL, d_state=D_STATE, coupling="none").double()
    xs = _inputs(torch.float64)
    ys = mixer(xs)
    xs[0] = xs[0] + 1.0
    ys2 = mixer(xs)
    assert not torch.allclose(ys2[0], ys[0])
    assert torch.equal(ys2[1], ys[1]) and torch.equal(ys2[2], ys[2])


def test_bad_inputs_name_what_is_wrong():
    mixer = CoupledMambaMixer(M, D_MODEL, d_state=D_STATE)
    xs = _inputs()
    with pytest.raises(ValueError, match="got 2 modalities, expected M = 3"):
        mixer(xs[:2])
    with pytest.raises(ValueError, match=r"hidden_states\[1\].*expected \(B, L, 8\)"):
        mixer([xs[0], xs[1][..., :5], xs[2]])
    with pytest.raises(ValueError, match=r"hidden_states\[2\].*\(B, L\) = \(2, 10\)"):
        mixer([xs[0], xs[1], xs[2][:, :10]])
    with pytest.raises(TypeError, match="no norm"):
        CoupledMambaMixer(M, D_MODEL, norm_eps=1e-5)
