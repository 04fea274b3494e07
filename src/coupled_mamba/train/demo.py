"""``coupled-mamba demo``: Coupled Mamba against the uncoupled baseline on the embedded benchmark.

1. Generate the embedded timing benchmark (``coupled_mamba.data.make_synthetic``: a sentiment
   label whose sign depends on whether an audio emphasis follows a text cue within a few steps).
2. Write it to a temporary folder in the MMSA pickle layout and in the generic npz layout, read
   both back with the real loaders and check they agree, so the demo exercises the file formats.
3. Train ``coupled_mamba`` and ``mamba_fusion`` (the same model with coupling "none") with the
   small configuration :data:`DEMO_CONFIG` (mirrored in ``configs/demo.yaml``), and print their
   test metrics side by side.

Budget: under 3 minutes on 2 CPU cores, including the one-off compile of the CPU scan kernel.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np

# The demo's experiment config (configs/demo.yaml holds the same; a test keeps them equal).
DEMO_CONFIG: dict = {
    "data": {"format": "npz", "standardize": False},
    "model": {"name": "coupled_mamba", "d_model": 32, "n_layers": 2, "d_state": 16,
              "expand": 2, "d_conv": 4, "proj_hidden": 64, "head_hidden": 32,
              "dropout": 0.0, "coupling": "mean"},
    "train": {"recipe": "fixed", "epochs": 8, "batch_size": 128, "lr": 3.0e-3,
              "weight_decay": 0.0,
              "optimizer": "adam", "loss": "l1", "scheduler": "none", "select_on": "loss",
              "patience": 0, "seed": 1111, "n_seeds": 1, "device": "cpu",
              "tensorboard": False},
}
# Benchmark size: make_synthetic(n_train, n_valid, n_test, seq_len, seed). With fewer training
# samples or shorter sequences both models overfit before the coupled one finds the timing rule;
# this size leaves it room to find the rule within the demo's epochs (runs: docs/TRAINING.md).
DEMO_DATA = {"n_train": 6000, "n_valid": 500, "n_test": 1000, "seq_len": 24, "seed": 0}
DEMO_MODELS = ("coupled_mamba", "mamba_fusion")
TABLE_METRICS = ("Non0_acc_2", "Non0_F1_score", "Has0_acc_2", "Mult_acc_7", "MAE", "Corr")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import positive_int

    p.add_argument("--epochs", type=positive_int, help=f"epochs per model (default "
                   f"{DEMO_CONFIG['train']['epochs']})")
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

    from coupled_mamba.data import load_dataset, make_synthetic, write_mmsa_pickle, write_npz_folder

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
    data = make_synthetic(**DEMO_DATA)
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
        if name != "coupled_mamba":
            raw["model"].pop("coupling")  # the registry fixes it (mamba_fusion: "none")
        if args.epochs is not None:
            raw["train"]["epochs"] = args.epochs
        raw["train"]["progress"] = not args.quiet
        cfg = ExperimentConfig.from_dict(raw, "demo config")
        cfg.validate()
        prepared = prepare_loaded(from_npz, cfg.data, cfg.train.seed)
        print(f"\ntraining {name} ({cfg.train.epochs} epochs) ...", flush=True)
        t0 = time.perf_counter()
        out = Path(args.out) / name if args.out else None
        results[name] = (train_run(cfg, out, prepared=prepared, overwrite=True),
                         time.perf_counter() - t0)

    print("\ntest metrics (best valid-loss epoch; MOSI-style metrics, see README):")
    header = f"{'model':<15}{'params':>9}{'time s':>8}" + "".join(f"{k:>15}"
                                                                   for k in TABLE_METRICS)
    print(header)
    print("-" * len(header))
    for name, (r, secs) in results.items():
        row = f"{name:<15}{r['num_parameters']:>9,}{secs:>8.1f}"
        row += "".join(f"{r['test'][k]:>15.4f}" for k in TABLE_METRICS)
        print(row)
    n = torch.get_num_threads()
    print(f"\ndemo finished in {time.perf_counter() - t_start:.1f} s "
          f"({n} thread{'' if n == 1 else 's'})")
    return 0
