"""PyTorch view of a :class:`Split`: per-sample items and the batch layout models consume.

Shape letters: B batch, L_m length of modality m, d_m its feature size, M modalities, K labels.

Batch dict (from :func:`collate` or :meth:`MultimodalTorchDataset.batch`):

- ``inputs``: list of M float32 tensors (B, L_m, d_m), in ``modality_names`` order;
- ``mask``: list of M bool tensors (B, L_m), True on valid steps (t < length);
- ``present``: (B, M) bool, False where the modality was dropped (missing-modality protocol);
- ``labels``: float32 (B,) regression | int64 (B,) classification | float32 (B, K) multi-label;
- ``index``: (B,) int64 row indices into the split (to join predictions with ``Split.ids``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ._types import Split


class MultimodalTorchDataset(Dataset):
    """Wraps a Split; item i -> dict with the batch keys above, without the batch axis.

    Args:
        split: the data (converted to tensors once, sharing memory where dtypes allow).
        modality_names: order of ``inputs``/``mask``/``present`` (default the split's order).
    """

    def __init__(self, split: Split, modality_names: list[str] | None = None):
        names = list(split.modalities) if modality_names is None else list(modality_names)
        split = split.reordered(names)
        self.modality_names = names
        self.inputs = [torch.from_numpy(np.ascontiguousarray(split.modalities[m], np.float32))
                       for m in names]
        self.masks = [torch.arange(x.shape[1])[None, :]
                      < torch.from_numpy(split.lengths[m])[:, None]
                      for m, x in zip(names, self.inputs, strict=True)]
        n = len(split)
        self.present = (torch.ones(n, len(names), dtype=torch.bool) if split.present is None
                        else torch.from_numpy(split.present))
        y = split.labels
        y = y.astype(np.int64) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)
        self.labels = torch.from_numpy(y)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        return {"inputs": [x[i] for x in self.inputs], "mask": [k[i] for k in self.masks],
                "present": self.present[i], "labels": self.labels[i],
                "index": torch.tensor(i, dtype=torch.int64)}

    def batch(self, index) -> dict:
        """The collated batch for ``index`` ((B,) ints, tensor or array) in one gather per array;
        equals ``collate([self[i] for i in index])``."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        return {"inputs": [x[index] for x in self.inputs], "mask": [k[index] for k in self.masks],
                "present": self.present[index], "labels": self.labels[index], "index": index}


def collate(items: list[dict]) -> dict:
    """Stack items of :class:`MultimodalTorchDataset` into the batch dict (module docstring)."""
    if not items:
        raise ValueError("collate needs at least one item")
    n_mod = len(items[0]["inputs"])
    return {
        "inputs": [torch.stack([it["inputs"][j] for it in items]) for j in range(n_mod)],
        "mask": [torch.stack([it["mask"][j] for it in items]) for j in range(n_mod)],
        "present": torch.stack([it["present"] for it in items]),
        "labels": torch.stack([it["labels"] for it in items]),
        "index": torch.stack([torch.as_tensor(it["index"], dtype=torch.int64) for it in items]),
    }
