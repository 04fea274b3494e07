"""GPU check of the fused Triton coupled selective scan: correctness at full size, then timings.

    python -m coupled_mamba.bench.gpu_scan --out $OUT/gpu_scan.json               # on a CUDA GPU
    python -m coupled_mamba.bench.gpu_scan --interpret --tiny --out /tmp/s.json  # CPU smoke

One invocation, sized to finish in under 150 s on an H100 including Triton compilation
(measurements stop being started past --budget-s, default 120, and are listed as skipped).
Kernel variants of ``coupled_selective_scan_triton`` checked and timed: "parallel" (forward
without autograd: time steps spread over the threads, n looped; couplings "none" / "mean" /
"sum"), "chunked" (same couplings, forward and backward: associative scan over chunks of time
held in each thread) and "seq" (every coupling, one step at a time; the only one for a general
W; its timings are in docs/triton_kernel.md and are not repeated here). Sections:

1. correctness against the reference loop in float64 on the same device: y and last state of the
   parallel forward at M=3, Bt=2, D=256, L=1024 (N=64 "mean" and "none", N=16 "mean") and at
   L=1, 40, 128 (every coupling it takes, shortened blocks and fewer warps); y, last state and
   every gradient of "parallel+bwd" (variant "parallel" with parallel_backward=True: the
   parallel layout's backward) at N=64, L=1024; y, last state and every gradient of every
   coupling mode with every optional input at a small size (L=300; "sum" at L=40, since it
   overflows float32 by design after ~80 steps): parallel forward, parallel+bwd, chunked and
   seq; fp32 and bf16;
2. a sweep of the parallel forward's tilings (steps per block, channels per program) at L=1024
   and of its warps at L=128 (the model's inference chunk), N in {64, 16}, "mean" and "none";
3. timings (CUDA events, warm-up, median) at M=3, Bt=32, D=256, N in {16, 64},
   L in {50, 1024, 4096}: forward (no grad) of parallel (the sweep's fastest tiling per N and
   coupling) and chunked, "mean" and "none" (M independent chains: the uncoupled baseline);
   forward+backward of parallel+bwd (default tiling) and chunked, "mean" and "none"; the
   pure-PyTorch path forward at L=50;
   mamba-ssm's selective_scan_fn run M times if mamba_ssm imports.

Shapes: M modalities, Bt batch, D channels, N state size, L length. Writes JSON (updated after
every section, so a cut-off run keeps what it measured) and prints a compact table at the end.
--interpret runs everything on CPU in Triton's interpreter (with --tiny shapes) so that every
code path of this script is exercised before it goes to a GPU.
"""

from __future__ import annotations

import os
import sys

if "--interpret" in sys.argv:
    # Must precede the first import of triton (the interpreter is decided at import time).
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from ..ops import _triton  # noqa: E402
from ._gpu_scan_checks import (  # noqa: E402
    SUM_L,
    Run,
    check,
    make_inputs,
    mamba_fn,
    measure,
    rel,
    torch_fn,
    triton_fn,
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_scan.json"))
    ap.add_argument("--interpret", action="store_true",
                    help="run on CPU in Triton's interpreter (smoke test; use with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, for the smoke test")
    ap.add_argument("--budget-s", type=float, default=120.0,
                    help="stop starting new measurements after this many seconds")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-correctness", action="store_true")
    ap.add_argument("--no-backward", action="store_true",
                    help="skip the forward+backward timings")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    warnings.simplefilter("ignore", RuntimeWarning)  # "sum" coupling warning, torch fallbacks

    if args.interpret:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --interpret --tiny for the CPU smoke test")
        device = torch.device("cuda")

    tiny = args.tiny
    M = 3
    Bt_t, D = (1, 4) if tiny else (32, 256)
    Ns = (4, 8) if tiny else (16, 64)
    Ls = (5, 12) if tiny else (50, 1024, 4096)
    # The interpreter gets tiny chunks, so the smoke test crosses several.
    tilings = (dict(seq=dict(chunk=8, sub_chunk=4), chunked=dict(time_block=4, time_block_bwd=4),
                    parallel=dict(time_block=4, time_block_bwd=4))
               if tiny else dict(seq={}, chunked={}, parallel={}))
    tilings["parallel+bwd"] = tilings["parallel"]  # the parallel kernels share their tiling

    run = Run(args.out, args.budget_s)
    import triton

    mamba, mamba_why = mamba_fn()
    if mamba is None and args.interpret:
        mamba, _ = mamba_fn(stand_in=True)
        mamba_why += "; smoke test: a PyTorch stand-in runs its code path"
    run.res["meta"] = dict(
        device=(torch.cuda.get_device_name(0) if device.type == "cuda"
                else f"CPU ({platform.machine()}), Triton interpreter"),
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        interpret=args.interpret, tiny=tiny, M=M, Bt=Bt_t, D=D, Ns=Ns, Ls=Ls,
        mamba_ssm="available" if mamba_why is None else f"not importable ({mamba_why})",
        tiling_defaults=dict(
            seq=dict(chunk=_triton.CHUNK, sub_chunk=_triton.SUB_CHUNK, fwd_tile=_triton.FWD_TILE,
                     bwd_tile=_triton.BWD_TILE),
            chunked=dict(t_fwd={N: _triton._chunk_t_fwd(N) for N in Ns},
                         t_bwd=_triton.CHUNK_T_BWD,
                         block_d={N: _triton._chunk_block_d(D, _triton._pow2(N), 4) for N in Ns}),
            parallel=dict(time_block=_triton.PAR_T, block_d=_triton.PAR_BD, num_warps=4)),
        tilings=tilings, argv=sys.argv,
    )
    print(f"device {run.res['meta']['device']}, torch {torch.__version__}, "
          f"triton {triton.__version__}; mamba-ssm: {run.res['meta']['mamba_ssm']}")
    run.save()

    # 1. correctness ---------------------------------------------------------------------
    def correctness():
        big_L, big_Bt = (12, 1) if tiny else (1024, 2)
        res = run.res["correctness"]
        res += check("full-size", (M, big_Bt, D, Ns[1], big_L), torch.float32,
                     [("mean", "parallel"), ("none", "parallel")],
                     device, tilings, True, (1e-4, 1e-4), run)
        res += check("full-size", (M, big_Bt, D, Ns[0], big_L), torch.float32,
                     [("mean", "parallel")], device, tilings, True, (1e-4, 1e-4), run)
        res += check("full-size", (M, big_Bt, D, Ns[1], big_L), torch.float32,
                     [("mean", "parallel+bwd"), ("none", "parallel+bwd")],
                     device, tilings, True, (1e-4, 1e-3), run)
        # Short sequences: blocks shorter than the default, fewer warps (L=1 is the streaming
        # step, 128 the model's inference chunk).
        for Ls_ in ((1, 5) if tiny else (1, 40, 128)):
            res += check("short", (M, 2, 8 if tiny else 64, Ns[0], Ls_), torch.float32,
                         [("mean", "parallel"), ("none", "parallel")]
                         + ([("sum", "parallel")] if Ls_ <= SUM_L else []),
                         device, dict(tilings, parallel={}), True, (1e-4, 1e-4), run)
        small = (M, 2, 8 if tiny else 64, Ns[0], 10 if tiny else 300)
        res += check("all-modes", small, torch.float32,
                     [("none", "parallel"), ("mean", "parallel"), ("sum", "parallel"),
                      ("none", "parallel+bwd"), ("mean", "parallel+bwd"), ("sum", "parallel+bwd"),
                      ("none", "chunked"), ("mean", "chunked"), ("sum", "chunked"),
                      (0.3, "seq"), ("matrix", "seq")], device, tilings, True, (1e-4, 1e-3), run)
        res += check("bf16", small, torch.bfloat16,
                     [("mean", "parallel"), ("mean", "parallel+bwd"), ("mean", "chunked"),
                      ("matrix", "seq")],
                     device, tilings, True, (1.6e-2, 3e-2), run)
        bad = [r for r in res if not r["ok"]]
        print(f"  correctness: {len(res) - len(bad)} passed, {len(bad)} failed")

    if not args.no_correctness:
        run.section("correctness vs float64 reference", correctness)

    # 2. tiling sweep of the parallel forward ----------------------------------------------
    # The fastest tiling per (N, coupling) is what section 3 times as "parallel-*".
    best = {}

    def sweep():
        # (L, tiling): block lengths and warps at L=1024; warps for the model's 128-step
        # inference chunks (block = 128 steps there whatever time_block says).
        configs = ([(Ls[1], dict(time_block=4)), (Ls[1], dict(time_block=8, block_d=2))] if tiny
                   else [(1024, dict(time_block=t, **x)) for t in (128, 256, 512)
                         for x in ({}, dict(block_d=2))]
                   + [(128, dict(time_block=128, num_warps=w)) for w in (1, 2, 4)])
        for N in Ns[::-1]:
            for L in sorted({L for L, _ in configs}):
                kw = make_inputs(M, Bt_t, D, N, L, torch.float32, device)
                for kind in ("mean", "none"):
                    for cfg in (c for Lc, c in configs if Lc == L):
                        row = dict(N=N, L=L, mode="fwd", coupling=kind, config=cfg)
                        if run.over_budget():
                            run.res["skipped"].append({**row, "why": "time budget"})
                            continue
                        try:
                            row.update(measure(triton_fn(cfg, kind, "parallel"), kw, "fwd",
                                               device))
                        except Exception as exc:  # a tiling that does not compile or fit
                            run.res["skipped"].append({**row, "why": repr(exc)[:200]})
                            print(f"  N={N:<3d} {kind:4s} {json.dumps(cfg):40s} failed: "
                                  f"{exc!r}"[:160])
                            continue
                        run.res["sweep"].append(row)
                        if L == Ls[1] and ((N, kind) not in best
                                           or row["ms"] < best[(N, kind)][1]):
                            best[(N, kind)] = (cfg, row["ms"])
                        print(f"  N={N:<3d} L={L:<5d} {kind:4s} {json.dumps(cfg):40s} "
                              f"{row['ms']:9.3f} ms (first call {row['first_call_s']:.1f}s)",
                              flush=True)
                del kw
        run.res["meta"]["parallel_best_tiling"] = {f"N={N},{kind}": v[0]
                                                  for (N, kind), v in best.items()}

    if not args.no_sweep:
        run.section("tiling sweep (parallel forward)", sweep)

    # 3. timings ---------------------------------------------------------------------------
    def timings():
        # Forward rows of both variants for every shape first, then forward+backward (parallel
        # backward, chunked), then mamba-ssm, then the slow PyTorch path: if the budget runs
        # out, what is lost is the least informative.
        def par(kind, N):
            return triton_fn(best.get((N, kind), (tilings["parallel"],))[0], kind, "parallel")

        def par_bwd(kind, N):  # the default tiling: the sweep times forwards only
            return triton_fn(tilings["parallel+bwd"], kind, "parallel+bwd")

        groups = [
            lambda N, L: [("parallel-mean", par("mean", N), ("fwd",)),
                          ("parallel-none", par("none", N), ("fwd",)),
                          ("chunked-mean", triton_fn(tilings["chunked"], "mean", "chunked"),
                           ("fwd",)),
                          ("chunked-none", triton_fn(tilings["chunked"], "none", "chunked"),
                           ("fwd",))],
        ]
        if not args.no_backward:
            groups.append(lambda N, L: [
                ("parbwd-mean", par_bwd("mean", N), ("fwdbwd",)),
                ("parbwd-none", par_bwd("none", N), ("fwdbwd",))])
            groups.append(lambda N, L: [
                ("chunked-mean", triton_fn(tilings["chunked"], "mean", "chunked"), ("fwdbwd",)),
                ("chunked-none", triton_fn(tilings["chunked"], "none", "chunked"), ("fwdbwd",))])
        if mamba:
            groups.append(lambda N, L: [("mamba-ssm-x3", mamba, None)])
        # The PyTorch path only where it is cheap (its other sizes are in docs/triton_kernel.md).
        groups.append(lambda N, L: [("torch-mean", torch_fn("mean"),
                                     ("fwd",) if L == Ls[0] else ())])
        for impls_for in groups:
            for N in Ns:
                for L in Ls:
                    impls = impls_for(N, L)
                    if not impls or all(modes == () for _, _, modes in impls):
                        continue
                    kw = make_inputs(M, Bt_t, D, N, L, torch.float32, device)
                    if impls[0][0].startswith("mamba") and not run.over_budget():
                        with torch.no_grad():  # the same computation as coupling="none"?
                            agree = rel(mamba(kw), triton_fn(tilings["chunked"], "none",
                                                             "chunked")(kw))
                        run.res["meta"].setdefault("mamba_vs_triton_none_rel_err", {})[
                            f"N={N},L={L}"] = agree
                        print(f"  N={N:<3d} L={L:<5d} mamba-ssm vs chunked-none: "
                              f"rel err {agree:.1e}")
                    for mode in ("fwd", "fwdbwd"):
                        for name, fn, modes in impls:
                            if modes is None or mode in modes:
                                time_row(name, fn, kw, N, L, mode)
                    del kw
                    run.save()

    def time_row(name, fn, kw, N, L, mode):
        row = dict(N=N, L=L, Bt=Bt_t, impl=name, mode=mode)
        if run.over_budget():
            run.res["skipped"].append({**row, "why": "time budget"})
            return
        try:
            row.update(measure(fn, kw, mode, device))
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            run.res["skipped"].append({**row, "why": f"OOM: {exc}"[:200]})
            print(f"  N={N:<3d} L={L:<5d} {mode:6s} {name:13s} OOM")
            return
        run.res["timings"].append(row)
        peak = f", peak {row['peak_gib']:.2f} GiB" if row["peak_gib"] is not None else ""
        print(f"  N={N:<3d} L={L:<5d} {mode:6s} {name:13s} {row['ms']:9.3f} ms "
              f"(x{row['reps']}, first call {row['first_call_s']:.1f}s{peak})", flush=True)

    run.section("timings", timings)

    print_table(run)
    run.save()
    print(f"\nwrote {args.out} (elapsed {run.elapsed():.0f}s)")
    return 0 if not run.res["errors"] and all(r["ok"] for r in run.res["correctness"]) else 1


IMPLS = ["parallel-mean", "parallel-none", "parbwd-mean", "parbwd-none", "chunked-mean",
         "chunked-none", "torch-mean", "mamba-ssm-x3"]


def _ratio(a, b):
    return a / b if a and b else None


def _fmt(x, spec, width):
    return format(x, spec) if x is not None else "-".rjust(width)


def print_table(run):
    res = run.res
    print("\n== summary")
    print(f"device: {res['meta']['device']}; mamba-ssm: {res['meta']['mamba_ssm']}")
    if res["correctness"]:
        worst = max(res["correctness"], key=lambda r: r["max_error"])
        n_ok = sum(r["ok"] for r in res["correctness"])
        print(f"correctness: {n_ok}/{len(res['correctness'])} checks pass; worst "
              f"{worst['max_error']:.2e} ({worst['check']}, {worst['variant']}, "
              f"{worst['coupling']}, {worst['dtype']})")
        for r in res["correctness"]:
            if not r["ok"]:
                print(f"  FAIL {r['check']} {r['variant']} {r['coupling']} {r['dtype']} "
                      f"N={r['shape']['N']}: {r['max_error']:.2e}")
    if res["meta"].get("parallel_best_tiling"):
        print(f"parallel tiling (sweep's fastest): {res['meta']['parallel_best_tiling']}")
    t = {(r["N"], r["L"], r["mode"], r["impl"]): r["ms"] for r in res["timings"]}
    for mode in ("fwd", "fwdbwd"):
        print(f"\n{mode} ms (Bt={res['meta']['Bt']}, M={res['meta']['M']}, "
              f"D={res['meta']['D']}); coupled/none = mean / none of the same variant (target "
              "<= 1.2), par speed-up = chunked / parallel for 'mean', vs mamba = best 'mean' / "
              "mamba-ssm-x3")
        print(f"{'N':>4s} {'L':>5s} " + " ".join(f"{i:>13s}" for i in IMPLS)
              + f" {'par c/n':>7s} {'chk c/n':>7s} {'par x':>6s} {'vs mamba':>8s}")
        for N in res["meta"]["Ns"]:
            for L in res["meta"]["Ls"]:
                v = {i: t.get((N, L, mode, i)) for i in IMPLS}
                if not any(v.values()):
                    continue
                cells = " ".join(_fmt(x, "13.3f", 13) for x in v.values())
                pm = v["parallel-mean"] or v["parbwd-mean"]  # fwd / fwd+bwd
                pn = v["parallel-none"] or v["parbwd-none"]
                best_mean = min((x for x in (pm, v["chunked-mean"]) if x), default=None)
                print(f"{N:4d} {L:5d} {cells} "
                      f"{_fmt(_ratio(pm, pn), '7.2f', 7)} "
                      f"{_fmt(_ratio(v['chunked-mean'], v['chunked-none']), '7.2f', 7)} "
                      f"{_fmt(_ratio(v['chunked-mean'], pm), '6.2f', 6)} "
                      f"{_fmt(_ratio(best_mean, v['mamba-ssm-x3']), '8.2f', 8)}")
    if res["sweep"]:
        print(f"\nsweep (parallel forward, L={res['meta']['Ls'][1]}): " + "; ".join(
            f"N={r['N']} {r['coupling']} {json.dumps(r['config'])} {r['ms']:.3f} ms"
            for r in res["sweep"]))
    if res["skipped"]:
        print(f"\nskipped {len(res['skipped'])} measurements: "
              + "; ".join(sorted({s['why'].split(' ~')[0][:80] for s in res['skipped']})))
    if res["errors"]:
        print(f"\nERRORS in sections: {[e['section'] for e in res['errors']]}")


if __name__ == "__main__":
    sys.exit(main())
