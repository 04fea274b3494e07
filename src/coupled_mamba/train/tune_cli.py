"""``coupled-mamba tune``: hyperparameter search with Optuna (docs/TRAINING.md, "Tuning").

An extension of the CLI (``cli.EXTENSION_MODULES``). Optuna is an optional dependency
(``pip install coupled-mamba[tune]``), imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UserInputError
from .cli import Command, add_trust_pickle

INSTALL_HINT = "pip install coupled-mamba[tune]"


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    from coupled_mamba.models import list_models

    from .config import FORMATS
    from .tune_space import DEFAULT_SPACE

    d = p.add_argument_group("experiment (as in train)")
    d.add_argument("--data", help="dataset path (file or folder)")
    add_trust_pickle(d)
    d.add_argument("--format", choices=FORMATS, help="data format (default: auto)")
    d.add_argument("--model", choices=list_models(), help="registered model (default: "
                   "coupled_mamba); its search space follows from the registry")
    d.add_argument("--epochs", type=int, help="maximum epochs per trial (train.epochs)")
    d.add_argument("--seed", type=int, help="training seed of every trial and base seed of the "
                   "sampler (train.seed; default 1111)")
    d.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    d.add_argument("--config", help="YAML file with sections data/model/train (the base config)")
    d.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable); a key set here is not searched")
    s = p.add_argument_group("search")
    names = ", ".join(prm.name for prm in DEFAULT_SPACE)
    s.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                   help="change or add a searched parameter: LOW:HIGH, LOW:HIGH:log or A,B,C "
                   f"(repeatable; default space: {names}, less what the model does not read)")
    s.add_argument("--params", type=lambda text: [x.strip() for x in text.split(",")
                                                  if x.strip()],
                   metavar="NAME,...", help="search only these parameters")
    s.add_argument("--trials", type=int, default=20,
                   help="finished trials the study should hold (default %(default)s)")
    s.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop starting trials after this long (this worker)")
    s.add_argument("--no-prune", action="store_true", help="train every trial to the end")
    s.add_argument("--prune-startup", type=int, default=5, metavar="K",
                   help="complete trials before pruning starts (default %(default)s)")
    s.add_argument("--prune-warmup", type=int, default=2, metavar="E",
                   help="epochs every trial runs before it can be pruned (default %(default)s)")
    o = p.add_argument_group("study and output")
    o.add_argument("--out", required=True, help="tune folder: study.db, trials.csv, "
                   "tune_history.png, best.yaml; rerun to continue the study")
    o.add_argument("--study-name", default="tune",
                   help="the study's name in the storage (default %(default)s)")
    o.add_argument("--storage", metavar="URL", help="Optuna RDB storage shared by workers, "
                   "e.g. postgresql://user:pw@host/db (default sqlite:///OUT/study.db)")
    o.add_argument("--quiet", action="store_true", help="no progress bar (one line per trial)")


def run_tune_command(args: argparse.Namespace) -> int:
    try:
        import optuna  # noqa: F401
    except ImportError:
        print(f"{args._prog}: error: optuna is not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    from .config import load_config
    from .tune import TuneSettings, run_tune, summary
    from .tune_space import build_space

    flags = {"data.path": args.data, "data.format": args.format, "model.name": args.model,
             "train.epochs": args.epochs, "train.seed": args.seed, "train.device": args.device}
    cfg = load_config(args.config, args.overrides, flags)
    if cfg.data.path is None:
        raise UserInputError("no data: give --data PATH")
    for name, value in (("--timeout", args.timeout), ("--trials", args.trials)):
        if value is not None and value <= 0:
            raise UserInputError(f"{name}: expected > 0, got {value}")
    fixed = {item.partition("=")[0].strip() for item in args.overrides}
    space, notes = build_space(cfg.model.name, args.space, args.params, fixed)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    settings = TuneSettings(trials=args.trials, timeout=args.timeout,
                            study_name=args.study_name, storage=args.storage,
                            prune=not args.no_prune, prune_startup=args.prune_startup,
                            prune_warmup=args.prune_warmup, progress=not args.quiet,
                            trust_pickle=args.trust_pickle)
    result = run_tune(cfg, space, args.out, settings)
    print(summary(result))
    return 0


COMMANDS = [Command("tune", "search hyperparameters with Optuna (TPE, median pruning); "
                    "writes best.yaml for train --config", add_tune_arguments, run_tune_command)]
