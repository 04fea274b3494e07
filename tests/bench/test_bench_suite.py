"""`coupled-mamba bench suite`: records, reuse of finished pairs, table and plot."""

from __future__ import annotations

import json

from coupled_mamba.bench.suite import suite_markdown, summarize_suite
from coupled_mamba.train import cli

TINY = ["--set", "model.d_model=8", "--set", "model.n_layers=1", "--set", "model.d_state=4",
        "--set", "model.proj_hidden=8", "--set", "model.head_hidden=8", "--set",
        "train.epochs=1", "--set", "train.batch_size=16"]


def test_suite_runs_records_and_resumes(tmp_path, capsys):
    out = tmp_path / "suite"
    argv = ["bench", "suite", "--settings", "cooccur_small", "--models",
            "coupled_mamba,mamba_fusion", "--seeds", "1", "--scale", "0.05", "--quiet",
            "--out", str(out), *TINY]
    assert cli.main(argv) == 0
    lines = (out / "runs.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert sorted(r["model"] for r in recs) == ["coupled_mamba", "mamba_fusion"]
    for r in recs:
        assert r["metric"] == "Accuracy" and r["oracle"] == 1.0 and 0 <= r["score"] <= 1
        # Keys no --set gave follow the data defaults in the worker, as in `train`.
        assert "train.scheduler=warmup_cosine" in r["defaults"], r["defaults"]
        assert not any(d.startswith("model.d_model") for d in r["defaults"])
        assert r["solved"] == (r["gap_closed"] >= 0.8)
    for name in ("suite.md", "suite.csv", "suite.json", "suite.png"):
        assert (out / name).stat().st_size > 0
    table = (out / "suite.md").read_text().split("\n\n")[0]  # the table, not the provenance
    assert "| cooccur_small | Accuracy |" in table and "solved (setting, seed) pairs" in table
    # A rerun with the same settings and code trains nothing and reports the same records.
    assert cli.main(argv) == 0
    assert (out / "runs.jsonl").read_text().splitlines() == lines
    assert (out / "suite.md").read_text().split("\n\n")[0] == table


def test_summary_counts_solved_pairs():
    recs = [{"setting": "s", "model": "a", "seed": i, "metric": "MAE", "score": sc,
             "oracle": 0.1, "pooled": 1.1, "gap_closed": (1.1 - sc) / 1.0,
             "solved": (1.1 - sc) >= 0.8} for i, sc in enumerate([0.2, 0.3, 0.9])]
    rows = summarize_suite(recs, ["a"])
    assert rows[0]["a"]["solved"] == 2 and rows[0]["a"]["n"] == 3
    md = suite_markdown(rows, ["a"])
    assert "(2/3)" in md and "**2/3** (67%)" in md


def test_unknown_setting_is_one_line(capsys, tmp_path):
    assert cli.main(["bench", "suite", "--settings", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--settings: unknown nope" in err[0]
