"""A fingerprint of the data a run trains on, so that ``--resume`` refuses other data.

Written to ``RUN_DIR/data.json`` with ``config.yaml``. It records where the data came from (the
path and the size in bytes of each file) and what was read: for each split the number of
samples, the shape and dtype of every array, and a SHA-256 over the labels, lengths, ids and
present mask of every row plus the features of up to :data:`SAMPLE_ROWS` evenly spaced rows.
Only what was read is compared on resume, so data that moved (``data.path`` may change) resumes,
while data of other shapes or content is refused before any model is built.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError

FINGERPRINT_NAME = "data.json"
SAMPLE_ROWS = 64  # feature rows hashed per split: cheap for any dataset size


def _files(path: Path) -> dict[str, int]:
    """Size in bytes of the data file, or of each file directly inside the data folder."""
    if path.is_file():
        return {path.name: path.stat().st_size}
    if path.is_dir():
        return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    return {}


def _split_fingerprint(split, names: list[str]) -> dict[str, Any]:
    n = len(split)
    rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).round().astype(np.int64))
    arrays = {"labels": split.labels, "ids": split.ids}
    if split.present is not None:
        arrays["present"] = split.present
    for m in names:
        arrays[f"{m}_lengths"] = split.lengths[m]
    h = hashlib.sha256()
    for key, a in arrays.items():
        h.update(key.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    for m in names:
        h.update(m.encode())
        h.update(np.ascontiguousarray(split.modalities[m][rows]).tobytes())
    shapes = {key: [list(a.shape), str(a.dtype)] for key, a in arrays.items() if key != "ids"}
    shapes.update({m: [list(split.modalities[m].shape), str(split.modalities[m].dtype)]
                   for m in names})
    return {"n": n, "arrays": shapes, "sha256": h.hexdigest()}


def data_fingerprint(prepared, path) -> dict[str, Any]:
    """The fingerprint of ``prepared`` (a PreparedData) read from ``path`` (see module docs)."""
    path = Path(path) if path is not None else None
    return {
        "path": str(path) if path is not None else None,
        "files": _files(path) if path is not None else {},
        "modalities": list(prepared.modality_names),
        "splits": {s: _split_fingerprint(sp, prepared.modality_names)
                   for s, sp in prepared.splits().items()},
    }


def write_fingerprint(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    (run_dir / FINGERPRINT_NAME).write_text(json.dumps(fingerprint, indent=2) + "\n")


def read_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    """The recorded fingerprint, or None when the run has none (written by older code)."""
    path = run_dir / FINGERPRINT_NAME
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise UserInputError(f"{path}: not valid JSON ({exc}); start over with --overwrite") \
            from None
    if not isinstance(saved, dict) or not isinstance(saved.get("splits"), dict):
        raise UserInputError(f"{path}: not a data fingerprint; start over with --overwrite")
    return saved


def _shape_text(entry) -> str:
    return "absent" if entry is None else f"shape {tuple(entry[0])} {entry[1]}"


def _difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first difference between two fingerprints in words, or None if they agree."""
    if saved.get("modalities") != current["modalities"]:
        return f"modalities {saved.get('modalities')} -> {current['modalities']}"
    a, b = saved["splits"], current["splits"]
    if list(a) != list(b):
        return f"splits {list(a)} -> {list(b)}"
    for s, cur in b.items():
        old = a[s]
        if old.get("n") != cur["n"]:
            return f"{s} split: {old.get('n')} samples -> {cur['n']}"
        for key, shape in cur["arrays"].items():
            was = old.get("arrays", {}).get(key)
            if was != shape:
                return f"{s} split, {key!r}: {_shape_text(was)} -> {_shape_text(shape)}"
        if old.get("sha256") != cur["sha256"]:
            return f"{s} split: same shapes but other values (content hash differs)"
    return None


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """UserInputError unless ``current`` describes the data recorded in ``saved``."""
    diff = _difference(saved, current)
    if diff is not None:
        raise UserInputError(
            f"--resume: the data at {current['path']} is not the data {run_dir} was trained on "
            f"({saved.get('path')}, recorded in {run_dir / FINGERPRINT_NAME}): {diff}; resume "
            "with that data, or start over with --overwrite")
