"""MulT-style cross-modal attention encoder: the cross-attention baseline of the paper's efficiency
figures (Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language Sequences",
ACL 2019).

Shapes: M modalities, B batch, L length, d = d_model, H heads.

For every ordered pair (source k -> target m, k != m) a stack of n_layers pre-norm cross-modal
blocks refines the target stream with attention to the (fixed, low-level) source sequence:

    Z^0 = X_m + P;   Z^i = Z^{i-1} + CrossAttn(LN(Z^{i-1}), LN(X_k + P));  Z^i += FFN(LN(Z^i))

P are sinusoidal positions. The M - 1 refined streams of target m are concatenated and projected
back to d (Linear((M-1) d, d)), then a final LayerNorm: output m is (B, L, d), like the Mamba
encoders', so the same heads apply. Attention costs O(L^2) time and, with materialised weights,
O(B H L^2) memory per block: the contrast the efficiency benchmark measures.

Keys at padded steps are masked. A source without any valid key (an absent modality) contributes
nothing: its attention output is zero for that sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from ._inputs import prepare_inputs


def sinusoidal_positions(length: int, d: int, device=None, dtype=None) -> torch.Tensor:
    """(L, d) sinusoidal position encodings (Vaswani et al. 2017): sin on even, cos on odd dims."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32)
                     * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe.to(dtype or torch.get_default_dtype())


class MultiheadCrossAttention(nn.Module):
    """Multi-head attention of queries from one sequence to keys/values from another.

    ``materialize=False`` calls ``F.scaled_dot_product_attention`` (fused kernels where the device
    has them); ``materialize=True`` forms softmax(QK^T / sqrt(d_head)) explicitly, the
    (B, H, Lq, Lk) weight tensor older fusion models build. Both compute the same function.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, materialize: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise UserInputError(
                f"n_heads: d_model = {d_model} is not divisible by n_heads = {n_heads}")
        self.d_model, self.n_heads, self.dropout, self.materialize = (
            d_model, n_heads, dropout, materialize)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, query: torch.Tensor, source: torch.Tensor,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """query: (B, Lq, d); source: (B, Lk, d); key_valid: (B, Lk) bool or None -> (B, Lq, d)."""
        Bsz, Lq, d = query.shape
        H = self.n_heads

        def heads(t):  # (B, T, d) -> (B, H, T, d / H)
            return t.view(Bsz, t.shape[1], H, d // H).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(source)), heads(self.v_proj(source))
        attn_mask = has_key = None
        if key_valid is not None:
            # A sample with no valid key would give softmax over nothing (NaN): let it attend to
            # everything and zero its output below instead.
            has_key = key_valid.any(dim=1)
            attn_mask = (key_valid | ~has_key[:, None])[:, None, None, :]  # (B, 1, 1, Lk)
        p = self.dropout if self.training else 0.0
        if self.materialize:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // H)  # (B, H, Lq, Lk)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(Bsz, Lq, d))
        if has_key is not None:
            out = torch.where(has_key[:, None, None], out, 0.0)
        return out


class CrossModalBlock(nn.Module):
    """Pre-norm cross-modal transformer block: attention to the source, then a ReLU FFN."""

    def __init__(self, d_model: int, n_heads: int, *, ffn_mult: int = 4, dropout: float = 0.1,
                 norm_eps: float = 1e-5, materialize: bool = False):
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm_kv = nn.LayerNorm(d_model, eps=norm_eps)
        self.attn = MultiheadCrossAttention(d_model, n_heads, dropout, materialize)
        self.norm_ffn = nn.LayerNorm(d_model, eps=norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(ffn_mult * d_model, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor, source: torch.Tensor,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, Lq, d) target stream; source: (B, Lk, d); key_valid: (B, Lk) -> (B, Lq, d)."""
        z = z + self.drop(self.attn(self.norm_q(z), self.norm_kv(source), key_valid))
        return z + self.drop(self.ffn(self.norm_ffn(z)))


class CrossModalEncoder(nn.Module):
    """M(M-1) cross-modal stacks (one per ordered modality pair), combined per target modality.

    Same call convention as :class:`~coupled_mamba.modules.CoupledMambaEncoder`: inputs of M
    (B, L, d), optional masks and presence, output M sequences (B, L, d). Inputs at padded or
    absent steps are zeroed first; keys at those steps are masked.
    """

    def __init__(
        self,
        n_modalities: int,
        d_model: int,
        n_layers: int = 3,
        *,
        n_heads: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        norm_eps: float = 1e-5,
        materialize: bool = False,
        modality_names: Sequence[str] | None = None,
    ):
        super().__init__()
        M = n_modalities
        if M < 2:
            raise UserInputError(
                f"input_dims: cross-attention needs at least 2 modalities, got M = {M}")
        if n_layers < 1:
            raise ValueError(f"n_layers: expected >= 1, got {n_layers}")
        self.n_modalities, self.d_model, self.n_layers = M, d_model, n_layers
        self.modality_names = (list(modality_names) if modality_names is not None
                               else [f"m{i}" for i in range(M)])
        self.pairs = [(k, m) for m in range(M) for k in range(M) if k != m]
        block = dict(ffn_mult=ffn_mult, dropout=dropout, norm_eps=norm_eps, materialize=materialize)
        self.stacks = nn.ModuleDict({
            f"{k}_to_{m}": nn.ModuleList(
                CrossModalBlock(d_model, n_heads, **block) for _ in range(n_layers))
            for k, m in self.pairs
        })
        self.combine = nn.ModuleList(nn.Linear((M - 1) * d_model, d_model) for _ in range(M))
        self.norm_f = nn.ModuleList(nn.LayerNorm(d_model, eps=norm_eps) for _ in range(M))

    def forward(self, inputs, mask=None, present=None) -> list[torch.Tensor]:
        """inputs: M tensors (B, L, d) (list or dict); mask, present as in the Mamba encoder.
        Returns a list of M tensors (B, L, d)."""
        xs, _, _, valid = prepare_inputs(  # valid: (M, B, L) or None
            inputs, mask, present, self.modality_names, [self.d_model] * self.n_modalities)
        return self.forward_valid(xs, valid)

    def forward_valid(self, xs: list[torch.Tensor], valid: torch.Tensor | None
                      ) -> list[torch.Tensor]:
        """:meth:`forward` on inputs the caller has validated: M tensors (B, L, d) and the used
        steps ``valid`` (M, B, L) bool or None. The models call this after their own checks."""
        M = self.n_modalities
        pe = sinusoidal_positions(xs[0].shape[1], self.d_model, device=xs[0].device,
                                  dtype=xs[0].dtype)
        if valid is not None:
            xs = [torch.where(valid[m][..., None], x, 0.0) for m, x in enumerate(xs)]
        xs = [x + pe for x in xs]
        outs = []
        for m in range(M):
            streams = []
            for k in range(M):
                if k == m:
                    continue
                z = xs[m]
                for blk in self.stacks[f"{k}_to_{m}"]:
                    z = blk(z, xs[k], None if valid is None else valid[k])
                streams.append(z)
            outs.append(self.norm_f[m](self.combine[m](torch.cat(streams, dim=-1))))
        return outs
