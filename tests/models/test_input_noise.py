"""input_noise: Gaussian noise on the standardised inputs in training mode only."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba.errors import UserInputError
from coupled_mamba.models import CoupledMambaConfig, create_model


def _model(noise):
    torch.manual_seed(0)
    cfg = CoupledMambaConfig(input_dims=[3, 5], d_model=8, n_layers=1, d_state=4,
                             proj_hidden=8, head_hidden=8, dropout=0.0, input_noise=noise)
    return create_model("coupled_mamba", cfg)


def test_noise_only_in_training_mode():
    xs = [torch.randn(2, 6, 3), torch.randn(2, 6, 5)]
    noisy, clean = _model(0.5), _model(0.0)
    noisy.train()
    assert not torch.equal(noisy(xs), noisy(xs))  # fresh noise each call
    clean.train()
    assert torch.equal(clean(xs), clean(xs))
    noisy.eval()
    torch.testing.assert_close(noisy(xs), clean.eval()(xs))  # same weights, no noise in eval


def test_noise_must_be_a_non_negative_std():
    with pytest.raises(UserInputError, match="input_noise"):
        CoupledMambaConfig(input_dims=[3], input_noise=-0.1)
