"""Packaging: what the wheel holds, what the core install needs, and a fresh-venv install.

The fresh-venv test builds the wheel, installs it the way a user would (torch first, then the
core, then the [cli] extra) into a venv that sees nothing of this environment, and runs the
demo from it: it fails if the dependency metadata, the package data or the entry point is wrong.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "numpy", "safetensors", "ninja"}
TORCH_PIN = "torch==2.13.0"  # the Makefile's pin: a CPU wheel

# Imports of modules that only extras provide fail inside this prelude, as in a core install.
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"yaml", "tqdm", "sklearn", "h5py", "matplotlib", "scipy", "tensorboard", "optuna"}
    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, _Blocker())
""")

USE_THE_LAYERS = textwrap.dedent("""
    import torch
    import coupled_mamba as cm
    model = cm.create_model("coupled_mamba", input_dims=[3, 4], d_model=8, d_state=4,
                            n_layers=1, proj_hidden=8, head_hidden=4)
    model([torch.randn(2, 5, 3), torch.randn(2, 5, 4)]).sum().backward()
    mixer = cm.CoupledMambaMixer(2, 8, d_state=4)
    mixer([torch.randn(2, 5, 8), torch.randn(2, 5, 8)])
    print("backend", cm.scan_backend(torch.zeros(1)))
""")


def _clean_env(**extra) -> dict:
    """This environment without what would let a child import the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools leaves build/ and *.egg-info next to the sources, and a stale
    # build/lib in the checkout could slip removed files into later wheels.
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
         env=_clean_env())
    (whl,) = out.glob("coupled_mamba-*.whl")
    return whl


def test_wheel_holds_sources_licence_types_and_core_metadata(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    csrc = {n for n in names if n.startswith("coupled_mamba/ops/csrc/")}
    expected = {f"coupled_mamba/ops/csrc/{f}" for f in os.listdir(
        ROOT / "src/coupled_mamba/ops/csrc")}
    assert csrc == expected and len(csrc) >= 6
    assert "coupled_mamba/py.typed" in names and "coupled_mamba/__main__.py" in names
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{info}/licenses/LICENSE" in names
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode())
    assert meta["License-Expression"] == "MIT"
    requires = meta.get_all("Requires-Dist")
    core = {r.split(">")[0].split("=")[0].split(";")[0].strip() for r in requires
            if "extra ==" not in r}
    assert core == CORE, requires
    assert {"cli", "bench", "all"} <= set(meta.get_all("Provides-Extra"))
    entry = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "coupled-mamba = coupled_mamba.train.cli:main" in entry


def test_core_works_without_the_extras_and_the_cli_says_what_to_install():
    """The layers, models and scan import and run with every extra's modules unimportable; the
    command line then fails with one line naming the extra."""
    src = str(ROOT / "src")
    env = _clean_env(PYTHONPATH=src)
    out = _run([sys.executable, "-c", BLOCKER + USE_THE_LAYERS], env=env)
    assert "backend" in out.stdout
    cli = subprocess.run([sys.executable, "-c", BLOCKER + "import runpy, sys\n"
                          "sys.argv = ['coupled_mamba', '--help']\n"
                          "runpy.run_module('coupled_mamba', run_name='__main__')"],
                         capture_output=True, text=True, env=env)
    assert cli.returncode == 1, cli.stderr
    assert cli.stderr.strip().splitlines() == [
        "coupled-mamba: error: this needs the [cli] extra (no module named 'yaml'): "
        "pip install 'coupled-mamba[cli]'"]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_the_demo(wheel, tmp_path):
    """torch first (the pinned CPU wheel), then the core alone, then [cli]; run from outside the
    repository so that only the installed package can be imported."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    # A private extensions cache: the kernel built from site-packages has other build arguments
    # than the source tree's, and sharing the default cache would make the two rebuild in turn.
    env = _clean_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"))
    _run([py, "-m", "pip", "install", "-q", TORCH_PIN], env=env)
    _run([py, "-m", "pip", "install", "-q", str(wheel)], env=env)
    out = _run([py, "-c", USE_THE_LAYERS], env=env, cwd=tmp_path)
    assert "backend cpu" in out.stdout  # the C++ sources shipped and built from site-packages
    for module in ("yaml", "sklearn", "matplotlib"):
        probe = subprocess.run([py, "-c", f"import {module}"], capture_output=True, env=env)
        assert probe.returncode != 0, f"the core install pulled in {module}"
    cli = subprocess.run([py, "-m", "coupled_mamba", "--help"], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert cli.returncode == 1 and "pip install 'coupled-mamba[cli]'" in cli.stderr

    _run([py, "-m", "pip", "install", "-q", f"{wheel}[cli]"], env=env)
    demo = _run([py, "-m", "coupled_mamba", "demo", "--epochs", "1", "--quiet"], env=env,
                cwd=tmp_path, timeout=600)
    rows = [line.split() for line in demo.stdout.splitlines()
            if line.startswith(("coupled_mamba ", "mamba_fusion "))]
    assert [r[0] for r in rows] == ["coupled_mamba", "mamba_fusion"], demo.stdout
    for row in rows:  # name, params, time, five metrics, gap closed, rule found or not
        assert len(row) == 10 and all(0.0 <= float(v) <= 10.0 for v in row[3:8]), row
        assert abs(float(row[8])) < 100 and row[9] in ("found", "not"), row
