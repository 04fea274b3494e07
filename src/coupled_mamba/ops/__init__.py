"""The coupled selective scan and its global convolution form (docs/MATH.md, sections 2-3)."""

from ._reference import coupled_selective_scan_ref
from ._torch_scan import coupled_selective_scan_torch
from .conv_kernel import coupled_conv, coupled_conv_kernel
from .selective_scan import IMPLS, coupled_selective_scan, scan_backend

__all__ = [
    "IMPLS",
    "coupled_conv",
    "coupled_conv_kernel",
    "coupled_selective_scan",
    "coupled_selective_scan_ref",
    "coupled_selective_scan_torch",
    "scan_backend",
]
