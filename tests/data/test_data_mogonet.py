"""MOGONET folders: a tiny folder in the real layout, and the real ROSMAP (skipped if absent)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from coupled_mamba.data import DataFormatError, load_dataset


def write_csv(path, a):
    np.savetxt(path, np.atleast_1d(a), delimiter=",", fmt="%.18e")  # as MOGONET's files


def make_folder(path, rng, n_tr=40, n_te=15, features=(23, 9, 12), n_classes=3):
    path.mkdir(parents=True, exist_ok=True)
    y_tr = np.arange(n_tr) % n_classes
    rng.shuffle(y_tr)
    y_te = rng.integers(0, n_classes, n_te)
    write_csv(path / "labels_tr.csv", y_tr.astype(float))
    write_csv(path / "labels_te.csv", y_te.astype(float))
    views = {}
    for v, f in enumerate(features, start=1):
        scale = rng.uniform(0.5, 5.0, f)
        tr, te = rng.normal(2, 1, (n_tr, f)) * scale, rng.normal(2, 1, (n_te, f)) * scale
        write_csv(path / f"{v}_tr.csv", tr)
        write_csv(path / f"{v}_te.csv", te)
        (path / f"{v}_featname.csv").write_text("".join(f"gene{i}\n" for i in range(f)))
        views[v] = (tr, te)
    return path, y_tr, y_te, views


def test_tokens_standardisation_and_split(tmp_path):
    rng = np.random.default_rng(0)
    folder, y_tr, y_te, views = make_folder(tmp_path / "TOY", rng)
    data = load_dataset(folder, n_tokens=4, valid_fraction=0.25, split_seed=7)
    assert data.modality_names == ["view1", "view2", "view3"] and data.name == "toy"
    assert data.task == "classification" and data.num_outputs == 3 and data.seq_len == 4
    assert data.input_dims == {"view1": 6, "view2": 3, "view3": 3}  # ceil(F / 4)
    assert len(data.train) == 30 and len(data.valid) == 10 and len(data.test) == 15
    # stratified: the 40 train rows hold 14/13/13 per class; valid keeps the proportions
    assert sorted(np.bincount(data.valid.labels, minlength=3)) == [3, 3, 4]
    tr_rows = np.array([int(i[2:]) for i in data.train.ids])
    va_rows = np.array([int(i[2:]) for i in data.valid.ids])
    assert sorted(np.r_[tr_rows, va_rows].tolist()) == list(range(40))
    np.testing.assert_array_equal(data.train.labels, y_tr[tr_rows])
    np.testing.assert_array_equal(data.test.labels, y_te)
    assert data.train.labels.dtype == np.int64

    tr, te = views[1]
    mean, std = tr[tr_rows].mean(0), tr[tr_rows].std(0)  # training rows only
    expect = np.zeros((15, 24))
    expect[:, :23] = (te - mean) / std
    np.testing.assert_allclose(data.test.modalities["view1"].reshape(15, 24), expect, atol=1e-5)
    flat = data.train.modalities["view1"].reshape(30, 24)[:, :23]
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(0), 1, atol=1e-4)
    assert (data.train.modalities["view1"][:, -1, 5] == 0).all()  # zero-padded last chunk
    assert (data.train.lengths["view1"] == 4).all()

    again = load_dataset(folder, n_tokens=4, valid_fraction=0.25, split_seed=7)
    np.testing.assert_array_equal(again.valid.ids, data.valid.ids)
    other = load_dataset(folder, n_tokens=4, valid_fraction=0.25, split_seed=8)
    assert set(other.valid.ids) != set(data.valid.ids)


def test_token_options(tmp_path):
    folder, *_ = make_folder(tmp_path / "T", np.random.default_rng(1), features=(5, 8, 8))
    data = load_dataset(folder, seq_len=4, valid_fraction=0)
    assert data.valid is None and data.seq_len == 4
    # 5 features in 4 tokens of 2: the 4th token is pure padding, so the valid length is 3
    assert (data.train.lengths["view1"] == 3).all() and (data.train.lengths["view2"] == 4).all()
    raw = load_dataset(folder, n_tokens=2, standardize_features=False, valid_fraction=0,
                       view_names=["a", "b", "c"])
    tr = np.loadtxt(folder / "2_tr.csv", delimiter=",")
    np.testing.assert_allclose(raw.train.modalities["b"].reshape(-1, 8), tr, rtol=1e-6)
    with pytest.raises(ValueError, match="disagree"):
        load_dataset(folder, n_tokens=3, seq_len=4)
    with pytest.raises(ValueError, match="n_tokens=6 exceeds the 5 features"):
        load_dataset(folder, n_tokens=6)
    with pytest.raises(ValueError, match="n_tokens must be a positive int"):
        load_dataset(folder, n_tokens=0)
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset(folder, tokens=3)


@pytest.mark.parametrize("damage,pattern", [
    (lambda p: (p / "2_te.csv").unlink(), r"missing 2_te\.csv"),
    (lambda p: (p / "labels_te.csv").unlink(), r"missing labels_te\.csv"),
    (lambda p: write_csv(p / "3_tr.csv", np.ones((39, 12))), r"3_tr\.csv: 39 rows but labels_tr"),
    (lambda p: write_csv(p / "1_te.csv", np.ones((15, 22))), r"1_tr\.csv has 23 columns but 1_te"),
    (lambda p: (p / "1_featname.csv").write_text("a\nb\n"), r"1_featname\.csv: 2 feature names"),
    (lambda p: write_csv(p / "labels_te.csv", np.full(15, 0.5)), r"labels_te\.csv: class labels"),
    (lambda p: (p / "2_tr.csv").write_text("a,b\n"), r"2_tr\.csv: expected headerless"),
])
def test_bad_folders(tmp_path, damage, pattern):
    folder, *_ = make_folder(tmp_path / "B", np.random.default_rng(2))
    damage(folder)
    with pytest.raises(DataFormatError, match=pattern):
        load_dataset(folder, format="mogonet")


def test_rosmap_integration(rosmap_dir, tmp_path):
    data = load_dataset(rosmap_dir)
    assert data.name == "rosmap" and data.modality_names == ["mrna", "meth", "mirna"]
    assert data.task == "classification" and data.num_outputs == 2 and data.seq_len == 10
    assert data.input_dims == {"mrna": 20, "meth": 20, "mirna": 20}
    assert len(data.train) + len(data.valid) == 245 and len(data.test) == 106
    train_counts = np.bincount(data.train.labels, minlength=2) + np.bincount(data.valid.labels,
                                                                             minlength=2)
    assert train_counts.tolist() == [118, 127]
    assert np.bincount(data.test.labels).tolist() == [51, 55]
    valid_counts = np.bincount(data.valid.labels, minlength=2)  # stratified 20%: 24/25
    assert abs(valid_counts[0] / valid_counts.sum() - 118 / 245) < 0.03

    # No leakage: change the test file and the train/valid splits stay bit-identical, while
    # the test split follows the train statistics.
    copy = tmp_path / "ROSMAP"
    shutil.copytree(rosmap_dir, copy)
    te = np.loadtxt(copy / "1_te.csv", delimiter=",")
    np.savetxt(copy / "1_te.csv", te * 10 + 5, delimiter=",", fmt="%.18e")
    moved = load_dataset(copy)
    for s in ("train", "valid"):
        np.testing.assert_array_equal(moved.splits()[s].modalities["mrna"],
                                      data.splits()[s].modalities["mrna"])
    np.testing.assert_array_equal(moved.test.modalities["meth"], data.test.modalities["meth"])
    tr = np.loadtxt(rosmap_dir / "1_tr.csv", delimiter=",")
    rows = np.array([int(i[2:]) for i in data.train.ids])
    expect = (te * 10 + 5 - tr[rows].mean(0)) / tr[rows].std(0)
    np.testing.assert_allclose(moved.test.modalities["mrna"].reshape(106, 200), expect,
                               rtol=1e-5, atol=1e-4)
