"""Where and when a benchmark ran: date, machine, load, package versions (kept with results)."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """stdout of a git command run in this package's directory, or None (no git, no checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_version() -> str | None:
    """The code this package runs: the short commit of its source checkout, plus
    ``+<hash of the diff>`` when the package's files differ from that commit (so two different
    sets of uncommitted changes never look alike). None outside a git checkout."""
    commit = (_git("rev-parse", "--short", "HEAD") or "").strip()
    if not commit:
        return None
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    diff = _git("diff", "HEAD", "--", package_dir)
    if diff:
        return f"{commit}+{hashlib.sha1(diff.encode()).hexdigest()[:8]}"
    return commit


def environment_info(device: str = "cpu", threads: int | None = None) -> dict:
    """A JSON-serialisable description of this run's environment.

    Keys: date (ISO, local time with offset), cpu, cpu_count, load_average (1/5/15 min, or None),
    python, platform, versions (torch, numpy, triton, coupled-mamba ...), git_commit (see
    ``code_version``: commit, "+diff hash" when the package has uncommitted changes, or None),
    device, gpu (name or None), threads.
    """
    import torch

    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    versions = {p: _version(p) for p in ("torch", "numpy", "triton", "matplotlib",
                                         "scikit-learn", "coupled-mamba")}
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {k: v for k, v in versions.items() if v is not None},
        "torch_cuda": torch.version.cuda,
        "git_commit": code_version(),
        "device": str(device),
        "gpu": gpu,
        "threads": threads if threads is not None else torch.get_num_threads(),
    }


def describe(env: dict) -> str:
    """One line for logs and docs."""
    where = env["gpu"] or f"{env['cpu']} ({env['cpu_count']} cores)"
    vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    load = f", load {env['load_average']}" if env.get("load_average") else ""
    return (f"{env['date']} | {where} | {env['threads']} thread(s){load} | python "
            f"{env['python']}, {vers} | commit {env['git_commit']}")
