"""The coupled selective scan, its global convolution form and the coupled SSD of Mamba-2
(docs/MATH.md, sections 2, 3 and 7)."""

from ._reference import coupled_selective_scan_ref
from ._ssd_chunked import coupled_ssd_chunked
from ._ssd_reference import coupled_ssd_ref
from ._torch_scan import coupled_selective_scan_torch
from .conv_kernel import coupled_conv, coupled_conv_kernel
from .selective_scan import IMPLS, coupled_selective_scan, scan_backend
from .ssd import SSD_IMPLS, coupled_ssd

__all__ = [
    "IMPLS",
    "SSD_IMPLS",
    "coupled_conv",
    "coupled_conv_kernel",
    "coupled_selective_scan",
    "coupled_selective_scan_ref",
    "coupled_selective_scan_torch",
    "coupled_ssd",
    "coupled_ssd_chunked",
    "coupled_ssd_ref",
    "scan_backend",
]
