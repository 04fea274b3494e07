"""The demo end to end on a shrunken benchmark (the real one takes minutes)."""

from __future__ import annotations

import argparse

from coupled_mamba.train import demo


def test_demo_runs_and_prints_the_table(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(demo, "DEMO_DATA", {"n_train": 64, "n_valid": 16, "n_test": 16,
                                            "seq_len": 14, "seed": 0})
    args = argparse.Namespace(epochs=1, seed=None, threads=1, out=str(tmp_path), quiet=True)
    assert demo.run_demo(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "defaults from the data (64 training samples" in captured.err  # the demo's recipe
    assert "read back from the MMSA pickle and npz layouts (identical)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(demo.DEMO_MODELS)]
    assert [r[0] for r in rows] == list(demo.DEMO_MODELS)
    assert all(len(r) == 3 + len(demo.TABLE_METRICS) + 2 for r in rows)
    assert all(r[-1] in ("found", "not") for r in rows)
    for name in demo.DEMO_MODELS:  # --out keeps both runs
        assert (tmp_path / name / "metrics.json").is_file()
