"""@triton.jit helpers shared by the kernel variants of the coupled selective scan.

Used by ``_triton_seq_kernels.py``, ``_triton_chunk_kernels.py`` and
``_triton_par_kernels.py`` (index and design: ``_triton_kernels.py``, docs/triton_kernel.md).
Tiles follow the shape letters of docs/MATH.md section 2 (M, Bt, D, N, L).
"""

import triton
import triton.language as tl


@triton.jit
def _softplus(x, SOFTPLUS: tl.constexpr):
    """(softplus(x), d softplus / dx) with torch's threshold (x > 20 -> x); identity if off."""
    if SOFTPLUS:
        e = tl.exp(tl.minimum(x, 20.0))
        w = 1.0 + e
        # log1p(e) without a log1p: log(w) * e / (w - 1) is exact to rounding (Goldberg), while
        # log(1 + e) alone loses all digits of tiny e.
        lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
        dt = tl.where(x > 20.0, x, lp)
        dsp = tl.where(x > 20.0, 1.0, e / w)
    else:
        dt = x
        dsp = x * 0.0 + 1.0
    return dt, dsp


@triton.jit
def _maybe_load(ptr, off, mask, PRESENT: tl.constexpr, CT: tl.constexpr):
    """ptr[off] in the compute dtype, or zeros shaped like off when the input is absent."""
    if PRESENT:
        x = tl.load(ptr + off, mask=mask, other=0.0).to(CT)
    else:
        x = (off * 0).to(CT)
    return x



# Sizes are not specialised on (Triton would compile L = 50 and L = 1024 separately); the only
# strided accesses are per time step, where divisibility hints buy nothing.
_RUNTIME = ["Bt", "Dd", "N", "L"]


@triton.jit
def _affine_pair(a1, b1, p1, q1, a2, b2, p2, q2):
    """(F, G) of the segment "left then right"; F = (a, b), G = (p, q) are maps x -> a x + b."""
    return a1 * a2, a2 * b1 + b2, p2 * a1, p2 * b1 + q2
