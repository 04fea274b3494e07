"""Accuracy benchmarks that train models: fusion ablation, coupling ablations, missing modalities.

Shapes: M modalities; N samples. Every benchmark is a list of :class:`Setting` (a registered
model plus model-config and data-config overrides on top of one base experiment config), each
trained for K seeds with the project's trainer (``coupled_mamba.train.run.train_run``: model
selection on the validation split, test metrics of the selected epoch) and reported as mean and
population std over the seeds (as MMSA reports).

- fusion (paper Table 11): ``avg_fusion``, ``concat_fusion``, ``mamba_fusion`` (uncoupled
  chains), ``coupled_mamba``.
- coupling (ablations the paper leaves open): coupling strength alpha (W = (1 - alpha) I +
  alpha 11^T / M), the form of W ("mean" 11^T / M, "sum" 11^T, "learned" row-softmax), the
  neighbourhood (which modalities may read each other's state: all pairs, each single pair, none;
  via ``coupling_mask``), n_layers, d_state and dt_rank (d_state / 16, / 8, / 4).
- missing (paper: missing rates 0.0-0.7 on CMU-MOSEI): each (sample, modality) dropped with
  probability r (``coupled_mamba.data.apply_missing``). Protocol "same" (default): train, select
  and test at the same rate r, as the trainer's ``--missing-rate`` does (the paper does not spell
  its protocol out; this is how its robustness table reads, one model per rate). Protocol
  "complete-train": train and select on complete data once, test at every r.

Settings that resolve to the same training run (e.g. the base model appears in several coupling
groups) are trained once. Finished runs are appended to ``OUT/runs.jsonl`` and reused when the
command is run again with the same settings and the same code (commit and uncommitted changes of
the package, ``environment.code_version``), so an interrupted benchmark continues where it
stopped; a run recorded by other code, or with no record of its code, is trained again. Outside
a git checkout the code cannot be told apart and finished runs are reused.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from ..errors import UserInputError

FUSION_MODELS = ("avg_fusion", "concat_fusion", "mamba_fusion", "coupled_mamba")
COUPLING_GROUPS = ("alpha", "coupling", "neighbourhood", "n_layers", "d_state", "dt_rank")
DEFAULT_GRIDS = {
    "alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
    "coupling": ["mean", "sum", "learned"],
    "neighbourhood": ["all", "pairs", "none"],
    "n_layers": [1, 2, 3, 4],
    "d_state": [32, 64, 128],
    "dt_rank": [16, 8, 4],  # divisors of d_state
}
MISSING_MODELS = ("coupled_mamba", "mamba_fusion", "avg_fusion", "concat_fusion",
                  "cross_attention")
MISSING_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
PROTOCOLS = ("same", "complete-train")
SYNTHETIC = "synthetic"


@dataclass
class Setting:
    """One point of an ablation: ``model`` trained with ``params`` (model section) and ``data``
    (data section) overrides; ``x`` is its abscissa in curve plots; ``eval_rates`` are extra
    test-time missing rates (protocol "complete-train")."""

    group: str
    label: str
    model: str
    params: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    x: float | None = None
    eval_rates: list[float] = field(default_factory=list)


# ---- the grids ---------------------------------------------------------------------------------

def fusion_settings(models: Sequence[str] = FUSION_MODELS) -> list[Setting]:
    """The fusion ablation: one setting per registered model name."""
    _check_models(models)
    return [Setting("fusion", m, m) for m in models]


def neighbourhood_masks(choice: str, names: Sequence[str]) -> list[tuple[str, list | None]]:
    """(label, coupling_mask) pairs for a neighbourhood choice: "all" (no mask), "none" (the
    identity: every chain reads only itself), "pairs" (one per unordered pair {a, b}: a and b
    read each other, the others only themselves), or "a-b" naming one pair."""
    M = len(names)
    eye = [[int(i == j) for j in range(M)] for i in range(M)]

    def pair(a: int, b: int):
        mask = [row[:] for row in eye]
        mask[a][b] = mask[b][a] = 1
        return f"{names[a]}-{names[b]}", mask

    if choice == "all":
        return [("all", None)]
    if choice == "none":
        return [("none", eye)]
    if choice == "pairs":
        return [pair(a, b) for a, b in combinations(range(M), 2)]
    parts = choice.split("-")
    if len(parts) == 2 and all(p in names for p in parts) and parts[0] != parts[1]:
        return [pair(names.index(parts[0]), names.index(parts[1]))]
    raise UserInputError(f"neighbourhood: unknown choice {choice!r}; expected all, pairs, none "
                         f"or a pair of modality names like {names[0]}-{names[1]} (names: "
                         f"{list(names)})")


def coupling_settings(groups: Sequence[str], grids: dict, modality_names: Sequence[str],
                      base_d_state: int, model: str = "coupled_mamba") -> list[Setting]:
    """The coupling ablations (module docstring) for the chosen ``groups``; ``grids`` maps a
    group to its values (missing groups take :data:`DEFAULT_GRIDS`)."""
    bad = [g for g in groups if g not in COUPLING_GROUPS]
    if bad:
        raise UserInputError(f"groups: unknown {bad}; expected some of {COUPLING_GROUPS}")
    out = []
    for g in groups:
        values = grids.get(g) or DEFAULT_GRIDS[g]
        for v in values:
            if g == "alpha":
                a = float(v)
                if not 0.0 <= a <= 1.0:
                    raise UserInputError(f"alpha: expected values in [0, 1], got {v}")
                out.append(Setting(g, f"{a:g}", model, {"coupling": a}, x=a))
            elif g == "coupling":
                if v not in ("none", "mean", "sum", "learned"):
                    raise UserInputError(f"coupling: expected none, mean, sum or learned, got "
                                         f"{v!r}")
                out.append(Setting(g, v, model, {"coupling": v}))
            elif g == "neighbourhood":
                for label, mask in neighbourhood_masks(str(v), modality_names):
                    out.append(Setting(g, label, model, {"coupling_mask": mask}))
            elif g == "n_layers":
                out.append(Setting(g, str(int(v)), model, {"n_layers": int(v)}, x=int(v)))
            elif g == "d_state":  # dt_rank follows the default d_state / 8
                out.append(Setting(g, str(int(v)), model, {"d_state": int(v), "dt_rank": None},
                                   x=int(v)))
            else:  # dt_rank = d_state / divisor
                div = int(v)
                rank = max(1, base_d_state // div)
                out.append(Setting(g, f"N/{div}={rank}", model, {"dt_rank": rank}, x=rank))
    return out


def missing_settings(models: Sequence[str], rates: Sequence[float],
                     protocol: str = "same") -> list[Setting]:
    """Missing-modality settings: protocol "same" gives one training per (model, rate);
    "complete-train" one training per model, evaluated at every rate."""
    _check_models(models)
    if protocol not in PROTOCOLS:
        raise UserInputError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    for r in rates:
        if not 0.0 <= r < 1.0:
            raise UserInputError(f"rates: expected values in [0, 1), got {r}")
    if protocol == "complete-train":
        return [Setting("missing", m, m, eval_rates=sorted(rates)) for m in models]
    return [Setting("missing", f"{m}@{r:g}", m,
                    data={"missing_rate_train": float(r), "missing_rate_test": float(r)}, x=r)
            for m in models for r in sorted(rates)]


def _check_models(models: Sequence[str]) -> None:
    from coupled_mamba.models import list_models

    bad = [m for m in models if m not in list_models()]
    if bad or not models:
        raise UserInputError(f"models: unknown {bad or list(models)}; registered: {list_models()}")


# ---- data and configs --------------------------------------------------------------------------

def synthetic_spec(sizes: Sequence[int] | None = None, seq_len: int | None = None) -> dict:
    """Keyword arguments of ``make_synthetic`` for ``--data synthetic``: the demo's benchmark
    (``coupled_mamba.train.demo.DEMO_DATA``: 6000 / 500 / 1000 samples, L = 24, seed 0, the
    size at which the coupled model can find the timing rule, docs/TRAINING.md) unless
    ``sizes`` (n_train, n_valid, n_test) or ``seq_len`` say otherwise."""
    from coupled_mamba.train.demo import DEMO_DATA

    spec = dict(DEMO_DATA)
    if sizes is not None:
        if len(sizes) != 3:
            raise UserInputError(f"synthetic sizes: expected n_train,n_valid,n_test, got "
                                 f"{list(sizes)}")
        spec.update(n_train=sizes[0], n_valid=sizes[1], n_test=sizes[2])
    if seq_len is not None:
        spec["seq_len"] = seq_len
    return spec


def load_benchmark_data(data: str, cfg, synthetic: dict | None = None, *,
                        trust_pickle: bool = False):
    """The MultimodalData of ``--data``: a path read with the config's data section (an MMSA
    pickle with the restricted unpickler unless ``trust_pickle``), or ``"synthetic"``: the
    embedded timing benchmark, ``make_synthetic(**synthetic)`` (default :func:`synthetic_spec`)."""
    from coupled_mamba.data import load_dataset, make_synthetic

    if data == SYNTHETIC:
        return make_synthetic(**(synthetic or synthetic_spec()))
    if not os.path.exists(data):
        raise FileNotFoundError(f"data not found: {data}")
    return load_dataset(data, format=cfg.data.format, seq_len=cfg.data.seq_len,
                        trust_pickle=trust_pickle, **cfg.data.options)


def setting_config(base, s: Setting):
    """The experiment config of one setting: ``base`` with the setting's model name and
    overrides. Model-config keys that the registry fixes for that name (e.g. coupling for
    ``mamba_fusion``) are dropped from the base so they cannot conflict."""
    from coupled_mamba.models import model_entry

    cfg = copy.deepcopy(base)
    cfg.model.name = s.model
    fixed = model_entry(s.model).overrides
    cfg.model.params = {k: v for k, v in cfg.model.params.items() if k not in fixed}
    cfg.model.params.update(s.params)
    for k, v in s.data.items():
        cfg.set(f"data.{k}", v, f"setting {s.group}/{s.label}")
    cfg.validate()
    return cfg


def run_key(cfg, s: Setting, data, data_id: str) -> str:
    """A hash of everything that determines a run's results: the train and data sections, the
    model name and its fully resolved config (so that e.g. ``coupling_mask: null`` and no mask,
    or ``dt_rank: null`` and d_state / 8, are the same run), the data and extra evaluations."""
    from coupled_mamba.train.config import build_model_config

    d = cfg.to_dict()
    d["data"].pop("path", None)
    d["train"].pop("progress", None)
    names = list(data.modality_names)
    resolved = build_model_config(cfg.model, [int(data.input_dims[m]) for m in names], names,
                                  data.task, int(data.num_outputs))
    d["model"] = {"name": cfg.model.name, **resolved.to_dict()}
    blob = json.dumps({"cfg": d, "data": data_id, "eval_rates": s.eval_rates}, sort_keys=True,
                      default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# ---- running -----------------------------------------------------------------------------------

def _per_seed(summary: dict) -> list[dict]:
    return summary.get("per_seed") or [summary]


def _mean_std(runs: list[dict]) -> tuple[dict, dict]:
    """Mean and population std of every metric over seeds (None entries count as NaN)."""
    keys = list(dict.fromkeys(k for r in runs for k in r))
    arr = {k: np.array([np.nan if r.get(k) is None else r[k] for r in runs], dtype=float)
           for k in keys}
    return ({k: float(v.mean()) for k, v in arr.items()},
            {k: float(v.std()) for k, v in arr.items()})


def train_setting(cfg, data, s: Setting) -> dict:
    """Train ``cfg`` (K seeds) on ``data`` and return its record: per-seed test/valid metrics,
    their mean/std, and for ``s.eval_rates`` the test metrics at each missing rate."""
    from coupled_mamba.data import apply_missing
    from coupled_mamba.train.data_prep import prepare_loaded
    from coupled_mamba.train.run import build_model, train_run

    prepared = prepare_loaded(data, cfg.data, cfg.train.seed)
    models = []

    def builder(c, p):
        models.append(build_model(c, p))
        return models[-1]

    t0 = time.perf_counter()
    summary = train_run(cfg, None, prepared=prepared, model_builder=builder)
    seconds = time.perf_counter() - t0
    seeds = _per_seed(summary)
    test = [r["test"] if r.get("test") is not None else r["valid"] for r in seeds]
    mean, std = _mean_std(test)
    record = {
        "seeds": [r["seed"] for r in seeds], "split": "test" if seeds[0].get("test") else "valid",
        "metric_family": prepared.metric_family, "per_seed": test,
        "best_epoch": [r["best_epoch"] for r in seeds], "mean": mean, "std": std,
        "train_seconds": round(seconds, 1), "num_parameters": seeds[0].get("num_parameters"),
        "notes": prepared.notes,
    }
    if s.eval_rates:
        record["by_rate"] = _evaluate_missing(cfg, prepared, models, s.eval_rates, apply_missing)
    return record


def _evaluate_missing(cfg, prepared, models, rates, apply_missing) -> dict:
    """Test metrics of already trained ``models`` (one per seed) at each missing rate. The mask
    seed is the run's first seed + 2, the one protocol "same" uses for the test split."""
    import torch

    from coupled_mamba.train.distributed import resolve_device
    from coupled_mamba.train.trainer import Trainer

    split = prepared.test if prepared.test is not None else prepared.valid
    device = resolve_device(cfg.train.device)
    out = {}
    for r in rates:
        ev = split if r == 0 else apply_missing(split, r, cfg.train.seed + 2,
                                                prepared.modality_names)
        runs = []
        for seed, model in zip(range(cfg.train.seed, cfg.train.seed + len(models)), models,
                               strict=True):
            trainer = Trainer(model, cfg.train, task=prepared.task,
                              metric_family=prepared.metric_family,
                              modality_names=prepared.modality_names, device=device, seed=seed)
            with torch.no_grad():
                runs.append(trainer.evaluate(ev, desc=f"missing {r:g}").metrics)
        mean, std = _mean_std(runs)
        out[f"{r:g}"] = {"per_seed": runs, "mean": mean, "std": std}
    return out


def run_settings(settings: Sequence[Setting], base, data, data_id: str, out_dir: str,
                 log: Callable[[str], None] = print, resume: bool = True,
                 any_code: bool = False) -> list[dict]:
    """Train every setting (deduplicated, resumable: module docstring); returns one row per
    setting: group, label, model, params, data overrides, x, and its run record (with the
    ``code`` that trained it). ``any_code`` reuses finished runs whatever code recorded them."""
    from ..train.run_dir import json_safe
    from .ablation_report import mean_std_text, primary_metric
    from .environment import code_version

    os.makedirs(out_dir, exist_ok=True)
    code = code_version()
    cache_path = os.path.join(out_dir, "runs.jsonl")
    cache: dict[str, dict] = {}
    if resume and os.path.isfile(cache_path):
        with open(cache_path) as f:
            for line in f:
                if line.strip():
                    item = json.loads(line)
                    cache[item["key"]] = item["record"]
    rows = []
    for i, s in enumerate(settings, 1):
        cfg = setting_config(base, s)
        key = run_key(cfg, s, data, data_id)
        head = f"[{i}/{len(settings)}] {s.group} {s.label}"
        if key in cache and not any_code and code is not None and cache[key].get("code") != code:
            # Reusing it would report another version's numbers under this one's commit.
            log(f"{head}: runs.jsonl has it from code {cache[key].get('code') or 'not recorded'}"
                f", the code is now {code}: training again (--any-code reuses it)")
            del cache[key]
        if key in cache:
            log(f"{head}: done before (runs.jsonl, code {cache[key].get('code')}, finished "
                f"{cache[key].get('finished')})")
        else:
            log(f"{head}: training {s.model} "
                f"({cfg.train.n_seeds} seed(s), {cfg.train.epochs} epochs max) ...")
            cache[key] = train_setting(cfg, data, s)
            cache[key]["finished"] = datetime.datetime.now().astimezone().isoformat(
                timespec="seconds")
            cache[key]["code"] = code
            with open(cache_path, "a") as f:
                f.write(json.dumps(json_safe({"key": key, "group": s.group, "label": s.label,
                                               "record": cache[key]})) + "\n")
        rec = cache[key]
        rows.append({"group": s.group, "label": s.label, "model": s.model, "params": s.params,
                     "data": s.data, "x": s.x, "key": key, **rec})
        primary = primary_metric(rec["metric_family"])
        log(f"    {primary} {mean_std_text(rec['mean'].get(primary), rec['std'].get(primary))} "
            f"({rec['train_seconds']:.0f} s)")
    return rows
