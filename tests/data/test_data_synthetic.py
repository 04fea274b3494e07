"""The embedded timing benchmark: determinism, its generative story, and the oracle gap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import r2_score

from coupled_mamba.data import load_dataset, make_synthetic, write_mmsa_pickle, write_npz_folder


@pytest.fixture(scope="module")
def bench():
    return make_synthetic(n_train=2000, n_valid=200, n_test=1000, seed=0, return_events=True)


def test_shapes_and_contract(bench):
    data, _ = bench
    assert data.name == "synthetic" and data.task == "regression" and data.metric_family == "mosi"
    assert data.modality_names == ["text", "audio", "vision"]
    assert data.input_dims == {"text": 16, "audio": 8, "vision": 12} and data.seq_len == 40
    y = data.train.labels
    assert y.dtype == np.float32 and y.min() >= -3 and y.max() <= 3 and y.std() > 1
    ln = data.train.lengths["text"]
    assert ln.min() == 28 and ln.max() == 40  # valid lengths vary over [ceil(0.7 L), L]
    for m in data.modality_names:
        x = data.train.modalities[m]
        steps = np.arange(40)[None, :]
        assert (x[steps >= ln[:, None]] == 0).all() and (x[steps < ln[:, None]] != 0).all()


def test_deterministic_by_seed():
    a = make_synthetic(n_train=50, n_valid=10, n_test=30, seed=5)
    b = make_synthetic(n_train=50, n_valid=10, n_test=30, seed=5)
    c = make_synthetic(n_train=50, n_valid=10, n_test=30, seed=6)
    d = make_synthetic(n_train=80, n_valid=0, n_test=30, seed=5)
    for m in a.modality_names:
        np.testing.assert_array_equal(a.train.modalities[m], b.train.modalities[m])
        np.testing.assert_array_equal(a.test.modalities[m], d.test.modalities[m])  # own stream
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert not np.allclose(a.train.labels, c.train.labels)
    assert d.valid is None


def test_events_are_in_the_features(bench):
    """Projecting on each pattern and thresholding at half the amplitude (4 noise standard
    deviations from either side) recovers the events."""
    data, ev = bench
    p = ev["patterns"]
    x, e = data.test.modalities, ev["test"]
    shape = x["text"].shape[:2]

    def check(m, pattern, times):
        found = np.abs(x[m] @ pattern) > 2.0
        truth = np.zeros(shape, bool)
        rows, cols = np.nonzero(times >= 0)
        truth[rows, times[rows, cols]] = True
        hits = (found & truth).sum()
        assert hits / truth.sum() > 0.999 and hits / found.sum() > 0.99, (m, hits, truth.sum(),
                                                                          found.sum())

    check("text", p["text_cue"], e["text_cue_times"])
    check("text", p["text_decoy"], e["decoy_times"])
    check("audio", p["audio_cue"], e["audio_cue_times"])
    check("vision", p["vision_cue"], e["vision_cue_times"])
    signs = np.sign(np.einsum("nld,d->nl", x["text"], p["text_cue"]))
    rows, cols = np.nonzero(e["text_cue_times"] >= 0)
    agree = signs[rows, e["text_cue_times"][rows, cols]] == e["text_cue_signs"][rows, cols]
    assert agree.mean() > 0.999
    mood = (x["vision"] @ p["vision_mood"]).sum(1) / data.test.lengths["vision"] / 0.5
    assert np.corrcoef(mood, e["mood"])[0, 1] > 0.95


def test_label_follows_the_story(bench):
    data, ev = bench
    e = ev["train"]
    # confirmed iff an audio event lies 1..window steps after the cue, recomputed by brute force
    for i in range(200):
        for c, t in enumerate(e["text_cue_times"][i]):
            if t < 0:
                continue
            a = e["audio_cue_times"][i]
            assert e["confirmed"][i, c] == any(1 <= s - t <= ev["window"] for s in a[a >= 0])
    assert abs(e["confirmed"][e["text_cue_times"] >= 0].mean() - 0.5) < 0.03
    y = np.clip(e["timing_score"] + 0.6 * e["mood"], -3, 3)
    assert np.abs(y - data.train.labels).mean() < 0.1  # only the 0.1 label noise is left


def _oracle_r2(data, ev, timing: bool) -> float:
    def feats(e):
        s = e["text_cue_signs"]
        cols = [(s > 0).sum(1), (s < 0).sum(1), (e["decoy_times"] >= 0).sum(1),
                (e["audio_cue_times"] >= 0).sum(1), (e["vision_cue_times"] >= 0).sum(1),
                e["mood"], e["lengths"]]
        return np.stack(cols + ([e["timing_score"]] if timing else []), axis=1)

    model = HistGradientBoostingRegressor(random_state=0).fit(feats(ev["train"]), data.train.labels)
    return r2_score(data.test.labels, model.predict(feats(ev["test"])))


def test_counts_oracle_is_clearly_worse_than_timing_oracle(bench):
    """Per-modality counts (+ the mood, a per-modality summary) explain little; the timing
    feature explains nearly everything. Boosted trees, fit on train, scored on test."""
    data, ev = bench
    r2_counts = _oracle_r2(data, ev, timing=False)
    r2_timing = _oracle_r2(data, ev, timing=True)
    assert r2_counts < 0.25, r2_counts  # ~0.08: the mood term only
    assert r2_timing > 0.95, r2_timing  # ~0.99
    assert r2_timing - r2_counts > 0.7


@pytest.mark.parametrize("with_lengths", [True, False])
def test_round_trip_through_real_loaders(tmp_path, with_lengths):
    data = make_synthetic(n_train=60, n_valid=20, n_test=30, seed=3)
    pkl = write_mmsa_pickle(data, tmp_path / "synthetic.pkl", with_lengths=with_lengths)
    folder = write_npz_folder(data, tmp_path / "synthetic_npz")
    for back in (load_dataset(pkl), load_dataset(folder)):
        assert back.name == "synthetic" and back.metric_family == "mosi"
        assert back.modality_names == data.modality_names and back.seq_len == 40
        for s, split in data.splits().items():
            other = back.splits()[s]
            for m in data.modality_names:
                np.testing.assert_array_equal(other.modalities[m], split.modalities[m])
                np.testing.assert_array_equal(other.lengths[m], split.lengths[m])
            np.testing.assert_array_equal(other.labels, split.labels)
            np.testing.assert_array_equal(other.ids, split.ids)


def test_bad_arguments():
    with pytest.raises(ValueError, match="shorter than one cue slot"):
        make_synthetic(seq_len=10)
    with pytest.raises(ValueError, match="dims"):
        make_synthetic(dims={"text": 8, "audio": 8})
    with pytest.raises(ValueError, match="split sizes"):
        make_synthetic(n_train=0)
