"""Tests specific to the compiled CPU scan kernel (ops/_cpu.py, ops/csrc/).

tests/ops/test_selective_scan.py already compares impl="cpu" with the reference for every
coupling, optional argument, piecewise/streaming and half dtypes. Here: every instruction set the
CPU supports (the portable 16-byte build included), chunk and time-block boundaries, the thread
splits and their private reduction buffers, M > 4 rank-one couplings, special values, non-
contiguous inputs, memory (no (M, B, D, N, L) tensor), and the fallback when no compiler exists.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from coupled_mamba import coupled_selective_scan
from coupled_mamba.ops import coupled_selective_scan_ref
from coupled_mamba.ops import selective_scan as dispatch

_cpu = pytest.importorskip("coupled_mamba.ops._cpu")
if not _cpu.is_available()[0]:
    pytest.skip(f"CPU kernel unavailable: {_cpu.is_available()[1]}", allow_module_level=True)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _outputs_and_grads(fn, kw, coupling, softplus=True, seed=7):
    y, h = fn(**kw, coupling=coupling, delta_softplus=softplus, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)).sum()
    loss = loss + (h * torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)).sum()
    names = [n for n in NAMES if n in kw and kw[n].requires_grad]
    tensors = [kw[n] for n in names]
    if isinstance(coupling, torch.Tensor) and coupling.requires_grad:
        names.append("coupling")
        tensors.append(coupling)
    return y, h, dict(zip(names, torch.autograd.grad(loss, tensors), strict=True))


def _assert_matches_ref(kw, coupling, dtype, softplus=True):
    y_r, h_r, g_r = _outputs_and_grads(coupled_selective_scan_ref, kw, coupling, softplus)
    y_c, h_c, g_c = _outputs_and_grads(_cpu.coupled_selective_scan_cpu, kw, coupling, softplus)
    tol = TOL[dtype]
    assert _rel(y_c, y_r) < tol, f"y {_rel(y_c, y_r)}"
    assert _rel(h_c, h_r) < tol, f"last state {_rel(h_c, h_r)}"
    assert set(g_c) == set(g_r)
    for name in g_r:
        assert _rel(g_c[name], g_r[name]) < 10 * tol, f"grad {name}: {_rel(g_c[name], g_r[name])}"


@pytest.fixture
def restore_isa():
    yield
    _cpu.isa("auto")


def _supported_isas():
    out = []
    for name in ("base", "avx2", "avx512"):
        try:
            _cpu.isa(name)
            out.append(name)
        except RuntimeError:
            pass
    _cpu.isa("auto")
    return out


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_every_instruction_set_matches_reference(isa, dtype, make_scan_inputs, restore_isa):
    """The same source compiled for each ISA (the 16-byte one is what non-AVX CPUs run)."""
    if isa not in _supported_isas():
        pytest.skip(f"{isa} not supported by this CPU")
    assert _cpu.isa(isa) == isa
    # N = 5 pads to every vector width; L = 70 crosses a chunk boundary.
    kw = make_scan_inputs(dtype=dtype, N=5, L=70, with_state=True)
    W = (torch.rand(3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) / 3)
    for coupling in ("none", "mean", W.to(dtype).requires_grad_(True)):
        _assert_matches_ref(kw, coupling, dtype)


@pytest.mark.parametrize("L", [63, 64, 65, 128, 129])
def test_chunk_boundaries(L, make_scan_inputs):
    kw = make_scan_inputs(M=2, Bt=1, D=3, N=3, L=L, with_state=True)
    for coupling in ("none", "sum", 0.6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _assert_matches_ref(kw, coupling, torch.float64)


@pytest.mark.parametrize("L", [1, 9, 21, 50])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_short_sequences_over_several_flat_blocks(L, dtype, make_scan_inputs, restore_isa):
    """L <= 64 takes the flat pointwise passes over blocks of 4096 // L channels: two blocks here,
    the second partial, and a flat array whose length is not a multiple of any vector width."""
    D = 4096 // L + 6
    kw = make_scan_inputs(Bt=2, D=D, N=16, L=L, dtype=dtype, with_state=True)
    for isa in _supported_isas():
        _cpu.isa(isa)
        for coupling in ("mean", "none"):
            _assert_matches_ref(kw, coupling, dtype)
            with torch.no_grad():  # the inference call (no chunk states saved)
                y = _cpu.coupled_selective_scan_cpu(**kw, coupling=coupling, delta_softplus=True)
                y_r = coupled_selective_scan_ref(**kw, coupling=coupling, delta_softplus=True)
            torch.testing.assert_close(y, y_r, rtol=TOL[dtype], atol=TOL[dtype])


def test_several_time_blocks(make_scan_inputs):
    """Long enough for several time blocks (each ~512 KiB of B and C) and chunks within them."""
    torch.manual_seed(0)
    kw = make_scan_inputs(M=3, Bt=1, D=2, N=64, L=1500, with_state=True, dtype=torch.float32)
    for coupling in ("mean", "none"):
        _assert_matches_ref(kw, coupling, torch.float32)


@pytest.mark.skipif(not _cpu._OPENMP_FLAGS, reason="kernel built without OpenMP on this platform")
def test_kernel_runs_on_torch_threads():
    """The build really is parallel (it once was not: no -fopenmp, so at::parallel_for ran
    serially) and follows torch.set_num_threads. Counts threads, not time."""
    assert _cpu.built_with_openmp(), "the OpenMP build failed and a serial one was loaded"
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _cpu.parallel_threads(64) == 2
        torch.set_num_threads(1)
        assert _cpu.parallel_threads(64) == 1
    finally:
        torch.set_num_threads(prev)


@pytest.mark.skipif(not _cpu._OPENMP_FLAGS, reason="no OpenMP build on this platform")
def test_failed_openmp_build_falls_back_to_a_serial_build(monkeypatch):
    """A compiler without OpenMP must not cost the kernel: warn, build serially under another
    name. (The builds are faked; the real extension stays loaded.)"""
    tried = []

    def fake_build(name, flags):
        tried.append((name, list(flags)))
        if flags:
            raise RuntimeError("error: unsupported option '-fopenmp'")

    saved = dict(_cpu._state)
    monkeypatch.setattr(_cpu, "_build", fake_build)
    _cpu._state.clear()
    try:
        with pytest.warns(RuntimeWarning, match="built it without, so it runs on one thread"):
            _cpu._load()
        assert [f for _, f in tried] == [["-fopenmp"], []]
        assert tried[1][0] == tried[0][0] + "_serial"
        assert _cpu.built_with_openmp() is False
    finally:
        _cpu._state.clear()
        _cpu._state.update(saved)


@pytest.mark.parametrize("Bt", [1, 2, 3])
def test_thread_splits_equal_one_thread(Bt, make_scan_inputs):
    """2 threads: batch split (Bt=2), channel split with private dB/dC (Bt=1), both (Bt=3)."""
    kw = make_scan_inputs(Bt=Bt, D=6, L=40, with_state=True)
    W = torch.rand(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    results = {}
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for coupling in ("mean", "none", W.clone().requires_grad_(True)):
                key = (threads, coupling if isinstance(coupling, str) else "W")
                results[key] = _outputs_and_grads(_cpu.coupled_selective_scan_cpu, kw, coupling)
    finally:
        torch.set_num_threads(prev)
    for c in ("mean", "none", "W"):
        y1, h1, g1 = results[(1, c)]
        y2, h2, g2 = results[(2, c)]
        assert _rel(y2, y1) < 1e-14 and _rel(h2, h1) < 1e-14
        for name in g1:  # reductions are summed in another order: rounding only
            assert _rel(g2[name], g1[name]) < 1e-13, name


@pytest.mark.parametrize("M", [4, 5])
def test_many_modalities(M, make_scan_inputs):
    """The modality loop is unrolled up to M = 4; beyond, rank one goes through the dense-W
    kernel and "none" runs one modality at a time."""
    kw = make_scan_inputs(M=M, L=20, with_state=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for coupling in ("none", "mean", "sum"):
            _assert_matches_ref(kw, coupling, torch.float64)


def test_non_contiguous_inputs(make_scan_inputs):
    kw = make_scan_inputs(L=30, with_state=True, requires_grad=False)
    strided = {}
    for k, v in kw.items():
        big = torch.stack([v, v + 1], dim=-1)  # the last dim now has stride 2
        strided[k] = big[..., 0]
        assert not strided[k].is_contiguous()
    y_c, h_c = _cpu.coupled_selective_scan_cpu(**strided, delta_softplus=True,
                                               return_last_state=True)
    y_r, h_r = coupled_selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    assert _rel(y_c, y_r) < 1e-12 and _rel(h_c, h_r) < 1e-12


def test_extreme_decay_and_nan_propagation(make_scan_inputs):
    """dt A far below the float exponent range gives Abar = 0 exactly like exp; NaN propagates."""
    kw = make_scan_inputs(dtype=torch.float32, L=12, requires_grad=False)
    kw["A"] = kw["A"] * torch.logspace(-3, 3, kw["A"].shape[-1])  # dt A from ~-1e-4 to ~-5e3
    for coupling in ("none", "mean", 0.5):
        y_c = _cpu.coupled_selective_scan_cpu(**kw, coupling=coupling, delta_softplus=True)
        y_r = coupled_selective_scan_ref(**kw, coupling=coupling, delta_softplus=True)
        assert torch.isfinite(y_c).all()
        assert _rel(y_c, y_r) < 2e-5
    kw["u"] = kw["u"].clone()
    kw["u"][1, 0, 2, 5] = float("nan")
    y_c = _cpu.coupled_selective_scan_cpu(**kw, coupling="mean", delta_softplus=True)
    y_r = coupled_selective_scan_ref(**kw, coupling="mean", delta_softplus=True)
    assert torch.equal(torch.isnan(y_c), torch.isnan(y_r))
    assert torch.isnan(y_c).any()


def test_flush_to_zero_ends_with_the_kernel(make_scan_inputs):
    """The kernel runs with denormal results flushed to zero (a denormal costs a microcode assist)
    but hands the thread back in the caller's mode: denormal arithmetic afterwards still gives
    denormals. Forward and backward, on this (the calling) thread."""
    tiny = torch.tensor([1e-30], dtype=torch.float32)
    denormal = (tiny * 1e-10).item()
    assert 0 < denormal < torch.finfo(torch.float32).tiny  # this process keeps denormals
    kw = make_scan_inputs(dtype=torch.float32, L=70)
    y = _cpu.coupled_selective_scan_cpu(**kw, delta_softplus=True)
    assert (tiny * 1e-10).item() == denormal
    y.sum().backward()
    assert (tiny * 1e-10).item() == denormal


def test_large_softplus_arguments_follow_torch(make_scan_inputs):
    """softplus(x) = x above 20 (torch's threshold), log1p(exp(x)) below; the gradients too."""
    kw = make_scan_inputs(L=16, N=3)
    with torch.no_grad():
        kw["delta"].copy_(torch.linspace(-30, 30, 16).expand_as(kw["delta"]))
        kw["A"].mul_(1e-2)  # keep Abar away from 0 so that every step matters
    _assert_matches_ref(kw, "mean", torch.float64)


def test_never_allocates_a_full_state_tensor():
    """Forward + backward never allocate anything near one (M, B, D, N, L) tensor.

    The torch profiler sees every CPU allocation of the call (the kernel's outputs, scratch,
    saved chunk states, the padded B/C copies). A full state tensor would be a single allocation
    of M*B*D*N*L floats; here the largest is an (M, B, D, L) tensor (N = 16 times smaller), and
    even the sum of all allocations stays below one full state tensor.
    """
    from torch.profiler import ProfilerActivity, profile

    M, Bt, D, N, L = 3, 1, 64, 16, 2048
    full_bytes = M * Bt * D * N * L * 4  # 25 MB
    g = torch.Generator().manual_seed(0)
    kw = dict(
        u=torch.randn(M, Bt, D, L, generator=g), delta=torch.randn(M, Bt, D, L, generator=g),
        A=-torch.rand(M, D, N, generator=g) - 0.1, B=torch.randn(M, Bt, N, L, generator=g),
        C=torch.randn(M, Bt, N, L, generator=g), D=torch.randn(M, D, generator=g),
        z=torch.randn(M, Bt, D, L, generator=g), delta_bias=torch.randn(M, D, generator=g),
    )
    kw = {k: v.requires_grad_(True) for k, v in kw.items()}
    gy = torch.randn(M, Bt, D, L, generator=g)
    for coupling in ("mean", "none"):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            y = _cpu.coupled_selective_scan_cpu(**kw, coupling=coupling, delta_softplus=True)
            y.backward(gy)
        allocs = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]
        assert allocs, "the profiler recorded no allocation"
        assert max(allocs) <= M * Bt * D * L * 4 * 1.01, (coupling, max(allocs))
        assert sum(allocs) < full_bytes, (coupling, sum(allocs), full_bytes)


def test_fallback_to_torch_with_one_warning(monkeypatch, make_scan_inputs):
    """No usable kernel: impl='auto' warns once and uses the torch path; impl='cpu' raises."""
    monkeypatch.setattr(_cpu, "is_available", lambda: (False, "no C++ compiler (test)"))
    monkeypatch.setattr(dispatch, "_warned", set())
    kw = make_scan_inputs(L=9, requires_grad=False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y1 = coupled_selective_scan(**kw, delta_softplus=True)
        y2 = coupled_selective_scan(**kw, delta_softplus=True)
    msgs = [str(w.message) for w in rec if "compiled CPU kernel unavailable" in str(w.message)]
    assert len(msgs) == 1 and "no C++ compiler (test)" in msgs[0]
    y_t = coupled_selective_scan(**kw, delta_softplus=True, impl="torch")
    assert torch.equal(y1, y_t) and torch.equal(y2, y_t)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        coupled_selective_scan(**kw, impl="cpu")


def test_is_available_reports_build_failure(monkeypatch, recwarn):
    """A failing build gives (False, reason) instead of raising."""
    import torch.utils.cpp_extension as cpp_ext

    def broken_load(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(cpp_ext, "load", broken_load)
    monkeypatch.setattr(_cpu, "_state", {})
    ok, reason = _cpu.is_available()
    assert ok is False and "command not found" in reason
    ok2, reason2 = _cpu.is_available()  # cached: no second build attempt
    assert (ok2, reason2) == (ok, reason)
    assert not [w for w in recwarn if "OpenMP" in str(w.message)]  # no compiler: no OpenMP hint


def test_inference_saves_no_chunk_states(monkeypatch, make_scan_inputs):
    """Under torch.no_grad() the forward does not write the chunk-start states for a backward,
    nor the last state unless it is asked for (which then still equals the reference)."""
    real = _cpu._load()
    calls = []

    class Recorder:
        def fwd(self, *args):
            calls.append(args[-2:])  # (save, want_last)
            return real.fwd(*args)

        def bwd(self, *args):
            return real.bwd(*args)

    monkeypatch.setattr(_cpu, "_load", lambda: Recorder())
    kw = make_scan_inputs(L=9)  # inputs require grad
    with torch.no_grad():
        _cpu.coupled_selective_scan_cpu(**kw)
        _, h = _cpu.coupled_selective_scan_cpu(**kw, return_last_state=True)
        _, h_ref = coupled_selective_scan_ref(**kw, return_last_state=True)
    assert _rel(h, h_ref) < 1e-12
    y = _cpu.coupled_selective_scan_cpu(**kw)
    y.sum().backward()
    assert calls == [(False, False), (False, True), (True, True)]
    assert kw["u"].grad is not None and kw["u"].grad.abs().sum() > 0


def test_stale_build_lock_is_removed_fresh_one_kept(tmp_path, monkeypatch):
    # A process killed while compiling leaves build_dir/lock behind; torch then waits forever.
    import os
    import time as _time

    from coupled_mamba.ops import _cpu

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    build = tmp_path / "ext_test"
    build.mkdir()
    lock = build / "lock"
    lock.touch()
    assert not _cpu.clear_stale_build_lock("ext_test") and lock.exists()
    old = _time.time() - _cpu.STALE_BUILD_LOCK_S - 5
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        assert _cpu.clear_stale_build_lock("ext_test")
    assert not lock.exists()
