"""Experiment configuration: three typed sections (data, model, train), YAML files and overrides.

An experiment is described by one YAML file with the sections ``data``, ``model`` and ``train``
(see ``configs/``); command-line flags and ``--set section.key=value`` overrides are applied on top,
in this order: dataclass defaults < YAML < flags < ``--set``. Every key is checked: an unknown key
raises one ``ValueError`` naming it and listing the valid keys of its section. Values are coerced
to the annotated type (so ``lr: 5e-4``, which PyYAML reads as a string, becomes a float).

The ``model`` section holds ``name`` (a name from ``coupled_mamba.models.list_models()``) and any
field of ``CoupledMambaConfig`` except those read from the data (input dims, modality names, task,
number of outputs); those keys are validated against the model config when it is built.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._tasks import TASKS
from ..data.loading import FORMATS
from ..errors import UserInputError

# Keys of CoupledMambaConfig that come from the data, never from the user's model section.
DATA_DERIVED_MODEL_KEYS = ("input_dims", "modality_names", "task", "num_outputs")


@dataclass
class DataConfig:
    """Where the data is and how it is read and perturbed."""

    path: str | None = None  # given on the command line (configs hold no absolute paths)
    format: str = "auto"  # auto | mmsa | mogonet | mmimdb | npz
    seq_len: int | None = None  # common length L after alignment; None = the loader's default
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword options of load_dataset
    task: str | None = None  # None = the data's task; otherwise must agree with it
    metric_family: str | None = None  # None = the data's (e.g. "mosei" for an MMSA pickle)
    # Carved from train (stratified, seeded) when the data has no validation split.
    # Standardise every input feature with the training split's mean and std (saved with the
    # model's weights, so evaluate/predict apply the same transform).
    standardize: bool = True
    valid_fraction: float = 0.1
    split_seed: int = 0  # seed of that carve: fixed, so every run seed sees the same split
    missing_rate_train: float = 0.0  # paper's robustness protocol: rate r for the train split
    missing_rate_test: float = 0.0  # rate for valid and test (selection mimics the test condition)
    missing_seed: int | None = None  # None = the run seed


@dataclass
class TrainConfig:
    """The optimisation recipe. Field defaults are the paper's (docs/MATH.md, section 4) and
    MMSA's; with ``recipe: auto`` the keys of ``coupled_mamba.train.defaults`` that no config,
    flag or --set gives are chosen from the data instead."""

    # auto: data-dependent defaults (train/defaults.py) for keys not set; fixed: field defaults
    recipe: str = "auto"
    epochs: int = 150  # maximum number of epochs (paper: up to 150)
    batch_size: int = 128  # GLOBAL batch size; under DDP each rank takes batch_size / world_size
    eval_batch_size: int | None = None  # None = batch_size
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    loss: str = "auto"  # auto (l1 / ce / bce by task) | l1 | mse | ce | bce
    scheduler: str = "step"  # step | cosine | warmup_cosine | none
    warmup_epochs: float = 1.0  # warmup_cosine: linear warm-up length (fractions allowed)
    min_lr_ratio: float = 0.0  # warmup_cosine: final rate as a fraction of lr
    # The paper says "step" without parameters; these are our choice.
    step_size: int = 20  # epochs between decays (scheduler "step")
    gamma: float = 0.5  # decay factor (scheduler "step")
    select_on: str = "loss"  # "loss" (MMSA's KeyEval) | "primary" (PRIMARY_METRIC) | a metric key
    patience: int = 8  # early stopping: epochs without improvement (MMSA's early_stop); 0 = off
    min_delta: float = 1e-6  # improvement margin (MMSA's)
    grad_clip: float | None = None  # max global grad norm; None = no clipping
    seed: int = 1111  # first seed (MMSA's default seeds are 1111..1115)
    n_seeds: int = 1  # runs seed, seed + 1, ..., and reports mean and population std
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = False  # bf16 autocast on CUDA (ignored on CPU)
    num_workers: int = 0  # DataLoader worker processes
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn only)
    tensorboard: bool = True  # write TensorBoard events when tensorboard is importable
    progress: bool = True  # tqdm bars (epochs and batches); False = quiet
    checkpoint_every: int = 1  # epochs between resumable checkpoints


@dataclass
class ModelSection:
    """Registry name plus CoupledMambaConfig fields (validated when the model is built)."""

    name: str = "coupled_mamba"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    # "section.key" names given by a file, flag or --set (never overridden by data defaults)
    explicit: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def auto_defaults(self) -> bool:
        return self.train.recipe == "auto"

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self, explicit_only: bool = False) -> dict[str, Any]:
        """The three sections as plain dicts. ``explicit_only``: only the keys a file, flag or
        --set gave (and the model name), so that ``from_dict`` of the result leaves the other
        keys to the data defaults exactly as this config does."""
        full = {
            "data": dataclasses.asdict(self.data),
            "model": {"name": self.model.name, **self.model.params},
            "train": dataclasses.asdict(self.train),
        }
        if not explicit_only:
            return full
        return {section: {k: v for k, v in values.items()
                          if f"{section}.{k}" in self.explicit or (section, k) == ("model", "name")}
                for section, values in full.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> ExperimentConfig:
        cfg = cls()
        cfg.update(d, source)
        return cfg

    def update(self, d: dict[str, Any], source: str = "config") -> None:
        """Merge a nested dict ``{"data": {...}, "model": {...}, "train": {...}}`` into self."""
        if not isinstance(d, dict):
            raise UserInputError(f"{source}: expected a mapping with sections {SECTIONS}, "
                                 f"got {type(d).__name__}")
        for section, values in d.items():
            if section not in SECTIONS:
                raise UserInputError(f"{source}: unknown section {section!r}; valid sections: "
                                     f"{', '.join(SECTIONS)}")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise UserInputError(f"{source}: section {section!r} must be a mapping, "
                                     f"got {type(values).__name__}")
            for key, value in values.items():
                self.set(f"{section}.{key}", value, source)

    def set(self, dotted: str, value: Any, source: str = "--set") -> None:
        """Set one ``section.key`` (value coerced to the field's type)."""
        section, sep, key = dotted.partition(".")
        if not sep or not key:
            raise UserInputError(f"{source}: key {dotted!r} must look like section.key with "
                                 f"section in {SECTIONS}")
        if section not in SECTIONS:
            raise UserInputError(f"{source}: unknown section {section!r} in {dotted!r}; valid "
                                 f"sections: {', '.join(SECTIONS)}")
        self.explicit.add(dotted)
        if section == "model":
            if key == "name":
                self.model.name = _coerce(value, str, dotted, source)
            elif key in DATA_DERIVED_MODEL_KEYS:
                raise UserInputError(f"{source}: model.{key} is read from the data and cannot be "
                                     "set")
            else:
                # Checked against CoupledMambaConfig's fields in build_model_config.
                self.model.params[key] = value
            return
        obj = getattr(self, section)
        hints = _hints(type(obj))
        if key not in hints:
            raise UserInputError(f"{source}: unknown key {dotted!r}; valid keys of {section!r}: "
                                 f"{', '.join(hints)}")
        setattr(obj, key, _coerce(value, hints[key], dotted, source))

    def validate(self) -> None:
        """Check value ranges that do not need the data or the model registry."""
        d, t = self.data, self.train
        _choice("data.format", d.format, FORMATS)
        if d.task is not None:
            _choice("data.task", d.task, TASKS)
        for key in ("missing_rate_train", "missing_rate_test"):
            r = getattr(d, key)
            if not 0.0 <= r < 1.0:
                raise UserInputError(f"data.{key}: expected a rate in [0, 1), got {r}")
        if d.seq_len is not None and d.seq_len < 1:
            raise UserInputError(f"data.seq_len: expected >= 1 or null, got {d.seq_len}")
        if not 0.0 < d.valid_fraction < 1.0:
            raise UserInputError(f"data.valid_fraction: expected (0, 1), got {d.valid_fraction}")
        _choice("train.recipe", t.recipe, ("auto", "fixed"))
        _choice("train.optimizer", t.optimizer, ("adam", "adamw", "sgd"))
        _choice("train.loss", t.loss, ("auto", "l1", "mse", "ce", "bce"))
        _choice("train.scheduler", t.scheduler, ("step", "cosine", "warmup_cosine", "none"))
        if t.warmup_epochs < 0:
            raise UserInputError(f"train.warmup_epochs: expected >= 0, got {t.warmup_epochs}")
        if not 0.0 <= t.min_lr_ratio <= 1.0:
            raise UserInputError(f"train.min_lr_ratio: expected [0, 1], got {t.min_lr_ratio}")
        for key in ("epochs", "batch_size", "n_seeds", "checkpoint_every", "step_size"):
            if getattr(t, key) < 1:
                raise UserInputError(f"train.{key}: expected >= 1, got {getattr(t, key)}")
        if t.eval_batch_size is not None and t.eval_batch_size < 1:
            raise UserInputError(f"train.eval_batch_size: expected >= 1, got {t.eval_batch_size}")
        if t.lr <= 0:
            raise UserInputError(f"train.lr: expected > 0, got {t.lr}")
        if t.patience < 0:
            raise UserInputError(f"train.patience: expected >= 0 (0 = off), got {t.patience}")
        if t.grad_clip is not None and t.grad_clip <= 0:
            raise UserInputError(f"train.grad_clip: expected > 0 or null, got {t.grad_clip}")
        if t.num_workers < 0:
            raise UserInputError(f"train.num_workers: expected >= 0, got {t.num_workers}")
        dev = t.device
        if not (dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")):
            raise UserInputError(f"train.device: expected auto, cpu, cuda or cuda:N, got {dev!r}")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = ("data", "model", "train")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                flags: dict[str, Any] | None = None) -> ExperimentConfig:
    """Resolve an experiment config: defaults < YAML file < ``flags`` < ``overrides``.

    Args:
        path: a YAML file with sections data/model/train (or None).
        overrides: ``["section.key=value", ...]``; values are parsed as YAML scalars/lists.
        flags: ``{"section.key": value}`` from dedicated command-line flags (None values skipped).
    """
    cfg = ExperimentConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise UserInputError(f"{p}: not valid YAML ({e})") from None
        cfg.update(d or {}, str(p))
    for key, value in (flags or {}).items():
        if value is not None:
            cfg.set(key, value, "command line")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserInputError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        cfg.set(key.strip(), value, "--set")
    cfg.validate()
    return cfg


def build_model_config(section: ModelSection, input_dims: list[int], modality_names: list[str],
                       task: str, num_outputs: int):
    """CoupledMambaConfig from the model section plus the data-derived fields.

    Unknown keys raise a ValueError naming the key and listing the valid ones; values are
    coerced to the config's annotated types.
    """
    from coupled_mamba.models import CoupledMambaConfig, list_models

    names = list_models()
    if section.name not in names:
        raise UserInputError(f"unknown model {section.name!r}; available: {', '.join(names)}")
    hints = _hints(CoupledMambaConfig)
    valid = [k for k in hints if k not in DATA_DERIVED_MODEL_KEYS]
    params = {}
    for key, value in section.params.items():
        if key not in valid:
            raise UserInputError(f"unknown key 'model.{key}'; valid keys of 'model': name, "
                                 f"{', '.join(valid)}")
        params[key] = _coerce(value, hints[key], f"model.{key}", "model config")
    return CoupledMambaConfig(input_dims=list(input_dims), modality_names=list(modality_names),
                              task=task, num_outputs=num_outputs, **params)


# ---- helpers --------------------------------------------------------------------------------

def _hints(cls) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in fields}


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise UserInputError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Convert ``value`` (from YAML or the command line) to the annotated type ``hint``."""
    err = UserInputError(f"{source}: {key}: cannot use {value!r} as {_type_name(hint)}")
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise err
        # bool before numbers, numbers before str, so "0.5" for `str | float` becomes 0.5.
        order = sorted((a for a in args if a is not type(None)),
                       key=lambda a: {bool: 0, int: 1, float: 2}.get(a, 3))
        for a in order:
            try:
                return _coerce(value, a, key, source)
            except ValueError:
                continue
        raise err
    if origin is not None:  # dict[...], list[...], tuple[...]
        if origin is dict and isinstance(value, dict):
            return dict(value)
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            return origin(value)
        if isinstance(value, str) and origin in (list, tuple, dict):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                raise err from None
            return _coerce(parsed, hint, key, source)
        raise err
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise err
    if hint is int or hint is float:
        # bool is an int to Python but never a number here; an int field takes a float only
        # when it is a whole number (YAML may write 1e3).
        if isinstance(value, bool) or (hint is int and isinstance(value, float)
                                       and not value.is_integer()):
            raise err
        if isinstance(value, (int, float, str)):
            try:
                return hint(value)
            except ValueError:
                raise err from None
        raise err
    if hint is str:
        if isinstance(value, str):
            return value
        raise err
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise err


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
