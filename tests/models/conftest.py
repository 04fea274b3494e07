"""Tiny configs and inputs for the model tests (d_model 16, d_state 8, L 12)."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba.models import CoupledMambaConfig

LENGTH = 12


def tiny_config(input_dims=(5, 7, 3), **overrides) -> CoupledMambaConfig:
    kw = dict(input_dims=list(input_dims), d_model=16, d_state=8, n_layers=2, proj_hidden=16,
              head_hidden=8, n_heads=4, ffn_mult=2)
    kw.update(overrides)
    return CoupledMambaConfig(**kw)


def random_inputs(config: CoupledMambaConfig, batch=3, length=LENGTH, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, d, generator=g) for d in config.input_dims]


def right_mask(lengths, length=LENGTH):
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture
def make_inputs():
    return random_inputs


@pytest.fixture
def make_mask():
    return right_mask
