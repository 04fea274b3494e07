"""Coupled Mamba: multimodal fusion with a coupled selective state-space scan.

Li et al., "Coupled Mamba: Enhanced Multi-modal Fusion with Coupled State Space Model",
NeurIPS 2024 (arXiv:2405.18014). Interface levels, lowest first: the ops
(:func:`coupled_selective_scan`; :func:`coupled_ssd` for Mamba-2), the mixer and layers
(:class:`CoupledMambaMixer`, :class:`CoupledMambaLayer`, :class:`CoupledMamba2Layer`), the
encoder (:class:`CoupledMambaEncoder`) and the task models
(:func:`create_model`, :class:`CoupledMambaModel`). The core needs only torch, numpy and
safetensors; the command line (``python -m coupled_mamba``) needs the ``[cli]`` extra.
"""

from .models import (
    CoupledMambaConfig,
    CoupledMambaModel,
    create_model,
    from_pretrained,
    list_models,
)
from .modules import (
    CoupledMamba2Layer,
    CoupledMambaEncoder,
    CoupledMambaLayer,
    CoupledMambaMixer,
)
from .ops import coupled_selective_scan, coupled_ssd, scan_backend

__version__ = "0.1.0"

__all__ = [
    "CoupledMamba2Layer",
    "CoupledMambaConfig",
    "CoupledMambaEncoder",
    "CoupledMambaLayer",
    "CoupledMambaMixer",
    "CoupledMambaModel",
    "__version__",
    "coupled_selective_scan",
    "coupled_ssd",
    "create_model",
    "from_pretrained",
    "list_models",
    "scan_backend",
]
