"""MultimodalTorchDataset / collate: the batch dict models and the trainer consume."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from coupled_mamba.data import (
    MultimodalTorchDataset,
    Split,
    apply_missing,
    collate,
    make_synthetic,
)


def test_items_and_batches():
    data = make_synthetic(n_train=40, n_valid=0, n_test=10, seed=0)
    split = apply_missing(data.train, 0.4, seed=1)
    ds = MultimodalTorchDataset(split, data.modality_names)
    assert len(ds) == 40
    item = ds[7]
    assert [x.shape for x in item["inputs"]] == [(40, 16), (40, 8), (40, 12)]
    assert item["labels"].dtype == torch.float32 and item["index"].item() == 7
    idx = [3, 0, 17, 39]
    batch = collate([ds[i] for i in idx])
    direct = ds.batch(idx)
    for key in ("present", "labels", "index"):
        assert torch.equal(batch[key], direct[key])
    for j, m in enumerate(data.modality_names):
        assert batch["inputs"][j].dtype == torch.float32 and batch["inputs"][j].shape[0] == 4
        assert torch.equal(batch["inputs"][j], direct["inputs"][j])
        np.testing.assert_array_equal(batch["inputs"][j].numpy(), split.modalities[m][idx])
        want = np.arange(40)[None, :] < split.lengths[m][idx][:, None]
        np.testing.assert_array_equal(batch["mask"][j].numpy(), want)
        assert batch["mask"][j].dtype == torch.bool
    np.testing.assert_array_equal(batch["present"].numpy(), split.present[idx])
    assert batch["index"].dtype == torch.int64 and batch["index"].tolist() == idx

    loader = DataLoader(ds, batch_size=16, shuffle=False, collate_fn=collate)
    first = next(iter(loader))
    assert first["present"].shape == (16, 3) and first["labels"].shape == (16,)


def test_label_dtypes_and_unaligned_inputs():
    rng = np.random.default_rng(0)
    mods = {"a": rng.normal(size=(6, 9, 2)), "b": rng.normal(size=(6, 4, 3))}
    lengths = {"a": np.array([9, 1, 3, 4, 5, 6]), "b": np.array([4, 4, 1, 2, 3, 4])}
    cls = MultimodalTorchDataset(Split(mods, lengths, rng.integers(0, 3, 6), np.arange(6)))
    b = cls.batch(np.arange(6))
    assert b["labels"].dtype == torch.int64 and b["present"].all()
    assert [x.shape for x in b["inputs"]] == [(6, 9, 2), (6, 4, 3)]
    assert b["mask"][0].sum(1).tolist() == [9, 1, 3, 4, 5, 6]
    multi = MultimodalTorchDataset(Split(mods, lengths, (rng.random((6, 5)) > 0.5).astype(
        np.float32), np.arange(6)), ["b", "a"])
    b = collate([multi[i] for i in range(6)])
    assert b["labels"].shape == (6, 5) and b["labels"].dtype == torch.float32
    assert b["inputs"][0].shape == (6, 4, 3)  # order follows modality_names
