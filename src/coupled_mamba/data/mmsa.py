"""MMSA feature pickles (CMU-MOSI, CMU-MOSEI, CH-SIMS, CH-SIMSV2): reader, writer, npz converter.

Shape letters: N samples, L_t/L_a/L_v padded lengths of text/audio/vision, d feature size.

Layout (docs/DATA.md section 2.1, read from MMSA's and MMSA-FET's code): a dict
``{'train': S, 'valid': S, 'test': S}`` (MMSA-FET may add a ``'config'`` key), each split S a dict
with ``text`` (N, L_t, 768) BERT features, ``text_bert`` (N, 3, L_t) [ids; attention mask;
segments], ``audio`` (N, L_a, d_a), ``vision`` (N, L_v, d_v), ``audio_lengths``/``vision_lengths``
(unaligned files only), ``regression_labels`` (N,), SIMS' ``regression_labels_T/A/V``, ``id``.

SECURITY: unpickling can run code named in the file. Pickles are read with a restricted
unpickler (:mod:`._pickle`) that rebuilds only numpy arrays, numpy scalars and builtin containers
and refuses every other global, naming it; ``trust_pickle=True`` (``--trust-pickle``) is the
explicit opt-out for trusted files that need more, such as MMSA-FET's torch tensors.
:func:`mmsa_to_npz` converts a pickle once to the generic npz folder, which loads without pickle.
This module (through :mod:`._pickle`) is the only place that unpickles.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ._common import (
    NonFiniteCounter,
    as_array,
    check_finite_labels,
    clip_lengths,
    last_nonzero_lengths,
    numeric_array,
    warn_clipped,
)
from ._pickle import load_pickle
from ._types import SPLIT_NAMES, DataFormatError, MultimodalData, Split

MMSA_MODALITIES = ("text", "audio", "vision")
MMSA_NAMES = ("mosi", "mosei", "sims", "simsv2")
_LABEL_RANGE = {"mosi": 3.0, "mosei": 3.0, "sims": 1.0, "simsv2": 1.0}
_META_KEY = "coupled_mamba"  # our entry inside the top-level 'config' dict (MMSA ignores 'config')


def infer_mmsa_name(path) -> str | None:
    """Dataset name from a path such as ``MOSEI/Processed/unaligned_50.pkl``, or None.

    Any path component naming SIMS v2 wins (its file is ``SIMSv2/Processed/sims_unaligned.pkl``);
    otherwise the deepest component that names mosei, mosi or sims.
    """
    parts = [p.lower() for p in Path(path).parts]
    if any(re.search(r"sims[-_ ]?v2", p) for p in parts):
        return "simsv2"
    for part in reversed(parts):
        part = part.replace("ch-", "").replace("cmu-", "")
        for name in ("mosei", "mosi", "sims"):
            if re.search(rf"(^|[^a-z]){name}([^a-z]|$)", part):
                return name
    return None


def _read_split(raw, split: str, modalities, source: str, cleaner: NonFiniteCounter,
                clipped: dict) -> Split:
    where = f"{source}, split {split!r}"
    if not isinstance(raw, dict):
        raise DataFormatError(f"{where}: expected a dict of arrays, got {type(raw).__name__}")
    if "regression_labels" not in raw:
        raise DataFormatError(f"{where}: missing key 'regression_labels' (expected (N,) float)")
    labels = numeric_array(raw["regression_labels"], f"{where}, key 'regression_labels'")
    labels = labels.astype(np.float32).reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 \
        else labels.astype(np.float32)
    if labels.ndim != 1:
        raise DataFormatError(
            f"{where}, key 'regression_labels': expected shape (N,), got {labels.shape}")
    n = labels.shape[0]
    check_finite_labels(labels, f"{where}, key 'regression_labels'")

    mods, lengths = {}, {}
    for m in modalities:
        if m not in raw:
            raise DataFormatError(
                f"{where}: missing key {m!r} (expected an (N, L, d) feature array; "
                f"keys present: {sorted(map(str, raw))})")
        x = numeric_array(raw[m], f"{where}, key {m!r}")
        if x.ndim != 3:
            raise DataFormatError(f"{where}, key {m!r}: expected rank 3 (N, L, d), got {x.shape}")
        if x.shape[0] != n:
            raise DataFormatError(
                f"{where}, key {m!r}: {x.shape[0]} samples but 'regression_labels' has {n}")
        # MMSA sets audio -inf to 0; we clean every modality and count it all in one warning.
        x = cleaner.clean(x, f"{split}/{m}")
        mods[m] = x
        lkey = f"{m}_lengths"
        if lkey in raw:
            ln = numeric_array(raw[lkey], f"{where}, key {lkey!r}").reshape(-1)
            if ln.shape != (n,):
                raise DataFormatError(
                    f"{where}, key {lkey!r}: expected shape ({n},), got {ln.shape}")
            if not np.all(np.isfinite(ln)):
                raise DataFormatError(f"{where}, key {lkey!r}: non-finite length")
            ln = ln.astype(np.int64)
        elif m == "text" and "text_bert" in raw:
            tb = numeric_array(raw["text_bert"], f"{where}, key 'text_bert'")
            if tb.ndim != 3 or tb.shape[0] != n or tb.shape[1] != 3:
                raise DataFormatError(
                    f"{where}, key 'text_bert': expected shape ({n}, 3, L_t), got {tb.shape}")
            ln = np.rint(tb[:, 1].sum(axis=1)).astype(np.int64)  # attention-mask sum
        else:
            ln = last_nonzero_lengths(x)
        # MMSA-FET stores raw frame counts (older files can exceed the padding) and 0 for empty
        # sequences; the model needs 1 <= length <= L.
        lengths[m] = clip_lengths(ln, x.shape[1], f"{split}/{m}", clipped)

    extra = {}
    for key in sorted(k for k in raw if isinstance(k, str) and k.startswith("regression_labels_")):
        y = numeric_array(raw[key], f"{where}, key {key!r}").astype(np.float32)
        if y.size != n:
            raise DataFormatError(f"{where}, key {key!r}: expected shape ({n},), got {y.shape}")
        y = y.reshape(n)
        check_finite_labels(y, f"{where}, key {key!r}")
        extra[key] = y
    if "id" in raw:
        ids = as_array(raw["id"], f"{where}, key 'id'").reshape(-1).astype(str)
        if ids.shape != (n,):
            raise DataFormatError(f"{where}, key 'id': expected {n} ids, got {ids.shape}")
    else:
        ids = np.array([f"{split}_{i}" for i in range(n)])
    return Split(mods, lengths, labels, ids, None, extra)


def read_mmsa_pickle(path, *, name: str | None = None, metric_family: str | None = None,
                     modalities=MMSA_MODALITIES, trust_pickle: bool = False) -> MultimodalData:
    """Read an MMSA feature pickle as stored (no alignment; see ``load_dataset`` for that).

    Args:
        path: ``aligned_50.pkl`` / ``unaligned_50.pkl`` / ...
        name: dataset name; default inferred from the path (mosi, mosei, sims, simsv2), else
            from what :func:`write_mmsa_pickle` stored, else the file stem.
        metric_family: default = the name if it is an MMSA dataset, else "regression".
        modalities: which of text/audio/vision to read, in this order.
        trust_pickle: unpickle with the standard loader, which runs any code the file names
            (default: only numpy arrays, numpy scalars and builtin containers are rebuilt; any
            other global raises ``UnsafePickleError`` naming it).
    Returns:
        MultimodalData, task "regression", possibly unaligned (modalities of different L).
        Lengths: ``*_lengths`` when stored, text from the ``text_bert`` mask, else 1 + the last
        non-zero step; clipped into [1, L] with one warning. Non-finite features become 0 with one
        warning; a non-finite label raises DataFormatError naming split and index.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MMSA pickle not found: {path}")
    modalities = list(modalities)
    unknown = [m for m in modalities if m not in MMSA_MODALITIES]
    if unknown or not modalities:
        raise UserInputError(f"modalities must be a non-empty subset of {MMSA_MODALITIES}, "
                             f"got {modalities}")
    obj = load_pickle(path, trust=trust_pickle)
    if not isinstance(obj, dict) or "train" not in obj:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataFormatError(
            f"{path}: expected a dict with keys 'train', 'valid', 'test', got {keys}")
    cleaner, clipped = NonFiniteCounter(str(path)), {}
    splits = {s: _read_split(obj[s], s, modalities, str(path), cleaner, clipped)
              for s in SPLIT_NAMES if s in obj}
    cleaner.warn()
    warn_clipped(clipped, str(path), "stored lengths outside the padded length")

    meta = obj.get("config", {}).get(_META_KEY, {}) if isinstance(obj.get("config"), dict) else {}
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k, ""), str)
                                             for k in ("name", "metric_family")):
        raise DataFormatError(f"{path}: config[{_META_KEY!r}] must be a dict of strings (name, "
                              f"metric_family), got {meta!r:.200}")
    inferred = infer_mmsa_name(path)
    # What our own writer recorded beats guessing from the path.
    name = name or meta.get("name") or inferred or path.stem
    if metric_family is None:
        if name in MMSA_NAMES:
            metric_family = name
        elif meta.get("metric_family"):
            metric_family = meta["metric_family"]
        else:
            metric_family = "regression"
            warnings.warn(f"{path}: cannot tell which MMSA dataset this is; using generic "
                          "regression metrics (pass name='mosei' etc. for MMSA metrics)",
                          RuntimeWarning, stacklevel=2)
    bound = _LABEL_RANGE.get(metric_family)
    if bound is not None:
        top = max(float(np.abs(s.labels).max(initial=0.0)) for s in splits.values())
        if top > bound + 1e-6:
            warnings.warn(f"{path}: labels reach |y| = {top:.3g}, outside [-{bound:g}, {bound:g}] "
                          f"expected for {metric_family!r}; check name/metric_family",
                          RuntimeWarning, stacklevel=2)
    return MultimodalData(splits["train"], splits.get("valid"), splits.get("test"), modalities,
                          "regression", 1, metric_family, name, str(path))


def write_mmsa_pickle(data: MultimodalData, path, *, with_lengths: bool = True) -> Path:
    """Write ``data`` in the MMSA pickle layout (the inverse of :func:`read_mmsa_pickle`).

    The file holds only dicts, numpy arrays and strings, so the restricted loader reads it.

    Args:
        data: regression data with modalities exactly text, audio, vision and no present mask.
        path: output ``.pkl`` file (parent folders are created).
        with_lengths: write ``audio_lengths``/``vision_lengths`` (unaligned-file layout); False
            gives the aligned-file layout, where readers recover lengths from the last non-zero
            step. Text lengths always go into the ``text_bert`` attention mask (token ids and
            segment ids are 0: the data has no tokens).
    Returns:
        the path written. Name and metric family go into ``config['coupled_mamba']``.
    """
    if sorted(data.modality_names) != sorted(MMSA_MODALITIES):
        raise ValueError(f"the MMSA layout needs modalities {MMSA_MODALITIES}, got "
                         f"{data.modality_names}")
    if data.task != "regression":
        raise ValueError(f"the MMSA layout holds regression labels only, got task {data.task!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"config": {_META_KEY: {"name": data.name, "metric_family": data.metric_family}}}
    for split_name, s in data.splits().items():
        if s.present is not None:
            raise ValueError(f"split {split_name!r} has a present mask; the MMSA layout cannot "
                             "store missing modalities")
        n, lt = len(s), s.modalities["text"].shape[1]
        text_bert = np.zeros((n, 3, lt), dtype=np.float32)
        text_bert[:, 1] = np.arange(lt)[None, :] < s.lengths["text"][:, None]
        d = {"text": s.modalities["text"], "text_bert": text_bert,
             "audio": s.modalities["audio"], "vision": s.modalities["vision"],
             "regression_labels": s.labels.astype(np.float32),
             "id": np.asarray(s.ids, dtype=object)}
        if with_lengths:
            d["audio_lengths"] = s.lengths["audio"].astype(np.int64)
            d["vision_lengths"] = s.lengths["vision"].astype(np.int64)
        for key, y in s.extra_labels.items():
            d[key if key.startswith("regression_labels_") else f"regression_labels_{key}"] = y
        obj[split_name] = d
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def mmsa_to_npz(pkl_path, out_folder, **options) -> Path:
    """Convert an MMSA pickle to the generic npz folder, keeping it unaligned.

    Args:
        pkl_path: the pickle; options: as :func:`read_mmsa_pickle` (name, metric_family,
            modalities, trust_pickle).
        out_folder: folder for ``train.npz``, ``valid.npz``, ``test.npz`` and ``meta.json``.
    Returns:
        the folder. Features are stored after non-finite cleaning, with their lengths, so
        ``load_dataset(out_folder)`` gives the same data as ``load_dataset(pkl_path)``.
    """
    from .npz import write_npz_folder

    return write_npz_folder(read_mmsa_pickle(pkl_path, **options), out_folder)
