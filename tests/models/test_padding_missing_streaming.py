"""Task-level guarantees: right padding is invisible, absent modalities contribute exactly what
the documented semantics say, streaming prediction equals the full forward on every prefix."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba.models import create_model, list_models

PRESENT = torch.tensor([[True, False, True], [True, True, True], [False, True, False]])


def _nan_where_unused(xs, masks, present):
    return [torch.where(masks[m][..., None] & present[:, m, None, None], x,
                        torch.full_like(x, float("nan"))) for m, x in enumerate(xs)]


@pytest.mark.parametrize("name", list_models())
def test_padding_and_absent_features_never_matter(name, make_config, make_inputs, make_mask):
    """NaN at padded steps and in absent modalities: same output, finite gradients."""
    torch.manual_seed(0)
    cfg = make_config(dropout=0.0)
    model = create_model(name, cfg)
    xs = make_inputs(cfg)
    masks = [make_mask([12, 7, 3]), make_mask([12, 9, 3]), make_mask([10, 7, 1])]
    out = model(xs, mask=masks, present=PRESENT)
    poisoned = _nan_where_unused(xs, masks, PRESENT)
    out2 = model(poisoned, mask=masks, present=PRESENT)
    assert torch.equal(out, out2)
    out2.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list_models())
def test_trailing_padding_can_be_dropped(name, make_config, make_inputs, make_mask):
    torch.manual_seed(0)
    cfg = make_config()
    model = create_model(name, cfg).eval()
    xs = make_inputs(cfg)
    masks = [make_mask([8, 5, 2]), make_mask([8, 8, 3]), make_mask([6, 1, 8])]
    out = model(xs, mask=masks)
    short = model([x[:, :8] for x in xs], mask=[mk[:, :8] for mk in masks])
    torch.testing.assert_close(short, out, atol=1e-5, rtol=1e-5)


def test_absent_modality_semantics_of_coupled_mamba(make_config, make_inputs):
    """Absent = zero projected input at every step (its state still decays and is coupled);
    its own output is left out of the fusion."""
    torch.manual_seed(0)
    cfg = make_config(dropout=0.0)
    model = create_model("coupled_mamba", cfg).eval()
    xs = make_inputs(cfg)
    enc = model.encode(xs, present=PRESENT)
    projected = model.project(xs)
    zeroed = [torch.where(PRESENT[:, m, None, None], h, 0.0) for m, h in enumerate(projected)]
    enc_zero = model.encoder(zeroed)
    for a, b in zip(enc, enc_zero, strict=True):
        assert torch.equal(a, b)
    # the fusion uses only present modalities: the head's output does not move when the
    # absent modalities' encoder outputs are replaced by anything else
    valid = PRESENT.T[..., None].expand(3, 3, 12)
    scrambled = [torch.where(PRESENT[:, m, None, None], e, torch.randn_like(e))
                 for m, e in enumerate(enc)]
    out = model(xs, present=PRESENT)
    assert torch.equal(model.head(scrambled, valid), out)
    # a sample with no modality at all still gives a finite (input-independent) output
    none = torch.zeros(3, 3, dtype=torch.bool)
    out_none = model(xs, present=none)
    assert torch.isfinite(out_none).all()
    torch.testing.assert_close(out_none, out_none[:1].expand(3, -1))


@pytest.mark.parametrize("name,pooling", [("coupled_mamba", p) for p in
                                          ("max", "mean", "last", "max+mean+last")]
                         + [("coupled_mamba2", "max+mean+last")])
def test_streaming_prediction_equals_forward_on_each_prefix(name, pooling, make_config,
                                                            make_inputs, make_mask):
    torch.manual_seed(0)
    cfg = make_config(pooling=pooling, coupling="learned", task="classification", num_outputs=3)
    model = create_model(name, cfg).eval()
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.coupling_logits.normal_()
    xs = make_inputs(cfg)
    masks = [make_mask([12, 7, 3]), make_mask([12, 9, 3]), make_mask([10, 7, 1])]
    state = model.allocate_cache(3)
    with torch.no_grad():
        for t in range(12):
            pred = model.step([x[:, t] for x in xs], state, mask=[mk[:, t] for mk in masks],
                              present=PRESENT)
            full = model([x[:, : t + 1] for x in xs], mask=[mk[:, : t + 1] for mk in masks],
                         present=PRESENT)
            torch.testing.assert_close(pred, full, atol=2e-5, rtol=1e-5)
    assert state.seqlen_offset == 12
