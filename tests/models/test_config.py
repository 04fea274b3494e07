"""CoupledMambaConfig: paper defaults, derived fields, validation, JSON round trip."""

from __future__ import annotations

import json

import pytest

from coupled_mamba.models import CoupledMambaConfig


def test_paper_defaults_and_derived_fields():
    cfg = CoupledMambaConfig(input_dims=[768, 74, 35])
    assert (cfg.d_model, cfg.n_layers, cfg.expand, cfg.d_conv, cfg.d_state) == (128, 3, 2, 4, 64)
    assert cfg.dt_rank == 64 // 8  # "timescale = d_state / 8"
    assert cfg.coupling == "mean" and cfg.pooling == "max" and cfg.fusion == "softmax"
    assert (cfg.proj_hidden, cfg.head_hidden) == (256, 64)
    assert (cfg.dt_min, cfg.dt_max) == (0.001, 0.1)
    assert cfg.modality_names == ["m0", "m1", "m2"]
    assert cfg.n_modalities == 3 and cfg.d_inner == 256
    assert CoupledMambaConfig(input_dims=[4], d_state=4).dt_rank == 1  # never below 1
    assert CoupledMambaConfig(input_dims=[4], d_state=64, dt_rank=16).dt_rank == 16
    assert CoupledMambaConfig(input_dims=(4, 5), coupling=1).coupling == 1.0


@pytest.mark.parametrize("field,kwargs", [
    ("input_dims", dict(input_dims=[])),
    ("input_dims\\[1\\]", dict(input_dims=[4, 0])),
    ("modality_names", dict(input_dims=[4, 5], modality_names=["a"])),
    ("modality_names", dict(input_dims=[4, 5], modality_names=["a", "a"])),
    ("task", dict(input_dims=[4], task="ranking")),
    ("num_outputs", dict(input_dims=[4], task="classification", num_outputs=1)),
    ("d_model", dict(input_dims=[4], d_model=0)),
    ("dt_rank", dict(input_dims=[4], dt_rank=0)),
    ("dt_rank", dict(input_dims=[4], dt_rank=2.5)),
    ("coupling", dict(input_dims=[4], coupling="max")),
    ("inference_chunk", dict(input_dims=[4], inference_chunk=0)),
    ("inference_chunk", dict(input_dims=[4], inference_chunk=64.0)),
    ("coupling", dict(input_dims=[4], coupling=1.5)),
    ("coupling", dict(input_dims=[4], coupling=True)),
    ("coupling_mask", dict(input_dims=[4, 5], coupling_mask=[[1, 1]])),
    ("coupling_mask", dict(input_dims=[4, 5], coupling_mask=[[0, 1], [1, 1]])),
    ("coupling_mask", dict(input_dims=[4, 5], coupling_mask=[[1, 2], [1, 1]])),
    ("pooling", dict(input_dims=[4], pooling="median")),
    ("fusion", dict(input_dims=[4], fusion="attention")),
    ("dropout", dict(input_dims=[4], dropout=1.0)),
    ("dt_min", dict(input_dims=[4], dt_min=0.5, dt_max=0.1)),
    ("dt_init", dict(input_dims=[4], dt_init="uniform")),
    ("scan_impl", dict(input_dims=[4], scan_impl="cuda")),
    ("materialize_attention", dict(input_dims=[4], materialize_attention="yes")),
])
def test_invalid_values_raise_value_errors_naming_the_field(field, kwargs):
    with pytest.raises(ValueError, match=f"^{field}"):
        CoupledMambaConfig(**kwargs)


def test_dict_and_json_round_trip(tmp_path):
    cfg = CoupledMambaConfig(input_dims=[4, 5, 6], modality_names=["t", "a", "v"], coupling=0.25,
                             coupling_mask=[[1, 1, 0], [1, 1, 1], [0, 1, 1]], task="multilabel",
                             num_outputs=5)
    assert CoupledMambaConfig.from_dict(cfg.to_dict()) == cfg
    path = cfg.save(tmp_path)
    assert path.endswith("config.json")
    assert json.load(open(path))["coupling"] == 0.25
    assert CoupledMambaConfig.load(tmp_path) == cfg
    assert CoupledMambaConfig.load(path) == cfg


def test_from_dict_rejects_unknown_or_missing_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown keys \\['d_modle'\\]"):
        CoupledMambaConfig.from_dict({"input_dims": [4], "d_modle": 64})
    with pytest.raises(ValueError, match="input_dims"):
        CoupledMambaConfig.from_dict({"d_model": 64})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        CoupledMambaConfig.load(bad)


def test_field_groups_match_the_encoders_keywords():
    """Every option of the coupled encoder and its layers is a MAMBA_ENCODER_FIELDS entry (so
    CoupledMambaModel forwards it), and every entry is one of their keywords; the cross-attention
    fields are not forwarded to the Mamba encoder."""
    import inspect

    from coupled_mamba.models.config import (
        CROSS_ATTENTION_FIELDS,
        MAMBA2_ENCODER_FIELDS,
        MAMBA_ENCODER_FIELDS,
    )
    from coupled_mamba.modules import CoupledMamba2Layer, CoupledMambaEncoder
    from coupled_mamba.modules.coupled_layer import CoupledMambaLayer, _CoupledSSM

    def keywords(cls):
        return {name for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind is not p.VAR_KEYWORD}

    # The encoder sets these for its layers itself, or they are not configuration.
    internal = {"self", "n_modalities", "modality_names", "residual_scale", "device", "dtype",
                "layer_idx", "layer"}
    wanted = (keywords(CoupledMambaEncoder) | keywords(CoupledMambaLayer)
              | keywords(_CoupledSSM)) - internal
    assert set(MAMBA_ENCODER_FIELDS) == wanted
    wanted2 = (keywords(CoupledMambaEncoder) | keywords(CoupledMamba2Layer)) - internal
    assert set(MAMBA2_ENCODER_FIELDS) == wanted2
    fields = set(CoupledMambaConfig.__dataclass_fields__)
    assert set(MAMBA_ENCODER_FIELDS) <= fields and set(CROSS_ATTENTION_FIELDS) <= fields
    assert set(MAMBA2_ENCODER_FIELDS) <= fields
    assert not set(CROSS_ATTENTION_FIELDS) & set(MAMBA_ENCODER_FIELDS)
    cfg = CoupledMambaConfig(input_dims=[3, 2], d_state=8, dt_init="constant", coupling=0.5)
    assert cfg.mamba_encoder_kwargs() == {name: getattr(cfg, name) for name in wanted}


def test_mamba2_head_size_follows_the_width():
    """headdim None -> 64 (Mamba-2's) from 4 heads of 64, else d_inner / 4; it is re-derived by
    replace() unless set explicitly."""
    assert CoupledMambaConfig(input_dims=[3], d_model=128).headdim == 64  # E = 256: 4 heads
    assert CoupledMambaConfig(input_dims=[3], d_model=32).headdim == 16  # E = 64: 4 heads
    cfg = CoupledMambaConfig(input_dims=[3], d_model=32)
    assert cfg.replace(d_model=256).headdim == 64
    assert CoupledMambaConfig(input_dims=[3], d_model=32, headdim=8).replace(
        d_model=256).headdim == 8
    with pytest.raises(ValueError, match="ssd_impl"):
        CoupledMambaConfig(input_dims=[3], ssd_impl="fast")
