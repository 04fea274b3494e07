"""Coupled Mamba-2 task model (docs/MATH.md, section 7) and its uncoupled twin.

Shapes: M modalities, B batch, L length, d_m input width of modality m, d = d_model, O outputs.

    x_m (B, L, d_m) --projection_m--> (B, L, d) --CoupledMambaEncoder of CoupledMamba2Layers
    (n_layers, coupling W)--> M x (B, L, d) --pool--> M x (B, d) --fusion--> --MLP--> (B, O)

Registered names: ``coupled_mamba2`` (coupling from the config, default "mean") and
``mamba2_fusion`` (coupling "none": M independent Mamba-2 encoders). Everything around the
encoder (projections, head, streaming, save/load) is the Mamba-1 model's.
"""

from __future__ import annotations

from ..modules.coupled_mamba2_layer import CoupledMamba2Layer
from ._registry import register_model
from .coupled_mamba import CoupledMambaModel


@register_model("coupled_mamba2",
                description="Coupled Mamba-2 (coupled SSD states across modalities)")
@register_model("mamba2_fusion", coupling="none",
                description="uncoupled per-modality Mamba-2 encoders, learned softmax fusion")
class CoupledMamba2Model(CoupledMambaModel):
    """:class:`CoupledMambaModel` with Mamba-2 layers (one coupled SSD per layer).

    Reads the config's Mamba-2 fields (``headdim``, ``ngroups``, ``chunk_size``) and ignores the
    Mamba-1-only ones (``dt_rank``, ``dt_init``, ``dt_scale``, ``scan_impl``).
    """

    model_name = "coupled_mamba2"

    def _encoder_kwargs(self) -> dict:
        return {**self.config.mamba2_encoder_kwargs(), "layer": CoupledMamba2Layer}

    def _describe_encoder(self) -> str:
        c = self.config
        masked = ", masked" if c.coupling_mask is not None else ""
        kind = "Mamba-2 layers" if c.coupling == "none" else "coupled Mamba-2 layers"
        heads = c.d_inner // c.headdim
        return (f"{c.n_layers} {kind} ({heads} heads x {c.headdim}, ngroups {c.ngroups}, "
                f"d_state {c.d_state}, expand {c.expand}, d_conv {c.d_conv}, "
                f"coupling {c.coupling}{masked})")
