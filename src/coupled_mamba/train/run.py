"""Experiments: train K seeds into a run directory, evaluate a run, predict with a run.

Run directory layout (rank 0 writes everything)::

    RUN_DIR/
      config.yaml            the resolved experiment config (data/model/train)
      data.json              fingerprint of the data (train.fingerprint); --resume checks it
      metrics.json           {"test", "valid", "best_epoch", ...}; with several seeds also
                             "per_seed", "mean" and "std" (population std, as MMSA reports)
      seed_<s>/
        metrics.json         this seed's results
        history.csv          per-epoch train/valid loss and metrics, learning rate, time
        tensorboard/         the same as TensorBoard events (when tensorboard is installed)
        last.safetensors     resumable checkpoint (model, best weights, optimizer, scheduler, RNG)
        best/                the selected model: config.json + model.safetensors
                             (coupled_mamba.models.from_pretrained reads it)
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coupled_mamba.metrics import summarize

from ..errors import UserInputError
from .config import DATA_DERIVED_MODEL_KEYS, ExperimentConfig, build_model_config
from .data_prep import MISSING_SEED_OFFSET, PreparedData, check_compatible, prepare_data
from .defaults import apply_data_defaults
from .distributed import DistInfo, barrier, init_distributed, resolve_device
from .fingerprint import (
    FINGERPRINT_NAME,
    check_fingerprint,
    data_fingerprint,
    read_fingerprint,
    write_fingerprint,
)
from .run_dir import (
    check_out_folder,
    check_resume_config,
    clear_run,
    holds_run,
    read_config,
    refusal_message,
    write_json,
)
from .trainer import NonFiniteLossError, Trainer, check_selection, loss_function, selection_key


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool):
    """torch.use_deterministic_algorithms for the duration of a run (restored afterwards)."""
    previous = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        # cuBLAS needs this to be deterministic; it must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=prev_warn)


def build_model(cfg: ExperimentConfig, prepared: PreparedData) -> torch.nn.Module:
    """The model named in ``cfg.model`` sized from the data (names from the registry)."""
    from coupled_mamba.models import create_model

    config = build_model_config(cfg.model, prepared.input_dims, prepared.modality_names,
                                prepared.task, prepared.num_outputs)
    return create_model(cfg.model.name, config)


def resolve_model_section(cfg: ExperimentConfig, prepared: PreparedData) -> ExperimentConfig:
    """A copy of ``cfg`` whose model section lists every model hyperparameter actually used:
    the config's defaults, the user's values and the fields the registry name fixes (e.g.
    ``coupling: none`` for mamba_fusion). Raises UserInputError for unknown keys or values."""
    from coupled_mamba.models import model_entry

    mc = build_model_config(cfg.model, prepared.input_dims, prepared.modality_names,
                            prepared.task, prepared.num_outputs)
    params = {k: v for k, v in mc.to_dict().items() if k not in DATA_DERIVED_MODEL_KEYS}
    params.update(model_entry(cfg.model.name).overrides)
    out = copy.deepcopy(cfg)
    out.model.params = params
    return out


def _log(msg: str, dist: DistInfo) -> None:
    if dist.is_main:
        print(msg, file=sys.stderr, flush=True)


def train_run(cfg: ExperimentConfig, out_dir: str | Path | None, *, resume: bool = False,
              overwrite: bool = False, prepared: PreparedData | None = None,
              trust_pickle: bool = False,
              callbacks: Sequence[Callable] = (),
              model_builder: Callable[[ExperimentConfig, PreparedData], torch.nn.Module]
              | None = None) -> dict[str, Any]:
    """Train ``cfg.train.n_seeds`` seeds and return (and write) the results dict.

    Args:
        cfg: a resolved experiment config (``load_config``).
        out_dir: the run directory (None: write nothing, e.g. for the demo or tests).
        resume: continue an interrupted run in ``out_dir`` (finished seeds are skipped).
        overwrite: replace the run ``out_dir`` holds: its files (config.yaml, metrics.json,
            data.json, evaluate_*.json, seed_*/) are deleted once every check has passed.
        prepared: already prepared data (otherwise loaded from ``cfg.data``).
        trust_pickle: load an MMSA pickle with the standard unpickler (runs code in the file).
        callbacks: passed to every seed's Trainer.
        model_builder: builds the model (default :func:`build_model`).

    Returns:
        the content of ``metrics.json`` (see the module docstring).
    """
    builder = model_builder or build_model
    out = Path(out_dir) if out_dir is not None else None
    t = cfg.train
    device = resolve_device(t.device)
    dist = init_distributed(device)
    if out is not None:
        check_out_folder(out)
        if not resume and holds_run(out) and not overwrite:
            raise UserInputError(refusal_message(out))
    # Every check that can fail on the user's input runs before anything is written.
    if prepared is None:
        prepared = prepare_data(cfg.data, seed=t.seed, trust_pickle=trust_pickle)
    cfg = copy.deepcopy(cfg)
    applied = apply_data_defaults(cfg, prepared)
    t = cfg.train
    if builder is build_model:
        cfg = resolve_model_section(cfg, prepared)
        build_model(cfg, prepared)  # a model the config cannot build fails before any write
    loss_function(prepared.task, t.loss)
    check_selection(t.select_on, prepared.metric_family, prepared.task, prepared.train.labels,
                    valid_labels=prepared.valid.labels)
    fingerprint = data_fingerprint(prepared, cfg.data.path) if out is not None else None
    if out is not None and resume:
        check_resume_config(out, cfg)
        saved = read_fingerprint(out)
        if saved is None:
            _log(f"note: {out} has no {FINGERPRINT_NAME} (an older run): the data cannot be "
                 "checked against the one it was trained on", dist)
        else:
            check_fingerprint(saved, fingerprint, out)
    if applied:
        _log(f"defaults from the data ({len(prepared.train)} training samples, "
             f"dims {prepared.input_dims}): " + ", ".join(applied), dist)
    if out is not None:
        if dist.is_main:
            if overwrite and not resume:
                clear_run(out)
            out.mkdir(parents=True, exist_ok=True)
            write_fingerprint(out, fingerprint)
            cfg.save(out / "config.yaml")
        barrier(dist)
    seeds = [t.seed + i for i in range(t.n_seeds)]
    per_seed = []
    with deterministic_mode(t.deterministic):
        for note in prepared.notes:
            _log(f"note: {note}", dist)
        for seed in seeds:
            seed_dir = out / f"seed_{seed}" if out is not None else None
            done = seed_dir / "metrics.json" if seed_dir is not None else None
            if resume and done is not None and done.is_file():
                _log(f"seed {seed}: already finished, reading {done}", dist)
                try:
                    per_seed.append(json.loads(done.read_text()))
                except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                    raise UserInputError(f"{done}: not valid JSON ({exc}); delete it to train "
                                         f"seed {seed} again, or start over with --overwrite") \
                        from None
                continue
            result = _train_seed(cfg, prepared, seed, seed_dir, resume, dist, device, callbacks,
                                 builder)
            if seed_dir is not None and dist.is_main:
                write_json(done, result)
            per_seed.append(result)
    summary = _summary(cfg, prepared, per_seed)
    summary["data_defaults"] = applied
    if out is not None and dist.is_main:
        write_json(out / "metrics.json", summary)
    barrier(dist)
    return summary


def _train_seed(cfg, prepared, seed, seed_dir, resume, dist, device, callbacks, builder):
    t = cfg.train
    seed_everything(seed)
    model = builder(cfg, prepared)
    ranks = getattr(getattr(model, "config", None), "input_ranks", None)
    if hasattr(model, "set_input_statistics") and (cfg.data.standardize or ranks and any(ranks)):
        model.set_input_statistics(*prepared.input_transform(ranks, cfg.data.standardize))
    # Dropout streams differ between ranks (model init above is the same on every rank, and
    # DDP broadcasts rank 0's weights anyway).
    torch.manual_seed(int(np.random.SeedSequence([seed, dist.rank]).generate_state(1)[0]))
    if seed_dir is not None and dist.is_main:
        seed_dir.mkdir(parents=True, exist_ok=True)
    barrier(dist)
    summary_line = model.summary() if hasattr(model, "summary") else type(model).__name__
    _log(f"seed {seed}: {summary_line}", dist)
    trainer = Trainer(model, t, task=prepared.task, metric_family=prepared.metric_family,
                      modality_names=prepared.modality_names, device=device, seed=seed,
                      dist=dist, out_dir=seed_dir, callbacks=callbacks)
    t0 = time.perf_counter()
    try:
        fit = trainer.fit(prepared.train, prepared.valid, resume=resume)
    except NonFiniteLossError as exc:
        if cfg.data.path is None:
            raise
        raise NonFiniteLossError(f"{cfg.data.path}: {exc}") from None
    train_time = time.perf_counter() - t0
    valid = trainer.evaluate(prepared.valid, desc="valid").metrics
    test = trainer.evaluate(prepared.test, desc="test").metrics if prepared.test is not None \
        else None
    key, higher = selection_key(t.select_on, prepared.metric_family)
    result = {
        "seed": seed,
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "stopped_early": fit.stopped_early,
        "selection": {"key": key, "higher_is_better": higher, "score": fit.best_score},
        "valid": valid,
        "test": test,
        "train_time_s": round(train_time, 3),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    shown = test if test is not None else valid
    _log(f"seed {seed}: best epoch {fit.best_epoch}/{fit.epochs_run}, "
         f"{'test' if test is not None else 'valid'} "
         + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), dist)
    return result


def _summary(cfg: ExperimentConfig, prepared: PreparedData, per_seed: list[dict]) -> dict:
    head = {"dataset": prepared.name, "model": cfg.model.name, "task": prepared.task,
            "metric_family": prepared.metric_family, "modalities": prepared.modality_names,
            "seeds": [r["seed"] for r in per_seed], "notes": prepared.notes}
    if len(per_seed) == 1:
        return {**head, **per_seed[0]}
    mean, std = {}, {}
    for split in ("valid", "test"):
        runs = [r[split] for r in per_seed if r[split] is not None]
        if runs:
            s = summarize([{k: (np.nan if v is None else v) for k, v in r.items()}
                           for r in runs])
            mean[split], std[split] = s["mean"], s["std"]
        else:
            mean[split] = std[split] = None
    return {**head, "test": mean["test"], "valid": mean["valid"],
            "best_epoch": [r["best_epoch"] for r in per_seed],
            "mean": mean, "std": std, "per_seed": per_seed}


# ---- using a finished run ------------------------------------------------------------------

def load_run(run_dir: str | Path) -> tuple[ExperimentConfig, list[Path]]:
    """The run's config and its seed directories that hold a selected model (``best/``)."""
    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"not a run directory (no config.yaml): {run}")
    cfg = read_config(cfg_path)
    seeds = sorted((p for p in run.glob("seed_*") if (p / "best" / "config.json").is_file()),
                   key=lambda p: int(p.name.split("_", 1)[1]))
    if not seeds:
        raise FileNotFoundError(f"{run} holds no trained model (no seed_*/best/config.json)")
    return cfg, seeds


def _load_model(seed_dir: Path, device: torch.device) -> torch.nn.Module:
    from coupled_mamba.models import from_pretrained

    return from_pretrained(str(seed_dir / "best")).to(device).eval()


def _run_data(cfg: ExperimentConfig, data_path, trust_pickle: bool) -> PreparedData:
    """The data at ``data_path`` read with the run's data settings, without missing-modality
    masks (evaluate applies its own)."""
    dcfg = cfg.data
    dcfg.path = str(data_path)
    dcfg.missing_rate_train = dcfg.missing_rate_test = 0.0
    return prepare_data(dcfg, seed=cfg.train.seed, trust_pickle=trust_pickle)


def _model_trainer(cfg, prepared, seed_dir, device, data_path) -> Trainer:
    model = _load_model(seed_dir, device)
    mc = model.config.to_dict() if hasattr(model.config, "to_dict") else vars(model.config)
    check_compatible(prepared, mc, str(data_path))
    return Trainer(model, cfg.train, task=prepared.task, metric_family=prepared.metric_family,
                   modality_names=prepared.modality_names, device=device, seed=cfg.train.seed)


def evaluate_run(run_dir: str | Path, data_path: str | Path, *, split: str = "test",
                 missing_rate: float | None = None, missing_seed: int | None = None,
                 device: str = "auto", out: str | Path | None = None,
                 trust_pickle: bool = False) -> dict[str, Any]:
    """Metrics of every seed's selected model on ``split`` of the data at ``data_path``.

    The data is read with the run's data settings (format, seq_len, options); ``missing_rate``
    drops modalities of the evaluated split (paper's protocol, seeded by ``missing_seed`` or the
    run's seed); ``trust_pickle`` as for :func:`train_run`. Writes ``out`` (default
    RUN_DIR/evaluate_<split>.json) and returns
    ``{"split", "data", "per_seed": {seed: metrics}, "mean", "std"}``.
    """
    cfg, seed_dirs = load_run(run_dir)
    cfg.train.device, cfg.train.progress = device, False
    prepared = _run_data(cfg, data_path, trust_pickle)
    splits = prepared.splits()
    if split not in splits:
        raise UserInputError(f"--split {split}: the data at {data_path} has splits "
                             f"{', '.join(splits)}")
    if missing_rate:
        from coupled_mamba.data import apply_missing

        # Same seeds as training uses for this split, so a run trained with
        # missing_rate_test = r is evaluated on the very same masks.
        base = missing_seed if missing_seed is not None else (
            cfg.data.missing_seed if cfg.data.missing_seed is not None else cfg.train.seed)
        splits[split] = apply_missing(splits[split], missing_rate,
                                      base + MISSING_SEED_OFFSET[split], prepared.modality_names)
    dev = resolve_device(device)
    per_seed = {}
    with deterministic_mode(cfg.train.deterministic):
        for sd in seed_dirs:
            trainer = _model_trainer(cfg, prepared, sd, dev, data_path)
            per_seed[sd.name.split("_", 1)[1]] = trainer.evaluate(splits[split]).metrics
    result = {"split": split, "data": str(data_path), "missing_rate": missing_rate or 0.0,
              "per_seed": per_seed}
    if len(per_seed) > 1:
        result.update(summarize(list(per_seed.values())))
    else:
        result["metrics"] = next(iter(per_seed.values()))
    path = Path(out) if out is not None else Path(run_dir) / f"evaluate_{split}.json"
    write_json(path, result)
    return result


def predict_run(run_dir: str | Path, data_path: str | Path, out_csv: str | Path, *,
                split: str = "all", seed: int | None = None, device: str = "auto",
                trust_pickle: bool = False) -> int:
    """Write one CSV row per sample: split, id, prediction(s) and label(s) if present.

    Regression: ``prediction``. Classification: ``prediction`` (class id) and ``prob_<k>``.
    Multi-label: ``pred_<k>`` (0/1 at sigmoid >= 0.5) and ``prob_<k>``. Labels: ``label`` or
    ``label_<k>``. The data is validated against the run's model (modalities, dims, task).
    Returns the number of rows written.
    """
    import csv

    cfg, seed_dirs = load_run(run_dir)
    if seed is not None:
        seed_dirs = [p for p in seed_dirs if p.name == f"seed_{seed}"]
        if not seed_dirs:
            raise UserInputError(f"--seed {seed}: {run_dir} has no trained seed {seed}")
    cfg.train.device, cfg.train.progress = device, False
    prepared = _run_data(cfg, data_path, trust_pickle)
    splits = prepared.splits()
    names = list(splits) if split == "all" else [split]
    for s in names:
        if s not in splits:
            raise UserInputError(f"--split {s}: the data at {data_path} has splits "
                                 f"{', '.join(splits)}")
    dev = resolve_device(device)
    trainer = _model_trainer(cfg, prepared, seed_dirs[0], dev, data_path)
    rows, header = [], None
    with deterministic_mode(cfg.train.deterministic):
        for s in names:
            r = trainer.evaluate(splits[s], desc=s)
            cols, values = _prediction_columns(prepared.task, r.outputs, r.labels)
            header = ["split", "id", *cols]
            ids = splits[s].ids
            for i in range(len(ids)):
                rows.append([s, str(ids[i]), *values[i]])
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return len(rows)


def _prediction_columns(task: str, outputs: np.ndarray, labels: np.ndarray | None):
    """(header, rows) of the prediction CSV; integer columns are written as integers."""
    z = outputs.astype(np.float64)
    cols: list[tuple[str, np.ndarray, bool]] = []  # (name, (N,) values, integer?)
    if task == "regression":
        cols.append(("prediction", z[:, 0], False))
    elif task == "classification":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        cols.append(("prediction", z.argmax(1), True))
        cols += [(f"prob_{k}", p[:, k], False) for k in range(p.shape[1])]
    else:
        p = 1.0 / (1.0 + np.exp(-z))
        cols += [(f"pred_{k}", (p[:, k] >= 0.5).astype(np.int64), True)
                 for k in range(p.shape[1])]
        cols += [(f"prob_{k}", p[:, k], False) for k in range(p.shape[1])]
    if labels is not None:
        lab = labels.reshape(len(labels), -1)
        integer = task != "regression"
        if lab.shape[1] == 1:
            cols.append(("label", lab[:, 0], integer))
        else:
            cols += [(f"label_{k}", lab[:, k], integer) for k in range(lab.shape[1])]
    header = [name for name, _, _ in cols]
    rows = [[int(v[i]) if integer else float(f"{float(v[i]):.6g}") for _, v, integer in cols]
            for i in range(len(z))]
    return header, rows
