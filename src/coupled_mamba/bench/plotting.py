"""Plots of the benchmark results (matplotlib, Agg backend: no display needed).

Every function takes the rows the measuring code wrote (plain dicts, as in the CSV/JSON files)
and a PNG path, so a figure can be redrawn from a results file without measuring again.
Figures are ``FIGSIZE`` inches at ``DPI`` dots per inch (1000 x 400 pixels for two panels).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # before pyplot: benchmarks run headless
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

DPI = 100
PANEL_SIZE = (5.0, 4.0)  # inches per panel

LABELS = {
    "coupled_mamba": "Coupled Mamba",
    "coupled_mamba_torch_scan": "Coupled Mamba (torch scan)",
    "mamba_fusion": "Mamba fusion (uncoupled)",
    "cross_attention": "Cross-attention",
    "cross_attention_sdpa": "Cross-attention (SDPA)",
    "cross_attention_materialized": "Cross-attention (materialised)",
    "avg_fusion": "Average fusion",
    "concat_fusion": "Concat fusion",
}
STYLES = {
    "coupled_mamba": dict(color="C3", marker="o", lw=2.2),
    "coupled_mamba_torch_scan": dict(color="C3", marker="o", ls=":"),
    "mamba_fusion": dict(color="C0", marker="s"),
    "cross_attention": dict(color="C2", marker="^", ls="--"),
    "cross_attention_sdpa": dict(color="C2", marker="^", ls="--"),
    "cross_attention_materialized": dict(color="C1", marker="v", ls="--"),
    "avg_fusion": dict(color="C4", marker="D"),
    "concat_fusion": dict(color="C5", marker="P"),
}


def label(name: str) -> str:
    return LABELS.get(name, name)


def _style(name: str, i: int) -> dict:
    return STYLES.get(name, dict(color=f"C{(i + 6) % 10}", marker="o"))


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_efficiency(rows: list[dict], path: str, title: str = "") -> str:
    """Two panels like the paper's Figs. 3-4: median time and peak memory against L, log axes.

    Args:
        rows: efficiency rows of one mode (keys variant, L, status, time_ms, total_mb); points
            that are not "ok" are left out, and a variant's last skipped/OOM length is marked
            with an x on the top edge so a missing curve end is visibly missing, not absent.
        path: PNG file to write.
    Returns:
        ``path``. The image is 2 * PANEL_SIZE[0] x PANEL_SIZE[1] inches at DPI.
    """
    fig, axes = plt.subplots(1, 2, figsize=(2 * PANEL_SIZE[0], PANEL_SIZE[1]))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for ax, key, ylabel in ((axes[0], "time_ms", "median time per call (ms)"),
                            (axes[1], "total_mb", "peak memory (MiB)")):
        for i, v in enumerate(variants):
            pts = sorted((r["L"], r[key]) for r in rows
                         if r["variant"] == v and r["status"] == "ok" and r.get(key))
            if pts:
                ax.plot(*zip(*pts, strict=True), label=label(v), ms=5, **_style(v, i))
            failed = [r["L"] for r in rows if r["variant"] == v and r["status"] != "ok"]
            if failed:
                st = _style(v, i)
                ax.plot([min(failed)], [1.0], marker="x", color=st["color"], ms=8, ls="none",
                        transform=ax.get_xaxis_transform(), clip_on=False)
        ax.set_xscale("log")
        ax.set_yscale("log")
        lengths = sorted({r["L"] for r in rows})
        ax.set_xticks(lengths)  # label the measured lengths, in plain numbers
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ys = [r[key] for r in rows if r["status"] == "ok" and r.get(key)]
        # Within one decade there may be no major tick: label the minor ones then.
        short = bool(ys) and max(ys) < 10 * min(ys)
        ax.yaxis.set_minor_formatter(plain if short else NullFormatter())
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


GROUP_COLUMNS = 3  # panels per row of plot_groups


def plot_groups(groups: dict[str, list[dict]], path: str, metric: str,
                title: str = "") -> str:
    """One panel per ablation group: mean +- std of ``metric`` for each setting (points with
    error bars, y axis zoomed on the range of the values).

    Args:
        groups: group name -> rows with keys "setting" (label), "mean", "std" (std may be None).
        metric: y-axis label.
    Returns:
        ``path``; panels of PANEL_SIZE in rows of at most GROUP_COLUMNS (so min(n, 3) panels
        wide and ceil(n / 3) high for n groups).
    """
    n = max(len(groups), 1)
    ncols = min(n, GROUP_COLUMNS)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows),
                             squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, (name, rows) in zip(axes.flat, groups.items(), strict=False):
        xs = range(len(rows))
        means = [r["mean"] if r["mean"] is not None else math.nan for r in rows]
        stds = [r.get("std") or 0.0 for r in rows]
        # Points with error bars, not bars: the axis is zoomed on the differences.
        ax.errorbar(list(xs), means, yerr=stds, fmt="o", capsize=4, color="C0", ms=6)
        ax.set_xticks(list(xs))
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_xticklabels([str(r["setting"]) for r in rows], rotation=30, ha="right",
                           fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(metric)
        lows = [m - s for m, s in zip(means, stds, strict=True) if math.isfinite(m)]
        if lows:
            highs = [m + s for m, s in zip(means, stds, strict=True) if math.isfinite(m)]
            lo, hi = min(lows), max(highs)
            pad = max(0.15 * (hi - lo), 0.01 * max(abs(hi), abs(lo)), 1e-6)
            ax.set_ylim(lo - pad, hi + pad)
            for x, m in zip(xs, means, strict=True):
                if math.isfinite(m):
                    ax.annotate(f"{m:.3f}", (x, m), ha="left", va="center", fontsize=7,
                                xytext=(5, 0), textcoords="offset points")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(curves: dict[str, list[dict]], path: str, xlabel: str, ylabel: str,
                title: str = "") -> str:
    """Lines with a +- std band: ``curves`` maps a name to rows with keys "x", "mean", "std".

    Returns ``path``; one PANEL_SIZE panel, widened by half for the legend.
    """
    fig, ax = plt.subplots(figsize=(PANEL_SIZE[0] * 1.5, PANEL_SIZE[1]))
    for i, (name, rows) in enumerate(curves.items()):
        rows = sorted((r for r in rows if r.get("mean") is not None), key=lambda r: r["x"])
        if not rows:
            continue
        x = [r["x"] for r in rows]
        m = [r["mean"] for r in rows]
        s = [r.get("std") or 0.0 for r in rows]
        st = _style(name, i)
        ax.plot(x, m, label=label(name), ms=5, **st)
        ax.fill_between(x, [a - b for a, b in zip(m, s, strict=True)],
                        [a + b for a, b in zip(m, s, strict=True)], color=st["color"], alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
