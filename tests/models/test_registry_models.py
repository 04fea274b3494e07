"""Every registered model: forward + backward on tiny configs, every task type, 2 and 3 modalities
(timm's test_models.py pattern); the registry itself."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba.models import (
    CoupledMambaModel,
    CrossAttentionModel,
    create_model,
    list_models,
    model_entry,
)

TASKS = [("regression", 1), ("classification", 4), ("multilabel", 3)]
DIMS = {2: (6, 3), 3: (5, 7, 3)}


def test_registry_lists_the_paper_models():
    names = list_models()
    for name in ("coupled_mamba", "mamba_fusion", "avg_fusion", "concat_fusion", "cross_attention",
                 "coupled_mamba2", "mamba2_fusion"):
        assert name in names
    assert names == sorted(names)
    with pytest.raises(ValueError, match="unknown name 'mamba2'.*coupled_mamba"):
        create_model("mamba2", None)
    assert model_entry("avg_fusion").overrides == {"coupling": "none", "fusion": "mean"}
    assert model_entry("coupled_mamba").description
    assert list_models("*fusion") == ["avg_fusion", "concat_fusion", "mamba2_fusion",
                                      "mamba_fusion"]
    assert list_models("coupled_*") == ["coupled_mamba", "coupled_mamba2"]
    assert list_models("nothing*") == []


def test_create_model_takes_config_fields_as_keywords(make_config):
    """timm's create_model(name, **kwargs): fields alone, or overrides of a config."""
    model = create_model("coupled_mamba", input_dims=[5, 7], d_model=16, d_state=16, n_layers=1)
    assert model.config.input_dims == [5, 7] and model.config.d_model == 16
    assert model.config.dt_rank == 2  # derived from d_state, as CoupledMambaConfig does
    base = make_config()
    smaller = create_model("coupled_mamba", base, d_state=16, input_dims=[4, 4])
    assert smaller.config.d_state == 16 and smaller.config.dt_rank == 2  # re-derived
    assert smaller.config.modality_names == ["m0", "m1"] and smaller.config.d_model == 16
    assert base.d_state == 8  # the caller's config is not modified
    kept = create_model("coupled_mamba", make_config(dt_rank=3), d_state=32)
    assert kept.config.dt_rank == 3  # an explicit dt_rank stays
    with pytest.raises(ValueError, match="give a config or input_dims"):
        create_model("coupled_mamba", d_model=16)
    with pytest.raises(ValueError, match="unknown keys \\['d_modell'\\]"):
        create_model("coupled_mamba", input_dims=[3], d_modell=16)
    with pytest.warns(UserWarning, match="fixes coupling='none'"):
        create_model("mamba_fusion", base, coupling="sum")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("n_modalities", [2, 3])
@pytest.mark.parametrize("task,n_out", TASKS, ids=[t for t, _ in TASKS])
def test_forward_backward_every_model(name, n_modalities, task, n_out, make_config, make_inputs):
    torch.manual_seed(0)
    cfg = make_config(DIMS[n_modalities], task=task, num_outputs=n_out)
    model = create_model(name, cfg)
    assert model.model_name == name
    xs = make_inputs(cfg, batch=3)
    out = model(xs)
    assert out.shape == (3, n_out)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    M = n_modalities
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"
        # stacked per-modality parameters of the Mamba encoder: every modality's slice learns
        if pname.startswith("encoder.") and "coupling" not in pname and p.shape[0] == M:
            per_mod = p.grad.reshape(M, -1).abs().sum(1)
            assert (per_mod > 0).all(), f"{name}: a modality of {pname} gets no gradient"


@pytest.mark.parametrize("name", list_models())
def test_dict_inputs_and_summary(name, make_config, make_inputs):
    torch.manual_seed(0)
    cfg = make_config(modality_names=["text", "audio", "vision"])
    model = create_model(name, cfg).eval()
    xs = make_inputs(cfg)
    by_name = dict(zip(["vision", "text", "audio"], [xs[2], xs[0], xs[1]], strict=True))
    assert torch.equal(model(xs), model(by_name))
    line = model.summary()
    assert "\n" not in line and line.startswith(name)
    assert f"{model.num_parameters():,} parameters" in line
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.num_parameters(trainable_only=True) == model.num_parameters()
    encoded = model.encode(xs)
    assert len(encoded) == 3 and all(e.shape == (3, 12, 16) for e in encoded)


def test_variants_fix_their_config_fields(make_config):
    cfg = make_config()
    assert isinstance(create_model("coupled_mamba", cfg), CoupledMambaModel)
    assert isinstance(create_model("cross_attention", cfg), CrossAttentionModel)
    assert create_model("mamba_fusion", cfg).config.coupling == "none"
    m = create_model("concat_fusion", cfg)
    assert (m.config.coupling, m.config.fusion) == ("none", "concat")
    assert m.head.mlp[0].in_features == 3 * 16
    assert create_model("avg_fusion", cfg).head.fusion.logits is None  # plain average
    assert cfg.coupling == "mean"  # the caller's config is not mutated
    with pytest.warns(UserWarning, match="fixes coupling='none'.*'learned' is ignored"):
        create_model("mamba_fusion", make_config(coupling="learned"))


def test_mamba_fusion_differs_from_coupled_mamba_only_by_coupling(make_config, make_inputs):
    cfg = make_config()
    torch.manual_seed(0)
    coupled = create_model("coupled_mamba", cfg).eval()
    uncoupled = create_model("mamba_fusion", cfg).eval()
    uncoupled.load_state_dict(coupled.state_dict())  # same parameter set
    xs = make_inputs(cfg)
    assert not torch.allclose(coupled(xs), uncoupled(xs))


def test_scan_impl_is_honoured(make_config, make_inputs, monkeypatch):
    import coupled_mamba.ops.selective_scan as dispatch

    # A spy on the one dispatch point: every layer must ask for the configured implementation.
    asked = []
    real_pick = dispatch._pick
    monkeypatch.setattr(dispatch, "_pick",
                        lambda impl, device: asked.append(impl) or real_pick(impl, device))
    torch.manual_seed(0)
    fast = create_model("coupled_mamba", make_config(scan_impl="torch")).eval()
    ref = create_model("coupled_mamba", make_config(scan_impl="ref")).eval()
    ref.load_state_dict(fast.state_dict())
    xs = make_inputs(fast.config)
    y_fast = fast(xs)
    assert asked == ["torch"] * fast.config.n_layers
    asked.clear()
    y_ref = ref(xs)
    assert asked == ["ref"] * ref.config.n_layers
    torch.testing.assert_close(y_ref, y_fast, atol=1e-5, rtol=1e-5)


def test_model_input_errors_name_the_argument(make_config, make_inputs):
    cfg = make_config(modality_names=["text", "audio", "vision"])
    model = create_model("coupled_mamba", cfg)
    xs = make_inputs(cfg)
    with pytest.raises(ValueError, match=r"inputs\[1\] \('audio'\).*\(B, L, 7\)"):
        model([xs[0], xs[1][..., :4], xs[2]])
    with pytest.raises(ValueError, match="expected M = 3"):
        model(xs[:2])
    with pytest.raises(ValueError, match=r"present: got shape \(3, 2\)"):
        model(xs, present=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="unexpected \\['video'\\]"):
        model({"text": xs[0], "audio": xs[1], "video": xs[2]})


def test_input_dtype_must_match_the_weights(make_config, make_inputs):
    """A float64 input to a float32 model names the input, not torch's matmul."""
    cfg = make_config(modality_names=["text", "audio", "vision"])
    model = create_model("coupled_mamba", cfg)
    xs = make_inputs(cfg)
    with pytest.raises(ValueError, match=r"inputs\[0\] \('text'\): dtype torch\.float64, but "
                       r"the model's weights are torch\.float32"):
        model([xs[0].double(), xs[1], xs[2]])
    state = model.allocate_cache(xs[0].shape[0])
    with pytest.raises(ValueError, match=r"inputs\[2\] \('vision'\): dtype torch\.float64"):
        model.step([xs[0][:, 0], xs[1][:, 0], xs[2][:, 0].double()], state)
    model.double()([x.double() for x in xs])  # a float64 model takes float64 inputs
