"""MulT-style cross-modal encoder: SDPA vs materialised weights, key padding, absent sources."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba.modules import CrossModalEncoder, MultiheadCrossAttention

D_MODEL, L, BATCH = 16, 10, 3


def _encoder(materialize, seed=0, M=3):
    torch.manual_seed(seed)
    return CrossModalEncoder(M, D_MODEL, 2, n_heads=4, dropout=0.0,
                             materialize=materialize).eval()


def _xs(M=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, L, D_MODEL, generator=g) for _ in range(M)]


def _mask(lengths):
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


def test_sdpa_and_materialised_attention_agree():
    sdpa, explicit = _encoder(False), _encoder(True)
    explicit.load_state_dict(sdpa.state_dict())
    xs = _xs()
    masks = [_mask([10, 6, 2]), _mask([10, 10, 4]), _mask([7, 1, 10])]
    for a, b in zip(sdpa(xs, mask=masks), explicit(xs, mask=masks), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_masked_keys_and_absent_sources_contribute_nothing():
    torch.manual_seed(0)
    attn = MultiheadCrossAttention(D_MODEL, 4).eval()
    q, src = torch.randn(BATCH, L, D_MODEL), torch.randn(BATCH, L, D_MODEL)
    key_valid = _mask([10, 3, 0])
    out = attn(q, src, key_valid)
    src2 = torch.where(key_valid[..., None], src, torch.randn_like(src))
    torch.testing.assert_close(attn(q, src2, key_valid), out, atol=1e-6, rtol=1e-6)
    assert torch.equal(out[2], torch.zeros(L, D_MODEL))  # no valid key: zero, not NaN
    assert torch.isfinite(out).all()
    # the explicit path, attending over the 3 valid keys only
    attn.materialize = True
    torch.testing.assert_close(attn(q, src, key_valid), out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(attn(q[1:2], src[1:2, :3]), out[1:2], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("materialize", [False, True])
def test_padding_and_absent_modalities_in_the_encoder(materialize):
    enc = _encoder(materialize)
    xs = _xs()
    masks = [_mask([7, 6, 2]), _mask([7, 7, 4]), _mask([5, 1, 7])]  # steps 7..9 are padding
    present = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])
    ys = enc(xs, mask=masks, present=present)
    valid = [mk & present[:, m, None] for m, mk in enumerate(masks)]
    xs2 = [torch.where(v[..., None], x, torch.full_like(x, float("nan"))) for x, v in
           zip(xs, valid, strict=True)]
    ys2 = enc(xs2, mask=masks, present=present)
    for y, y2, v in zip(ys, ys2, valid, strict=True):
        assert torch.equal(y[v], y2[v])
    # dropping the padding: valid steps unchanged (positions are absolute, keys masked)
    short = enc([x[:, :7] for x in xs], mask=[mk[:, :7] for mk in masks], present=present)
    for y, y_s, v in zip(ys, short, valid, strict=True):
        torch.testing.assert_close(y_s[v[:, :7]], y[:, :7][v[:, :7]], atol=1e-5, rtol=1e-5)


def test_cross_attention_needs_two_modalities_and_divisible_heads():
    with pytest.raises(ValueError, match="at least 2 modalities"):
        CrossModalEncoder(1, D_MODEL)
    with pytest.raises(ValueError, match="n_heads"):
        CrossModalEncoder(2, D_MODEL, n_heads=3)
