"""``coupled-mamba bench ...``: the benchmark subcommands (efficiency, fusion, coupling, missing).

The CLI (``coupled_mamba.train.cli``) imports this module as an extension and adds its
:data:`COMMANDS`; ``bench`` builds its own nested subcommands. Each subcommand is a pair
``add_arguments(parser)`` / ``run(args) -> exit status``, and writes CSV, JSON, markdown and PNG
files into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

from coupled_mamba.errors import UserInputError
from coupled_mamba.train.cli import Command, add_trust_pickle


def _number_list(cast, what: str):
    def parse(text: str) -> list:
        try:
            return [cast(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}") from None
    return parse


int_list = _number_list(int, "integers")  # "50,250,1000" -> [50, 250, 1000] (argparse type)
float_list = _number_list(float, "numbers")  # "0,0.5" -> [0.0, 0.5]


def _joined(values) -> str:
    """A list default as the user types it (for help texts)."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def str_list(text: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"] (argparse type)."""
    return [x.strip() for x in text.split(",") if x.strip()]


# ---- efficiency --------------------------------------------------------------------------------

def add_efficiency_arguments(p: argparse.ArgumentParser) -> None:
    from .efficiency import DEFAULT_INPUT_DIMS, DEFAULT_LENGTHS, DEFAULT_VARIANTS, VARIANTS

    d = p.add_argument_group("what to measure")
    d.add_argument("--lengths", type=int_list, default=list(DEFAULT_LENGTHS), metavar="L,L,...",
                   help=f"sequence lengths (default {_joined(DEFAULT_LENGTHS)})")
    d.add_argument("--variants", type=str_list, default=list(DEFAULT_VARIANTS),
                   metavar="NAME,...", help=f"models to compare, from {_joined(sorted(VARIANTS))} "
                   f"(default {_joined(DEFAULT_VARIANTS)})")
    d.add_argument("--modes", type=str_list, default=["infer", "train"], metavar="MODE,...",
                   help="infer (forward) and/or train (fwd+bwd+Adam step) (default infer,train)")
    d.add_argument("--batch", type=int, default=2, help="batch size B (default %(default)s)")
    d.add_argument("--input-dims", type=int_list, default=list(DEFAULT_INPUT_DIMS),
                   metavar="D,D,...", help="input width per modality; M = their number "
                   f"(default {_joined(DEFAULT_INPUT_DIMS)}, CMU-MOSEI's)")
    d.add_argument("--d-model", type=int, default=128, help="(default %(default)s)")
    d.add_argument("--d-state", type=int, default=64, help="(default %(default)s)")
    d.add_argument("--n-layers", type=int, default=3, help="(default %(default)s)")
    d.add_argument("--n-heads", type=int, default=4,
                   help="cross-attention heads (default %(default)s)")
    d.add_argument("--scan-impl", default="auto",
                   help="scan implementation of the Mamba models (default %(default)s)")
    h = p.add_argument_group("how")
    h.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default %(default)s)")
    h.add_argument("--threads", type=int, default=1,
                   help="CPU threads per measurement (default %(default)s: stable timings on a "
                   "shared machine; raise it to measure a multi-core box)")
    h.add_argument("--warmup", type=int, default=1, help="untimed calls first (default "
                   "%(default)s)")
    h.add_argument("--repeats", type=int, default=5, help="timed calls, median reported "
                   "(default %(default)s; fewer when the budget is short)")
    h.add_argument("--budget", type=float, default=120.0, metavar="SECONDS",
                   help="time allowed per point; longer points are skipped (default %(default)s)")
    h.add_argument("--max-memory-gb", type=float, default=8.0,
                   help="CPU: memory cap of each measuring process; bigger points fail as OOM "
                   "(default %(default)s; 0 = no cap)")
    h.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one fresh process per point (default: on CPU, where it is how peak "
                   "memory is measured; off on CUDA)")
    h.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")


def run_efficiency_command(args: argparse.Namespace) -> int:
    from .efficiency import EfficiencySettings, run_efficiency, write_results

    settings = EfficiencySettings(
        lengths=args.lengths, variants=args.variants, modes=args.modes, batch=args.batch,
        input_dims=args.input_dims, d_model=args.d_model, d_state=args.d_state,
        n_layers=args.n_layers, n_heads=args.n_heads, scan_impl=args.scan_impl,
        device=args.device, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
        point_budget_s=args.budget, max_memory_mb=(args.max_memory_gb * 1024 or None),
        isolate=args.isolate, seed=args.seed,
    )
    if settings.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserInputError(f"--device {settings.device}: CUDA is not available here")
    result = run_efficiency(settings)
    paths = write_results(result, args.out)
    print()
    print(open(paths[2]).read())
    print("wrote " + ", ".join(os.path.basename(p) for p in paths) + f" to {args.out}")
    return 0


# ---- benchmarks that train (fusion, coupling, missing) ------------------------------------------

def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Data, base experiment config and training budget: shared by fusion/coupling/missing."""
    from coupled_mamba.train.config import FORMATS

    d = p.add_argument_group("data and base config")
    d.add_argument("--data", required=True, help="dataset path (file or folder), or "
                   "'synthetic' for the embedded timing benchmark (generated)")
    d.add_argument("--format", choices=FORMATS, help="data format (default: the config's)")
    d.add_argument("--config", help="YAML experiment config (sections data/model/train); "
                   "default: the trainer's defaults, or the demo's config for --data synthetic")
    d.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    d.add_argument("--seq-len", type=int, help="common sequence length L (data.seq_len)")
    add_trust_pickle(d)
    d.add_argument("--synthetic-sizes", type=int_list, metavar="TRAIN,VALID,TEST",
                   help="--data synthetic: split sizes (default: the demo's, 6000,500,1000; "
                   "L = --seq-len, default the demo's 24)")
    t = p.add_argument_group("training budget")
    t.add_argument("--seeds", type=int, default=3, help="seeds per setting; mean ± std over "
                   "them (default %(default)s)")
    t.add_argument("--seed", type=int, help="first seed (default: the config's)")
    t.add_argument("--epochs", type=int, help="maximum epochs (default: the config's)")
    t.add_argument("--batch-size", type=int, help="(default: the config's)")
    t.add_argument("--lr", type=float, help="(default: the config's)")
    t.add_argument("--device", help="auto | cpu | cuda (default: the config's)")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default "
                   "%(default)s; run two benchmarks side by side to use two cores)")
    t.add_argument("--metrics", type=str_list, metavar="NAME,...",
                   help="metrics shown in the tables (default: by metric family)")
    t.add_argument("--plot-metric", help="metric plotted (default: the family's primary)")
    t.add_argument("--fresh", action="store_true",
                   help="ignore finished runs in OUT/runs.jsonl (default: reuse those that "
                        "this code recorded)")
    t.add_argument("--any-code", action="store_true",
                   help="also reuse finished runs that other code (another commit, other "
                        "uncommitted changes) recorded, e.g. to redraw stored results; the "
                        "report names their code")
    t.add_argument("--progress", action="store_true", help="show the trainer's progress bars")
    p.add_argument("--out", required=True, help="output folder")


def _base_config(args: argparse.Namespace):
    """The base ExperimentConfig: file (or the demo's for synthetic data) < flags < --set."""
    import tempfile

    import yaml

    from coupled_mamba.train.config import load_config
    from coupled_mamba.train.demo import DEMO_CONFIG

    from .ablations import SYNTHETIC

    flags = {"data.format": args.format, "data.seq_len": args.seq_len,
             "train.n_seeds": args.seeds, "train.seed": args.seed, "train.epochs": args.epochs,
             "train.batch_size": args.batch_size, "train.lr": args.lr,
             "train.device": args.device, "train.progress": bool(args.progress),
             "train.tensorboard": False}
    if args.config is None and args.data == SYNTHETIC:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(DEMO_CONFIG, f)
        try:
            cfg = load_config(f.name, args.overrides, flags)
        finally:
            os.unlink(f.name)
        cfg.data.format = "auto"  # the demo reads an npz copy; here the data is in memory
        return cfg
    return load_config(args.config, args.overrides, flags)


def _command_line() -> str:
    import shlex
    import sys

    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    if prog in ("coupled-mamba", "cli.py", "__main__.py"):
        return "coupled-mamba " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return "(called from Python)"


def _run_training_bench(args: argparse.Namespace, name: str, make_settings, description: str,
                        reference: str | None = None) -> int:
    import dataclasses

    import torch

    from .ablation_report import write_ablation
    from .ablations import SYNTHETIC, load_benchmark_data, run_settings, synthetic_spec
    from .environment import environment_info

    torch.set_num_threads(args.threads)
    base = _base_config(args)
    synthetic = synthetic_spec(args.synthetic_sizes, base.data.seq_len)
    data = load_benchmark_data(args.data, base, synthetic, trust_pickle=args.trust_pickle)
    data_id = (f"synthetic:{json.dumps(synthetic, sort_keys=True)}" if args.data == SYNTHETIC
               else os.path.abspath(args.data))
    settings = make_settings(base, data)
    print(f"{name}: {len(settings)} settings x {base.train.n_seeds} seeds on {data.name} "
          f"({data_id})", flush=True)
    rows = run_settings(settings, base, data, data_id, args.out, resume=not args.fresh,
                        any_code=args.any_code)
    header = {
        "benchmark": name, "command": _command_line(), "description": description,
        "title": (f"missing modalities ({args.protocol}) on {data.name}" if name == "missing"
                  else f"{name} ablation on {data.name}") + f", {base.train.n_seeds} seeds",
        "environment": environment_info(str(base.train.device), args.threads),
        "data": data_id, "base_config": base.to_dict(),
        "synthetic": synthetic if args.data == SYNTHETIC else None,
        "settings": [dataclasses.asdict(s) for s in settings],
    }
    paths = write_ablation(rows, args.out, name, header, metrics=args.metrics,
                           reference=reference, plot_metric=args.plot_metric)
    print()
    print(open(paths[2]).read())
    print("wrote " + ", ".join(os.path.basename(p) for p in paths) + f" to {args.out}")
    return 0


def add_fusion_arguments(p: argparse.ArgumentParser) -> None:
    from .ablations import FUSION_MODELS

    add_training_arguments(p)
    p.add_argument("--models", type=str_list, default=list(FUSION_MODELS), metavar="NAME,...",
                   help=f"registered models to compare (default {_joined(FUSION_MODELS)})")


def run_fusion_command(args: argparse.Namespace) -> int:
    from .ablations import fusion_settings

    return _run_training_bench(
        args, "fusion", lambda base, data: fusion_settings(args.models),
        "Fusion ablation (paper Table 11): the same inputs, projections, encoder width and "
        "head; avg/concat fuse uncoupled Mamba outputs by mean/concatenation, mamba_fusion by "
        "learned softmax weights, coupled_mamba couples the state chains. p: two-sided Welch "
        "t-test over seeds against coupled_mamba.", reference="coupled_mamba")


def add_coupling_arguments(p: argparse.ArgumentParser) -> None:
    from .ablations import COUPLING_GROUPS, DEFAULT_GRIDS

    add_training_arguments(p)
    g = DEFAULT_GRIDS
    p.add_argument("--groups", type=str_list, default=list(COUPLING_GROUPS), metavar="G,...",
                   help=f"ablations to run (default {_joined(COUPLING_GROUPS)})")
    p.add_argument("--alphas", type=float_list, default=g["alpha"],
                   help=f"(default {_joined(g['alpha'])})")
    p.add_argument("--couplings", type=str_list, default=g["coupling"],
                   help=f"(default {_joined(g['coupling'])})")
    p.add_argument("--neighbourhoods", type=str_list, default=g["neighbourhood"],
                   help=f"all | pairs | none | A-B (modality names) (default "
                   f"{_joined(g['neighbourhood'])})")
    p.add_argument("--layers", type=int_list, default=g["n_layers"],
                   help=f"n_layers values (default {_joined(g['n_layers'])})")
    p.add_argument("--d-states", type=int_list, default=g["d_state"],
                   help=f"d_state values (default {_joined(g['d_state'])})")
    p.add_argument("--dt-divisors", type=int_list, default=g["dt_rank"],
                   help=f"dt_rank = d_state / divisor (default {_joined(g['dt_rank'])})")


def run_coupling_command(args: argparse.Namespace) -> int:
    from .ablations import coupling_settings

    grids = {"alpha": args.alphas, "coupling": args.couplings,
             "neighbourhood": args.neighbourhoods, "n_layers": args.layers,
             "d_state": args.d_states, "dt_rank": args.dt_divisors}

    def make(base, data):
        from coupled_mamba.models import CoupledMambaConfig

        d_state = int(base.model.params.get("d_state") or CoupledMambaConfig.d_state)
        return coupling_settings(args.groups, grids, data.modality_names, d_state)

    return _run_training_bench(
        args, "coupling", make,
        "Coupling ablations of coupled_mamba; every other field is the base config's. "
        "alpha: W = (1-alpha) I + alpha 11^T/M (0 = uncoupled, 1 = 'mean'); coupling: the form "
        "of W; neighbourhood: coupling_mask (which chains read each other's state); d_state "
        "rows use dt_rank = d_state/8.")


def add_missing_arguments(p: argparse.ArgumentParser) -> None:
    from .ablations import MISSING_MODELS, MISSING_RATES, PROTOCOLS

    add_training_arguments(p)
    p.add_argument("--models", type=str_list, default=list(MISSING_MODELS), metavar="NAME,...",
                   help=f"(default {_joined(MISSING_MODELS)})")
    p.add_argument("--rates", type=float_list, default=list(MISSING_RATES),
                   metavar="R,...", help=f"missing rates r (default {_joined(MISSING_RATES)})")
    p.add_argument("--protocol", choices=PROTOCOLS, default="same",
                   help="same: train, select and test at rate r (one model per rate); "
                   "complete-train: train on complete data, test at each r (default "
                   "%(default)s)")


def run_missing_command(args: argparse.Namespace) -> int:
    from .ablations import missing_settings

    return _run_training_bench(
        args, "missing", lambda base, data: missing_settings(args.models, args.rates,
                                                             args.protocol),
        f"Missing modalities, protocol '{args.protocol}': each (sample, modality) is dropped "
        "with probability r (a sample keeps at least one modality; "
        "coupled_mamba.data.apply_missing). "
        + ("Train, model selection and test all at rate r." if args.protocol == "same" else
           "Trained and selected on complete data; the test split is dropped at rate r."))


# ---- suite -------------------------------------------------------------------------------------

def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    from coupled_mamba.data.interaction import SUITE

    from .suite import DEFAULT_MODELS

    p.add_argument("--settings", type=str_list, default=list(SUITE), metavar="NAME,...",
                   help=f"interaction settings (default: all: {_joined(list(SUITE))})")
    p.add_argument("--models", type=str_list, default=list(DEFAULT_MODELS), metavar="NAME,...",
                   help=f"registered models (default {_joined(DEFAULT_MODELS)})")
    p.add_argument("--seeds", type=int, default=5, help="seeds per setting; each seed draws its "
                   "own data and trains with that seed (default %(default)s)")
    p.add_argument("--seed", type=int, default=1111, help="first seed (default %(default)s)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every split size (quick looks; default %(default)s)")
    p.add_argument("--config", help="YAML experiment config applied to every model (default: "
                   "none, the package defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel training processes (default %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder (runs.jsonl, suite.md/csv/json/png)")


def run_suite_command(args: argparse.Namespace) -> int:
    from coupled_mamba.data.interaction import SUITE
    from coupled_mamba.models import list_models
    from coupled_mamba.train.config import load_config

    from .environment import describe, environment_info
    from .suite import run_suite, write_suite

    unknown = [s for s in args.settings if s not in SUITE]
    if unknown:
        raise UserInputError(f"--settings: unknown {', '.join(unknown)}; available: "
                             f"{', '.join(SUITE)}")
    bad = [m for m in args.models if m not in list_models()]
    if bad:
        raise UserInputError(f"--models: unknown {', '.join(bad)}; available: "
                             f"{', '.join(list_models())}")
    for name, value in (("--seeds", args.seeds), ("--workers", args.workers),
                        ("--threads", args.threads)):
        if value < 1:
            raise UserInputError(f"{name}: expected >= 1, got {value}")
    if not args.scale > 0:
        raise UserInputError(f"--scale: expected > 0, got {args.scale}")
    cfg = load_config(args.config, args.overrides)
    # Only the keys given: the others stay with each setting's data defaults (train.recipe auto).
    raw = cfg.to_dict(explicit_only=True)
    raw["data"].pop("path", None)
    raw["train"].setdefault("device", "cpu")
    seeds = [args.seed + i for i in range(args.seeds)]
    env = environment_info(raw["train"]["device"], args.threads)
    print(describe(env), flush=True)
    records = run_suite(args.settings, args.models, seeds, raw, args.out, scale=args.scale,
                        workers=args.workers, threads=args.threads, progress=not args.quiet)
    header = {"command": "coupled-mamba bench suite " + " ".join(_argv_tail("suite")),
              "seeds": seeds, "scale": args.scale, "config": args.config or "defaults",
              "overrides": args.overrides, "environment": describe(env)}
    paths = write_suite(records, args.models, args.out, header)
    print(open(paths[0]).read())
    print("wrote " + ", ".join(os.path.basename(p) for p in paths) + f" to {args.out}")
    return 0


def _argv_tail(after: str) -> list[str]:
    import sys

    argv = sys.argv[1:]
    return argv[argv.index(after) + 1:] if after in argv else argv


# ---- the `bench` command -----------------------------------------------------------------------

BENCHES = {
    "efficiency": ("latency and peak memory against sequence length (paper Figs. 3-4)",
                   add_efficiency_arguments, run_efficiency_command),
    "fusion": ("fusion ablation: average / concat / uncoupled Mamba / coupled (paper Table 11)",
               add_fusion_arguments, run_fusion_command),
    "coupling": ("coupling ablations: alpha, mean/sum/learned, neighbourhood, layers, d_state, "
                 "dt_rank", add_coupling_arguments, run_coupling_command),
    "missing": ("metrics against the missing-modality rate for coupled and the baselines",
                add_missing_arguments, run_missing_command),
    "suite": ("interaction-task suite: models x settings x seeds against oracle and pooled "
              "references", add_suite_arguments, run_suite_command),
}


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK",
                           parser_class=type(p))
    for name, (help_, add, run) in BENCHES.items():
        q = sub.add_parser(name, help=help_, description=help_)
        add(q)
        q.set_defaults(_bench_run=run)


def run_bench(args: argparse.Namespace) -> int:
    # Plots and tests come after the measurements: ask for the [bench] extra before, not after.
    for module in ("matplotlib", "scipy"):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
    return args._bench_run(args)


COMMANDS = [Command("bench", "benchmarks: efficiency, fusion/coupling ablations, missing "
                    "modalities", add_bench_arguments, run_bench)]
