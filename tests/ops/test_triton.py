"""The fused Triton scan against the reference loop (docs/MATH.md, section 2).

On CPU the kernels run in Triton's interpreter. The interpreter works only when TRITON_INTERPRET=1
is set before triton is first imported, and then holds for the whole process, so
``test_interpreter_suite`` runs the TestInterpreter cases in a child pytest with the variable set
and this process stays compiled-mode (nothing leaks into other tests). To run them directly:
``TRITON_INTERPRET=1 python -m pytest tests/ops/test_triton.py -k TestInterpreter``.

Without triton the module is skipped, except where COUPLED_MAMBA_REQUIRE_TRITON=1 (set by
``.ci/run`` where the test extras install triton): there a missing triton fails the collection.

Shapes are tiny and the checkpoint interval small, so the cases cross several checkpoint chunks
and register sub-chunks, with padding in M, D and N. ``test_kernels_compile_for_sm90`` runs
Triton's real compiler for an H100 target without a GPU. Tests marked ``gpu`` run on CUDA.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

if os.environ.get("COUPLED_MAMBA_REQUIRE_TRITON") == "1":
    # CI (.ci/run) installs the test extras, which include triton: a missing triton there is a
    # broken environment, and skipping would hide that no kernel was tested.
    import triton  # noqa: F401
else:
    pytest.importorskip("triton")

from coupled_mamba import coupled_selective_scan  # noqa: E402
from coupled_mamba.ops import (  # noqa: E402
    _triton,
    _triton_chunked,
    _triton_seq,
    coupled_selective_scan_ref,
)

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
# Tiny tilings, 2 channels per program (so dB and dC are summed over programs with atomics)
# unless a test says otherwise. The sequential kernel ("seq"): checkpoints every 8 steps, 4
# states in registers. The chunked kernel: chunks of 4 steps under autograd (8 without).
TINY = dict(variant="seq", chunk=8, sub_chunk=4, block_d=2, block_d_bwd=2)
CHUNKED = dict(variant="chunked", time_block=8, time_block_bwd=4, block_d=2, block_d_bwd=2)
# The parallel variant: its own forward without autograd (blocks of 8 steps, 2 channels per
# program); under autograd the chunked kernels with the tiling of CHUNKED.
PARALLEL = {**CHUNKED, "variant": "parallel"}
# The parallel variant with its own backward (PAR_BACKWARD, opt-in until timed on a GPU).
PARALLEL_BWD = {**PARALLEL, "parallel_backward": True}


def _matrix(M, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(M, M, generator=g, dtype=torch.float64) / M
    return W.to(dtype).requires_grad_(True)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _run(fn, kw, coupling, softplus=True, last=True):
    """y, h[L-1] and the gradients of a random projection of both, w.r.t. every input."""
    out = fn(**kw, coupling=coupling, delta_softplus=softplus, return_last_state=last)
    y, h = out if last else (out, None)
    g = torch.Generator().manual_seed(123)  # drawn on the CPU, moved to the outputs' device

    def proj(x):
        return (x.double() * torch.randn(x.shape, generator=g, dtype=torch.float64)
                .to(x.device)).sum()

    loss = proj(y) + (proj(h) if last else 0.0)
    names = [n for n in GRAD_NAMES if n in kw and kw[n].requires_grad]
    tensors = [kw[n] for n in names]
    if isinstance(coupling, torch.Tensor) and coupling.requires_grad:
        names.append("coupling")
        tensors.append(coupling)
    grads = torch.autograd.grad(loss, tensors) if tensors else ()
    return y, h, dict(zip(names, grads, strict=True))


def _triton_fn(**tiling):
    def fn(**kw):
        return _triton.coupled_selective_scan_triton(**kw, **tiling)

    return fn


def _compare(kw, coupling, softplus=True, last=True, tol=None, base=TINY, **tiling):
    """Assert that the Triton scan matches the reference: y, last state, every gradient.

    ``base``: the tiling (and kernel variant) that ``tiling`` amends."""
    tol = tol or TOL[kw["u"].dtype]
    y_r, h_r, g_r = _run(coupled_selective_scan_ref, kw, coupling, softplus, last)
    y_t, h_t, g_t = _run(_triton_fn(**{**base, **tiling}), kw, coupling, softplus, last)
    assert y_t.dtype == kw["u"].dtype and y_t.shape == y_r.shape
    assert _rel(y_t, y_r) < tol, f"y: {_rel(y_t, y_r)}"
    if last:
        assert h_t.dtype == h_r.dtype
        assert _rel(h_t, h_r) < tol, f"last state: {_rel(h_t, h_r)}"
    assert set(g_t) == set(g_r)
    for name in g_r:
        assert g_t[name].dtype == g_r[name].dtype, name
        err = _rel(g_t[name], g_r[name])
        assert err < 10 * tol, f"grad {name}: {err}"


COUPLINGS = ["none", "mean", "sum", 0.3, "matrix"]
# What each kernel variant is tested with in the interpreter: the chunked kernel every coupling
# it takes (alpha 0 and 1 are "none" and "mean" in disguise); the sequential one the general
# couplings it alone serves, and "mean" once more (its rank-one path).
SEQ_COUPLINGS = ["mean", 0.3, "matrix"]
CHUNKED_COUPLINGS = ["none", "mean", "sum", 0.0, 1.0]


class TestInterpreter:
    """Triton kernels in the CPU interpreter against the reference.

    Collected only when TRITON_INTERPRET=1 was set before triton was imported (the interpreter
    needs that); a normal run executes them through test_interpreter_suite in a subprocess.
    """

    __test__ = INTERPRETING


    @pytest.mark.parametrize("coupling", SEQ_COUPLINGS)
    def test_matches_reference_all_couplings(self, coupling, make_scan_inputs):
        # Sequential kernel. M = 3 (padded to 4), D = 4 in 2 programs, N = 5 (padded to 8),
        # L = 21: 3 chunks, the last partial, and a partial register sub-chunk. Every optional
        # input, gradients through y and h. Two batch rows where the coupling mixes most.
        Bt = 2 if coupling == "matrix" else 1
        kw = make_scan_inputs(M=3, Bt=Bt, D=4, N=5, L=21, with_state=True)
        W = _matrix(3, torch.float64) if coupling == "matrix" else coupling
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "sum" warns that it is not contractive
            _compare(kw, W)


    @pytest.mark.parametrize("coupling", ["mean", "matrix"])
    def test_float32(self, coupling, make_scan_inputs):
        kw = make_scan_inputs(M=2, Bt=1, D=4, N=4, L=19, dtype=torch.float32, with_state=True)
        W = _matrix(2, torch.float32) if coupling == "matrix" else coupling
        _compare(kw, W, base=CHUNKED if coupling == "mean" else TINY)


    OPTIONAL = [
        # with_D, with_z, with_bias, with_state, softplus
        (False, False, False, False, False),
        (False, True, False, True, True),
        (True, False, True, False, False),
    ]


    optional_arguments = pytest.mark.parametrize(
        "with_D,with_z,with_bias,with_state,softplus",
        OPTIONAL,
        ids=["".join("DZbSs"[i] if f else "-" for i, f in enumerate(o)) for o in OPTIONAL],
    )

    @optional_arguments
    def test_optional_arguments(self, with_D, with_z, with_bias, with_state, softplus, make_scan_inputs):
        kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=13, with_D=with_D, with_z=with_z,
                              with_bias=with_bias, with_state=with_state)
        if not softplus:
            # Without softplus delta must already be a positive step.
            kw["delta"] = kw["delta"].detach().abs().add(0.05).requires_grad_(True)
        _compare(kw, "mean", softplus=softplus, last=with_state, base=CHUNKED)
        _compare(kw, _matrix(2, torch.float64), softplus=softplus, last=not with_state)


    @pytest.mark.parametrize(
        "M,D,N,L,tiling",
        [
            (1, 3, 4, 1, {}),  # one modality, L = 1 (the streaming step)
            (4, 2, 4, 3, dict(block_d=4, block_d_bwd=4)),  # no padding in M; L < sub-chunk; one
            # channel block, so dB and dC are stored without atomics
            (2, 5, 3, 16, dict(chunk=4, sub_chunk=4)),  # L a multiple of the chunk, chunk = sub-chunk
            (2, 2, 2, 9, dict(chunk=8, sub_chunk=2, block_d=1, block_d_bwd=1)),
        ],
        ids=["M1-L1", "M4-L3-oneblock", "L16-chunk4", "L9-sub2-bd1"],
    )
    def test_shapes_and_tilings(self, M, D, N, L, tiling, make_scan_inputs):
        kw = make_scan_inputs(M=M, Bt=1, D=D, N=N, L=L, with_state=True)
        _compare(kw, _matrix(M, torch.float64), **tiling)

    @pytest.mark.parametrize(
        "M,D,N,L,tiling",
        [
            (1, 3, 4, 1, {}),  # one modality, L = 1 (the streaming step)
            (2, 4, 3, 3, dict(block_d=4, block_d_bwd=4)),  # L < chunk; one channel block,
            # so dB and dC are stored without atomics
            (4, 2, 2, 8, dict(block_d=1, block_d_bwd=1)),  # L a multiple of the chunk; no
            # padding in M; one channel per program
            (2, 2, 4, 10, dict(time_block_bwd=2, block_d=4, block_d_bwd=4)),  # 5 chunks
        ],
        ids=["M1-L1", "M2-L3-oneblock", "M4-L8-bd1", "L10-T2"],
    )
    def test_chunked_shapes_and_tilings(self, M, D, N, L, tiling, make_scan_inputs):
        kw = make_scan_inputs(M=M, Bt=1, D=D, N=N, L=L, with_state=True)
        _compare(kw, "mean", base=CHUNKED, **tiling)
        if M > 1:
            _compare(kw, "none", base=CHUNKED, **tiling)

    @pytest.mark.parametrize("coupling", CHUNKED_COUPLINGS, ids=str)
    def test_chunked_matches_reference(self, coupling, make_scan_inputs):
        # Chunked kernel. M = 3, D = 3 in 2 programs (one padded), N = 5 (padded to 8), L = 11:
        # 3 chunks of 4 under autograd, the last partial. Every optional input, gradients
        # through y and h (initial_state included). Two batch rows for "mean".
        Bt = 2 if coupling == "mean" else 1
        kw = make_scan_inputs(M=3, Bt=Bt, D=3, N=5, L=11, with_state=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "sum" is not contractive
            _compare(kw, coupling, base=CHUNKED)


    @pytest.mark.parametrize(
        "dtype,tiling",
        [(torch.bfloat16, CHUNKED), (torch.float16, TINY)], ids=["bf16-chunked", "fp16-seq"],
    )
    def test_half_inputs_computed_in_fp32(self, dtype, tiling, make_scan_inputs):
        kw = make_scan_inputs(M=2, Bt=1, D=4, N=4, L=17, dtype=dtype, with_state=True)
        for name in ("A", "D", "delta_bias", "initial_state"):  # parameters may stay fp32
            kw[name] = kw[name].detach().float().requires_grad_(True)
        y_t, h_t, g_t = _run(_triton_fn(**tiling), kw, "mean")
        assert y_t.dtype == dtype and h_t.dtype == torch.float32
        # The reference on the same values upcast: only the final rounding to the half type differs.
        kw32 = {k: v.detach().float().requires_grad_(True) for k, v in kw.items()}
        y_r, h_r, g_r = _run(coupled_selective_scan_ref, kw32, "mean")
        eps = torch.finfo(dtype).eps
        assert _rel(y_t, y_r) < 4 * eps
        assert _rel(h_t, h_r) < 1e-5
        for name in g_r:
            assert g_t[name].dtype == kw[name].dtype, name
            assert _rel(g_t[name], g_r[name]) < 4 * eps, name


    def test_softplus_threshold_and_tiny_steps(self, make_scan_inputs):
        """delta + bias above 20 takes torch's linear branch; very negative gives tiny steps."""
        kw = make_scan_inputs(M=2, Bt=1, D=4, N=4, L=10, with_state=True)
        raw = kw["delta"].detach().clone()
        raw[..., ::3] = 25.0 + raw[..., ::3]
        raw[..., 1::3] = -30.0 + raw[..., 1::3]
        kw["delta"] = raw.requires_grad_(True)
        kw["A"] = (kw["A"].detach() * 0.01).requires_grad_(True)  # keep exp(dt A) away from 0
        _compare(kw, "mean", base=CHUNKED)


    @pytest.mark.parametrize("coupling", CHUNKED_COUPLINGS, ids=str)
    @pytest.mark.parametrize(
        "M,Bt,D,N,L,tiling",
        [
            (3, 2, 3, 5, 21, {}),  # 3 blocks, the last partial; 2 channel programs, one padded;
            # M = 3 padded to 4, N = 5
            (1, 1, 3, 4, 1, {}),  # one modality, L = 1 (the streaming step)
            (4, 1, 2, 3, 16, dict(time_block=16, block_d=1)),  # one whole block; no padding in M
            (2, 1, 4, 4, 10, dict(time_block=4, block_d=4)),  # 3 blocks; one channel program
            (3, 1, 3, 4, 40, dict(time_block=None, block_d=None)),  # default tiling: one
            # block of 64 steps (shortened from the default to follow L)
        ],
        ids=["M3-L21", "M1-L1", "M4-L16-oneblock", "M2-L10-T4", "M3-L40-default"],
    )
    def test_parallel_forward_matches_reference(self, coupling, M, Bt, D, N, L, tiling,
                                                make_scan_inputs, monkeypatch):
        """The time-parallel forward kernel (no autograd): y and last state, every optional
        input, against the reference; a spy makes sure it is that kernel that ran."""
        kw = make_scan_inputs(M=M, Bt=Bt, D=D, N=N, L=L, with_state=True, requires_grad=False)
        launches = []
        real = _triton_chunked._par_meta
        monkeypatch.setattr(_triton_chunked, "_par_meta",
                            lambda *a: launches.append(1) or real(*a))
        fn = _triton_fn(**{**PARALLEL, **tiling})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "sum" is not contractive
            y, h = fn(**kw, coupling=coupling, delta_softplus=True, return_last_state=True)
            y_r, h_r = coupled_selective_scan_ref(**kw, coupling=coupling, delta_softplus=True,
                                                  return_last_state=True)
        assert launches == [1]
        assert _rel(y, y_r) < TOL[torch.float64] and _rel(h, h_r) < TOL[torch.float64]

    @optional_arguments
    def test_parallel_optional_arguments(self, with_D, with_z, with_bias, with_state, softplus,
                                         make_scan_inputs):
        kw = make_scan_inputs(M=3, Bt=1, D=3, N=4, L=13, with_D=with_D, with_z=with_z,
                              with_bias=with_bias, with_state=with_state, requires_grad=False)
        if not softplus:
            kw["delta"] = kw["delta"].abs().add(0.05)
        for coupling in ("mean", "none"):
            y, h = _triton_fn(**PARALLEL)(**kw, coupling=coupling, delta_softplus=softplus,
                                          return_last_state=True)
            y_r, h_r = coupled_selective_scan_ref(**kw, coupling=coupling,
                                                  delta_softplus=softplus, return_last_state=True)
            assert _rel(y, y_r) < TOL[torch.float64] and _rel(h, h_r) < TOL[torch.float64]

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
    def test_parallel_forward_fp32_and_bf16(self, dtype, make_scan_inputs):
        """fp32 computed in fp32; bf16 computed in fp32, y rounded once to bf16."""
        kw = make_scan_inputs(M=3, Bt=1, D=4, N=4, L=19, dtype=dtype, with_state=True,
                              requires_grad=False)
        y, h = _triton_fn(**PARALLEL)(**kw, coupling="mean", delta_softplus=True,
                                      return_last_state=True)
        y_r, h_r = coupled_selective_scan_ref(**{k: v.float() for k, v in kw.items()},
                                              coupling="mean", delta_softplus=True,
                                              return_last_state=True)
        assert y.dtype == dtype and h.dtype == torch.float32
        tol = TOL[torch.float32] if dtype == torch.float32 else 4 * torch.finfo(dtype).eps
        assert _rel(y, y_r) < tol and _rel(h, h_r) < TOL[torch.float32]

    def test_auto_picks_parallel_forward_only_without_autograd(self, make_scan_inputs,
                                                                monkeypatch):
        kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=6)
        launches = []
        real = _triton_chunked._par_meta
        monkeypatch.setattr(_triton_chunked, "_par_meta",
                            lambda *a: launches.append(1) or real(*a))
        with torch.no_grad():
            _triton.coupled_selective_scan_triton(**kw)
        assert launches == [1]
        _triton.coupled_selective_scan_triton(**kw).sum().backward()  # chunked: saves states
        _triton.coupled_selective_scan_triton(**kw, coupling=_matrix(2, torch.float64))  # seq
        assert launches == [1]

    @pytest.mark.parametrize("coupling", CHUNKED_COUPLINGS, ids=str)
    @pytest.mark.parametrize(
        "M,Bt,D,N,L,tiling",
        [
            (3, 2, 3, 5, 21, {}),  # 3 blocks, the last partial; 2 channel programs (dB, dC by
            # atomics), one padded; M = 3 padded to 4, N = 5
            (2, 1, 3, 4, 16, dict(time_block=16, block_d=4)),  # one whole block, one channel
            # program (dB, dC stored)
            (1, 1, 2, 3, 1, dict(block_d=1)),  # one modality, L = 1
            (3, 1, 4, 4, 40, dict(time_block=None, block_d=None)),  # default tiling
        ],
        ids=["M3-L21", "M2-L16-oneblock", "M1-L1", "M3-L40-default"],
    )
    def test_parallel_backward_matches_reference(self, coupling, M, Bt, D, N, L, tiling,
                                                 make_scan_inputs, monkeypatch):
        """The parallel layout's backward: y, last state and every gradient (initial_state and
        the last state's gradient included), and not the chunked kernels."""
        kw = make_scan_inputs(M=M, Bt=Bt, D=D, N=N, L=L, with_state=True)
        monkeypatch.setattr(_triton_chunked, "_chunk_bwd_launch", None)  # would fail if called
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "sum" is not contractive
            _compare(kw, coupling, base=PARALLEL_BWD, **tiling)

    @optional_arguments
    def test_parallel_backward_optional_arguments(self, with_D, with_z, with_bias, with_state,
                                                  softplus, make_scan_inputs):
        kw = make_scan_inputs(M=3, Bt=1, D=3, N=4, L=13, with_D=with_D, with_z=with_z,
                              with_bias=with_bias, with_state=with_state)
        if not softplus:
            kw["delta"] = kw["delta"].detach().abs().add(0.05).requires_grad_(True)
        _compare(kw, "mean", softplus=softplus, last=with_state, base=PARALLEL_BWD)
        _compare(kw, "none", softplus=softplus, last=not with_state, base=PARALLEL_BWD)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
    def test_parallel_backward_fp32_and_bf16(self, dtype, make_scan_inputs):
        kw = make_scan_inputs(M=2, Bt=1, D=4, N=4, L=17, dtype=dtype, with_state=True)
        if dtype == torch.float32:
            _compare(kw, "mean", base=PARALLEL_BWD)
            return
        for name in ("A", "D", "delta_bias", "initial_state"):  # parameters may stay fp32
            kw[name] = kw[name].detach().float().requires_grad_(True)
        y_t, h_t, g_t = _run(_triton_fn(**PARALLEL_BWD), kw, "mean")
        kw32 = {k: v.detach().float().requires_grad_(True) for k, v in kw.items()}
        y_r, h_r, g_r = _run(coupled_selective_scan_ref, kw32, "mean")
        eps = torch.finfo(dtype).eps
        assert y_t.dtype == dtype and _rel(y_t, y_r) < 4 * eps and _rel(h_t, h_r) < 1e-5
        for name in g_r:
            assert g_t[name].dtype == kw[name].dtype, name
            assert _rel(g_t[name], g_r[name]) < 4 * eps, name

    def test_parallel_under_autograd_runs_chunked(self, make_scan_inputs):
        """Gradients through variant="parallel" (the chunked kernels) match the reference."""
        kw = make_scan_inputs(M=3, Bt=1, D=3, N=5, L=11, with_state=True)
        _compare(kw, "mean", base=PARALLEL)

    @pytest.mark.parametrize("coupling,tiling", [(0.5, TINY), ("mean", CHUNKED),
                                                 ("none", CHUNKED), ("mean", PARALLEL),
                                                 ("none", PARALLEL)], ids=str)
    def test_piecewise_equals_whole(self, coupling, tiling, make_scan_inputs):
        kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=14, with_state=True, requires_grad=False)
        fn = _triton_fn(**tiling)
        y, h = fn(**kw, coupling=coupling, delta_softplus=True, return_last_state=True)
        rest = {k: v for k, v in kw.items() if k != "initial_state"}
        first = {k: (v[..., :9] if v.dim() == 4 else v) for k, v in rest.items()}
        second = {k: (v[..., 9:] if v.dim() == 4 else v) for k, v in rest.items()}
        y1, h1 = fn(**first, initial_state=kw["initial_state"], coupling=coupling,
                    delta_softplus=True, return_last_state=True)
        y2, h2 = fn(**second, initial_state=h1, coupling=coupling, delta_softplus=True,
                    return_last_state=True)
        assert _rel(torch.cat([y1, y2], -1), y) < 1e-12
        assert _rel(h2, h) < 1e-12


    @pytest.mark.parametrize("coupling", ["mean", "none", 0.3])
    def test_encoder_chunked_inference_on_triton(self, coupling):
        """The encoder's chunked inference (state carried between chunks) through the Triton
        scan equals its whole-sequence forward, and the reference scan's."""
        from coupled_mamba.modules import CoupledMambaEncoder

        torch.manual_seed(0)
        enc = CoupledMambaEncoder(3, 8, n_layers=2, d_state=4, coupling=coupling,
                                  scan_impl="triton", inference_chunk=5).double().eval()
        g = torch.Generator().manual_seed(1)
        xs = [torch.randn(2, 12, 8, generator=g, dtype=torch.float64) for _ in range(3)]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            chunked = enc(xs)
            enc.inference_chunk = None
            whole = enc(xs)
            for layer in enc.layers:
                layer.scan_impl = "ref"
            ref = enc(xs)
        for a, b, r in zip(chunked, whole, ref, strict=True):
            assert _rel(a, b) < 1e-12 and _rel(b, r) < 1e-10

    @pytest.mark.parametrize("tiling", [TINY, CHUNKED], ids=["seq", "chunked"])
    def test_forward_without_grad_stores_no_checkpoints(self, tiling, make_scan_inputs,
                                                         monkeypatch):
        # Chunked: chunks of 8 without autograd (4 with), so L = 11 takes a partial second one.
        # Inputs require grad, as model parameters do: no_grad alone must turn saving off.
        kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=11, with_state=True, requires_grad=True)
        saved = []
        for module, name in ((_triton_seq, "_fwd_launch"), (_triton_chunked, "_chunk_fwd_launch")):
            real = getattr(module, name)

            def spy(*args, _real=real):
                saved.append(args[-1])  # the `save` flag
                return _real(*args)

            monkeypatch.setattr(module, name, spy)
        with torch.no_grad():
            y, h = _triton.coupled_selective_scan_triton(
                **kw, delta_softplus=True, return_last_state=True, **tiling)
        assert saved == [False]
        assert not y.requires_grad
        kw = {k: v.detach() for k, v in kw.items()}
        y_r, h_r = coupled_selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
        assert _rel(y, y_r) < 1e-10 and _rel(h, h_r) < 1e-10


    def test_dispatcher_reaches_triton_only_when_asked(self, monkeypatch, make_scan_inputs):
        kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=9, requires_grad=False)
        y = coupled_selective_scan(**kw, delta_softplus=True, impl="triton")  # default tiling
        assert _rel(y, coupled_selective_scan_ref(**kw, delta_softplus=True)) < 1e-10
        # variant="auto" takes the sequential kernel for a general W (chunked would raise).
        W = _matrix(2, torch.float64).detach()
        y = coupled_selective_scan(**kw, delta_softplus=True, coupling=W, impl="triton")
        y_r = coupled_selective_scan_ref(**kw, delta_softplus=True, coupling=W)
        assert _rel(y, y_r) < 1e-10

        def boom(*args, **kwargs):
            raise AssertionError("impl='auto' picked the Triton interpreter for CPU tensors")

        monkeypatch.setattr(_triton, "coupled_selective_scan_triton", boom)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            coupled_selective_scan(**kw, delta_softplus=True, impl="auto")


compiled_mode = pytest.mark.skipif(
    INTERPRETING, reason="TRITON_INTERPRET=1: the process runs Triton's interpreter"
)


@compiled_mode
def test_interpreter_suite():
    """Run TestInterpreter in a child pytest with TRITON_INTERPRET=1; every case must pass."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-k", "TestInterpreter",
           "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    assert proc.returncode == 0, f"interpreter cases failed:\n{out[-6000:]}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 28, summary
    assert not re.search(r"failed|error|skipped", summary), summary


@compiled_mode
def test_cpu_tensors_need_the_interpreter(make_scan_inputs):
    kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=5, requires_grad=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        _triton.coupled_selective_scan_triton(**kw)
    if not torch.cuda.is_available():
        ok, reason = _triton.is_available()
        assert not ok and "CUDA" in reason


def test_bad_tiling_raises(make_scan_inputs):
    kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=5, requires_grad=False)
    with pytest.raises(ValueError, match="chunk"):
        _triton.coupled_selective_scan_triton(**kw, variant="seq", chunk=12)
    with pytest.raises(ValueError, match="sub_chunk"):
        _triton.coupled_selective_scan_triton(**kw, variant="seq", chunk=4, sub_chunk=8)
    for variant in ("seq", "chunked"):
        with pytest.raises(ValueError, match="block_d"):
            _triton.coupled_selective_scan_triton(**kw, variant=variant, block_d=3)
    with pytest.raises(ValueError, match="time_block"):
        _triton.coupled_selective_scan_triton(**kw, variant="chunked", time_block=6)
    with pytest.raises(ValueError, match="variant"):
        _triton.coupled_selective_scan_triton(**kw, variant="fast")


def test_chunked_rejects_general_coupling(make_scan_inputs):
    kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=5, requires_grad=False)
    with pytest.raises(ValueError, match="variant='seq'"):
        _triton.coupled_selective_scan_triton(**kw, coupling=0.3, variant="chunked")


def test_parallel_blocks_follow_short_sequences():
    """Blocks of the parallel forward: the default length unless L is shorter, then the power of
    two at or above L (16 at least), with no more warps than 64-step groups in the block."""
    assert _triton._par_tiling(1000, 256, 4) == (256, 4)
    assert _triton._par_tiling(128, 512, 4) == (128, 2)
    assert _triton._par_tiling(40, 256, 4) == (64, 1)
    assert _triton._par_tiling(1, 512, 4) == (16, 1)
    assert _triton._par_tiling(5000, 512, 8) == (512, 8)


def test_variant_environment_override(monkeypatch, make_scan_inputs):
    kw = make_scan_inputs(M=2, Bt=1, D=3, N=4, L=5, requires_grad=False)
    monkeypatch.setenv(_triton.VARIANT_ENV, "fastest")
    with pytest.raises(ValueError, match=_triton.VARIANT_ENV):
        _triton.coupled_selective_scan_triton(**kw)


def _ptxas_usage(ptx: str, tmp_path) -> tuple[int, int] | None:
    """(registers, spill-store bytes) per thread from the ptxas bundled with Triton, or None."""
    import triton

    src = tmp_path / "k.ptx"
    src.write_text(ptx)
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):  # the first that takes this PTX version
        exe = os.path.join(bindir, name)
        if not os.path.exists(exe):
            continue
        out = subprocess.run([exe, "-v", "--gpu-name", "sm_90a", str(src), "-o",
                              str(tmp_path / "k.cubin")], capture_output=True, text=True)
        regs = re.search(r"Used (\d+) registers", out.stderr)
        spills = re.search(r"(\d+) bytes spill stores", out.stderr)
        if out.returncode == 0 and regs and spills:
            return int(regs.group(1)), int(spills.group(1))
    return None


@compiled_mode
def test_kernels_compile_for_sm90(tmp_path):
    """Triton's real compiler (not the interpreter) accepts every kernel, down to a cubin.

    Sequential kernels: the general coupling with every optional input and dW is the largest
    specialisation. Chunked kernels: rank one (all M modalities in a program) and "none" with
    every optional input at the default tiling for N = 64 and N = 16, and the parallel forward
    for both, checked for register spills with ptxas where it runs here.
    """
    k = _triton._kernels()[0]
    M, Bt, Dd, L = 3, 2, 256, 40
    e = torch.empty
    N = 16
    u, B = e(M, Bt, Dd, L), e(M, Bt, N, L)
    A, h = e(M, Dd, N), e(M, Bt, Dd, N)
    p, W, ckpt = e(M, Dd), e(M, M), e(1, M, Bt, Dd, N)
    cfg = _triton._Config(kind=2, weight=1.0, softplus=True, grad=True, chunk=_triton.CHUNK,
                          sub_chunk=_triton.SUB_CHUNK, block_d_fwd=8, block_d_bwd=4,
                          num_warps=4)
    args, meta = _triton._fwd_launch(u, u, A, B, B, p, u, p, W, h, u, h, ckpt, cfg, True)
    compiled = [_triton._compile_for(k._fwd_kernel, args, meta, cfg.num_warps)]
    grads = (u, u, u, B, B, e(Bt, M, Dd, N), e(Bt, M, Dd), e(Bt, M, Dd), e(Bt, 4, M, M), h)
    args, meta = _triton._bwd_launch(u, u, A, B, B, p, u, p, W, ckpt, u, h, e(8), grads, cfg,
                                     True, True)
    compiled.append(_triton._compile_for(k._bwd_kernel, args, meta, cfg.num_warps))
    for N, n_mod in ((64, M), (64, 1), (16, M)):
        B, A, h = e(M, Bt, N, L), e(M, Dd, N), e(M, Bt, Dd, N)
        bd = _triton._chunk_block_d(Dd, _triton._pow2(N), 4)
        ccfg = _triton._ChunkConfig(
            n_mod=n_mod, weight=1.0, softplus=True, grad=True, t_fwd=_triton._chunk_t_fwd(N),
            t_bwd=_triton.CHUNK_T_BWD, block_d_fwd=bd, block_d_bwd=bd, num_warps=4)
        for save in (False, True):
            args, meta = _triton._chunk_fwd_launch(u, u, A, B, B, p, u, p, h, u, h, e(1, 1),
                                                   ccfg, save)
            compiled.append(_triton._compile_for(k._fwd_chunk_kernel, args, meta, 4))
        grads = (u, u, u, B, B, e(Bt, M, Dd, N), e(Bt, M, Dd), e(Bt, M, Dd), h)
        args, meta = _triton._chunk_bwd_launch(u, u, A, B, B, p, u, p, e(1, 1), u, h, grads,
                                               ccfg, True)
        compiled.append(_triton._compile_for(k._bwd_chunk_kernel, args, meta, 4))
        # The parallel forward at its default tiling.
        pcfg = _triton._ChunkConfig(
            n_mod=n_mod, weight=1.0, softplus=True, grad=False, t_fwd=8, t_bwd=4, block_d_fwd=1,
            block_d_bwd=1, num_warps=4, parallel=True)
        meta, options = _triton._par_meta(u, B, p, u, p, h, torch.float32, pcfg)
        sizes = [Bt, Dd, N, L, 1.0]
        for save in (False, True):
            args = [u, u, A, B, B, p, u, p, h, u, h, h, e(1, 1), *sizes]
            compiled.append(_triton._compile_for(k._fwd_par_kernel, args, {**meta, "SAVE": save},
                                                 options["num_warps"]))
        # Its backward, with the same tiling.
        grads = (u, u, u, B, B, e(Bt, M, Dd, N), e(Bt, M, Dd), e(Bt, M, Dd), h)
        args = [u, u, A, B, B, p, u, p, e(1, 1), u, h, *grads, h, *sizes]
        compiled.append(_triton._compile_for(k._bwd_par_kernel, args,
                                             {**meta, "HAS_DLAST": True, "ATOMIC_BC": True},
                                             options["num_warps"]))
    for i, c in enumerate(compiled):
        assert ".target sm_90" in c.asm["ptx"]
        assert c.asm.get("cubin")
        if i >= 2:  # the chunked and parallel kernels must fit in registers
            usage = _ptxas_usage(c.asm["ptx"], tmp_path)
            if usage is not None:
                assert usage[1] == 0, f"kernel {i}: {usage[1]} bytes of register spills"


# --- on a GPU ------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING,
                         reason="needs a CUDA device (and compiled Triton)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("coupling", COUPLINGS)
def test_gpu_matches_reference(coupling, make_scan_inputs):
    # "sum" overflows float32 after ~80 steps by design (docs/MATH.md, section 2): a short sequence.
    L = 40 if coupling == "sum" else 150
    kw = make_scan_inputs(M=3, Bt=2, D=40, N=16, L=L, dtype=torch.float32, device="cuda",
                          with_state=True)
    W = _matrix(3, torch.float32).cuda() if coupling == "matrix" else coupling
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # Default tiling through the dispatcher: impl="auto" must pick Triton on CUDA.
        y_r, h_r, g_r = _run(coupled_selective_scan_ref, kw, W)
        y_t, h_t, g_t = _run(
            lambda **a: coupled_selective_scan(**a, impl="auto"), kw, W
        )
    assert _rel(y_t, y_r) < 1e-4 and _rel(h_t, h_r) < 1e-4
    for name in g_r:
        assert _rel(g_t[name], g_r[name]) < 1e-3, name


@pytest.mark.gpu
@gpu
def test_gpu_bf16(make_scan_inputs):
    kw = make_scan_inputs(M=3, Bt=2, D=64, N=16, L=300, dtype=torch.bfloat16, device="cuda")
    y = coupled_selective_scan(**kw, delta_softplus=True, impl="triton")
    kw32 = {k: v.detach().float() for k, v in kw.items()}
    y32 = coupled_selective_scan_ref(**kw32, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert _rel(y, y32) < 4 * torch.finfo(torch.bfloat16).eps


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("coupling", ["none", "mean"])
@pytest.mark.parametrize("variant", ["parallel", "chunked"])
def test_gpu_forward_without_autograd(coupling, variant, make_scan_inputs):
    # 700 steps: several blocks of the parallel kernel at its default tiling.
    kw = make_scan_inputs(M=3, Bt=2, D=40, N=16, L=700, dtype=torch.float32, device="cuda",
                          with_state=True, requires_grad=False)
    y_r, h_r = coupled_selective_scan_ref(**kw, delta_softplus=True, return_last_state=True,
                                          coupling=coupling)
    y, h = _triton.coupled_selective_scan_triton(**kw, delta_softplus=True, coupling=coupling,
                                                 return_last_state=True, variant=variant)
    assert _rel(y, y_r) < 1e-4 and _rel(h, h_r) < 1e-4
