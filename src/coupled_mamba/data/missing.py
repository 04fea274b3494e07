"""Missing-modality protocol of the paper's robustness table (CMU-MOSEI; docs/MATH.md, section 5).

Shape letters: N samples, M modalities.

Each (sample, modality) pair is dropped independently with probability r (the missing rate,
r in {0.0, 0.1, ..., 0.7} in the paper). A sample that would lose every modality it has is
re-drawn (its whole row, again with probability r per modality) until at least one survives.
Dropped inputs are zeroed and flagged False in the (N, M) ``present`` mask. Because of the
re-draw the realised drop probability per entry is (r - r^M) / (1 - r^M), slightly below r
(0.7 -> 0.623 for M = 3); docs/DATA.md gives the numbers.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserInputError
from ._types import MultimodalData, Split


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise UserInputError(f"missing rate must lie in [0, 1), got {rate}")
    return rate


def drop_mask(n: int, m: int, rate: float, seed, base: np.ndarray | None = None) -> np.ndarray:
    """The (N, M) bool present mask of the protocol.

    Args:
        n, m: number of samples and modalities.
        rate: drop probability r in [0, 1).
        seed: anything ``numpy.random.default_rng`` accepts.
        base: (N, M) bool mask of modalities already present (None = all); entries already
            absent stay absent and do not count as survivors.
    Returns:
        (N, M) bool, True = present; every row has at least one True.
    """
    rate = _check_rate(rate)
    base = np.ones((n, m), dtype=bool) if base is None else np.asarray(base, dtype=bool)
    if base.shape != (n, m):
        raise ValueError(f"base must have shape ({n}, {m}), got {base.shape}")
    if n and not base.any(axis=1).all():
        raise ValueError("base has a sample with no modality present")
    rng = np.random.default_rng(seed)
    present = base & (rng.random((n, m)) >= rate)
    lost = ~present.any(axis=1)
    while lost.any():  # expected number of rounds is 1 / (1 - r^M): a handful at r = 0.7
        rows = np.flatnonzero(lost)
        present[rows] = base[rows] & (rng.random((rows.size, m)) >= rate)
        lost[rows] = ~present[rows].any(axis=1)
    return present


def apply_missing(split: Split, rate: float, seed,
                  modality_names: list[str] | None = None) -> Split:
    """Drop modalities at random following the paper's protocol (module docstring).

    Args:
        split: the split; an existing ``present`` mask is respected (absent stays absent).
        rate: missing rate r in [0, 1).
        seed: seed for ``numpy.random.default_rng``; the same seed gives the same mask.
        modality_names: column order of the mask (a permutation of the split's modalities);
            default the split's own order.
    Returns:
        A new Split, modalities reordered to ``modality_names``, dropped inputs set to 0 and
        ``present`` (N, M) set. The input split is not modified.
    """
    names = list(split.modalities) if modality_names is None else list(modality_names)
    split = split.reordered(names)
    present = drop_mask(len(split), len(names), rate, seed, base=split.present)
    mods = {}
    for j, name in enumerate(names):
        x = split.modalities[name]
        gone = ~present[:, j]
        if gone.any():
            x = x.copy()
            x[gone] = 0.0
        mods[name] = x
    return Split(mods, dict(split.lengths), split.labels, split.ids, present,
                 dict(split.extra_labels))


def apply_missing_data(data: MultimodalData, rate: float, seed: int,
                       splits: tuple[str, ...] = ("test",)) -> MultimodalData:
    """Apply :func:`apply_missing` to the named splits of ``data`` (train and/or valid/test).

    Each split gets its own stream derived from ``seed`` and its name, so the test mask does not
    change when the train split is also masked.
    """
    known = data.splits()
    for s in splits:
        if s not in known:
            raise ValueError(f"split {s!r} is not in the data (have {list(known)})")
    changes = {}
    for s in splits:
        key = int.from_bytes(s.encode(), "little")
        changes[s] = apply_missing(known[s], rate, [int(seed), key], data.modality_names)
    return data.replace(**changes)
