"""Compiled CPU coupled selective scan (docs/MATH.md, section 2): C++ forward and reverse backward.

    h[t][m] = exp(dt A)[m] * sum_k W[m, k] h[t-1][k] + dt B u;   y = (C h + D u) * silu(z)

Shapes: M modalities, Bt batch, D channels, N state size, L length.

The C++ sources in ``csrc/`` are compiled on first use with ``torch.utils.cpp_extension.load``
into the torch extensions cache (``~/.cache/torch_extensions`` or ``$TORCH_EXTENSIONS_DIR``);
later processes reuse the build. No ``-march=native``: every instruction set is compiled in its
own unit and the best one the CPU supports is picked at run time, so a shared cache works on any
x86-64 (and on other architectures with the portable 16-byte-vector unit). Set
``COUPLED_MAMBA_CPU_ISA=base|avx2|avx512`` to force one. Design, layout and accuracy:
``docs/cpu_kernel.md``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from ._checks import to_compute_dtype
from ._coupling import KIND_IDS, resolve_coupling

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = ("scan_host.cpp", "scan_isa_base.cpp", "scan_isa_avx2.cpp", "scan_isa_avx512.cpp")
# -ffp-contract=fast lets the compiler fuse a*b+c into FMA (the kernels are written for it);
# no -ffast-math: the exp/log code relies on IEEE rounding and NaN/inf propagation.
_CFLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno"]
# at::parallel_for is a header template: without -fopenmp in *this* build it runs serially. Linux
# only (gcc and clang take the flag there); torch ships libgomp.so.1, and the loader reuses that
# already-loaded copy for our DT_NEEDED entry, so torch.set_num_threads governs both.
_OPENMP_FLAGS = (["-fopenmp"] if sys.platform.startswith("linux")
                 and torch.backends.openmp.is_available() else [])

_lock = threading.Lock()
_state: dict = {}
# A build takes well under a minute; a lock file this old was left by a process killed while
# building (Ctrl-C on the first call), and torch's build waits on it forever.
STALE_BUILD_LOCK_S = 600


def _extension_name() -> str:
    # The torch version is part of the name: a build against another torch's headers must not be
    # reused from a shared cache (cpp_extension only hashes the sources and flags).
    ver = "".join(ch if ch.isalnum() else "_" for ch in torch.__version__)
    # cpp_extension rebuilds when a listed source changes but not when only a header does: the
    # headers' digest in the name makes an edited header a new build, not a stale cached one.
    digest = hashlib.sha256()
    for header in sorted(_CSRC.glob("*.h")):
        digest.update(header.read_bytes())
    return f"coupled_mamba_scan_cpu_{ver}_{digest.hexdigest()[:10]}"


def clear_stale_build_lock(name: str) -> bool:
    """Remove the extension's build lock if it is older than STALE_BUILD_LOCK_S; True if
    removed."""
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age <= STALE_BUILD_LOCK_S:
        return False
    warnings.warn(f"removing a stale build lock ({age:.0f} s old, left by an interrupted "
                  f"build): {lock}", RuntimeWarning, stacklevel=3)
    lock.unlink(missing_ok=True)
    return True


def _build(name: str, openmp_flags: list[str]) -> None:
    """Compile (or reuse the cached build of) the extension and load it into torch.ops."""
    from torch.utils.cpp_extension import load

    clear_stale_build_lock(name)

    load(
        name=name,
        sources=[str(_CSRC / s) for s in _SOURCES],
        extra_cflags=_CFLAGS + openmp_flags,
        extra_ldflags=list(openmp_flags),  # a copy: load() appends its -L/-l flags in place
        extra_include_paths=[str(_CSRC)],
        is_python_module=False,
        verbose=os.environ.get("COUPLED_MAMBA_VERBOSE_BUILD", "") == "1",
    )


def _load():
    """Build (first time) and load the extension; returns torch.ops.coupled_mamba_scan.

    With OpenMP first where it applies; if that build fails (a compiler without OpenMP support),
    warn once and build a serial one under another name, rather than lose the kernel.
    """
    ops = _state.get("ops")
    if ops is not None:  # built and loaded: no lock needed to read it
        return ops
    with _lock:
        if "ops" in _state:
            return _state["ops"]
        if "error" in _state:
            raise _state["error"]
        attempts = [(_extension_name(), _OPENMP_FLAGS)]
        if _OPENMP_FLAGS:
            attempts.append((_extension_name() + "_serial", []))
        errors = []
        for name, flags in attempts:
            try:
                _build(name, flags)
            except Exception as exc:  # no compiler, no ninja, no OpenMP, unsupported platform...
                errors.append(exc)
                continue
            if errors:  # only the OpenMP build failed
                first = (str(errors[0]).strip().splitlines() or [type(errors[0]).__name__])[0]
                warnings.warn(
                    "coupled_mamba: the CPU scan kernel did not build with OpenMP "
                    f"({first[:200]}); built it without, so it runs on one thread",
                    RuntimeWarning, stacklevel=3)
            _state["openmp"] = bool(flags)
            _state["ops"] = torch.ops.coupled_mamba_scan  # last: the lock-free read tests it
            return _state["ops"]
        _state["error"] = errors[-1]
        raise errors[-1]


def built_with_openmp() -> bool:
    """Whether the loaded kernel was compiled with OpenMP (so it can use torch's threads)."""
    _load()
    return _state["openmp"]


def is_available() -> tuple[bool, str | None]:
    """(True, None) if the compiled kernel builds and loads here, else (False, reason).

    The first call compiles (tens of seconds); the result is cached for the process.
    """
    try:
        _load()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"the C++ scan kernel could not be built or loaded: {first[:300]}"
    return True, None


def isa(name: str = "") -> str:
    """The instruction set in use ("avx512", "avx2" or "base"); ``isa("avx2")`` switches it.

    ``isa("auto")`` returns to the best supported one. Meant for tests and benchmarks.
    """
    return _load().isa(name)


def parallel_threads(n: int = 64) -> int:
    """Distinct threads the kernel's ``at::parallel_for`` uses for n tasks at the current
    ``torch.get_num_threads()``: 1 means the build is serial (no OpenMP). For tests."""
    return int(_load().parallel_threads(n))


class _CoupledScanFn(torch.autograd.Function):
    """Autograd wrapper: compiled forward; compiled backward from the chunk-start states."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, W, mode, w, softplus):
        # Only applied with grad mode on and an input requiring grad (inference calls the
        # kernel directly), so the chunk-start states are always saved here.
        # The kernel reads (M, Bt, D, L) inputs contiguous and copies views: copied here once,
        # the backward reads the saved copies instead of copying the views again.
        u, delta = u.contiguous(), delta.contiguous()
        z = None if z is None else z.contiguous()
        y, last, saved = _load().fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, W,
                                     mode, w, softplus, True, True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, W, saved)
        ctx.cfg = (mode, w, softplus)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, D, z, delta_bias, initial_state, W, saved = ctx.saved_tensors
        mode, w, softplus = ctx.cfg
        if dy is None:
            dy = torch.zeros_like(u)
        grads = _load().bwd(u, delta, A, B, C, D, z, delta_bias, initial_state, W, mode, w,
                            softplus, saved, dy.contiguous(), dlast)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dinit, dW = grads
        present = (u, delta, A, B, C, D, z, delta_bias, initial_state, W)
        out = [du, ddelta, dA, dB, dC, dD, dz, dbias, dinit, dW]
        out = [g if (t is not None and need) else None
               for g, t, need in zip(out, present, ctx.needs_input_grad[:10], strict=True)]
        return (*out, None, None, None)


def coupled_selective_scan_cpu(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    coupling="mean", initial_state=None, return_last_state=False,
):
    """Coupled selective scan with the compiled CPU kernel (forward and backward).

    Same signature, shapes and semantics as
    :func:`coupled_mamba.ops.coupled_selective_scan_ref`:
    u, delta, z (M, Bt, D, L); A (M, D, N); B, C (M, Bt, N, L); D, delta_bias (M, D);
    initial_state (M, Bt, D, N); coupling "none" | "mean" | "sum" | alpha | (M, M) tensor.
    Returns y (M, Bt, D, L) in u's dtype [, h[L-1] (M, Bt, D, N) in the compute dtype].
    fp16/bf16 inputs are computed in float32. Differentiable w.r.t. every tensor input,
    including initial_state and a tensor coupling.
    """
    out_dtype = u.dtype
    _, (u, delta, A, B, C, D, z, delta_bias, initial_state) = to_compute_dtype(
        u, u, delta, A, B, C, D, z, delta_bias, initial_state
    )
    out = scan_compute_dtype(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling,
                             initial_state, return_last_state)
    if out_dtype == u.dtype:
        return out
    if return_last_state:
        return out[0].to(out_dtype), out[1]
    return out.to(out_dtype)


def scan_compute_dtype(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling,
                       initial_state, return_last_state):
    """:func:`coupled_selective_scan_cpu` for inputs that all have u's dtype, float32 or float64
    (no casts). The C++ side checks every shape, device and dtype (RuntimeError otherwise); this
    is the entry of selective_scan.py's fast path, which skips the Python validation."""
    M = u.shape[0]
    cp = resolve_coupling(coupling, M)
    W = None
    if cp.kind == "general":
        W = cp.matrix.to(device=u.device, dtype=u.dtype)
        # An (M, M) tensor that happens to be diagonal or 11^T / M could take the cheaper
        # kernels, but its gradient must still reach every entry: keep the general form.
    mode = KIND_IDS[cp.kind]
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state, W)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        y, last = _CoupledScanFn.apply(*args, mode, float(cp.weight), bool(delta_softplus))
    else:
        # Inference: the kernel directly, without autograd.Function's bookkeeping, whose fixed
        # cost the streaming step with L = 1 would pay on every token.
        y, last, _ = _load().fwd(*args, mode, float(cp.weight), bool(delta_softplus), False,
                                 bool(return_last_state))
    return (y, last) if return_last_state else y


__all__ = ["coupled_selective_scan_cpu", "is_available", "isa"]
