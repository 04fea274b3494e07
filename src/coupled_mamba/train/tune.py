"""Hyperparameter search with Optuna (``coupled-mamba tune``): TPE sampling, median pruning.

A trial takes the base experiment config, applies the values it draws from the search space
(:mod:`.tune_space`) and trains one seed with :func:`.run.train_run`. After every epoch it
reports the validation selection score (``train.select_on``; the direction follows it: loss is
minimised, metrics that grow when better are maximised) to Optuna, which may prune it; the
trial's value is its best validation score. Trials never see the test split, so nothing is
selected on it; ``coupled-mamba train --config OUT/best.yaml`` gives the test metrics of the
chosen config.

The study lives in an Optuna RDB storage, by default ``sqlite:///OUT/study.db``. Running the
same command again continues it up to ``trials`` finished (complete or pruned) trials; workers
given the same storage and study name share the study. Trials of a killed worker stay RUNNING
until the storage's heartbeat marks them FAIL; they never count as finished.

Files written into OUT (see :mod:`.tune_report`): ``study.db``, ``trials.csv``,
``tune_history.png`` and ``best.yaml`` (a full ExperimentConfig that ``train --config`` reads).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import UserInputError
from .config import ExperimentConfig
from .data_prep import PreparedData, prepare_data
from .defaults import apply_data_defaults
from .distributed import launched_distributed
from .run import resolve_model_section, train_run
from .run_dir import config_changes
from .trainer import check_selection, loss_function, selection_key
from .tune_report import plot_study, summary_table, trial_rows, write_trials_csv
from .tune_space import Param

STUDY_ATTR = "coupled_mamba"  # the study's user attribute holding its base config and space
# A worker killed without a chance to clean up leaves its trial RUNNING; the storage marks it
# FAIL once its heartbeat is older than the grace period.
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
SQLITE_LOCK_TIMEOUT_S = 60  # several workers on one SQLite file wait for its lock


@dataclass
class TuneSettings:
    """How to run the study (the search space and the base config are given separately)."""

    trials: int = 20  # finished (complete + pruned) trials the study should hold
    timeout: float | None = None  # seconds for this call; None = until `trials` are finished
    study_name: str = "tune"
    storage: str | None = None  # Optuna RDB URL; None = sqlite:///OUT/study.db
    prune: bool = True
    prune_startup: int = 5  # complete trials before the median pruner starts pruning
    prune_warmup: int = 2  # epochs every trial runs before it can be pruned
    progress: bool = True  # tqdm bar over trials
    trust_pickle: bool = False  # read an MMSA pickle with the full unpickler (runs its code)


@dataclass
class TuneResult:
    study: Any  # optuna.Study
    metric: str  # the validation key selected on
    higher_is_better: bool
    best: ExperimentConfig | None  # None while no trial has completed
    files: dict[str, Path] = field(default_factory=dict)


def apply_params(base: ExperimentConfig, values: dict[str, Any],
                 source: str = "tune") -> ExperimentConfig:
    """A copy of ``base`` with ``{"section.key": value}`` set and validated."""
    cfg = copy.deepcopy(base)
    for key, value in values.items():
        cfg.set(key, value, source)
    cfg.validate()
    return cfg


def storage_url(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


def open_storage(url: str):
    """An ``optuna.storages.RDBStorage`` with heartbeats; UserInputError if it cannot be
    opened."""
    import optuna
    import sqlalchemy.exc

    kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}} if url.startswith(
        "sqlite") else {}
    try:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental in Optuna; resuming after a kill relies on them.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                              heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                              grace_period=GRACE_PERIOD_S)
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserInputError(f"--storage {url}: cannot open it ({msg})") from None


def open_study(base: ExperimentConfig, space: list[Param], settings: TuneSettings, out: Path,
               direction: str, seed: int):
    """Create the study or load the one stored under ``settings.study_name``.

    A stored study must have been started with the same base config (up to the keys a resumed
    run may change, e.g. the data path or device) and the same search space.
    """
    import optuna

    storage = open_storage(storage_url(out, settings.storage))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup,
                                          n_warmup_steps=settings.prune_warmup)
              if settings.prune else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=settings.study_name, storage=storage,
                                direction=direction, pruner=pruner, load_if_exists=True)
    where = f"study {settings.study_name!r} in {storage_url(out, settings.storage)}"
    if study.direction.name.lower() != direction:
        raise UserInputError(f"{where} was created to {study.direction.name.lower()}, but the "
                             f"selection metric asks to {direction}; use another --study-name")
    # JSON round trip: the stored copy has lists where the config has tuples.
    mine = json.loads(json.dumps({"config": base.to_dict(),
                                  "space": {p.key: p.spec() for p in space}}))
    saved = study.user_attrs.get(STUDY_ATTR)
    if saved is None:
        study.set_user_attr(STUDY_ATTR, mine)
    else:
        changes = config_changes(saved["config"], mine["config"])
        changes += [f"space {k}: {saved['space'].get(k)} -> {mine['space'].get(k)}"
                    for k in sorted(set(saved["space"]) | set(mine["space"]))
                    if saved["space"].get(k) != mine["space"].get(k)]
        if changes:
            raise UserInputError(f"{where} was started with another setting: {', '.join(changes)}; "
                                 "rerun the original command, or use another --study-name or --out")
    # Seeded by the number of stored trials: a resumed study must not draw its first trials
    # again, and a rerun of the same command draws the same values.
    sampler_seed = int(np.random.SeedSequence([seed, len(study.trials)]).generate_state(1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)
    return study


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _reporter(trial, metric: str):
    """Trainer callback: report the epoch's validation score; prune when Optuna says so."""
    import optuna

    def report(trainer, epoch: int, row: dict[str, float]) -> None:
        score = row.get(f"valid_{metric}")
        if score is not None and np.isfinite(score):
            trial.report(float(score), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (valid {metric} {score})")

    return report


def _objective(base: ExperimentConfig, space: list[Param], data: PreparedData, metric: str):
    import optuna
    import torch

    def objective(trial) -> float:
        cfg = apply_params(base, {p.key: p.suggest(trial) for p in space}, f"trial {trial.number}")
        cfg.train.n_seeds, cfg.train.progress = 1, False
        try:
            result = train_run(cfg, None, prepared=data, callbacks=[_reporter(trial, metric)])
        except (FloatingPointError, torch.cuda.OutOfMemoryError) as e:
            # A diverged or oversized config counts as pruned, not failed: TPE ignores failed
            # trials and would keep proposing it.
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            trial.set_user_attr("stopped", reason)
            raise optuna.TrialPruned(reason) from None
        return float(result["selection"]["score"])

    return objective


def _progress_callback(bar, total: int, quiet: bool):
    from optuna.trial import TrialState

    def on_trial_end(study, trial) -> None:
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            bar.update(1)
        try:
            bar.set_postfix(best=f"{study.best_value:.4g}")
        except ValueError:  # no complete trial yet
            pass
        if quiet:
            value = "" if trial.value is None else f" {trial.value:.4g}"
            print(f"trial {trial.number}: {trial.state.name.lower()}{value} "
                  f"({len(finished_trials(study))}/{total} finished)", file=sys.stderr,
                  flush=True)

    return on_trial_end


def run_tune(cfg: ExperimentConfig, space: list[Param], out: str | Path,
             settings: TuneSettings, prepared: PreparedData | None = None) -> TuneResult:
    """Run (or continue) the study and write its files into ``out``.

    Args:
        cfg: the base config (``load_config``); ``train.seed`` seeds every trial and the sampler.
        space: the searched parameters (``tune_space.build_space``).
        out: the tune folder (created).
        settings: trials, timeout, storage, pruning, progress bar.
        prepared: already prepared data (otherwise loaded from ``cfg.data``).

    Returns:
        the study, the selection metric and the best config (None before a complete trial).
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    if settings.trials < 1:
        raise UserInputError(f"--trials: expected >= 1, got {settings.trials}")
    if launched_distributed():
        raise UserInputError("tune runs one process per worker: start several `coupled-mamba "
                             "tune` workers on one --storage instead of torchrun")
    out = Path(out)
    if prepared is None:
        prepared = prepare_data(cfg.data, seed=cfg.train.seed,
                                trust_pickle=settings.trust_pickle)
    # Errors in the base config surface here, before a study is created.
    resolve_model_section(cfg, prepared)
    loss_function(prepared.task, cfg.train.loss)
    check_selection(cfg.train.select_on, prepared.metric_family, prepared.task,
                    prepared.train.labels)
    metric, higher = selection_key(cfg.train.select_on, prepared.metric_family)
    out.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    # The bar, our log lines and the summary table replace Optuna's line per trial.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = open_study(cfg, space, settings, out, "maximize" if higher else "minimize",
                           cfg.train.seed)
        result = TuneResult(study, metric, higher, None)
        done = len(finished_trials(study))
        _log(f"study {settings.study_name!r} in {storage_url(out, settings.storage)}: "
             f"{done} of {settings.trials} trials finished")
        for note in prepared.notes:
            _log(f"note: {note}")
        # The test split is withheld from every trial.
        trial_data = dataclasses.replace(prepared, test=None, notes=[])
        bar = tqdm(total=settings.trials, initial=min(done, settings.trials), desc="trials",
                   unit="trial", disable=not settings.progress)
        try:
            if done < settings.trials:
                # Trial logs go above the bar instead of through it.
                with contextlib.redirect_stderr(_AboveBar(sys.stderr) if settings.progress
                                                else sys.stderr):
                    study.optimize(
                        _objective(cfg, space, trial_data, metric),
                        n_trials=settings.trials - done, timeout=settings.timeout,
                        callbacks=[MaxTrialsCallback(settings.trials, states=(
                                       TrialState.COMPLETE, TrialState.PRUNED)),
                                   _progress_callback(bar, settings.trials,
                                                      not settings.progress)])
        finally:
            bar.close()
            _write_files(result, cfg, prepared, out)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return result


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _AboveBar(io.TextIOBase):
    """A stderr that prints whole lines above the tqdm bars writing to ``stream``."""

    def __init__(self, stream):
        self.stream, self.pending = stream, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            tqdm.write(line, file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _write_files(result: TuneResult, base: ExperimentConfig, prepared: PreparedData,
                 out: Path) -> None:
    """trials.csv, tune_history.png and (once a trial has completed) best.yaml."""
    trials = result.study.get_trials(deepcopy=False)
    if not trials:
        return
    rows = trial_rows(trials)
    result.files["trials"] = write_trials_csv(rows, out / "trials.csv")
    result.files["plot"] = plot_study(trials, out / "tune_history.png", result.metric,
                                      result.higher_is_better)
    try:
        best = result.study.best_trial
    except ValueError:  # every trial was pruned or failed
        return
    chosen = apply_params(base, best.params, "best trial")
    # The values the trial trained with: the data's defaults for keys neither the base config
    # nor the search set (as train_run applies them), then every model field resolved.
    apply_data_defaults(chosen, prepared)
    result.best = resolve_model_section(chosen, prepared)
    result.best.save(out / "best.yaml")
    result.files["best"] = out / "best.yaml"


def summary(result: TuneResult, top: int = 10) -> str:
    """The printed summary: counts, the best trials as a table, and the files written."""
    from optuna.trial import TrialState

    trials = result.study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    lines = [f"study {result.study.study_name!r}: {len(trials)} trials ("
             + ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n) + "), "
             f"selected on valid {result.metric} "
             f"({'higher' if result.higher_is_better else 'lower'} is better)"]
    lines.append(summary_table(trial_rows(trials), result.higher_is_better, top=top))
    if result.best is not None:
        best = result.study.best_trial
        lines.append(f"best: trial {best.number}, valid {result.metric} {best.value:.4g}; "
                     "for its test metrics run: coupled-mamba train --config "
                     f"{result.files['best']} --out RUN_DIR")
    else:
        lines.append("no trial has completed yet: best.yaml not written")
    lines += [f"wrote {p}" for p in result.files.values()]
    return "\n".join(lines)
