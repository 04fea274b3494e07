"""`coupled-mamba bench fusion|coupling|missing` end to end on tiny settings, and their grids."""

from __future__ import annotations

import csv
import json
import warnings

import matplotlib.image as mpimg
import pytest

from coupled_mamba.bench.ablation_report import welch_p
from coupled_mamba.bench.ablations import (
    Setting,
    coupling_settings,
    missing_settings,
    neighbourhood_masks,
    setting_config,
)
from coupled_mamba.bench.plotting import DPI, PANEL_SIZE
from coupled_mamba.train.cli import main
from coupled_mamba.train.config import load_config

# A few seconds per command: 90 tiny samples, L = 16, a width-8 model, 1 epoch.
TINY = ["--data", "synthetic", "--synthetic-sizes", "60,12,18", "--seq-len", "16",
        "--epochs", "1", "--set", "model.d_model=8", "--set", "model.d_state=4",
        "--set", "model.n_layers=1", "--set", "model.proj_hidden=8",
        "--set", "model.head_hidden=8", "--set", "train.batch_size=32"]


def _png(path):
    assert path.stat().st_size > 0
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img.shape[:2]


def _lines(path):
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def test_fusion_bench_writes_table_csv_json_png(tmp_path):
    out = tmp_path / "fusion"
    rc = main(["bench", "fusion", *TINY, "--seeds", "2", "--models",
               "avg_fusion,coupled_mamba", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "fusion.json").read_text())
    assert [r["label"] for r in res["rows"]] == ["avg_fusion", "coupled_mamba"]
    for r in res["rows"]:
        assert r["seeds"] == [1111, 1112] and len(r["per_seed"]) == 2
        mae = [s["MAE"] for s in r["per_seed"]]
        assert r["mean"]["MAE"] == pytest.approx(sum(mae) / 2)
        assert r["std"]["MAE"] == pytest.approx(abs(mae[0] - mae[1]) / 2)  # population std
    assert res["base_config"]["train"]["n_seeds"] == 2
    assert res["environment"]["threads"] == 1
    rows = list(csv.DictReader(open(out / "fusion.csv")))
    assert [r["model"] for r in rows] == ["avg_fusion", "coupled_mamba"]
    assert float(rows[0]["MAE_mean"]) == pytest.approx(res["rows"][0]["mean"]["MAE"])
    md = (out / "fusion.md").read_text()
    assert "| fusion | coupled_mamba |" in md and "p vs coupled_mamba" in md
    assert _png(out / "fusion.png") == (round(PANEL_SIZE[1] * DPI), round(PANEL_SIZE[0] * DPI))


def test_coupling_bench_small_grid_dedupes_and_resumes(tmp_path):
    out = tmp_path / "coupling"
    argv = ["bench", "coupling", *TINY, "--seeds", "1", "--groups",
            "alpha,coupling,neighbourhood,dt_rank", "--alphas", "0,1", "--couplings", "mean",
            "--neighbourhoods", "all,pairs", "--dt-divisors", "2", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "coupling.json").read_text())
    labels = [(r["group"], r["label"]) for r in res["rows"]]
    assert labels == [("alpha", "0"), ("alpha", "1"), ("coupling", "mean"),
                      ("neighbourhood", "all"), ("neighbourhood", "text-audio"),
                      ("neighbourhood", "text-vision"), ("neighbourhood", "audio-vision"),
                      ("dt_rank", "N/2=2")]
    by = {(r["group"], r["label"]): r for r in res["rows"]}
    assert by[("neighbourhood", "text-vision")]["params"]["coupling_mask"] == [
        [1, 0, 1], [0, 1, 0], [1, 0, 1]]
    # "coupling mean" and "neighbourhood all" are the base model: one training for both.
    assert by[("coupling", "mean")]["key"] == by[("neighbourhood", "all")]["key"]
    assert by[("coupling", "mean")]["mean"] == by[("neighbourhood", "all")]["mean"]
    assert len(_lines(out / "runs.jsonl")) == len(labels) - 1
    # 4 groups: rows of at most 3 panels.
    assert _png(out / "coupling.png") == (round(2 * PANEL_SIZE[1] * DPI),
                                          round(3 * PANEL_SIZE[0] * DPI))
    # Running again reuses every finished run and reports the same numbers.
    assert main(argv) == 0
    assert len(_lines(out / "runs.jsonl")) == len(labels) - 1
    again = json.loads((out / "coupling.json").read_text())
    assert [r["mean"] for r in again["rows"]] == [r["mean"] for r in res["rows"]]


def test_finished_runs_are_reused_only_by_the_same_code(tmp_path, monkeypatch, capsys):
    """runs.jsonl resumes an interrupted benchmark; a run recorded by other code (another
    commit, other uncommitted changes, or no record of the code) is trained again rather than
    reported under the current commit."""
    from coupled_mamba.bench import environment

    out = tmp_path / "fusion"
    argv = ["bench", "fusion", *TINY, "--seeds", "1", "--models", "avg_fusion",
            "--out", str(out)]
    runs = out / "runs.jsonl"

    def run_with_code(code):
        monkeypatch.setattr(environment, "code_version", lambda: code)
        capsys.readouterr()
        assert main(argv) == 0
        return capsys.readouterr().out

    run_with_code("aaaa111")
    assert [json.loads(ln)["record"]["code"] for ln in _lines(runs)] == ["aaaa111"]
    assert "done before (runs.jsonl, code aaaa111" in run_with_code("aaaa111")
    assert len(_lines(runs)) == 1
    log = run_with_code("aaaa111+1234abcd")  # the same commit with uncommitted changes
    assert "from code aaaa111, the code is now aaaa111+1234abcd: training again" in log
    assert [json.loads(ln)["record"]["code"] for ln in _lines(runs)] == [
        "aaaa111", "aaaa111+1234abcd"]
    # A record without a code field (written before codes were recorded) is not trusted.
    items = [json.loads(ln) for ln in _lines(runs)]
    for item in items:
        item["record"].pop("code")
    runs.write_text("".join(json.dumps(item) + "\n" for item in items))
    assert "from code not recorded" in run_with_code("aaaa111+1234abcd")
    # Outside a git checkout nothing can be told apart: finished runs are reused.
    assert "done before" in run_with_code(None)
    # --any-code reuses runs of other code (to redraw stored results), and the report says so.
    argv.append("--any-code")
    assert "done before (runs.jsonl, code aaaa111+1234abcd" in run_with_code("bbbb222")
    md = (out / "fusion.md").read_text()
    assert "| commit bbbb222" in md
    assert "Runs trained by other code than this report's commit: avg_fusion: aaaa111+1234abcd" in md
    assert len(_lines(runs)) == 3  # nothing was trained for the last two commands


@pytest.mark.parametrize("protocol", ["same", "complete-train"])
def test_missing_bench_protocols(tmp_path, protocol):
    out = tmp_path / protocol
    assert main(["bench", "missing", *TINY, "--seeds", "1", "--models", "coupled_mamba",
                 "--rates", "0,0.6", "--protocol", protocol, "--out", str(out)]) == 0
    res = json.loads((out / "missing.json").read_text())
    rows = list(csv.DictReader(open(out / "missing.csv")))
    assert [float(r["x"]) for r in rows] == [0.0, 0.6]
    n_runs = len(_lines(out / "runs.jsonl"))
    if protocol == "same":
        assert n_runs == 2
        assert "missing modalities: rate 0.6" in " ".join(res["rows"][1]["notes"])
    else:
        assert n_runs == 1  # one model, evaluated at both rates
        (r,) = res["rows"]
        assert r["by_rate"]["0"]["mean"] == r["mean"]  # rate 0 is the ordinary test split
        assert r["by_rate"]["0.6"]["mean"]["MAE"] != r["mean"]["MAE"]  # dropping changed it
    assert "| 0.6 |" in (out / "missing.md").read_text()
    assert _png(out / "missing.png") == (round(PANEL_SIZE[1] * DPI),
                                         round(1.5 * PANEL_SIZE[0] * DPI))


def test_neighbourhood_masks():
    names = ["a", "b", "c"]
    pairs = neighbourhood_masks("pairs", names)
    assert [lab for lab, _ in pairs] == ["a-b", "a-c", "b-c"]
    for _, mask in pairs:
        assert all(mask[i][i] == 1 for i in range(3))
        assert mask == [list(r) for r in zip(*mask, strict=True)]  # symmetric
        assert sum(map(sum, mask)) == 5
    assert neighbourhood_masks("none", names) == [("none", [[1, 0, 0], [0, 1, 0], [0, 0, 1]])]
    assert neighbourhood_masks("all", names) == [("all", None)]
    assert neighbourhood_masks("c-a", names)[0][0] == "c-a"
    with pytest.raises(ValueError, match="neighbourhood"):
        neighbourhood_masks("a-z", names)


def test_grids_and_validation():
    s = coupling_settings(["dt_rank", "d_state"], {"dt_rank": [16, 8, 4], "d_state": [32]},
                          ["a", "b"], base_d_state=64)
    assert [(x.label, x.params) for x in s] == [
        ("N/16=4", {"dt_rank": 4}), ("N/8=8", {"dt_rank": 8}), ("N/4=16", {"dt_rank": 16}),
        ("32", {"d_state": 32, "dt_rank": None})]
    with pytest.raises(ValueError, match="alpha"):
        coupling_settings(["alpha"], {"alpha": [1.5]}, ["a", "b"], 64)
    with pytest.raises(ValueError, match="groups"):
        coupling_settings(["width"], {}, ["a", "b"], 64)
    with pytest.raises(ValueError, match="rates"):
        missing_settings(["coupled_mamba"], [1.0])
    with pytest.raises(ValueError, match="models"):
        missing_settings(["no_such_model"], [0.0])
    assert len(missing_settings(["coupled_mamba", "mamba_fusion"], [0, 0.5])) == 4
    assert len(missing_settings(["coupled_mamba"], [0, 0.5], "complete-train")) == 1


def test_setting_config_drops_fields_the_registry_fixes():
    base = load_config(None, ["model.coupling=sum", "model.d_model=16"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # create_model would warn about a conflicting coupling
        cfg = setting_config(base, Setting("fusion", "mamba_fusion", "mamba_fusion"))
    assert cfg.model.name == "mamba_fusion" and "coupling" not in cfg.model.params
    assert cfg.model.params["d_model"] == 16
    cfg = setting_config(base, Setting("missing", "x", "coupled_mamba",
                                       data={"missing_rate_train": 0.3}))
    assert cfg.model.params["coupling"] == "sum" and cfg.data.missing_rate_train == 0.3
    assert base.data.missing_rate_train == 0.0  # the base is not modified


def test_welch_p():
    assert welch_p([0.5, 0.5], [0.5, 0.5]) is None  # no variance: no test
    assert welch_p([0.1], [0.2, 0.3]) is None  # one seed: no test
    assert welch_p([0.10, 0.11, 0.09], [0.90, 0.91, 0.89]) < 1e-3
    assert welch_p([0.1, 0.3, 0.2], [0.15, 0.25, 0.2]) > 0.5
