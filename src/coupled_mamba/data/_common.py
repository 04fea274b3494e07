"""Helpers shared by the format readers: cleaning, standardisation, tokenising, hold-out splits.

Shape letters: N samples, F features of a flat view, n tokens, d token size, L length.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import UserInputError
from ._types import DataFormatError


class NonFiniteCounter:
    """Replaces non-finite feature values by 0 and reports them all in ONE warning per load."""

    def __init__(self, source: str):
        self.source = source
        self.counts: dict[str, int] = {}

    def clean(self, x: np.ndarray, where: str, dtype=np.float32) -> np.ndarray:
        """``x`` as ``dtype`` (no copy if it already is) with NaN/inf set to 0, counted."""
        x = np.asarray(x, dtype=dtype)
        bad = ~np.isfinite(x)
        n_bad = int(bad.sum())
        if n_bad:
            x = x.copy() if not x.flags.writeable else x
            x[bad] = 0.0
            self.counts[where] = self.counts.get(where, 0) + n_bad
        return x

    def warn(self) -> None:
        if self.counts:
            total = sum(self.counts.values())
            detail = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
            warnings.warn(
                f"{self.source}: replaced {total} non-finite feature values (NaN/inf) by 0 "
                f"({detail})", RuntimeWarning, stacklevel=3)


def check_finite_labels(y: np.ndarray, where: str) -> None:
    """Raise DataFormatError naming ``where`` and the first sample index with a non-finite label."""
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(y), -1).any(axis=1))
            raise DataFormatError(
                f"{where}: non-finite label at index {int(rows[0])} (value "
                f"{y[rows[0]]!r}; {rows.size} such samples); labels must be finite")


def as_array(value, where: str) -> np.ndarray:
    """np.asarray that also takes lists and CPU torch tensors (MMSA-FET can pickle either)."""
    try:
        return np.asarray(value)
    except Exception as exc:  # e.g. ragged lists
        raise DataFormatError(f"{where}: cannot convert to an array ({exc})") from exc


def numeric_array(value, where: str) -> np.ndarray:
    """:func:`as_array` that only accepts real numbers (bool, int or float; an object array of
    numbers is converted to float64); DataFormatError naming ``where`` and the dtype otherwise."""
    a = as_array(value, where)
    if a.dtype == object:
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise DataFormatError(f"{where}: expected numbers ({exc})") from exc
    if not (a.dtype == bool or np.issubdtype(a.dtype, np.integer)
            or np.issubdtype(a.dtype, np.floating)):
        raise DataFormatError(f"{where}: expected numbers, got dtype {a.dtype}")
    return a


def class_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class ids as int64 from an int or integer-valued float array; DataFormatError otherwise."""
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.floating):
        check_finite_labels(y, where)
        if not np.all(y == np.round(y)):
            bad = int(np.flatnonzero(y != np.round(y))[0])
            raise DataFormatError(
                f"{where}: class labels must be integers, index {bad} has {y[bad]!r}")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise DataFormatError(f"{where}: class labels must be numeric, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataFormatError(f"{where}: class labels must be >= 0, got {y.min()}")
    return y


def inferred_num_classes(labels: list[np.ndarray], where: str) -> int:
    """C = largest class id + 1 over the given (N_i,) class-id arrays.

    More classes than samples cannot be a labelling (most ids would be unused): it is a damaged
    file, and taking it at its word would build a model with that many outputs.
    """
    top = max(int(y.max(initial=0)) for y in labels) + 1
    n = sum(len(y) for y in labels)
    if top > max(n, 2):
        raise DataFormatError(f"{where}: class ids reach {top - 1} but there are {n} samples; "
                              "class ids must be 0..C-1")
    return top


def last_nonzero_lengths(x: np.ndarray) -> np.ndarray:
    """(N,) int64: 1 + index of the last time step with any non-zero feature (0 if none).

    For right zero-padded data without stored lengths; zero rows inside the valid part are kept.
    """
    nonzero = np.any(x != 0, axis=2)  # (N, L)
    any_nz = nonzero.any(axis=1)
    last = x.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(any_nz, last, 0).astype(np.int64)


def clip_lengths(lengths: np.ndarray, max_len: int, where: str, clipped: dict) -> np.ndarray:
    """Clip to [1, max_len], counting changed entries under ``where`` in ``clipped``."""
    out = np.clip(lengths, 1, max_len).astype(np.int64)
    n = int((out != lengths).sum())
    if n:
        clipped[where] = n
    return out


def warn_clipped(clipped: dict, source: str, reason: str) -> None:
    if clipped:
        detail = ", ".join(f"{k}: {v}" for k, v in clipped.items())
        warnings.warn(f"{source}: clipped {sum(clipped.values())} lengths into [1, L] ({reason}; "
                      f"{detail})", RuntimeWarning, stacklevel=3)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """z-score every array with the per-feature mean and std of ``train`` only.

    Args:
        train: (N, F); others: (N_i, F). Constant training features get std 1 (centred only).
    Returns:
        [train_z, *others_z] float32.
    """
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def tokens_per_view(n_features: int, n_tokens: int, where: str) -> tuple[int, int]:
    """(d, valid) for cutting F features into ``n_tokens`` contiguous chunks of d = ceil(F / n).

    ``valid`` = ceil(F / d) is the number of tokens holding at least one real feature (the rest
    are pure padding, which can happen when n does not divide F evenly).
    """
    if not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise UserInputError(f"n_tokens must be a positive int, got {n_tokens!r}")
    if n_tokens > n_features:
        raise UserInputError(f"{where}: n_tokens={n_tokens} exceeds the {n_features} features")
    d = math.ceil(n_features / n_tokens)
    return d, math.ceil(n_features / d)


def to_tokens(x: np.ndarray, n_tokens: int, where: str) -> tuple[np.ndarray, int]:
    """Cut feature vectors into a token sequence.

    Args:
        x: (N, F) features.
        n_tokens: n, the sequence length.
    Returns:
        tokens (N, n, d) float32 with d = ceil(F / n) (token k = features [k d, (k+1) d), the
        last chunk zero-padded), and the number of valid tokens (see :func:`tokens_per_view`).
    """
    n, f = x.shape
    d, valid = tokens_per_view(f, n_tokens, where)
    out = np.zeros((n, n_tokens * d), dtype=np.float32)
    out[:, :f] = x
    return out.reshape(n, n_tokens, d), valid


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int,
                       where: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of row indices into (keep, held_out), stratified by class when possible.

    Args:
        labels: (N,) class ids (stratified) or anything else (plain random split), or (N, K).
        fraction: share of rows held out, in (0, 1).
    Returns:
        two sorted int64 index arrays (file order is kept inside each part).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise UserInputError(f"valid_fraction must lie in (0, 1) or be 0 for none, got {fraction}")
    idx = np.arange(len(labels))
    stratify = labels if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer) else None
    try:
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed,
                                      stratify=stratify)
    except ValueError as exc:
        raise UserInputError(f"{where}: cannot carve a validation split of {fraction} "
                             f"({exc})") from exc
    return np.sort(keep), np.sort(held)
