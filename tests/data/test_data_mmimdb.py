"""MM-IMDB: a tiny multimodal_imdb.hdf5 written like the original release's make_dataset.py."""

from __future__ import annotations

import json
from itertools import product

import h5py
import numpy as np
import pytest

from coupled_mamba.data import DataFormatError, load_dataset

SOURCES = ("features", "vgg_features", "three_grams", "word_grams", "images", "sequences",
           "genres", "imdb_ids")
RANGES = {"train": (0, 20), "dev": (20, 26), "test": (26, 33)}


def fuel_split_array(split_dict):
    """Fuel's H5PYDataset.create_split_array layout (sources sorted, one row per pair)."""
    sources = sorted({s for d in split_dict.values() for s in d})
    dtype = np.dtype([("split", "S5"), ("source", "S12"), ("start", np.int64),
                      ("stop", np.int64), ("indices", h5py.ref_dtype), ("available", bool),
                      ("comment", "S1")])
    arr = np.empty(len(split_dict) * len(sources), dtype=dtype)
    for i, (split, source) in enumerate(product(split_dict, sources)):
        start, stop = split_dict[split].get(source, (0, 0))
        arr[i] = (split.encode(), source.encode(), start, stop, h5py.Reference(),
                  source in split_dict[split], b".")
    return arr


def write_mmimdb(path, rng, n=33, ranges=RANGES, split_attr=True):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rng.normal(size=(n, 300)).astype(np.float32))
        f.create_dataset("vgg_features",
                         data=np.maximum(rng.normal(size=(n, 4096)), 0).astype(np.float32) * 3)
        f.create_dataset("three_grams", data=rng.random((n, 50)).astype(np.float32))
        f.create_dataset("word_grams", data=rng.random((n, 20)).astype(np.float32))
        f.create_dataset("images", data=rng.integers(0, 255, (n, 3, 8, 6)).astype(np.int32))
        seqs = f.create_dataset("sequences", (n,), dtype=h5py.vlen_dtype(np.int32))
        for i in range(n):
            seqs[i] = rng.integers(0, 500, rng.integers(3, 30)).astype(np.int32)
        genres = f.create_dataset("genres", data=(rng.random((n, 23)) < 0.2).astype(np.int32))
        genres.attrs["target_names"] = json.dumps([f"genre{i}" for i in range(23)])
        f.create_dataset("imdb_ids", data=np.array([f"{i:07d}" for i in range(n)], dtype="S7"))
        for name in ("features", "vgg_features", "genres"):
            f[name].dims[0].label = "batch"
        if split_attr:
            f.attrs["split"] = fuel_split_array(
                {s: {src: r for src in SOURCES} for s, r in ranges.items()})
    return path


def test_reads_release_layout(tmp_path):
    rng = np.random.default_rng(0)
    path = write_mmimdb(tmp_path / "multimodal_imdb.hdf5", rng)
    data = load_dataset(path)
    assert data.name == "mmimdb" and data.task == "multilabel" and data.num_outputs == 23
    assert data.metric_family == "multilabel" and data.modality_names == ["text", "image"]
    assert data.input_dims == {"text": 30, "image": 410} and data.seq_len == 10
    assert (len(data.train), len(data.valid), len(data.test)) == (20, 6, 7)
    assert data.valid.ids.tolist() == [f"{i:07d}" for i in range(20, 26)]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(data.test.labels, f["genres"][26:33])
        vgg = f["vgg_features"][()].astype(np.float64)
    assert data.train.labels.dtype == np.float32
    mean, std = vgg[:20].mean(0), vgg[:20].std(0)
    std[std == 0] = 1
    flat = data.test.modalities["image"].reshape(7, -1)[:, :4096]
    np.testing.assert_allclose(flat, (vgg[26:] - mean) / std, rtol=1e-4, atol=1e-4)
    # 4096 features in 10 tokens of 410: the last 4 slots are padding
    assert (data.test.modalities["image"][:, -1, -4:] == 0).all()


def test_other_sources_and_tokens(tmp_path):
    path = write_mmimdb(tmp_path / "m.h5", np.random.default_rng(1))
    data = load_dataset(path, seq_len=5, text_source="three_grams", standardize_features=False)
    assert data.input_dims == {"text": 10, "image": 820} and data.seq_len == 5
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(data.train.modalities["text"].reshape(20, 50),
                                   f["three_grams"][:20])


def test_bad_files(tmp_path):
    rng = np.random.default_rng(2)
    no_split = write_mmimdb(tmp_path / "a.hdf5", rng, split_attr=False)
    with pytest.raises(DataFormatError, match="no root attribute 'split'"):
        load_dataset(no_split)
    with pytest.raises(DataFormatError, match=r"missing dataset 'audio'"):
        load_dataset(no_split, image_source="audio")
    with pytest.raises(DataFormatError, match=r"dataset 'images' \(image\): expected rank 2"):
        load_dataset(no_split, image_source="images")
    bad_range = write_mmimdb(tmp_path / "b.hdf5", rng, ranges={"train": (0, 20), "test": (20, 40)})
    with pytest.raises(DataFormatError, match=r"split 'test' range \[20, 40\) outside"):
        load_dataset(bad_range)
    with h5py.File(bad_range, "a") as f:
        arr = fuel_split_array({"train": {"features": (0, 20), "vgg_features": (0, 19),
                                          "genres": (0, 20), "imdb_ids": (0, 20)}})
        f.attrs["split"] = arr
    with pytest.raises(DataFormatError, match="different row ranges per source"):
        load_dataset(bad_range)
