"""Benchmark of the coupled selective scan (docs/MATH.md, section 2) on CPU: reference loop,
pure-PyTorch path and compiled CPU kernel, forward and forward+backward, against the exp floor.

Shapes: M modalities, B batch, D channels, N state size, L length. Defaults (the sizes the CPU
targets of docs/BENCHMARKS.md are judged at): M = 3, D = 256, N in {16, 64}, L in {50, 256, 1024,
4096}, batch 1, float32, with the inputs of a real model layer (D skip, z gate, delta_bias,
delta_softplus=True).

The exp floor is the time of the M*B*L*D*N exponentials alone, at the rate torch.exp reaches on
one thread (fp32, a 1 MiB tensor that stays in L2, written with out=, so the rate is the exp
throughput and not memory bandwidth), timed for each point as many times as the scans. A
streaming 64 MiB tensor is also measured once and reported. The timed floor includes what any
call pays (a Python call into torch per 1 MiB piece, caches the other variants left cold); the
rate floor, M*B*L*D*N divided by the exp rate measured once before the run, does not. The two
agree for long sequences; at L = 50 the rate floor is the stricter, and both ratios are
reported. The io column is the forward's unavoidable memory traffic (read u, delta, z, write y)
timed as one torch.addcmul: where it is comparable to the exp floor (small N, long L) the forward
cannot reach the exp floor.

The cores are shared: for each (N, L, pass) every variant (impl x coupling, and the floor) is
timed in shuffled rounds, and each gets the median over the rounds. Ratios then compare times
taken under the same load.

Usage:
    python -m coupled_mamba.bench.scan --out benchmarks/results/bench_scan_1t
    python -m coupled_mamba.bench.scan --threads 2 --impls cpu \
        --out benchmarks/results/bench_scan_2t

Writes OUT.csv (one row per measurement) and OUT.json (rows, machine, exp rates, targets);
prints a table. Not a test: timings on shared cores are noisy, hence warm-up and medians.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import random
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import torch

from .. import coupled_selective_scan

IMPLS = ("ref", "torch", "cpu")
COUPLINGS = ("mean", "none")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def exp_rates(repeats: int) -> dict:
    """torch.exp throughput (elements/s) on one thread, fp32: L2-resident and streaming."""
    rates = {}
    for name, n in (("l2_1MiB", 1 << 18), ("stream_64MiB", 1 << 24)):
        x = torch.randn(n) * 3
        y = torch.empty_like(x)
        inner = max(1, (1 << 24) // n)

        def run(x=x, y=y, inner=inner):
            for _ in range(inner):
                torch.exp(x, out=y)

        rates[name] = n * inner / median_time(run, repeats=max(repeats, 5))
    return rates


def make_inputs(M, Bt, D, N, L, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    return dict(
        u=r(M, Bt, D, L), delta=r(M, Bt, D, L, scale=0.5, shift=-1.0),
        A=-torch.exp(r(M, D, N, scale=0.5)), B=r(M, Bt, N, L), C=r(M, Bt, N, L),
        D=r(M, D), z=r(M, Bt, D, L), delta_bias=r(M, D, scale=0.3),
    )


def scan_call(impl, kw, coupling, backward: bool):
    """A no-argument callable running one forward (or forward + backward) of the scan."""
    if not backward:
        def fwd():
            with torch.no_grad():
                coupled_selective_scan(**kw, coupling=coupling, delta_softplus=True, impl=impl)

        return fwd
    leaves = {k: v.detach().requires_grad_(True) for k, v in kw.items()}
    gy = torch.randn_like(kw["u"])

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        y = coupled_selective_scan(**leaves, coupling=coupling, delta_softplus=True, impl=impl)
        y.backward(gy)

    return fwd_bwd


def exp_floor_call(elems: int):
    """torch.exp over `elems` values in 1 MiB pieces (L2-resident): the floor, timed like a scan.

    Returns (callable, scale): the floor time is the callable's time times scale.
    """
    n = 1 << 18
    x, y = torch.randn(n) * 3, torch.empty(n)
    k = max(1, round(elems / n))

    def run():
        for _ in range(k):
            torch.exp(x, out=y)

    return on_threads(1, run), elems / (k * n)


def io_floor_call(kw):
    """The forward's unavoidable memory traffic: read u, delta, z and write y (each M*B*D*L fp32),
    as one torch.addcmul on one thread. At small N this rivals the exps when the tensors come from
    DRAM (16 bytes per (m, b, d, t) against N exponentials)."""
    out = torch.empty_like(kw["u"])

    def run():
        torch.addcmul(kw["u"], kw["delta"], kw["z"], out=out)

    return on_threads(1, run)


def on_threads(n: int, fn):
    """fn run with torch's thread count set to n (restored afterwards)."""
    def run():
        prev = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            fn()
        finally:
            torch.set_num_threads(prev)

    return run


def round_robin(calls: dict, rounds: dict, warmup: int = 1) -> dict:
    """Times of each callable, timed in shuffled rounds so that all share the same load.

    calls: name -> callable; rounds: name -> how many timed calls (slow ones get fewer).
    """
    rng = random.Random(0)
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in calls}
    for r in range(max(rounds.values())):
        names = [k for k in calls if r < rounds[k]]
        rng.shuffle(names)
        for k in names:
            t = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - t)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/bench_scan",
                   help="output path without extension (writes .csv and .json)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the timed calls")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--M", type=int, default=3)
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--Ns", type=int, nargs="+", default=[16, 64])
    p.add_argument("--Ls", type=int, nargs="+", default=[50, 256, 1024, 4096])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per point (median)")
    p.add_argument("--slow-repeats", type=int, default=3,
                   help="timed calls for the ref and torch paths (slow)")
    p.add_argument("--max-autograd-elems", type=float, default=6e7,
                   help="skip autograd through ref/torch when M*B*D*N*L exceeds this (memory: "
                        "they keep per-step or per-chunk state tensors for the backward)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    rates = exp_rates(args.repeats)
    rate = rates["l2_1MiB"]
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RuntimeWarning)

    M, Bt, D = args.M, args.batch, args.D
    rows = []
    for N in args.Ns:
        for L in args.Ls:
            kw = make_inputs(M, Bt, D, N, L)
            elems = M * Bt * D * N * L
            for backward in (False, True):
                pass_ = "fwd+bwd" if backward else "fwd"
                calls, rounds, skipped = {}, {}, {}
                floor_fn, scale = exp_floor_call(elems)
                calls["floor"], rounds["floor"] = floor_fn, args.repeats
                calls["io"], rounds["io"] = io_floor_call(kw), args.repeats
                for coupling in COUPLINGS:
                    for impl in args.impls:
                        key = (impl, coupling)
                        if backward and impl != "cpu" and elems > args.max_autograd_elems:
                            skipped[key] = f"autograd memory (M*B*D*N*L = {elems:.2g})"
                            continue
                        calls[key] = scan_call(impl, kw, coupling, backward)
                        rounds[key] = args.repeats if impl == "cpu" else args.slow_repeats
                        if impl == "cpu" and args.threads > 1:  # the scaling reference
                            calls[("cpu@1", coupling)] = on_threads(1, calls[key])
                            rounds[("cpu@1", coupling)] = args.repeats
                times = round_robin(calls, rounds)
                med = {k: statistics.median(v) for k, v in times.items()}
                best = {k: min(v) for k, v in times.items()}
                floor, floor_min = med.pop("floor") * scale, best.pop("floor") * scale
                io = med.pop("io")
                impls = list(args.impls) + (["cpu@1"] if ("cpu@1", "mean") in calls else [])
                for coupling in COUPLINGS:
                    for impl in impls:
                        key = (impl, coupling)
                        t = med.get(key, float("nan"))
                        t_min = best.get(key, float("nan"))
                        rows.append(dict(
                            N=N, L=L, coupling=coupling, impl=impl, pass_=pass_,
                            time_ms=t * 1e3, floor_ms=floor * 1e3, ratio_to_floor=t / floor,
                            rate_floor_ms=elems / rate * 1e3, ratio_to_rate_floor=t * rate / elems,
                            io_floor_ms=io * 1e3, time_min_ms=t_min * 1e3,
                            floor_min_ms=floor_min * 1e3, ratio_to_floor_min=t_min / floor_min,
                            threads=args.threads, batch=Bt, M=M, D=D, repeats=rounds.get(key, 0),
                            skipped=skipped.get(key, ""),
                        ))
                        print(f"N={N:3d} L={L:5d} {coupling:5s} {impl:5s} {pass_:8s} "
                              f"{t * 1e3:10.2f} ms  (floor {floor * 1e3:.2f} ms)"
                              + (f"  [skipped: {skipped[key]}]" if key in skipped else ""),
                              flush=True)

    def get(N, L, coupling, impl, pass_, field="time_ms"):
        for r in rows:
            if (r["N"], r["L"], r["coupling"], r["impl"], r["pass_"]) == (N, L, coupling, impl,
                                                                          pass_):
                return r[field]
        return float("nan")

    for r in rows:  # ratios against the reference loop and coupled vs none
        r["speedup_vs_ref"] = get(r["N"], r["L"], r["coupling"], "ref", r["pass_"]) / r["time_ms"]
        r["coupled_over_none"] = (
            r["time_ms"] / get(r["N"], r["L"], "none", r["impl"], r["pass_"])
            if r["coupling"] == "mean" else float("nan"))
        r["coupled_over_none_min"] = (
            r["time_min_ms"] / get(r["N"], r["L"], "none", r["impl"], r["pass_"], "time_min_ms")
            if r["coupling"] == "mean" else float("nan"))

    print()
    print(f"exp rate (torch.exp, fp32, 1 thread, measured once): {rate / 1e9:.2f} G/s "
          f"L2-resident, {rates['stream_64MiB'] / 1e9:.2f} G/s streaming 64 MiB; the floors "
          f"below are timed with each point")
    hdr = (f"{'N':>3} {'L':>5} {'coupling':8} {'floor':>7} {'io':>6} | {'ref':>8} {'torch':>8} "
           f"{'cpu':>7} {'cpu/flr':>7} {'ref/cpu':>7} | {'ref':>9} {'torch':>8} {'cpu':>7} "
           f"{'ref/cpu':>7} | {'cpl/none':>8}")
    print(f"{'':37}  forward (ms)                            |  forward+backward (ms)"
          f"                |  cpu fwd, fwd+bwd")
    print(hdr)
    for N in args.Ns:
        for L in args.Ls:
            for coupling in COUPLINGS:
                f = {i: get(N, L, coupling, i, "fwd") for i in IMPLS}
                b = {i: get(N, L, coupling, i, "fwd+bwd") for i in IMPLS}
                floor, io = next((r["floor_ms"], r["io_floor_ms"]) for r in rows
                                 if (r["N"], r["L"], r["pass_"]) == (N, L, "fwd"))
                cn = (f"{f['cpu'] / get(N, L, 'none', 'cpu', 'fwd'):.2f},"
                      f"{b['cpu'] / get(N, L, 'none', 'cpu', 'fwd+bwd'):.2f}"
                      if coupling == "mean" else "")
                print(f"{N:3d} {L:5d} {coupling:8} {floor:7.2f} {io:6.2f} | {f['ref']:8.2f} "
                      f"{f['torch']:8.2f} {f['cpu']:7.2f} {f['cpu'] / floor:7.2f} "
                      f"{f['ref'] / f['cpu']:7.1f} | {b['ref']:9.1f} {b['torch']:8.1f} "
                      f"{b['cpu']:7.2f} {b['ref'] / b['cpu']:7.1f} | {cn:>8}")

    print("\ncpu path, best of the rounds (noise on shared cores only adds time): "
          "cpu/floor and coupled/none; and the median over the rate floor")
    for N in args.Ns:
        for L in args.Ls:
            fl = [get(N, L, c, "cpu", "fwd", "ratio_to_floor_min") for c in COUPLINGS]
            cn = [get(N, L, "mean", "cpu", p_, "coupled_over_none_min") for p_ in ("fwd",
                                                                                   "fwd+bwd")]
            rf = [get(N, L, c, "cpu", "fwd", "ratio_to_rate_floor") for c in COUPLINGS]
            print(f"N={N:3d} L={L:5d} fwd/floor mean {fl[0]:.2f} none {fl[1]:.2f} | "
                  f"mean/none fwd {cn[0]:.2f} fwd+bwd {cn[1]:.2f} | "
                  f"median fwd/rate floor mean {rf[0]:.2f} none {rf[1]:.2f}")

    if args.threads > 1:
        print(f"\ncpu path, {args.threads} threads vs 1 (same rounds): speedup")
        for N in args.Ns:
            for L in args.Ls:
                for coupling in COUPLINGS:
                    sp = [get(N, L, coupling, "cpu@1", p_) / get(N, L, coupling, "cpu", p_)
                          for p_ in ("fwd", "fwd+bwd")]
                    print(f"N={N:3d} L={L:5d} {coupling:5s} fwd {sp[0]:.2f}x  "
                          f"fwd+bwd {sp[1]:.2f}x")

    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), machine=cpu_model(),
        torch=torch.__version__, threads=args.threads, batch=Bt, M=M, D=D,
        exp_rate_per_s=rates, dtype="float32",
        inputs="D skip, z gate, delta_bias, delta_softplus=True, no initial_state",
        cpu_isa=_cpu_isa(),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out.with_suffix(".json"), "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    print(f"\nwrote {out.with_suffix('.csv')} and {out.with_suffix('.json')}")


def _cpu_isa() -> str:
    try:
        from ..ops import _cpu

        return _cpu.isa() if _cpu.is_available()[0] else "unavailable"
    except Exception as exc:  # the benchmark still runs the other paths
        return f"unavailable ({exc})"


if __name__ == "__main__":
    main()
