"""Cross-attention fusion baseline (MulT-style), the paper's efficiency comparison model.

Shapes: M modalities, B batch, L length, d_m input width of modality m, d = d_model, O outputs.

    x_m (B, L, d_m) --projection_m--> (B, L, d) --CrossModalEncoder (M(M-1) pair stacks of
    n_layers pre-norm blocks, n_heads heads)--> M x (B, L, d) --same pooling/fusion/MLP
    head--> (B, O)

Inputs, projections and heads are those of the Mamba models, so only the encoder differs.
``config.materialize_attention`` switches from ``scaled_dot_product_attention`` to explicit
softmax(QK^T) weights (what older fusion models do; the efficiency benchmark compares both).
"""

from __future__ import annotations

from ..modules.cross_modal import CrossModalEncoder
from ._base import MultimodalModel
from ._registry import register_model
from .config import CoupledMambaConfig


@register_model("cross_attention",
                description="MulT-style pairwise cross-modal attention (efficiency baseline)")
class CrossAttentionModel(MultimodalModel):
    """Projection -> :class:`~coupled_mamba.modules.CrossModalEncoder` -> pooling/fusion/MLP."""

    model_name = "cross_attention"

    def __init__(self, config: CoupledMambaConfig):
        super().__init__(config)
        c = config
        self.encoder = CrossModalEncoder(
            c.n_modalities, c.d_model, c.n_layers, n_heads=c.n_heads, ffn_mult=c.ffn_mult,
            dropout=c.dropout, norm_eps=c.norm_eps, materialize=c.materialize_attention,
            modality_names=c.modality_names,
        )

    def _describe_encoder(self) -> str:
        c = self.config
        kind = "materialized" if c.materialize_attention else "sdpa"
        pairs = c.n_modalities * (c.n_modalities - 1)
        return (f"{c.n_layers} cross-modal layers x {pairs} modality pairs "
                f"({c.n_heads} heads, {kind} attention)")
