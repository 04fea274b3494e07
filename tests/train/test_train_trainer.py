"""Trainer end to end on tiny data: every task, metrics.json, determinism, resume, seeds."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import tiny_data, tiny_overrides

from coupled_mamba.metrics import compute_metrics
from coupled_mamba.models import from_pretrained
from coupled_mamba.train.checkpoint import (
    flatten_state,
    get_rng_state,
    set_rng_state,
    unflatten_state,
)
from coupled_mamba.train.config import load_config
from coupled_mamba.train.data_prep import prepare_loaded
from coupled_mamba.train.run import train_run
from coupled_mamba.train.trainer import selection_key


def _run(task, out, *, extra=(), data=None, **kw):
    cfg = load_config(None, tiny_overrides() + list(extra))
    prepared = prepare_loaded(data or tiny_data(task), cfg.data, cfg.train.seed)
    return train_run(cfg, out, prepared=prepared, **kw), prepared


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("task", ["regression", "classification", "multilabel"])
def test_each_task_end_to_end(task, tmp_path):
    out = tmp_path / "run"
    r, prepared = _run(task, out, extra=["train.tensorboard=true"])
    expected = {"regression": "Non0_F1_score", "classification": "F1_macro",
                "multilabel": "F1_micro"}[task]
    # metrics.json: test/valid metrics of the selected epoch plus the bookkeeping.
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(r))
    assert {"test", "valid", "best_epoch", "seed", "selection", "num_parameters"} <= set(saved)
    assert expected in saved["test"] and "Loss" in saved["test"]
    assert 1 <= saved["best_epoch"] <= 2 and saved["epochs_run"] == 2
    seed_dir = out / "seed_1111"
    for name in ("config.yaml",):
        assert (out / name).is_file()
    for name in ("history.csv", "last.safetensors", "best/config.json", "best/model.safetensors",
                 "metrics.json"):
        assert (seed_dir / name).is_file(), name
    assert any((seed_dir / "tensorboard").iterdir())
    rows = list(csv.DictReader(open(seed_dir / "history.csv")))
    assert [int(r_["epoch"]) for r_ in rows] == [1, 2]
    assert {"lr", "train_Loss", "valid_Loss", f"valid_{expected}"} <= set(rows[0])
    # The selected model reloads with from_pretrained and reproduces the test metrics.
    model = from_pretrained(str(seed_dir / "best")).eval()
    from coupled_mamba.data import MultimodalTorchDataset

    ds = MultimodalTorchDataset(prepared.test, prepared.modality_names)
    b = ds.batch(np.arange(len(ds)))
    with torch.no_grad():
        out_ = model(b["inputs"], b["mask"], b["present"]).numpy()
    again = compute_metrics(prepared.metric_family, out_, prepared.test.labels)
    for k, v in again.items():
        assert saved["test"][k] == pytest.approx(v, abs=1e-4, nan_ok=True)
    # The selected epoch is the one with the best validation score in the history (the loss for
    # regression, the primary metric for the other tasks under the data defaults).
    sel = saved["selection"]
    assert sel["key"] == ("Loss" if task == "regression" else expected)
    scores = [float(r_[f"valid_{sel['key']}"]) for r_ in rows]
    best = np.argmax(scores) if sel["higher_is_better"] else np.argmin(scores)
    assert saved["best_epoch"] == 1 + int(best)


def test_deterministic_on_cpu(tmp_path):
    a, _ = _run("classification", tmp_path / "a")
    b, _ = _run("classification", tmp_path / "b")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    wa = load_file(str(tmp_path / "a/seed_1111/best/model.safetensors"))
    wb = load_file(str(tmp_path / "b/seed_1111/best/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c, _ = _run("classification", tmp_path / "c", extra=["train.seed=7"])
    assert c["valid"] != a["valid"]  # the seed matters


class _Crash(Exception):
    pass


def _full_and_crashed(tmp_path, extra, crash_after: int):
    """Run ``full`` to the end and ``cut`` until a crash after epoch ``crash_after``."""
    full, _ = _run("regression", tmp_path / "full", extra=extra)

    def crash(trainer, epoch, row):
        if epoch == crash_after:
            raise _Crash

    with pytest.raises(_Crash):
        _run("regression", tmp_path / "cut", extra=extra, callbacks=[crash])
    return full


def test_resume_gives_the_same_weights(tmp_path):
    # step LR every epoch so that scheduler state matters; dropout so that RNG state matters;
    # no early stop so that all 4 epochs run.
    extra = ["train.epochs=4", "train.step_size=1", "train.gamma=0.7", "train.patience=0"]
    full = _full_and_crashed(tmp_path, extra, crash_after=2)
    assert not (tmp_path / "cut/metrics.json").exists()
    with pytest.raises(ValueError, match="already holds an unfinished run.*add --resume.*"
                       "--overwrite"):
        _run("regression", tmp_path / "cut", extra=extra)
    with pytest.raises(ValueError, match=r"train\.lr: 0\.003 -> 0\.1"):
        _run("regression", tmp_path / "cut", extra=extra + ["train.lr=0.1"], resume=True)
    resumed, _ = _run("regression", tmp_path / "cut", extra=extra, resume=True)
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]
    a = _tensors(tmp_path / "full/seed_1111/last.safetensors")
    b = _tensors(tmp_path / "cut/seed_1111/last.safetensors")
    assert set(a) == set(b) and any(k.startswith("best/") for k in a)
    for k in a:  # final weights, best weights, optimizer moments, RNG states
        assert torch.equal(a[k], b[k]), k
    wa = load_file(str(tmp_path / "full/seed_1111/best/model.safetensors"))
    wb = load_file(str(tmp_path / "cut/seed_1111/best/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # Resuming a finished run trains nothing and reports the same.
    again, _ = _run("regression", tmp_path / "cut", extra=extra, resume=True)
    assert again["test"] == full["test"]


def test_resume_without_rng_restore_would_differ(tmp_path, monkeypatch):
    """Guard for the test above: the restored RNG state (dropout) is what makes it pass."""
    import coupled_mamba.train.trainer as trainer_mod

    extra = ["train.epochs=3", "train.patience=0"]
    _full_and_crashed(tmp_path, extra, crash_after=1)
    real = trainer_mod.load_checkpoint
    monkeypatch.setattr(trainer_mod, "load_checkpoint",
                        lambda *a, **kw: real(*a, **{**kw, "restore_rng": False}))
    torch.manual_seed(0)
    _run("regression", tmp_path / "cut", extra=extra, resume=True)
    a = _tensors(tmp_path / "full/seed_1111/last.safetensors")
    b = _tensors(tmp_path / "cut/seed_1111/last.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("model/"))


def test_seeds_report_mean_and_population_std(tmp_path):
    r, _ = _run("classification", tmp_path / "run", extra=["train.n_seeds=3", "train.seed=5"])
    assert r["seeds"] == [5, 6, 7] and [p["seed"] for p in r["per_seed"]] == [5, 6, 7]
    for split in ("test", "valid"):
        for k in r["mean"][split]:
            vals = np.array([p[split][k] for p in r["per_seed"]])
            assert r["mean"][split][k] == pytest.approx(vals.mean())
            assert r["std"][split][k] == pytest.approx(vals.std(ddof=0))
    assert r["test"] == r["mean"]["test"] and len(r["best_epoch"]) == 3
    for s in (5, 6, 7):
        assert (tmp_path / f"run/seed_{s}/metrics.json").is_file()
    assert json.loads((tmp_path / "run/metrics.json").read_text())["std"] == r["std"]


def test_valid_split_is_carved_when_missing(tmp_path):
    data = tiny_data("classification", n=(50, 0, 12), valid=False)
    r, prepared = _run("classification", None, data=data, extra=["data.valid_fraction=0.2"])
    assert len(prepared.valid.labels) == 10 and len(prepared.train.labels) == 40
    assert not set(prepared.valid.ids) & set(prepared.train.ids)
    assert any("carved 10 of 50" in n for n in r["notes"])
    # Stratified: every class keeps its share (up to rounding).
    for c in np.unique(data.train.labels):
        share = np.mean(data.train.labels == c)
        assert abs(np.mean(prepared.valid.labels == c) - share) <= 0.11


def test_missing_rates_are_applied():
    cfg = load_config(None, ["data.missing_rate_train=0.5", "data.missing_rate_test=0.3"])
    p = prepare_loaded(tiny_data("regression", n=(400, 300, 300)), cfg.data, seed=3)
    assert p.train.present is not None and p.test.present is not None
    # Samples that would lose every modality are redrawn, so with M = 2 the dropped share is
    # E[dropped | not all dropped] = (r - r^2) / (1 - r^2).
    for split, r in ((p.train, 0.5), (p.test, 0.3), (p.valid, 0.3)):
        assert abs(1 - split.present.mean() - (r - r * r) / (1 - r * r)) < 0.05
    assert p.train.present.any(1).all()
    assert not np.array_equal(p.valid.present, p.test.present[: len(p.valid.present)])


@pytest.mark.parametrize("select_on, key, higher", [
    ("loss", "Loss", False), ("primary", "F1_macro", True), ("MAE", "MAE", False),
    ("Accuracy", "Accuracy", True)])
def test_selection_key(select_on, key, higher):
    assert selection_key(select_on, "classification") == (key, higher)


def test_select_on_unknown_metric_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="train.select_on 'F1' is not a metric of 'classification'"):
        _run("classification", None, extra=["train.select_on=F1"])


def test_incompatible_task_is_an_error():
    cfg = load_config(None, ["data.task=classification"])
    with pytest.raises(ValueError, match="incompatible task: --task classification.*regression"):
        prepare_loaded(tiny_data("regression"), cfg.data, 0)


def test_checkpoint_state_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors = {}
    skel = flatten_state(opt.state_dict(), "optimizer", tensors)
    json_ok = json.loads(json.dumps(skel))
    back = unflatten_state(json_ok, tensors)
    sd = opt.state_dict()
    assert back["param_groups"] == sd["param_groups"]
    assert set(back["state"]) == set(sd["state"]) == {0, 1}
    for i in sd["state"]:
        for k, v in sd["state"][i].items():
            assert torch.equal(back["state"][i][k], v)
    state = get_rng_state()
    x = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    y = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(x[0], y[0]) and np.array_equal(x[1], y[1]) and x[2] == y[2]


def test_callback_can_stop_training(tmp_path):
    from coupled_mamba.train.trainer import StopTraining

    def stop(trainer, epoch, row):
        assert row["epoch"] == epoch and "valid_Loss" in row
        raise StopTraining

    r, _ = _run("regression", tmp_path / "run", extra=["train.epochs=5"], callbacks=[stop])
    assert r["epochs_run"] == 1 and r["best_epoch"] == 1
