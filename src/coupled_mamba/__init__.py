"""Coupled Mamba: multimodal fusion with a coupled selective state-space scan.

Li et al., "Coupled Mamba: Enhanced Multi-modal Fusion with Coupled State Space Model",
NeurIPS 2024 (arXiv:2405.18014).
"""

from .models import CoupledMambaConfig, create_model, from_pretrained, list_models
from .modules import CoupledMambaEncoder, CoupledMambaLayer
from .ops import coupled_conv, coupled_conv_kernel, coupled_selective_scan

__version__ = "0.1.0"

__all__ = [
    "CoupledMambaConfig",
    "CoupledMambaEncoder",
    "CoupledMambaLayer",
    "__version__",
    "coupled_conv",
    "coupled_conv_kernel",
    "coupled_selective_scan",
    "create_model",
    "from_pretrained",
    "list_models",
]
