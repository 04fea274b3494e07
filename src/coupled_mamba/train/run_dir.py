"""The run directory of :mod:`.run` (its layout is in that module's docstring): which files
are a run's, refusing to overwrite one, checking a --resume against it, reading its config and
writing its JSON.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import UserInputError
from .config import ExperimentConfig
from .fingerprint import FINGERPRINT_NAME

# Config keys that may differ between an interrupted run and its --resume.
RESUMABLE_CHANGES = {"data.path", "train.device", "train.progress", "train.num_workers",
                     "train.tensorboard"}



def json_safe(obj: Any) -> Any:
    """NaN/inf -> None so that the JSON is standard (jq, browsers); numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(json_safe(obj), indent=2) + "\n")


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """UserInputError if ``out`` (or the nearest existing folder above it) is not a folder."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = f"{out}" if p == out else f"{out} (its parent {p})"
                raise UserInputError(f"{flag} {what}: exists and is not a folder")
            return


def holds_run(out: Path) -> bool:
    """True if ``out`` already holds (part of) a run."""
    return (out / "config.yaml").exists() or any(out.glob("seed_*"))


def run_files(out: Path) -> list[Path]:
    """What a run and its ``evaluate`` write into ``out`` (other files are the user's)."""
    names = ("config.yaml", "metrics.json", FINGERPRINT_NAME)
    return ([out / n for n in names if (out / n).exists()] + sorted(out.glob("evaluate_*.json"))
            + sorted(p for p in out.glob("seed_*") if p.is_dir()))


def clear_run(out: Path) -> None:
    """Delete a previous run's files so that ``--overwrite`` leaves only the new run's (stale
    seed folders would otherwise be averaged in by ``evaluate``)."""
    for p in run_files(out):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def refusal_message(out: Path) -> str:
    state = ("a finished run" if (out / "metrics.json").is_file()
             else "an unfinished run (no metrics.json: it was interrupted or failed)")
    return (f"{out} already holds {state}; add --resume to continue it, --overwrite to replace "
            "it, or choose another --out")


def check_resume_config(out: Path, cfg: ExperimentConfig) -> None:
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        raise FileNotFoundError(f"--resume: {saved_path} not found (nothing to resume)")
    saved = read_config(saved_path)
    changes = config_changes(saved.to_dict(), cfg.to_dict())
    if changes:
        raise UserInputError(f"--resume: the command's config differs from the run's "
                             f"{saved_path} in {', '.join(changes)}; rerun the original "
                             "command with --resume")


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"section.key: old -> new"`` for every key of two ``ExperimentConfig.to_dict()`` that
    differs, except :data:`RESUMABLE_CHANGES`; sorted by key."""
    a, b = flatten_sections(saved), flatten_sections(new)
    diffs = sorted(k for k in set(a) | set(b)
                   if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diffs]


def flatten_sections(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and prefix == "":
            out.update(flatten_sections(v, key + "."))
        else:
            out[key] = v
    return out


def read_config(path: Path) -> ExperimentConfig:
    """A run's ``config.yaml``; a damaged file is a UserInputError naming it."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: not valid YAML ({exc})") from None
    return ExperimentConfig.from_dict(raw, str(path))
