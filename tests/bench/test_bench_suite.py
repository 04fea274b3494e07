"""`coupled-mamba bench suite`: records, reuse of finished pairs, table and plot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def _session_members(sid: int) -> list[int]:
    """PIDs of the processes in session ``sid`` other than its leader (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we read
        pid = int(stat.parent.name)
        if int(fields[3]) == sid and pid != sid:
            pids.append(pid)
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_workers(tmp_path):
    """SIGTERM to `bench suite` ends it with 143 and takes its training workers with it."""
    argv = [sys.executable, "-m", "coupled_mamba", "bench", "suite", "--settings",
            "cooccur_small", "--models", "coupled_mamba", "--seeds", "4", "--workers", "2",
            "--scale", "0.05", "--quiet", "--out", str(tmp_path / "suite"), *TINY,
            "--set", "train.epochs=5000"]  # longer than the test: workers are mid-training
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # The leader, the resource tracker and two workers once both are up.
        while len(_session_members(proc.pid)) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        time.sleep(3)  # past the workers' imports, into training
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _session_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _session_members(proc.pid) == [], "workers left running"
        assert code == 128 + signal.SIGTERM
    finally:
        proc.kill()
        for pid in _session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
