"""input_ranks: a fixed projection of wide modalities onto principal components, saved with the
weights."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba.errors import UserInputError
from coupled_mamba.models import create_model, from_pretrained, list_models


@pytest.mark.parametrize("name", list_models())
def test_reduced_modality_is_projected_and_saved(name, tmp_path, make_config, make_inputs):
    torch.manual_seed(0)
    cfg = make_config(input_ranks=[2, 0, 0])
    model = create_model(name, cfg).eval()
    assert model.projections[0][0].in_features == 2 and model.projections[1][0].in_features == 7
    means = [torch.randn(d) for d in cfg.input_dims]
    stds = [torch.rand(d) + 0.5 for d in cfg.input_dims]
    comp, _ = torch.linalg.qr(torch.randn(5, 2))
    model.set_input_statistics(means, stds, [comp, None, None])
    xs = make_inputs(cfg)
    expected = ((xs[0] - means[0]) / stds[0]) @ comp
    torch.testing.assert_close(model.input_norms[0](xs[0]), expected)
    with torch.no_grad():  # the output depends on the components: a skipped buffer would show
        out = model(xs)
        model.input_norms[0].components.mul_(-1.0)
        assert not torch.allclose(model(xs), out)
        model.input_norms[0].components.mul_(-1.0)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.config.input_ranks == [2, 0, 0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(xs), out, rtol=0, atol=0)


def test_components_must_match_the_ranks(make_config):
    model = create_model("coupled_mamba", make_config(input_ranks=[2, 0, 0]))
    means = [torch.zeros(d) for d in (5, 7, 3)]
    stds = [torch.ones(d) for d in (5, 7, 3)]
    with pytest.raises(ValueError, match="rank 2 needs"):
        model.set_input_statistics(means, stds)
    with pytest.raises(ValueError, match=r"shape \(5, 2\)"):
        model.set_input_statistics(means, stds, [torch.zeros(5, 3), None, None])
    with pytest.raises(ValueError, match="rank 0 needs no components"):
        model.set_input_statistics(means, stds, [torch.zeros(5, 2), torch.zeros(7, 1), None])


@pytest.mark.parametrize(("ranks", "match"), [([2, 0], "list of M = 3"), ([6, 0, 0], r"\[0, 5\]"),
                                              ([1, -1, 0], r"input_ranks\[1\]"),
                                              ([True, 0, 0], r"input_ranks\[0\]")])
def test_bad_ranks_are_one_line_errors(ranks, match, make_config):
    with pytest.raises(UserInputError, match=match):
        make_config(input_ranks=ranks)


def test_input_noise_is_drawn_in_the_reduced_space(make_config, make_inputs):
    cfg = make_config(input_ranks=[2, 0, 0], input_noise=0.5)
    model = create_model("coupled_mamba", cfg).train()
    out = model(make_inputs(cfg))
    assert out.shape == (3, 1) and torch.isfinite(out).all()
