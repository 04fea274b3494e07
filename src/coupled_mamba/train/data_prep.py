"""From a data path and the ``data`` config section to the splits the trainer uses.

Steps (all seeded, so a resumed or repeated run sees the very same samples):
1. ``load_dataset(path, format, seq_len, **options)`` (coupled_mamba.data);
2. check the requested task against the data's;
3. when the data has no validation split, carve ``valid_fraction`` of train (stratified for
   classification, by ``split_seed``) and say so;
4. apply the missing-modality protocol (``apply_missing``) at ``missing_rate_train`` to train and
   ``missing_rate_test`` to valid and test.

N is the number of samples, M the number of modalities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError
from .config import DataConfig

# Seed offsets of the missing-modality masks per split: independent draws per split, and the
# same masks whether a split is prepared for training or for `evaluate --missing-rate`.
MISSING_SEED_OFFSET = {"train": 0, "valid": 1, "test": 2}

METRIC_FAMILIES_BY_TASK = {
    "regression": ("mosi", "mosei", "sims", "simsv2", "regression"),
    "classification": ("classification",),
    "multilabel": ("multilabel",),
}


@dataclass
class PreparedData:
    """The splits a run uses, plus what the model needs to know about them."""

    train: Any  # coupled_mamba.data.Split
    valid: Any
    test: Any | None
    modality_names: list[str]
    input_dims: list[int]
    task: str
    num_outputs: int
    metric_family: str
    name: str
    notes: list[str]  # what was done to the data (carved valid split, missing rates), for logs
    _stats: tuple | None = field(default=None, repr=False)
    _spectra: dict = field(default_factory=dict, repr=False)

    def input_statistics(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-feature (means, stds) of the training split, M arrays (d_m,) each (computed once)."""
        if self._stats is None:
            from coupled_mamba.data import feature_statistics

            self._stats = feature_statistics(self.train, self.modality_names)
        return self._stats

    def input_spectrum(self, m: int, q: int, standardized: bool = True):
        """The q leading principal components (a ``coupled_mamba.data.Spectrum``) of modality m's
        training inputs, standardised with :meth:`input_statistics` or raw; cached."""
        from coupled_mamba.data import principal_components

        key = (m, standardized)
        cached = self._spectra.get(key)
        if cached is None or len(cached.values) < min(q, self.input_dims[m]):
            d = self.input_dims[m]
            mean, std = ((self.input_statistics()[0][m], self.input_statistics()[1][m])
                         if standardized else (np.zeros(d), np.ones(d)))
            cached = principal_components(self.train, self.modality_names[m], mean, std, q)
            self._spectra[key] = cached
        return cached

    def input_transform(self, ranks: list[int] | None, standardized: bool):
        """(means, stds, components) for ``model.set_input_statistics``: the training split's
        per-feature statistics (zeros and ones when not ``standardized``) and, for every modality
        with a rank > 0 in ``ranks``, its (d_m, rank) leading principal directions (None where
        the rank is 0; components None without ranks)."""
        if standardized:
            means, stds = self.input_statistics()
        else:
            means = [np.zeros(d, np.float32) for d in self.input_dims]
            stds = [np.ones(d, np.float32) for d in self.input_dims]
        if not ranks or not any(ranks):
            return means, stds, None
        comps = [self.input_spectrum(m, r, standardized).vectors[:, :r] if r else None
                 for m, r in enumerate(ranks)]
        return means, stds, comps

    def splits(self) -> dict[str, Any]:
        out = {"train": self.train, "valid": self.valid}
        if self.test is not None:
            out["test"] = self.test
        return out


def carve_valid(split, task: str, fraction: float, seed: int, source: str = "the data"):
    """Split ``split`` into (train, valid) with ``fraction`` of the samples in valid.

    Classification is stratified by class; the permutation comes from ``seed`` only.
    """
    from sklearn.model_selection import train_test_split

    n = len(split.labels)
    n_valid = max(1, int(round(fraction * n)))
    if n - n_valid < 1:
        raise UserInputError(f"{source}: cannot carve a validation split from {n} training "
                             "samples")
    stratify = None
    if task == "classification":
        _, counts = np.unique(split.labels, return_counts=True)
        if counts.min() >= 2 and n_valid >= len(counts):
            stratify = split.labels
    idx_train, idx_valid = train_test_split(np.arange(n), test_size=n_valid, random_state=seed,
                                            shuffle=True, stratify=stratify)
    return split.subset(np.sort(idx_train)), split.subset(np.sort(idx_valid))


def prepare_data(cfg: DataConfig, seed: int, path: str | Path | None = None, *,
                 trust_pickle: bool = False) -> PreparedData:
    """Load and prepare the data described by ``cfg`` (``path`` overrides ``cfg.path``;
    ``trust_pickle`` lets an MMSA pickle run code, see ``load_dataset``)."""
    from coupled_mamba.data import load_dataset

    path = path if path is not None else cfg.path
    if path is None:
        raise UserInputError("no data: give --data PATH (or data.path in the config)")
    if not Path(path).exists():
        raise FileNotFoundError(f"data not found: {path}")
    data = load_dataset(str(path), format=cfg.format, seq_len=cfg.seq_len,
                        trust_pickle=trust_pickle, **cfg.options)
    return prepare_loaded(data, cfg, seed)


def prepare_loaded(data, cfg: DataConfig, seed: int) -> PreparedData:
    """The steps 2-4 of the module docstring on an already loaded MultimodalData."""
    notes: list[str] = []
    task = data.task
    if cfg.task is not None and cfg.task != task:
        raise UserInputError(
            f"incompatible task: --task {cfg.task} but the data at {data.source} holds "
            f"{task} labels (shape {tuple(data.train.labels.shape)}, dtype "
            f"{data.train.labels.dtype}); drop --task or use data with {cfg.task} labels")
    family = cfg.metric_family or data.metric_family
    if family not in METRIC_FAMILIES_BY_TASK[task]:
        raise UserInputError(f"data.metric_family {family!r} does not fit task {task!r}; use one "
                             f"of {', '.join(METRIC_FAMILIES_BY_TASK[task])}")
    train, valid, test = data.train, data.valid, data.test
    if valid is None:
        train, valid = carve_valid(train, task, cfg.valid_fraction, cfg.split_seed,
                                   data.source or data.name)
        notes.append(f"no validation split in the data: carved {len(valid.labels)} of "
                     f"{len(valid.labels) + len(train.labels)} training samples "
                     f"({'stratified, ' if task == 'classification' else ''}"
                     f"split_seed={cfg.split_seed})")
    if test is None:
        notes.append("no test split in the data: test metrics are not reported")
    missing_seed = seed if cfg.missing_seed is None else cfg.missing_seed
    names = list(data.modality_names)
    if cfg.missing_rate_train > 0 or cfg.missing_rate_test > 0:
        from coupled_mamba.data import apply_missing

        off = MISSING_SEED_OFFSET
        if cfg.missing_rate_train > 0:
            train = apply_missing(train, cfg.missing_rate_train, missing_seed + off["train"],
                                  names)
        if cfg.missing_rate_test > 0:
            valid = apply_missing(valid, cfg.missing_rate_test, missing_seed + off["valid"],
                                  names)
            if test is not None:
                test = apply_missing(test, cfg.missing_rate_test, missing_seed + off["test"],
                                     names)
        notes.append(f"missing modalities: rate {cfg.missing_rate_train} on train, "
                     f"{cfg.missing_rate_test} on valid/test (seed {missing_seed})")
    dims = data.input_dims
    return PreparedData(
        train=train, valid=valid, test=test, modality_names=names,
        input_dims=[int(dims[m]) for m in names], task=task, num_outputs=int(data.num_outputs),
        metric_family=family, name=data.name, notes=notes)


def check_compatible(prepared: PreparedData, expected: dict[str, Any], source: str) -> None:
    """Raise a UserInputError if the data does not match a trained model's modality names, input
    dims, task or number of outputs (``expected`` holds those keys, from the run's model
    config)."""
    problems = []
    if list(expected["modality_names"]) != prepared.modality_names:
        problems.append(f"modalities {prepared.modality_names} (the model was trained on "
                        f"{list(expected['modality_names'])}, in that order)")
    elif list(expected["input_dims"]) != prepared.input_dims:
        diffs = [f"{m}: {d} (expected {e})" for m, d, e in
                 zip(prepared.modality_names, prepared.input_dims, expected["input_dims"],
                                   strict=True)
                 if d != e]
        problems.append("feature dims " + ", ".join(diffs))
    if expected["task"] != prepared.task:
        problems.append(f"task {prepared.task} (the model does {expected['task']})")
    elif int(expected["num_outputs"]) != prepared.num_outputs:
        problems.append(f"{prepared.num_outputs} outputs per sample (the model has "
                        f"{expected['num_outputs']})")
    if problems:
        raise UserInputError(f"data at {source} does not fit the trained model: "
                             + "; ".join(problems))
