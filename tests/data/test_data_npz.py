"""The generic npz folder: layout rules, task detection, and one error per bad-input class."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coupled_mamba.data import (
    DataFormatError,
    Split,
    load_dataset,
    read_npz_folder,
    segment_mean_ref,
    write_npz_folder,
)


def arrays(rng, padded, n, labels="float"):
    lv = rng.integers(1, 7, n)
    out = {
        "video": padded(rng, lv, 7, 3),
        "video_lengths": lv,
        "audio": padded(rng, np.full(n, 11), 11, 2),  # no lengths key: all steps valid
        "static": rng.normal(size=(n, 4)).astype(np.float32),  # 2-D: a one-step sequence
        "ids": np.array([f"clip{i}" for i in range(n)]),
        "labels_aux": rng.normal(size=n),
    }
    out["labels"] = {"float": rng.normal(size=n).astype(np.float32),
                     "int": rng.integers(0, 4, n),
                     "multi": (rng.random((n, 5)) > 0.5).astype(np.int8)}[labels]
    return out


def make_folder(path, rng, padded, labels="float", splits=("train", "valid", "test")):
    path.mkdir(parents=True, exist_ok=True)
    for s, n in zip(splits, (12, 5, 6), strict=False):
        np.savez(path / f"{s}.npz", **arrays(rng, padded, n, labels))
    return path


def test_layout_rules(tmp_path, padded):
    rng = np.random.default_rng(0)
    folder = make_folder(tmp_path / "mydata", rng, padded)
    raw = read_npz_folder(folder)
    assert raw.modality_names == ["audio", "static", "video"]  # sorted
    assert raw.name == "mydata" and raw.task == "regression" and raw.metric_family == "regression"
    assert raw.input_dims == {"audio": 2, "static": 4, "video": 3}
    tr = raw.train
    assert tr.modalities["static"].shape == (12, 1, 4)
    assert (tr.lengths["audio"] == 11).all() and (tr.lengths["static"] == 1).all()
    assert tr.ids[3] == "clip3" and "aux" in tr.extra_labels

    data = load_dataset(folder, seq_len=9)
    np.testing.assert_allclose(data.train.modalities["video"],
                               segment_mean_ref(tr.modalities["video"], tr.lengths["video"], 9),
                               atol=1e-6)
    static = data.test.modalities["static"]  # the single step is repeated over the L steps
    np.testing.assert_allclose(static, np.repeat(raw.test.modalities["static"], 9, axis=1))


@pytest.mark.parametrize("kind,task,k", [("float", "regression", 1), ("int", "classification", 4),
                                         ("multi", "multilabel", 5)])
def test_label_dtype_picks_task(tmp_path, padded, kind, task, k):
    rng = np.random.default_rng(1)
    data = load_dataset(make_folder(tmp_path / "d", rng, padded, kind))
    assert data.task == task and data.metric_family == task
    if task == "classification":
        k = int(max(s.labels.max() for s in data.splits().values())) + 1
    assert data.num_outputs == k
    y = data.train.labels
    assert y.dtype == (np.int64 if task == "classification" else np.float32)


def test_valid_carved_when_absent(tmp_path, padded):
    rng = np.random.default_rng(2)
    folder = make_folder(tmp_path / "d", rng, padded, "int", splits=("train", "test"))
    assert read_npz_folder(folder).valid is None
    data = read_npz_folder(folder, valid_fraction=0.25, split_seed=3)
    assert len(data.train) + len(data.valid) == 12 and len(data.valid) == 3
    assert not set(data.train.ids) & set(data.valid.ids)
    again = read_npz_folder(folder, valid_fraction=0.25, split_seed=3)
    np.testing.assert_array_equal(again.valid.ids, data.valid.ids)


def test_writer_round_trip_with_present_and_meta(tmp_path, padded):
    rng = np.random.default_rng(3)
    raw = read_npz_folder(make_folder(tmp_path / "d", rng, padded, "int"))
    order = ["video", "audio", "static"]
    mask = np.ones((6, 3), bool)
    mask[[0, 2], 1] = False
    t = raw.test.reordered(order)
    data = raw.replace(modality_names=order, name="renamed", metric_family="classification",
                       test=Split(t.modalities, t.lengths, t.labels, t.ids, mask, t.extra_labels))
    out = write_npz_folder(data, tmp_path / "copy")
    assert json.loads((out / "meta.json").read_text())["modality_names"] == order
    back = read_npz_folder(out)
    assert back.modality_names == order and back.name == "renamed"
    np.testing.assert_array_equal(back.test.present, mask)
    np.testing.assert_array_equal(back.train.modalities["video"], data.train.modalities["video"])
    # a stale split file is removed when the data has no such split
    write_npz_folder(data.replace(valid=None), out)
    assert not (out / "valid.npz").exists() and read_npz_folder(out).valid is None


def _bad(tmp_path, padded, edit, split="valid"):
    rng = np.random.default_rng(4)
    folder = make_folder(tmp_path / "bad", rng, padded)
    path = folder / f"{split}.npz"
    with np.load(path) as z:
        a = dict(z)
    edit(a)
    np.savez(path, **a)
    return folder


def _set(key, fn):
    return lambda a: a.__setitem__(key, fn(a))


@pytest.mark.parametrize("edit,pattern", [
    (lambda a: a.pop("labels"), r"valid\.npz \(split 'valid'\): missing key 'labels'"),
    (_set("video", lambda a: a["video"][..., None]),
     r"key 'video': a modality must have rank 3 \(N, L, d\) or 2 \(N, d\), got shape"),
    (_set("audio", lambda a: a["audio"][:3]), r"key 'audio': 3 samples but 'labels' has 5"),
    (_set("video_lengths", lambda a: a["video_lengths"] + 7),
     r"key 'video_lengths': lengths must lie in \[1, L=7\]"),
    (_set("video_lengths", lambda a: a["video_lengths"] * 0),
     r"key 'video_lengths': lengths must lie in \[1, L=7\] .* index 0 has 0"),
    (_set("video_lengths", lambda a: a["video_lengths"].astype(float)),
     r"key 'video_lengths': expected integers"),
    (_set("ghost_lengths", lambda a: a["video_lengths"]), r"key 'ghost_lengths': no modality 'ghost'"),
    (_set("labels", lambda a: np.where(np.arange(5) == 2, np.nan, a["labels"])),
     r"key 'labels': non-finite label at index 2"),
    (_set("labels", lambda a: a["labels"][:, None, None]), r"key 'labels': expected rank 1"),
    (_set("ids", lambda a: a["ids"].astype(object)), r"key 'ids': cannot load without pickle"),
    (lambda a: a.pop("static"), r"valid\.npz: modalities .* differ from train\.npz's"),
    (_set("audio", lambda a: np.concatenate([a["audio"]] * 2, axis=2)),
     r"valid\.npz, key 'audio': feature size 4 but train\.npz has 2"),
    (_set("labels", lambda a: np.arange(5)), r"task 'classification' but train\.npz's labels give"),
])
def test_errors_name_file_split_key(tmp_path, padded, edit, pattern):
    folder = _bad(tmp_path, padded, edit)
    with pytest.raises(DataFormatError, match=pattern):
        load_dataset(folder)


def test_folder_errors(tmp_path, padded):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither train.npz"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataFormatError, match="missing train.npz"):
        read_npz_folder(tmp_path / "empty")
    np.savez(tmp_path / "empty" / "train.npz", labels=np.zeros(3, np.float32))
    with pytest.raises(DataFormatError, match="no modality arrays"):
        read_npz_folder(tmp_path / "empty")
    folder = make_folder(tmp_path / "d", np.random.default_rng(5), padded)
    (folder / "meta.json").write_text(json.dumps({"modality_names": ["audio", "video"]}))
    with pytest.raises(DataFormatError, match="do not match"):
        read_npz_folder(folder)
    (folder / "meta.json").write_text(json.dumps({"colour": "red"}))
    with pytest.raises(DataFormatError, match="meta.json"):
        read_npz_folder(folder)


def test_meta_task_decides_how_labels_are_read(tmp_path, padded):
    rng = np.random.default_rng(6)
    folder = make_folder(tmp_path / "d", rng, padded)
    for s in ("train", "valid", "test"):  # class ids stored as floats, as CSV exports do
        with np.load(folder / f"{s}.npz") as z:
            a = dict(z)
        a["labels"] = (np.arange(len(a["labels"])) % 3).astype(np.float64)
        np.savez(folder / f"{s}.npz", **a)
    (folder / "meta.json").write_text(json.dumps({"task": "classification"}))
    data = read_npz_folder(folder)
    assert data.task == "classification" and data.num_outputs == 3
    assert data.train.labels.dtype == np.int64 and list(data.train.labels[:4]) == [0, 1, 2, 0]
    (folder / "meta.json").write_text(json.dumps({"task": "multilabel"}))
    with pytest.raises(DataFormatError, match=r"train\.npz.*meta\.json declares task "
                       r"'multilabel'.*shape \(12,\)"):
        read_npz_folder(folder)
    with np.load(folder / "valid.npz") as z:
        a = dict(z)
    a["labels"] = a["labels"] + 0.5
    np.savez(folder / "valid.npz", **a)
    (folder / "meta.json").write_text(json.dumps({"task": "classification"}))
    with pytest.raises(DataFormatError, match=r"valid\.npz.*class labels must be integers"):
        read_npz_folder(folder)


@pytest.mark.parametrize("text,pattern", [
    ("{not json", r"meta\.json: not valid JSON"),
    (json.dumps([1, 2]), r"meta\.json: expected an object"),
    (json.dumps({"metric_family": "mosx"}), r"meta\.json, key 'metric_family': expected one of"),
    (json.dumps({"task": "ranking"}), r"meta\.json, key 'task'"),
    (json.dumps({"num_outputs": "3"}), r"meta\.json, key 'num_outputs': expected a positive"),
    (json.dumps({"modality_names": "audio"}), r"meta\.json, key 'modality_names'"),
    (json.dumps({"name": 7}), r"meta\.json, key 'name'"),
])
def test_invalid_meta_json_names_the_file(tmp_path, padded, text, pattern):
    folder = make_folder(tmp_path / "d", np.random.default_rng(7), padded)
    (folder / "meta.json").write_text(text)
    with pytest.raises(DataFormatError, match=pattern):
        load_dataset(folder)


@pytest.mark.parametrize("labels,pattern", [
    ([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 10**8], r"class ids reach 100000000 but there are 17 "),
    ([0] * 12, r"classification needs at least 2 classes, the labels give 1"),
])
def test_class_ids_must_make_a_labelling(tmp_path, padded, labels, pattern):
    """A damaged label (1e8 read as a class id) must not build a model with 1e8 outputs."""
    folder = make_folder(tmp_path / "d", np.random.default_rng(8), padded, labels="int",
                         splits=("train", "test"))
    with np.load(folder / "train.npz") as z:
        a = dict(z)
    a["labels"] = np.array(labels)
    np.savez(folder / "train.npz", **a)
    with np.load(folder / "test.npz") as z:
        a = dict(z)
    a["labels"] = np.zeros(len(a["labels"]), dtype=np.int64)
    np.savez(folder / "test.npz", **a)
    with pytest.raises(DataFormatError, match=pattern):
        read_npz_folder(folder)
