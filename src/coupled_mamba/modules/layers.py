"""Per-modality building blocks: M independent layers stored as one stacked parameter each.

Shapes: M modalities, B batch, L length, d / d_in / d_out feature widths.

The coupled layer (docs/MATH.md, section 4) gives every modality its own projections and norms.
Holding the M copies in one (M, ...) parameter instead of a ModuleList of M modules turns M small
matmuls into one batched matmul (``torch.bmm``) and keeps the modality axis first, which is the
layout the coupled scan wants. Slice m of each parameter is exactly the parameter an ``nn.Linear``
/ ``nn.LayerNorm`` of modality m would hold, initialised with the same distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ModalityLinear(nn.Module):
    """M independent ``nn.Linear(d_in, d_out)`` layers applied to a modality-first tensor.

    Parameters: weight (M, d_out, d_in), bias (M, d_out) or None.
    """

    def __init__(self, n_modalities: int, d_in: int, d_out: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.n_modalities, self.d_in, self.d_out = n_modalities, d_in, d_out
        self.weight = nn.Parameter(torch.empty(n_modalities, d_out, d_in, **factory))
        self.bias = nn.Parameter(torch.empty(n_modalities, d_out, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(d_in), 1/sqrt(d_in)).
        bound = 1.0 / math.sqrt(self.d_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        """x: (M, ..., d_in) -> (M, ..., d_out). ``add_bias=False`` skips the bias (Mamba's dt
        projection hands its bias to the scan as ``delta_bias``)."""
        M = self.n_modalities
        flat = x.reshape(M, -1, self.d_in)
        if self.bias is not None and add_bias:
            out = torch.baddbmm(self.bias[:, None, :], flat, self.weight.transpose(1, 2))
        else:
            out = torch.bmm(flat, self.weight.transpose(1, 2))
        return out.reshape(*x.shape[:-1], self.d_out)

    def columns(self, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        """x: (M, d_in, P) column vectors -> (M, d_out, P): the projection in the channels-first
        layout, one GEMM per modality whatever the strides of x (a transposed view is free)."""
        if self.bias is not None and add_bias:
            return torch.baddbmm(self.bias[:, :, None], self.weight, x)
        return torch.bmm(self.weight, x)

    def extra_repr(self) -> str:
        return f"M={self.n_modalities}, d_in={self.d_in}, d_out={self.d_out}, " \
               f"bias={self.bias is not None}"


class ModalityLayerNorm(nn.Module):
    """M independent ``nn.LayerNorm(d)`` over the last dim of a modality-first tensor.

    Parameters: weight (M, d) (ones), bias (M, d) (zeros).
    """

    def __init__(self, n_modalities: int, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.n_modalities, self.d, self.eps = n_modalities, d, eps
        self.weight = nn.Parameter(torch.ones(n_modalities, d, **factory))
        self.bias = nn.Parameter(torch.zeros(n_modalities, d, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, ..., d) -> (M, ..., d)."""
        shape = (self.n_modalities,) + (1,) * (x.dim() - 2) + (self.d,)
        y = F.layer_norm(x, (self.d,), eps=self.eps)
        return torch.addcmul(self.bias.view(shape), y, self.weight.view(shape))

    def extra_repr(self) -> str:
        return f"M={self.n_modalities}, d={self.d}, eps={self.eps}"


class FeatureStandardize(nn.Module):
    """Per-feature affine standardisation ``(x - shift) * scale`` of one modality's raw inputs,
    optionally followed by a fixed projection onto ``rank`` principal components.

    (..., d_m) -> (..., d_m), or (..., rank) when ``rank`` > 0. Identity (and the first ``rank``
    coordinates) until :meth:`set_statistics` is called with statistics of the training split; the
    buffers are saved with the weights, so a loaded model transforms new data exactly as it did in
    training. Features of very different scales (omics views, unscaled acoustic descriptors)
    otherwise let a few columns dominate the first linear layer's gradient. The projection is
    fixed, not learned: hundreds of mostly-noise features give a small training set enough
    directions to memorise it by its noise (docs/TRAINING.md, finding 13).
    """

    def __init__(self, d: int, rank: int = 0):
        super().__init__()
        if not 0 <= rank <= d:
            raise ValueError(f"rank: expected 0 <= rank <= d = {d}, got {rank}")
        self.d, self.rank = d, rank
        self.register_buffer("shift", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        if rank:
            self.register_buffer("components", torch.eye(d, rank))  # (d, rank)

    @property
    def out_features(self) -> int:
        return self.rank or self.d

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6,
                       components: torch.Tensor | None = None) -> None:
        """mean, std: (d_m,). Columns with std <= eps (constant features) are only centred.
        components: (d_m, rank) orthonormal directions in the standardised feature space; needed
        exactly when ``rank`` > 0."""
        std = torch.as_tensor(std, dtype=self.scale.dtype)
        self.shift.copy_(torch.as_tensor(mean, dtype=self.shift.dtype))
        self.scale.copy_(torch.where(std > eps, 1.0 / std.clamp_min(eps), torch.ones_like(std)))
        if (components is None) != (self.rank == 0):
            raise ValueError(f"set_statistics: rank {self.rank} needs "
                             f"{'(d, rank) components' if self.rank else 'no components'}")
        if components is not None:
            comp = torch.as_tensor(components, dtype=self.components.dtype)
            if comp.shape != self.components.shape:
                raise ValueError(f"set_statistics: components must have shape "
                                 f"{tuple(self.components.shape)}, got {tuple(comp.shape)}")
            self.components.copy_(comp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.shift.to(x.dtype)) * self.scale.to(x.dtype)
        return z @ self.components.to(x.dtype) if self.rank else z

    def extra_repr(self) -> str:
        return f"d={self.d}" + (f", rank={self.rank}" if self.rank else "")


class ModalityProjection(nn.Sequential):
    """Input projection of one modality (docs/MATH.md, section 4):
    Linear(d_m, hidden) -> LayerNorm -> ReLU -> Linear(hidden, d_model) -> LayerNorm.

    (B, L, d_m) -> (B, L, d_model). Feature widths differ between modalities, so each modality has
    its own module (a ModuleList in the models) rather than a stacked parameter.
    """

    def __init__(self, d_in: int, hidden: int, d_model: int, eps: float = 1e-5):
        super().__init__(
            nn.Linear(d_in, hidden),
            nn.LayerNorm(hidden, eps=eps),
            nn.ReLU(),
            nn.Linear(hidden, d_model),
            nn.LayerNorm(d_model, eps=eps),
        )


class ModalityGatedRMSNorm(nn.Module):
    """M independent gated RMS norms, Mamba-2's norm before out_proj (mamba-ssm's
    ``RMSNormGated`` with ``norm_before_gate=False``): ``rmsnorm(y * silu(z)) * weight``, the RMS
    taken over groups of ``group_size`` channels.

    Parameters: weight (M, E) (ones).
    """

    def __init__(self, n_modalities: int, d: int, group_size: int, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        if d % group_size:
            raise ValueError(f"group_size: {group_size} does not divide the {d} channels")
        self.n_modalities, self.d, self.group_size, self.eps = n_modalities, d, group_size, eps
        self.weight = nn.Parameter(torch.ones(n_modalities, d, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, z: (M, ..., E) -> (M, ..., E)."""
        g = (y * F.silu(z)).unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        shape = (self.n_modalities,) + (1,) * (y.dim() - 2) + (self.d,)
        return g.flatten(-2) * self.weight.view(shape)

    def extra_repr(self) -> str:
        return f"M={self.n_modalities}, d={self.d}, group_size={self.group_size}, eps={self.eps}"


def causal_conv_silu(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     conv_state: torch.Tensor | None = None):
    """SiLU of M per-modality causal depthwise convolutions, as the Mamba blocks apply them.

    Args:
        u: (M, B, C, L) inputs, contiguous: row (m, b, c) is one channel's sequence.
        weight: (M, C, K) kernels; bias: (M, C) or None.
        conv_state: None (zero history) or (M, B, C, K), the last K inputs before these L steps.

    Returns:
        (M, B, C, L); with ``conv_state`` also the new state (M, B, C, K) after the last step.
    """
    M, Bsz, C, L = u.shape
    K = weight.shape[-1]
    pad = K - 1  # causal: zero history, keep the first L outputs
    new_state = None
    if conv_state is not None:  # the history is the last K - 1 inputs
        u = torch.cat([conv_state[..., 1:].to(u.dtype), u], dim=-1)  # (M, B, C, K - 1 + L)
        new_state = u[..., -K:].contiguous()
        pad = 0
    # All M*B*C rows in one call: row (m, b, c) has channel (m, c)'s kernel, so the (M, C, K)
    # kernel is repeated over the batch (cheap next to the rows).
    rows = M * Bsz * C
    w = weight[:, None].expand(M, Bsz, C, K).reshape(rows, 1, K)
    b = None if bias is None else bias[:, None].expand(M, Bsz, C).reshape(rows)
    out = F.silu(F.conv1d(u.reshape(1, rows, -1), w, b, padding=pad, groups=rows)[..., :L])
    out = out.view(M, Bsz, C, L)
    return out if conv_state is None else (out, new_state)


@torch.no_grad()
def init_dt_bias_(bias: torch.Tensor, dt_min: float, dt_max: float, floor: float) -> None:
    """Mamba's step-size bias, in place: softplus^-1(dt) with dt log-uniform in [dt_min, dt_max]
    and floored at ``floor``, so that softplus(bias) starts at those step sizes."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand_like(bias) * (hi - lo) + lo).clamp(min=floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))
