"""Per-call cost of a short coupled scan (docs/MATH.md, section 2) under three timing conditions.

``coupled_mamba.bench.scan`` times every variant in shuffled rounds, so each call starts after
other work; the rate floor (M*B*L*D*N / exp rate) comes from back-to-back calls. For short
sequences the two conditions differ by tens of microseconds, for the scan and for torch.exp alike.
This module times the cpu forward and the exp floor (torch.exp over the same count, in 1 MiB
pieces) back to back, alternating with each other, and after a short sleep.

Shapes: M = 3 modalities, B = 1, D = 256 channels, N state size, L length; float32, 1 thread,
the inputs of ``coupled_mamba.bench.scan`` (D skip, z gate, delta_bias, softplus), coupling
"mean" (or --coupling).

Usage:
    python -m coupled_mamba.bench.scan_call_cost --N 16 --L 50
Prints medians in microseconds. Not a test: timings on shared cores are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .. import coupled_selective_scan
from .scan import exp_floor_call, make_inputs


def _median_us(times: list, skip: int) -> float:
    return statistics.median(times[skip:]) * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--N", type=int, default=16)
    p.add_argument("--L", type=int, default=50)
    p.add_argument("--calls", type=int, default=200, help="timed calls per condition")
    p.add_argument("--sleep-ms", type=float, default=0.5)
    p.add_argument("--coupling", default="mean", choices=("mean", "none", "sum"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    M, D = 3, 256
    kw = make_inputs(M, 1, D, args.N, args.L)
    floor_fn, scale = exp_floor_call(M * D * args.N * args.L)
    skip = max(1, args.calls // 10)  # warm-up calls, not counted

    def scan():
        with torch.no_grad():
            coupled_selective_scan(**kw, coupling=args.coupling, delta_softplus=True, impl="cpu")

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    # Raw call times; the floor's are scaled to M*B*L*D*N exps when printed.
    back = {"scan": [timed(scan) for _ in range(args.calls)],
            "floor": [timed(floor_fn) for _ in range(args.calls)]}
    alt = {"scan": [], "floor": []}
    slept = {"scan": [], "floor": []}
    for _ in range(args.calls):
        for name, fn in (("scan", scan), ("floor", floor_fn)):
            alt[name].append(timed(fn))
    for _ in range(args.calls):
        for name, fn in (("scan", scan), ("floor", floor_fn)):
            time.sleep(args.sleep_ms / 1e3)
            slept[name].append(timed(fn))

    print(f"M={M} B=1 D={D} N={args.N} L={args.L} coupling={args.coupling}, 1 thread, "
          "medians in us")
    print(f"{'condition':28s} {'scan':>9s} {'exp floor':>10s} {'ratio':>7s}")
    for label, res in (("back to back", back), ("alternating", alt),
                       (f"after {args.sleep_ms} ms sleep", slept)):
        s, f = _median_us(res["scan"], skip), _median_us(res["floor"], skip) * scale
        print(f"{label:28s} {s:9.1f} {f:10.1f} {s / f:7.2f}")


if __name__ == "__main__":
    main()
