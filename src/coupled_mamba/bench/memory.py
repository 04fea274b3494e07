"""Peak-memory measurement for the benchmarks: CPU peak RSS in a fresh subprocess, CUDA allocator.

Why not ``tracemalloc``: it only sees allocations made through Python's allocator, and torch's CPU
tensors come from ``posix_memalign`` in C++, so a 1 GB activation is invisible to it. What this
module measures instead is what the operating system charges the process for.

**CPU** (Linux): each measurement runs in a fresh child process (:func:`run_isolated`), so no
earlier point's heap, caches or loaded code distort it. Inside the child, :class:`PeakRSS` does:

1. run the workload once or more first (warm-up and timing), so that code pages of libtorch,
   oneDNN/MKL scratch set-up and lazily loaded modules are already resident;
2. make every later allocation of 64 KiB or more an ``mmap`` of its own
   (``mallopt(M_MMAP_THRESHOLD)``) and return freed heap pages to the system (``malloc_trim``),
   so that memory freed by the workload leaves the process instead of staying as glibc's free
   lists, which would hide the next run's peak;
3. reset the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), read
   the current RSS (the *base*: libraries, model, inputs), run the workload once more and read
   ``VmHWM``: ``peak - base`` is the working memory of that one run.

Step 2 changes glibc's behaviour, so timings are taken before it. The alternative of a second
"baseline" child that builds the model but runs nothing, and ``ru_maxrss`` differences between the
two, is noisier: it also counts the code pages the first forward touches (tens of MB) and the
difference of two independently varying processes. It is the fallback here (method "maxrss")
when ``/proc/self/clear_refs`` is unavailable (non-Linux or a restricted container): the child's
``ru_maxrss`` after the workload minus its RSS before the first run.

**CUDA**: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated`` around one run,
minus ``memory_allocated`` before it (method "cuda_allocator"): bytes held by tensors, as the
paper's GPU memory figure reports, without the caching allocator's reserve.

The reported numbers are in MiB (2**20 bytes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

MIB = float(2**20)
_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 64 * 1024


def _status_kib(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None if unreadable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kib() -> int:
    """This process's ``ru_maxrss`` in KiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None)
    except OSError:
        return None


def _release_heap_to_os() -> None:
    """Large allocations become private mmaps from now on; give free heap pages back."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    libc.mallopt(_M_TRIM_THRESHOLD, 0)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _can_reset_hwm() -> bool:
    if _status_kib("VmHWM") is None:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident memory of one run of a workload, in the current process (module docstring).

    Usage (inside a child process, after warm-up)::

        tracker = PeakRSS()          # method "clear_refs" on Linux, else "maxrss"
        tracker.start()              # base = current RSS, high-water mark reset
        workload()
        peak_mib, base_mib = tracker.stop()

    With method "maxrss" the high-water mark cannot be reset, so :meth:`start` must be called
    before the first run of the workload in the process (the caller's responsibility; the
    efficiency worker does) and ``peak`` is the maximum over every run since.
    """

    def __init__(self):
        self.method = "clear_refs" if _can_reset_hwm() else "maxrss"
        self._base_kib: int | None = None

    def start(self) -> None:
        if self.method == "clear_refs":
            _release_heap_to_os()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base_kib = _status_kib("VmRSS")
        else:
            self._base_kib = _status_kib("VmRSS") or _maxrss_kib()

    def stop(self) -> tuple[float, float]:
        """(peak RSS, base RSS) in MiB since :meth:`start`."""
        if self._base_kib is None:
            raise RuntimeError("PeakRSS.stop() called before start()")
        peak = _status_kib("VmHWM") if self.method == "clear_refs" else _maxrss_kib()
        return peak / 1024.0, self._base_kib / 1024.0


class CudaPeak:
    """Peak bytes held by CUDA tensors during one run (``max_memory_allocated``)."""

    method = "cuda_allocator"

    def __init__(self, device):
        import torch

        self._torch = torch
        self.device = device
        self._base = 0

    def start(self) -> None:
        cuda = self._torch.cuda
        cuda.synchronize(self.device)
        cuda.reset_peak_memory_stats(self.device)
        self._base = cuda.memory_allocated(self.device)

    def stop(self) -> tuple[float, float]:
        cuda = self._torch.cuda
        cuda.synchronize(self.device)
        return cuda.max_memory_allocated(self.device) / MIB, self._base / MIB


# ---- isolated child processes ------------------------------------------------------------------

WORKER_MODULE = "coupled_mamba.bench._worker"


def run_isolated(spec: dict, timeout: float | None = None, max_memory_mb: float | None = None,
                 env: dict | None = None) -> dict:
    """Run one measurement ``spec`` in a fresh Python process and return its JSON result.

    The child runs ``python -m coupled_mamba.bench._worker`` with ``spec`` (JSON) on stdin; see
    :mod:`coupled_mamba.bench._worker` for the spec kinds. Failures never raise: the result then
    has ``"status"`` ``"timeout"``, ``"OOM"`` (an allocation failed, or the child was killed by
    SIGKILL, which is what the kernel's OOM killer sends) or ``"error"`` and an ``"error"``
    message.

    Args:
        spec: JSON-serialisable dict, must contain ``"kind"``.
        timeout: seconds before the child is killed (None = no limit).
        max_memory_mb: cap on the child's data segment (``RLIMIT_DATA``: heap and private
            mappings; Linux >= 4.7), so that an oversized point fails with an allocation error
            inside the child instead of pushing a shared machine into swap or the OOM killer.
        env: extra environment variables for the child.
    Returns:
        The child's result dict, plus ``"wall_s"`` (the child's total run time).
    """
    if "kind" not in spec:
        raise ValueError(f"spec: missing the key 'kind', got keys {sorted(spec)}")
    child_env = dict(os.environ)
    child_env.update(env or {})

    def limit():  # runs in the child between fork and exec
        if max_memory_mb is not None:
            cap = int(max_memory_mb * MIB)
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", WORKER_MODULE], input=json.dumps(spec), capture_output=True,
            text=True, timeout=timeout, env=child_env,
            preexec_fn=limit if max_memory_mb is not None else None,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout:g} s",
                "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        result = json.loads(lines[-1])
        result["wall_s"] = wall
        return result
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    if proc.returncode == -9 or _looks_like_oom(proc.stderr):
        return {"status": "OOM", "error": tail or "killed (SIGKILL)", "wall_s": wall}
    return {"status": "error", "error": tail or f"exit status {proc.returncode}", "wall_s": wall}


def _looks_like_oom(text: str) -> bool:
    text = text.lower()
    return any(s in text for s in ("can't allocate memory", "out of memory", "memoryerror",
                                   "cannot allocate memory"))


def is_oom_error(exc: BaseException) -> bool:
    """True for the exceptions an exhausted CPU or GPU allocator raises."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and _looks_like_oom(str(exc))


def measure_allocation(megabytes: float) -> dict:
    """Worker kind "alloc": peak working memory of allocating and filling a float32 tensor of
    ``megabytes`` MiB (a known answer for testing the measurement itself)."""
    import torch

    n = int(megabytes * MIB) // 4

    def workload():
        t = torch.empty(n, dtype=torch.float32)
        t.uniform_()  # touch every page: untouched pages are not resident
        return float(t[-1])

    tracker = PeakRSS()
    if tracker.method == "maxrss":
        tracker.start()
        workload()
    else:
        workload()  # warm-up, as the efficiency points do
        tracker.start()
        workload()
    peak, base = tracker.stop()
    return {"status": "ok", "work_mb": peak - base, "base_mb": base, "peak_rss_mb": peak,
            "memory_method": tracker.method}


def time_calls(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (``sync`` before and after each)."""
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times
