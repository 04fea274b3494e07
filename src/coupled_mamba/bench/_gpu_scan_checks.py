"""Building blocks of :mod:`coupled_mamba.bench.gpu_scan`: inputs, the implementations timed,
CUDA-event timing, the correctness check against the float64 reference, the result file.

Shapes: M modalities, Bt batch, D channels, N state size, L length (scan tensors as in
:func:`coupled_mamba.ops.coupled_selective_scan_ref`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import traceback

import torch

from ..ops import (
    _triton,
    coupled_selective_scan_ref,
    coupled_selective_scan_torch,
)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
# "sum" coupling checks: float32 overflows (by design, docs/MATH.md section 2) after ~80 steps
SUM_L = 40
VARIANTS = ("parallel", "chunked", "seq")


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

def variant_kwargs(label, tiling):
    """Keywords of coupled_selective_scan_triton for a kernel label: a variant name, or
    "parallel+bwd" (variant "parallel" with its own backward, parallel_backward=True)."""
    if label == "parallel+bwd":
        return dict(variant="parallel", parallel_backward=True, **tiling)
    return dict(variant=label, **tiling)


def triton_fn(tiling, coupling, variant):
    def fn(kw):
        return _triton.coupled_selective_scan_triton(
            **kw, delta_softplus=True, coupling=coupling, **variant_kwargs(variant, tiling))
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


def forward_only(fn, kw, coupling, last):
    """(y, last state or None) under no_grad."""
    with torch.no_grad():
        out = fn(**kw, coupling=coupling, delta_softplus=True, return_last_state=last)
    return out if last else (out, None)


def check(name, shape, dtype, cases, device, tilings, with_state, tol, run=None):
    """Triton against the float64 reference on the same inputs; returns result rows.

    cases: (coupling name, variant) pairs; tilings: variant -> tiling keywords."""
    M, Bt, D, N, L = shape
    rows = []
    for i, (cname, variant) in enumerate(cases):
        if run is not None and run.over_budget():
            run.res["skipped"].append(dict(check=name, coupling=str(cname), variant=variant,
                                           why="time budget"))
            continue
        Li = min(L, SUM_L) if cname == "sum" else L  # "sum" overflows float32 after ~80 steps
        kw = make_inputs(M, Bt, D, N, Li, dtype, device, seed=i, with_state=with_state)
        W = coupling_arg(cname, M, device, torch.float32)
        kw64 = {k: v.detach().double().requires_grad_(True) for k, v in kw.items()}
        W64 = W.detach().double().requires_grad_(True) if isinstance(W, torch.Tensor) else W
        t0 = time.perf_counter()

        def fn(variant=variant, **a):
            return _triton.coupled_selective_scan_triton(
                **a, **variant_kwargs(variant, tilings[variant]))

        if variant == "parallel":  # a forward kernel only: under autograd it runs chunked
            y, h, g, g_r = *forward_only(fn, kw, W, with_state), {}, {}
        else:
            y, h, g = run_grads(fn, kw, W, with_state)
        sync(device)
        t_triton = time.perf_counter() - t0
        if variant == "parallel":
            y_r, h_r = forward_only(coupled_selective_scan_ref, kw64, W64, with_state)
        else:
            y_r, h_r, g_r = run_grads(coupled_selective_scan_ref, kw64, W64, with_state)
        errs = {"y": rel(y, y_r)}
        if with_state:
            errs["last_state"] = rel(h, h_r)
        errs.update({f"d{k}": rel(g[k], g_r[k]) for k in g_r})
        worst = max(errs.values())
        ok = errs["y"] < tol[0] and all(v < tol[1] for k, v in errs.items() if k != "y")
        rows.append(dict(check=name, coupling=str(cname), variant=variant,
                         dtype=str(dtype).replace("torch.", ""),
                         shape=dict(M=M, Bt=Bt, D=D, N=N, L=Li), errors=errs, max_error=worst,
                         tol=tol, ok=bool(ok and math.isfinite(worst)),
                         triton_first_call_s=t_triton))
        print(f"  {name:10s} {variant:7s} {str(cname):>6s} {rows[-1]['dtype']:8s} N={N:<3d} "
              f"L={Li:<5d} "
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
