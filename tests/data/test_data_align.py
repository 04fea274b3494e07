"""Segment-mean alignment (docs/MATH.md, section 4) against the loop reference and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from coupled_mamba.data import (
    MultimodalData,
    Split,
    align_data,
    align_split,
    segment_bounds,
    segment_mean,
    segment_mean_ref,
)
from coupled_mamba.data import align as align_mod


def direct(x, lengths, seq_len):
    """Independent statement of the definition with exact fractions: frame f (centre f + 1/2)
    belongs to segment j when j T / L <= f + 1/2 < (j+1) T / L; an empty segment takes the frame
    whose span [f, f+1) holds the segment centre (j + 1/2) T / L."""
    from fractions import Fraction

    out = np.zeros((x.shape[0], seq_len, x.shape[2]))
    for i, t in enumerate(lengths):
        for j in range(seq_len):
            lo, hi = Fraction(j * t, seq_len), Fraction((j + 1) * t, seq_len)
            frames = [f for f in range(t) if lo <= f + Fraction(1, 2) < hi]
            centre = (lo + hi) / 2
            out[i, j] = x[i, frames].mean(0) if frames else x[i, int(centre)]
    return out


def test_bounds_cover_valid_part():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=300)
    for seq_len in (1, 7, 50, 64):
        start, stop = segment_bounds(lengths, seq_len)
        assert start.shape == (300, seq_len)
        assert (start >= 0).all() and (stop <= lengths[:, None]).all() and (stop > start).all()
        assert (start[:, 0] == 0).all() and (stop[:, -1] == lengths).all()
        long = lengths >= seq_len  # then segments tile [0, T) exactly, without overlap
        assert (start[long, 1:] == stop[long, :-1]).all()


@pytest.mark.parametrize("seq_len", [1, 5, 13, 50])
def test_segment_mean_matches_reference_and_definition(seq_len, padded):
    rng = np.random.default_rng(seq_len)
    lengths = np.r_[1, 2, seq_len, 2 * seq_len, rng.integers(1, 120, size=40)]
    x = padded(rng, lengths, 120, 6)
    fast = segment_mean(x, lengths, seq_len)
    ref = segment_mean_ref(x, lengths, seq_len)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref, direct(x, lengths, seq_len), rtol=1e-5, atol=1e-6)
    assert fast.dtype == np.float32 and fast.shape == (len(lengths), seq_len, 6)


def test_hand_examples():
    x = np.arange(1, 7, dtype=np.float32).reshape(1, 6, 1)  # frames 1..6
    # T = 6 -> L = 3: pairs averaged
    assert segment_mean(x, np.array([6]), 3)[0, :, 0].tolist() == [1.5, 3.5, 5.5]
    # T = 6 -> L = 4: edges 0, 1.5, 3, 4.5, 6; centres 0.5 | 1.5 2.5 | 3.5 | 4.5 5.5
    assert segment_mean(x, np.array([6]), 4)[0, :, 0].tolist() == [1.0, 2.5, 4.0, 5.5]
    # T = 5 -> L = 2: edges 0, 2.5, 5; centres 0.5 1.5 | 2.5 3.5 4.5
    assert segment_mean(x, np.array([5]), 2)[0, :, 0].tolist() == [1.5, 4.0]
    # T = 2 -> L = 5: segment centres 0.2 0.6 1.0 1.4 1.8 -> frames 0 0 1 1 1 (1.0: tie, later)
    assert segment_mean(x, np.array([2]), 5)[0, :, 0].tolist() == [1, 1, 2, 2, 2]
    # T = L is the identity on the valid part; padding is never read
    y = x.copy()
    y[0, 4:] = 99.0
    assert segment_mean(y, np.array([4]), 4)[0, :, 0].tolist() == [1, 2, 3, 4]


def test_blocked_computation_equals_single_block(monkeypatch, padded):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 90, size=37)
    x = padded(rng, lengths, 90, 5)
    whole = segment_mean(x, lengths, 20)
    monkeypatch.setattr(align_mod, "_BLOCK_ELEMENTS", 3 * 91 * 5)  # 3 samples per block
    np.testing.assert_array_equal(segment_mean(x, lengths, 20), whole)


def test_bad_inputs():
    x = np.ones((2, 5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T_max=5\]"):
        segment_mean(x, np.array([0, 5]), 4)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T_max=5\]"):
        segment_mean(x, np.array([6, 5]), 4)
    with pytest.raises(ValueError, match="shape"):
        segment_mean(x[0], np.array([5]), 4)
    x[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        segment_mean(x, np.array([5, 5]), 4)


def _split(padded, rng, n=9, present=True):
    la, lv = rng.integers(1, 30, n), rng.integers(1, 12, n)
    return Split({"a": padded(rng, la, 30, 4), "v": padded(rng, lv, 12, 3)}, {"a": la, "v": lv},
                 rng.normal(size=n).astype(np.float32), [f"s{i}" for i in range(n)],
                 present=np.c_[np.ones(n, bool), rng.random(n) > 0.5] if present else None,
                 extra_labels={"aux": rng.normal(size=n)})


def test_align_split_carries_everything(padded):
    rng = np.random.default_rng(2)
    s = _split(padded, rng)
    out = align_split(s, 16)
    for m in ("a", "v"):
        np.testing.assert_allclose(out.modalities[m], segment_mean_ref(s.modalities[m],
                                                                       s.lengths[m], 16), atol=1e-6)
        assert (out.lengths[m] == 16).all()
    np.testing.assert_array_equal(out.labels, s.labels)
    np.testing.assert_array_equal(out.ids, s.ids)
    np.testing.assert_array_equal(out.present, s.present)
    np.testing.assert_array_equal(out.extra_labels["aux"], s.extra_labels["aux"])
    assert s.modalities["a"].shape[1] == 30  # input untouched


def test_align_data_policy(padded):
    rng = np.random.default_rng(3)
    unaligned = MultimodalData(_split(padded, rng, present=False), None, _split(padded, rng, present=False),
                               ["a", "v"], "regression", 1, "regression", "toy")
    assert not unaligned.is_aligned
    with pytest.raises(ValueError, match="not aligned"):
        _ = unaligned.seq_len
    out = align_data(unaligned)
    assert out.seq_len == 50 and out.is_aligned
    assert align_data(unaligned, 8).seq_len == 8
    assert align_data(out) is out  # aligned data passes through
    assert align_data(out, 50) is out
    assert align_data(out, 10).seq_len == 10
