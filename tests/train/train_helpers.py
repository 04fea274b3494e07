"""Tiny datasets, model settings and CLI error checks for the trainer/CLI tests (seconds, CPU).

A plain module (not conftest) so that tests can import it: ``from train_helpers import ...``.

Shape letters: N samples, L length, d_m feature size, K labels/classes.
"""

from __future__ import annotations

import numpy as np
import pytest

from coupled_mamba.data import MultimodalData, Split
from coupled_mamba.train import cli

# A small model: every test trains it for 1-3 epochs. dropout > 0 so that RNG state matters.
TINY_MODEL = {"d_model": 8, "n_layers": 1, "d_state": 4, "proj_hidden": 8, "head_hidden": 8,
              "dropout": 0.1, "scan_impl": "torch"}
TINY_TRAIN = {"epochs": 2, "batch_size": 8, "progress": False, "tensorboard": False,
              "device": "cpu"}
FAMILY = {"regression": "mosei", "classification": "classification", "multilabel": "multilabel"}


def tiny_overrides(**train) -> list[str]:
    """``--set`` strings for the tiny model and recipe (train keys can be changed)."""
    t = {**TINY_TRAIN, **train}
    return ([f"model.{k}={v}" for k, v in TINY_MODEL.items()]
            + [f"train.{k}={v}" for k, v in t.items()])


def tiny_sets(**train) -> list[str]:
    """:func:`tiny_overrides` as command-line arguments (``--set``, value, ...)."""
    return [a for s in tiny_overrides(**train) for a in ("--set", s)]


def one_line_error(capsys, argv, *words) -> str:
    """The command fails with status 2 and exactly one stderr line containing ``words``."""
    capsys.readouterr()  # what earlier commands printed
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 or code is None, code
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and err[0].startswith("coupled-mamba")
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


def one_line_usage_error(capsys, argv, *words) -> str:
    """argparse rejects the command line: status 2 and one stderr line containing ``words``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


def tiny_data(task: str = "regression", n=(40, 12, 12), L: int = 6, dims=(3, 5), K: int = 3,
              seed: int = 0, valid: bool = True, names=None) -> MultimodalData:
    """Random right-padded sequences whose label depends on the first modality (learnable).

    Modalities are named m0, m1, ... unless ``names`` are given.
    """
    rng = np.random.default_rng(seed)
    names = list(names) if names is not None else [f"m{i}" for i in range(len(dims))]

    def split(N: int, tag: str) -> Split:
        mods = {m: rng.standard_normal((N, L, d)).astype(np.float32) for m, d in zip(names, dims, strict=True)}
        lens = {m: rng.integers(2, L + 1, N) for m in names}
        for m in names:
            mods[m][np.arange(L)[None, :] >= lens[m][:, None]] = 0.0
        s = mods[names[0]][:, :, 0].sum(1)
        if task == "regression":
            y = np.clip(s, -3, 3).astype(np.float32)
        elif task == "classification":
            y = np.digitize(s, [-1.0, 1.0]).astype(np.int64)
        else:
            y = (rng.random((N, K)) < 0.4).astype(np.float32)
            y[:, 0] = (s > 0).astype(np.float32)
        return Split(mods, lens, y, np.array([f"{tag}{i}" for i in range(N)]))

    n_out = {"regression": 1, "classification": 3, "multilabel": K}[task]
    return MultimodalData(split(n[0], "tr"), split(n[1], "va") if valid else None,
                          split(n[2], "te"), names, task, n_out, FAMILY[task], f"tiny_{task}",
                          "")
