"""Coupled Mamba: multimodal fusion with a coupled selective state-space scan.

Li et al., "Coupled Mamba: Enhanced Multi-modal Fusion with Coupled State Space Model",
NeurIPS 2024 (arXiv:2405.18014).
"""

from .ops import coupled_conv, coupled_conv_kernel, coupled_selective_scan

__version__ = "0.1.0"

__all__ = ["coupled_conv", "coupled_conv_kernel", "coupled_selective_scan", "__version__"]
