"""``load_dataset``: one entry point for every format, with alignment (docs/MATH.md, section 4).

Formats: "mmsa" (MMSA feature pickles), "mogonet" (multi-omics CSV folders), "mmimdb"
(``multimodal_imdb.hdf5``), "npz" (the generic folder). Loaders return data and never mutate a
config; feature sizes come from the files (``MultimodalData.input_dims``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError
from ._types import MultimodalData
from .align import align_data
from .mmimdb import read_mmimdb
from .mmsa import read_mmsa_pickle
from .mogonet import DEFAULT_N_TOKENS, read_mogonet
from .npz import read_npz_folder

FORMATS = ("auto", "mmsa", "mogonet", "mmimdb", "npz")
_OPTIONS = {
    "mmsa": {"name", "metric_family", "modalities"},
    "mogonet": {"n_tokens", "valid_fraction", "split_seed", "view_names", "standardize_features",
                "name"},
    "mmimdb": {"n_tokens", "text_source", "image_source", "standardize_features", "name"},
    "npz": {"name", "metric_family", "valid_fraction", "split_seed"},
}


def detect_format(path) -> str:
    """The format of ``path``: a .pkl file -> mmsa, .hdf5/.h5 -> mmimdb, a folder with
    ``1_tr.csv`` (or any ``{v}_tr.csv``) -> mogonet, a folder with ``train.npz`` -> npz."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".pkl", ".pickle"):
            return "mmsa"
        if suffix in (".hdf5", ".h5"):
            return "mmimdb"
        raise UserInputError(f"{path}: cannot tell the format from the suffix {suffix!r} (expected "
                             ".pkl for MMSA or .hdf5/.h5 for MM-IMDB); pass format=")
    if path.is_dir():
        if (path / "train.npz").is_file():
            return "npz"
        if any(path.glob("*_tr.csv")):
            return "mogonet"
        raise UserInputError(f"{path}: folder has neither train.npz (npz format) nor 1_tr.csv "
                             "(MOGONET format)")
    raise FileNotFoundError(f"dataset path not found: {path}")


def load_dataset(path, format: str = "auto", seq_len: int | None = None, *,
                 trust_pickle: bool = False, **options) -> MultimodalData:
    """Load a dataset and bring its modalities to one length.

    Args:
        path: file or folder (see :func:`detect_format`).
        format: "auto" | "mmsa" | "mogonet" | "mmimdb" | "npz".
        seq_len: target length L. None keeps the data's own length when all modalities already
            share one (aligned files, MOGONET/MM-IMDB token sequences) and otherwise resamples to
            50 (docs/MATH.md, section 4); an explicit value resamples unless it equals that
            length. For MOGONET and MM-IMDB it sets the number of tokens (same as ``n_tokens``).
        trust_pickle: read an MMSA pickle with the standard unpickler, which runs any code the
            file names (default: a restricted one that rebuilds only numpy arrays and builtin
            containers; see docs/DATA.md). Other formats never unpickle and ignore it.
        options: per format
            mmsa: name, metric_family, modalities;
            mogonet: n_tokens (10), valid_fraction (0.2), split_seed (0), view_names,
                standardize_features (True), name;
            mmimdb: n_tokens (10), text_source ("features"), image_source ("vgg_features"),
                standardize_features (True), name;
            npz: name, metric_family, valid_fraction (0: none unless valid.npz), split_seed.
    Returns:
        MultimodalData whose modalities share one L (segment-mean alignment, lengths carried).
    """
    if format not in FORMATS:
        raise UserInputError(f"format must be one of {FORMATS}, got {format!r}")
    fmt = detect_format(path) if format == "auto" else format
    unknown = set(options) - _OPTIONS[fmt]
    if unknown:
        raise UserInputError(f"unknown option(s) {sorted(unknown)} for format {fmt!r}; allowed: "
                             f"{sorted(_OPTIONS[fmt])}")
    if fmt in ("mogonet", "mmimdb"):
        n_tokens = options.pop("n_tokens", None)
        if n_tokens is not None and seq_len is not None and n_tokens != seq_len:
            raise UserInputError(f"n_tokens={n_tokens} and seq_len={seq_len} disagree; for {fmt} "
                                 "they are the same thing (give one)")
        if n_tokens is None:
            n_tokens = DEFAULT_N_TOKENS if seq_len is None else seq_len
        options["n_tokens"] = n_tokens
        reader = read_mogonet if fmt == "mogonet" else read_mmimdb
    elif fmt == "mmsa":
        options["trust_pickle"] = trust_pickle
        reader = read_mmsa_pickle
    else:
        reader = read_npz_folder
    return align_data(reader(path, **options), seq_len)
