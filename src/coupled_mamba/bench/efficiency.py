"""Efficiency benchmark: latency and peak memory against sequence length (paper Figs. 3-4).

Shapes: M modalities, B batch, L sequence length (every modality has length L), d_m input width
of modality m, d = d_model, N = d_state.

The paper's claim (docs/MATH.md, section 5): 49% faster inference and 83.7% less GPU memory than a
cross-attention fusion model. Coupled Mamba's encoder is linear in L (one coupled scan per layer);
the cross-attention baseline is quadratic (M(M-1) pairwise attention maps per layer).

For every mode ("infer": one forward under ``torch.inference_mode``; "train": forward + L1 loss +
backward + Adam step), every sequence length and every variant (:data:`VARIANTS`), one *point*
is measured:

- time: ``warmup`` calls first, then up to ``repeats`` timed calls; the median is reported (and
  min/max). Fewer repeats are taken when the per-point time budget would be exceeded, and a point
  whose predicted time already exceeds the budget is skipped (``status`` "skipped"), as is every
  longer L of a variant after an OOM or timeout.
- memory: the peak bytes held during one more call, above what was resident before it
  (``work_mb``), plus the bytes of the tensors resident before it (``static_mb``: parameters,
  inputs, optimiser state), so ``total_mb = static_mb + work_mb`` is the peak of bytes held by
  tensors. CPU: peak RSS of a fresh child process, CUDA: the caching allocator's counters
  (:mod:`coupled_mamba.bench.memory` explains both).
- ratios to the two cross-attention variants measured in the same run at the same L:
  ``speedup_vs_sdpa`` = t_sdpa / t, ``mem_saving_vs_sdpa`` = 1 - total / total_sdpa (and the
  same against the materialised-weights variant).

Lengths are the outer loop and variants the inner one, so the points compared in one ratio are
measured minutes apart at most, under the same machine load.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UserInputError
from .environment import describe, environment_info
from .memory import CudaPeak, PeakRSS, is_oom_error, run_isolated, time_calls

# name -> (registered model, config overrides). The cross-attention pair differs only in how the
# attention weights are computed (fused SDPA kernel vs explicit softmax(QK^T) tensor).
VARIANTS: dict[str, tuple[str, dict]] = {
    "coupled_mamba": ("coupled_mamba", {}),
    "mamba_fusion": ("mamba_fusion", {}),
    # Mamba-2 layers (one coupled SSD per layer, chunked matrix products) and their uncoupled twin.
    "coupled_mamba2": ("coupled_mamba2", {}),
    "mamba2_fusion": ("mamba2_fusion", {}),
    "cross_attention_sdpa": ("cross_attention", {"materialize_attention": False}),
    "cross_attention_materialized": ("cross_attention", {"materialize_attention": True}),
    # The coupled model with the pure-PyTorch scan whatever "auto" would pick (GPU comparisons).
    "coupled_mamba_torch_scan": ("coupled_mamba", {"scan_impl": "torch"}),
    # Inference over the whole sequence at once (no inference_chunk), and other chunk lengths
    # than the default 128: the time / memory trade-off of chunked inference.
    "coupled_mamba_whole": ("coupled_mamba", {"inference_chunk": None}),
    **{f"coupled_mamba_chunk{T}": ("coupled_mamba", {"inference_chunk": T})
       for T in (32, 64, 256, 512)},
}
DEFAULT_VARIANTS = ("coupled_mamba", "mamba_fusion", "cross_attention_sdpa",
                    "cross_attention_materialized")
REFERENCES = {"sdpa": "cross_attention_sdpa", "materialized": "cross_attention_materialized"}
MODES = ("infer", "train")
# Growth exponent of time and memory in L, used to predict whether the next L fits the budget.
_GROWTH = {"cross_attention": 2.0}
DEFAULT_LENGTHS = (50, 250, 500, 1000, 2000, 4000, 8000)
# CMU-MOSEI's feature widths (text BERT 768, audio COVAREP 74, vision Facet 35).
DEFAULT_INPUT_DIMS = (768, 74, 35)


@dataclass
class EfficiencySettings:
    """What to measure. Defaults: the paper's model (d_model 128, d_state 64, 3 layers, M = 3 with
    CMU-MOSEI's input widths), batch 2, 1 CPU thread."""

    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    modes: list[str] = field(default_factory=lambda: ["infer", "train"])
    batch: int = 2  # B
    input_dims: list[int] = field(default_factory=lambda: list(DEFAULT_INPUT_DIMS))  # d_m, M
    d_model: int = 128  # d
    d_state: int = 64  # N
    n_layers: int = 3
    n_heads: int = 4  # cross-attention heads
    scan_impl: str = "auto"  # for the Mamba variants that do not fix it
    device: str = "cpu"
    threads: int = 1  # CPU threads (torch.set_num_threads) in every measured process
    warmup: int = 1
    repeats: int = 5
    point_budget_s: float = 120.0  # time allowed for one (mode, variant, L) point
    max_memory_mb: float | None = 8192.0  # CPU: RLIMIT_DATA of each child (None = no cap)
    isolate: bool | None = None  # a fresh process per point; None = on CPU only
    seed: int = 0
    deadline: float | None = None  # time.monotonic() after which remaining points are skipped

    def __post_init__(self):
        for name in ("batch", "d_model", "d_state", "n_layers", "n_heads", "threads", "repeats"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserInputError(f"{name}: expected a positive integer, got {v!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise UserInputError(f"warmup: expected a non-negative integer, got {self.warmup!r}")
        if not self.lengths or any(not isinstance(L, int) or L < 1 for L in self.lengths):
            raise UserInputError(f"lengths: expected positive integers, got {self.lengths!r}")
        self.lengths = sorted(set(self.lengths))
        if not self.input_dims or any(not isinstance(d, int) or d < 1 for d in self.input_dims):
            raise UserInputError(f"input_dims: expected positive integers, got {self.input_dims!r}")
        if len(self.input_dims) < 2:
            raise UserInputError(f"input_dims: the comparison needs M >= 2 modalities, got "
                                 f"{self.input_dims!r}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise UserInputError(f"variants: unknown {bad or self.variants}; expected some of "
                                 f"{sorted(VARIANTS)}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise UserInputError(f"modes: unknown {bad or self.modes}; expected some of {MODES}")
        if self.point_budget_s <= 0:
            raise UserInputError(f"point_budget_s: expected > 0, got {self.point_budget_s}")
        if self.d_model % self.n_heads:
            raise UserInputError(f"n_heads: d_model = {self.d_model} is not divisible by "
                                 f"n_heads = {self.n_heads}")

    @property
    def isolated(self) -> bool:
        return self.isolate if self.isolate is not None else not self.device.startswith("cuda")


# ---- one point ---------------------------------------------------------------------------------

def build_model(variant: str, settings: dict):
    """The model of ``variant`` with the benchmark's config (EfficiencySettings fields, a dict)."""
    from coupled_mamba.models import CoupledMambaConfig, create_model

    name, overrides = VARIANTS[variant]
    fields = dict(input_dims=list(settings["input_dims"]), d_model=settings["d_model"],
                  d_state=settings["d_state"], n_layers=settings["n_layers"],
                  n_heads=settings["n_heads"])
    if name != "cross_attention":
        fields["scan_impl"] = settings.get("scan_impl", "auto")
    fields.update(overrides)
    return create_model(name, CoupledMambaConfig(**fields))


def resolved_scan_impl(model, device) -> str | None:
    """Which scan implementation the model's ``scan_impl`` resolves to on ``device`` (None for
    models without a scan; "ssd-chunked" or "ssd-ref" for the Mamba-2 models)."""
    from coupled_mamba.models import CoupledMamba2Model
    from coupled_mamba.ops import scan_backend

    if isinstance(model, CoupledMamba2Model):
        return "ssd-" + ("chunked" if model.config.ssd_impl == "auto" else model.config.ssd_impl)
    impl = getattr(model.config, "scan_impl", None)
    if model.model_name == "cross_attention" or impl is None:
        return None
    return scan_backend(device, impl)


def _tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def measure_point(spec: dict) -> dict:
    """Measure one point in this process (the worker calls it in a fresh child on CPU).

    ``spec`` keys: variant, mode, L, settings (EfficiencySettings fields as a dict), budget_s.
    Returns a dict with status "ok" and time_ms (median), time_ms_min, time_ms_max, repeats,
    work_mb, static_mb, total_mb, memory_method, scan_impl, n_params; or status "OOM" / "error".
    """
    import torch

    s = spec["settings"]
    device = torch.device(s["device"])
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(s["threads"])
    torch.manual_seed(s["seed"])
    try:
        model = build_model(spec["variant"], s).to(device)
        gen = torch.Generator(device=device).manual_seed(s["seed"])
        B, L = s["batch"], spec["L"]
        xs = [torch.randn(B, L, d, generator=gen, device=device) for d in s["input_dims"]]
        static = list(model.parameters()) + list(model.buffers()) + xs
        if spec["mode"] == "infer":
            model.eval()

            def step():
                with torch.inference_mode():
                    return model(xs)
        else:
            model.train()
            target = torch.randn(B, model.config.num_outputs, generator=gen, device=device)
            opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=5e-4)
            static.append(target)

            def step():
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.l1_loss(model(xs), target)
                loss.backward()
                opt.step()
                return loss.detach()

        sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
        tracker = CudaPeak(device) if cuda else PeakRSS()
        if tracker.method == "maxrss":
            tracker.start()  # cannot reset the high-water mark later: peak spans every call
        t_start = time.perf_counter()
        warm = time_calls(step, max(spec.get("warmup", s["warmup"]), 1), sync)
        t_call = warm[-1]
        left = spec["budget_s"] - (time.perf_counter() - t_start) - t_call  # keep one for memory
        repeats = max(1, min(s["repeats"], int(left / max(t_call, 1e-9))))
        times = time_calls(step, repeats, sync)
        if spec["mode"] == "train":  # Adam's moments exist from the first step on
            static += [t for st in opt.state.values() for t in st.values()
                       if torch.is_tensor(t)]
        if tracker.method != "maxrss":
            tracker.start()
        step()
        peak, base = tracker.stop()
        static_mb = _tensor_mb(static)
        if cuda:  # the allocator's own count: base is exactly the resident tensors
            static_mb, work_mb, total_mb = base, peak - base, peak
        else:
            work_mb = max(peak - base, 0.0)
            total_mb = static_mb + work_mb
        return {
            "status": "ok", "time_ms": 1e3 * statistics.median(times),
            "time_ms_min": 1e3 * min(times), "time_ms_max": 1e3 * max(times),
            "repeats": len(times), "work_mb": work_mb, "static_mb": static_mb,
            "total_mb": total_mb, "memory_method": tracker.method,
            "scan_impl": resolved_scan_impl(model, device),
            "n_params": sum(p.numel() for p in model.parameters()),
        }
    except Exception as exc:  # an oversized point must not end the benchmark
        if not is_oom_error(exc):
            raise
        return {"status": "OOM", "error": str(exc).strip().splitlines()[0][:300]}


def _measure_guarded(spec: dict) -> dict:
    """measure_point in this process, turning unexpected errors into an "error" result and
    releasing the point's memory before the next one (its frame is gone once this returns)."""
    try:
        result = measure_point(spec)
    except Exception as exc:
        result = {"status": "error",
                  "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    gc.collect()
    if str(spec["settings"]["device"]).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return result


# ---- the sweep ---------------------------------------------------------------------------------

ROW_FIELDS = (
    "mode", "L", "variant", "model", "status", "time_ms", "time_ms_min", "time_ms_max", "repeats",
    "total_mb", "work_mb", "static_mb", "speedup_vs_sdpa", "speedup_vs_materialized",
    "mem_saving_vs_sdpa", "mem_saving_vs_materialized", "scan_impl", "memory_method", "n_params",
    "batch", "device", "threads", "error",
)


def _predict(row: dict, L: int, key: str, variant: str) -> float:
    p = _GROWTH.get(VARIANTS[variant][0], 1.0)
    return row[key] * (L / row["L"]) ** p


def run_efficiency(settings: EfficiencySettings,
                   log: Callable[[str], None] = print) -> dict:
    """Measure every (mode, L, variant) point; returns {"environment", "settings", "rows",
    "targets"} (rows: dicts with the keys of :data:`ROW_FIELDS`)."""
    s = dataclasses.asdict(settings)
    env = environment_info(settings.device, settings.threads)
    log(f"# {describe(env)}")
    rows = []
    child_env = {"OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads)}
    for mode in settings.modes:
        last_ok: dict[str, dict] = {}
        stopped: dict[str, str] = {}
        for L in settings.lengths:
            for variant in settings.variants:
                row = {"mode": mode, "L": L, "variant": variant, "model": VARIANTS[variant][0],
                       "batch": settings.batch, "device": settings.device,
                       "threads": settings.threads}
                reason = stopped.get(variant)
                if settings.deadline is not None and time.monotonic() > settings.deadline:
                    reason = "run deadline reached"
                prev = last_ok.get(variant)
                if reason is None and prev is not None:
                    t_pred = _predict(prev, L, "time_ms", variant) / 1e3
                    calls = max(settings.warmup, 1) + 2  # warm-up, >= 1 timed call, memory call
                    if t_pred * calls > settings.point_budget_s:
                        reason = (f"predicted {t_pred:.0f} s per call exceeds the "
                                  f"{settings.point_budget_s:g} s budget")
                    mem_pred = _predict(prev, L, "work_mb", variant)
                    if (settings.max_memory_mb and not settings.device.startswith("cuda")
                            and mem_pred > settings.max_memory_mb):
                        reason = (f"predicted {mem_pred:.0f} MiB exceeds the "
                                  f"{settings.max_memory_mb:g} MiB cap")
                if reason is not None:
                    row.update(status="skipped", error=reason)
                    rows.append(row)
                    log(f"{mode:5s} L={L:<6d} {variant:30s} skipped: {reason}")
                    continue
                spec = {"kind": "efficiency", "variant": variant, "mode": mode, "L": L,
                        "settings": s, "budget_s": settings.point_budget_s}
                if settings.isolated:
                    res = run_isolated(spec, timeout=2 * settings.point_budget_s + 120,
                                       max_memory_mb=settings.max_memory_mb, env=child_env)
                else:
                    res = _measure_guarded(spec)
                res.pop("wall_s", None)
                row.update(res)
                rows.append(row)
                if row["status"] == "ok":
                    last_ok[variant] = row
                    log(f"{mode:5s} L={L:<6d} {variant:30s} {row['time_ms']:10.1f} ms "
                        f"{row['total_mb']:9.1f} MiB (work {row['work_mb']:.1f})"
                        f"{'  scan=' + row['scan_impl'] if row.get('scan_impl') else ''}")
                else:
                    if row["status"] in ("OOM", "timeout"):
                        stopped[variant] = f"after {row['status']} at L={L}"
                    log(f"{mode:5s} L={L:<6d} {variant:30s} {row['status']}: "
                        f"{row.get('error', '')}")
    add_ratios(rows)
    return {"environment": env, "settings": s, "rows": rows,
            "targets": check_targets(rows, settings.device)}


def add_ratios(rows: list[dict]) -> None:
    """Fill speedup_vs_* and mem_saving_vs_* of every ok row from the reference variants' rows
    of the same mode and L (left absent where a reference point is missing)."""
    index = {(r["mode"], r["L"], r["variant"]): r for r in rows if r.get("status") == "ok"}
    for r in rows:
        if r.get("status") != "ok":
            continue
        for tag, ref_name in REFERENCES.items():
            ref = index.get((r["mode"], r["L"], ref_name))
            if ref is None:
                continue
            r[f"speedup_vs_{tag}"] = ref["time_ms"] / r["time_ms"]
            r[f"mem_saving_vs_{tag}"] = 1.0 - r["total_mb"] / ref["total_mb"]


def check_targets(rows: list[dict], device: str, model: str = "coupled_mamba") -> list[dict]:
    """The efficiency targets (docs/BENCHMARKS.md), judged on the inference rows of ``model``.

    CPU: faster than SDPA cross-attention at every measured L >= 1000, and less total memory at
    every measured L >= 500. CUDA: at L = 1000, >= 2x faster and >= 85% less memory than the
    materialised cross-attention. ``met`` is None when the needed points were not measured.
    """
    ok = [r for r in rows if r.get("status") == "ok" and r["mode"] == "infer"
          and r["variant"] == model]

    def judge(name, items, cond, fmt):
        items = [r for r in items if r.get(cond[0]) is not None]
        if not items:
            return {"target": name, "met": None, "detail": "not measured"}
        met = all(cond[1](r[cond[0]]) for r in items)
        return {"target": name, "met": met,
                "detail": ", ".join(f"L={r['L']}: {fmt(r[cond[0]])}" for r in items)}

    if str(device).startswith("cuda"):
        at = [r for r in ok if r["L"] == 1000]
        return [
            judge(f"{model} >= 2x faster than materialised cross-attention at L=1000", at,
                  ("speedup_vs_materialized", lambda v: v >= 2.0), lambda v: f"{v:.2f}x"),
            judge(f"{model} >= 85% less memory than materialised cross-attention at L=1000", at,
                  ("mem_saving_vs_materialized", lambda v: v >= 0.85), _less_or_more),
            judge(f"{model} faster than SDPA cross-attention at L=1000 (forward)", at,
                  ("speedup_vs_sdpa", lambda v: v > 1.0), lambda v: f"{v:.2f}x"),
        ]
    return [
        judge(f"{model} faster than SDPA cross-attention for L >= 1000",
              [r for r in ok if r["L"] >= 1000],
              ("speedup_vs_sdpa", lambda v: v > 1.0), lambda v: f"{v:.2f}x"),
        judge(f"{model} lighter than SDPA cross-attention at every L >= 500",
              [r for r in ok if r["L"] >= 500],
              ("mem_saving_vs_sdpa", lambda v: v > 0.0), _less_or_more),
    ]


def _less_or_more(saving: float) -> str:
    return f"{saving:.1%} less" if saving >= 0 else f"{-saving:.1%} more"


# ---- output ------------------------------------------------------------------------------------

def write_results(result: dict, out_dir: str, prefix: str = "efficiency") -> list[str]:
    """Write ``{prefix}.csv``, ``{prefix}.json``, ``{prefix}.md`` and one two-panel PNG per mode
    (``{prefix}_infer.png``, ``{prefix}_train.png``) into ``out_dir``; returns the paths."""
    from .plotting import plot_efficiency

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    path = os.path.join(out_dir, f"{prefix}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(result["rows"])
    paths.append(path)
    path = os.path.join(out_dir, f"{prefix}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=_json_default)
        f.write("\n")
    paths.append(path)
    path = os.path.join(out_dir, f"{prefix}.md")
    with open(path, "w") as f:
        f.write(markdown_report(result))
    paths.append(path)
    modes = list(dict.fromkeys(r["mode"] for r in result["rows"]))
    for mode in modes:
        path = os.path.join(out_dir, f"{prefix}_{mode}.png")
        title = "inference (forward)" if mode == "infer" else "training step (fwd+bwd+Adam)"
        plot_efficiency([r for r in result["rows"] if r["mode"] == mode], path,
                        title=f"{title}, {_setting_line(result['settings'])}")
        paths.append(path)
    return paths


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _setting_line(s: dict) -> str:
    dev = "CUDA" if str(s["device"]).startswith("cuda") else f"CPU {s['threads']} thr"
    return (f"B={s['batch']}, M={len(s['input_dims'])}, d={s['d_model']}, "
            f"N={s['d_state']}, {s['n_layers']} layers, {dev}")


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def markdown_tables(rows: list[dict], mode: str) -> str:
    """Two markdown tables (median time and total peak memory against L) for one mode, with the
    coupled model's ratios to the two cross-attention variants."""
    rows = [r for r in rows if r["mode"] == mode]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lengths = sorted({r["L"] for r in rows})
    cell = {(r["L"], r["variant"]): r for r in rows}

    def value(L, v, key, spec):
        r = cell.get((L, v))
        if r is None:
            return ""
        if r["status"] != "ok":
            return r["status"]
        return _fmt(r.get(key), spec)

    main = "coupled_mamba" if "coupled_mamba" in variants else variants[0]
    out = []
    for key, unit, spec, ratio, rfmt in (
            ("time_ms", "median ms", ".1f", "speedup_vs", "{:.2f}x"),
            ("total_mb", "peak MiB", ".1f", "mem_saving_vs", "{:.0%}")):
        refs = [t for t in REFERENCES if any(r.get(f"{ratio}_{t}") is not None for r in rows)]
        head = ["L"] + [f"{v} ({unit})" for v in variants] + [
            f"{main} {ratio.replace('_vs', '')} vs {t}" for t in refs]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for L in lengths:
            line = [str(L)] + [value(L, v, key, spec) for v in variants]
            r = cell.get((L, main), {})
            line += [rfmt.format(r[f"{ratio}_{t}"]) if r.get(f"{ratio}_{t}") is not None
                     else "" for t in refs]
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def markdown_report(result: dict) -> str:
    """Environment, settings, tables per mode and the targets, as markdown."""
    s = result["settings"]
    lines = [f"Environment: {describe(result['environment'])}", "",
             f"Settings: {_setting_line(s)}; input dims {s['input_dims']}; warm-up "
             f"{s['warmup']}, up to {s['repeats']} timed repeats (median), point budget "
             f"{s['point_budget_s']:g} s; memory = parameters + inputs (+ optimiser state) + peak "
             "working memory of one call.", ""]
    for mode in dict.fromkeys(r["mode"] for r in result["rows"]):
        lines += [f"### {mode}", "", markdown_tables(result["rows"], mode)]
    skipped = [r for r in result["rows"] if r["status"] not in ("ok",)]
    if skipped:
        lines += ["Not measured: " + "; ".join(
            f"{r['mode']} {r['variant']} L={r['L']}: {r['status']} ({r.get('error', '')})"
            for r in skipped), ""]
    lines += ["Targets:", ""]
    for t in result["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: **{mark}** ({t['detail']})")
    return "\n".join(lines) + "\n"
