"""Command-line entry point ``coupled-mamba``.

Until the trainer lands, ``demo`` runs a small demonstration of the coupled scan.
"""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    import time

    import torch

    from coupled_mamba import coupled_selective_scan

    torch.manual_seed(0)
    M, B, D, N, L = 3, 2, 64, 16, 256
    u = torch.randn(M, B, D, L)
    delta = torch.randn(M, B, D, L) * 0.5 - 1
    A = -torch.exp(torch.randn(M, D, N) * 0.5)
    Bm, Cm = torch.randn(M, B, N, L), torch.randn(M, B, N, L)
    print(f"coupled selective scan, M={M} B={B} D={D} N={N} L={L}")
    y_none = coupled_selective_scan(u, delta, A, Bm, Cm, delta_softplus=True, coupling="none")
    for coupling in ("none", "mean", 0.5):
        t0 = time.perf_counter()
        y = coupled_selective_scan(u, delta, A, Bm, Cm, delta_softplus=True, coupling=coupling)
        ms = (time.perf_counter() - t0) * 1e3
        diff = ((y - y_none).norm() / y_none.norm()).item()
        print(f"  coupling={coupling!s:5}  {ms:7.1f} ms  |y - y_none| / |y_none| = {diff:.3f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="coupled-mamba", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="small demonstration").set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
