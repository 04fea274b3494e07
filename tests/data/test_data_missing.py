"""Missing-modality protocol: statistics, re-draws, zeroing, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from coupled_mamba.data import Split, apply_missing, apply_missing_data, drop_mask, make_synthetic


def expected_drop(r, m):
    """P(entry dropped | not every entry of the row dropped) = (r - r^M) / (1 - r^M)."""
    return (r - r**m) / (1 - r**m)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.7])
def test_drop_statistics(rate):
    n, m = 40000, 3
    present = drop_mask(n, m, rate, seed=11)
    assert present.any(axis=1).all()
    dropped = ~present
    # per-entry rate within 4 standard errors of the conditional probability, every column
    p = expected_drop(rate, m)
    se = np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(dropped.mean(axis=0), p, atol=4 * se)
    # number of dropped modalities per row: binomial(M, r) conditioned on < M
    k = dropped.sum(axis=1)
    binom = np.array([1, 3, 3]) * rate ** np.arange(3) * (1 - rate) ** (3 - np.arange(3))
    np.testing.assert_allclose(np.bincount(k, minlength=3)[:3] / n, binom / binom.sum(),
                               atol=0.015)
    # independence across modalities: pairwise joint drop rate matches the conditional model
    joint = (dropped[:, 0] & dropped[:, 1]).mean()
    assert abs(joint - rate**2 * (1 - rate) / (1 - rate**3)) < 0.01


def test_zeroing_and_reproducibility():
    data = make_synthetic(n_train=300, n_valid=0, n_test=10, seed=1)
    split = data.train
    out = apply_missing(split, 0.5, seed=3)
    again = apply_missing(split, 0.5, seed=3)
    other = apply_missing(split, 0.5, seed=4)
    np.testing.assert_array_equal(out.present, again.present)
    assert (out.present != other.present).any()
    for j, m in enumerate(data.modality_names):
        gone = ~out.present[:, j]
        assert gone.any() and (~gone).any()
        assert (out.modalities[m][gone] == 0).all()
        np.testing.assert_array_equal(out.modalities[m][~gone], split.modalities[m][~gone])
        assert (split.modalities[m][gone] != 0).any()  # the input is not modified
    np.testing.assert_array_equal(out.labels, split.labels)
    np.testing.assert_array_equal(out.lengths["text"], split.lengths["text"])
    none = apply_missing(split, 0.0, seed=0)
    assert none.present.all()


def test_existing_mask_and_order():
    rng = np.random.default_rng(0)
    n = 2000
    mods = {m: rng.normal(size=(n, 4, 2)) + 5 for m in "abc"}
    base = np.ones((n, 3), bool)
    base[:1000, 0] = False  # modality a already absent for half the samples
    split = Split(mods, {m: np.full(n, 4) for m in "abc"}, rng.normal(size=n).astype(np.float32),
                  np.arange(n), present=base)
    out = apply_missing(split, 0.7, seed=1, modality_names=["c", "a", "b"])
    assert list(out.modalities) == ["c", "a", "b"]
    assert not out.present[:1000, 1].any()  # absent stays absent (column of "a")
    assert out.present.any(axis=1).all()
    assert (out.modalities["a"][:1000] == 0).all()
    with pytest.raises(ValueError, match="missing rate"):
        apply_missing(split, 1.0, seed=0)
    with pytest.raises(ValueError, match="permutation"):
        apply_missing(split, 0.1, seed=0, modality_names=["a", "b"])


def test_apply_to_named_splits():
    data = make_synthetic(n_train=100, n_valid=20, n_test=50, seed=2)
    out = apply_missing_data(data, 0.3, seed=9, splits=("train", "test"))
    assert out.valid.present is None and out.train.present is not None
    test_only = apply_missing_data(data, 0.3, seed=9)
    np.testing.assert_array_equal(test_only.test.present, out.test.present)
    assert out.train.present.shape == (100, 3)
    with pytest.raises(ValueError, match="not in the data"):
        apply_missing_data(data.replace(valid=None), 0.3, seed=9, splits=("valid",))
