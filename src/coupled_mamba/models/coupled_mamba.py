"""Coupled Mamba task model (docs/MATH.md, section 4) and its uncoupled fusion baselines.

Shapes: M modalities, B batch, L length, d_m input width of modality m, d = d_model, O outputs.

    x_m  (B, L, d_m) --projection_m--> (B, L, d) --CoupledMambaEncoder (n_layers, coupling W)-->
    M x (B, L, d) --pool over valid steps--> M x (B, d) --fusion--> (B, d | M d) --MLP--> (B, O)

Registered names (one class, different fixed config fields):

- ``coupled_mamba``: the paper's model (coupling from the config, default "mean").
- ``mamba_fusion``: coupling "none", i.e. M independent Mamba encoders, fused by the config's
  fusion (default learned softmax weights): the paper's "Mamba fusion" without coupling.
- ``avg_fusion`` / ``concat_fusion``: uncoupled encoders, pooled vectors averaged / concatenated
  (the paper's fusion ablation, Table 11).

With W = I the coupled scan is exactly M separate Mamba scans (docs/MATH.md, section 2), so the
uncoupled baselines share this code and differ from the coupled model in W alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..modules._inputs import prepare_inputs
from ..modules.coupled_encoder import CoupledMambaCache, CoupledMambaEncoder
from ..modules.heads import StreamingPool
from ._base import MultimodalModel
from ._registry import register_model
from .config import CoupledMambaConfig


@dataclass
class StreamState:
    """Streaming state of a :class:`CoupledMambaModel`: the encoder cache and running pooling."""

    encoder: CoupledMambaCache
    pool: StreamingPool

    @property
    def seqlen_offset(self) -> int:
        return self.encoder.seqlen_offset


@register_model("coupled_mamba", description="Coupled Mamba (coupled SSM states across modalities)")
@register_model("mamba_fusion", coupling="none",
                description="uncoupled per-modality Mamba encoders, learned softmax fusion")
@register_model("avg_fusion", coupling="none", fusion="mean",
                description="uncoupled per-modality Mamba encoders, average fusion (Table 11)")
@register_model("concat_fusion", coupling="none", fusion="concat",
                description="uncoupled per-modality Mamba encoders, concat fusion (Table 11)")
class CoupledMambaModel(MultimodalModel):
    """Projection -> :class:`~coupled_mamba.modules.CoupledMambaEncoder` -> pooling/fusion/MLP.

    See :class:`~coupled_mamba.models._base.MultimodalModel` for the call signature. Streaming:
    ``state = model.allocate_cache(B)``, then ``model.step(x_t, state)`` per time step returns the
    prediction for the prefix seen so far (equal to ``model(prefix)``).
    """

    model_name = "coupled_mamba"

    def __init__(self, config: CoupledMambaConfig):
        super().__init__(config)
        self.encoder = CoupledMambaEncoder(config.n_modalities,
                                           modality_names=config.modality_names,
                                           **self._encoder_kwargs())

    def _encoder_kwargs(self) -> dict:
        """The encoder's arguments from the config (the Mamba-2 subclass picks its layer)."""
        return self.config.mamba_encoder_kwargs()

    def _describe_encoder(self) -> str:
        c = self.config
        masked = ", masked" if c.coupling_mask is not None else ""
        kind = "Mamba layers" if c.coupling == "none" else "coupled Mamba layers"
        return (f"{c.n_layers} {kind} (d_state {c.d_state}, dt_rank {c.dt_rank}, "
                f"expand {c.expand}, d_conv {c.d_conv}, coupling {c.coupling}{masked})")

    # --- streaming -----------------------------------------------------------------------------
    def allocate_cache(self, batch_size: int, device=None, dtype=None) -> StreamState:
        """A fresh streaming state for ``batch_size`` sequences."""
        p = next(self.parameters())
        device = device if device is not None else p.device
        dtype = dtype if dtype is not None else p.dtype
        return StreamState(
            self.encoder.allocate_cache(batch_size, device, dtype),
            StreamingPool.zeros(self.config.pooling, self.config.n_modalities, batch_size,
                                self.config.d_model, device=device, dtype=dtype),
        )

    def step(self, inputs, state: StreamState, mask=None, present=None) -> torch.Tensor:
        """Consume one time step of every modality and predict from the prefix seen so far.

        Args:
            inputs: list/tuple (or dict) of M tensors (B, d_m): the raw features at step t.
            state: from :meth:`allocate_cache`; updated in place.
            mask: None, a shared (B,) bool, or M (B,) bool; False = padding step.
            present: (B, M) bool or None.

        Returns:
            (B, num_outputs): what ``model(inputs[:, :t+1], mask[:, :t+1], present)`` returns.
        """
        cfg = self.config
        xs, _, _, valid = prepare_inputs(  # valid: (M, B) or None
            inputs, mask, present, cfg.modality_names, cfg.input_dims,
            batch=state.encoder.batch_size, step=True, dtype=self.weight_dtype)
        if valid is not None:
            xs = [torch.where(valid[m][:, None], x, 0.0) for m, x in enumerate(xs)]
        projected = self.project(xs)
        outs = self.encoder.step_valid(projected, state.encoder, valid)
        state.pool.update(torch.stack(outs), valid)
        pooled, available = state.pool.result()
        return self.head.from_pooled(pooled, available.T)
