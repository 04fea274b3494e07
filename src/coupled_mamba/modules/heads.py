"""Task head: per-modality pooling over valid steps, modality fusion, MLP (docs/MATH.md, section 4).

Shapes: M modalities, B batch, L length, d = d_model, O = number of outputs.

    p_m   = pool_{t valid}(x_m[t])                     max (default) | mean | last valid step
            | concat(max, mean, last)                  several modes joined by "+", width k d
    f     = sum_m w_m p_m,  w = softmax(logits) renormalised over the available modalities
            | (1/M_avail) sum_m p_m                    ("mean")
            | concat_m(p_m)  (zeros for unavailable)   ("concat", width M * d)
    out   = Linear(64, O)(Dropout(ReLU(Linear(d or M*d, 64)(f))))

A modality is *available* for a sample when it is present and has at least one valid step; an
unavailable modality's pooled vector takes no part in the fusion (a sample with no available
modality gets f = 0). The head outputs raw values / logits; losses live in the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

POOLINGS = ("max", "mean", "last")
FUSIONS = ("softmax", "mean", "concat")


def pooling_modes(pooling: str) -> tuple[str, ...]:
    """The modes of a pooling spec: one of POOLINGS or several joined by "+" ("max+last"), each
    at most once. ValueError naming the spec otherwise."""
    modes = tuple(pooling.split("+")) if isinstance(pooling, str) else ()
    if not modes or any(m not in POOLINGS for m in modes) or len(set(modes)) != len(modes):
        raise ValueError(f"pooling: unknown mode {pooling!r}; expected one of {POOLINGS} or "
                         "several of them joined by '+' (e.g. 'max+mean+last')")
    return modes


def masked_pool(x: torch.Tensor, valid: torch.Tensor | None, mode: str):
    """Pool over the valid steps.

    Args:
        x: (M, B, L, d).
        valid: (M, B, L) bool (True = use the step) or None (all steps).
        mode: "max", "mean" or "last" (the last valid step; masks are right-padded), or several
            joined by "+", whose results are concatenated in that order.

    Returns:
        pooled (M, B, k d) for k modes (zeros where no step is valid) and available (M, B) bool.
    """
    modes = pooling_modes(mode)
    if len(modes) > 1:
        parts = [masked_pool(x, valid, m) for m in modes]
        return torch.cat([p for p, _ in parts], dim=-1), parts[0][1]
    M, Bsz, L, _ = x.shape
    if valid is None:
        available = torch.ones(M, Bsz, dtype=torch.bool, device=x.device)
        if mode == "max":
            return x.amax(dim=2), available
        if mode == "mean":
            return x.mean(dim=2), available
        return x[:, :, -1], available
    count = valid.sum(dim=2)  # (M, B)
    available = count > 0
    v = valid[..., None]
    if mode == "max":
        pooled = torch.where(v, x, torch.finfo(x.dtype).min).amax(dim=2)
    elif mode == "mean":
        pooled = torch.where(v, x, 0.0).sum(dim=2) / count.clamp(min=1)[..., None].to(x.dtype)
    else:
        idx = (count - 1).clamp(min=0)[..., None, None].expand(M, Bsz, 1, x.shape[-1])
        pooled = x.gather(2, idx)[:, :, 0]
    return torch.where(available[..., None], pooled, 0.0), available


class ModalityFusion(nn.Module):
    """Fuse M pooled vectors into one; see the module docstring for the three modes.

    Parameters: logits (M,) for "softmax", initialised at zero (equal weights).
    """

    def __init__(self, n_modalities: int, d_model: int, mode: str = "softmax"):
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"fusion: unknown mode {mode!r}; expected one of {FUSIONS}")
        self.n_modalities, self.d_model, self.mode = n_modalities, d_model, mode
        self.logits = nn.Parameter(torch.zeros(n_modalities)) if mode == "softmax" else None
        if self.logits is not None:
            self.logits._no_weight_decay = True  # decay would pull towards equal weights

    @property
    def out_features(self) -> int:
        return self.n_modalities * self.d_model if self.mode == "concat" else self.d_model

    def weights(self, available: torch.Tensor) -> torch.Tensor:
        """(B, M) fusion weights, zero for unavailable modalities, rows summing to 1 (or 0 when
        nothing is available). available: (B, M) bool."""
        avail = available.to(self.logits.dtype if self.logits is not None else torch.float32)
        # softmax(logits) * avail / sum equals a softmax over the available modalities only, but
        # stays finite when none is available (a masked softmax over all -inf would give NaN).
        # The empty rows divide by 1, not by a clamped 0: the quotient rule's 1 / sum^2 would
        # overflow there and turn the logits' gradient into NaN.
        base = self.logits.softmax(0)[None, :] * avail if self.logits is not None else avail
        total = base.sum(dim=1, keepdim=True)
        return base / torch.where(total > 0, total, torch.ones_like(total))

    def forward(self, pooled: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """pooled: (M, B, d); available: (B, M) bool -> (B, d), or (B, M * d) for "concat"."""
        if self.mode == "concat":
            kept = torch.where(available.T[..., None], pooled, 0.0)
            return kept.permute(1, 0, 2).reshape(pooled.shape[1], -1)
        w = self.weights(available).to(pooled.dtype)  # (B, M)
        return torch.einsum("bm,mbd->bd", w, pooled)

    def extra_repr(self) -> str:
        return f"M={self.n_modalities}, mode={self.mode!r}"


class MLPHead(nn.Sequential):
    """Linear(d_in, hidden) -> ReLU -> Dropout -> Linear(hidden, O): (B, d_in) -> (B, O)."""

    def __init__(self, d_in: int, hidden: int, n_outputs: int, dropout: float = 0.1):
        super().__init__(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs)
        )


class PoolFuseHead(nn.Module):
    """Pooling + fusion + MLP over the M encoder outputs: (M, B, L, d) -> (B, O)."""

    def __init__(
        self,
        n_modalities: int,
        d_model: int,
        n_outputs: int,
        *,
        pooling: str = "max",
        fusion: str = "softmax",
        hidden: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        width = len(pooling_modes(pooling)) * d_model
        self.pooling = pooling
        self.fusion = ModalityFusion(n_modalities, width, fusion)
        self.mlp = MLPHead(self.fusion.out_features, hidden, n_outputs, dropout)

    def forward(self, seqs, valid: torch.Tensor | None = None) -> torch.Tensor:
        """seqs: (M, B, L, d) or a list of M (B, L, d); valid: (M, B, L) bool or None -> (B, O)."""
        x = torch.stack(list(seqs)) if isinstance(seqs, (list, tuple)) else seqs
        pooled, available = masked_pool(x, valid, self.pooling)
        return self.from_pooled(pooled, available.T)

    def from_pooled(self, pooled: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """pooled: (M, B, d); available: (B, M) bool -> (B, O)."""
        return self.mlp(self.fusion(pooled, available))


@dataclass
class StreamingPool:
    """Running pooling statistics, so a streaming model can emit a prediction after every step.

    value: (M, B, k d) running max / running sum / last valid output, one d-wide block per mode of
    ``mode`` (k modes); count: (M, B) valid steps seen. :meth:`result` equals :func:`masked_pool`
    over the steps seen so far.
    """

    mode: str
    value: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(cls, mode: str, n_modalities: int, batch_size: int, d: int, device=None, dtype=None):
        modes = pooling_modes(mode)
        dtype = dtype or torch.get_default_dtype()
        value = torch.cat([torch.full((n_modalities, batch_size, d),
                                      torch.finfo(dtype).min if m == "max" else 0.0,
                                      device=device, dtype=dtype) for m in modes], dim=-1)
        count = torch.zeros(n_modalities, batch_size, dtype=torch.long, device=device)
        return cls(mode, value, count)

    def _blocks(self, t: torch.Tensor):
        modes = pooling_modes(self.mode)
        return zip(modes, t.chunk(len(modes), dim=-1), strict=True)

    def update(self, x: torch.Tensor, valid: torch.Tensor | None) -> None:
        """x: (M, B, d) outputs at one step; valid: (M, B) bool or None."""
        v = torch.ones_like(self.count, dtype=torch.bool) if valid is None else valid
        new = []
        for mode, old in self._blocks(self.value):
            new.append(torch.maximum(old, x) if mode == "max" else old + x if mode == "mean"
                       else x)
        self.value = torch.where(v[..., None], torch.cat(new, dim=-1), self.value)
        self.count = self.count + v.long()

    def result(self):
        """pooled (M, B, k d) and available (M, B) bool, as :func:`masked_pool` returns them."""
        available = self.count > 0
        blocks = [b / self.count.clamp(min=1)[..., None].to(b.dtype) if mode == "mean" else b
                  for mode, b in self._blocks(self.value)]
        pooled = torch.cat(blocks, dim=-1)
        return torch.where(available[..., None], pooled, 0.0), available
