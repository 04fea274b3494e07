"""One typed configuration for every registered model (docs/MATH.md section 4 defaults).

Symbols: M modalities, d_m input width of modality m, d = d_model, E = d_inner, N = d_state,
R = dt_rank, K = d_conv; for Mamba-2 models P = headdim, H = E / P heads, G = ngroups, T =
chunk_size. Saved as ``config.json`` next to the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from .._tasks import TASKS
from ..errors import UserInputError
from ..modules.coupled_layer import check_layer_options
from ..modules.coupling import check_coupling_mask
from ..modules.heads import FUSIONS, pooling_modes
from ..ops import SSD_IMPLS

# Which fields configure which encoder; the others (data, input projection, head) serve every
# model. CoupledMambaEncoder takes the MAMBA_ENCODER_FIELDS as keywords of the same names (see
# CoupledMambaConfig.mamba_encoder_kwargs); CrossModalEncoder takes d_model, n_layers, norm_eps,
# dropout and the CROSS_ATTENTION_FIELDS. Each model ignores the other's fields, which stay in
# one config so that every saved config.json loads whatever model it names.
MAMBA_ENCODER_FIELDS = (
    "d_model", "n_layers", "norm_eps", "rescale_prenorm_residual", "inference_chunk", "d_state",
    "d_conv", "expand", "dt_rank", "coupling", "coupling_mask", "dt_min", "dt_max", "dt_init",
    "dt_scale", "dt_init_floor", "conv_bias", "bias", "scan_impl",
)
# The Mamba-2 models' encoder takes these (CoupledMambaConfig.mamba2_encoder_kwargs).
MAMBA2_ENCODER_FIELDS = (
    "d_model", "n_layers", "norm_eps", "rescale_prenorm_residual", "inference_chunk", "d_state",
    "d_conv", "expand", "headdim", "ngroups", "chunk_size", "coupling", "coupling_mask",
    "dt_min", "dt_max", "dt_init_floor", "conv_bias", "bias", "ssd_impl",
)
CROSS_ATTENTION_FIELDS = ("n_heads", "ffn_mult", "materialize_attention")
# Keys that save_pretrained writes into config.json beside the config fields.
METADATA_KEYS = ("model_name",)


def _default_dt_rank(d_state: int) -> int:
    return max(1, d_state // 8)  # the paper's "timescale = d_state / 8"


def _default_headdim(d_inner: int) -> int:
    # Mamba-2's 64 channels per head when that leaves at least 4 heads; a smaller model keeps
    # 4 heads (one decay rate per head: a single head would give all channels one timescale).
    if d_inner % 64 == 0 and d_inner >= 256:
        return 64
    return d_inner // 4 if d_inner % 4 == 0 else d_inner


def _default_names(n_modalities: int) -> list[str]:
    return [f"m{i}" for i in range(n_modalities)]


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserInputError(f"{name}: expected a positive integer, got {value!r}")


def _positive_float(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise UserInputError(f"{name}: expected a positive number, got {value!r}")


def _input_ranks(ranks, dims: list[int]) -> list[int]:
    """Validate ``input_ranks``: M integers with 0 <= rank_m <= d_m."""
    if isinstance(ranks, tuple):
        ranks = list(ranks)
    if not isinstance(ranks, list) or len(ranks) != len(dims):
        raise UserInputError(f"input_ranks: expected a list of M = {len(dims)} integers (0 keeps "
                             f"every feature), got {ranks!r}")
    for m, (r, d) in enumerate(zip(ranks, dims, strict=True)):
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= d:
            raise UserInputError(f"input_ranks[{m}]: expected an integer in [0, {d}] (the "
                                 f"modality has {d} features), got {r!r}")
    return ranks


@dataclass
class CoupledMambaConfig:
    """Hyperparameters of a multimodal model; paper defaults (docs/MATH.md, section 4).

    Only ``input_dims`` is required; it is read from the data, never hard-coded.
    Derived values are filled in ``__post_init__`` (``dt_rank``, ``modality_names``); ``d_inner``
    and ``n_modalities`` are properties. Invalid values raise UserInputError (a ValueError)
    naming the field.
    """

    # --- data ---------------------------------------------------------------------------------
    input_dims: list[int]  # d_m per modality (M = len(input_dims))
    modality_names: list[str] | None = None  # None -> ["m0", "m1", ...]
    task: str = "regression"  # "regression" | "classification" | "multilabel"
    num_outputs: int = 1  # O: 1 for regression, C classes, K labels

    # --- coupled Mamba encoder (MAMBA_ENCODER_FIELDS; paper: d_model 128, 3 layers, expand 2,
    # d_conv 4, d_state 64) ---------------------------------------------------------------------
    d_model: int = 128  # d, width of each modality's residual stream
    n_layers: int = 3  # coupled layers
    expand: int = 2  # E = expand * d
    d_conv: int = 4  # K, causal depthwise conv kernel
    d_state: int = 64  # N, SSM state size per channel
    dt_rank: int | None = None  # R; None -> d_state // 8 (paper: "timescale = d_state / 8")
    coupling: str | float = "mean"  # W: "none" | "mean" | "sum" | alpha in [0, 1] | "learned"
    coupling_mask: list[list[int]] | None = None  # (M, M) 0/1: which states modality m may read
    dt_min: float = 0.001  # softplus(dt bias) initialised log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init: str = "random"  # dt_proj weight init: "random" U(-s, s) | "constant" s; s = R^-0.5
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias (Mamba: False)
    rescale_prenorm_residual: bool = True  # out_proj init scaled by 1 / sqrt(n_layers)
    norm_eps: float = 1e-5
    scan_impl: str = "auto"  # coupled_selective_scan impl: "auto" | "ref" | "torch" | "cpu" | ...
    inference_chunk: int | None = 128  # steps per encoder chunk without autograd; None: whole L
    # Mamba-2 models only (coupled_mamba2, mamba2_fusion; the others ignore them):
    headdim: int | None = None  # P, channels per head; None -> 64, or E / 4 below 4 heads of 64
    ngroups: int = 1  # G, groups of the B/C projections (H % G == 0)
    chunk_size: int | None = None  # T, SSD block length; None -> from K, N, P (ssd_chunk)
    ssd_impl: str = "auto"  # coupled_ssd impl: "auto" | "ref" | "chunked"

    # --- input projection and head -------------------------------------------------------------
    # Per modality: project the standardised inputs onto this many leading principal components
    # of the training split before the projection (0: keep every feature); None: no reduction.
    input_ranks: list[int] | None = None
    proj_hidden: int = 256  # Linear(d_m, 256) -> LN -> ReLU -> Linear(256, d) -> LN
    pooling: str = "max"  # "max" | "mean" | "last" (over valid steps), or joined: "max+last"
    fusion: str = "softmax"  # "softmax" (learned weights) | "mean" (plain average) | "concat"
    head_hidden: int = 64  # Linear(d, 64) -> ReLU -> Dropout -> Linear(64, O)
    dropout: float = 0.1
    # Std of Gaussian noise added to the standardised inputs in training mode only: fresh noise
    # every batch, so the model cannot memorise a sample by its noise.
    input_noise: float = 0.0

    # --- cross-attention baseline (CROSS_ATTENTION_FIELDS; the Mamba models ignore them) --------
    n_heads: int = 4  # H, d_model must be divisible by it
    ffn_mult: int = 4  # FFN width = ffn_mult * d
    materialize_attention: bool = False  # explicit softmax(QK^T) instead of SDPA

    def __post_init__(self):
        dims = self.input_dims
        if isinstance(dims, tuple):
            dims = list(dims)
        if not isinstance(dims, list) or not dims:
            raise UserInputError(f"input_dims: expected a non-empty list of ints, got {dims!r}")
        for i, d in enumerate(dims):
            _positive_int(f"input_dims[{i}]", d)
        self.input_dims = dims
        M = len(dims)

        names = self.modality_names
        if names is None:
            names = _default_names(M)
        names = list(names) if isinstance(names, (list, tuple)) else names
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise UserInputError(f"modality_names: expected a list of non-empty strings, got "
                                 f"{names!r}")
        if len(names) != M:
            raise UserInputError(
                f"modality_names: got {len(names)} names {names}, but input_dims has M = {M} "
                "modalities"
            )
        if len(set(names)) != M:
            raise UserInputError(f"modality_names: names must be unique, got {names}")
        self.modality_names = names

        if self.input_ranks is not None:
            self.input_ranks = _input_ranks(self.input_ranks, dims)

        if self.task not in TASKS:
            raise UserInputError(f"task: unknown task {self.task!r}; expected one of {TASKS}")
        _positive_int("num_outputs", self.num_outputs)
        if self.task == "classification" and self.num_outputs < 2:
            raise UserInputError(
                f"num_outputs: classification needs >= 2 classes (logits), got {self.num_outputs}"
            )

        for name in ("d_model", "n_layers", "expand", "d_conv", "d_state", "proj_hidden",
                     "head_hidden", "n_heads", "ffn_mult", "ngroups"):
            _positive_int(name, getattr(self, name))
        if self.dt_rank is None:
            self.dt_rank = _default_dt_rank(self.d_state)
        _positive_int("dt_rank", self.dt_rank)
        if self.headdim is None:
            self.headdim = _default_headdim(self.d_inner)
        _positive_int("headdim", self.headdim)
        if self.chunk_size is not None:
            _positive_int("chunk_size", self.chunk_size)

        self.coupling = check_layer_options(self.coupling, self.scan_impl, self.dt_init)
        if self.ssd_impl not in SSD_IMPLS:
            raise UserInputError(f"ssd_impl: unknown implementation {self.ssd_impl!r}; expected "
                                 f"one of {SSD_IMPLS}")
        if self.coupling_mask is not None:
            self.coupling_mask = check_coupling_mask(self.coupling_mask, M, "coupling_mask")

        for name in ("dt_min", "dt_max", "dt_scale", "dt_init_floor", "norm_eps"):
            _positive_float(name, getattr(self, name))
        if self.dt_min > self.dt_max:
            raise UserInputError(f"dt_min: {self.dt_min} is larger than dt_max = {self.dt_max}")
        try:
            pooling_modes(self.pooling)
        except ValueError as exc:
            raise UserInputError(str(exc)) from None
        if self.fusion not in FUSIONS:
            raise UserInputError(f"fusion: unknown mode {self.fusion!r}; expected one of {FUSIONS}")
        if (not isinstance(self.input_noise, (int, float)) or isinstance(self.input_noise, bool)
                or not self.input_noise >= 0.0):
            raise UserInputError(f"input_noise: expected a std >= 0, got {self.input_noise!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.inference_chunk is not None:
            _positive_int("inference_chunk", self.inference_chunk)
        for name in ("conv_bias", "bias", "rescale_prenorm_residual", "materialize_attention"):
            if not isinstance(getattr(self, name), bool):
                raise UserInputError(f"{name}: expected a bool, got {getattr(self, name)!r}")

    # --- derived ---------------------------------------------------------------------------------
    @property
    def n_modalities(self) -> int:
        """M."""
        return len(self.input_dims)

    @property
    def d_inner(self) -> int:
        """E = expand * d_model, the scan's channel count."""
        return self.expand * self.d_model

    def mamba_encoder_kwargs(self) -> dict:
        """The MAMBA_ENCODER_FIELDS as keyword arguments of ``CoupledMambaEncoder``."""
        return {name: getattr(self, name) for name in MAMBA_ENCODER_FIELDS}

    def mamba2_encoder_kwargs(self) -> dict:
        """The MAMBA2_ENCODER_FIELDS as keyword arguments of a Mamba-2 ``CoupledMambaEncoder``."""
        return {name: getattr(self, name) for name in MAMBA2_ENCODER_FIELDS}

    def replace(self, **changes) -> CoupledMambaConfig:
        """A validated copy with ``changes`` applied.

        Derived fields that still hold their derived value are derived again from the new
        values: ``replace(d_state=16)`` gives ``dt_rank`` 2 unless ``dt_rank`` was set
        explicitly (``headdim`` likewise follows ``d_model``), and a new ``input_dims`` renames
        default modality names. Unknown fields raise
        ValueError naming them.
        """
        data = self.to_dict()
        if "dt_rank" not in changes and self.dt_rank == _default_dt_rank(self.d_state):
            data["dt_rank"] = None
        if "headdim" not in changes and self.headdim == _default_headdim(self.d_inner):
            data["headdim"] = None
        if ("modality_names" not in changes
                and self.modality_names == _default_names(self.n_modalities)):
            data["modality_names"] = None
        data.update(changes)
        return type(self).from_dict(data)

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field (derived fields resolved)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CoupledMambaConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise UserInputError."""
        if not isinstance(data, dict):
            raise UserInputError(f"config: expected a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"config: unknown keys {unknown}; known keys are {sorted(known)}")
        if "input_dims" not in data:
            raise UserInputError("config: missing required key 'input_dims'")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> str:
        """Write the config as JSON to ``path`` (a file, or a directory -> ``dir/config.json``).
        Returns the file written."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CoupledMambaConfig:
        """Read a config saved by :meth:`save` or ``save_pretrained`` (a file or its directory)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UserInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k not in METADATA_KEYS}
        try:
            return cls.from_dict(data)
        except UserInputError as exc:
            raise UserInputError(f"{path}: {exc}") from None
