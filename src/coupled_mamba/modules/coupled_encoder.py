"""Coupled Mamba encoder: a stack of coupled layers with step-by-step inference (docs/MATH.md,
section 4; docs/ARCHITECTURE.md).

Shapes: M modalities, B batch, L length, d = d_model, E = d_inner, N = d_state, K = d_conv.
The layers are :class:`~coupled_mamba.modules.coupled_layer.CoupledMambaLayer` (Mamba-1) or
:class:`~coupled_mamba.modules.coupled_mamba2_layer.CoupledMamba2Layer` (Mamba-2); the residual
streams are (M, B, L, d) between them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._inputs import prepare_inputs
from .coupled_layer import CoupledMambaLayer
from .layers import ModalityLayerNorm


@dataclass
class CoupledMambaCache:
    """Recurrent state of a :class:`CoupledMambaEncoder` for step-by-step inference.

    conv_states: per layer (M, B, E, K), the last K inputs of each causal conv (oldest first);
        (M, B, X, K) for Mamba-2 layers.
    ssm_states: per layer (M, B, E, N), the coupled SSM state h[t] of every modality;
        (M, B, H, P, N) for Mamba-2 layers.
    seqlen_offset: number of steps consumed so far.
    """

    conv_states: list[torch.Tensor]
    ssm_states: list[torch.Tensor]
    seqlen_offset: int = 0

    @property
    def batch_size(self) -> int:
        return self.ssm_states[0].shape[1]


class CoupledMambaEncoder(nn.Module):
    """n_layers coupled layers + a final per-modality LayerNorm.

    ``layer`` is the layer class (:class:`CoupledMambaLayer` by default, or
    :class:`CoupledMamba2Layer`); ``layer_kwargs`` go to each layer.

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
        layer: type[nn.Module] = CoupledMambaLayer,
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
            layer(n_modalities, d_model, norm_eps=norm_eps, residual_scale=scale, **layer_kwargs)
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
        return self.forward_valid(xs, valid)

    def forward_valid(self, xs: list[torch.Tensor], valid: torch.Tensor | None
                      ) -> list[torch.Tensor]:
        """:meth:`forward` on inputs that the caller has validated: M tensors (B, L, d_model)
        and the used steps ``valid`` (M, B, L) bool or None (``modules._inputs.prepare_inputs``
        returns both). The models call this after their own validation."""
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
        states = [layer.allocate_cache(x.shape[1], x.device, st) for layer in self.layers]
        for t0 in range(0, x.shape[2], T):
            h = x[:, :, t0:t0 + T]
            for i, layer in enumerate(self.layers):
                h, states[i] = layer(h, states[i])
            out[:, :, t0:t0 + T] = self.norm_f(h)
        return list(out.unbind(0))

    def allocate_cache(self, batch_size: int, device=None, dtype=None) -> CoupledMambaCache:
        """A zero cache for :meth:`step` (same as the zero initial state of :meth:`forward`)."""
        states = [layer.allocate_cache(batch_size, device, dtype) for layer in self.layers]
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
        return self.step_valid(xs, cache, valid)

    def step_valid(self, xs: list[torch.Tensor], cache: CoupledMambaCache,
                   valid: torch.Tensor | None) -> list[torch.Tensor]:
        """:meth:`step` on validated inputs: M tensors (B, d_model), ``valid`` (M, B) or None."""
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
