"""MMSA pickles: small files written in the real layout (shared/docs/MMSA_FORMAT.md)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

from coupled_mamba.data import (
    DataFormatError,
    load_dataset,
    mmsa_to_npz,
    read_mmsa_pickle,
    segment_mean_ref,
)
from coupled_mamba.data.mmsa import infer_mmsa_name

DIMS = {"text": 768, "audio": 5, "vision": 20}


def mmsa_split(rng, padded, n, lens, aligned=False, sims=False):
    """One split dict as MMSA-FET writes it; lens = padded lengths (L_t, L_a, L_v)."""
    lt, la, lv = lens
    t_len = rng.integers(3, lt + 1, n)
    a_len = rng.integers(1, la + 1, n)
    v_len = rng.integers(1, lv + 1, n)
    if aligned:  # aligned files: audio/vision on the text tokens, no *_lengths keys
        a_len = v_len = t_len
    text_bert = np.zeros((n, 3, lt))
    text_bert[:, 0] = rng.integers(1000, 30000, (n, lt)) * (np.arange(lt) < t_len[:, None])
    text_bert[:, 1] = np.arange(lt) < t_len[:, None]
    d = {
        "raw_text": np.array([f"utterance {i}" for i in range(n)], dtype=object),
        "text": padded(rng, t_len, lt, DIMS["text"]).astype(np.float64),
        "text_bert": text_bert,
        "audio": padded(rng, a_len, la, DIMS["audio"]),
        "vision": padded(rng, v_len, lv, DIMS["vision"]),
        "id": np.array([f"vid{i // 3}$_${i % 3}" for i in range(n)], dtype=object),
        "regression_labels": rng.uniform(-1 if sims else -3, 1 if sims else 3, n),
        "classification_labels": rng.integers(0, 3, n).astype(np.float64),
        "annotations": np.array(["Neutral"] * n, dtype=object),
    }
    if not aligned:
        d["audio_lengths"] = list(a_len)  # MMSA-FET stores a list of ints
        d["vision_lengths"] = np.asarray(v_len)
    if sims:
        for k in "TAV":
            d[f"regression_labels_{k}"] = rng.uniform(-1, 1, n)
    return d


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


@pytest.fixture
def unaligned(tmp_path, padded):
    rng = np.random.default_rng(0)
    obj = {s: mmsa_split(rng, padded, n, (12, 40, 30)) for s, n in
           (("train", 9), ("valid", 4), ("test", 5))}
    obj["train"]["audio"][1, 0, 2] = -np.inf  # MMSA's known quirk
    obj["train"]["audio"][2, 0, :] = -np.inf
    obj["test"]["vision"][0, 0, 0] = np.nan
    obj["train"]["vision_lengths"][3] = 35  # older files: raw count beyond the padding
    obj["valid"]["audio_lengths"][0] = 0  # empty sequence
    return write(tmp_path / "MOSI" / "Processed" / "unaligned_50.pkl", obj), obj


@pytest.mark.filterwarnings("ignore:.*(non-finite|clipped).*:RuntimeWarning")
def test_unaligned_read_clean_and_align(unaligned):
    path, obj = unaligned
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        raw = read_mmsa_pickle(path)
    msgs = [str(w.message) for w in rec]
    nonfinite = [m for m in msgs if "non-finite" in m]
    assert len(nonfinite) == 1 and "replaced 7 non-finite" in nonfinite[0]
    assert "train/audio: 6" in nonfinite[0] and "test/vision: 1" in nonfinite[0]
    assert any("clipped 2 lengths" in m for m in msgs)
    assert raw.name == "mosi" and raw.metric_family == "mosi" and raw.task == "regression"
    assert raw.modality_names == ["text", "audio", "vision"]
    assert raw.input_dims == DIMS and not raw.is_aligned
    tr = raw.train
    assert np.isfinite(tr.modalities["audio"]).all() and tr.modalities["audio"][1, 0, 2] == 0
    np.testing.assert_array_equal(tr.lengths["text"], obj["train"]["text_bert"][:, 1].sum(1))
    np.testing.assert_array_equal(tr.lengths["audio"], obj["train"]["audio_lengths"])
    assert tr.lengths["vision"][3] == 30 and raw.valid.lengths["audio"][0] == 1
    assert tr.ids[4] == "vid1$_$1" and tr.labels.dtype == np.float32
    np.testing.assert_allclose(tr.labels, obj["train"]["regression_labels"], rtol=1e-6)
    assert tr.extra_labels == {}

    data = load_dataset(path)  # unaligned -> segment means to 50 steps
    assert data.seq_len == 50
    for m in raw.modality_names:
        x, ln = raw.test.modalities[m], raw.test.lengths[m]
        np.testing.assert_allclose(data.test.modalities[m], segment_mean_ref(x, ln, 50), atol=1e-5)
        assert (data.test.lengths[m] == 50).all()
    assert load_dataset(path, seq_len=20, modalities=["audio", "text"]).modality_names == [
        "audio", "text"]


def test_aligned_layout_passes_through(tmp_path, padded):
    rng = np.random.default_rng(1)
    obj = {s: mmsa_split(rng, padded, 6, (10, 10, 10), aligned=True) for s in ("train", "valid",
                                                                             "test")}
    obj["config"] = {"feature": "MMSA-FET config, ignored"}
    path = write(tmp_path / "MOSEI" / "aligned_50.pkl", obj)
    data = load_dataset(path)
    assert data.name == "mosei" and data.seq_len == 10
    for s in ("train", "test"):
        t_len = obj[s]["text_bert"][:, 1].sum(1)
        for m in ("text", "audio", "vision"):  # text from the mask, audio/vision last non-zero
            np.testing.assert_array_equal(data.splits()[s].lengths[m], t_len)
        np.testing.assert_allclose(data.splits()[s].modalities["vision"], obj[s]["vision"])


def test_sims_labels_and_torch_tensors(tmp_path, padded):
    rng = np.random.default_rng(2)
    obj = {s: mmsa_split(rng, padded, 5, (8, 20, 12), sims=True) for s in ("train", "valid",
                                                                         "test")}
    obj["train"]["audio"] = torch.from_numpy(obj["train"]["audio"])  # return_type='pt' files
    path = write(tmp_path / "SIMS" / "Processed" / "unaligned_39.pkl", obj)
    # Torch tensors need torch's own globals, which only a trusted load resolves.
    with pytest.raises(DataFormatError, match="torch._utils._rebuild_tensor_v2.*--trust-pickle"):
        read_mmsa_pickle(path)
    data = read_mmsa_pickle(path, trust_pickle=True)
    assert data.name == "sims" and data.metric_family == "sims"
    assert sorted(data.train.extra_labels) == [f"regression_labels_{k}" for k in "ATV"]
    np.testing.assert_allclose(data.valid.extra_labels["regression_labels_T"],
                               obj["valid"]["regression_labels_T"], rtol=1e-6)
    np.testing.assert_allclose(data.train.modalities["audio"], obj["train"]["audio"].numpy())


@pytest.mark.parametrize("parts,expected", [
    (("MOSI", "Processed", "aligned_50.pkl"), "mosi"),
    (("CMU-MOSEI", "unaligned_50.pkl"), "mosei"),
    (("CH-SIMS", "Processed", "unaligned_39.pkl"), "sims"),
    (("SIMSv2", "Processed", "sims_unaligned.pkl"), "simsv2"),
    (("ch-sims-v2", "feat.pkl"), "simsv2"),
    (("data", "features.pkl"), None),
])
def test_name_inference(tmp_path, parts, expected):
    assert infer_mmsa_name(tmp_path.joinpath(*parts)) == expected


def test_unknown_name_and_label_range_warn(tmp_path, padded):
    rng = np.random.default_rng(3)
    obj = {"train": mmsa_split(rng, padded, 4, (6, 9, 7))}
    path = write(tmp_path / "feat.pkl", obj)
    with pytest.warns(RuntimeWarning, match="cannot tell which MMSA dataset"):
        data = read_mmsa_pickle(path)
    assert data.name == "feat" and data.metric_family == "regression" and data.valid is None
    with pytest.warns(RuntimeWarning, match=r"outside \[-1, 1\] expected for 'sims'"):
        read_mmsa_pickle(path, name="sims")


def _broken(tmp_path, padded, mutate):
    rng = np.random.default_rng(4)
    obj = {s: mmsa_split(rng, padded, 5, (6, 9, 7)) for s in ("train", "valid", "test")}
    mutate(obj)
    return write(tmp_path / "MOSI" / "bad.pkl", obj)


@pytest.mark.parametrize("mutate,pattern", [
    (lambda o: o["valid"]["regression_labels"].__setitem__(3, np.nan),
     r"split 'valid', key 'regression_labels': non-finite label at index 3"),
    (lambda o: o["test"]["regression_labels"].__setitem__(0, np.inf),
     r"split 'test', key 'regression_labels': non-finite label at index 0"),
    (lambda o: o["train"].pop("vision"), r"split 'train': missing key 'vision'"),
    (lambda o: o["test"].pop("regression_labels"), r"split 'test': missing key 'regression_labels'"),
    (lambda o: o["train"].__setitem__("audio", o["train"]["audio"][:, :, 0]),
     r"split 'train', key 'audio': expected rank 3 \(N, L, d\), got \(5, 9\)"),
    (lambda o: o["valid"].__setitem__("text", o["valid"]["text"][:4]),
     r"split 'valid', key 'text': 4 samples but 'regression_labels' has 5"),
    (lambda o: o["train"].__setitem__("audio_lengths", [1, 2, 3]),
     r"split 'train', key 'audio_lengths': expected shape \(5,\)"),
    (lambda o: o["train"].__setitem__("text_bert", o["train"]["text_bert"][:, :2]),
     r"key 'text_bert': expected shape \(5, 3, L_t\)"),
])
def test_bad_files_name_split_and_key(tmp_path, padded, mutate, pattern):
    path = _broken(tmp_path, padded, mutate)
    with pytest.raises(DataFormatError, match=pattern) as err:
        load_dataset(path)
    assert str(path) in str(err.value)


def test_bad_top_level(tmp_path):
    path = write(tmp_path / "x.pkl", [1, 2, 3])
    with pytest.raises(DataFormatError, match="expected a dict with keys 'train'"):
        read_mmsa_pickle(path)
    with pytest.raises(FileNotFoundError):
        read_mmsa_pickle(tmp_path / "missing.pkl")
    with pytest.raises(ValueError, match="subset of"):
        read_mmsa_pickle(path, modalities=["image"])


def test_converter_gives_same_data(unaligned, tmp_path):
    path, _ = unaligned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        folder = mmsa_to_npz(path, tmp_path / "npz")
        a, b = load_dataset(path), load_dataset(folder)
    assert not any(p.suffix == ".pkl" for p in folder.iterdir())
    assert (a.name, a.metric_family, a.modality_names) == (b.name, b.metric_family,
                                                           b.modality_names)
    for s in ("train", "valid", "test"):
        sa, sb = a.splits()[s], b.splits()[s]
        for m in a.modality_names:
            np.testing.assert_array_equal(sa.modalities[m], sb.modalities[m])
            np.testing.assert_array_equal(sa.lengths[m], sb.lengths[m])
        np.testing.assert_array_equal(sa.labels, sb.labels)
        np.testing.assert_array_equal(sa.ids, sb.ids)
