"""The ``coupled-mamba`` command: train, evaluate, predict, convert, demo (and extensions).

Subcommands come from a table, :data:`COMMANDS`, of :class:`Command` entries (name, help,
``add_arguments(parser)``, ``run(args) -> exit code``). Other modules add theirs without touching
this file: each module listed in :data:`EXTENSION_MODULES` is imported when it exists and its
module-level ``COMMANDS`` list is appended (``coupled_mamba.bench.cli`` adds ``bench``). A
command with nested subcommands (``coupled-mamba bench efficiency``) builds them in its
``add_arguments``.

Errors in the user's input (missing or damaged file, unknown model, bad config key, incompatible
data) are printed as one line on stderr, ``coupled-mamba <command>: error: ...``, with exit status
2; ``--debug`` shows the traceback instead. They are :class:`~coupled_mamba.errors.UserInputError`
(raised by the loaders, the config and the run-folder checks) and the OS errors of a bad path;
anything else, a plain ValueError included, is a bug and keeps its traceback. Warnings are printed
as one line each, ``coupled-mamba <command>: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coupled_mamba.errors import UserInputError

# Modules that may contribute subcommands (imported only if they exist).
EXTENSION_MODULES = ("coupled_mamba.bench.cli", "coupled_mamba.train.tune_cli")

USER_ERRORS = (UserInputError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (plus where to find help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_trust_pickle(p) -> None:
    """The ``--trust-pickle`` flag of every command that reads data."""
    p.add_argument("--trust-pickle", action="store_true",
                   help="read an MMSA pickle with Python's full unpickler, which runs any code "
                   "the file names (default: only numpy arrays and builtin containers are "
                   "rebuilt; docs/DATA.md). Use it only for files you trust")


# ---- train --------------------------------------------------------------------------------

def _coupling(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _add_train(p: argparse.ArgumentParser) -> None:
    from coupled_mamba.models import list_models

    from .config import FORMATS, TASKS

    p.add_argument("--data", help="dataset path (file or folder)")
    p.add_argument("--format", choices=FORMATS, help="data format (default: auto)")
    add_trust_pickle(p)
    p.add_argument("--model", choices=list_models(), help="registered model (default: "
                   "coupled_mamba)")
    p.add_argument("--coupling", type=_coupling, metavar="none|mean|sum|ALPHA|learned",
                   help="coupling of the state chains (model.coupling)")
    p.add_argument("--task", choices=TASKS, help="expected task; must agree with the data")
    p.add_argument("--epochs", type=int, help="maximum epochs (train.epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size (train.batch_size)")
    p.add_argument("--lr", type=float, help="learning rate (train.lr)")
    p.add_argument("--seq-len", type=int, help="common sequence length L (data.seq_len)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seed", type=int, help="seed (train.seed; default 1111)")
    g.add_argument("--seeds", type=int, metavar="K",
                   help="run K seeds: seed, seed+1, ... (train.n_seeds)")
    p.add_argument("--missing-rate", type=float, metavar="R",
                   help="drop each (sample, modality) with probability R in every split")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    p.add_argument("--config", help="YAML file with sections data/model/train")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run that --out holds (its files are deleted first)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def resolve_train_config(args: argparse.Namespace):
    """The ExperimentConfig of a ``train`` command line."""
    from .config import load_config

    flags = {
        "data.path": args.data, "data.format": args.format, "model.name": args.model,
        "model.coupling": args.coupling, "data.task": args.task, "train.epochs": args.epochs,
        "train.batch_size": args.batch_size, "train.lr": args.lr, "data.seq_len": args.seq_len,
        "train.seed": args.seed, "train.n_seeds": args.seeds, "train.device": args.device,
        "data.missing_rate_train": args.missing_rate,
        "data.missing_rate_test": args.missing_rate,
        "train.progress": False if args.quiet else None,
    }
    cfg = load_config(args.config, args.overrides, flags)
    if cfg.data.path is None:
        raise UserInputError("no data: give --data PATH")
    return cfg


def _run_train(args: argparse.Namespace) -> int:
    from .run import train_run

    cfg = resolve_train_config(args)
    result = train_run(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                       trust_pickle=args.trust_pickle)
    if _is_main():
        _print_result(result)
        print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print_result(result: dict) -> None:
    split = "test" if result.get("test") else "valid"
    metrics = result[split]
    if "std" in result and result["std"].get(split):
        std = result["std"][split]
        body = ", ".join(f"{k} {v:.4f}±{std[k]:.4f}" for k, v in metrics.items()
                         if v is not None)
        print(f"{split} (mean±std over seeds {result['seeds']}): {body}")
    else:
        body = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)
        print(f"{split} (best epoch {result['best_epoch']}): {body}")


# ---- evaluate / predict -------------------------------------------------------------------

def _add_run_and_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by `train`")
    p.add_argument("--data", required=True, help="dataset path (read with the run's settings)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_trust_pickle(p)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    _add_run_and_data(p)
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--missing-rate", type=float, metavar="R",
                   help="drop each (sample, modality) of the split with probability R")
    p.add_argument("--missing-seed", type=int, help="seed of the missing mask (default: the "
                   "run's seed)")
    p.add_argument("--out", help="JSON file (default RUN/evaluate_<split>.json)")


def _run_evaluate(args: argparse.Namespace) -> int:
    from .run import evaluate_run

    if args.missing_rate is not None and not 0.0 <= args.missing_rate < 1.0:
        raise UserInputError(f"--missing-rate: expected a rate in [0, 1), got "
                             f"{args.missing_rate}")
    r = evaluate_run(args.run, args.data, split=args.split, missing_rate=args.missing_rate,
                     missing_seed=args.missing_seed, device=args.device, out=args.out,
                     trust_pickle=args.trust_pickle)
    for seed, m in r["per_seed"].items():
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    if "mean" in r:
        print("mean±std: " + ", ".join(f"{k} {v:.4f}±{r['std'][k]:.4f}"
                                       for k, v in r["mean"].items()))
    return 0


def _add_predict(p: argparse.ArgumentParser) -> None:
    _add_run_and_data(p)
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--split", default="all", choices=("all", "train", "valid", "test"))
    p.add_argument("--seed", type=int, help="which seed's model (default: the first)")


def _run_predict(args: argparse.Namespace) -> int:
    from .run import predict_run

    n = predict_run(args.run, args.data, args.out, split=args.split, seed=args.seed,
                    device=args.device, trust_pickle=args.trust_pickle)
    print(f"wrote {n} predictions to {args.out}")
    return 0


# ---- convert / demo -----------------------------------------------------------------------

def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mmsa", required=True, help="MMSA feature pickle")
    p.add_argument("--out", required=True, help="folder for train.npz / valid.npz / test.npz "
                   "and meta.json (created; must be empty unless --force)")
    p.add_argument("--force", action="store_true", help="write into a folder that holds files "
                   "(train/valid/test.npz and meta.json are replaced, a split file the pickle "
                   "has no split for is deleted)")
    add_trust_pickle(p)


def _run_convert(args: argparse.Namespace) -> int:
    from coupled_mamba.data import mmsa_to_npz

    from .run_dir import check_out_folder

    if not os.path.isfile(args.mmsa):
        raise FileNotFoundError(f"MMSA pickle not found: {args.mmsa}")
    out = Path(args.out)
    check_out_folder(out)
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not args.force:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise UserInputError(f"--out {out}: folder is not empty ({shown}); choose an empty or "
                             "new folder, or pass --force to replace the npz files in it")
    mmsa_to_npz(args.mmsa, out, trust_pickle=args.trust_pickle)
    print(f"wrote {args.out}")
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    from .demo import add_demo_arguments

    add_demo_arguments(p)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


COMMANDS: list[Command] = [
    Command("train", "train a model (K seeds) into a run directory", _add_train, _run_train),
    Command("evaluate", "metrics of a trained run on a dataset split", _add_evaluate,
            _run_evaluate),
    Command("predict", "write per-sample predictions of a trained run to CSV", _add_predict,
            _run_predict),
    Command("convert", "convert an MMSA feature pickle to the generic npz folder", _add_convert,
            _run_convert),
    Command("demo", "train Coupled Mamba and the uncoupled baseline on the embedded benchmark",
            _add_demo, _run_demo),
]


def all_commands() -> list[Command]:
    """The built-in commands plus those of the extension modules that exist."""
    cmds = list(COMMANDS)
    for name in EXTENSION_MODULES:
        if importlib.util.find_spec(name) is not None:
            cmds += list(importlib.import_module(name).COMMANDS)
    return cmds


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="coupled-mamba",
                     description="Coupled Mamba: train, evaluate and use multimodal models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for cmd in all_commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run, _prog=p.prog)
    return parser


def _one_line_warnings(prog: str):
    """A ``warnings.showwarning`` that prints ``PROG: warning: message`` on one line."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"{prog}: warning: {text}", file=file or sys.stderr)

    return show


# The extra that provides each optional module the commands import, for the one-line error a
# core-only install gets instead of a traceback.
EXTRA_OF_MODULE = {"yaml": "cli", "tqdm": "cli", "sklearn": "cli", "h5py": "cli",
                   "matplotlib": "bench", "scipy": "bench", "optuna": "tune"}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, 1 for a missing extra)."""
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        module = (exc.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(module)
        if extra is None:
            raise
        print(f"coupled-mamba: error: this needs the [{extra}] extra (no module named "
              f"{module!r}): pip install 'coupled-mamba[{extra}]'", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = _one_line_warnings(args._prog)
            return int(args._run(args) or 0)
    except USER_ERRORS as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__  # one line
        print(f"{args._prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args._prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        from .distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
