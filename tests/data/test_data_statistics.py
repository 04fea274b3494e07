"""Principal components of a split's inputs (the input reduction of wide modalities)."""

from __future__ import annotations

import numpy as np
import pytest

from coupled_mamba.data import Split, principal_components
from coupled_mamba.data import statistics as stats_mod
from coupled_mamba.train.defaults import MAX_RANK, noise_edge_rank


def _planted(n=300, L=10, d=96, amps=(6.0, 4.0), seed=0, garbage=100.0):
    """Noise with len(amps) planted orthonormal directions (random amplitude per step) and huge
    values in the padding, which must not count."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, len(amps))))
    x = rng.standard_normal((n, L, d))
    for j, a in enumerate(amps):
        x += a * rng.standard_normal((n, L, 1)) * q[:, j]
    lengths = rng.integers(3, L + 1, n)
    x[np.arange(L)[None, :] >= lengths[:, None]] = garbage
    split = Split({"a": x.astype(np.float32)}, {"a": lengths}, np.zeros(n, np.float32),
                  np.array([str(i) for i in range(n)]))
    return split, q


def test_leading_directions_are_the_planted_ones():
    split, q = _planted()
    spec = principal_components(split, "a", np.zeros(96), np.ones(96), q=5)
    assert spec.values.shape == (5,) and spec.vectors.shape == (96, 5)
    assert np.all(np.diff(spec.values) <= 0)
    # The two leading directions span the planted plane (padding's 100s would dominate otherwise).
    overlap = np.linalg.svd(spec.vectors[:, :2].T @ q, compute_uv=False)
    assert overlap.min() > 0.99
    assert spec.values[0] > 30 and spec.values[2] < 1.5
    assert spec.n_rows == int(split.lengths["a"].sum())


def test_low_rank_path_matches_the_exact_one(monkeypatch):
    split, _ = _planted()
    exact = principal_components(split, "a", np.zeros(96), np.ones(96), q=3)
    monkeypatch.setattr(stats_mod, "EXACT_UP_TO", 10)
    approx = principal_components(split, "a", np.zeros(96), np.ones(96), q=3)
    np.testing.assert_allclose(approx.values[:2], exact.values[:2], rtol=1e-3)
    np.testing.assert_allclose(approx.total, exact.total, rtol=1e-4)
    overlap = np.abs(np.sum(approx.vectors[:, :2] * exact.vectors[:, :2], axis=0))
    assert overlap.min() > 0.999


@pytest.mark.parametrize(("amps", "expected"), [((), 1), ((6.0,), 1), ((6.0, 4.0), 2),
                                                 ((6.0, 4.0, 3.0), 3)])
def test_noise_edge_rank_counts_the_planted_directions(amps, expected):
    split, _ = _planted(amps=amps)
    spec = principal_components(split, "a", np.zeros(96), np.ones(96), q=MAX_RANK + 1)
    assert noise_edge_rank(spec, 96) == expected


def test_noise_edge_rank_is_capped():
    split, _ = _planted(d=96, amps=tuple(np.linspace(8, 4, 80)), n=400)
    spec = principal_components(split, "a", np.zeros(96), np.ones(96), q=MAX_RANK + 1)
    assert noise_edge_rank(spec, 96) == MAX_RANK
