"""The results of a ``coupled-mamba tune`` study: trials.csv, a text table and a plot.

Every function reads Optuna's frozen trials (or the rows made from them); none needs pandas or
Optuna's plotting extras. Epochs are the epochs a trial reported (its last intermediate step).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: tuning runs headless
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

FIXED_COLUMNS = ("number", "state", "value", "epochs", "duration_s")


def trial_rows(trials) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value, epochs, duration_s, the parameters (by config
    key) and ``note`` (why a trial was stopped, when it was not the pruner)."""
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "epochs": max(t.intermediate_values, default=0),
                     "duration_s": None if duration is None else round(duration, 1),
                     **t.params, "note": t.user_attrs.get("stopped", "")})
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(FIXED_COLUMNS)
    for r in rows:
        cols += [k for k in r if k not in cols and k != "note"]
    return [*cols, "note"]


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_columns(rows), restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def _ranked(rows: list[dict[str, Any]], higher: bool) -> list[dict[str, Any]]:
    """Complete trials best first, then pruned ones, then the rest, each by trial number."""
    def key(r):
        if r["state"] == "complete" and r["value"] is not None:
            return (0, -r["value"] if higher else r["value"], r["number"])
        return (1 if r["state"] == "pruned" else 2, 0.0, r["number"])
    return sorted(rows, key=key)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_table(rows: list[dict[str, Any]], higher: bool, top: int = 10) -> str:
    """The ``top`` best trials as an aligned text table (parameters by their short names)."""
    cols = [c for c in _columns(rows) if c not in ("duration_s", "note")]
    header = ["trial" if c == "number" else c.partition(".")[2] or c for c in cols]
    body = [[_cell(r.get(c)) for c in cols] for r in _ranked(rows, higher)[:top]]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(x.rjust(w) for x, w in zip(line, widths, strict=True))
             for line in (header, *body)]
    if len(rows) > top:
        lines.append(f"({len(rows) - top} more trials in trials.csv)")
    return "\n".join(lines)


def plot_study(trials, path: Path, metric: str, higher: bool) -> Path:
    """Two panels: each trial's value with the best so far, and every trial's validation curve
    (pruned trials grey, ending in a cross)."""
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(10, 4))
    best, best_x, best_y = None, [], []
    for t in trials:
        curve = sorted(t.intermediate_values.items())
        state = t.state.name.lower()
        if state == "complete" and t.value is not None and math.isfinite(t.value):
            ax_h.plot(t.number, t.value, "o", color="C0")
            if best is None or (t.value > best if higher else t.value < best):
                best = t.value
            if curve:
                ax_c.plot(*zip(*curve, strict=True), color="C0", alpha=0.6)
        elif state == "pruned" and curve:
            ax_h.plot(t.number, curve[-1][1], "x", color="0.5")
            ax_c.plot(*zip(*curve, strict=True), color="0.6", alpha=0.6)
            ax_c.plot(*curve[-1], "x", color="0.5")
        if best is not None:
            best_x.append(t.number)
            best_y.append(best)
    if best_x:
        ax_h.step(best_x, best_y, where="post", color="C3", label="best so far")
        ax_h.legend()
    ax_h.set(xlabel="trial", ylabel=f"valid {metric}", title="optimisation history")
    ax_c.set(xlabel="epoch", ylabel=f"valid {metric}", title="validation curves")
    for ax in (ax_h, ax_c):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
