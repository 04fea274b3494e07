"""The interaction-task suite: each rule's oracle beats the pooled reference, the rules hold in
the generated features, the data is a pure function of (setting, seed, scale)."""

from __future__ import annotations

import numpy as np
import pytest

from coupled_mamba.data.interaction import (
    AMPLITUDE,
    SUITE,
    References,
    Setting,
    make_interaction,
    scaled,
)


@pytest.fixture(scope="module")
def small_suite():
    # Reduced sizes (at least 300 train / 200 test samples): enough for the references.
    out = {}
    for name, s in SUITE.items():
        small = scaled(s, n_train=min(s.n_train, 600), n_valid=60, n_test=300)
        out[name] = (small, *make_interaction(small, seed=3))
    return out


def test_suite_covers_the_required_range():
    settings = list(SUITE.values())
    assert len(settings) >= 8
    assert {s.rule for s in settings} >= {"confirm", "cooccur", "xor", "gate", "embedded"}
    assert {s.n_modalities for s in settings} >= {2, 3, 4}
    assert {s.task for s in settings} == {"regression", "classification"}
    dims = [d for s in settings for d in s.dims]
    assert min(dims) == 4 and max(dims) == 768
    sizes = [s.n_train for s in settings]
    assert min(sizes) == 1000 and max(sizes) == 16000
    assert any(s.fast is not None for s in settings) and any(s.lag > 0 for s in settings)


@pytest.mark.parametrize("name", list(SUITE))
def test_oracle_beats_pooled_reference(small_suite, name):
    s, data, refs = small_suite[name]
    if s.task == "classification":
        assert refs.metric == "Accuracy" and refs.oracle == 1.0
        assert refs.pooled < 0.75, refs  # timing is needed: pooled features stay near chance
    else:
        assert refs.metric == "MAE" and refs.oracle < 0.15
        assert refs.pooled > 4 * refs.oracle, refs
    assert refs.solved(refs.oracle) and not refs.solved(refs.pooled)
    # Shapes: every modality at L after alignment, sizes as requested.
    assert len(data.train) == s.n_train and len(data.test) == s.n_test
    for m, d in zip(data.modality_names, s.dims, strict=True):
        assert data.train.modalities[m].shape == (s.n_train, s.seq_len, d)


def test_gap_closed_and_solved():
    r = References("MAE", False, oracle=0.1, pooled=1.1)
    assert r.gap_closed(0.1) == 1.0 and r.gap_closed(1.1) == 0.0
    assert r.solved(0.3) and not r.solved(0.31)
    a = References("Accuracy", True, oracle=1.0, pooled=0.5)
    assert a.gap_closed(0.9) == pytest.approx(0.8) and a.solved(0.9) and not a.solved(0.89)


def test_data_is_deterministic_and_seeded():
    s = scaled(SUITE["cooccur_small"], n_train=50, n_valid=20, n_test=20)
    a, ra = make_interaction(s, seed=1)
    b, rb = make_interaction(s, seed=1)
    c, _ = make_interaction(s, seed=2)
    assert ra == rb
    assert np.array_equal(a.train.modalities["m0"], b.train.modalities["m0"])
    assert not np.array_equal(a.train.modalities["m0"], c.train.modalities["m0"])


def test_cooccur_classes_have_the_same_event_counts():
    # Class 1 is made by moving an existing b event, so per-modality counts carry no label
    # information; the pooled reference staying at chance above depends on it.
    s = scaled(SUITE["cooccur_small"], n_train=1500, n_valid=20, n_test=20, decoys=0)
    data, _ = make_interaction(s, seed=0)
    y = data.train.labels
    x = data.train.modalities["m1"][..., 2:]  # pattern channels
    energy = (np.square(x).sum(-1) > AMPLITUDE**2 / 2).sum(1)  # steps holding an event
    assert abs(energy[y == 1].mean() - energy[y == 0].mean()) < 0.15


def test_confirm_rule_is_written_into_the_features():
    # Recover the events from the features by projecting on the strongest directions, then
    # recompute the classification label from them: it must match the generated label.
    s = Setting("t", "confirm", "classification", (6, 6), 400, 24, decoys=0, n_valid=20,
                n_test=20)
    data, _ = make_interaction(s, seed=0)
    tr = data.train
    a, b = tr.modalities["m0"][..., 2:], tr.modalities["m1"][..., 2:]
    # The cue pattern is the dominant signed direction in a; b's event pattern in b.
    pa = np.linalg.svd(a.reshape(-1, a.shape[-1]), full_matrices=False)[2][0]
    pb = np.linalg.svd(b.reshape(-1, b.shape[-1]), full_matrices=False)[2][0]
    sa, sb = a @ pa, np.abs(b @ pb)
    # The sign of the SVD direction is arbitrary: accept the label or its complement overall.
    labels = []
    for i in range(len(tr)):
        cues = np.nonzero(np.abs(sa[i]) > AMPLITUDE / 2)[0]
        partner = np.nonzero(sb[i] > AMPLITUDE / 2)[0]
        score = sum(np.sign(sa[i, t]) * (1 if any(1 <= p - t <= s.window for p in partner)
                                          else -1) for t in cues)
        labels.append(int(score > 0))
    labels = np.array(labels)
    match = max(np.mean(labels == tr.labels), np.mean((1 - labels) == tr.labels))
    assert match > 0.97


def test_unaligned_setting_is_resampled_to_one_length():
    s = scaled(SUITE["confirm_unaligned"], n_train=30, n_valid=20, n_test=20)
    data, _ = make_interaction(s, seed=0)
    assert data.is_aligned and data.seq_len == s.seq_len
    assert all((data.train.lengths[m] == s.seq_len).all() for m in data.modality_names)


def test_setting_rejects_too_few_features():
    with pytest.raises(ValueError, match="modality 1 needs >= 5 features"):
        Setting("bad", "gate", "regression", (8, 3), 100, 20)
