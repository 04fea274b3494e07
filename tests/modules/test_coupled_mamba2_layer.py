"""CoupledMamba2Layer (docs/MATH.md, section 7): Mamba-2 blocks per modality, one coupled SSD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from coupled_mamba.errors import UserInputError
from coupled_mamba.modules import CoupledMamba2Layer, CoupledMambaEncoder
from coupled_mamba.ops import coupled_ssd_ref
from coupled_mamba.train.optim import param_groups

M, BATCH, L, D_MODEL = 3, 2, 21, 16
KW = dict(d_state=8, headdim=8, ngroups=2, chunk_size=8)


def _layer(coupling="mean", seed=0, **kw):
    torch.manual_seed(seed)
    layer = CoupledMamba2Layer(M, D_MODEL, coupling=coupling, **{**KW, **kw}).double()
    with torch.no_grad():  # move every parameter off its initial value
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _x(seed=1, length=L):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(M, BATCH, length, D_MODEL, generator=g, dtype=torch.float64)


def mamba2_block(layer, m, x):
    """Modality m's Mamba-2 block written out from mamba-ssm's ``Mamba2`` forward (z, xBC, dt
    split; causal depthwise conv on xBC; SSD; gated RMS norm over groups; out_proj), with the
    single-chain SSD of the reference op. x: (B, L, d) -> (B, L, d), pre-norm and residual
    included."""
    E, H, P = layer.d_inner, layer.n_heads, layer.headdim
    G, N, X = layer.ngroups, layer.d_state, layer.conv_dim
    h = F.layer_norm(x, (D_MODEL,), layer.norm.weight[m], layer.norm.bias[m])
    zxbcdt = h @ layer.in_proj.weight[m].T
    z, xbc, dt = zxbcdt.split([E, X, H], dim=-1)
    xbc = F.conv1d(xbc.transpose(1, 2), layer.conv_weight[m][:, None], layer.conv_bias[m],
                   padding=layer.d_conv - 1, groups=X)[..., :x.shape[1]]
    xbc = F.silu(xbc).transpose(1, 2)
    xs, Bm, Cm = xbc.split([E, G * N, G * N], dim=-1)
    y = coupled_ssd_ref(xs.unflatten(-1, (H, P))[None], dt[None], -torch.exp(layer.A_log[m])[None],
                        Bm.unflatten(-1, (G, N))[None], Cm.unflatten(-1, (G, N))[None],
                        layer.D[m][None], dt_bias=layer.dt_bias[m][None], coupling="none")[0]
    g = (y.flatten(-2) * F.silu(z)).unflatten(-1, (G, E // G))
    g = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2)
    return x + (g * layer.gated_norm.weight[m]) @ layer.out_proj.weight[m].T


def test_uncoupled_layer_is_a_mamba2_block_per_modality():
    layer, x = _layer("none"), _x()
    with torch.no_grad():
        out = layer(x)
        for m in range(M):
            torch.testing.assert_close(out[m], mamba2_block(layer, m, x[m]), rtol=1e-10,
                                       atol=1e-10)


def test_coupling_connects_the_modalities():
    """Under "mean" a change in modality 0's input moves the others' outputs; under "none" it
    does not."""
    x = _x()
    x2 = x.clone()
    x2[0, :, :5] += torch.randn(BATCH, 5, D_MODEL, dtype=torch.float64)  # not constant: pre-norm
    for coupling, moves in (("none", False), ("mean", True)):
        layer = _layer(coupling)
        with torch.no_grad():
            delta = (layer(x2) - layer(x))[1:].abs().max().item()
        assert (delta > 1e-3) == moves, coupling


@pytest.mark.parametrize("coupling", ["mean", "learned", 0.4])
def test_chunked_and_reference_ssd_agree_in_the_layer(coupling):
    layer = _layer(coupling)
    ref = _layer(coupling, ssd_impl="ref")
    ref.load_state_dict(layer.state_dict())
    x = _x()
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("coupling", ["mean", "learned", "none"])
def test_steps_and_pieces_equal_the_full_forward(coupling):
    layer, x = _layer(coupling), _x()
    with torch.no_grad():
        full = layer(x)
        state = layer.allocate_cache(BATCH, dtype=torch.float64)
        steps = []
        for t in range(L):
            out, *state = layer.step(x[:, :, t], *state)
            steps.append(out)
        torch.testing.assert_close(torch.stack(steps, dim=2), full, rtol=1e-10, atol=1e-10)
        first, state = layer(x[:, :, :9], layer.allocate_cache(BATCH, dtype=torch.float64))
        second, _ = layer(x[:, :, 9:], state)
        torch.testing.assert_close(torch.cat([first, second], dim=2), full, rtol=1e-10,
                                   atol=1e-10)


def test_encoder_stacks_mamba2_layers_and_chunks_inference():
    torch.manual_seed(0)
    enc = CoupledMambaEncoder(M, D_MODEL, 2, layer=CoupledMamba2Layer, inference_chunk=8, **KW)
    xs = list(_x(length=30).float().unbind(0))
    enc.eval()
    whole = enc.forward(xs)  # autograd on: one pass over the whole sequence
    with torch.no_grad():
        chunked = enc.forward(xs)  # T = 8 steps at a time, states carried
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    layer = _layer("learned")
    layer(_x()).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_weight_decay_on_decays_skips_norms_and_logits():
    layer = _layer("learned")
    decay, no_decay = param_groups(layer, 0.1)
    names = {id(p): n for n, p in layer.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "conv_weight", "in_proj.weight", "out_proj.weight"]
    assert {"A_log", "D", "dt_bias", "coupling_logits", "gated_norm.weight",
            "norm.weight"} <= {names[id(p)] for p in no_decay["params"]}


def test_initialisation_follows_mamba2():
    torch.manual_seed(0)
    layer = CoupledMamba2Layer(M, 64, d_state=16, headdim=16, dt_min=0.01, dt_max=0.2)
    A = torch.exp(layer.A_log)
    assert A.min() >= 1.0 and A.max() <= 16.0 and A.std() > 1.0
    dt = F.softplus(layer.dt_bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.2 + 1e-6
    assert torch.equal(layer.D, torch.ones_like(layer.D))
    assert layer.n_heads == 8 and layer.conv_dim == 128 + 2 * 16


def test_bad_head_sizes_name_the_option():
    with pytest.raises(UserInputError, match="headdim: 12 does not divide d_inner"):
        CoupledMamba2Layer(M, D_MODEL, headdim=12)
    with pytest.raises(UserInputError, match="ngroups: 3 does not divide the 4 heads"):
        CoupledMamba2Layer(M, D_MODEL, headdim=8, ngroups=3)
    with pytest.raises(UserInputError, match="ssd_impl"):
        CoupledMamba2Layer(M, D_MODEL, ssd_impl="cuda")


def test_default_block_length_balances_the_two_ssd_costs():
    from coupled_mamba.modules.coupled_mamba2_layer import ssd_chunk

    # small model: 3 keys per step make wide score blocks, so short blocks; one key: longer
    assert ssd_chunk(3, 16, 16) == 8 and ssd_chunk(1, 16, 16) == 16
    assert ssd_chunk(3, 64, 64) == 32 and ssd_chunk(1, 64, 64) == 64  # the paper's sizes
    assert CoupledMamba2Layer(M, D_MODEL, d_state=16, headdim=16).chunk_size == 8
    assert CoupledMamba2Layer(M, D_MODEL, d_state=16, headdim=16,
                              coupling="none").chunk_size == 16
    assert CoupledMamba2Layer(M, D_MODEL, d_state=16, headdim=16, chunk_size=5).chunk_size == 5
