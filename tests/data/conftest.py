"""Fixtures for the data tests: the shared ROSMAP folder and small random inputs (never zeros)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``$COUPLED_MAMBA_SHARED`` if set, else ``<repo>/../shared``."""
    env = os.environ.get("COUPLED_MAMBA_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture
def rosmap_dir() -> Path:
    path = shared_dir() / "data" / "ROSMAP"
    if not (path / "1_tr.csv").is_file():
        pytest.skip(f"ROSMAP not found at {path} (set COUPLED_MAMBA_SHARED)")
    return path


def _padded(rng: np.random.Generator, lengths, max_len: int, dim: int) -> np.ndarray:
    """(N, max_len, dim) float32, random non-zero values on the first lengths[i] steps, 0 after."""
    lengths = np.asarray(lengths)
    x = rng.normal(size=(len(lengths), max_len, dim)) + 0.1
    x[np.arange(max_len)[None, :] >= lengths[:, None]] = 0.0
    return x.astype(np.float32)


@pytest.fixture
def padded():
    """The function padded(rng, lengths, max_len, dim) -> right zero-padded random features."""
    return _padded
