"""Optimiser groups (no decay on A_log, D, norms, biases, logits), warm-up cosine schedule and
input standardisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from train_helpers import tiny_data, tiny_overrides

from coupled_mamba.data import feature_statistics
from coupled_mamba.models import CoupledMambaConfig, create_model, from_pretrained
from coupled_mamba.train.config import TrainConfig, load_config
from coupled_mamba.train.data_prep import prepare_loaded
from coupled_mamba.train.optim import build_optimizer, param_groups, warmup_cosine
from coupled_mamba.train.run import train_run


def _model(coupling="learned"):
    torch.manual_seed(0)
    cfg = CoupledMambaConfig(input_dims=[3, 5], d_model=8, n_layers=1, d_state=4,
                             proj_hidden=8, head_hidden=8, coupling=coupling)
    return create_model("coupled_mamba", cfg)


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_param_groups_split_decay_from_no_decay():
    model = _model()
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    d, nd = _names(model, decay["params"]), _names(model, no_decay["params"])
    assert d.isdisjoint(nd) and d | nd == {n for n, _ in model.named_parameters()}
    for name in nd:  # everything left out of decay is one of the documented kinds
        assert (name.endswith(("A_log", ".D", "bias", "coupling_logits", "fusion.logits"))
                or "norm" in name or name.split(".")[-2].isdigit()), name
    expected_free = [n for n in d | nd if n.endswith(("A_log", ".D", "coupling_logits",
                                                         "fusion.logits", "bias"))]
    assert expected_free and set(expected_free) <= nd
    assert any(n.endswith("in_proj.weight") for n in d), d
    assert any(n.endswith("conv_weight") for n in d), d
    # The projection's LayerNorms (modules named by index inside the Sequential) are not decayed.
    ln = [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert ln and all(f"{n}.weight" in nd for n in ln)


def test_adamw_step_decays_only_the_decay_group():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(optimizer="adamw", lr=1.0, weight_decay=0.5)
    opt = build_optimizer(model, cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only the decoupled decay moves a parameter (by lr * wd)
    decay_names = _names(model, opt.param_groups[0]["params"])
    for n, p in model.named_parameters():
        if n in decay_names:
            torch.testing.assert_close(p, before[n] * 0.5)
        else:
            assert torch.equal(p, before[n]), n


def test_warmup_cosine_shape():
    f = [warmup_cosine(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))  # non-increasing after
    assert math.isclose(f[20], 0.1) and math.isclose(f[12], 0.55)


def test_trainer_steps_warmup_cosine_per_batch(tmp_path):
    # 40 samples / batch 8 = 5 batches an epoch: the rate logged at the start of epoch 2 is the
    # multiplier after 5 optimiser steps, which only a per-batch schedule gives.
    cfg = load_config(None, tiny_overrides(epochs=3, scheduler="warmup_cosine", lr=0.01,
                                           warmup_epochs=2, patience=0, min_lr_ratio=0.0))
    prepared = prepare_loaded(tiny_data(), cfg.data, cfg.train.seed)
    rates = []
    train_run(cfg, None, prepared=prepared,
              callbacks=[lambda tr, epoch, row: rates.append(row["lr"])])
    expected = [0.01 * warmup_cosine(s, 10, 15, 0.0) for s in (0, 5, 10)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


def test_feature_statistics_skip_padding_and_absent_modalities():
    data = tiny_data(n=(30, 6, 6), L=5, dims=(2, 3))
    tr = data.train
    tr.present = np.ones((30, 2), bool)
    tr.present[:10, 1] = False
    tr.modalities["m1"][:10] = 1e6  # absent: must not count
    means, stds = feature_statistics(tr, ["m0", "m1"])
    for mi, m in enumerate(["m0", "m1"]):
        rows = [tr.modalities[m][i, : tr.lengths[m][i]] for i in range(30)
                if mi == 0 or i >= 10]
        rows = np.concatenate(rows)
        np.testing.assert_allclose(means[mi], rows.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stds[mi], rows.std(0), rtol=1e-5, atol=1e-6)


def test_standardisation_is_applied_saved_and_reloaded(tmp_path):
    data = tiny_data(n=(40, 12, 12))
    data.train.modalities["m1"] *= 100.0  # a badly scaled modality
    data.train.modalities["m1"] += 7.0
    cfg = load_config(None, tiny_overrides(epochs=1))
    assert cfg.data.standardize  # on by default
    prepared = prepare_loaded(data, cfg.data, cfg.train.seed)
    train_run(cfg, tmp_path / "run", prepared=prepared)
    model = from_pretrained(str(tmp_path / "run/seed_1111/best"))
    means, stds = prepared.input_statistics()
    torch.testing.assert_close(model.input_norms[1].shift, torch.from_numpy(means[1]))
    torch.testing.assert_close(model.input_norms[1].scale, torch.from_numpy(1.0 / stds[1]))
    x = [torch.from_numpy(data.train.modalities[m][:4]) for m in ("m0", "m1")]
    z = model.input_norms[1](x[1])
    assert abs(float(z.mean())) < 1.0 and 0.2 < float(z.std()) < 5.0

    off = load_config(None, tiny_overrides(epochs=1) + ["data.standardize=false"])
    train_run(off, tmp_path / "raw", prepared=prepare_loaded(data, off.data, 1111))
    raw = from_pretrained(str(tmp_path / "raw/seed_1111/best"))
    assert torch.equal(raw.input_norms[1].shift, torch.zeros(5))


def test_set_input_statistics_checks_shapes():
    model = _model("mean")
    with pytest.raises(ValueError, match="modality 1 expects"):
        model.set_input_statistics([np.zeros(3), np.zeros(4)], [np.ones(3), np.ones(4)])
