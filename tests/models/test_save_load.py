"""save_pretrained / from_pretrained: config.json + model.safetensors, bit-identical round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from coupled_mamba.models import (
    CoupledMambaModel,
    MultimodalModel,
    create_model,
    from_pretrained,
    list_models,
)


@pytest.mark.parametrize("name", list_models())
def test_round_trip_is_bit_identical(name, tmp_path, make_config, make_inputs, make_mask):
    torch.manual_seed(0)
    extra = {}
    if name == "coupled_mamba":  # exercise the learned, masked coupling's parameters too
        extra = dict(coupling="learned", coupling_mask=[[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    cfg = make_config(modality_names=["text", "audio", "vision"], task="classification",
                      num_outputs=3, **extra)
    model = create_model(name, cfg)
    with torch.no_grad():  # move off the init values so that a skipped tensor would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    data = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert data["model_name"] == name and data["input_dims"] == [5, 7, 3]

    loaded = from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.model_name == name
    assert loaded.config == model.config and not loaded.training
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    xs = make_inputs(cfg)
    mask = [make_mask([12, 5, 9])] * 3
    present = torch.tensor([[True, True, True], [False, True, True], [True, True, False]])
    assert torch.equal(loaded(xs, mask=mask, present=present), model(xs, mask=mask, present=present))


def test_mismatched_or_missing_files_raise(tmp_path, make_config):
    torch.manual_seed(0)
    model = create_model("coupled_mamba", make_config())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("head.fusion.logits")
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing \\['head.fusion.logits'\\]"):
        from_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["model_name"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="model_name"):
        from_pretrained(tmp_path)
    # Missing files are OSError, as in Hugging Face's from_pretrained.
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OSError, match="no file named model.safetensors"):
        from_pretrained(tmp_path)
    with pytest.raises(OSError, match="no file named config.json"):
        CoupledMambaModel.from_pretrained(tmp_path / "nowhere")


def test_from_pretrained_on_a_class_checks_the_saved_model(tmp_path, make_config):
    torch.manual_seed(0)
    model = create_model("mamba_fusion", make_config())
    model.save_pretrained(tmp_path / "fusion")
    loaded = CoupledMambaModel.from_pretrained(tmp_path / "fusion")
    assert type(loaded) is CoupledMambaModel and loaded.model_name == "mamba_fusion"
    assert isinstance(MultimodalModel.from_pretrained(tmp_path / "fusion"), CoupledMambaModel)
    create_model("cross_attention", make_config()).save_pretrained(tmp_path / "ca")
    with pytest.raises(ValueError, match="holds a 'cross_attention' model.*not a CoupledMambaModel"):
        CoupledMambaModel.from_pretrained(tmp_path / "ca")
