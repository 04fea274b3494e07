"""Model-level coupling options of the coupled layers (docs/MATH.md, section 2).

M is the number of modalities. A layer's coupling W is "none", "mean", "sum", a float alpha in
[0, 1] or "learned" (a per-layer row-softmax of zero-initialised logits), optionally restricted by
an (M, M) 0/1 neighbourhood mask. The config and the layers validate with these functions, so the
accepted values and their messages live here only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserInputError
from ..ops._coupling import resolve_coupling

COUPLING_MODES = ("none", "mean", "sum", "learned")


def check_coupling(coupling, arg: str = "coupling") -> str | float:
    """Validate a model-level coupling: one of COUPLING_MODES or a float alpha in [0, 1]."""
    if isinstance(coupling, str):
        if coupling not in COUPLING_MODES:
            raise UserInputError(
                f"{arg}: unknown mode {coupling!r}; expected one of {COUPLING_MODES} "
                "or a float alpha in [0, 1]"
            )
        return coupling
    if isinstance(coupling, (int, float)) and not isinstance(coupling, bool):
        alpha = float(coupling)
        if not 0.0 <= alpha <= 1.0:
            raise UserInputError(f"{arg}: alpha must lie in [0, 1], got {alpha}")
        return alpha
    raise UserInputError(
        f"{arg}: expected one of {COUPLING_MODES} or a float in [0, 1], "
        f"got {type(coupling).__name__}"
    )


def check_coupling_mask(mask, n_modalities: int, arg: str = "coupling_mask") -> list[list[int]]:
    """Validate an (M, M) 0/1 neighbourhood mask with ones on the diagonal; return it as lists.

    mask[m][k] = 1 lets modality m read the state of modality k. The diagonal must be 1: a chain
    always carries its own state (otherwise a row could be empty and W undefined).
    """
    M = n_modalities
    if isinstance(mask, torch.Tensor):
        mask = mask.tolist()
    try:
        rows = [list(r) for r in mask]
    except TypeError:
        raise UserInputError(f"{arg}: expected an (M, M) = ({M}, {M}) nested list of 0/1") from None
    if len(rows) != M or any(len(r) != M for r in rows):
        shape = (len(rows), *sorted({len(r) for r in rows}))
        raise UserInputError(f"{arg}: got shape {shape}, expected (M, M) = ({M}, {M})")
    out = []
    for m, r in enumerate(rows):
        if any(v not in (0, 1) for v in r):  # bools and 0.0/1.0 compare equal to 0/1
            raise UserInputError(f"{arg}: row {m} = {r} has entries other than 0/1")
        out.append([int(v) for v in r])
        if out[m][m] != 1:
            raise UserInputError(
                f"{arg}: diagonal entry [{m}][{m}] must be 1 (a chain keeps its own state)")
    return out


def masked_coupling_matrix(coupling: str | float, mask: torch.Tensor) -> torch.Tensor:
    """Dense W of a fixed coupling restricted to a neighbourhood mask, float64 (M, M).

    Entries outside the mask are zeroed and each row is rescaled to keep its original row sum
    (1 for "mean"/alpha/"none", M for "sum"), so the masked W stays as contractive as the full one.
    """
    M = mask.shape[0]
    W = resolve_coupling(coupling, M).dense(M, dtype=torch.float64)
    masked = W * mask.to(torch.float64)
    return masked * (W.sum(1, keepdim=True) / masked.sum(1, keepdim=True))


class CouplingMixin:
    """The coupling of a coupled layer (Mamba-1's and Mamba-2's): its buffers, its learned logits
    and the W it hands to the op. The layer calls :meth:`_setup_coupling` in ``__init__`` after
    registering ``A_log`` and ``D`` (whose device and dtype W follows).

    Registers: buffers ``coupling_mask`` (M, M) bool or None and ``fixed_coupling`` (M, M) or
    None (derived from the config, not saved); parameter ``coupling_logits`` (M, M) when
    coupling="learned" (W = row-softmax of the logits, zero-initialised: W starts at "mean").
    """

    def _setup_coupling(self, coupling: str | float, coupling_mask, device, dtype) -> None:
        M = self.n_modalities
        self.coupling = coupling
        mask = None
        if coupling_mask is not None:
            mask = torch.tensor(check_coupling_mask(coupling_mask, M), dtype=torch.bool)
            if bool(mask.all()):
                mask = None  # no restriction: keep the cheaper scalar forms
        fixed = None
        if mask is not None and self.coupling != "learned":
            fixed = masked_coupling_matrix(self.coupling, mask).to(
                device=device, dtype=dtype if dtype is not None else torch.float32)
            mask = mask.to(device)
        self.register_buffer("coupling_mask", mask, persistent=False)
        self.register_buffer("fixed_coupling", fixed, persistent=False)
        self.coupling_logits = None
        if self.coupling == "learned":
            self.coupling_logits = nn.Parameter(torch.zeros(M, M, device=device, dtype=dtype))
            # Decay would pull the learned W towards uniform "mean" coupling: not a wanted prior.
            self.coupling_logits._no_weight_decay = True

    def coupling_matrix(self) -> torch.Tensor:
        """The dense (M, M) coupling W this layer's op uses (differentiable when learned)."""
        M = self.n_modalities
        if self.coupling_logits is not None:
            logits = self.coupling_logits
            if self.coupling_mask is not None:
                logits = logits.masked_fill(~self.coupling_mask, float("-inf"))
            return logits.softmax(dim=-1)
        if self.fixed_coupling is not None:
            return self.fixed_coupling
        return resolve_coupling(self.coupling, M).dense(M, device=self.D.device,
                                                        dtype=self.D.dtype)

    def _op_coupling(self):
        """The op's ``coupling`` argument: the scalar forms let it take its cheap paths
        (diagonal, or one rank-one chain); a learned or masked W goes as its matrix."""
        if self.coupling_logits is None and self.fixed_coupling is None:
            return self.coupling
        return self.coupling_matrix().to(self.A_log.dtype)
