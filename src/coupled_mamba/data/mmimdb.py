"""MM-IMDB (Arevalo et al., "Gated Multimodal Units for Information Fusion", 2017): genre tagging.

Shape letters: N samples, F features of a vector source, n tokens, d = ceil(F / n), K = 23 genres.

Layout of ``multimodal_imdb.hdf5`` as written by the original release's ``make_dataset.py``
(github.com/johnarevalo/gmu-mmimdb; file at http://lisi1.unal.edu.co/mmimdb/), a Fuel
``H5PYDataset`` file:

- ``features`` (N, 300) float32: the mean word2vec vector of the plot (TEXT features);
- ``vgg_features`` (N, 4096) float32: VGG-16 features of the poster (IMAGE features);
- ``three_grams``, ``word_grams`` (N, *) float32 tf-idf text features; ``images`` (N, 3, H, W)
  int32 posters; ``sequences`` (N,) variable-length int32 word ids (into metadata.npy's vocab);
- ``genres`` (N, 23) int32 0/1 targets (``genres.attrs['target_names']`` JSON list);
- ``imdb_ids`` (N,) ``S7``;
- root attribute ``split``: Fuel's split array, one row per (split, source) with fields
  ``split`` ("train"/"dev"/"test"), ``source``, ``start``, ``stop`` (row range), ``available``,
  ``comment`` (and ``indices`` in later Fuel versions). Rows are stored train, dev, test in order;
  MultiBench hard-codes the resulting ranges 0-15552 / 15552-18160 / 18160-25959.

Each chosen vector source (default text = ``features``, image = ``vgg_features``) is
standardised with training-split statistics and cut into n contiguous tokens (as for MOGONET).
The ``sequences`` word ids are not used: the release's embedding table (metadata.npy) needs pickle
and keeps only the words found in word2vec, so its rows do not line up with the vocabulary ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import NonFiniteCounter, standardize, to_tokens
from ._types import DataFormatError, MultimodalData, Split

DEFAULT_N_TOKENS = 10
_SPLIT_ALIASES = {"train": "train", "dev": "valid", "valid": "valid", "val": "valid",
                  "test": "test"}
# MultiBench's datasets/imdb/get_data.py: the ranges of the released file (N = 25959).
RELEASE_RANGES = {"train": (0, 15552), "valid": (15552, 18160), "test": (18160, 25959)}


def _text(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def split_ranges(f, sources: list[str], path) -> dict[str, tuple[int, int]]:
    """Row range of each split from the Fuel ``split`` attribute (must agree across sources)."""
    if "split" not in f.attrs:
        n = f["genres"].shape[0]
        if n == RELEASE_RANGES["test"][1]:
            return dict(RELEASE_RANGES)
        raise DataFormatError(f"{path}: no root attribute 'split' (Fuel split array) and "
                              f"{n} rows, not the release's 25959; cannot tell the splits")
    table = f.attrs["split"]
    names = set(table.dtype.names or ())
    if not {"split", "source", "start", "stop"} <= names:
        raise DataFormatError(f"{path}: attribute 'split' must have fields split, source, start, "
                              f"stop; got {sorted(names)}")
    ranges: dict[str, dict[str, tuple[int, int]]] = {}
    for row in table:
        split = _SPLIT_ALIASES.get(_text(row["split"]))
        if split is None or ("available" in names and not row["available"]):
            continue
        ranges.setdefault(split, {})[_text(row["source"])] = (int(row["start"]), int(row["stop"]))
    out = {}
    for split, by_source in ranges.items():
        missing = [s for s in sources if s not in by_source]
        if missing:
            raise DataFormatError(f"{path}: split {split!r} has no rows for sources {missing} in "
                                  "attribute 'split'")
        spans = {by_source[s] for s in sources}
        if len(spans) != 1:
            raise DataFormatError(f"{path}: split {split!r} has different row ranges per source "
                                  f"{ {s: by_source[s] for s in sources} }")
        out[split] = spans.pop()
    if "train" not in out:
        raise DataFormatError(f"{path}: attribute 'split' has no 'train' rows")
    return out


def _read_splits(f, path: Path, sources: dict[str, str], cleaner: NonFiniteCounter) -> dict:
    """split -> (features {modality: (N_s, F)}, labels (N_s, K) float32, ids (N_s,)) from an open
    h5py File."""
    for key in [*sources.values(), "genres"]:
        if key not in f:
            raise DataFormatError(f"{path}: missing dataset {key!r} (datasets present: "
                                  f"{sorted(f.keys())})")
    for m, key in sources.items():
        if f[key].ndim != 2:
            raise DataFormatError(f"{path}, dataset {key!r} ({m}): expected rank 2 (N, F), "
                                  f"got shape {f[key].shape}")
    n = f["genres"].shape[0]
    if f["genres"].ndim != 2:
        raise DataFormatError(f"{path}, dataset 'genres': expected (N, K), got "
                              f"{f['genres'].shape}")
    for key in sources.values():
        if f[key].shape[0] != n:
            raise DataFormatError(f"{path}, dataset {key!r}: {f[key].shape[0]} rows but "
                                  f"'genres' has {n}")
    used = [*sources.values(), "genres"] + (["imdb_ids"] if "imdb_ids" in f else [])
    ranges = split_ranges(f, used, path)
    data = {}
    for split, (a, b) in ranges.items():
        if not 0 <= a <= b <= n:
            raise DataFormatError(f"{path}: split {split!r} range [{a}, {b}) outside [0, {n}]")
        y = f["genres"][a:b]
        if y.size and not np.isin(y, (0, 1)).all():
            raise DataFormatError(f"{path}, dataset 'genres', split {split!r}: targets must "
                                  "be 0/1")
        ids = (np.array([_text(v) for v in f["imdb_ids"][a:b]]) if "imdb_ids" in f
               else np.array([str(i) for i in range(a, b)]))
        feats = {m: cleaner.clean(f[key][a:b], f"{split}/{key}") for m, key in sources.items()}
        data[split] = (feats, y.astype(np.float32), ids)
    return data


def read_mmimdb(path, *, n_tokens: int = DEFAULT_N_TOKENS, text_source: str = "features",
                image_source: str = "vgg_features", standardize_features: bool = True,
                name: str = "mmimdb") -> MultimodalData:
    """Read ``multimodal_imdb.hdf5`` as a multi-label dataset of two token sequences.

    Args:
        path: the HDF5 file.
        n_tokens: n, sequence length of both modalities.
        text_source, image_source: 2-D (N, F) datasets used as the text and image modalities.
        standardize_features: z-score with training-split statistics.
    Returns:
        MultimodalData with modalities ["text", "image"], each (N, n, ceil(F / n)), labels
        (N, 23) float32 0/1, task "multilabel", ids from ``imdb_ids``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MM-IMDB file not found: {path}")
    sources = {"text": text_source, "image": image_source}
    cleaner = NonFiniteCounter(str(path))
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # not HDF5, truncated, damaged superblock
        raise DataFormatError(f"{path}: cannot open as HDF5 ({exc})") from exc
    with f:
        try:
            data = _read_splits(f, path, sources, cleaner)
        except (OSError, KeyError, RuntimeError) as exc:  # h5py's errors for damaged objects
            raise DataFormatError(f"{path}: damaged HDF5 file ({type(exc).__name__}: {exc})") \
                from exc
    cleaner.warn()

    order = [s for s in ("train", "valid", "test") if s in data]
    splits = {s: {} for s in order}
    lengths = {s: {} for s in order}
    for m in sources:
        parts = [data[s][0][m] for s in order]
        if standardize_features:
            parts = standardize(*parts)  # train comes first: its statistics only
        for s, x in zip(order, parts, strict=True):
            tokens, valid_len = to_tokens(x, n_tokens, f"{path}, {m} ({sources[m]})")
            splits[s][m] = tokens
            lengths[s][m] = np.full(x.shape[0], valid_len, dtype=np.int64)
    out = {s: Split(splits[s], lengths[s], data[s][1], data[s][2]) for s in order}
    k = out["train"].labels.shape[1]
    return MultimodalData(out["train"], out.get("valid"), out.get("test"), list(sources),
                          "multilabel", k, "multilabel", name, str(path))
