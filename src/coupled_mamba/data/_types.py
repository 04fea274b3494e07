"""Containers for multimodal data: :class:`Split` (one partition) and :class:`MultimodalData`.

Shape letters: N samples, M modalities, L padded sequence length, d_m feature size of modality m,
K labels (multi-label task).

A modality is a right zero-padded array (N, L, d_m) plus valid lengths (N,). The present mask
(N, M) flags modalities that were dropped (missing-modality protocol, docs/MATH.md section 4);
its columns follow the order of the split's ``modalities`` dict, which loaders keep equal to
``MultimodalData.modality_names``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._tasks import METRIC_FAMILIES, TASKS
from ..errors import UserInputError

SPLIT_NAMES = ("train", "valid", "test")


class DataFormatError(UserInputError):
    """A data file or array does not have the expected layout (a ValueError, via UserInputError).

    Messages name the file, split and key and say what was expected.
    """


@dataclass
class Split:
    """One partition (train, valid or test) of a multimodal dataset.

    Attributes:
        modalities: name -> (N, L_m, d_m) float32, right zero-padded. After alignment every
            modality shares one L.
        lengths: name -> (N,) int64 valid lengths, 1 <= lengths <= L_m.
        labels: (N,) float32 (regression), (N,) int64 class ids (classification) or (N, K)
            float32 0/1 (multi-label).
        ids: (N,) str sample identifiers.
        present: (N, M) bool, True where the modality is present, columns in the order of
            ``modalities``; None means every modality is present.
        extra_labels: name -> (N, ...) auxiliary targets (e.g. CH-SIMS ``regression_labels_T``).

    Arrays are converted on construction (float32 features, int64 lengths, str ids, bool present);
    arrays that already have those dtypes are not copied. The constructor validates shapes and
    raises :class:`DataFormatError` (a ValueError) naming the offending key.
    """

    modalities: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    labels: np.ndarray
    ids: np.ndarray
    present: np.ndarray | None = None
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.modalities = {k: np.asarray(v, dtype=np.float32) for k, v in self.modalities.items()}
        self.lengths = {k: np.asarray(v, dtype=np.int64) for k, v in self.lengths.items()}
        self.labels = np.asarray(self.labels)
        self.ids = np.asarray(self.ids).astype(str)
        if self.present is not None:
            self.present = np.asarray(self.present, dtype=bool)
        self.extra_labels = {k: np.asarray(v) for k, v in self.extra_labels.items()}
        self.validate()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def modality_names(self) -> list[str]:
        """Modality names in the order of the ``present`` columns."""
        return list(self.modalities)

    def validate(self, where: str = "Split") -> None:
        """Check shapes and ranges; ``where`` prefixes the error message (file, split)."""
        if not self.modalities:
            raise DataFormatError(f"{where}: no modalities")
        n = self.labels.shape[0] if self.labels.ndim >= 1 else None
        if n is None:
            raise DataFormatError(f"{where}: labels must have shape (N,) or (N, K), got a scalar")
        if self.labels.ndim > 2:
            raise DataFormatError(
                f"{where}: labels must have shape (N,) or (N, K), got {self.labels.shape}")
        if set(self.lengths) != set(self.modalities):
            raise DataFormatError(
                f"{where}: lengths keys {sorted(self.lengths)} must equal modality keys "
                f"{sorted(self.modalities)}")
        for name, x in self.modalities.items():
            if x.ndim != 3:
                raise DataFormatError(
                    f"{where}: modality {name!r} must have shape (N, L, d), got {x.shape}")
            if x.shape[0] != n:
                raise DataFormatError(
                    f"{where}: modality {name!r} has {x.shape[0]} samples but labels have {n}")
            if x.shape[1] < 1 or x.shape[2] < 1:
                raise DataFormatError(
                    f"{where}: modality {name!r} has an empty axis, shape {x.shape}")
            ln = self.lengths[name]
            if ln.shape != (n,):
                raise DataFormatError(
                    f"{where}: lengths of {name!r} must have shape ({n},), got {ln.shape}")
            if n and (ln.min() < 1 or ln.max() > x.shape[1]):
                bad = int(np.flatnonzero((ln < 1) | (ln > x.shape[1]))[0])
                raise DataFormatError(
                    f"{where}: lengths of {name!r} must lie in [1, L={x.shape[1]}], "
                    f"sample {bad} has {int(ln[bad])}")
        if self.ids.shape != (n,):
            raise DataFormatError(f"{where}: ids must have shape ({n},), got {self.ids.shape}")
        if self.present is not None:
            m = len(self.modalities)
            if self.present.shape != (n, m):
                raise DataFormatError(
                    f"{where}: present must have shape (N, M) = ({n}, {m}), "
                    f"got {self.present.shape}")
            if n and not self.present.any(axis=1).all():
                bad = int(np.flatnonzero(~self.present.any(axis=1))[0])
                raise DataFormatError(f"{where}: sample {bad} has no modality present")
        for name, y in self.extra_labels.items():
            if y.ndim < 1 or y.shape[0] != n:
                raise DataFormatError(
                    f"{where}: extra label {name!r} must have {n} rows, got shape {y.shape}")

    def subset(self, index) -> Split:
        """Rows ``index`` (int array, bool mask or slice) of every array, as a new Split."""
        return Split(
            modalities={k: v[index] for k, v in self.modalities.items()},
            lengths={k: v[index] for k, v in self.lengths.items()},
            labels=self.labels[index],
            ids=self.ids[index],
            present=None if self.present is None else self.present[index],
            extra_labels={k: v[index] for k, v in self.extra_labels.items()},
        )

    def reordered(self, modality_names: list[str]) -> Split:
        """The same split with modalities (and present columns) in ``modality_names`` order."""
        names = list(modality_names)
        if sorted(names) != sorted(self.modalities):
            raise ValueError(
                f"modality_names {names} must be a permutation of {list(self.modalities)}")
        if names == list(self.modalities):
            return self
        present = None
        if self.present is not None:
            cols = [list(self.modalities).index(m) for m in names]
            present = self.present[:, cols]
        return Split({m: self.modalities[m] for m in names}, {m: self.lengths[m] for m in names},
                     self.labels, self.ids, present, dict(self.extra_labels))


@dataclass
class MultimodalData:
    """A dataset: splits plus what a model and the metrics need to know about it.

    Attributes:
        train, valid, test: the splits (valid/test may be None).
        modality_names: fixed modality order (model inputs, present-mask columns).
        task: "regression" | "classification" | "multilabel".
        num_outputs: 1 for regression, number of classes, or K labels.
        metric_family: "mosi" | "mosei" | "sims" | "simsv2" | "classification" | "multilabel"
            | "regression" (which metric set applies; see docs/DATA.md).
        name: short dataset name ("mosei", "rosmap", "synthetic", ...).
        source: the path it was read from ("" for generated data).

    Construction reorders each split's modalities to ``modality_names`` and checks that the
    splits agree on modalities and feature sizes and that the labels fit the task.
    """

    train: Split
    valid: Split | None
    test: Split | None
    modality_names: list[str]
    task: str
    num_outputs: int
    metric_family: str
    name: str
    source: str = ""

    def __post_init__(self):
        self.modality_names = list(self.modality_names)
        source = self.source or self.name or "data"
        if self.task not in TASKS:
            raise DataFormatError(f"{source}: task must be one of {TASKS}, got {self.task!r}")
        if self.metric_family not in METRIC_FAMILIES:
            raise DataFormatError(f"{source}: metric_family must be one of {METRIC_FAMILIES}, "
                                  f"got {self.metric_family!r}")
        if self.train is None:
            raise ValueError("train split is required")
        if self.task == "classification" and self.num_outputs < 2:
            raise DataFormatError(f"{source}: classification needs at least 2 classes, the labels "
                                  f"give {self.num_outputs}")
        dims = None
        for split_name in SPLIT_NAMES:
            split = getattr(self, split_name)
            if split is None:
                continue
            where = f"{source} split {split_name!r}"
            if len(split) == 0:
                raise DataFormatError(f"{where}: no samples")
            if sorted(split.modalities) != sorted(self.modality_names):
                raise DataFormatError(
                    f"{where}: modalities {list(split.modalities)} differ from modality_names "
                    f"{self.modality_names}")
            split = split.reordered(self.modality_names)
            setattr(self, split_name, split)
            d = {m: split.modalities[m].shape[2] for m in self.modality_names}
            if dims is None:
                dims = d
            elif d != dims:
                raise DataFormatError(f"{where}: feature sizes {d} differ from train's {dims}")
            self._check_labels(split.labels, where)

    def _check_labels(self, y: np.ndarray, where: str) -> None:
        k = self.num_outputs
        if self.task == "regression":
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.floating):
                raise DataFormatError(
                    f"{where}: regression labels must be float (N,), got {y.dtype} {y.shape}")
            if k != 1:
                raise ValueError(f"num_outputs must be 1 for regression, got {k}")
        elif self.task == "classification":
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise DataFormatError(
                    f"{where}: class labels must be int (N,), got {y.dtype} {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= k):
                raise DataFormatError(
                    f"{where}: class labels must lie in [0, num_outputs={k}), "
                    f"got range [{y.min()}, {y.max()}]")
        else:
            if y.ndim != 2 or y.shape[1] != k:
                raise DataFormatError(
                    f"{where}: multi-label targets must have shape (N, {k}), got {y.shape}")
            if y.size and not np.isin(y, (0, 1)).all():
                raise DataFormatError(f"{where}: multi-label targets must be 0/1")

    def splits(self) -> dict[str, Split]:
        """The non-None splits by name, in train, valid, test order."""
        return {n: getattr(self, n) for n in SPLIT_NAMES if getattr(self, n) is not None}

    @property
    def input_dims(self) -> dict[str, int]:
        """Feature size d_m of each modality, in ``modality_names`` order."""
        return {m: int(self.train.modalities[m].shape[2]) for m in self.modality_names}

    @property
    def seq_len(self) -> int:
        """The common padded length L of every modality; ValueError if the data is unaligned."""
        lens = {int(x.shape[1]) for s in self.splits().values() for x in s.modalities.values()}
        if len(lens) != 1:
            raise ValueError(
                f"{self.name}: modalities have different lengths {sorted(lens)}; the data is "
                "not aligned (use coupled_mamba.data.align_data)")
        return lens.pop()

    @property
    def is_aligned(self) -> bool:
        """True when every modality of every split has the same padded length L."""
        lens = {int(x.shape[1]) for s in self.splits().values() for x in s.modalities.values()}
        return len(lens) == 1

    def replace(self, **changes) -> MultimodalData:
        """A copy with some fields replaced (splits are shared, not copied)."""
        fields = dict(train=self.train, valid=self.valid, test=self.test,
                      modality_names=self.modality_names, task=self.task,
                      num_outputs=self.num_outputs, metric_family=self.metric_family,
                      name=self.name, source=self.source)
        fields.update(changes)
        return MultimodalData(**fields)
