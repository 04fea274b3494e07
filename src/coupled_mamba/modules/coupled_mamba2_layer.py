"""Coupled Mamba-2 layer: one Mamba-2 block per modality, one coupled SSD across them
(docs/MATH.md, section 7).

Shapes: M modalities, B batch, L length, d = d_model, E = d_inner = expand * d_model, H = E / P
heads of P = headdim channels, G = ngroups groups of B/C, N = d_state, K = d_conv,
X = E + 2 G N (the convolved channels).

    h_m              = LayerNorm_m(x_m)                                   pre-norm, (B, L, d)
    z, xBC, dt       = in_proj_m(h_m)                                     widths E, X, H
    xBC              = SiLU(causal_depthwise_conv1d_m(xBC))               kernel K
    x, B, C          = split(xBC)                          (B, L, H, P), (B, L, G, N), (B, L, G, N)
    y                = coupled_ssd(x, dt, A, B, C, D, dt_bias, softplus, coupling W)   all M at once
    x_m              = x_m + out_proj_m(gated_rmsnorm_m(y_m, z_m))        residual per modality

with A_m = -exp(A_log_m), one scalar per head. The coupling W is that of the Mamba-1 layer
(``coupled_layer.py``): "none", "mean", "sum", alpha or "learned", optionally masked. "none" and
the rank-one forms run as chunked matrix products; a learned, masked or alpha W takes the SSD's
exact loop, which is much slower.

Layout: time-major, (M, B, L, ...), the SSD's layout (Mamba-2 keeps (B, L, ...) as well); one
copy turns the convolved channels into rows for the depthwise conv and one turns them back.

Initialisation follows mamba-ssm's ``Mamba2``: A uniform in [1, 16] per head (via A_log),
dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored at dt_init_floor),
D = 1, norm weight 1, nn.Linear / nn.Conv1d defaults elsewhere, out_proj scaled by
``residual_scale`` (1 / sqrt(n_layers) from the encoder, as mamba-ssm's ``_init_weights``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserInputError
from ..ops import SSD_IMPLS, coupled_ssd
from .coupled_layer import PreNormResidual
from .coupling import CouplingMixin, check_coupling
from .layers import (
    ModalityGatedRMSNorm,
    ModalityLayerNorm,
    ModalityLinear,
    causal_conv_silu,
    init_dt_bias_,
)

A_INIT_RANGE = (1.0, 16.0)  # Mamba-2's range of -A per head


def ssd_chunk(n_keys: int, d_state: int, headdim: int) -> int:
    """The SSD block length T for a layer whose chain has ``n_keys`` keys (and as many queries) per
    step: M for a rank-one coupling, 1 for "none".

    Per step the intra-block products cost about T K^2 (N + P) and passing the block states about
    2 K N P, so T near 2 N P / (K (N + P)) balances them; the next power of two, in [8, 64].
    (64 steps of M = 3 keys would make (192 x 192) score blocks for a small model.)
    """
    balance = 2 * d_state * headdim / (n_keys * (d_state + headdim))
    return int(min(64, max(8, 2 ** math.ceil(math.log2(max(balance, 1.0))))))


def mamba2_heads(d_inner: int, headdim: int, ngroups: int) -> int:
    """H = d_inner / headdim, checked: UserInputError unless headdim divides d_inner and ngroups
    divides H."""
    if d_inner % headdim:
        raise UserInputError(f"headdim: {headdim} does not divide d_inner = expand * d_model = "
                             f"{d_inner}")
    H = d_inner // headdim
    if H % ngroups:
        raise UserInputError(f"ngroups: {ngroups} does not divide the {H} heads "
                             f"(d_inner {d_inner} / headdim {headdim})")
    return H


class CoupledMamba2Layer(PreNormResidual, CouplingMixin, nn.Module):
    """One coupled Mamba-2 layer: per-modality pre-norm, M Mamba-2 mixers sharing one coupled
    SSD, residual add. Same interface as :class:`~coupled_mamba.modules.CoupledMambaLayer`
    (``forward(x, state=None)``, ``step``, ``allocate_cache``, ``coupling_matrix``), so the
    encoder stacks either; its states are conv_state (M, B, X, K) and ssm_state (M, B, H, P, N).

    Parameters (leading M = one slice per modality): norm (M, d); in_proj (M, 2E + 2GN + H, d);
    conv_weight (M, X, K), conv_bias (M, X); dt_bias (M, H); A_log (M, H); D (M, H);
    gated_norm (M, E); out_proj (M, d, E); coupling_logits (M, M) when coupling="learned".
    With ``coupling="none"`` modality m's output is exactly a Mamba-2 block's on x_m alone.
    ``chunk_size`` None takes :func:`ssd_chunk`'s block length.
    """

    def __init__(
        self,
        n_modalities: int,
        d_model: int,
        *,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        coupling: str | float = "mean",
        coupling_mask: Sequence[Sequence[int]] | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        residual_scale: float = 1.0,
        chunk_size: int | None = None,
        ssd_impl: str = "auto",
        norm_eps: float = 1e-5,
        device=None,
        dtype=None,
    ):
        super().__init__()
        M = n_modalities
        coupling = check_coupling(coupling)
        if ssd_impl not in SSD_IMPLS:
            raise UserInputError(f"ssd_impl: unknown implementation {ssd_impl!r}; expected one "
                                 f"of {SSD_IMPLS}")
        factory = {"device": device, "dtype": dtype}
        self.n_modalities, self.d_model, self.d_state, self.d_conv = M, d_model, d_state, d_conv
        self.d_inner = E = expand * d_model
        self.headdim, self.ngroups = headdim, ngroups
        self.n_heads = H = mamba2_heads(E, headdim, ngroups)
        self.conv_dim = X = E + 2 * ngroups * d_state
        if chunk_size is None:
            chunk_size = ssd_chunk(1 if coupling == "none" else M, d_state, headdim)
        self.chunk_size, self.ssd_impl = chunk_size, ssd_impl
        self._init = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                          residual_scale=residual_scale)

        self.norm = ModalityLayerNorm(M, d_model, eps=norm_eps, **factory)
        self.in_proj = ModalityLinear(M, d_model, E + X + H, bias=bias, **factory)
        self.conv_weight = nn.Parameter(torch.empty(M, X, d_conv, **factory))
        self.conv_bias = nn.Parameter(torch.empty(M, X, **factory)) if conv_bias else None
        self.dt_bias = nn.Parameter(torch.empty(M, H, **factory))
        self.A_log = nn.Parameter(torch.empty(M, H, **factory))
        self.D = nn.Parameter(torch.empty(M, H, **factory))
        self.gated_norm = ModalityGatedRMSNorm(M, E, E // ngroups, eps=1e-5, **factory)
        self.out_proj = ModalityLinear(M, E, d_model, bias=bias, **factory)
        # (M, H) parameters are 2-D: the flag, not the shape, keeps them out of weight decay.
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self._setup_coupling(coupling, coupling_mask, device, dtype)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba-2's initialisation (see the module docstring)."""
        cfg = self._init
        for lin in (self.in_proj, self.out_proj):
            lin.reset_parameters()
            if lin.bias is not None:
                lin.bias.zero_()
        self.out_proj.weight.mul_(cfg["residual_scale"])
        bound = 1.0 / math.sqrt(self.d_conv)  # nn.Conv1d default, fan_in = K for depthwise
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)
        init_dt_bias_(self.dt_bias, cfg["dt_min"], cfg["dt_max"], cfg["dt_init_floor"])
        self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(*A_INIT_RANGE)))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()
        self.gated_norm.weight.fill_(1.0)
        if self.coupling_logits is not None:
            self.coupling_logits.zero_()

    def _mix(self, h: torch.Tensor, state=None):
        """h: (M, B, L, d) -> out_proj(gated_norm(coupled SSD(h))) (M, B, L, d) [, new state]."""
        M, Bsz, L, d = h.shape
        E, X, H = self.d_inner, self.conv_dim, self.n_heads
        G, N, P = self.ngroups, self.d_state, self.headdim
        zxbcdt = self.in_proj(h)  # (M, B, L, E + X + H)
        z, xbc, dt = zxbcdt.split([E, X, H], dim=-1)
        xbc = xbc.transpose(2, 3).contiguous()  # (M, B, X, L): rows (m, b, channel) for the conv
        if state is None:
            xbc = causal_conv_silu(xbc, self.conv_weight, self.conv_bias)
        else:
            conv_state, ssm_state = state
            xbc, conv_state = causal_conv_silu(xbc, self.conv_weight, self.conv_bias, conv_state)
        xbc = xbc.transpose(2, 3).contiguous()  # (M, B, L, X): the SSD's time-major layout
        xs, Bm, Cm = xbc.split([E, G * N, G * N], dim=-1)  # (M, B, L, .) each
        out = coupled_ssd(
            xs.unflatten(-1, (H, P)), dt, -torch.exp(self.A_log), Bm.unflatten(-1, (G, N)),
            Cm.unflatten(-1, (G, N)), self.D, dt_bias=self.dt_bias, dt_softplus=True,
            coupling=self._op_coupling(), chunk_size=self.chunk_size,
            initial_state=None if state is None else ssm_state,
            return_final_state=state is not None, impl=self.ssd_impl)
        y, ssm_state = out if state is not None else (out, None)
        y = self.out_proj(self.gated_norm(y.flatten(-2), z))
        return y if state is None else (y, (conv_state, ssm_state))

    def allocate_cache(self, batch_size: int, device=None, dtype=None):
        """Zero (conv_state (M, B, X, K), ssm_state (M, B, H, P, N)) for stepping."""
        device = device if device is not None else self.D.device
        dtype = dtype if dtype is not None else self.D.dtype
        M = self.n_modalities
        conv = torch.zeros(M, batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype)
        ssm = torch.zeros(M, batch_size, self.n_heads, self.headdim, self.d_state, device=device,
                          dtype=dtype)
        return conv, ssm

    def extra_repr(self) -> str:
        return (f"M={self.n_modalities}, d_model={self.d_model}, d_inner={self.d_inner}, "
                f"heads={self.n_heads}x{self.headdim}, ngroups={self.ngroups}, "
                f"d_state={self.d_state}, d_conv={self.d_conv}, coupling={self.coupling!r}, "
                f"masked={self.coupling_mask is not None}")
