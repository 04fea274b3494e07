"""Split / MultimodalData validation and load_dataset's format detection."""

from __future__ import annotations

import numpy as np
import pytest

from coupled_mamba.data import (
    DataFormatError,
    MultimodalData,
    Split,
    detect_format,
    load_dataset,
    make_synthetic,
)


def _split(rng, n=5, **kw):
    args = dict(modalities={"a": rng.normal(size=(n, 3, 2)), "b": rng.normal(size=(n, 3, 4))},
                lengths={"a": np.full(n, 3), "b": np.full(n, 2)},
                labels=rng.normal(size=n).astype(np.float32), ids=np.arange(n))
    args.update(kw)
    return Split(**args)


def test_split_validation():
    rng = np.random.default_rng(0)
    s = _split(rng)
    assert len(s) == 5 and s.modality_names == ["a", "b"] and s.ids.dtype.kind == "U"
    assert s.modalities["a"].dtype == np.float32 and s.lengths["a"].dtype == np.int64
    with pytest.raises(DataFormatError, match=r"lengths of 'b' must lie in \[1, L=3\]"):
        _split(rng, lengths={"a": np.full(5, 3), "b": np.full(5, 4)})
    with pytest.raises(DataFormatError, match="has 4 samples but labels have 5"):
        _split(rng, modalities={"a": rng.normal(size=(4, 3, 2)), "b": rng.normal(size=(5, 3, 4))})
    with pytest.raises(DataFormatError, match=r"present must have shape \(N, M\)"):
        _split(rng, present=np.ones((5, 3), bool))
    with pytest.raises(DataFormatError, match="sample 2 has no modality present"):
        _split(rng, present=np.array([[1, 1], [1, 0], [0, 0], [0, 1], [1, 1]], bool))
    sub = s.subset(np.array([4, 1]))
    assert sub.ids.tolist() == ["4", "1"]


def test_multimodal_data_checks():
    rng = np.random.default_rng(1)
    s = _split(rng)
    data = MultimodalData(s, None, _split(rng), ["b", "a"], "regression", 1, "mosi", "toy")
    assert list(data.train.modalities) == ["b", "a"]  # reordered to modality_names
    assert data.input_dims == {"b": 4, "a": 2} and data.seq_len == 3
    assert list(data.splits()) == ["train", "test"]
    with pytest.raises(DataFormatError, match="class labels must be int"):
        MultimodalData(s, None, None, ["a", "b"], "classification", 2, "classification", "toy")
    with pytest.raises(DataFormatError, match="differ from modality_names"):
        MultimodalData(s, None, None, ["a"], "regression", 1, "regression", "toy")
    with pytest.raises(ValueError, match="metric_family"):
        MultimodalData(s, None, None, ["a", "b"], "regression", 1, "imdb", "toy")
    wide = _split(rng, modalities={"a": rng.normal(size=(5, 3, 3)), "b": rng.normal(size=(5, 3, 4))})
    with pytest.raises(DataFormatError, match="feature sizes"):
        MultimodalData(s, wide, None, ["a", "b"], "regression", 1, "regression", "toy")


def test_empty_split_is_an_error():
    x = {"a": np.ones((0, 3, 2), np.float32)}
    empty = Split(x, {"a": np.ones(0, np.int64)}, np.zeros(0, np.float32), np.array([]))
    full = Split({"a": np.ones((2, 3, 2), np.float32)}, {"a": np.ones(2, np.int64)},
                 np.zeros(2, np.float32), np.array(["0", "1"]))
    with pytest.raises(DataFormatError, match=r"my\.npz split 'valid': no samples"):
        MultimodalData(full, empty, None, ["a"], "regression", 1, "regression", "d", "my.npz")


def test_detect_format(tmp_path):
    (tmp_path / "f.pkl").write_bytes(b"")
    (tmp_path / "f.hdf5").write_bytes(b"")
    (tmp_path / "f.txt").write_bytes(b"")
    (tmp_path / "om").mkdir()
    (tmp_path / "om" / "1_tr.csv").write_text("1\n")
    (tmp_path / "gen").mkdir()
    np.savez(tmp_path / "gen" / "train.npz", labels=np.zeros(2))
    assert detect_format(tmp_path / "f.pkl") == "mmsa"
    assert detect_format(tmp_path / "f.hdf5") == "mmimdb"
    assert detect_format(tmp_path / "om") == "mogonet"
    assert detect_format(tmp_path / "gen") == "npz"
    with pytest.raises(ValueError, match="suffix '.txt'"):
        detect_format(tmp_path / "f.txt")
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nothing")
    with pytest.raises(ValueError, match="format must be one of"):
        load_dataset(tmp_path / "gen", format="csv")


def test_loaders_do_not_share_state():
    a = make_synthetic(n_train=20, n_valid=0, n_test=5, seed=0)
    b = make_synthetic(n_train=20, n_valid=0, n_test=5, seed=0, dims={"text": 6, "audio": 5,
                                                                     "vision": 4})
    assert a.input_dims == {"text": 16, "audio": 8, "vision": 12}  # dims come from the data
    assert b.input_dims == {"text": 6, "audio": 5, "vision": 4}
