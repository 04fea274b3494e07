"""Data-dependent defaults (train.recipe auto): applied only to keys nobody set, saved, logged."""

from __future__ import annotations

import json

import yaml
from train_helpers import TINY_TRAIN, tiny_data

from coupled_mamba.train.config import load_config
from coupled_mamba.train.data_prep import prepare_loaded
from coupled_mamba.train.defaults import apply_data_defaults, data_defaults
from coupled_mamba.train.run import train_run


def _prepared(cfg, **kw):
    return prepare_loaded(tiny_data(**kw), cfg.data, cfg.train.seed)


def test_rule_follows_the_data():
    small, large = data_defaults(3000, 40, [16, 8]), data_defaults(30_000, 50, [16, 8])
    assert small["model.d_model"] == 32 and large["model.d_model"] == 64
    assert small["model.dt_min"] == 1 / 40 and large["model.dt_min"] == 1 / 50
    assert small["train.epochs"] == 100 and large["train.epochs"] == 60
    assert small["train.scheduler"] == "warmup_cosine" and small["train.select_on"] == "loss"
    assert data_defaults(3000, 40, [16, 8], "classification")["train.select_on"] == "primary"


def test_only_keys_nobody_set_are_filled():
    cfg = load_config(None, ["model.d_model=8", "train.lr=0.01"], {"train.epochs": 3})
    applied = apply_data_defaults(cfg, _prepared(cfg, L=10))
    assert cfg.model.params["d_model"] == 8 and cfg.train.lr == 0.01 and cfg.train.epochs == 3
    assert cfg.model.params["n_layers"] == 2 and cfg.model.params["dt_min"] == 0.1
    assert cfg.train.optimizer == "adamw"
    assert "model.n_layers=2" in applied and not any(a.startswith("model.d_model") for a in applied)


def test_fixed_recipe_keeps_the_field_defaults():
    cfg = load_config(None, ["train.recipe=fixed"])
    assert apply_data_defaults(cfg, _prepared(cfg)) == []
    assert (cfg.train.lr, cfg.train.optimizer, cfg.model.params) == (5e-4, "adam", {})


def test_run_logs_saves_and_reproduces_the_defaults(tmp_path, capsys):
    tiny = [f"train.{k}={v}" for k, v in TINY_TRAIN.items() if k != "epochs"]
    sizes = ["model.d_model=8", "model.d_state=4", "model.proj_hidden=8",
             "model.head_hidden=8", "train.epochs=1"]
    cfg = load_config(None, tiny + sizes)
    out = tmp_path / "run"
    res = train_run(cfg, out, prepared=_prepared(cfg))
    err = capsys.readouterr().err
    assert "defaults from the data (40 training samples" in err and "model.n_layers=2" in err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["recipe"] == "auto"
    assert saved["model"]["n_layers"] == 2 and saved["train"]["scheduler"] == "warmup_cosine"
    assert "model.n_layers=2" in json.loads((out / "metrics.json").read_text())["data_defaults"]
    # The saved file gives every key explicitly: training from it applies nothing and matches.
    again_cfg = load_config(out / "config.yaml")
    again = train_run(again_cfg, tmp_path / "again", prepared=_prepared(again_cfg))
    assert again["data_defaults"] == [] and again["test"] == res["test"]
    # --resume with the original command sees the same resolved config (no "differs" error).
    train_run(cfg, out, prepared=_prepared(cfg), resume=True)


def test_explicit_only_dict_keeps_the_rule_for_other_keys():
    from coupled_mamba.train.config import ExperimentConfig

    cfg = load_config(None, ["model.d_model=8", "train.epochs=2"])
    raw = cfg.to_dict(explicit_only=True)
    assert raw == {"data": {}, "model": {"name": "coupled_mamba", "d_model": 8},
                   "train": {"epochs": 2}}
    again = ExperimentConfig.from_dict(raw)
    a, b = _prepared(cfg), _prepared(again)
    assert apply_data_defaults(cfg, a) == apply_data_defaults(again, b)
    assert cfg.to_dict() == again.to_dict()


def test_keys_a_registered_model_fixes_are_left_to_it(recwarn):
    from coupled_mamba.models import create_model

    coupled = load_config(None, [])
    avg = load_config(None, ["model.name=avg_fusion"])
    assert "model.fusion=concat" in apply_data_defaults(coupled, _prepared(coupled))
    assert not any(a.startswith("model.fusion") for a in apply_data_defaults(avg, _prepared(avg)))
    model = create_model("avg_fusion", input_dims=[3, 2], **avg.model.params)
    assert model.config.fusion == "mean"
    assert not [w for w in recwarn if "fixes fusion" in str(w.message)]


def test_wide_modalities_are_reduced_to_their_components(tmp_path):
    from coupled_mamba.models import from_pretrained

    cfg = load_config(None, ["model.d_model=8", "model.d_state=4", "train.epochs=1",
                             "train.batch_size=8", "train.progress=false",
                             "train.tensorboard=false"])
    prepared = _prepared(cfg, dims=(3, 70))  # noise only: the wide one keeps one component
    res = train_run(cfg, tmp_path / "run", prepared=prepared)
    assert "model.input_ranks=[0, 1]" in res["data_defaults"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["input_ranks"] == [0, 1]
    model = from_pretrained(tmp_path / "run" / "seed_1111" / "best")
    expected = prepared.input_spectrum(1, 1).vectors[:, :1]
    assert model.projections[1][0].in_features == 1
    assert abs(float((model.input_norms[1].components.numpy() * expected).sum())) > 0.9999
    # A user's ranks are theirs.
    mine = load_config(None, ["model.input_ranks=[0, 5]"])
    assert not any("input_ranks" in a for a in apply_data_defaults(mine, _prepared(mine, dims=(3, 70))))
    assert mine.model.params["input_ranks"] == [0, 5]
