"""Experiment config: YAML sections, --set overrides, type coercion, errors, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coupled_mamba.models import CoupledMambaConfig, list_models
from coupled_mamba.train.config import ExperimentConfig, build_model_config, load_config
from coupled_mamba.train.demo import DEMO_CONFIG

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_paper_recipe():
    t = ExperimentConfig().train
    assert (t.optimizer, t.lr, t.weight_decay, t.loss, t.scheduler) == ("adam", 5e-4, 5e-4,
                                                                          "auto", "step")
    assert (t.epochs, t.select_on, t.patience, t.seed) == (150, "loss", 8, 1111)


def test_yaml_then_flags_then_set(tmp_path):
    p = tmp_path / "c.yaml"
    # PyYAML reads 5e-4 (no dot) as a string: the loader must coerce it to float.
    p.write_text("data:\n  format: npz\nmodel:\n  name: mamba_fusion\n  d_model: 16\n"
                 "train:\n  lr: 5e-4\n  epochs: 7\n  batch_size: 32\n")
    cfg = load_config(p, ["train.epochs=9", "model.coupling=0.25", "train.grad_clip=1"],
                      {"train.batch_size": 4, "train.epochs": 8, "data.seq_len": None})
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 9  # --set wins over flags and YAML
    assert cfg.train.batch_size == 4  # flag wins over YAML
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.model.name == "mamba_fusion" and cfg.model.params == {"d_model": 16,
                                                                      "coupling": 0.25}
    assert cfg.data.format == "npz" and cfg.data.seq_len is None
    # Round trip through the saved YAML.
    cfg.save(tmp_path / "out.yaml")
    again = ExperimentConfig.from_dict(yaml.safe_load((tmp_path / "out.yaml").read_text()))
    assert again.to_dict() == cfg.to_dict()


def test_set_values_parse_as_yaml():
    cfg = load_config(None, ["train.grad_clip=null", "train.bf16=true", "data.options={n_tokens: 5}",
                             "model.coupling_mask=[[1, 0], [1, 1]]"])
    assert cfg.train.grad_clip is None and cfg.train.bf16 is True
    assert cfg.data.options == {"n_tokens": 5}
    mc = build_model_config(cfg.model, [3, 4], ["a", "b"], "regression", 1)
    assert mc.coupling_mask is not None


@pytest.mark.parametrize("override, words", [
    ("train.lrr=0.1", ["train.lrr", "valid keys of 'train'", "lr", "batch_size"]),
    ("optim.lr=0.1", ["unknown section 'optim'", "data, model, train"]),
    ("lr=0.1", ["section.key"]),
    ("train.epochs=many", ["train.epochs", "'many'", "int"]),
    ("train.optimizer=lion", ["train.optimizer", "adam", "lion"]),
    ("data.missing_rate_train=1.5", ["missing_rate_train", "[0, 1)"]),
    ("model.input_dims=[1, 2]", ["model.input_dims", "read from the data"]),
])
def test_bad_override_names_the_key(override, words):
    with pytest.raises(ValueError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_unknown_model_key_lists_valid_ones():
    cfg = load_config(None, ["model.d_modell=8"])
    with pytest.raises(ValueError, match=r"model\.d_modell.*d_model.*n_layers"):
        build_model_config(cfg.model, [3], ["a"], "regression", 1)
    cfg = load_config(None, ["model.name=transformer"])
    with pytest.raises(ValueError, match="unknown model 'transformer'; available: .*coupled_mamba"):
        build_model_config(cfg.model, [3], ["a"], "regression", 1)


def test_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown key 'train\.epoch'"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_parse_and_build(path):
    text = path.read_text()
    assert "/work" not in text and "/home" not in text  # no absolute paths
    cfg = load_config(path)
    assert cfg.data.path is None  # the data path comes from the command line
    assert cfg.model.name in list_models()
    mc = build_model_config(cfg.model, [7, 5, 3], ["a", "b", "c"], "regression", 1)
    assert isinstance(mc, CoupledMambaConfig)
    assert mc.d_model == cfg.model.params.get("d_model", 128)


def test_paper_settings_in_configs():
    by_name = {p.stem: load_config(p) for p in CONFIGS}
    assert {"mosei", "sims", "simsv2", "brca", "mmimdb", "rosmap", "demo"} <= set(by_name)
    assert [by_name[k].train.batch_size for k in ("mosei", "sims", "simsv2")] == [1024, 128, 256]
    for k in ("mosei", "sims", "simsv2", "brca", "mmimdb"):
        t = by_name[k].train
        assert (t.epochs, t.lr, t.weight_decay, t.optimizer, t.n_seeds) == (150, 5e-4, 5e-4,
                                                                              "adam", 5)
    assert [by_name[k].data.metric_family for k in ("mosei", "sims", "simsv2")] == [
        "mosei", "sims", "simsv2"]


def test_demo_yaml_mirrors_the_demo():
    cfg = load_config(Path(CONFIGS[0]).parent / "demo.yaml")
    assert cfg.to_dict() == ExperimentConfig.from_dict(DEMO_CONFIG).to_dict()
