"""Child-process entry point of the benchmarks: ``python -m coupled_mamba.bench._worker``.

Reads one JSON spec on stdin, measures it in this fresh process and prints one JSON line on
stdout (see :func:`coupled_mamba.bench.memory.run_isolated`). Spec kinds:

- ``{"kind": "alloc", "mb": X}``: peak working memory of filling an X MiB tensor (self-test).
- ``{"kind": "efficiency", ...}``: one point of
  :func:`coupled_mamba.bench.efficiency.measure_point`.

An allocation failure is reported as ``{"status": "OOM"}``; any other exception propagates
(traceback on stderr, non-zero exit), which the parent records as an "error" point.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    spec = json.loads(sys.stdin.read())
    kind = spec.get("kind")
    if kind == "alloc":
        from .memory import measure_allocation

        result = measure_allocation(float(spec["mb"]))
    elif kind == "efficiency":
        from .efficiency import measure_point

        result = measure_point(spec)
    else:
        raise ValueError(f"spec: unknown kind {kind!r}; expected 'alloc' or 'efficiency'")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
