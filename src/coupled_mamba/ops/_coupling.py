"""Coupling matrices W of the coupled selective scan (docs/MATH.md, section 2).

    h[t][m] = Abar[t][m] * sum_k W[m, k] h[t-1][k] + bbar[t][m]

M is the number of modalities. Every scan implementation turns its ``coupling`` argument into a
:class:`Coupling` with :func:`resolve_coupling`, so that the accepted values and their meaning live
in one place.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

CouplingArg = str | float | int | torch.Tensor
# The kinds as the compiled kernels number them (the C++ enum Mode in csrc/scan_common.h and the
# Triton kernels' KIND constant).
KIND_IDS = {"diag": 0, "rank1": 1, "general": 2}

_warned_sum = False


@dataclass(frozen=True)
class Coupling:
    """A resolved coupling.

    kind:
        "diag": W = I, M independent chains.
        "rank1": W = (w / M) 11^T; the mean state obeys one diagonal recurrence
            (docs/MATH.md, section 2.1).
        "general": any (M, M) matrix, scanned in its M x M form.
    weight:
        w for "rank1" (1 for "mean", M for "sum"); unused otherwise.
    matrix:
        the (M, M) tensor for "general" (may require grad); None otherwise.
    """

    kind: Literal["diag", "rank1", "general"]
    weight: float = 1.0
    matrix: torch.Tensor | None = None

    def dense(self, M: int, device=None, dtype=None) -> torch.Tensor:
        """W as an (M, M) tensor, whatever the kind."""
        if self.kind == "diag":
            return torch.eye(M, device=device, dtype=dtype)
        if self.kind == "rank1":
            return torch.full((M, M), self.weight / M, device=device, dtype=dtype)
        return self.matrix.to(device=device, dtype=dtype)


# The named forms that do not depend on M, built once: resolve_coupling runs on every scan call,
# the streaming step's included, and need not build a frozen dataclass each time.
_DIAG = Coupling("diag")
_MEAN = Coupling("rank1", 1.0)


def resolve_coupling(coupling: CouplingArg, M: int) -> Coupling:
    """Turn the user-facing ``coupling`` argument into a :class:`Coupling`.

    Args:
        coupling: "none", "mean", "sum", a float alpha in [0, 1] meaning
            W = (1 - alpha) I + alpha 11^T / M, or an (M, M) tensor.
        M: number of modalities.
    """
    global _warned_sum
    if isinstance(coupling, str):
        if coupling == "none":
            return _DIAG
        if coupling == "mean":
            return _MEAN
        if coupling == "sum":
            if not _warned_sum:
                warnings.warn(
                    "coupling='sum' is the paper's literal state summation: its transition "
                    "factors reach M and float32 overflows within ~80 steps. Use 'mean' unless "
                    "you are reproducing that ablation.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _warned_sum = True
            return Coupling("rank1", float(M))
        raise ValueError(
            f"coupling: unknown mode {coupling!r}; expected 'none', 'mean', 'sum', a float "
            "alpha in [0, 1] or an (M, M) tensor"
        )
    if isinstance(coupling, torch.Tensor):
        if coupling.shape != (M, M):
            raise ValueError(
                f"coupling: tensor has shape {tuple(coupling.shape)}, expected (M, M) = ({M}, {M})"
            )
        if not coupling.is_floating_point():
            raise ValueError(f"coupling: tensor must be floating point, got {coupling.dtype}")
        return Coupling("general", matrix=coupling)
    if isinstance(coupling, (float, int)) and not isinstance(coupling, bool):
        alpha = float(coupling)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"coupling: alpha must lie in [0, 1], got {alpha}")
        # The two ends are the cheaper forms; keeping them exact avoids a needless M x M scan.
        if alpha == 0.0:
            return _DIAG
        if alpha == 1.0:
            return _MEAN
        # Built in float64; each implementation casts it to its compute dtype.
        f64 = torch.float64
        W = (1.0 - alpha) * torch.eye(M, dtype=f64) + alpha * torch.full((M, M), 1.0 / M, dtype=f64)
        return Coupling("general", matrix=W)
    raise ValueError(
        f"coupling: expected 'none', 'mean', 'sum', a float or an (M, M) tensor, "
        f"got {type(coupling).__name__}"
    )
