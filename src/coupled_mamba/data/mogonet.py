"""MOGONET multi-omics folders (BRCA, ROSMAP; github.com/txWang/MOGONET).

Shape letters: N samples, F features of an omics view, n tokens, d = ceil(F / n) token size.

Layout (MOGONET's ``ROSMAP/`` and ``BRCA/`` folders; docs/DATA.md section 2.2): headerless
comma-separated floats, one row per sample; ``{v}_tr.csv`` / ``{v}_te.csv`` hold view v
(1 = mRNA expression, 2 = DNA methylation, 3 = miRNA expression), ``labels_tr.csv`` /
``labels_te.csv`` one class id per line (written as floats), ``{v}_featname.csv`` one feature name
per line. Row i of every ``*_tr.csv`` is the same sample.

Each omics view becomes one modality. A feature vector (F,) becomes a sequence of n tokens,
token k = features [k d, (k+1) d) (the last chunk zero-padded), so the coupled chains have steps
to couple. Features are standardised with the mean and std of the training rows that remain after
a stratified, seeded validation split is carved from ``*_tr``; the test file never enters them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ._common import (
    NonFiniteCounter,
    class_labels,
    inferred_num_classes,
    standardize,
    stratified_holdout,
    to_tokens,
)
from ._types import DataFormatError, MultimodalData, Split

DEFAULT_N_TOKENS = 10
DEFAULT_VALID_FRACTION = 0.2
# MOGONET's view order for both of its datasets (their README): 1 mRNA, 2 methylation, 3 miRNA.
KNOWN_VIEW_NAMES = {"rosmap": ["mrna", "meth", "mirna"], "brca": ["mrna", "meth", "mirna"]}


def _loadtxt(path: Path, ndmin: int) -> np.ndarray:
    try:
        return np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=ndmin)
    except ValueError as exc:
        raise DataFormatError(
            f"{path}: expected headerless comma-separated numbers ({exc})") from exc


def find_views(folder: Path) -> list[int]:
    """View numbers v with a ``{v}_tr.csv`` in ``folder``, ascending."""
    views = sorted(int(m.group(1)) for p in folder.iterdir()
                   if (m := re.fullmatch(r"(\d+)_tr\.csv", p.name)))
    if not views:
        raise DataFormatError(f"{folder}: no '{{v}}_tr.csv' files (expected MOGONET layout "
                              "1_tr.csv, 1_te.csv, ..., labels_tr.csv, labels_te.csv)")
    return views


def read_mogonet(folder, *, n_tokens: int = DEFAULT_N_TOKENS,
                 valid_fraction: float = DEFAULT_VALID_FRACTION, split_seed: int = 0,
                 view_names: list[str] | None = None, standardize_features: bool = True,
                 name: str | None = None) -> MultimodalData:
    """Read a MOGONET folder as a classification dataset of token sequences.

    Args:
        folder: the dataset folder (e.g. ``ROSMAP/``).
        n_tokens: n, sequence length of every view (token size d = ceil(F / n)).
        valid_fraction: share of ``*_tr`` rows held out as the validation split (stratified by
            class, seeded by ``split_seed``); 0 = no validation split.
        view_names: modality names in view order; default mrna/meth/mirna for ROSMAP and BRCA,
            else ``view1``, ``view2``, ...
        standardize_features: z-score each feature with training-split statistics.
        name: default the folder name, lower case.
    Returns:
        MultimodalData: modalities (N, n, d_v) float32, lengths = tokens holding real features,
        int64 labels, task "classification", ids ``tr<row>`` / ``te<row>`` (row in the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MOGONET folder not found: {folder}")
    views = find_views(folder)
    name = name or folder.name.lower()
    if view_names is None:
        known = KNOWN_VIEW_NAMES.get(name)
        view_names = known if known and len(known) == len(views) else [f"view{v}" for v in views]
    view_names = list(view_names)
    if len(view_names) != len(views) or len(set(view_names)) != len(view_names):
        raise UserInputError(f"view_names must be {len(views)} distinct names (views {views}), "
                             f"got {view_names}")

    labels = {}
    for part in ("tr", "te"):
        p = folder / f"labels_{part}.csv"
        if not p.is_file():
            raise DataFormatError(f"{folder}: missing labels_{part}.csv (one class id per line)")
        y = _loadtxt(p, ndmin=1)
        if y.ndim != 1 or y.size == 0:
            raise DataFormatError(f"{p}: expected one label per line, got shape {y.shape}")
        labels[part] = class_labels(y, str(p))

    cleaner = NonFiniteCounter(str(folder))
    raw = {"tr": {}, "te": {}}
    for v, vname in zip(views, view_names, strict=True):
        for part in ("tr", "te"):
            p = folder / f"{v}_{part}.csv"
            if not p.is_file():
                raise DataFormatError(f"{folder}: missing {p.name} (view {v} has {v}_tr.csv)")
            x = _loadtxt(p, ndmin=2)
            if x.shape[0] != labels[part].shape[0]:
                raise DataFormatError(f"{p}: {x.shape[0]} rows but labels_{part}.csv has "
                                      f"{labels[part].shape[0]}")
            raw[part][vname] = cleaner.clean(x, p.name, dtype=np.float64)
        f_tr, f_te = raw["tr"][vname].shape[1], raw["te"][vname].shape[1]
        if f_tr != f_te:
            raise DataFormatError(f"{folder}: {v}_tr.csv has {f_tr} columns but {v}_te.csv {f_te}")
        fn = folder / f"{v}_featname.csv"
        if fn.is_file():
            try:
                n_names = sum(1 for line in fn.read_text().splitlines() if line.strip())
            except UnicodeDecodeError as exc:
                raise DataFormatError(f"{fn}: not a text file ({exc})") from None
            if n_names != f_tr:
                raise DataFormatError(f"{fn}: {n_names} feature names but {v}_tr.csv has {f_tr} "
                                      "columns")
    cleaner.warn()

    n_tr = labels["tr"].shape[0]
    if valid_fraction:
        keep, held = stratified_holdout(labels["tr"], valid_fraction, split_seed,
                                        str(folder / "labels_tr.csv"))
    else:
        keep, held = np.arange(n_tr), np.arange(0)
    rows = {"train": ("tr", keep), "valid": ("tr", held), "test": ("te", None)}

    feats = {s: {} for s in rows}
    lengths = {s: {} for s in rows}
    for vname in view_names:
        tr = raw["tr"][vname]
        parts = [tr[keep], tr[held], raw["te"][vname]]
        if standardize_features:
            parts = standardize(*parts)  # statistics from the kept training rows only
        for s, x in zip(rows, parts, strict=True):
            tokens, valid_len = to_tokens(x, n_tokens, f"{folder}, view {vname!r}")
            feats[s][vname] = tokens
            lengths[s][vname] = np.full(x.shape[0], valid_len, dtype=np.int64)

    splits = {}
    for s, (part, idx) in rows.items():
        if s == "valid" and not valid_fraction:
            continue
        y = labels[part] if idx is None else labels[part][idx]
        index = np.arange(y.shape[0]) if idx is None else idx
        ids = np.array([f"{part}{i}" for i in index])
        splits[s] = Split(feats[s], lengths[s], y, ids)
    num_classes = inferred_num_classes([labels["tr"], labels["te"]], f"{folder}, labels_*.csv")
    return MultimodalData(splits["train"], splits.get("valid"), splits["test"], view_names,
                          "classification", num_classes, "classification", name, str(folder))
