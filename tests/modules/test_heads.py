"""Pooling over valid steps, modality fusion, streaming pooling (docs/MATH.md, section 4; head)."""

from __future__ import annotations

import pytest
import torch

from coupled_mamba.modules import ModalityFusion, PoolFuseHead, StreamingPool, masked_pool

M, B, L, D = 3, 4, 9, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, B, L, D, generator=g)
    lengths = torch.tensor([[9, 4, 1, 0], [9, 9, 2, 5], [3, 0, 7, 9]])  # (M, B); 0 = nothing valid
    valid = torch.arange(L)[None, None, :] < lengths[..., None]
    return x, valid, lengths


@pytest.mark.parametrize("mode", ["max", "mean", "last"])
def test_masked_pool_matches_a_per_sample_loop(mode):
    x, valid, lengths = _inputs()
    pooled, available = masked_pool(x, valid, mode)
    for m in range(M):
        for b in range(B):
            n = int(lengths[m, b])
            assert bool(available[m, b]) == (n > 0)
            if n == 0:
                expected = torch.zeros(D)
            elif mode == "max":
                expected = x[m, b, :n].amax(0)
            elif mode == "mean":
                expected = x[m, b, :n].mean(0)
            else:
                expected = x[m, b, n - 1]
            torch.testing.assert_close(pooled[m, b], expected)
    full, avail_full = masked_pool(x, None, mode)
    ref = {"max": x.amax(2), "mean": x.mean(2), "last": x[:, :, -1]}[mode]
    torch.testing.assert_close(full, ref)
    assert avail_full.all()


def test_softmax_fusion_renormalises_over_available_modalities():
    fusion = ModalityFusion(M, D, "softmax")
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    pooled = torch.randn(M, B, D)
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    out = fusion(pooled, available)
    for b in range(B):
        idx = available[b].nonzero()[:, 0]
        if len(idx) == 0:
            assert torch.equal(out[b], torch.zeros(D))
            continue
        w = fusion.logits[idx].softmax(0)
        torch.testing.assert_close(out[b], (w[:, None] * pooled[idx, b]).sum(0))
    w = fusion.weights(available)
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    # finite gradients even for the sample with nothing available, whatever the upstream
    # gradient (a clamped zero denominator gave NaN for about one draw in five)
    for seed in range(20):
        fusion.logits.grad = None
        upstream = torch.randn(B, D, generator=torch.Generator().manual_seed(seed))
        (fusion(pooled, available) * upstream).sum().backward()
        assert torch.isfinite(fusion.logits.grad).all() and fusion.logits.grad.abs().sum() > 0


def test_mean_and_concat_fusion():
    pooled = torch.randn(M, B, D)
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    mean = ModalityFusion(M, D, "mean")(pooled, available)
    cat = ModalityFusion(M, D, "concat")(pooled, available)
    assert cat.shape == (B, M * D)
    for b in range(B):
        idx = available[b].nonzero()[:, 0]
        expected = pooled[idx, b].mean(0) if len(idx) else torch.zeros(D)
        torch.testing.assert_close(mean[b], expected)
        for m in range(M):
            block = cat[b, m * D:(m + 1) * D]
            assert torch.equal(block, pooled[m, b] if available[b, m] else torch.zeros(D))


def test_head_ignores_unavailable_modalities():
    torch.manual_seed(0)
    head = PoolFuseHead(M, D, 2, pooling="max", fusion="softmax", hidden=8, dropout=0.0)
    x, valid, _ = _inputs()
    out = head(x, valid)
    assert out.shape == (B, 2)
    x2 = torch.where(valid[..., None], x, torch.randn_like(x))  # change only unused steps
    assert torch.equal(head(list(x2.unbind(0)), valid), out)
    with pytest.raises(ValueError, match="pooling"):
        PoolFuseHead(M, D, 1, pooling="median")
    with pytest.raises(ValueError, match="fusion"):
        PoolFuseHead(M, D, 1, fusion="attention")


@pytest.mark.parametrize("mode", ["max", "mean", "last", "max+mean+last", "last+max"])
def test_streaming_pool_equals_masked_pool_on_every_prefix(mode):
    x, valid, _ = _inputs(seed=3)
    acc = StreamingPool.zeros(mode, M, B, D)
    for t in range(L):
        acc.update(x[:, :, t], valid[:, :, t])
        pooled, available = acc.result()
        ref, ref_avail = masked_pool(x[:, :, : t + 1], valid[:, :, : t + 1], mode)
        torch.testing.assert_close(pooled, ref)
        assert torch.equal(available, ref_avail)


def test_joined_pooling_concatenates_the_modes_in_order():
    torch.manual_seed(0)
    x = torch.randn(M, B, L, D)
    valid = torch.arange(L)[None, None, :] < torch.tensor([[3, 9, 1, 0]] * M)[..., None]
    joined, avail = masked_pool(x, valid, "last+max")
    parts = [masked_pool(x, valid, m)[0] for m in ("last", "max")]
    torch.testing.assert_close(joined, torch.cat(parts, dim=-1), rtol=0, atol=0)
    assert torch.equal(avail, masked_pool(x, valid, "max")[1])
    head = PoolFuseHead(M, D, 2, pooling="max+mean+last", fusion="concat")
    assert head.mlp[0].in_features == M * 3 * D
    assert head(x, valid).shape == (B, 2)


@pytest.mark.parametrize("bad", ["max+max", "median", "max+", ""])
def test_bad_pooling_specs_are_refused(bad):
    from coupled_mamba.errors import UserInputError
    from coupled_mamba.models import CoupledMambaConfig

    with pytest.raises(ValueError, match="pooling: unknown mode"):
        PoolFuseHead(M, D, 2, pooling=bad)
    with pytest.raises(UserInputError, match="pooling: unknown mode"):
        CoupledMambaConfig(input_dims=[2, 3], pooling=bad)
