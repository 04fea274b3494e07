"""``coupled-mamba bench ...``: the benchmark subcommands (efficiency, fusion, coupling, missing).

The CLI (``coupled_mamba.train.cli``) imports this module as an extension and adds its
:data:`COMMANDS`; ``bench`` builds its own nested subcommands. Each subcommand is a pair
``add_arguments(parser)`` / ``run(args) -> exit status``, and writes CSV, JSON, markdown and PNG
files into ``--out``.
"""

from __future__ import annotations

import argparse
import os

from coupled_mamba.train.cli import Command


def int_list(text: str) -> list[int]:
    """``"50,250,1000"`` -> [50, 250, 1000] (argparse type)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"] (argparse type)."""
    return [x.strip() for x in text.split(",") if x.strip()]


# ---- efficiency --------------------------------------------------------------------------------

def add_efficiency_arguments(p: argparse.ArgumentParser) -> None:
    from .efficiency import DEFAULT_INPUT_DIMS, DEFAULT_LENGTHS, DEFAULT_VARIANTS, VARIANTS

    d = p.add_argument_group("what to measure")
    d.add_argument("--lengths", type=int_list, default=list(DEFAULT_LENGTHS), metavar="L,L,...",
                   help="sequence lengths (default %(default)s)")
    d.add_argument("--variants", type=str_list, default=list(DEFAULT_VARIANTS),
                   metavar="NAME,...", help=f"models to compare, from {sorted(VARIANTS)} "
                   "(default %(default)s)")
    d.add_argument("--modes", type=str_list, default=["infer", "train"], metavar="MODE,...",
                   help="infer (forward) and/or train (fwd+bwd+Adam step) (default %(default)s)")
    d.add_argument("--batch", type=int, default=2, help="batch size B (default %(default)s)")
    d.add_argument("--input-dims", type=int_list, default=list(DEFAULT_INPUT_DIMS),
                   metavar="D,D,...", help="input width per modality; M = their number "
                   "(default %(default)s, CMU-MOSEI's)")
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
            raise ValueError(f"--device {settings.device}: CUDA is not available here")
    result = run_efficiency(settings)
    paths = write_results(result, args.out)
    print()
    print(open(paths[2]).read())
    print("wrote " + ", ".join(os.path.basename(p) for p in paths) + f" to {args.out}")
    return 0


# ---- the `bench` command -----------------------------------------------------------------------

BENCHES = {
    "efficiency": ("latency and peak memory against sequence length (paper Figs. 3-4)",
                   add_efficiency_arguments, run_efficiency_command),
}


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK",
                           parser_class=type(p))
    for name, (help_, add, run) in BENCHES.items():
        q = sub.add_parser(name, help=help_, description=help_)
        add(q)
        q.set_defaults(_bench_run=run)


def run_bench(args: argparse.Namespace) -> int:
    return args._bench_run(args)


COMMANDS = [Command("bench", "benchmarks: efficiency, fusion/coupling ablations, missing "
                    "modalities", add_bench_arguments, run_bench)]
