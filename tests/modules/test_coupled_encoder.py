"""CoupledMambaLayer / CoupledMambaEncoder: Mamba block fidelity, coupling, padding, absent
modalities, streaming (docs/MATH.md, section 4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from coupled_mamba.modules import CoupledMambaEncoder, CoupledMambaLayer

D_MODEL, D_STATE, L, BATCH = 16, 8, 12, 3


def make_encoder(M=3, coupling="mean", seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("n_layers", 2)
    return CoupledMambaEncoder(M, D_MODEL, d_state=D_STATE, coupling=coupling, **kw).eval()


def make_inputs(M=3, seed=1, batch=BATCH, length=L):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, D_MODEL, generator=g) for _ in range(M)]


def randomize(module, seed=2):
    """Perturb every parameter so that no slice is left at a symmetric init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


# --- the block is Mamba's block ---------------------------------------------------------------

def test_uncoupled_layer_equals_mambapy_block_per_modality():
    """With W = I each modality's slice is exactly a Mamba block (mambapy as independent oracle)."""
    mambapy = pytest.importorskip("mambapy.mamba")
    M = 2
    torch.manual_seed(0)
    layer = randomize(CoupledMambaLayer(M, D_MODEL, d_state=D_STATE, coupling="none")).double()
    x = torch.randn(M, BATCH, L, D_MODEL, dtype=torch.float64)
    out = layer(x)
    cfg = mambapy.MambaConfig(d_model=D_MODEL, n_layers=1, d_state=D_STATE, expand_factor=2,
                              d_conv=4, dt_rank=layer.dt_rank, pscan=False)
    for m in range(M):
        block = mambapy.MambaBlock(cfg).double()
        with torch.no_grad():
            block.in_proj.weight.copy_(layer.in_proj.weight[m])
            block.conv1d.weight.copy_(layer.conv_weight[m][:, None, :])
            block.conv1d.bias.copy_(layer.conv_bias[m])
            block.x_proj.weight.copy_(layer.x_proj.weight[m])
            block.dt_proj.weight.copy_(layer.dt_proj.weight[m])
            block.dt_proj.bias.copy_(layer.dt_proj.bias[m])
            block.A_log.copy_(layer.A_log[m])
            block.D.copy_(layer.D[m])
            block.out_proj.weight.copy_(layer.out_proj.weight[m])
        h = F.layer_norm(x[m], (D_MODEL,), layer.norm.weight[m], layer.norm.bias[m], 1e-5)
        torch.testing.assert_close(out[m], x[m] + block(h), atol=1e-8, rtol=1e-8)


def test_mamba_initialisation():
    n_layers = 3
    enc = make_encoder(M=2, n_layers=n_layers, dt_min=0.002, dt_max=0.05)
    layer = enc.layers[0]
    N = D_STATE
    expected = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(2, 2 * D_MODEL, N)
    assert torch.equal(layer.A_log, expected)  # A = -(1..N) for every channel of every modality
    assert torch.equal(layer.D, torch.ones(2, 2 * D_MODEL))
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    # log-uniform over the range: both decades are populated
    assert dt.min() < 0.005 and dt.max() > 0.02
    std = layer.dt_rank ** -0.5
    assert layer.dt_proj.weight.abs().max() <= std
    bound = 1 / math.sqrt(2 * D_MODEL) / math.sqrt(n_layers)  # nn.Linear bound, GPT-2 rescale
    assert layer.out_proj.weight.abs().max() <= bound
    assert layer.out_proj.weight.abs().max() > 0.8 * bound
    assert layer.A_log._no_weight_decay and layer.D._no_weight_decay


def test_single_modality_slices_equal_a_one_modality_encoder():
    """coupling 'none': modality m's output is that of an M = 1 encoder holding slice m."""
    enc = randomize(make_encoder(M=3, coupling="none"))
    xs = make_inputs(M=3)
    outs = enc(xs)
    for m in range(3):
        single = make_encoder(M=1, coupling="none")
        sd = {k: v[m:m + 1] for k, v in enc.state_dict().items()}
        single.load_state_dict(sd)
        torch.testing.assert_close(single([xs[m]])[0], outs[m], atol=1e-6, rtol=1e-6)


# --- coupling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("coupling", ["mean", 0.4, "learned", "sum"])
@pytest.mark.filterwarnings("ignore:coupling='sum':RuntimeWarning")  # its documented warning
def test_coupling_carries_information_forward_in_time_only(coupling):
    """Perturbing modality A at step t changes modality B at steps > t and never at steps <= t."""
    enc = randomize(make_encoder(M=3, coupling=coupling))
    xs = make_inputs(M=3)
    t, a, b = 5, 0, 2
    ys = enc(xs)
    xs2 = [x.clone() for x in xs]
    xs2[a][:, t] += torch.randn_like(xs2[a][:, t])
    ys2 = enc(xs2)
    torch.testing.assert_close(ys2[b][:, : t + 1], ys[b][:, : t + 1], atol=1e-6, rtol=0)
    diff = (ys2[b][:, t + 1:] - ys[b][:, t + 1:]).abs().amax(dim=(0, 2))  # per step
    assert (diff > 1e-4).all(), diff


def test_no_coupling_means_exactly_no_cross_talk():
    enc = randomize(make_encoder(M=3, coupling="none"))
    xs = make_inputs(M=3)
    ys = enc(xs)
    xs2 = [x.clone() for x in xs]
    xs2[0] += torch.randn_like(xs2[0])
    ys2 = enc(xs2)
    assert torch.equal(ys2[1], ys[1]) and torch.equal(ys2[2], ys[2])
    assert not torch.allclose(ys2[0], ys[0])


def test_coupling_mask_restricts_neighbourhood():
    # modality 2 reads only itself; modality 0 reads 0 and 1; modality 1 reads everyone
    mask = [[1, 1, 0], [1, 1, 1], [0, 0, 1]]
    for coupling in ("mean", "learned", 0.5):
        enc = randomize(make_encoder(M=3, coupling=coupling, coupling_mask=mask))
        for W in enc.coupling_matrices():
            assert W[0, 2] == 0 and W[2, 0] == 0 and W[2, 1] == 0
            torch.testing.assert_close(W.sum(1), torch.ones(3))
        xs = make_inputs(M=3)
        ys = enc(xs)
        xs2 = [x.clone() for x in xs]
        xs2[1] += torch.randn_like(xs2[1])
        ys2 = enc(xs2)
        assert torch.equal(ys2[2], ys[2]), coupling  # 2 never reads 1
        assert not torch.allclose(ys2[0], ys[0]), coupling  # 0 reads 1


def test_masked_mean_coupling_is_the_row_normalised_mask():
    enc = make_encoder(M=3, coupling="mean", coupling_mask=[[1, 1, 0], [1, 1, 1], [0, 0, 1]])
    W = enc.layers[0].coupling_matrix()
    expected = torch.tensor([[0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1]])
    torch.testing.assert_close(W, expected)


def test_learned_coupling_starts_at_mean_and_gets_gradient():
    mean = randomize(make_encoder(M=3, coupling="mean"))
    learned = make_encoder(M=3, coupling="learned")
    state = dict(mean.state_dict())
    for i in range(len(learned.layers)):
        state[f"layers.{i}.coupling_logits"] = torch.zeros(3, 3)
    learned.load_state_dict(state)
    xs = make_inputs(M=3)
    ys_mean, ys_learned = mean(xs), learned(xs)
    for a, b in zip(ys_learned, ys_mean, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    sum(y.square().sum() for y in ys_learned).backward()
    for layer in learned.layers:
        g = layer.coupling_logits.grad
        assert g is not None and g.abs().sum() > 0
        # softmax rows: the gradient of each row sums to zero
        torch.testing.assert_close(g.sum(1), torch.zeros(3), atol=1e-6, rtol=0)


# --- padding and absent modalities ------------------------------------------------------------

def _right_mask(lengths, length=L):
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def test_padding_does_not_change_valid_steps():
    enc = randomize(make_encoder(M=3, coupling="mean"))
    xs = make_inputs(M=3)
    masks = [_right_mask([12, 7, 4]), _right_mask([12, 9, 4]), _right_mask([10, 7, 1])]
    ys = enc(xs, mask=masks)
    # whatever sits at padded steps (here NaN) is irrelevant
    xs2 = [torch.where(mk[..., None], x, torch.full_like(x, float("nan"))) for x, mk in
           zip(xs, masks, strict=True)]
    ys2 = enc(xs2, mask=masks)
    for y, y2, mk in zip(ys, ys2, masks, strict=True):
        assert torch.equal(y[mk], y2[mk])
    # trimming padding (or adding more) leaves valid steps unchanged
    ys_short = enc([x[:, :8] for x in xs], mask=[mk[:, :8] for mk in masks])
    for y, y_s, mk in zip(ys, ys_short, masks, strict=True):
        torch.testing.assert_close(y_s[mk[:, :8]], y[:, :8][mk[:, :8]], atol=1e-6, rtol=1e-6)


def test_absent_modality_is_a_zero_input_chain():
    enc = randomize(make_encoder(M=3, coupling="mean"))
    xs = make_inputs(M=3)
    present = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
    ys = enc(xs, present=present)
    # the same as feeding zeros for the absent (sample, modality) pairs, for every modality
    zeroed = [torch.where(present[:, m, None, None], x, 0.0) for m, x in enumerate(xs)]
    ys_zero = enc(zeroed)
    for y, yz in zip(ys, ys_zero, strict=True):
        assert torch.equal(y, yz)
    # and an absent modality's features do not matter at all
    xs2 = [torch.where(present[:, m, None, None], x, torch.randn_like(x)) for m, x in enumerate(xs)]
    for y, y2 in zip(ys, enc(xs2, present=present), strict=True):
        assert torch.equal(y, y2)
    # but it is still coupled: its zero-input state differs from "not there" for the others
    assert not torch.allclose(ys[2][0], enc([xs[0], xs[1], xs[2]])[2][0])


def test_dict_inputs_follow_modality_names():
    torch.manual_seed(0)
    enc = CoupledMambaEncoder(2, D_MODEL, 1, d_state=D_STATE, modality_names=["text", "audio"])
    xs = make_inputs(M=2)
    ys = enc(xs)
    ys_d = enc({"audio": xs[1], "text": xs[0]})
    assert all(torch.equal(a, b) for a, b in zip(ys, ys_d, strict=True))
    with pytest.raises(ValueError, match="missing \\['audio'\\]"):
        enc({"text": xs[0], "video": xs[1]})


# --- streaming --------------------------------------------------------------------------------

@pytest.mark.parametrize("coupling,mask", [
    ("mean", None), ("none", None), (0.3, None), ("learned", [[1, 1, 0], [1, 1, 1], [0, 1, 1]]),
])
def test_step_by_step_equals_full_forward(coupling, mask):
    enc = randomize(make_encoder(M=3, coupling=coupling, coupling_mask=mask))
    xs = make_inputs(M=3)
    masks = [_right_mask([12, 8, 5]), None, _right_mask([12, 12, 3])]
    present = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])
    full = enc(xs, mask=masks, present=present)
    cache = enc.allocate_cache(BATCH)
    with torch.no_grad():
        for t in range(L):
            step_masks = [None if mk is None else mk[:, t] for mk in masks]
            outs = enc.step([x[:, t] for x in xs], cache, mask=step_masks, present=present)
            for m in range(3):
                torch.testing.assert_close(outs[m], full[m][:, t], atol=2e-5, rtol=1e-5)
    assert cache.seqlen_offset == L
    assert cache.ssm_states[0].shape == (3, BATCH, 2 * D_MODEL, D_STATE)
    assert cache.conv_states[0].shape == (3, BATCH, 2 * D_MODEL, 4)


@pytest.mark.parametrize("coupling", ["mean", "none", 0.3, "learned"])
@pytest.mark.parametrize("chunk", [1, 5, 11])
def test_chunked_inference_equals_whole_sequence(coupling, chunk):
    """Without autograd the layers run chunk steps at a time, carrying conv and SSM state;
    the outputs equal the whole-sequence forward (float64: to rounding)."""
    enc = randomize(make_encoder(M=3, coupling=coupling, inference_chunk=chunk)).double()
    xs = [x.double() for x in make_inputs(M=3)]
    masks = [_right_mask([12, 8, 5]), None, _right_mask([12, 12, 3])]
    present = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])
    with torch.no_grad():
        chunked = enc(xs, mask=masks, present=present)
        enc.inference_chunk = None
        whole = enc(xs, mask=masks, present=present)
    for m in range(3):
        torch.testing.assert_close(chunked[m], whole[m], atol=1e-12, rtol=1e-12)
    assert not torch.equal(whole[0][:, 1:], whole[0][:, :-1])  # not a constant sequence


def test_chunked_inference_float32_and_only_without_autograd():
    enc = randomize(make_encoder(M=2, inference_chunk=4))
    xs = make_inputs(M=2)
    with torch.inference_mode():
        chunked = enc(xs)
    enc.inference_chunk = None
    with torch.inference_mode():
        whole = enc(xs)
    for a, b in zip(chunked, whole, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    enc.inference_chunk = 4
    calls = []
    hook = enc.layers[0].register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    enc(xs)  # autograd on: one whole-sequence call per layer
    assert calls == [(2, BATCH, L, D_MODEL)]
    calls.clear()
    with torch.no_grad():
        enc(xs)
    assert [c[2] for c in calls] == [4, 4, 4]
    hook.remove()
    with pytest.raises(ValueError, match="inference_chunk"):
        make_encoder(M=2, inference_chunk=0)


def test_encoder_input_errors_name_the_argument():
    enc = make_encoder(M=2)
    xs = make_inputs(M=2)
    with pytest.raises(ValueError, match="inputs: got 1 modalities"):
        enc(xs[:1])
    with pytest.raises(ValueError, match=r"inputs\[1\].*\(B, L\)"):
        enc([xs[0], xs[1][:, :5]])
    with pytest.raises(ValueError, match=r"mask\[0\].*torch.bool"):
        enc(xs, mask=[torch.ones(BATCH, L), None])
    left_padded = torch.ones(BATCH, L, dtype=torch.bool)
    left_padded[0, 0] = False
    with pytest.raises(ValueError, match="right padding"):
        enc(xs, mask=left_padded)
    with pytest.raises(ValueError, match=r"present.*\(3, 2\)"):
        enc(xs, present=torch.ones(BATCH, 3, dtype=torch.bool))
    cache = enc.allocate_cache(BATCH)
    with pytest.raises(ValueError, match=r"inputs\[0\].*one time step"):
        enc.step([x for x in xs], cache)
