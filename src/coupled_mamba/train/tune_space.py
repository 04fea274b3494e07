"""The search space of ``coupled-mamba tune``: which hyperparameters a registered model gets.

A parameter is a config key (``train.lr``, ``model.d_model``) with a distribution; the key is
also its Optuna name, so a trial's values are applied with ``ExperimentConfig.set``. The space
of a model is :data:`DEFAULT_SPACE` minus the keys the model does not read:

- the fields its registry entry fixes (``mamba_fusion`` fixes ``coupling="none"``), read from
  ``models.model_entry(name).overrides``, so the registry stays the one place that says so;
- :data:`MAMBA_ONLY_KEYS` for models that are not Mamba models (the cross-attention baseline has
  no state size and no coupling).

On the command line ``--space NAME=SPEC`` changes or adds a parameter, ``--params A,B`` keeps
only the named ones, and a key given with ``--set`` is fixed (not searched). NAME is a short
name (``lr``, ``d_model``) or a ``train.``/``model.`` key. SPEC is ``LOW:HIGH`` (uniform;
integers when both bounds are written as integers), ``LOW:HIGH:log`` (log-uniform) or
``A,B,C`` (a choice).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserInputError
from .config import DATA_DERIVED_MODEL_KEYS, TrainConfig

Value = int | float | str | bool


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a range (``low``..``high``) or a set of ``choices``."""

    key: str  # "section.field"; also the Optuna parameter name
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple[Value, ...] | None = None

    @property
    def name(self) -> str:
        """The short name (the field without its section)."""
        return self.key.partition(".")[2]

    def suggest(self, trial) -> Value:
        """Draw this parameter's value for an ``optuna.Trial``."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def spec(self) -> str:
        """The parameter as ``--space`` writes it (tables, the resume check)."""
        if self.choices is not None:
            return ",".join(str(c) for c in self.choices)
        return f"{self.low}:{self.high}" + (":log" if self.log else "")


# Width choices are multiples of the cross-attention baseline's default 4 heads. Coupling 0.5
# lies halfway between independent chains and "mean"; "sum" is left out because its transition
# factors reach M and overflow float32 on long sequences.
DEFAULT_SPACE: tuple[Param, ...] = (
    Param("train.lr", 1e-4, 1e-2, log=True),
    Param("train.weight_decay", 1e-6, 1e-2, log=True),
    Param("model.d_model", choices=(32, 64, 128, 256)),
    Param("model.n_layers", 1, 4),
    Param("model.d_state", choices=(8, 16, 32, 64)),
    Param("model.dropout", 0.0, 0.5),
    Param("model.coupling", choices=("mean", "learned", 0.5)),
)
# Fields only the Mamba encoders read.
MAMBA_ONLY_KEYS = ("model.d_state", "model.coupling")


def _model_fields() -> list[str]:
    from coupled_mamba.models import CoupledMambaConfig

    return [f.name for f in dataclasses.fields(CoupledMambaConfig)
            if f.name not in DATA_DERIVED_MODEL_KEYS]


def _unread_keys(model: str) -> set[str]:
    """Config keys that the registered ``model`` does not read (or fixes itself)."""
    from coupled_mamba.models import CoupledMambaModel, model_entry

    entry = model_entry(model)
    unread = {f"model.{k}" for k in entry.overrides}
    if not issubclass(entry.cls, CoupledMambaModel):
        unread.update(MAMBA_ONLY_KEYS)
    return unread


def model_space(model: str) -> list[Param]:
    """The default search space of the registered model ``model``."""
    unread = _unread_keys(model)
    return [p for p in DEFAULT_SPACE if p.key not in unread]


def resolve_key(name: str) -> str:
    """``lr`` -> ``train.lr``; ``model.x`` is checked against the model config's fields."""
    train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
    model_fields = _model_fields()
    section, dot, field = name.partition(".")
    if not dot:
        for p in DEFAULT_SPACE:
            if p.name == name:
                return p.key
        section, field = ("train" if name in train_fields else "model"), name
    valid = {"train": train_fields, "model": model_fields}
    if section == "data":
        raise UserInputError(f"--space {name}: data settings cannot be tuned (every trial reads "
                             "the same prepared data)")
    if section not in valid or field not in valid[section]:
        raise UserInputError(f"--space: unknown parameter {name!r}; use a name of the default "
                             f"space ({', '.join(p.name for p in DEFAULT_SPACE)}) or a train.KEY / "
                             "model.KEY of the config")
    return f"{section}.{field}"


def _scalar(text: str) -> Value:
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_param(item: str) -> Param:
    """``NAME=SPEC`` (module docstring) -> Param; ValueError naming what is wrong."""
    name, eq, spec = item.partition("=")
    if not eq or not name.strip() or not spec.strip():
        raise UserInputError(f"--space {item!r}: expected NAME=LOW:HIGH[:log] or NAME=A,B,...")
    key = resolve_key(name.strip())
    if "," in spec:
        choices = tuple(_scalar(c) for c in spec.split(",") if c.strip())
        if len(choices) != len(set(choices)):
            raise UserInputError(f"--space {item!r}: the choices repeat a value")
        return Param(key, choices=choices)
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip() != "log"):
        raise UserInputError(f"--space {item!r}: expected LOW:HIGH, LOW:HIGH:log or A,B,... (to "
                             "fix a value, use --set instead)")
    low, high = _scalar(parts[0]), _scalar(parts[1])
    log = len(parts) == 3
    for bound in (low, high):
        if isinstance(bound, (str, bool)):
            raise UserInputError(f"--space {item!r}: bound {bound!r} is not a number")
    if not low < high:
        raise UserInputError(f"--space {item!r}: expected LOW < HIGH, got {low} and {high}")
    if log and low <= 0:
        raise UserInputError(f"--space {item!r}: a log range needs LOW > 0, got {low}")
    return Param(key, low, high, log=log)


def build_space(model: str, specs: list[str] = (), only: list[str] | None = None,
                fixed: set[str] = frozenset()) -> tuple[list[Param], list[str]]:
    """The search space of one ``tune`` command and notes about what was left out.

    Args:
        model: a registered model name.
        specs: ``--space`` items ``NAME=SPEC`` that replace or add parameters.
        only: ``--params`` names to keep (None: all).
        fixed: config keys the user set with ``--set``; they are not searched.
    """
    space = {p.key: p for p in model_space(model)}
    unread = _unread_keys(model)
    for item in specs:
        p = parse_param(item)
        if p.key in unread:
            raise UserInputError(f"--space {item!r}: model {model!r} does not read {p.key} (fixed "
                                 "by its registry entry or not part of its encoder)")
        space[p.key] = p
    if only is not None:
        keep = {resolve_key(n) for n in only}
        missing = sorted(keep - set(space))
        if missing:
            raise UserInputError(f"--params: {', '.join(missing)} not in the search space of "
                                 f"{model!r} ({', '.join(p.name for p in space.values())}); add it "
                                 "with --space NAME=SPEC")
        space = {k: p for k, p in space.items() if k in keep}
    notes = [f"{k} is fixed by --set, not searched" for k in space if k in fixed]
    params = [p for k, p in space.items() if k not in fixed]
    if not params:
        raise UserInputError(f"nothing to tune: the search space of {model!r} is empty after "
                             "--params and --set")
    return params, notes

