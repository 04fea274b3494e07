"""Defaults that follow the data: what ``train`` uses for every key the user did not set.

A config key set by a YAML file, a flag or ``--set`` is the user's and is never changed. Every
other key of the rule below gets a value from the training split (its size N, the length L and
the feature sizes); the values are printed at the start of a run and saved in its config.yaml,
so a rerun with that file reproduces the run without the rule. docs/TRAINING.md ("Defaults")
gives the evidence behind each choice.

The rule:
- a small coupled model (d_model 32, 2 layers, d_state 16; d_model 64 from N = 20,000): the
  paper's 1.5 M-parameter model memorises a few thousand samples before it finds a cross-modal
  rule;
- Gaussian noise of std 0.5 on the standardised inputs in training (``model.input_noise``): a
  few thousand samples are otherwise memorised by their noise before the rule is found;
- the pooled modality vectors concatenated before the head (``model.fusion`` concat): a weighted
  mean mixes the channel in which one chain has detected a cross-modal event with the other
  chains' unrelated channels, and the head then needs many more epochs to find it;
- a modality with 64 or more features is reduced to its principal components (of the
  standardised training inputs) that stand above the noise, at most 64 (``model.input_ranks``):
  the eigenvalues of pure noise spread up to the Marchenko-Pastur edge
  ``sigma^2 (1 + sqrt(d_m / steps))^2``, so components above it (with a 5% margin) carry
  structure and the rest give a small training set directions to memorise it by;
- step sizes dt initialised log-uniform in [1/L, 1], i.e. memory timescales from one step to the
  whole sequence (Mamba's [0.001, 0.1] suits language models over thousands of tokens; over
  L = 40 steps it cannot tell an event 3 steps back from one 5 steps back, and dt also scales the
  input written into the state);
- AdamW (lr 3e-3, weight decay on weight matrices only) with one warm-up epoch and a cosine
  decay over 100 epochs (60 from N = 20,000): rules are often found late, after a plateau, and
  on the interaction suite every pair that failed at 60 epochs by a late take-off is solved
  at 100; the model of the best
  validation epoch is kept, judged by the loss for regression and by the task's primary metric
  (macro F1, micro F1) for classification and multi-label: once a classifier memorises its
  training set, its validation cross-entropy grows with overconfidence while its accuracy still
  improves, so the loss picks an early epoch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SMALL_UNTIL = 20_000  # training samples from which the wider model and 60 epochs are used
WIDE_FROM = 64  # features from which a modality is reduced to its principal components
MAX_RANK = 64  # components kept at most
EDGE_MARGIN = 1.05  # eigenvalues must exceed the noise edge by this factor


def noise_edge_rank(spectrum, d: int) -> int:
    """Principal components of a d-feature modality that stand above the noise, in [1, MAX_RANK].

    ``spectrum``: a ``coupled_mamba.data.Spectrum`` with at least MAX_RANK + 1 values (or all d).
    The noise variance is the mean of the eigenvalues not counted as structure (from the
    covariance's trace), re-estimated until the count is stable.
    """
    values = np.asarray(spectrum.values, dtype=np.float64)
    edge_factor = (1.0 + math.sqrt(d / spectrum.n_rows)) ** 2 * EDGE_MARGIN
    kept = 0
    for _ in range(20):
        noise = (spectrum.total - values[:kept].sum()) / max(1, d - kept)
        count = int((values > noise * edge_factor).sum())
        if count == kept:
            break
        kept = count
    return int(min(max(kept, 1), MAX_RANK))


def data_defaults(n_train: int, seq_len: int, input_dims: list[int],
                  task: str = "regression", spectra: dict | None = None) -> dict[str, Any]:
    """``{"model.key": value, "train.key": value}`` for data of this size (module docstring).

    ``spectra`` maps the index of each modality with at least WIDE_FROM features to its
    Spectrum; without it such modalities keep every feature.
    """
    width = 32 if n_train < SMALL_UNTIL else 64
    ranks = [0] * len(input_dims)
    for m, spectrum in (spectra or {}).items():
        if input_dims[m] >= WIDE_FROM:
            rank = noise_edge_rank(spectrum, input_dims[m])
            ranks[m] = rank if rank < input_dims[m] else 0
    return {
        "model.input_ranks": ranks,
        "model.d_model": width,
        "model.n_layers": 2,
        "model.d_state": 16,
        "model.proj_hidden": 2 * width,
        "model.head_hidden": width,
        "model.dropout": 0.0,
        "model.input_noise": 0.5,
        "model.fusion": "concat",
        "model.dt_min": round(1.0 / max(2, seq_len), 6),
        "model.dt_max": 1.0,
        "train.optimizer": "adamw",
        "train.lr": 3e-3,
        "train.weight_decay": 0.05,
        "train.scheduler": "warmup_cosine",
        "train.warmup_epochs": 1.0,
        "train.epochs": 100 if n_train < SMALL_UNTIL else 60,
        "train.patience": 0,
        "train.select_on": "loss" if task == "regression" else "primary",
    }


def apply_data_defaults(cfg, prepared) -> list[str]:
    """Fill the keys of :func:`data_defaults` that ``cfg`` does not set explicitly (in place).

    Returns the ``key=value`` strings applied, for the run's log. Keys of the model section only
    apply to models that have them (all registered models share one config); a key that the
    registered model fixes (``avg_fusion``'s fusion) is left to the model.
    """
    from ..models import model_entry

    if not cfg.auto_defaults:
        return []
    fixed = set(model_entry(cfg.model.name).overrides)
    seq_len = int(next(iter(prepared.train.modalities.values())).shape[1])
    dims = list(prepared.input_dims)
    spectra = {}
    if "model.input_ranks" not in cfg.explicit:
        spectra = {m: prepared.input_spectrum(m, MAX_RANK + 1, cfg.data.standardize)
                   for m, d in enumerate(dims) if d >= WIDE_FROM}
    rule = data_defaults(len(prepared.train), seq_len, dims, prepared.task, spectra)
    applied = []
    for key, value in rule.items():
        section, _, name = key.partition(".")
        if key in cfg.explicit or (section == "model" and name in fixed):
            continue
        if section == "model":
            cfg.model.params[name] = value
        else:
            setattr(cfg.train, name, value)
        applied.append(f"{key}={value}")
    return applied
