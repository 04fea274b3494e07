"""The trainer on a CUDA device: fp32 and bf16 autocast train, evaluate and predict; a bare
``--device cuda`` resolves to an indexed device. Skipped where no CUDA device exists."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from train_helpers import tiny_overrides

from coupled_mamba.train import cli
from coupled_mamba.train.distributed import resolve_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_resolve_device_gives_an_index():
    dev = resolve_device("cuda")
    assert dev.type == "cuda" and dev.index is not None
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("bf16", [False, True])
def test_train_evaluate_predict_on_cuda(tmp_path, npz_data, bf16):
    data = npz_data("classification")
    sets = [a for s in tiny_overrides(device="cuda", bf16=bf16) + ["model.scan_impl=auto"]
            for a in ("--set", s)]
    run = tmp_path / "run"
    assert cli.main(["train", "--data", data, "--out", str(run), *sets]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert all(v == v for v in m["test"].values())  # no NaN
    assert cli.main(["evaluate", "--run", str(run), "--data", data, "--device", "cuda"]) == 0
    ev = json.loads((run / "evaluate_test.json").read_text())["metrics"]
    assert ev["Accuracy"] == pytest.approx(m["test"]["Accuracy"], abs=1e-6)
    assert cli.main(["predict", "--run", str(run), "--data", data, "--device", "cuda", "--out",
                     str(tmp_path / "p.csv"), "--split", "test"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "p.csv")))) == 12
