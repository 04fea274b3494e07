"""The coupled selective scan (docs/MATH.md, section 2) and the one place that picks its backend.

Shapes: M modalities, Bt batch, D channels (d_inner), N state size, L length.

Implementations (all with the signature of :func:`coupled_selective_scan_ref`):

- "ref":    a loop over time, the executable spec (``_reference.py``).
- "torch":  plain PyTorch, chunked doubling scan, any device, autograd (``_torch_scan.py``).
- "cpu":    compiled C++ kernel, forward and reverse-pass backward (``_cpu.py``).
- "triton": fused GPU kernel (``_triton.py``).

"auto" takes "cpu" for CPU tensors and "triton" for CUDA tensors when they can run, else "torch"
with one warning. Optional back ends are imported here only, inside try/except. Float32/float64
CPU calls skip the Python validation (the compiled kernel checks its inputs; see
coupled_selective_scan), which halves the fixed cost of a streaming step.
"""

from __future__ import annotations

import warnings

import torch

from ._checks import check_scan_inputs
from ._reference import coupled_selective_scan_ref
from ._torch_scan import coupled_selective_scan_torch

IMPLS = ("auto", "ref", "torch", "cpu", "triton")
_FAST_DTYPES = (torch.float32, torch.float64)
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


_cpu_mod = None  # the _cpu module once imported: a function-level import runs on every call


def _cpu_module():
    """(the _cpu module, None) if the compiled CPU kernel is usable, else (None, reason)."""
    global _cpu_mod
    mod = _cpu_mod
    if mod is None:
        try:
            from . import _cpu as mod
        except Exception as exc:  # pragma: no cover - depends on the machine
            return None, f"cannot import the CPU kernel module ({exc})"
        _cpu_mod = mod
    ok, reason = mod.is_available()
    return (mod, None) if ok else (None, reason)


def _cpu_backend():
    """(function, None) if the compiled CPU kernel is usable, else (None, reason)."""
    mod, reason = _cpu_module()
    return (mod.coupled_selective_scan_cpu, None) if mod is not None else (None, reason)


def _triton_backend():
    """(function, None) if the Triton kernel is usable, else (None, reason)."""
    try:
        from . import _triton
    except Exception as exc:
        return None, f"Triton kernel unavailable ({exc})"
    ok, reason = _triton.is_available()
    return (_triton.coupled_selective_scan_triton, None) if ok else (None, reason)


_KERNELS = {"cpu": _cpu_backend, "triton": _triton_backend}
# What "auto" takes per device type: (kernel, the warning when it is unavailable).
_AUTO = {
    "cpu": ("cpu", "compiled CPU kernel unavailable ({reason}); falling back to the slower "
            "pure-PyTorch path."),
    "cuda": ("triton", "no fused GPU kernel ({reason}); using the pure-PyTorch path, which "
             "materialises per-chunk (M, B, D, N, T) tensors."),
}


def _pick(impl: str, device: torch.device):
    """The one decision of which implementation runs: (name, function, why "auto" fell back).

    The reason is None unless "auto" had to take the pure-PyTorch path for want of a kernel.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl: unknown implementation {impl!r}; expected one of {IMPLS}")
    if impl == "ref":
        return "ref", coupled_selective_scan_ref, None
    if impl == "torch":
        return "torch", coupled_selective_scan_torch, None
    if impl != "auto":  # "cpu" or "triton": that kernel or an error
        if impl == "cpu" and device.type != "cpu":
            raise ValueError(f"impl='cpu' needs CPU tensors, got tensors on {device}")
        fn, reason = _KERNELS[impl]()
        if fn is None:
            raise RuntimeError(f"impl={impl!r} is unavailable: {reason}")
        return impl, fn, None
    if device.type not in _AUTO:
        return "torch", coupled_selective_scan_torch, None
    name, fallback = _AUTO[device.type]
    fn, reason = _KERNELS[name]()
    if fn is not None:
        return name, fn, None
    return "torch", coupled_selective_scan_torch, fallback.format(reason=reason)


def _resolve_impl(impl: str, device: torch.device):
    name, fn, fallback = _pick(impl, device)
    if fallback is not None:
        _warn_once(device.type, f"coupled_selective_scan: {fallback}")
    return fn


def scan_backend(tensor_or_device: torch.Tensor | torch.device | str, impl: str = "auto") -> str:
    """Which implementation :func:`coupled_selective_scan` runs for inputs on this device.

    Args:
        tensor_or_device: an input tensor (u, say) or its device.
        impl: the ``impl`` argument the call would get ("auto" by default).

    Returns:
        "ref", "torch", "cpu" (the compiled kernel) or "triton". The answer comes from the same
        decision the call makes; asking may build the CPU kernel (a one-off compile) to find out
        whether it loads. For the reason "auto" fell back to "torch", see the warning the first
        such call emits, or ``coupled_mamba.ops._cpu.is_available()``.

    Raises:
        ValueError / RuntimeError: as the call would for an unknown or unavailable ``impl``.
    """
    if isinstance(tensor_or_device, torch.Tensor):
        device = tensor_or_device.device
    else:
        device = torch.device(tensor_or_device)
    return _pick(impl, device)[0]


def coupled_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    coupling="mean",
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    impl: str = "auto",
):
    """Coupled selective scan of M modality chains (docs/MATH.md, section 2).

    h[t][m] = exp(dt A)[m] * sum_k W[m, k] h[t-1][k] + dt B u;  y = C h + D u, gated by silu(z).

    Args:
        u: (M, Bt, D, L) input after conv + SiLU.
        delta: (M, Bt, D, L) raw timescale (before bias/softplus).
        A: (M, D, N) real, negative state matrix.
        B, C: (M, Bt, N, L) input-dependent projections.
        D: (M, D) skip weight, or None.
        z: (M, Bt, D, L) gate, or None.
        delta_bias: (M, D) added to delta, or None.
        delta_softplus: apply softplus to delta (+ bias).
        coupling: "none" (W = I), "mean" (11^T / M, default), "sum" (11^T), a float alpha in
            [0, 1] ((1 - alpha) I + alpha 11^T / M), or an (M, M) tensor (gradients flow to it).
        initial_state: (M, Bt, D, N) state before step 0, or None for zeros.
        return_last_state: also return the state after the last step.
        impl: "auto", "ref", "torch", "cpu" or "triton" (see the module docstring).

    Returns:
        y: (M, Bt, D, L) in u's dtype; with return_last_state also h[L-1]: (M, Bt, D, N) in the
        compute dtype (float32 for half inputs).

    Raises:
        ValueError: a shape, device or dtype is wrong (the message names the argument).
    """
    # Fast path: float32/float64 CPU tensors with the compiled kernel. The C++ side checks every
    # shape, device and dtype itself, so the Python validation below (a fixed cost that the
    # streaming step with L = 1 would pay on every token) runs only when a call fails, to raise
    # the documented ValueError. Half inputs (casts) and tensor couplings take the full path.
    if ((impl == "auto" or impl == "cpu") and isinstance(u, torch.Tensor) and u.is_cpu
            and u.dtype in _FAST_DTYPES and not isinstance(coupling, torch.Tensor)):
        cpu, _ = _cpu_module()
        if cpu is not None:
            try:
                return cpu.scan_compute_dtype(u, delta, A, B, C, D, z, delta_bias,
                                              delta_softplus, coupling, initial_state,
                                              return_last_state)
            except Exception as exc:
                failure = exc
            # Outside the except block, so that a ValueError from the validation does not
            # carry the kernel's error as its context.
            check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
            raise failure
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    # The implementation resolves (and checks) the coupling itself: only its device is ours.
    if isinstance(coupling, torch.Tensor) and coupling.device != u.device:
        raise ValueError(f"coupling: tensor on {coupling.device}, but u is on {u.device}")
    fn = _resolve_impl(impl, u.device)
    return fn(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        coupling=coupling, initial_state=initial_state, return_last_state=return_last_state,
    )
