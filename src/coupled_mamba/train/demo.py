"""``coupled-mamba demo``: Coupled Mamba against the uncoupled baseline on the embedded benchmark.

1. Generate the embedded timing benchmark (``coupled_mamba.data.make_synthetic``: a sentiment
   label whose sign depends on whether an audio emphasis follows a text cue within a few steps).
2. Write it to a temporary folder in the MMSA pickle layout and in the generic npz layout, read
   both back with the real loaders and check they agree, so the demo exercises the file formats.
3. Train ``coupled_mamba`` and ``mamba_fusion`` (the same model with coupling "none") with the
   defaults that follow the data (``coupled_mamba.train.defaults``) over :data:`DEMO_CONFIG`'s
   shorter schedule (mirrored in ``configs/demo.yaml``), and print their test metrics side by
   side with the share of the gap between a predictor that ignores cross-modal timing and the
   oracle that each closes (``coupled_mamba.data.interaction.References``).

Budget: about 6 minutes with one thread on a 2-core machine, the one-off compile of the CPU scan
kernel included.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np

from coupled_mamba.data.interaction import SOLVED_GAP, SUITE, make_interaction, scaled

# The demo's experiment config (configs/demo.yaml holds the same; a test keeps them equal): the
# data defaults with a shorter schedule than their 100 epochs, to fit the demo's time budget.
DEMO_CONFIG: dict = {
    "data": {"format": "npz"},
    "model": {"name": "coupled_mamba"},
    "train": {"recipe": "auto", "epochs": 30, "seed": 1111, "n_seeds": 1, "device": "cpu",
              "tensorboard": False},
}
# Benchmark size (split sizes, L, data seed) of the embedded setting; the data seed is fixed, so
# --seed changes only the training.
DEMO_DATA = {"n_train": 6000, "n_valid": 500, "n_test": 1000, "seq_len": 24, "seed": 0}
DEMO_MODELS = ("coupled_mamba", "mamba_fusion")
TABLE_METRICS = ("Non0_acc_2", "Has0_acc_2", "Mult_acc_7", "MAE", "Corr")


def demo_data():
    """The demo's benchmark (:data:`DEMO_DATA`) and its test-split References (oracle and the best
    predictor without cross-modal timing), from the interaction suite's embedded setting."""
    d = DEMO_DATA
    setting = scaled(SUITE["embedded"], n_train=d["n_train"], n_valid=d["n_valid"],
                     n_test=d["n_test"], seq_len=d["seq_len"])
    return make_interaction(setting, seed=d["seed"])


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import positive_int

    p.add_argument("--epochs", type=positive_int, help=f"epochs per model (default "
                   f"{DEMO_CONFIG['train']['epochs']})")
    p.add_argument("--seed", type=int, help=f"training seed (default "
                   f"{DEMO_CONFIG['train']['seed']}; the data stay the same)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: these small models gain little from more, "
                   "and lose a lot on a busy machine)")
    p.add_argument("--out", help="keep the two runs in this folder (default: not written)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _same_data(a, b) -> None:
    """The pickle and npz round trips must give the same arrays (a check of both loaders)."""
    for split in ("train", "valid", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        for m in a.modality_names:
            if not np.array_equal(sa.modalities[m], sb.modalities[m]):
                raise RuntimeError(f"demo: modality {m!r} of {split} differs between the MMSA "
                                   "pickle and npz round trips")
        if not np.allclose(sa.labels, sb.labels):
            raise RuntimeError(f"demo: labels of {split} differ between the round trips")


def _warm_up_scan() -> float:
    """Seconds to first run the coupled scan on CPU: the one-off C++ kernel build (or the cache
    load), kept out of the models' training times."""
    import torch

    from coupled_mamba.ops import coupled_selective_scan

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    M, Bt, D, N, L = 3, 1, 2, 2, 4
    coupled_selective_scan(torch.randn(M, Bt, D, L, generator=g),
                           torch.randn(M, Bt, D, L, generator=g),
                           -torch.rand(M, D, N, generator=g) - 0.5,
                           torch.randn(M, Bt, N, L, generator=g),
                           torch.randn(M, Bt, N, L, generator=g), delta_softplus=True)
    return time.perf_counter() - t0


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from coupled_mamba.data import load_dataset, write_mmsa_pickle, write_npz_folder

    from .config import ExperimentConfig
    from .data_prep import prepare_loaded
    from .run import train_run
    from .run_dir import check_out_folder

    if args.out:
        check_out_folder(Path(args.out))
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    print(f"CPU scan kernel ready in {_warm_up_scan():.1f} s (compiled once, then cached)",
          flush=True)
    data, refs = demo_data()
    with tempfile.TemporaryDirectory(prefix="coupled_mamba_demo_") as tmp:
        pkl = write_mmsa_pickle(data, Path(tmp) / "synthetic_aligned.pkl")
        npz = write_npz_folder(data, Path(tmp) / "synthetic_npz")
        from_pkl = load_dataset(pkl, format="mmsa", metric_family="mosi")
        from_npz = load_dataset(npz, format="npz", metric_family="mosi")
    _same_data(from_pkl, from_npz)
    sizes = " / ".join(str(len(s.labels)) for s in from_npz.splits().values())
    dims = ", ".join(f"{m} {d}" for m, d in from_npz.input_dims.items())
    print(f"embedded timing benchmark: {sizes} samples (train/valid/test), L = "
          f"{from_npz.seq_len}, features {dims}; read back from the MMSA pickle and npz layouts "
          "(identical)")

    results = {}
    for name in DEMO_MODELS:
        raw = copy.deepcopy(DEMO_CONFIG)
        raw["model"]["name"] = name
        if args.epochs is not None:
            raw["train"]["epochs"] = args.epochs
        if args.seed is not None:
            raw["train"]["seed"] = args.seed
        raw["train"]["progress"] = not args.quiet
        cfg = ExperimentConfig.from_dict(raw, "demo config")
        cfg.validate()
        prepared = prepare_loaded(from_npz, cfg.data, cfg.train.seed)
        print(f"\ntraining {name} ({cfg.train.epochs} epochs) ...", flush=True)
        t0 = time.perf_counter()
        out = Path(args.out) / name if args.out else None
        results[name] = (train_run(cfg, out, prepared=prepared, overwrite=True),
                         time.perf_counter() - t0)

    print(f"\ntest metrics (best validation epoch; MOSI-style metrics, see README). References: "
          f"MAE {refs.pooled:.3f} without cross-modal timing, {refs.oracle:.3f} for the "
          f"oracle; the rule counts as found when a model closes {SOLVED_GAP:.0%} of that gap:")
    header = (f"{'model':<15}{'params':>9}{'time s':>8}"
              + "".join(f"{k:>12}" for k in TABLE_METRICS) + f"{'gap closed':>12}{'rule':>7}")
    print(header)
    print("-" * len(header))
    for name, (r, secs) in results.items():
        gap = refs.gap_closed(r["test"]["MAE"])
        row = f"{name:<15}{r['num_parameters']:>9,}{secs:>8.1f}"
        row += "".join(f"{r['test'][k]:>12.4f}" for k in TABLE_METRICS)
        row += f"{gap:>12.2f}{'found' if refs.solved(r['test']['MAE']) else 'not':>7}"
        print(row)
    n = torch.get_num_threads()
    print(f"\ndemo finished in {time.perf_counter() - t_start:.1f} s "
          f"({n} thread{'' if n == 1 else 's'})")
    return 0
