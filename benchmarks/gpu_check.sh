#!/usr/bin/env bash
# One device session's checks, in order (results under $OUT, default ./gpu_out):
#   1. the GPU-marked tests (Triton kernels, models and the trainer on CUDA);
#   2. coupled_mamba.bench.gpu_scan: full-size correctness of every Triton variant (the parallel
#      backward included) against the float64 reference, then scan timings;
#   3. coupled_mamba.bench.gpu_efficiency at L = 1000 (inference and one training step), first
#      with the chunked backward (the default), then with the parallel-layout backward
#      (coupled_mamba.ops._triton.PAR_BACKWARD = True).
# Run from the repository root on a CUDA machine:  bash benchmarks/gpu_check.sh
# PYTHONPATH=src: the package runs from this checkout whether or not it is installed.
set -o pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi -L
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
$PY -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_triton.py \
    tests/models/test_models_gpu.py tests/train/test_train_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -20
$PY -m coupled_mamba.bench.gpu_scan --out "$OUT/gpu_scan.json" --budget-s "${SCAN_BUDGET_S:-150}" \
    2>&1 | tee "$OUT/gpu_scan.log" | tail -45
for par in 0 1; do
  $PY - "$OUT/eff_par$par" "$par" <<'PYEOF' 2>&1 | tee "$OUT/eff_par$par.log" | tail -25
import sys
out, par = sys.argv[1], sys.argv[2] == "1"
import coupled_mamba.ops._triton as t
t.PAR_BACKWARD = par
print("PAR_BACKWARD =", t.PAR_BACKWARD)
from coupled_mamba.bench.gpu_efficiency import main
sys.exit(main(["--out", out, "--lengths", "1000", "--train-lengths", "1000", "--no-torch-scan",
               "--max-seconds", "90"]))
PYEOF
done
