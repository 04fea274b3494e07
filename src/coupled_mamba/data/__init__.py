"""Data layer: dataset formats, alignment, the embedded timing benchmark, missing modalities.

Shape letters: N samples, M modalities, L sequence length, d_m feature size of modality m.

- :func:`load_dataset` reads MMSA pickles (CMU-MOSI/MOSEI, CH-SIMS/SIMSv2), MOGONET folders
  (BRCA, ROSMAP), MM-IMDB's ``multimodal_imdb.hdf5`` and the generic npz folder, and aligns
  unaligned modalities by segment means (docs/MATH.md, section 4; :mod:`.align`).
- :func:`make_synthetic` generates a benchmark whose label only cross-modal timing explains.
- :func:`apply_missing` drops modalities following the paper's robustness protocol.
- :class:`MultimodalTorchDataset` and :func:`collate` give the batch dict models consume.

Formats, sources of the real files and the pickle security note: docs/DATA.md.
"""

from ._types import TASKS, DataFormatError, MultimodalData, Split
from .align import (
    DEFAULT_SEQ_LEN,
    align_data,
    align_split,
    segment_bounds,
    segment_mean,
    segment_mean_ref,
)
from .loading import FORMATS, detect_format, load_dataset
from .missing import apply_missing, apply_missing_data, drop_mask
from .mmimdb import read_mmimdb
from .mmsa import mmsa_to_npz, read_mmsa_pickle, write_mmsa_pickle
from .mogonet import read_mogonet
from .npz import read_npz_folder, write_npz_folder
from .statistics import Spectrum, feature_statistics, principal_components
from .synthetic import make_synthetic, timing_score
from .torch_dataset import MultimodalTorchDataset, collate

__all__ = [
    "DEFAULT_SEQ_LEN",
    "FORMATS",
    "TASKS",
    "DataFormatError",
    "MultimodalData",
    "MultimodalTorchDataset",
    "Spectrum",
    "Split",
    "align_data",
    "align_split",
    "apply_missing",
    "apply_missing_data",
    "collate",
    "detect_format",
    "drop_mask",
    "feature_statistics",
    "load_dataset",
    "make_synthetic",
    "mmsa_to_npz",
    "principal_components",
    "read_mmimdb",
    "read_mmsa_pickle",
    "read_mogonet",
    "read_npz_folder",
    "segment_bounds",
    "segment_mean",
    "segment_mean_ref",
    "timing_score",
    "write_mmsa_pickle",
    "write_npz_folder",
]
