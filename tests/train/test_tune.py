"""``coupled-mamba tune``: search space per model, resuming, pruning, best.yaml that trains."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import yaml
from train_helpers import tiny_overrides

from coupled_mamba.models import list_models, model_entry
from coupled_mamba.train import cli
from coupled_mamba.train import tune as tune_module
from coupled_mamba.train.tune_space import DEFAULT_SPACE, Param, model_space, parse_param

try:
    import optuna
    from optuna.trial import TrialState
except ImportError:  # the command's own error is tested without it
    optuna = None
needs_optuna = pytest.mark.skipif(optuna is None, reason="pip install coupled-mamba[tune]")


def _sets(**train):
    return [a for s in tiny_overrides(**train) for a in ("--set", s)]


def _tune(data, out, *extra, trials=3, **train):
    return cli.main(["tune", "--data", data, "--out", str(out), "--trials", str(trials),
                     "--quiet", *_sets(**train), *extra])


def _study(out):
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{out}/study.db")


def _finished(study):
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _one_line_error(capsys, argv, *words):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, code
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("coupled-mamba tune: error:"), err
    for w in words:
        assert w in err[-1], (w, err[-1])


# ---- search space -----------------------------------------------------------------------------

def test_space_follows_the_registry():
    keys = {name: [p.key for p in model_space(name)] for name in list_models()}
    assert keys["coupled_mamba"] == [p.key for p in DEFAULT_SPACE]
    assert {"train.lr", "train.weight_decay", "model.d_model", "model.n_layers",
            "model.d_state", "model.dropout", "model.coupling"} == set(keys["coupled_mamba"])
    for name in ("mamba_fusion", "avg_fusion", "concat_fusion"):
        assert "model.coupling" not in keys[name] and "model.d_state" in keys[name], name
    assert "model.coupling" not in keys["cross_attention"]
    assert "model.d_state" not in keys["cross_attention"]
    for name in list_models():  # never search a field the registry fixes
        assert not {f"model.{k}" for k in model_entry(name).overrides} & set(keys[name]), name


@pytest.mark.parametrize("item, expected", [
    ("lr=1e-5:1e-3:log", Param("train.lr", 1e-5, 1e-3, log=True)),
    ("n_layers=1:6", Param("model.n_layers", 1, 6)),
    ("dropout=0:0.3", Param("model.dropout", 0, 0.3)),
    ("d_model=16,32", Param("model.d_model", choices=(16, 32))),
    ("coupling=mean,0.25", Param("model.coupling", choices=("mean", 0.25))),
    ("batch_size=8,16", Param("train.batch_size", choices=(8, 16))),
    ("model.head_hidden=8:64:log", Param("model.head_hidden", 8, 64, log=True)),
])
def test_parse_space_spec(item, expected):
    assert parse_param(item) == expected


@needs_optuna
@pytest.mark.parametrize("extra, words", [
    (["--space", "lr=1e-3"], ["lr=1e-3", "LOW:HIGH"]),
    (["--space", "lr=0:1e-2:log"], ["LOW > 0"]),
    (["--space", "lr=1e-2:1e-3"], ["LOW < HIGH"]),
    (["--space", "lr=a:b"], ["not a number"]),
    (["--space", "bogus=1:2"], ["unknown parameter 'bogus'"]),
    (["--space", "data.seq_len=4:8"], ["data settings cannot be tuned"]),
    (["--model", "mamba_fusion", "--space", "coupling=mean,learned"],
     ["mamba_fusion", "model.coupling"]),
    (["--model", "cross_attention", "--params", "d_state"], ["--params", "model.d_state"]),
    (["--params", "lr", "--set", "train.lr=0.01"], ["nothing to tune"]),
    (["--trials", "0"], ["--trials"]),
    (["--storage", "notaurl"], ["--storage notaurl", "cannot open"]),
])
def test_bad_search_input_is_one_line(npz_data, tmp_path, capsys, extra, words):
    _one_line_error(capsys, ["tune", "--data", npz_data(), "--out", str(tmp_path / "t"),
                             *extra], *words)


def test_without_optuna_the_command_says_how_to_install(npz_data, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    _one_line_error(capsys, ["tune", "--data", npz_data(), "--out", str(tmp_path / "t")],
                    "pip install coupled-mamba[tune]")


# ---- the study --------------------------------------------------------------------------------

@needs_optuna
def test_interrupted_study_resumes_and_best_config_trains(npz_data, tmp_path, capsys,
                                                          monkeypatch):
    data, out = npz_data(), tmp_path / "tune"
    real_train_run = tune_module.train_run
    calls = []

    def interrupt_second_trial(cfg, out_dir, **kw):
        calls.append(kw["prepared"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train_run(cfg, out_dir, **kw)

    monkeypatch.setattr(tune_module, "train_run", interrupt_second_trial)
    assert _tune(data, out) == 130
    assert all(p.test is None for p in calls)  # selection never sees the test split
    first = _study(out)
    assert [t.state for t in first.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert (out / "trials.csv").is_file() and (out / "best.yaml").is_file()
    # A worker killed without cleaning up leaves its trial RUNNING: it must not count.
    first.ask()
    monkeypatch.setattr(tune_module, "train_run", real_train_run)

    assert _tune(data, out) == 0
    study = _study(out)
    finished = _finished(study)
    assert len(finished) == 3 and len(study.trials) == 5
    kept = study.trials[0]
    assert (kept.params, kept.value, kept.datetime_start) == (
        first.trials[0].params, first.trials[0].value, first.trials[0].datetime_start)
    # The resumed sampler does not draw the first trial's values again.
    assert all(t.params != kept.params for t in finished[1:])
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert sorted(t.intermediate_values) == [1, 2]  # one report per epoch
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["state"] for r in rows].count("complete") == 3
    assert {"number", "state", "value", "epochs", "train.lr", "model.coupling"} <= set(rows[0])
    assert (out / "tune_history.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert f"best: trial {study.best_trial.number}" in printed

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"]["lr"] == pytest.approx(study.best_params["train.lr"])
    assert best["model"]["coupling"] == study.best_params["model.coupling"]
    # Keys neither the base config nor the search set hold what the trial trained with: the
    # data's defaults (train.recipe auto), not the field defaults.
    assert best["train"]["scheduler"] == "warmup_cosine" and best["model"]["dt_max"] == 1.0
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(out / "best.yaml"), "--data", data,
                     "--out", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["test"]["Loss"] is not None


@needs_optuna
def test_median_pruner_stops_a_bad_trial(npz_data, tmp_path):
    data, out = npz_data(), tmp_path / "tune"
    out.mkdir()
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{out}/study.db")
    for lr in (3e-2, 1e-2, 1e-7):  # the last one barely moves
        study.enqueue_trial({"train.lr": lr})
    assert _tune(data, out, "--params", "lr", "--space", "lr=1e-7:1e-1:log",
                 "--prune-startup", "2", "--prune-warmup", "0") == 0
    trials = _study(out).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                        TrialState.PRUNED]
    assert sorted(trials[2].intermediate_values) == [1]


@needs_optuna
def test_diverged_trial_counts_as_pruned(npz_data, tmp_path, monkeypatch):
    def diverge(cfg, out_dir, **kw):
        raise FloatingPointError("non-finite training loss (nan) at epoch 1")

    monkeypatch.setattr(tune_module, "train_run", diverge)
    out = tmp_path / "tune"
    assert _tune(npz_data(), out, trials=2) == 0
    trials = _study(out).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert not (out / "best.yaml").exists()
    assert "non-finite" in list(csv.DictReader(open(out / "trials.csv")))[0]["note"]


@needs_optuna
def test_direction_follows_selection_and_resume_checks_setup(npz_data, tmp_path, capsys):
    data, out = npz_data("classification"), tmp_path / "tune"
    assert _tune(data, out, "--set", "train.select_on=primary", "--params", "lr",
                 trials=1, epochs=1) == 0
    assert _study(out).direction == optuna.study.StudyDirection.MAXIMIZE
    capsys.readouterr()
    _one_line_error(capsys, ["tune", "--data", data, "--out", str(out), "--quiet",
                             *_sets(epochs=2), "--set", "train.select_on=primary",
                             "--params", "lr"], "another setting", "train.epochs")
