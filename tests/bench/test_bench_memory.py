"""The peak-memory measurement itself: known allocations in fresh child processes."""

from __future__ import annotations

import sys

import pytest

from coupled_mamba.bench.memory import PeakRSS, is_oom_error, run_isolated

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="peak RSS via /proc is Linux-only")


@linux_only
def test_child_peak_rss_sees_torch_allocations_and_grows_with_them():
    small = run_isolated({"kind": "alloc", "mb": 24}, timeout=120)
    big = run_isolated({"kind": "alloc", "mb": 96}, timeout=120)
    assert small["status"] == "ok" and big["status"] == "ok", (small, big)
    # tracemalloc would report ~0 here: the tensor lives in torch's C++ allocator.
    for res, mb in ((small, 24), (big, 96)):
        assert 0.9 * mb <= res["work_mb"] <= 1.1 * mb + 4, res
        assert res["base_mb"] > 50  # the child's resident torch libraries, not counted as work
    assert big["work_mb"] - small["work_mb"] == pytest.approx(72, abs=8)


@linux_only
def test_allocation_over_the_cap_is_reported_as_oom_not_raised():
    res = run_isolated({"kind": "alloc", "mb": 3000}, timeout=120, max_memory_mb=1024)
    assert res["status"] == "OOM", res
    assert "allocate" in res["error"]


def test_failing_child_is_an_error_result():
    res = run_isolated({"kind": "no-such-kind"}, timeout=120)
    assert res["status"] == "error"
    assert "no-such-kind" in res["error"]


def test_spec_without_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        run_isolated({"mb": 1})


def test_oom_classification():
    assert is_oom_error(MemoryError())
    assert is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(ValueError("out of memory"))  # only allocator exception types


def test_stop_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start"):
        PeakRSS().stop()
