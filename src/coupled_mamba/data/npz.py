"""The generic npz folder format: anyone's data, loaded without pickle.

Shape letters: N samples, L_m padded length of modality m, d_m its feature size, K labels.

A folder holds ``train.npz`` and optionally ``valid.npz`` and ``test.npz``. In each file:

- ``labels``: (N,) float -> regression; (N,) int or bool -> classification (class ids 0..C-1);
  (N, K) -> multi-label 0/1 targets.
- ``<name>_lengths``: optional (N,) int valid lengths of modality ``name``, 1 <= len <= L_m
  (absent: every step is valid).
- ``ids``: optional (N,) str (a unicode array, not an object array).
- ``present``: optional (N, M) bool modality-present mask, columns in modality order.
- ``labels_<name>``: optional auxiliary targets, read into ``Split.extra_labels[name]``.
- every other array is a modality named by its key: (N, L_m, d_m), or (N, d) which is read as a
  single-step sequence (N, 1, d) (a static feature vector; alignment repeats it over the steps).

Modality order is sorted by name unless an optional ``meta.json`` gives ``modality_names``;
``meta.json`` may also give ``name``, ``metric_family``, ``num_outputs`` and ``task`` (written by
:func:`write_npz_folder`). A declared ``task`` decides how labels are read: "classification" takes
integer-valued float labels as class ids, "regression" takes int labels as values. Files are
opened with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._common import (
    NonFiniteCounter,
    check_finite_labels,
    class_labels,
    inferred_num_classes,
    stratified_holdout,
)
from ._types import METRIC_FAMILIES, SPLIT_NAMES, TASKS, DataFormatError, MultimodalData, Split

_RESERVED = ("labels", "ids", "present")
_META_KEYS = {"name", "metric_family", "modality_names", "num_outputs", "task"}
_FAMILY_OF_TASK = {"regression": "regression", "classification": "classification",
                   "multilabel": "multilabel"}


def _task_of(y: np.ndarray, where: str, declared: str | None) -> str:
    """The task of labels ``y``: from their rank and dtype, or ``declared`` (meta.json) when the
    labels can be read that way."""
    if y.ndim not in (1, 2):
        raise DataFormatError(f"{where}, key 'labels': expected rank 1 (N,) or 2 (N, K), got "
                              f"shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)
            or y.dtype == bool):
        raise DataFormatError(f"{where}, key 'labels': expected a float, int or bool array, got "
                              f"dtype {y.dtype}")
    if y.ndim == 2:
        inferred = "multilabel"
        if y.shape[1] < 1:
            raise DataFormatError(f"{where}, key 'labels': (N, K) targets need K >= 1, got shape "
                                  f"{y.shape}")
    else:
        inferred = "regression" if np.issubdtype(y.dtype, np.floating) else "classification"
    if declared is None or declared == inferred:
        return inferred
    if y.ndim == 1 and declared in ("regression", "classification"):
        return declared
    raise DataFormatError(f"{where}, key 'labels': meta.json declares task {declared!r}, which "
                          f"labels of shape {y.shape} and dtype {y.dtype} cannot hold (expected "
                          f"{'(N,)' if declared != 'multilabel' else '(N, K)'} labels)")


def _load_arrays(path: Path, where: str) -> dict[str, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy and zipfile raise many types for a file that is no archive
        raise DataFormatError(f"{where}: cannot read as .npz ({type(exc).__name__}: {exc})") \
            from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataFormatError(f"{where}: cannot read as .npz (a single .npy array, not an "
                              "archive of named arrays)")
    arrays = {}
    with z:
        for key in z.files:
            try:
                arrays[key] = z[key]
            # A damaged member fails with BadZipFile (CRC), zlib.error, EOFError, ValueError
            # (header), ...: all mean the file is bad.
            except Exception as exc:
                if "allow_pickle" in str(exc):  # an object array, which needs pickle
                    raise DataFormatError(
                        f"{where}, key {key!r}: cannot load without pickle ({exc}); store "
                        "strings as a unicode array (np.array(ids, dtype=str))") from exc
                raise DataFormatError(f"{where}, key {key!r}: damaged array "
                                      f"({type(exc).__name__}: {exc})") from exc
    return arrays


def _read_file(path: Path, split: str, cleaner: NonFiniteCounter,
               declared_task: str | None = None) -> tuple[dict, str]:
    where = f"{path} (split {split!r})"
    arrays = _load_arrays(path, where)
    if "labels" not in arrays:
        raise DataFormatError(f"{where}: missing key 'labels' (expected (N,) or (N, K) array); "
                              f"keys present: {sorted(arrays)}")
    y = arrays.pop("labels")
    task = _task_of(y, where, declared_task)
    n = y.shape[0]
    check_finite_labels(y, f"{where}, key 'labels'")
    if task == "classification":
        y = class_labels(y, f"{where}, key 'labels'")
    elif task == "multilabel":
        if y.size and not np.isin(y, (0, 1)).all():
            raise DataFormatError(f"{where}, key 'labels': (N, K) multi-label targets must be 0/1")
        y = y.astype(np.float32)
    else:
        y = y.astype(np.float32)

    def rows(key, a):
        if a.ndim == 0:
            raise DataFormatError(f"{where}, key {key!r}: a scalar, expected {n} rows")
        if a.shape[0] != n:
            raise DataFormatError(
                f"{where}, key {key!r}: {a.shape[0]} samples but 'labels' has {n}")
        return a

    ids = arrays.pop("ids", None)
    if ids is not None:
        if ids.ndim != 1:
            raise DataFormatError(f"{where}, key 'ids': expected rank 1 (N,), got {ids.shape}")
        ids = rows("ids", ids).astype(str)
    else:
        ids = np.array([f"{split}_{i}" for i in range(n)])
    present = arrays.pop("present", None)
    if present is not None:
        if present.ndim != 2 or not (present.dtype == bool
                                     or np.issubdtype(present.dtype, np.integer)):
            raise DataFormatError(f"{where}, key 'present': expected (N, M) bool, got "
                                  f"{present.dtype} {present.shape}")
        present = rows("present", present).astype(bool)
    extra = {}
    for key in [k for k in arrays if k.startswith("labels_")]:
        a = rows(key, arrays.pop(key))
        check_finite_labels(a, f"{where}, key {key!r}")
        extra[key[len("labels_"):]] = a
    length_keys = [k for k in arrays if k.endswith("_lengths")]
    lengths_raw = {k[: -len("_lengths")]: arrays.pop(k) for k in length_keys}

    mods, lengths = {}, {}
    for key, x in arrays.items():
        if x.ndim == 2:  # a static vector per sample: a one-step sequence
            x = x[:, None, :]
        if x.ndim != 3:
            raise DataFormatError(f"{where}, key {key!r}: a modality must have rank 3 (N, L, d) "
                                  f"or 2 (N, d), got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataFormatError(f"{where}, key {key!r}: expected numeric features, got {x.dtype}")
        mods[key] = cleaner.clean(rows(key, x), f"{split}/{key}")
    if not mods:
        raise DataFormatError(f"{where}: no modality arrays (every key other than labels, ids, "
                              "present, labels_* and *_lengths is a modality)")
    for m, ln in lengths_raw.items():
        lkey = f"{m}_lengths"
        if m not in mods:
            raise DataFormatError(f"{where}, key {lkey!r}: no modality {m!r} in the file "
                                  f"(modalities: {sorted(mods)})")
        if ln.ndim != 1:
            raise DataFormatError(f"{where}, key {lkey!r}: expected rank 1 (N,), got {ln.shape}")
        if not np.issubdtype(ln.dtype, np.integer):
            raise DataFormatError(f"{where}, key {lkey!r}: expected integers, got {ln.dtype}")
        ln = rows(lkey, ln).astype(np.int64)
        big = mods[m].shape[1]
        if n and (ln.min() < 1 or ln.max() > big):
            i = int(np.flatnonzero((ln < 1) | (ln > big))[0])
            raise DataFormatError(f"{where}, key {lkey!r}: lengths must lie in [1, L={big}] "
                                  f"(L = axis 1 of {m!r}); index {i} has {int(ln[i])}")
        lengths[m] = ln
    for m, x in mods.items():
        lengths.setdefault(m, np.full(n, x.shape[1], dtype=np.int64))
    if present is not None and present.shape[1] != len(mods):
        raise DataFormatError(f"{where}, key 'present': {present.shape[1]} columns but "
                              f"{len(mods)} modalities")
    return {"modalities": mods, "lengths": lengths, "labels": y, "ids": ids, "present": present,
            "extra_labels": extra}, task


def _read_meta(path: Path) -> dict:
    """meta.json as a dict ({} when absent), every value checked; errors name the file."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or set(meta) - _META_KEYS:
        raise DataFormatError(f"{path}: expected an object with keys from "
                              f"{sorted(_META_KEYS)}, got {meta!r:.200}")
    names = meta.get("modality_names", [])
    checks = {
        "name": isinstance(meta.get("name", ""), str),
        "metric_family": meta.get("metric_family", "regression") in METRIC_FAMILIES,
        "task": meta.get("task", "regression") in TASKS,
        "num_outputs": type(meta.get("num_outputs", 1)) is int and meta.get("num_outputs", 1) > 0,
        "modality_names": isinstance(names, list) and len(set(map(str, names))) == len(names)
        and all(isinstance(m, str) for m in names),
    }
    expected = {"name": "a string", "metric_family": f"one of {METRIC_FAMILIES}",
                "task": f"one of {TASKS}", "num_outputs": "a positive integer",
                "modality_names": "a list of distinct strings"}
    for key, ok in checks.items():
        if not ok:
            raise DataFormatError(f"{path}, key {key!r}: expected {expected[key]}, got "
                                  f"{meta[key]!r:.200}")
    return meta


def read_npz_folder(folder, *, name: str | None = None, metric_family: str | None = None,
                    valid_fraction: float = 0.0, split_seed: int = 0) -> MultimodalData:
    """Read a generic npz folder as stored (no alignment; ``load_dataset`` aligns).

    Args:
        folder: holds ``train.npz`` [+ ``valid.npz``, ``test.npz``, ``meta.json``].
        name: default meta.json's name, else the folder name.
        metric_family: default meta.json's, else the task ("regression", "classification",
            "multilabel").
        valid_fraction: when there is no ``valid.npz``, hold out this share of train (seeded by
            ``split_seed``, stratified for classification); 0 = no validation split.
    Returns:
        MultimodalData; modalities of different L_m are left unaligned.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"npz folder not found: {folder}")
    if not (folder / "train.npz").is_file():
        raise DataFormatError(f"{folder}: missing train.npz (expected train.npz and optional "
                              "valid.npz, test.npz)")
    meta = _read_meta(folder / "meta.json")
    cleaner = NonFiniteCounter(str(folder))
    parts, tasks = {}, {}
    for s in SPLIT_NAMES:
        p = folder / f"{s}.npz"
        if p.is_file():
            parts[s], tasks[s] = _read_file(p, s, cleaner, meta.get("task"))
    cleaner.warn()

    train = parts["train"]
    names = sorted(train["modalities"])
    if "modality_names" in meta:
        if sorted(meta["modality_names"]) != names:
            raise DataFormatError(f"{folder / 'meta.json'}: modality_names "
                                  f"{meta['modality_names']} do not match train.npz's {names}")
        names = list(meta["modality_names"])
    for s, part in parts.items():
        where = f"{folder / (s + '.npz')}"
        if sorted(part["modalities"]) != sorted(names):
            raise DataFormatError(f"{where}: modalities {sorted(part['modalities'])} differ from "
                                  f"train.npz's {sorted(names)}")
        for m in names:
            d, d0 = part["modalities"][m].shape[2], train["modalities"][m].shape[2]
            if d != d0:
                raise DataFormatError(
                    f"{where}, key {m!r}: feature size {d} but train.npz has {d0}")
        if tasks[s] != tasks["train"]:
            raise DataFormatError(f"{where}, key 'labels': task {tasks[s]!r} but train.npz's "
                                  f"labels give {tasks['train']!r}")
        if tasks[s] == "multilabel" and part["labels"].shape[1] != train["labels"].shape[1]:
            raise DataFormatError(f"{where}, key 'labels': {part['labels'].shape[1]} labels but "
                                  f"train.npz has {train['labels'].shape[1]}")
    task = tasks["train"]
    if task == "regression":
        num_outputs = 1
    elif task == "multilabel":
        num_outputs = int(train["labels"].shape[1])
    else:
        labels = [p["labels"] for p in parts.values()]
        if "num_outputs" in meta:
            top = max(int(y.max(initial=0)) for y in labels) + 1
            num_outputs = meta["num_outputs"]
        else:
            num_outputs = top = inferred_num_classes(labels, f"{folder}, key 'labels'")
        if num_outputs < top:
            raise DataFormatError(f"{folder / 'meta.json'}: num_outputs={num_outputs} but labels "
                                  f"reach class {top - 1}")

    # The file's present columns already follow the modality order; only the dicts are reordered.
    splits = {s: Split({m: p["modalities"][m] for m in names}, {m: p["lengths"][m] for m in names},
                       p["labels"], p["ids"], p["present"], p["extra_labels"])
              for s, p in parts.items()}
    if "valid" not in splits and valid_fraction:
        keep, held = stratified_holdout(splits["train"].labels, valid_fraction, split_seed,
                                        str(folder / "train.npz"))
        splits["valid"] = splits["train"].subset(held)
        splits["train"] = splits["train"].subset(keep)
    return MultimodalData(
        splits["train"], splits.get("valid"), splits.get("test"), names, task, num_outputs,
        metric_family or meta.get("metric_family") or _FAMILY_OF_TASK[task],
        name or meta.get("name") or folder.name, str(folder))


def write_npz_folder(data: MultimodalData, folder, *, compress: bool = False) -> Path:
    """Write ``data`` as a generic npz folder (the inverse of :func:`read_npz_folder`).

    Args:
        data: any MultimodalData (aligned or not); modality names must not collide with the
            reserved keys (labels, ids, present, labels_*, *_lengths).
        folder: created if needed; a stale ``valid.npz``/``test.npz`` for a split the data lacks
            is removed so it cannot be read back by mistake.
        compress: use ``np.savez_compressed`` (smaller, slower).
    Returns:
        the folder. ``meta.json`` records name, metric_family, modality_names, task, num_outputs.
    """
    for m in data.modality_names:
        if m in _RESERVED or m.startswith("labels_") or m.endswith("_lengths"):
            raise ValueError(f"modality name {m!r} collides with a reserved npz key")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compress else np.savez
    splits = data.splits()
    for s in SPLIT_NAMES:
        target = folder / f"{s}.npz"
        if s not in splits:
            target.unlink(missing_ok=True)
            continue
        sp = splits[s]
        arrays = {"labels": sp.labels, "ids": np.asarray(sp.ids, dtype=str)}
        for m in data.modality_names:
            arrays[m] = sp.modalities[m]
            arrays[f"{m}_lengths"] = sp.lengths[m]
        if sp.present is not None:
            arrays["present"] = sp.present
        for k, v in sp.extra_labels.items():
            arrays[f"labels_{k}"] = v
        save(target, **arrays)
    meta = {"name": data.name, "metric_family": data.metric_family,
            "modality_names": data.modality_names, "task": data.task,
            "num_outputs": data.num_outputs}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder
