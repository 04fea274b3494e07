"""CPU training step of two versions of this package, timed alternately in one script.

    python -m coupled_mamba.bench.step_compare --base REV --out benchmarks/results/step_compare.json

Shapes: B batch, L length, M = 3 modalities. Models: the default model (``CoupledMambaConfig``'s
defaults: d_model 128, 3 layers, d_state 64; B = 32, L = 50) and the demo model (the small model
of the data defaults, ``coupled_mamba.train.defaults``; B = 128 and L = 24 as the demo trains
it), both on the
synthetic benchmark's input widths (16, 8, 12). A step is zero_grad, forward, L1 loss, backward
and an Adam update.

``--base REV`` is checked out into a temporary ``git worktree``; each version runs in a worker
process of its own (``PYTHONPATH`` pointing at its ``src``, its own torch extensions folder,
``--threads`` torch threads). The workers build their models from the same seed and warm up
(``--warmup`` steps); then, for ``--rounds`` rounds, the two are asked in turn, in a random order
per round, to time ``--steps`` steps each, so that both see the same load on shared cores. The
medians over rounds and the ratio base / head are printed and written to ``--out`` with the
environment (commits, date, machine, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Model fields (CoupledMambaConfig) and batch shape of each benchmarked model.
MODELS = {
    "default": ({}, {"batch": 32, "length": 50}),
    "demo": ({"d_model": 32, "n_layers": 2, "d_state": 16, "proj_hidden": 64, "head_hidden": 32},
             {"batch": 128, "length": 24}),
}
INPUT_DIMS = [16, 8, 12]  # the synthetic benchmark's text, audio, vision widths

# The worker: reads "name steps" lines, answers with one JSON line of per-step seconds.
_WORKER = r"""
import json, sys, time
import torch
from coupled_mamba import create_model

torch.set_num_threads(int(sys.argv[1]))
specs = json.loads(sys.argv[2])
runs = {}
for name, spec in specs.items():
    torch.manual_seed(0)
    model = create_model("coupled_mamba", **spec["fields"]).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    B, L = spec["batch"], spec["length"]
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(B, L, d, generator=g) for d in spec["fields"]["input_dims"]]
    y = torch.randn(B, 1, generator=g)

    def step(model=model, opt=opt, xs=xs, y=y):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.l1_loss(model(xs), y)
        loss.backward()
        opt.step()

    runs[name] = step
print("ready", flush=True)
for line in sys.stdin:
    name, steps = line.split()
    times = []
    for _ in range(int(steps)):
        t = time.perf_counter()
        runs[name]()
        times.append(time.perf_counter() - t)
    print(json.dumps(times), flush=True)
"""


def model_specs() -> dict:
    """{name: {"fields": config fields, "batch": B, "length": L}} for :data:`MODELS`."""
    return {name: {"fields": {**fields, "input_dims": INPUT_DIMS}, **shape}
            for name, (fields, shape) in MODELS.items()}


class Worker:
    """One version of the package in a child process (see the module docstring)."""

    def __init__(self, src: Path, ext_dir: Path, threads: int, specs: dict):
        env = {**os.environ, "PYTHONPATH": str(src), "TORCH_EXTENSIONS_DIR": str(ext_dir),
               "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(threads), json.dumps(specs)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"worker for {src} failed to start")

    def time(self, name: str, steps: int) -> list[float]:
        self.proc.stdin.write(f"{name} {steps}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def compare(repo: Path, base: str, threads: int, warmup: int, steps: int, rounds: int,
            seed: int = 0) -> dict:
    """Time both versions alternately; returns the result record (module docstring)."""
    from .environment import environment_info

    specs = model_specs()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="step_compare_") as tmp:
        tree = Path(tmp) / "base"
        _git(repo, "worktree", "add", "--detach", str(tree), base)
        try:
            workers = {"base": Worker(tree / "src", Path(tmp) / "ext_base", threads, specs),
                       "head": Worker(repo / "src", Path(tmp) / "ext_head", threads, specs)}
            times = {v: {m: [] for m in specs} for v in workers}
            for w in workers.values():
                for m in specs:
                    w.time(m, warmup)
            for _ in range(rounds):
                for m in specs:
                    for v in rng.sample(list(workers), len(workers)):
                        times[v][m].append(statistics.median(workers[v].time(m, steps)))
            for w in workers.values():
                w.close()
        finally:
            _git(repo, "worktree", "remove", "--force", str(tree))
    medians = {v: {m: statistics.median(t) for m, t in per.items()} for v, per in times.items()}
    return {
        "environment": environment_info("cpu", threads),
        "base": {"rev": base, "commit": _git(repo, "rev-parse", base)},
        "head": {"commit": _git(repo, "rev-parse", "HEAD"),
                 "dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))},
        "settings": {"threads": threads, "warmup": warmup, "steps": steps, "rounds": rounds,
                     "models": specs},
        "median_step_s": medians,
        "base_over_head": {m: medians["base"][m] / medians["head"][m] for m in specs},
        "round_medians_s": times,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare against (e.g. main)")
    p.add_argument("--out", required=True, help="result JSON file")
    p.add_argument("--repo", default=".", help="the repository (default: the current folder)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per turn (their median counts)")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    repo = Path(args.repo).resolve()
    result = compare(repo, args.base, args.threads, args.warmup, args.steps, args.rounds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'model':<8} {'base ms':>9} {'head ms':>9} {'base/head':>9}")
    for m, ratio in result["base_over_head"].items():
        b, h = result["median_step_s"]["base"][m], result["median_step_s"]["head"][m]
        print(f"{m:<8} {b * 1e3:>9.1f} {h * 1e3:>9.1f} {ratio:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
