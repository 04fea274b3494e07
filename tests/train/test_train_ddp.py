"""torchrun with 2 CPU processes (gloo) gives the single-process result.

With the global batch split evenly over the ranks (40 training samples, batch 8 = 2 x 4) and no
dropout, every optimizer step sees the same global batch as in one process, and DDP's gradient
average equals the single-process batch mean up to float rounding. The test split has 13 samples,
so DistributedSampler pads one duplicate that the gathering must drop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from train_helpers import tiny_data, tiny_overrides

from coupled_mamba.data import write_npz_folder
from coupled_mamba.train import cli


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    data = tmp_path / "data"
    write_npz_folder(tiny_data("classification", n=(40, 12, 13)), data)
    # Dropout and input noise draw from per-rank random streams: off, so DDP must match exactly.
    sets = [a for s in tiny_overrides(epochs=2) + ["model.dropout=0.0", "model.input_noise=0.0"]
            for a in ("--set", s)]
    args = ["train", "--data", str(data), "--quiet", *sets]

    assert cli.main([*args, "--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "coupled_mamba", *args, "--out", str(tmp_path / "ddp"),
         "--set", "train.tensorboard=true"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = json.loads((tmp_path / "single/metrics.json").read_text())
    ddp = json.loads((tmp_path / "ddp/metrics.json").read_text())
    assert ddp["best_epoch"] == single["best_epoch"]
    for split in ("valid", "test"):
        assert set(ddp[split]) == set(single[split])
        for k, v in single[split].items():
            assert ddp[split][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (split, k)
    # Only rank 0 wrote files: one TensorBoard event file, one history.
    events = list((tmp_path / "ddp/seed_1111/tensorboard").iterdir())
    assert len(events) == 1
    # The result printed once (rank 0 only).
    assert proc.stdout.count("wrote ") == 1
