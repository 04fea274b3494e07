"""GPU check of the trainer: the demo's setting on CUDA in fp32 (twice) and with bf16 autocast.

Writes the embedded benchmark as an npz folder, runs ``coupled-mamba train`` on it with
``--device cuda`` (fp32 twice, to see whether two GPU runs agree, then ``train.bf16=true``),
then ``evaluate`` and ``predict`` on the GPU, and prints one JSON line per run with the test
metrics and the wall time. Run where a GPU is available:

    python -m coupled_mamba.bench.gpu_train_check --out /tmp/gpu_check \
        [--scan-impl auto|torch|triton]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..data import make_synthetic, write_npz_folder
from ..train import cli
from ..train.demo import DEMO_DATA


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--scan-impl", default="auto")
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    out = Path(args.out)
    data = out / "data"
    write_npz_folder(make_synthetic(**DEMO_DATA), data)
    base = ["train", "--config", str(Path(__file__).parents[3] / "configs" / "demo.yaml"),
            "--data", str(data), "--device", "cuda", "--quiet", "--epochs", str(args.epochs),
            "--set", f"model.scan_impl={args.scan_impl}"]
    results = {}
    for name, extra in (("fp32_a", []), ("fp32_b", []), ("bf16", ["--set", "train.bf16=true"])):
        t0 = time.perf_counter()
        code = cli.main([*base, *extra, "--out", str(out / name)])
        secs = time.perf_counter() - t0
        m = json.loads((out / name / "metrics.json").read_text()) if code == 0 else {}
        results[name] = m.get("test")
        print(json.dumps({"run": name, "exit": code, "seconds": round(secs, 1),
                          "best_epoch": m.get("best_epoch"), "test": m.get("test")}))
    same = results["fp32_a"] is not None and results["fp32_a"] == results["fp32_b"]
    print(json.dumps({"fp32_runs_identical": same}))
    assert cli.main(["evaluate", "--run", str(out / "fp32_a"), "--data", str(data),
                     "--device", "cuda"]) == 0
    assert cli.main(["predict", "--run", str(out / "bf16"), "--data", str(data), "--device",
                     "cuda", "--out", str(out / "preds.csv"), "--split", "test"]) == 0
    print(torch.cuda.get_device_name(), "torch", torch.__version__,
          "max memory allocated MiB", round(torch.cuda.max_memory_allocated() / 2**20, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
