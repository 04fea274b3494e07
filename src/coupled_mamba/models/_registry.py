"""The model registry: the single source of truth for model names (the CLI and trainer read it).

A registered name is a model class plus config overrides, so that variants of one architecture
(e.g. ``mamba_fusion`` = ``coupled_mamba`` with ``coupling="none"``) are declared, not copied.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from dataclasses import dataclass, field

from torch import nn

from ..errors import UserInputError
from .config import CoupledMambaConfig


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type
    overrides: dict = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, description: str = "", **overrides):
    """Class decorator: register ``cls`` under ``name``; ``overrides`` are config fields that this
    name fixes (applied with ``dataclasses.replace`` by :func:`create_model`)."""
    fields = {f.name for f in dataclasses.fields(CoupledMambaConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"register_model({name!r}): unknown config fields {bad}")

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"register_model: {name!r} is already registered "
                             f"(by {_REGISTRY[name].cls.__name__})")
        _REGISTRY[name] = ModelEntry(name, cls, dict(overrides), description)
        return cls

    return wrap


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters them with shell wildcards
    (``list_models("*fusion")``), as timm's ``list_models`` does."""
    names = sorted(_REGISTRY)
    if pattern:
        names = fnmatch.filter(names, pattern)
    return names


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (class, fixed config fields, one-line description)."""
    if name not in _REGISTRY:
        raise UserInputError(f"model: unknown name {name!r}; registered models: {list_models()}")
    return _REGISTRY[name]


def create_model(name: str, config: CoupledMambaConfig | None = None, **overrides) -> nn.Module:
    """Build the registered model ``name``, as timm's ``create_model`` does.

    Args:
        name: a name from :func:`list_models`.
        config: the hyperparameters; None builds them from ``overrides`` alone (which must then
            hold ``input_dims``).
        **overrides: config fields to set, e.g. ``input_dims=[768, 74, 35], d_model=64``; with a
            ``config`` they replace its values (:meth:`CoupledMambaConfig.replace`).

    Fields that the name fixes (see :func:`model_entry`) replace the config's values; a config
    that set such a field to a different non-default value gets a warning. The returned model's
    ``config`` holds the values actually used, and ``model_name`` is ``name``.

    Raises:
        ValueError: an unknown name, an unknown config field or an invalid value.
    """
    entry = model_entry(name)
    if config is None:
        if "input_dims" not in overrides:
            raise ValueError(f"create_model({name!r}): give a config or input_dims=[d_1, ..., "
                             "d_M], the feature width of each modality")
        config = CoupledMambaConfig.from_dict(overrides)  # names unknown keys, unlike cls(**)
    elif not isinstance(config, CoupledMambaConfig):
        raise ValueError(f"config: expected a CoupledMambaConfig, got {type(config).__name__}")
    elif overrides:
        config = config.replace(**overrides)
    if entry.overrides:
        defaults = {f.name: f.default for f in dataclasses.fields(CoupledMambaConfig)}
        for key, value in entry.overrides.items():
            current = getattr(config, key)
            if current != value and current != defaults[key]:
                warnings.warn(
                    f"create_model({name!r}): this model fixes {key}={value!r}; the config's "
                    f"{key}={current!r} is ignored",
                    UserWarning,
                    stacklevel=2,
                )
        config = dataclasses.replace(config, **entry.overrides)
    model = entry.cls(config)
    model.model_name = name
    return model
