"""`coupled-mamba bench efficiency` end to end on a tiny setting, plus the sweep's bookkeeping."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from coupled_mamba.bench import efficiency as eff
from coupled_mamba.bench.efficiency import (
    EfficiencySettings,
    add_ratios,
    check_targets,
    run_efficiency,
)
from coupled_mamba.bench.memory import run_isolated
from coupled_mamba.bench.plotting import DPI, PANEL_SIZE
from coupled_mamba.train.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--batch", "1", "--input-dims", "6,5,4", "--d-model", "16", "--d-state", "8",
        "--n-layers", "1", "--repeats", "2", "--budget", "30"]


def _png_shape(path):
    img = mpimg.imread(path)
    return img.shape


def test_cli_writes_tables_and_two_panel_plots(tmp_path):
    out = tmp_path / "eff"
    rc = main(["bench", "efficiency", "--lengths", "8,24", "--no-isolate", "--out", str(out),
               *TINY])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "efficiency.csv")))
    assert len(rows) == 2 * 2 * 4  # modes x lengths x default variants
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["variant"] for r in rows} == set(eff.DEFAULT_VARIANTS)
    for r in rows:
        assert float(r["time_ms"]) > 0 and float(r["total_mb"]) > float(r["static_mb"]) > 0
    # Ratios are filled from the same run: SDPA against itself is exactly 1.
    sdpa = [r for r in rows if r["variant"] == "cross_attention_sdpa"]
    assert all(float(r["speedup_vs_sdpa"]) == 1.0 for r in sdpa)
    res = json.loads((out / "efficiency.json").read_text())
    assert res["environment"]["threads"] == 1 and res["settings"]["lengths"] == [8, 24]
    assert len(res["targets"]) == 2
    md = (out / "efficiency.md").read_text()
    assert "### infer" in md and "### train" in md
    expected = (round(PANEL_SIZE[1] * DPI), round(2 * PANEL_SIZE[0] * DPI))
    for mode in ("infer", "train"):
        png = out / f"efficiency_{mode}.png"
        assert png.stat().st_size > 0
        shape = _png_shape(png)
        assert shape[:2] == expected and shape[2] in (3, 4)
        assert mpimg.imread(png)[..., :3].std() > 0.01  # something was drawn


def test_isolated_point_memory_grows_with_the_attention_matrix():
    # Materialised attention holds (B, H, L, L) weights: 8x the length -> >= 1 MiB more here,
    # measured as the child's peak RSS.
    settings = EfficiencySettings(batch=1, input_dims=[6, 5], d_model=16, d_state=8,
                                  n_layers=1, repeats=1)
    import dataclasses

    s = dataclasses.asdict(settings)
    res = {}
    for L in (64, 512):
        spec = {"kind": "efficiency", "variant": "cross_attention_materialized", "mode": "infer",
                "L": L, "settings": s, "budget_s": 30}
        res[L] = run_isolated(spec, timeout=120)
        assert res[L]["status"] == "ok", res[L]
    if res[64]["memory_method"] == "clear_refs":
        attn_mb = 4 * 512 * 512 * 4 / 2**20  # H=4 heads of (512, 512) float32 weights
        assert res[512]["work_mb"] - res[64]["work_mb"] > attn_mb
    assert res[512]["work_mb"] > res[64]["work_mb"] > 0


def _fake_measure(table):
    """A stand-in for one measured point: (variant, L) -> result dict."""
    def fake(spec):
        key = (spec["variant"], spec["L"])
        return dict(table.get(key, {"status": "ok", "time_ms": 1.0, "total_mb": 10.0,
                                    "work_mb": 5.0, "static_mb": 5.0}))
    return fake


def test_sweep_skips_after_oom_and_when_the_budget_would_be_exceeded(monkeypatch):
    table = {
        ("cross_attention_materialized", 16): {"status": "OOM", "error": "can't allocate"},
        # 10 s per call at L=16 -> 160 s predicted at L=64 (quadratic): over the 20 s budget.
        ("cross_attention_sdpa", 16): {"status": "ok", "time_ms": 10_000.0, "total_mb": 1.0,
                                       "work_mb": 1.0, "static_mb": 0.0},
    }
    monkeypatch.setattr(eff, "_measure_guarded", _fake_measure(table))
    res = run_efficiency(EfficiencySettings(lengths=[16, 64], modes=["infer"], isolate=False,
                                            point_budget_s=20), log=lambda s: None)
    by = {(r["variant"], r["L"]): r for r in res["rows"]}
    assert by[("cross_attention_materialized", 64)]["status"] == "skipped"
    assert "OOM at L=16" in by[("cross_attention_materialized", 64)]["error"]
    assert by[("cross_attention_sdpa", 64)]["status"] == "skipped"
    assert "budget" in by[("cross_attention_sdpa", 64)]["error"]
    assert by[("coupled_mamba", 64)]["status"] == "ok"  # linear model: 4 ms predicted


def test_ratios_and_cpu_targets():
    rows = [
        {"mode": "infer", "L": L, "variant": v, "status": "ok", "time_ms": t, "total_mb": m}
        for L, v, t, m in [
            (500, "coupled_mamba", 60.0, 40.0), (500, "cross_attention_sdpa", 50.0, 80.0),
            (500, "cross_attention_materialized", 100.0, 160.0),
            (1000, "coupled_mamba", 100.0, 80.0), (1000, "cross_attention_sdpa", 150.0, 60.0),
        ]
    ]
    add_ratios(rows)
    c500, c1000 = rows[0], rows[3]
    assert c500["speedup_vs_sdpa"] == pytest.approx(50 / 60)
    assert c500["mem_saving_vs_materialized"] == pytest.approx(0.75)
    assert c1000["speedup_vs_sdpa"] == pytest.approx(1.5)
    assert "speedup_vs_materialized" not in c1000  # no materialised point at L=1000
    faster, lighter = check_targets(rows, "cpu")
    assert faster["met"] is True  # only L >= 1000 counts: 1.5x
    assert lighter["met"] is False  # 80 MiB vs 60 MiB at L=1000
    gpu = check_targets(rows, "cuda")
    assert gpu[0]["met"] is None  # the L=1000 materialised point is missing


@pytest.mark.parametrize("kw, match", [
    ({"variants": ["nope"]}, "variants"), ({"modes": ["fit"]}, "modes"),
    ({"lengths": [0]}, "lengths"), ({"input_dims": [8]}, "input_dims"),
    ({"d_model": 30, "n_heads": 4}, "n_heads"), ({"batch": 0}, "batch"),
])
def test_settings_reject_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        EfficiencySettings(**kw)


def test_gpu_script_smoke_runs_on_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, "-m", "coupled_mamba.bench.gpu_efficiency",
                           "--smoke", "--out", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scan_impl auto ->" in proc.stdout
    if "scan_impl auto -> cpu" in proc.stdout:  # the pure-PyTorch scan is timed beside it
        assert "coupled_mamba_torch_scan" in proc.stdout
    res = json.loads((tmp_path / "efficiency.json").read_text())
    assert {r["mode"] for r in res["rows"]} == {"infer", "train"}
    assert all(r["status"] == "ok" for r in res["rows"])
    assert (tmp_path / "efficiency_infer.png").stat().st_size > 0
