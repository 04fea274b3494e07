"""Per-feature statistics of a split's inputs, for the models' input standardisation.

Shapes: N samples, L length, d_m feature size of modality m.
"""

from __future__ import annotations

import numpy as np

from ._types import Split


def feature_statistics(split: Split, names: list[str], chunk: int = 4096
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Mean and population std of every feature over the valid steps of present samples.

    Padding steps (beyond ``split.lengths``) and absent modalities (``split.present``) are left
    out, so zero padding does not drag the mean towards zero. Sums run in float64 over chunks of
    ``chunk`` samples, which bounds the extra memory for wide features.

    Returns:
        (means, stds): M arrays (d_m,) float32 each, in the order of ``names``; a modality with no
        valid step gets mean 0 and std 1.
    """
    means, stds = [], []
    for mi, m in enumerate(names):
        x, lengths = split.modalities[m], split.lengths[m]
        n, seq_len, d = x.shape
        total, total_sq, count = np.zeros(d), np.zeros(d), 0
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            valid = np.arange(seq_len)[None, :] < lengths[lo:hi, None]  # (n_chunk, L)
            if split.present is not None:
                valid &= split.present[lo:hi, mi, None]
            rows = x[lo:hi][valid].astype(np.float64)  # (steps, d_m)
            total += rows.sum(0)
            total_sq += np.square(rows).sum(0)
            count += rows.shape[0]
        if count == 0:
            means.append(np.zeros(d, np.float32))
            stds.append(np.ones(d, np.float32))
            continue
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        means.append(mean.astype(np.float32))
        stds.append(np.sqrt(var).astype(np.float32))
    return means, stds
