"""Neural-network layers: coupled Mamba mixer, layer and encoder, cross-modal attention,
pooling/fusion heads.

Shapes: M modalities, B batch, L length, d = d_model. See docs/ARCHITECTURE.md for how they map to
the paper.
"""

from ._inputs import lengths_to_mask
from .coupled_encoder import CoupledMambaCache, CoupledMambaEncoder
from .coupled_layer import CoupledMambaLayer, CoupledMambaMixer
from .coupled_mamba2_layer import CoupledMamba2Layer
from .coupling import COUPLING_MODES, check_coupling, check_coupling_mask
from .cross_modal import CrossModalBlock, CrossModalEncoder, MultiheadCrossAttention
from .heads import (
    FUSIONS,
    POOLINGS,
    MLPHead,
    ModalityFusion,
    PoolFuseHead,
    StreamingPool,
    masked_pool,
)
from .layers import (
    ModalityGatedRMSNorm,
    ModalityLayerNorm,
    ModalityLinear,
    ModalityProjection,
)

__all__ = [
    "COUPLING_MODES",
    "FUSIONS",
    "POOLINGS",
    "CoupledMamba2Layer",
    "CoupledMambaCache",
    "CoupledMambaEncoder",
    "CoupledMambaLayer",
    "CoupledMambaMixer",
    "CrossModalBlock",
    "CrossModalEncoder",
    "MLPHead",
    "ModalityFusion",
    "ModalityGatedRMSNorm",
    "ModalityLayerNorm",
    "ModalityLinear",
    "ModalityProjection",
    "MultiheadCrossAttention",
    "PoolFuseHead",
    "StreamingPool",
    "check_coupling",
    "check_coupling_mask",
    "lengths_to_mask",
    "masked_pool",
]
