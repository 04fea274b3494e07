"""Reports of the accuracy benchmarks (:mod:`.ablations`): significance, Markdown tables,
missing-rate curves, and the CSV / JSON / Markdown / PNG files of one benchmark.

Rows are the dicts :func:`coupled_mamba.bench.ablations.run_settings` returns: one per setting,
with the mean and population std over the seeds of every test metric.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence

import numpy as np

# Metrics shown in the tables per metric family (all metrics are in the CSV/JSON).
TABLE_METRICS = {
    "mosi": ("Non0_acc_2", "Non0_F1_score", "MAE", "Corr"),
    "mosei": ("Non0_acc_2", "Non0_F1_score", "MAE", "Corr"),
    "sims": ("Mult_acc_2", "F1_score", "MAE", "Corr"),
    "simsv2": ("Mult_acc_2", "F1_score", "MAE", "Corr"),
    "regression": ("MAE", "Corr"),
    "classification": ("Accuracy", "F1_macro", "AUC"),
    "multilabel": ("F1_micro", "F1_macro", "F1_samples"),
}


def primary_metric(family: str) -> str:
    """The metric a benchmark of this family is judged by (first of PRIMARY_METRIC)."""
    from coupled_mamba.metrics import PRIMARY_METRIC

    return PRIMARY_METRIC[family][0]


def mean_std_text(mean, std, digits: int = 4) -> str:
    """"mean ± std" for a table cell ("n/a" for a missing or non-finite mean)."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


# ---- significance ------------------------------------------------------------------------------

def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value of two seed samples (None with < 2 seeds each or no
    variance). A small-sample check, not a correction for the many comparisons of a table."""
    from scipy import stats

    a = [x for x in a if x is not None and math.isfinite(x)]
    b = [x for x in b if x is not None and math.isfinite(x)]
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


# ---- output ------------------------------------------------------------------------------------

def _metric_list(rows: list[dict], metrics: Sequence[str] | None) -> list[str]:
    family = rows[0]["metric_family"]
    wanted = list(metrics) if metrics else list(TABLE_METRICS.get(family, ()))
    present = [m for m in wanted if m in rows[0]["mean"]]
    return present or list(rows[0]["mean"])[:4]


def table_markdown(rows: list[dict], metrics: Sequence[str] | None = None,
                   reference: str | None = None) -> str:
    """A markdown table: one line per row (group, setting), metrics as mean ± std over seeds,
    and when ``reference`` (a label in the same group) is given, Welch p-values of the primary
    metric against it."""
    if not rows:
        return ""
    ms = _metric_list(rows, metrics)
    primary = primary_metric(rows[0]["metric_family"])
    ref_by_group = {r["group"]: r for r in rows if r["label"] == reference}
    head = ["group", "setting"] + [f"{m}" for m in ms]
    if ref_by_group:
        head.append(f"p vs {reference} ({primary})")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        line = [r["group"], str(r["label"])] + [mean_std_text(r["mean"].get(m), r["std"].get(m))
                                               for m in ms]
        if ref_by_group:
            ref = ref_by_group.get(r["group"])
            p = None
            if ref is not None and ref is not r:
                p = welch_p([x.get(primary) for x in r["per_seed"]],
                            [x.get(primary) for x in ref["per_seed"]])
            line.append("" if p is None else f"{p:.2f}")
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out) + "\n"


def missing_markdown(rows: list[dict], metric: str, reference: str = "coupled_mamba") -> str:
    """Missing-rate table: one line per rate, one column per model (``metric`` mean ± std), with
    the Welch p-value against ``reference`` at the same rate in parentheses."""
    curves = missing_curves(rows, metric)
    rates = sorted({p["x"] for pts in curves.values() for p in pts})
    head = ["missing rate"] + list(curves)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in rates:
        at = {m: next((p for p in pts if p["x"] == x), None) for m, pts in curves.items()}
        ref = at.get(reference)
        cells = []
        for m, p in at.items():
            if p is None:
                cells.append("")
                continue
            cell = mean_std_text(p["mean"], p["std"])
            pv = welch_p(p["per_seed"], ref["per_seed"]) if ref and m != reference else None
            cells.append(cell + ("" if pv is None else f" (p {pv:.2f})"))
        out.append("| " + " | ".join([f"{x:g}"] + cells) + " |")
    return "\n".join(out) + "\n"


def missing_curves(rows: list[dict], metric: str) -> dict[str, list[dict]]:
    """model -> [{"x": rate, "mean", "std", "per_seed"}] from either protocol's rows."""
    curves: dict[str, list[dict]] = {}
    for r in rows:
        if "by_rate" in r:
            for rate, rec in r["by_rate"].items():
                curves.setdefault(r["model"], []).append(
                    {"x": float(rate), "mean": rec["mean"].get(metric),
                     "std": rec["std"].get(metric),
                     "per_seed": [s.get(metric) for s in rec["per_seed"]]})
        else:
            curves.setdefault(r["model"], []).append(
                {"x": r["x"], "mean": r["mean"].get(metric), "std": r["std"].get(metric),
                 "per_seed": [s.get(metric) for s in r["per_seed"]]})
    return curves


CSV_FIXED = ("group", "label", "model", "x", "params", "data", "seeds", "split", "train_seconds",
             "num_parameters")


def write_ablation(rows: list[dict], out_dir: str, name: str, header: dict,
                   metrics: Sequence[str] | None = None, reference: str | None = None,
                   plot_metric: str | None = None) -> list[str]:
    """Write ``{name}.csv`` (one line per setting, or per (model, rate) for missing; every
    metric's mean and std), ``{name}.json`` (``header`` + rows), ``{name}.md`` and
    ``{name}.png``; returns the paths."""
    from ..train.run_dir import json_safe
    from .environment import describe
    from .plotting import plot_curves, plot_groups

    family = rows[0]["metric_family"]
    metric = plot_metric or primary_metric(family)
    flat = _flat_rows(rows)
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in ("csv", "json", "md", "png")]
    metric_keys = list(dict.fromkeys(k for r in flat for k in r if k not in CSV_FIXED))
    with open(paths[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIXED) + metric_keys, extrasaction="ignore")
        w.writeheader()
        for r in flat:
            w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v)
                        for k, v in r.items()})
    with open(paths[1], "w") as f:
        json.dump(json_safe({**header, "rows": rows}), f, indent=2)
        f.write("\n")
    lines = [f"Environment: {describe(header['environment'])}", ""]
    other = [f"{r['label']}: {r.get('code') or 'not recorded'} (finished {r.get('finished')})"
             for r in rows if r.get("code") != header["environment"]["git_commit"]]
    if other:  # reused with --any-code: the numbers are not this commit's
        lines += ["Runs trained by other code than this report's commit: " + "; ".join(other),
                  ""]
    lines += [f"Command: `{header['command']}`", "", header.get("description", ""), ""]
    if name == "missing":
        lines += [f"Test {metric}, mean ± std over seeds {rows[0]['seeds']} (p: two-sided "
                  "Welch t-test against coupled_mamba at the same rate):", "",
                  missing_markdown(rows, metric)]
        plot_curves(missing_curves(rows, metric), paths[3], xlabel="missing rate r",
                    ylabel=f"test {metric}", title=header.get("title", ""))
    else:
        lines += [f"Test metrics, mean ± std over seeds {rows[0]['seeds']}:", "",
                  table_markdown(rows, metrics, reference)]
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r["group"], []).append(
                {"setting": r["label"], "mean": r["mean"].get(metric),
                 "std": r["std"].get(metric)})
        plot_groups(groups, paths[3], metric=f"test {metric}", title=header.get("title", ""))
    with open(paths[2], "w") as f:
        f.write("\n".join(lines))
    return paths


def _flat_rows(rows: list[dict]) -> list[dict]:
    flat = []
    for r in rows:
        base = {k: r.get(k) for k in CSV_FIXED}
        items = ([(float(rate), rec) for rate, rec in r["by_rate"].items()] if "by_rate" in r
                 else [(r["x"], r)])
        for x, rec in items:
            row = dict(base, x=x)
            for m, v in rec["mean"].items():
                row[f"{m}_mean"] = v
                row[f"{m}_std"] = rec["std"].get(m)
            flat.append(row)
    return flat
