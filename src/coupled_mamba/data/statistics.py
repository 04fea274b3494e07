"""Per-feature statistics and principal components of a split's inputs, for the models' input
standardisation and reduction.

Shapes: N samples, L length, d_m feature size of modality m.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Spectrum:
    """Leading principal components of one modality's inputs over valid steps.

    ``values`` (q,) are the largest eigenvalues of the feature covariance, descending;
    ``vectors`` (d_m, q) float32 their orthonormal eigenvectors; ``total`` the covariance's trace
    (the sum of all d_m eigenvalues); ``n_rows`` the number of steps it was estimated from.
    """

    values: np.ndarray
    vectors: np.ndarray
    total: float
    n_rows: int


EXACT_UP_TO = 4096  # features: a full eigendecomposition of the d x d covariance up to this width


def principal_components(split: Split, name: str, mean: np.ndarray, std: np.ndarray, q: int,
                         max_rows: int = 100_000, seed: int = 0, chunk: int = 8192) -> Spectrum:
    """The q leading principal components of ``(x - mean) / std`` over the valid steps of present
    samples of modality ``name`` (padding and absent modalities left out, as in
    :func:`feature_statistics`).

    Steps beyond ``max_rows`` are subsampled (seeded by ``seed``, so a run is reproducible). Up to
    :data:`EXACT_UP_TO` features the covariance is accumulated in float64 and decomposed exactly;
    wider inputs use a randomised low-rank SVD of the rows.
    """
    x, lengths = split.modalities[name], split.lengths[name]
    n, seq_len, d = x.shape
    valid = np.arange(seq_len)[None, :] < lengths[:, None]  # (N, L)
    if split.present is not None:
        valid &= split.present[:, split.modality_names.index(name), None]
    idx = np.flatnonzero(valid.reshape(-1))
    if idx.size == 0:
        raise ValueError(f"modality {name!r}: no valid step to compute principal components from")
    if idx.size > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_rows, replace=False))
    flat = x.reshape(-1, d)
    scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0)
    q = min(q, d)
    if d <= EXACT_UP_TO:
        cov = np.zeros((d, d))
        for lo in range(0, idx.size, chunk):
            z = (flat[idx[lo:lo + chunk]].astype(np.float64) - mean) * scale
            cov += z.T @ z
        cov /= idx.size
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1][:q]
        return Spectrum(values[order], vectors[:, order].astype(np.float32),
                        float(np.trace(cov)), int(idx.size))
    import torch

    z = torch.from_numpy(((flat[idx] - mean) * scale).astype(np.float32))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        _, s, v = torch.svd_lowrank(z, q=min(d, q + 10), niter=4)
    finally:
        torch.random.set_rng_state(gen_state)
    values = (s.double().numpy() ** 2) / idx.size
    total = float(np.square(z.double().numpy()).sum() / idx.size)
    return Spectrum(values[:q], v[:, :q].numpy().astype(np.float32), total, int(idx.size))
