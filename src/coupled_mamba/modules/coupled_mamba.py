"""Coupled Mamba mixer, layer and encoder (docs/MATH.md, section 4; the paper's Fig. 2, Eq. 5-8).

Shapes: M modalities, B batch, L length, d = d_model, E = d_inner = expand * d_model (the scan's D
channels), N = d_state, R = dt_rank, K = d_conv.

The mixer holds one Mamba mixer per modality (each with its own parameters) and runs ONE coupled
selective scan (docs/MATH.md, section 2) across all modalities; the layer adds a per-modality
pre-norm and the residual, and the encoder stacks layers:

    h_m      = LayerNorm_m(x_m)                                  layer only: pre-norm, (B, L, d)
    u_m, z_m = in_proj_m(h_m)                                    (B, L, E) each
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

Initialisation follows mamba_ssm's ``Mamba`` block: A = -(1..N) per channel (S4D-real, via A_log),
dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored at dt_init_floor),
dt_proj weight U(-s, s) with s = dt_scale / sqrt(R), D = 1, nn.Linear/Conv1d defaults elsewhere,
and out_proj scaled by 1/sqrt(n_layers) (GPT-2's pre-norm residual rescaling, as in
mamba_ssm's ``_init_weights``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from ..ops import IMPLS, coupled_selective_scan
from ..ops._coupling import resolve_coupling
from ._inputs import as_modality_list, check_sequences, prepare_inputs
from .layers import ModalityLayerNorm, ModalityLinear

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


@dataclass
class CoupledMambaCache:
    """Recurrent state of a :class:`CoupledMambaEncoder` for step-by-step inference.

    conv_states: per layer (M, B, E, K), the last K inputs of each causal conv (oldest first).
    ssm_states: per layer (M, B, E, N), the coupled SSM state h[t] of every modality.
    seqlen_offset: number of steps consumed so far.
    """

    conv_states: list[torch.Tensor]
    ssm_states: list[torch.Tensor]
    seqlen_offset: int = 0

    @property
    def batch_size(self) -> int:
        return self.ssm_states[0].shape[1]


class _CoupledSSM(nn.Module):
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
        if scan_impl not in IMPLS:
            raise ValueError(f"scan_impl: unknown implementation {scan_impl!r}; expected {IMPLS}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init: expected 'random' or 'constant', got {dt_init!r}")
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

        self.coupling = check_coupling(coupling)
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
        # Derived from the config, so not saved with the weights (persistent=False).
        self.register_buffer("coupling_mask", mask, persistent=False)
        self.register_buffer("fixed_coupling", fixed, persistent=False)
        self.coupling_logits = None
        if self.coupling == "learned":
            self.coupling_logits = nn.Parameter(torch.zeros(M, M, **factory))
            # Decay would pull the learned W towards uniform "mean" coupling: not a wanted prior.
            self.coupling_logits._no_weight_decay = True
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
        lo, hi = math.log(cfg["dt_min"]), math.log(cfg["dt_max"])
        dt = torch.exp(torch.rand_like(self.dt_proj.bias) * (hi - lo) + lo)
        dt = dt.clamp(min=cfg["dt_init_floor"])
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        n = torch.arange(1, self.d_state + 1, dtype=self.A_log.dtype, device=self.A_log.device)
        self.A_log.copy_(torch.log(n).expand_as(self.A_log))
        self.D.fill_(1.0)
        if self.coupling_logits is not None:
            self.coupling_logits.zero_()

    def coupling_matrix(self) -> torch.Tensor:
        """The dense (M, M) coupling W this layer's scan uses (differentiable when learned)."""
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

    def _scan_coupling(self):
        # Scalar forms let the scan pick its cheap paths (diagonal, or one rank-1 scan).
        if self.coupling_logits is None and self.fixed_coupling is None:
            return self.coupling
        return self.coupling_matrix().to(self.A_log.dtype)

    def _ssm(self, u, z, initial_state=None):
        """Selective parameters + coupled scan. u, z: (M, B, T, E) -> y (M, B, T, E) [, h]."""
        R, N = self.dt_rank, self.d_state
        dt_low, Bm, Cm = self.x_proj(u).split([R, N, N], dim=-1)
        delta = self.dt_proj(dt_low, add_bias=False)  # bias added inside the scan, before softplus

        def lead(t):  # (M, B, T, X) -> (M, B, X, T), the scan's layout
            return t.transpose(-1, -2).contiguous()

        out = coupled_selective_scan(
            lead(u), lead(delta), -torch.exp(self.A_log), lead(Bm), lead(Cm),
            D=self.D, z=lead(z), delta_bias=self.dt_proj.bias, delta_softplus=True,
            coupling=self._scan_coupling(), initial_state=initial_state,
            return_last_state=initial_state is not None, impl=self.scan_impl,
        )
        if initial_state is None:
            return out.transpose(-1, -2)
        y, h = out
        return y.transpose(-1, -2), h

    def _mix(self, h: torch.Tensor, state=None):
        """h: (M, B, L, d) -> out_proj(coupled SSM(h)) (M, B, L, d) [, new state].

        ``state`` as in :meth:`CoupledMambaLayer.forward`; without it the conv starts from zeros.
        """
        M, Bsz, L, _ = h.shape
        E, K = self.d_inner, self.d_conv
        u, z = self.in_proj(h).chunk(2, dim=-1)  # (M, B, L, E) each
        # Depthwise causal conv of all M*E channels in one call: channel (m, e) has its own kernel.
        u = u.permute(1, 0, 3, 2).reshape(Bsz, M * E, L)
        if state is None:
            pad = K - 1  # causal: zero history, keep the first L outputs
        else:
            conv_state, ssm_state = state  # the history is the last K - 1 conv inputs
            hist = conv_state[..., 1:].permute(1, 0, 2, 3).reshape(Bsz, M * E, K - 1)
            u = torch.cat([hist.to(u.dtype), u], dim=-1)  # (B, M*E, K - 1 + L)
            conv_state = u[..., -K:].reshape(Bsz, M, E, K).transpose(0, 1).contiguous()
            pad = 0
        bias = None if self.conv_bias is None else self.conv_bias.reshape(M * E)
        u = F.conv1d(u, self.conv_weight.reshape(M * E, 1, K), bias, padding=pad, groups=M * E)
        u = F.silu(u[..., :L]).reshape(Bsz, M, E, L).permute(1, 0, 3, 2)  # (M, B, L, E)
        if state is None:
            return self.out_proj(self._ssm(u, z))
        y, ssm_state = self._ssm(u, z, initial_state=ssm_state)
        return self.out_proj(y), (conv_state, ssm_state)

    def allocate_state(self, batch_size: int, device=None, dtype=None):
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


class CoupledMambaLayer(_CoupledSSM):
    """One coupled layer: per-modality pre-norm, the coupled mixer, residual add.

    ``x + mixer(LayerNorm_m(x))`` on the modality-first layout (M, B, L, d). Parameters: those of
    :class:`CoupledMambaMixer` (which see) plus norm (M, d).
    """

    def __init__(self, n_modalities: int, d_model: int, *, norm_eps: float = 1e-5, **kwargs):
        super().__init__(n_modalities, d_model, norm_eps=norm_eps, **kwargs)

    def forward(self, x: torch.Tensor, state=None):
        """x: (M, B, L, d) residual streams -> (M, B, L, d).

        With ``state = (conv_state (M, B, E, K), ssm_state (M, B, E, N))`` (see
        :meth:`allocate_state`) the L steps continue a sequence whose earlier steps left that
        state, and the result is ``(out, (conv_state, ssm_state))`` with the state after the last
        step; the arguments are not modified. Zero states give the stateless forward.
        """
        if state is None:
            return x + self._mix(self.norm(x))
        out, state = self._mix(self.norm(x), state)
        return x + out, state

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """One time step of every modality.

        Args:
            x: (M, B, d) inputs at step t.
            conv_state: (M, B, E, K) conv inputs at steps t-K..t-1.
            ssm_state: (M, B, E, N) coupled state h[t-1].

        Returns:
            (out (M, B, d), new conv_state, new ssm_state); the states are new tensors, the
            arguments are not modified.
        """
        out, (conv_state, ssm_state) = self(x[:, :, None], (conv_state, ssm_state))
        return out[:, :, 0], conv_state, ssm_state


class CoupledMambaEncoder(nn.Module):
    """n_layers coupled layers + a final per-modality LayerNorm.

    Padding and missing modalities: the input of modality m at step t is replaced by zeros when
    the step is padding (mask False) or the modality is absent (present False), before the first
    layer. Everything after that is causal (conv, scan) or per-step (norms, projections), so right
    padding never changes valid steps; an absent modality is a zero-input chain whose state still
    decays and is coupled like any other (see docs/ARCHITECTURE.md).

    ``inference_chunk`` (T, default 128): when autograd is off (``torch.no_grad`` /
    ``inference_mode``) and L > T, the layers run over T steps at a time with each layer's conv
    and SSM state carried across chunks, which bounds the working memory of the layers by T
    instead of L. The result equals the whole-sequence forward up to float rounding. ``None``
    disables it; training (autograd on) always runs whole sequences.
    """

    def __init__(
        self,
        n_modalities: int,
        d_model: int,
        n_layers: int = 3,
        *,
        modality_names: Sequence[str] | None = None,
        norm_eps: float = 1e-5,
        rescale_prenorm_residual: bool = True,
        inference_chunk: int | None = 128,
        **layer_kwargs,
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers: expected >= 1, got {n_layers}")
        if inference_chunk is not None and (isinstance(inference_chunk, bool)
                                            or not isinstance(inference_chunk, int)
                                            or inference_chunk < 1):
            raise ValueError(f"inference_chunk: expected None or an int >= 1, "
                             f"got {inference_chunk!r}")
        self.inference_chunk = inference_chunk
        self.n_modalities, self.d_model, self.n_layers = n_modalities, d_model, n_layers
        self.modality_names = (list(modality_names) if modality_names is not None
                               else [f"m{i}" for i in range(n_modalities)])
        if len(self.modality_names) != n_modalities:
            raise ValueError(f"modality_names: got {len(self.modality_names)} names, "
                             f"expected M = {n_modalities}")
        scale = 1.0 / math.sqrt(n_layers) if rescale_prenorm_residual else 1.0
        self.layers = nn.ModuleList(
            CoupledMambaLayer(n_modalities, d_model, norm_eps=norm_eps, residual_scale=scale,
                              **layer_kwargs)
            for _ in range(n_layers)
        )
        self.norm_f = ModalityLayerNorm(n_modalities, d_model, eps=norm_eps)

    def forward(self, inputs, mask=None, present=None) -> list[torch.Tensor]:
        """Encode M aligned sequences.

        Args:
            inputs: list/tuple of M tensors (B, L, d_model), or a dict keyed by modality name.
            mask: None, a shared (B, L) bool, or a list/dict of M (B, L) bool (True = valid;
                right padding).
            present: (B, M) bool, False for a missing modality; None = all present.

        Returns:
            list of M tensors (B, L, d_model) (views of one stacked tensor).
        """
        xs, _, _, valid = prepare_inputs(  # valid: (M, B, L) or None
            inputs, mask, present, self.modality_names, [self.d_model] * self.n_modalities)
        x = torch.stack(xs)
        if valid is not None:
            x = torch.where(valid[..., None], x, x.new_zeros(()))  # where, not *: NaN-safe
        T = self.inference_chunk
        if T is None or x.shape[2] <= T or torch.is_grad_enabled():
            for layer in self.layers:
                x = layer(x)
            return list(self.norm_f(x).unbind(0))
        # Without autograd, run all layers over T steps at a time and carry each layer's conv
        # and SSM state: the layers' (M, B, L, E)-sized intermediates then exist for T steps
        # only, so working memory no longer grows with L beyond the (M, B, L, d) streams.
        out = torch.empty_like(x)
        half = x.dtype in (torch.float16, torch.bfloat16)  # the scan's state stays fp32 then
        st = torch.float32 if half else x.dtype
        states = [layer.allocate_state(x.shape[1], x.device, st) for layer in self.layers]
        for t0 in range(0, x.shape[2], T):
            h = x[:, :, t0:t0 + T]
            for i, layer in enumerate(self.layers):
                h, states[i] = layer(h, states[i])
            out[:, :, t0:t0 + T] = self.norm_f(h)
        return list(out.unbind(0))

    def allocate_cache(self, batch_size: int, device=None, dtype=None) -> CoupledMambaCache:
        """A zero cache for :meth:`step` (same as the zero initial state of :meth:`forward`)."""
        states = [layer.allocate_state(batch_size, device, dtype) for layer in self.layers]
        return CoupledMambaCache([c for c, _ in states], [s for _, s in states])

    def step(self, inputs, cache: CoupledMambaCache, mask=None, present=None) -> list[torch.Tensor]:
        """Consume one time step of every modality; equals :meth:`forward` at that step.

        Args:
            inputs: list/tuple of M tensors (B, d_model) (or a dict), the inputs at step t.
            cache: from :meth:`allocate_cache`; updated in place (new state tensors are stored).
            mask: None, a shared (B,) bool, or a list/dict of M (B,) bool: False = padding step.
            present: (B, M) bool or None.

        Returns:
            list of M tensors (B, d_model): the encoder outputs at step t.
        """
        xs, _, _, valid = prepare_inputs(  # valid: (M, B) or None
            inputs, mask, present, self.modality_names, [self.d_model] * self.n_modalities,
            batch=cache.batch_size, step=True)
        x = torch.stack(xs)
        if valid is not None:
            x = torch.where(valid[..., None], x, x.new_zeros(()))
        for i, layer in enumerate(self.layers):
            x, cache.conv_states[i], cache.ssm_states[i] = layer.step(
                x, cache.conv_states[i], cache.ssm_states[i])
        cache.seqlen_offset += 1
        return list(self.norm_f(x).unbind(0))

    def coupling_matrices(self) -> list[torch.Tensor]:
        """The (M, M) coupling W of every layer."""
        return [layer.coupling_matrix() for layer in self.layers]
