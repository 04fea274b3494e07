"""Fixtures of the trainer/CLI tests; the helpers live in train_helpers.py."""

from __future__ import annotations

import pytest
from train_helpers import tiny_data

from coupled_mamba.data import write_npz_folder


@pytest.fixture
def npz_data(tmp_path):
    """Write a tiny dataset as an npz folder; returns a function task -> folder path."""

    def make(task: str = "regression", **kw) -> str:
        folder = tmp_path / f"data_{task}"
        write_npz_folder(tiny_data(task, **kw), folder)
        return str(folder)

    return make
