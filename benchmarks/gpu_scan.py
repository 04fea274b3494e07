"""GPU check of the fused Triton coupled selective scan: correctness at full size, then timings.

    PYTHONPATH=src python3 benchmarks/gpu_scan.py --out $OUT/gpu_scan.json      # on a CUDA GPU
    PYTHONPATH=src python3 benchmarks/gpu_scan.py --interpret --tiny --out /tmp/s.json  # CPU smoke

One invocation, sized to finish in about 4 minutes on an H100 including Triton compilation
(measured sections stop early past --budget-s and say so). Sections:

1. correctness against the reference loop in float64 on the same device: y, last state and every
   gradient at M=3, D=256, N in {16, 64}, L=2048 (coupled "mean", "none", general W), plus all
   coupling modes with every optional input at a small size, fp32 and bf16;
2. timings (CUDA events, warm-up, median) at M=3, Bt=32, D=256, N in {16, 64},
   L in {50, 1024, 4096}, forward (no grad) and forward+backward, for: Triton coupled ("mean"),
   Triton coupling="none" (M independent chains: the uncoupled baseline), Triton general W
   (N=16), the pure-PyTorch path (skipped where its autograd graph would not fit), and
   mamba-ssm's selective_scan_fn run M times if mamba_ssm imports;
3. a small sweep of tiling configurations (channels per program, warps, register sub-chunk).

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
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from coupled_mamba.ops import (  # noqa: E402
    _triton,
    coupled_selective_scan_ref,
    coupled_selective_scan_torch,
)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
# Bytes the pure-PyTorch path keeps for backward per element of (M, Bt, D, N, L) in fp32,
# measured with saved_tensors_hooks (45 at N in {16, 64}); used to skip rows that cannot fit.
TORCH_SAVED_BYTES = 45


# --- inputs -------------------------------------------------------------------------------

def make_inputs(M, Bt, D, N, L, dtype, device, seed=0, with_state=False, requires_grad=True):
    """Random scan inputs (never zeros); delta centred so softplus(delta + bias) is Mamba-like.

    Drawn on the device (drawing 100M values on the host takes seconds per tensor)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0, dt=dtype):
        x = torch.randn(*shape, generator=g, device=device, dtype=torch.float32)
        return (x * scale + shift).to(dt)

    param = torch.float64 if dtype == torch.float64 else torch.float32
    kw = dict(
        u=r(M, Bt, D, L), delta=r(M, Bt, D, L, scale=0.5, shift=-1.0),
        A=-torch.exp(r(M, D, N, scale=0.5, dt=param)), B=r(M, Bt, N, L), C=r(M, Bt, N, L),
        D=r(M, D, dt=param), z=r(M, Bt, D, L), delta_bias=r(M, D, scale=0.3, dt=param),
    )
    if with_state:
        kw["initial_state"] = r(M, Bt, D, N, dt=param)
    return {k: v.requires_grad_(requires_grad) for k, v in kw.items()}


def coupling_arg(name, M, device, dtype):
    if name != "matrix":
        return name
    g = torch.Generator(device="cpu").manual_seed(7)
    return (torch.rand(M, M, generator=g) / M).to(device=device, dtype=dtype).requires_grad_(True)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# --- timing -------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, target_s=0.25, max_reps=15):
    """(median ms, reps, first-call s). The first call warms up (and compiles); calls over a
    second are measured once."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    sync(device)
    est = time.perf_counter() - t0
    if est > 1.0:
        return est * 1e3, 1, first
    reps = max(3, min(max_reps, int(target_s / max(est, 1e-6))))
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), reps, first


# --- the implementations timed ------------------------------------------------------------

def triton_fn(tiling, coupling):
    def fn(kw):
        return _triton.coupled_selective_scan_triton(
            **kw, delta_softplus=True, coupling=coupling, **tiling)
    return fn


def torch_fn(coupling):
    def fn(kw):
        return coupled_selective_scan_torch(**kw, delta_softplus=True, coupling=coupling)
    return fn


def mamba_fn(stand_in=False):
    """M uncoupled mamba-ssm scans as (fn, None), or (None, why).

    stand_in: when mamba_ssm does not import, use a pure-PyTorch function with the signature and
    layout of its selective_scan_fn instead (only so the smoke test runs this code path).
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or a broken CUDA extension
        if not stand_in:
            return None, f"{type(exc).__name__}: {exc}"

        def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                              delta_softplus=False):
            # (Bt, D, L), (D, N), (Bt, N, L) in, as mamba-ssm; one chain.
            return coupled_selective_scan_torch(
                u[None], delta[None], A[None], B[None], C[None], D[None], z[None],
                delta_bias[None], delta_softplus=delta_softplus, coupling="none")[0]

    def fn(kw):
        M = kw["u"].shape[0]
        return torch.stack([
            selective_scan_fn(kw["u"][m], kw["delta"][m], kw["A"][m], kw["B"][m], kw["C"][m],
                              kw["D"][m], kw["z"][m], kw["delta_bias"][m], delta_softplus=True)
            for m in range(M)
        ])
    return fn, None


def measure(fn, kw, mode, device):
    """Time fn(kw): mode "fwd" under no_grad, "fwdbwd" forward plus backward of a fixed dy."""
    if mode == "fwd":
        def call():
            with torch.no_grad():
                fn(kw)
    else:
        leaves = [v for v in kw.values() if v.requires_grad]
        dy = torch.randn(kw["u"].shape, device=device, dtype=kw["u"].dtype)

        def call():
            for v in leaves:
                v.grad = None
            fn(kw).backward(dy)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ms, reps, first = time_call(call, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return dict(ms=ms, reps=reps, first_call_s=first, peak_gib=peak)


# --- sections -----------------------------------------------------------------------------

def run_grads(fn, kw, coupling, last):
    out = fn(**kw, coupling=coupling, delta_softplus=True, return_last_state=last)
    y, h = out if last else (out, None)
    g = torch.Generator(device="cpu").manual_seed(123)
    gy = torch.randn(y.shape, generator=g).to(y.device, torch.float64)
    loss = (y.double() * gy).sum()
    if last:
        loss = loss + (h.double() * torch.randn(h.shape, generator=g).to(h.device,
                                                                         torch.float64)).sum()
    names = [n for n in GRAD_NAMES if n in kw]
    tensors = [kw[n] for n in names]
    if isinstance(coupling, torch.Tensor):
        names.append("W")
        tensors.append(coupling)
    return y, h, dict(zip(names, torch.autograd.grad(loss, tensors), strict=True))


def check(name, shape, dtype, couplings, device, tiling, with_state, tol):
    """Triton against the float64 reference on the same inputs; returns result rows."""
    M, Bt, D, N, L = shape
    rows = []
    for i, cname in enumerate(couplings):
        kw = make_inputs(M, Bt, D, N, L, dtype, device, seed=i, with_state=with_state)
        W = coupling_arg(cname, M, device, torch.float32)
        kw64 = {k: v.detach().double().requires_grad_(True) for k, v in kw.items()}
        W64 = W.detach().double().requires_grad_(True) if isinstance(W, torch.Tensor) else W
        t0 = time.perf_counter()
        y, h, g = run_grads(
            lambda **a: _triton.coupled_selective_scan_triton(**a, **tiling), kw, W, with_state)
        sync(device)
        t_triton = time.perf_counter() - t0
        y_r, h_r, g_r = run_grads(coupled_selective_scan_ref, kw64, W64, with_state)
        errs = {"y": rel(y, y_r)}
        if with_state:
            errs["last_state"] = rel(h, h_r)
        errs.update({f"d{k}": rel(g[k], g_r[k]) for k in g_r})
        worst = max(errs.values())
        ok = errs["y"] < tol[0] and all(v < tol[1] for k, v in errs.items() if k != "y")
        rows.append(dict(check=name, coupling=str(cname), dtype=str(dtype).replace("torch.", ""),
                         shape=dict(M=M, Bt=Bt, D=D, N=N, L=L), errors=errs, max_error=worst,
                         tol=tol, ok=bool(ok and math.isfinite(worst)),
                         triton_first_call_s=t_triton))
        print(f"  {name:10s} {str(cname):>6s} {rows[-1]['dtype']:8s} N={N:<3d} L={L:<5d} "
              f"max rel err {worst:.2e} ({max(errs, key=errs.get)}) "
              f"{'PASS' if rows[-1]['ok'] else 'FAIL'}", flush=True)
        del kw, kw64, y, h, g, y_r, h_r, g_r
    return rows


class Run:
    """Accumulates results and keeps the JSON file up to date."""

    def __init__(self, out, budget_s):
        self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()
        self.res = dict(meta={}, correctness=[], timings=[], sweep=[], skipped=[], errors=[])

    def elapsed(self):
        return time.perf_counter() - self.t0

    def over_budget(self):
        return self.elapsed() > self.budget_s

    def save(self):
        self.res["elapsed_s"] = self.elapsed()
        if self.out:
            os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
            with open(self.out, "w") as f:
                json.dump(self.res, f, indent=1, default=str)

    def section(self, name, body):
        print(f"\n== {name} (t={self.elapsed():.0f}s)", flush=True)
        try:
            body()
        except Exception as exc:
            tb = traceback.format_exc()
            print(tb, flush=True)
            self.res["errors"].append(dict(section=name, error=repr(exc), traceback=tb[-3000:]))
        self.save()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_scan.json"))
    ap.add_argument("--interpret", action="store_true",
                    help="run on CPU in Triton's interpreter (smoke test; use with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, for the smoke test")
    ap.add_argument("--budget-s", type=float, default=210.0,
                    help="stop starting new measurements after this many seconds")
    ap.add_argument("--torch-mem-limit-gib", type=float, default=None,
                    help="skip pure-PyTorch fwd+bwd rows whose autograd graph exceeds this")
    ap.add_argument("--no-sweep", action="store_true")
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
    # The interpreter gets a tiny checkpoint interval, so the smoke test crosses chunks.
    tiling = dict(chunk=8, sub_chunk=4) if tiny else {}
    if args.torch_mem_limit_gib is not None:
        mem_limit = args.torch_mem_limit_gib * 2**30
    elif device.type == "cuda":
        mem_limit = 0.7 * torch.cuda.get_device_properties(0).total_memory
    else:
        mem_limit = 40e3  # bytes: in the smoke test the largest row takes the skip path too

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
        tiling_defaults=dict(chunk=_triton.CHUNK, sub_chunk=_triton.SUB_CHUNK,
                             fwd_tile=_triton.FWD_TILE, bwd_tile=_triton.BWD_TILE),
        tiling=tiling, argv=sys.argv,
    )
    print(f"device {run.res['meta']['device']}, torch {torch.__version__}, "
          f"triton {triton.__version__}; mamba-ssm: {run.res['meta']['mamba_ssm']}")
    run.save()

    # 1. correctness ---------------------------------------------------------------------
    def correctness():
        big_L, big_Bt = (12, 1) if tiny else (2048, 2)
        for N in Ns:
            run.res["correctness"] += check(
                "full-size", (M, big_Bt, D, N, big_L), torch.float32, ["mean", "none", "matrix"],
                device, tiling, False, (1e-4, 1e-3))
        small = (M, 2, 8 if tiny else 64, Ns[0], 10 if tiny else 300)
        run.res["correctness"] += check(
            "all-modes", small, torch.float32, ["none", "mean", "sum", 0.3, "matrix"],
            device, tiling, True, (1e-4, 1e-3))
        run.res["correctness"] += check(
            "bf16", small, torch.bfloat16, ["mean", "matrix"], device, tiling, True,
            (1.6e-2, 3e-2))
        bad = [r for r in run.res["correctness"] if not r["ok"]]
        print(f"  correctness: {len(run.res['correctness']) - len(bad)} passed, {len(bad)} failed")

    run.section("correctness vs float64 reference", correctness)

    # 2. timings ---------------------------------------------------------------------------
    def timings():
        # Triton rows for every shape first, then mamba-ssm, then the slow PyTorch path: if the
        # budget runs out, what is lost is the least informative.
        def triton_impls(N):
            impls = [("triton-mean", triton_fn(tiling, "mean")),
                     ("triton-none", triton_fn(tiling, "none"))]
            if N == Ns[0]:
                # A learned coupling: W requires grad, so fwd+bwd includes dW.
                impls.append(("triton-W", triton_fn(tiling, coupling_arg(
                    "matrix", M, device, torch.float32))))
            return impls

        groups = [triton_impls]
        if mamba:
            groups.append(lambda N: [("mamba-ssm-x3", mamba)])
        groups.append(lambda N: [("torch-mean", torch_fn("mean"))])
        for impls_for in groups:
            for N in Ns:
                for L in Ls:
                    kw = make_inputs(M, Bt_t, D, N, L, torch.float32, device)
                    impls = impls_for(N)
                    if impls[0][0].startswith("mamba") and not run.over_budget():
                        with torch.no_grad():  # the same computation as coupling="none"?
                            agree = rel(mamba(kw), triton_fn(tiling, "none")(kw))
                        run.res["meta"].setdefault("mamba_vs_triton_none_rel_err", {})[
                            f"N={N},L={L}"] = agree
                        print(f"  N={N:<3d} L={L:<5d} mamba-ssm vs triton-none: "
                              f"rel err {agree:.1e}")
                    for mode in ("fwd", "fwdbwd"):
                        for name, fn in impls:
                            time_row(name, fn, kw, N, L, mode)
                    del kw
                    run.save()

    def time_row(name, fn, kw, N, L, mode):
        row = dict(N=N, L=L, Bt=Bt_t, impl=name, mode=mode)
        if run.over_budget():
            run.res["skipped"].append({**row, "why": "time budget"})
            return
        need = TORCH_SAVED_BYTES * M * Bt_t * D * N * L
        if name.startswith("torch") and mode == "fwdbwd" and need > mem_limit:
            why = f"autograd graph ~{need / 2**30:.1f} GiB > limit {mem_limit / 2**30:.1f} GiB"
            run.res["skipped"].append({**row, "why": why})
            print(f"  N={N:<3d} L={L:<5d} {mode:6s} {name:13s} skipped: {why}")
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

    # 3. tiling sweep ----------------------------------------------------------------------
    def sweep():
        L = Ls[1]
        for N in Ns:
            MP, NP = 4, _triton._pow2(N)
            bd_f = _triton._block_d(D, MP, NP, _triton.FWD_TILE)
            bd_b = _triton._block_d(D, MP, NP, _triton.BWD_TILE)
            kw = make_inputs(M, Bt_t, D, N, L, torch.float32, device)
            configs = [
                ("fwd", dict(block_d=bd_f)),
                ("fwd", dict(block_d=bd_f * 2)),
                ("fwd", dict(block_d=max(1, bd_f // 2), num_warps=2)),
                ("fwd", dict(block_d=bd_f * 2, num_warps=8)),
                ("fwdbwd", dict(block_d_bwd=bd_b)),
                ("fwdbwd", dict(block_d_bwd=bd_b * 2, num_warps=8)),
                ("fwdbwd", dict(block_d_bwd=max(1, bd_b // 2), num_warps=2)),
                ("fwdbwd", dict(block_d_bwd=bd_b, sub_chunk=8 if not tiny else 2)),
            ]
            for mode, cfg in configs:
                row = dict(N=N, L=L, mode=mode, config=cfg)
                if run.over_budget():
                    run.res["skipped"].append({**row, "why": "time budget"})
                    continue
                row.update(measure(triton_fn({**tiling, **cfg}, "mean"), kw, mode, device))
                run.res["sweep"].append(row)
                print(f"  N={N:<3d} L={L:<5d} {mode:6s} {json.dumps(cfg):48s} {row['ms']:9.3f} ms "
                      f"(first call {row['first_call_s']:.1f}s)", flush=True)
            del kw

    if not args.no_sweep:
        run.section("tiling sweep (coupling='mean')", sweep)

    print_table(run)
    run.save()
    print(f"\nwrote {args.out} (elapsed {run.elapsed():.0f}s)")
    return 0 if not run.res["errors"] and all(r["ok"] for r in run.res["correctness"]) else 1


def print_table(run):
    res = run.res
    print("\n== summary")
    print(f"device: {res['meta']['device']}; mamba-ssm: {res['meta']['mamba_ssm']}")
    if res["correctness"]:
        worst = max(res["correctness"], key=lambda r: r["max_error"])
        n_ok = sum(r["ok"] for r in res["correctness"])
        print(f"correctness: {n_ok}/{len(res['correctness'])} checks pass; worst "
              f"{worst['max_error']:.2e} ({worst['check']}, {worst['coupling']}, {worst['dtype']})")
    t = {(r["N"], r["L"], r["mode"], r["impl"]): r["ms"] for r in res["timings"]}
    impls = ["triton-mean", "triton-none", "triton-W", "torch-mean", "mamba-ssm-x3"]
    for mode in ("fwd", "fwdbwd"):
        print(f"\n{mode} ms (Bt={res['meta']['Bt']}, M={res['meta']['M']}, "
              f"D={res['meta']['D']}); ratio = triton-mean / triton-none, vs torch = speed-up "
              "over the PyTorch path, vs mamba = triton-mean / mamba-ssm-x3")
        print(f"{'N':>4s} {'L':>5s} " + " ".join(f"{i:>13s}" for i in impls)
              + f" {'ratio':>6s} {'vs torch':>8s} {'vs mamba':>8s}")
        for N in res["meta"]["Ns"]:
            for L in res["meta"]["Ls"]:
                vals = [t.get((N, L, mode, i)) for i in impls]
                cells = " ".join(f"{v:13.3f}" if v is not None else f"{'-':>13s}" for v in vals)
                ratio = vals[0] / vals[1] if vals[0] and vals[1] else None
                speed = vals[3] / vals[0] if vals[0] and vals[3] else None
                vs_mamba = vals[0] / vals[4] if vals[0] and vals[4] else None
                print(f"{N:4d} {L:5d} {cells} "
                      + (f"{ratio:6.2f}" if ratio else f"{'-':>6s}") + " "
                      + (f"{speed:7.2f}x" if speed else f"{'-':>8s}") + " "
                      + (f"{vs_mamba:8.2f}" if vs_mamba else f"{'-':>8s}"))
    if res["skipped"]:
        print(f"\nskipped {len(res['skipped'])} measurements: "
              + "; ".join(sorted({s['why'].split(' ~')[0] for s in res['skipped']})))
    if res["errors"]:
        print(f"\nERRORS in sections: {[e['section'] for e in res['errors']]}")


if __name__ == "__main__":
    sys.exit(main())
