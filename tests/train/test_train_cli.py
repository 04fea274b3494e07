"""The coupled-mamba command: train / evaluate / predict / convert, errors, extension commands."""

from __future__ import annotations

import csv
import json
import sys
import types

import numpy as np
import pytest
from train_helpers import one_line_error, one_line_usage_error, tiny_data, tiny_sets

from coupled_mamba.data import load_dataset, write_mmsa_pickle, write_npz_folder
from coupled_mamba.metrics import compute_metrics
from coupled_mamba.train import cli


def test_train_evaluate_predict(tmp_path, npz_data, capsys):
    data = npz_data("classification")
    run = tmp_path / "run"
    assert cli.main(["train", "--data", data, "--out", str(run), "--seeds", "2", "--quiet",
                     *tiny_sets()]) == 0
    out = capsys.readouterr().out
    assert "test (mean±std over seeds [1111, 1112])" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["seeds"] == [1111, 1112] and set(metrics["mean"]) == {"valid", "test"}

    # evaluate: the same numbers as training reported, per seed.
    assert cli.main(["evaluate", "--run", str(run), "--data", data]) == 0
    ev = json.loads((run / "evaluate_test.json").read_text())
    for p in metrics["per_seed"]:
        got = ev["per_seed"][str(p["seed"])]
        for k, v in p["test"].items():
            assert got[k] == pytest.approx(v, abs=1e-6), k
    assert ev["mean"] == pytest.approx(metrics["mean"]["test"])
    # evaluate with missing modalities changes the inputs, hence the loss.
    assert cli.main(["evaluate", "--run", str(run), "--data", data, "--missing-rate", "0.5",
                     "--out", str(tmp_path / "miss.json")]) == 0
    miss = json.loads((tmp_path / "miss.json").read_text())
    assert miss["missing_rate"] == 0.5 and miss["mean"]["Loss"] != ev["mean"]["Loss"]

    # predict: one row per sample of every split, with probabilities and labels.
    preds = tmp_path / "preds.csv"
    assert cli.main(["predict", "--run", str(run), "--data", data, "--out", str(preds),
                     "--seed", "1112"]) == 0
    rows = list(csv.DictReader(open(preds)))
    d = load_dataset(data)
    assert [r["split"] for r in rows].count("test") == len(d.test.labels)
    assert len(rows) == sum(len(s.labels) for s in d.splits().values())
    assert list(rows[0]) == ["split", "id", "prediction", "prob_0", "prob_1", "prob_2", "label"]
    test_rows = [r for r in rows if r["split"] == "test"]
    assert [r["id"] for r in test_rows] == list(d.test.ids)
    assert [int(r["label"]) for r in test_rows] == list(d.test.labels)
    probs = np.array([[float(r[f"prob_{k}"]) for k in range(3)] for r in test_rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [int(r["prediction"]) for r in test_rows] == list(probs.argmax(1))
    acc = compute_metrics("classification", np.log(probs), d.test.labels)["Accuracy"]
    assert acc == pytest.approx(metrics["per_seed"][1]["test"]["Accuracy"])


def test_predict_validates_the_data(tmp_path, npz_data, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", npz_data("regression"), "--out", str(run), "--quiet",
                     *tiny_sets(epochs=1)]) == 0
    capsys.readouterr()
    wrong_dims = tmp_path / "dims"
    write_npz_folder(tiny_data("regression", dims=(4, 5)), wrong_dims)
    one_line_error(capsys, ["predict", "--run", str(run), "--data", str(wrong_dims), "--out",
                             str(tmp_path / "p.csv")],
                    "does not fit the trained model", "m0: 4 (expected 3)")
    wrong_mods = tmp_path / "mods"
    write_npz_folder(tiny_data("regression", dims=(3, 5, 2)), wrong_mods)
    one_line_error(capsys, ["predict", "--run", str(run), "--data", str(wrong_mods), "--out",
                             str(tmp_path / "p.csv")],
                    "modalities ['m0', 'm1', 'm2']", "trained on ['m0', 'm1']")
    wrong_task = tmp_path / "task"
    write_npz_folder(tiny_data("classification"), wrong_task)
    one_line_error(capsys, ["evaluate", "--run", str(run), "--data", str(wrong_task)],
                    "task classification (the model does regression)")
    one_line_error(capsys, ["predict", "--run", str(tmp_path), "--data", str(wrong_task),
                             "--out", str(tmp_path / "p.csv")], "not a run directory")
    # A regression prediction file: prediction and label columns.
    assert cli.main(["predict", "--run", str(run), "--data", npz_data("regression"), "--out",
                     str(tmp_path / "r.csv"), "--split", "test"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert list(rows[0]) == ["split", "id", "prediction", "label"] and len(rows) == 12


def test_bad_input_is_one_line(tmp_path, npz_data, capsys):
    data = npz_data("classification")
    out = str(tmp_path / "r")
    one_line_error(capsys, ["train", "--data", str(tmp_path / "nope"), "--out", out],
                    "data not found", "nope")
    one_line_usage_error(capsys, ["train", "--data", data, "--out", out, "--model", "bert"],
                          "invalid choice: 'bert'", "coupled_mamba")
    one_line_error(capsys, ["train", "--data", data, "--out", out, "--set", "train.epoch=1"],
                    "unknown key 'train.epoch'", "epochs")
    one_line_error(capsys, ["train", "--data", data, "--out", out, "--set", "model.width=1"],
                    "unknown key 'model.width'", "d_model")
    one_line_error(capsys, ["train", "--data", data, "--out", out, "--task", "regression",
                             *tiny_sets(epochs=1)],
                    "incompatible task: --task regression", "classification")
    one_line_error(capsys, ["train", "--data", data, "--out", out, "--config",
                             str(tmp_path / "none.yaml")], "config file not found")
    one_line_error(capsys, ["train", "--data", data, "--out", out, "--coupling", "strong",
                             *tiny_sets(epochs=1)], "coupling")
    one_line_usage_error(capsys, ["train", "--data", data], "--out")
    one_line_error(capsys, ["convert", "--mmsa", str(tmp_path / "x.pkl"), "--out", out],
                    "not found")


def test_convert(tmp_path, capsys):
    pkl = tmp_path / "toy.pkl"
    data = tiny_data("regression", dims=(3, 5, 2), names=("text", "audio", "vision"))
    write_mmsa_pickle(data, pkl)
    assert cli.main(["convert", "--mmsa", str(pkl), "--out", str(tmp_path / "npz")]) == 0
    back = load_dataset(tmp_path / "npz", format="npz")
    assert np.array_equal(back.test.modalities["audio"], data.test.modalities["audio"])
    assert np.allclose(back.train.labels, data.train.labels)


def test_extension_modules_add_commands(monkeypatch, capsys):
    mod = types.ModuleType("fake_bench_cli")
    calls = []

    def add(p):
        p.add_argument("--n", type=int, default=1)

    def run(args):
        calls.append(args.n)
        return 0

    mod.COMMANDS = [cli.Command("hello", "say hello", add, run)]
    monkeypatch.setitem(sys.modules, "fake_bench_cli", mod)
    monkeypatch.setattr(cli, "EXTENSION_MODULES", ("fake_bench_cli", "missing_module_xyz"))
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name: object() if name in sys.modules else None)
    assert cli.main(["hello", "--n", "3"]) == 0 and calls == [3]


def test_evaluate_missing_rate_reuses_the_training_masks(tmp_path, npz_data, capsys):
    """A run trained and tested at missing rate r, evaluated with --missing-rate r, sees the same
    test masks, hence the same metrics; without --missing-rate the metrics differ."""
    data, run = npz_data("regression"), tmp_path / "run"
    assert cli.main(["train", "--data", data, "--out", str(run), "--missing-rate", "0.4",
                     *tiny_sets(epochs=1)]) == 0
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert cli.main(["evaluate", "--run", str(run), "--data", data, "--missing-rate", "0.4"]) == 0
    again = json.loads((run / "evaluate_test.json").read_text())["metrics"]
    assert again == pytest.approx(trained, nan_ok=True)
    assert cli.main(["evaluate", "--run", str(run), "--data", data]) == 0
    full = json.loads((run / "evaluate_test.json").read_text())["metrics"]
    assert full["Loss"] != trained["Loss"]
