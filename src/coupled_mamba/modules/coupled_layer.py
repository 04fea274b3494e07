"""Coupled Mamba mixer and layer (docs/MATH.md, section 4; the paper's Fig. 2, Eq. 5-8).

Shapes: M modalities, B batch, L length, d = d_model, E = d_inner = expand * d_model (the scan's D
channels), N = d_state, R = dt_rank, K = d_conv.

The mixer holds one Mamba mixer per modality (each with its own parameters) and runs ONE coupled
selective scan (docs/MATH.md, section 2) across all modalities; the layer adds a per-modality
pre-norm and the residual (the encoder, ``coupled_encoder.py``, stacks layers):

    h_m      = LayerNorm_m(x_m)                                  layer only: pre-norm, (B, L, d)
    u_m, z_m = in_proj_m(h_m)                                    (B, E, L) each
    u_m      = SiLU(causal_depthwise_conv1d_m(u_m))              kernel K, left zero padding
    dt_m, B_m, C_m = x_proj_m(u_m)                               widths R, N, N
    delta_m  = dt_proj_m.weight @ dt_m                           (bias goes to the scan)
    y        = coupled_selective_scan(u, delta, A, B, C, D, z, delta_bias=dt_proj.bias,
                                      delta_softplus=True, coupling=W)   all M at once
    x_m      = x_m + out_proj_m(y_m)                              layer only: residual per modality

with A_m = -exp(A_log_m). The coupling W mixes the M states before each transition
(h[t][m] = Abar[t][m] * sum_k W[m, k] h[t-1][k] + bbar[t][m]); it is the only place where the
modalities meet inside the encoder. W is "none" (identity: M independent Mamba chains), "mean"
(the paper's state summation scaled by 1/M), "sum", an alpha in [0, 1], or "learned": a per-layer
(M, M) matrix W = softmax(logits) row-wise, logits initialised at zero (so W starts at "mean").
Row-stochastic W keeps the transition contractive: sum_k W[m, k] Abar <= max Abar < 1.
An optional 0/1 neighbourhood mask restricts which modalities couple (see ARCHITECTURE.md).

Layout: the residual stream is (M, B, L, d); from in_proj to out_proj everything is
channels-first, (M, B, E, L), the scan's layout (mamba-ssm keeps (B, D, L) the same way). The
projections are one GEMM per modality over all B*L steps, so their results come out as
(M, X, B, L) in memory and are used as (M, B, X, L) views; the copies left have a reason each:
u once before the conv (its rows (m, b, e) must be one dimension), u again for x_proj (the GEMM
reads (M, E, B*L)), and y once for out_proj (back to the time-major residual stream). The scan
takes the views of z, delta, B and C as they are.

Initialisation follows mamba_ssm's ``Mamba`` block: A = -(1..N) per channel (S4D-real, via A_log),
dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored at dt_init_floor),
dt_proj weight U(-s, s) with s = dt_scale / sqrt(R), D = 1, nn.Linear/Conv1d defaults elsewhere,
and out_proj scaled by 1/sqrt(n_layers) (GPT-2's pre-norm residual rescaling, as in
mamba_ssm's ``_init_weights``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserInputError
from ..ops import IMPLS, coupled_selective_scan
from ._inputs import as_modality_list, check_sequences
from .coupling import CouplingMixin, check_coupling
from .layers import ModalityLayerNorm, ModalityLinear, causal_conv_silu, init_dt_bias_

DT_INITS = ("random", "constant")


def check_layer_options(coupling, scan_impl: str, dt_init: str) -> str | float:
    """Validate the options a coupled layer shares with ``CoupledMambaConfig``; return the
    coupling (a mode name or a float alpha).

    The rules live here once: the layer checks its arguments with this function and the config
    its fields, so whichever of the two public entry points a caller uses says the same thing.
    """
    if scan_impl not in IMPLS:
        raise UserInputError(f"scan_impl: unknown implementation {scan_impl!r}; expected one of "
                             f"{IMPLS}")
    if dt_init not in DT_INITS:
        raise UserInputError(f"dt_init: expected one of {DT_INITS}, got {dt_init!r}")
    return check_coupling(coupling)


class _CoupledSSM(CouplingMixin, nn.Module):
    """Parameters and computation shared by :class:`CoupledMambaMixer` and
    :class:`CoupledMambaLayer`: M Mamba mixers (own parameters) sharing one coupled scan, plus the
    layer's pre-norm when ``norm_eps`` is given. ``_mix`` takes and returns the modality-first
    layout (M, B, L, d) and applies neither norm nor residual.

    Parameters (leading M = one slice per modality): norm (M, d) (layer only); in_proj (M, 2E, d);
    conv_weight (M, E, K), conv_bias (M, E); x_proj (M, R + 2N, E); dt_proj (M, E, R) + bias
    (M, E); A_log (M, E, N); D (M, E); out_proj (M, d, E); coupling_logits (M, M) when
    coupling="learned".
    """

    def __init__(
        self,
        n_modalities: int,
        d_model: int,
        *,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        coupling: str | float = "mean",
        coupling_mask: Sequence[Sequence[int]] | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        residual_scale: float = 1.0,
        scan_impl: str = "auto",
        norm_eps: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        M = n_modalities
        coupling = check_layer_options(coupling, scan_impl, dt_init)
        factory = {"device": device, "dtype": dtype}
        self.n_modalities, self.d_model, self.d_state, self.d_conv = M, d_model, d_state, d_conv
        self.d_inner = E = expand * d_model
        self.dt_rank = R = dt_rank if dt_rank is not None else max(1, d_state // 8)
        self.scan_impl = scan_impl
        self._init = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                          dt_init_floor=dt_init_floor, residual_scale=residual_scale)

        # The layer's pre-norm is registered first: parameter order is observable (optimizer
        # state, seeded code that walks model.parameters()), and this is the order it always had.
        self.norm = None
        if norm_eps is not None:
            self.norm = ModalityLayerNorm(M, d_model, eps=norm_eps, **factory)
        self.in_proj = ModalityLinear(M, d_model, 2 * E, bias=bias, **factory)
        self.conv_weight = nn.Parameter(torch.empty(M, E, d_conv, **factory))
        self.conv_bias = nn.Parameter(torch.empty(M, E, **factory)) if conv_bias else None
        self.x_proj = ModalityLinear(M, E, R + 2 * d_state, bias=False, **factory)
        self.dt_proj = ModalityLinear(M, R, E, bias=True, **factory)
        self.A_log = nn.Parameter(torch.empty(M, E, d_state, **factory))
        self.D = nn.Parameter(torch.empty(M, E, **factory))
        self.out_proj = ModalityLinear(M, E, d_model, bias=bias, **factory)
        # Mamba excludes these from weight decay; optimisers may read the flag.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

        self._setup_coupling(coupling, coupling_mask, device, dtype)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation (see the module docstring)."""
        cfg = self._init
        for lin in (self.in_proj, self.x_proj, self.out_proj):
            lin.reset_parameters()
            if lin.bias is not None:
                lin.bias.zero_()  # mamba_ssm's _init_weights zeroes Linear biases
        self.out_proj.weight.mul_(cfg["residual_scale"])
        bound = 1.0 / math.sqrt(self.d_conv)  # nn.Conv1d default, fan_in = K for depthwise
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)
        std = self.dt_rank ** -0.5 * cfg["dt_scale"]
        if cfg["dt_init"] == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        init_dt_bias_(self.dt_proj.bias, cfg["dt_min"], cfg["dt_max"], cfg["dt_init_floor"])
        n = torch.arange(1, self.d_state + 1, dtype=self.A_log.dtype, device=self.A_log.device)
        self.A_log.copy_(torch.log(n).expand_as(self.A_log))
        self.D.fill_(1.0)
        if self.coupling_logits is not None:
            self.coupling_logits.zero_()

    def _mix(self, h: torch.Tensor, state=None):
        """h: (M, B, L, d) -> out_proj(coupled SSM(h)) (M, B, L, d) [, new state].

        ``state`` as in :meth:`CoupledMambaLayer.forward`; without it the conv starts from zeros.
        Between in_proj and out_proj every tensor is channels-first, (M, B, X, L): the scan's
        layout (see the module docstring for the copies this costs and why).
        """
        M, Bsz, L, d = h.shape
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        # One GEMM per modality over all B*L steps; its result is (M, 2E, B, L) in memory.
        xz = self.in_proj.columns(h.reshape(M, Bsz * L, d).transpose(1, 2)).view(M, 2 * E, Bsz, L)
        # split, not slicing: its backward concatenates the two gradients, where a slice's
        # backward writes each into a zero-filled tensor of xz's full size.
        u, z = xz.split(E, dim=1)
        u = u.transpose(1, 2).contiguous()  # (M, B, E, L): the conv's channels (m, b, e)
        z = z.transpose(1, 2)  # (M, B, E, L) view; the scan reads it as it is
        if state is None:
            u = causal_conv_silu(u, self.conv_weight, self.conv_bias)
        else:
            conv_state, ssm_state = state
            u, conv_state = causal_conv_silu(u, self.conv_weight, self.conv_bias, conv_state)
        # Selective parameters: x_proj over all B*L columns, then dt_proj on the dt rows.
        x = self.x_proj.columns(u.transpose(1, 2).reshape(M, E, Bsz * L)).view(M, R + 2 * N, Bsz, L)
        dt_in, Bm, Cm = x.split([R, N, N], dim=1)
        Bm, Cm = Bm.transpose(1, 2), Cm.transpose(1, 2)  # (M, B, N, L) views
        delta = self.dt_proj.columns(dt_in.reshape(M, R, Bsz * L), add_bias=False)
        delta = delta.view(M, E, Bsz, L).transpose(1, 2)  # bias added inside the scan
        out = coupled_selective_scan(
            u, delta, -torch.exp(self.A_log), Bm, Cm, D=self.D, z=z,
            delta_bias=self.dt_proj.bias, delta_softplus=True, coupling=self._op_coupling(),
            initial_state=None if state is None else ssm_state,
            return_last_state=state is not None, impl=self.scan_impl,
        )
        y, ssm_state = out if state is not None else (out, None)
        # Back to the residual stream's (M, B, L, d): out_proj over all B*L steps.
        y = self.out_proj(y.transpose(2, 3).reshape(M, Bsz * L, E)).view(M, Bsz, L, d)
        return y if state is None else (y, (conv_state, ssm_state))

    def allocate_cache(self, batch_size: int, device=None, dtype=None):
        """Zero (conv_state (M, B, E, K), ssm_state (M, B, E, N)) for stepping."""
        device = device if device is not None else self.D.device
        dtype = dtype if dtype is not None else self.D.dtype
        M, E = self.n_modalities, self.d_inner
        conv = torch.zeros(M, batch_size, E, self.d_conv, device=device, dtype=dtype)
        ssm = torch.zeros(M, batch_size, E, self.d_state, device=device, dtype=dtype)
        return conv, ssm

    def extra_repr(self) -> str:
        return (f"M={self.n_modalities}, d_model={self.d_model}, d_inner={self.d_inner}, "
                f"d_state={self.d_state}, dt_rank={self.dt_rank}, d_conv={self.d_conv}, "
                f"coupling={self.coupling!r}, masked={self.coupling_mask is not None}")


class CoupledMambaMixer(_CoupledSSM):
    """Drop-in coupled replacement for mamba-ssm's ``Mamba`` mixer, one per modality.

    ``mixer([x_1, ..., x_M])`` takes M tensors (B, L, d_model) and returns M tensors of the same
    shape: in_proj, causal conv, SiLU, selective parameters, ONE coupled scan across the M
    modalities, gate, out_proj. Like mamba-ssm's mixer it has no norm and no residual (the block
    around it adds those) and takes ``device``/``dtype`` factory arguments. With
    ``coupling="none"`` modality m's output is exactly a Mamba mixer's on x_m alone.

    Arguments are those of :class:`CoupledMambaLayer` without ``norm_eps``; ``layer_idx`` is
    stored for code that indexes mixers as mamba-ssm's blocks do.
    """

    def __init__(self, n_modalities: int, d_model: int, *, layer_idx: int | None = None,
                 **kwargs):
        if "norm_eps" in kwargs:
            raise TypeError("CoupledMambaMixer has no norm (norm_eps); CoupledMambaLayer has one")
        super().__init__(n_modalities, d_model, **kwargs)
        self.layer_idx = layer_idx

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """hidden_states: M tensors (B, L, d_model) sharing B, L, device -> M tensors (B, L, d)."""
        names = [f"m{i}" for i in range(self.n_modalities)]
        xs = as_modality_list(hidden_states, names, "hidden_states")
        check_sequences(xs, names, [self.d_model] * self.n_modalities, "hidden_states")
        return list(self._mix(torch.stack(xs)).unbind(0))


class PreNormResidual:
    """``forward`` and ``step`` of a coupled layer: ``x + mix(norm(x))`` on the modality-first
    layout (M, B, L, d), whole sequences or continued from a cached state. The layer provides
    ``norm`` and ``_mix(h, state=None)``."""

    def forward(self, x: torch.Tensor, state=None):
        """x: (M, B, L, d) residual streams -> (M, B, L, d).

        With ``state = (conv_state, ssm_state)`` (see the layer's ``allocate_cache`` for their
        shapes) the L steps continue a sequence whose earlier steps left that state, and the
        result is ``(out, (conv_state, ssm_state))`` with the state after the last step; the
        arguments are not modified. Zero states give the stateless forward.
        """
        if state is None:
            return x + self._mix(self.norm(x))
        out, state = self._mix(self.norm(x), state)
        return x + out, state

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """One time step of every modality: x (M, B, d) at step t and the states after step t-1
        -> (out (M, B, d), new conv_state, new ssm_state); the arguments are not modified."""
        out, (conv_state, ssm_state) = self(x[:, :, None], (conv_state, ssm_state))
        return out[:, :, 0], conv_state, ssm_state


class CoupledMambaLayer(PreNormResidual, _CoupledSSM):
    """One coupled layer: per-modality pre-norm, the coupled mixer, residual add.

    ``x + mixer(LayerNorm_m(x))`` on the modality-first layout (M, B, L, d). Parameters: those of
    :class:`CoupledMambaMixer` (which see) plus norm (M, d). States for ``forward(x, state)``
    and ``step``: conv_state (M, B, E, K), the conv inputs at steps t-K..t-1, and ssm_state
    (M, B, E, N), the coupled state h[t-1] (:meth:`allocate_cache`).
    """

    def __init__(self, n_modalities: int, d_model: int, *, norm_eps: float = 1e-5, **kwargs):
        super().__init__(n_modalities, d_model, norm_eps=norm_eps, **kwargs)
