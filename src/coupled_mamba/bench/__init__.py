"""Benchmarks that re-measure the paper's claims: ``coupled-mamba bench ...``.

- :mod:`.efficiency`: latency and peak memory against sequence length, Coupled Mamba vs the
  uncoupled Mamba fusion and cross-attention (SDPA and materialised weights), paper Figs. 3-4.
- :mod:`.ablations`: benchmarks that train (with the project's trainer, K seeds, mean ± std):
  fusion ablation, coupling ablations (alpha, mean/sum/learned, neighbourhood, layers,
  d_state, dt_rank) and metrics against the missing-modality rate; :mod:`.ablation_report`
  writes their tables, significance tests and files.
- :mod:`.memory`: how peak memory is measured (fresh child process + peak RSS on CPU, the
  allocator's counters on CUDA).
- :mod:`.plotting`: PNG figures from result rows (matplotlib, Agg).
- :mod:`.cli`: the subcommands. Results and their commands are recorded in docs/BENCHMARKS.md.

Measurements run as modules (``python -m coupled_mamba.bench.<name>``), results under
``benchmarks/results/``:

- :mod:`.scan`, :mod:`.scan_call_cost`: the CPU scan against the exp floor, and the per-call
  cost of short scans (docs/BENCHMARKS.md).
- :mod:`.step_compare`: the CPU training step of two revisions.
- :mod:`.gpu_scan` (building blocks in :mod:`._gpu_scan_checks`), :mod:`.gpu_efficiency`,
  :mod:`.gpu_train_check`: the CUDA checks that ``benchmarks/gpu_check.sh`` runs in order
  (docs/triton_kernel.md, docs/BENCHMARKS.md, docs/TRAINING.md).
- :mod:`.recipe_probe`: one training recipe, one JSON line (docs/TRAINING.md).
- :mod:`.rosmap_baseline`: the logistic-regression bar for ROSMAP (docs/BENCHMARKS.md).
"""

from .efficiency import EfficiencySettings, run_efficiency, write_results
from .memory import PeakRSS, run_isolated

__all__ = ["EfficiencySettings", "PeakRSS", "run_efficiency", "run_isolated", "write_results"]
