"""GPU efficiency check: Coupled Mamba vs cross-attention on CUDA (paper Figs. 3-4).

    python -m coupled_mamba.bench.gpu_efficiency --out OUT_DIR            # on a GPU, < 3 min
    python -m coupled_mamba.bench.gpu_efficiency --smoke --out /tmp/x     # CPU, every path

Measures, in one process (CUDA memory from the allocator's counters, time with synchronize,
warm-up then median):

1. inference at L in {250, 1000, 4000} for coupled_mamba (scan_impl "auto": the Triton kernel
   when it is installed and usable, else the pure-PyTorch scan), coupled_mamba with the
   pure-PyTorch scan (only when "auto" picked something else), coupled_mamba without chunked
   inference (``inference_chunk`` None), mamba_fusion (uncoupled), coupled_mamba2 (Mamba-2
   layers, the chunked coupled SSD), and cross-attention with SDPA and with materialised
   softmax(QK^T) weights;
2. one training step (forward + L1 loss + backward + Adam) at L = 1000 for the same models.

Then it prints a compact table and the targets: coupled >= 2x faster and >= 85% less memory than
materialised cross-attention at L = 1000, and its forward vs SDPA cross-attention at L = 1000.
Writes efficiency.{csv,json,md} and efficiency_{infer,train}.png into --out. A global deadline
(--max-seconds) skips whatever is left rather than overrun the device time.
Needs only torch (+ triton for the fused scan) and matplotlib.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    t0 = time.monotonic()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CPU run through every code path (for checking the script)")
    p.add_argument("--batch", type=int, default=32, help="batch size B (default %(default)s)")
    p.add_argument("--lengths", default="250,1000,4000", help="inference lengths")
    p.add_argument("--train-lengths", default="1000",
                   help="training-step lengths ('' for none)")
    p.add_argument("--no-torch-scan", action="store_true",
                   help="leave out the coupled model with the pure-PyTorch scan")
    p.add_argument("--extra", default="",
                   help="more inference variants, comma-separated (e.g. coupled_mamba_chunk512)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="stop starting new points after this many seconds (default %(default)s)")
    args = p.parse_args(argv)

    import torch

    from ..ops import selective_scan
    from .efficiency import (
        EfficiencySettings,
        add_ratios,
        check_targets,
        markdown_report,
        run_efficiency,
        write_results,
    )

    if args.smoke:
        device = "cpu"
        model = dict(batch=1, input_dims=[8, 6, 4], d_model=16, d_state=8, n_layers=1,
                     warmup=1, repeats=2)
        lengths, train_lengths = [16, 32], [32]
    else:
        if not torch.cuda.is_available():
            print("error: CUDA is not available (use --smoke for a CPU check)", file=sys.stderr)
            return 2
        device = "cuda"
        # The paper's model (docs/MATH.md section 4) with CMU-MOSEI's input widths.
        model = dict(batch=args.batch, input_dims=[768, 74, 35], d_model=128, d_state=64,
                     n_layers=3, warmup=3, repeats=10)
        lengths = [int(x) for x in args.lengths.split(",")]
        train_lengths = [int(x) for x in args.train_lengths.split(",") if x]

    fn, reason = selective_scan._triton_backend()
    auto_impl = "triton" if fn is not None else "torch"
    if device == "cpu":
        auto_impl = selective_scan._resolve_impl("auto", torch.device("cpu")).__name__.replace(
            "coupled_selective_scan_", "")
    print(f"scan_impl auto -> {auto_impl}" + ("" if fn is not None or device == "cpu"
                                              else f" (Triton unusable: {reason})"))
    variants = ["coupled_mamba", "mamba_fusion", "coupled_mamba2", "cross_attention_sdpa",
                "cross_attention_materialized"]
    if auto_impl != "torch" and not args.no_torch_scan:
        variants.insert(1, "coupled_mamba_torch_scan")

    deadline = t0 + args.max_seconds
    common = dict(device=device, isolate=False, deadline=deadline, point_budget_s=45.0, **model)
    # Inference also without chunking (inference_chunk None): chunks relaunch the kernels.
    infer_variants = (variants[:1] + ["coupled_mamba_whole"]
                      + [v for v in args.extra.split(",") if v] + variants[1:])
    infer = run_efficiency(EfficiencySettings(lengths=lengths, modes=["infer"],
                                              variants=infer_variants, **common))
    train = (run_efficiency(EfficiencySettings(lengths=train_lengths, modes=["train"],
                                               variants=variants, **common))
             if train_lengths else {"rows": []})
    result = dict(infer, rows=infer["rows"] + train["rows"])
    add_ratios(result["rows"])
    result["targets"] = check_targets(result["rows"], device)
    result["scan_impl_auto"] = auto_impl
    paths = write_results(result, args.out)

    print("\n" + compact_table(result["rows"]))
    print(markdown_report(result).split("Targets:")[1].strip())
    print(f"\nscan_impl auto -> {auto_impl}; wrote {', '.join(map(os.path.basename, paths))} "
          f"to {args.out}; total {time.monotonic() - t0:.0f} s")
    return 0


def compact_table(rows: list[dict]) -> str:
    """One line per point: mode, L, variant, median ms, peak MiB, ratios to cross-attention."""
    out = [f"{'mode':5s} {'L':>5s} {'variant':30s} {'ms':>9s} {'MiB':>9s} {'x_sdpa':>7s} "
           f"{'x_mat':>7s} {'-mem_sdpa':>9s} {'-mem_mat':>9s} scan"]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"{r['mode']:5s} {r['L']:5d} {r['variant']:30s} {r['status']}: "
                       f"{r.get('error', '')[:60]}")
            continue

        ratios = " ".join(_cell(r.get(k), spec) for k, spec in (
            ("speedup_vs_sdpa", "7.2f"), ("speedup_vs_materialized", "7.2f"),
            ("mem_saving_vs_sdpa", "9.1%"), ("mem_saving_vs_materialized", "9.1%")))
        out.append(f"{r['mode']:5s} {r['L']:5d} {r['variant']:30s} {r['time_ms']:9.2f} "
                   f"{r['total_mb']:9.1f} {ratios} {r.get('scan_impl') or ''}")
    return "\n".join(out)


def _cell(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return format(value, spec) if value is not None else "-".rjust(width)


if __name__ == "__main__":
    sys.exit(main())
