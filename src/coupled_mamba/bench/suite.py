"""``coupled-mamba bench suite``: registered models x interaction settings x seeds.

Each (setting, seed) pair generates its own data (``make_interaction(setting, seed)``) and trains
every model on it with the same experiment config (the package defaults unless ``--config`` /
``--set`` say otherwise) and the training seed ``seed``. A record holds the test score in the
setting's metric (MAE or accuracy), the gap it closes between the pooled reference and the oracle
(:class:`coupled_mamba.data.interaction.References`) and whether that solves the setting.

Records are appended to ``OUT/runs.jsonl`` as they finish and reused by a rerun with the same
settings, config and code (``environment.code_version``), so an interrupted suite continues;
an interruption (Ctrl-C, SIGTERM) or a failed pair also stops the workers' unfinished pairs.
Several worker processes (``--workers``) train pairs in parallel, one torch thread each by
default.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import hashlib
import json
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_MODELS = ("coupled_mamba", "mamba_fusion", "avg_fusion", "concat_fusion")


def _key(setting: str, model: str, seed: int, scale: float, cfg: dict, code: str | None) -> str:
    blob = json.dumps([setting, model, seed, scale, cfg, code], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_pair(setting: str, model: str, seed: int, scale: float, raw_cfg: dict,
             threads: int, *, data_seed: int | None = None,
             callbacks: Sequence[Callable] = ()) -> dict:
    """Train ``model`` on (setting, seed) and return its record (runs in a worker process).

    ``data_seed`` draws the data from another seed than the training seed (default: the same);
    ``callbacks`` go to the trainer (``coupled_mamba.train.run.train_run``)."""
    import torch

    from coupled_mamba.data.interaction import make_interaction
    from coupled_mamba.train.config import ExperimentConfig
    from coupled_mamba.train.data_prep import prepare_loaded
    from coupled_mamba.train.run import train_run

    torch.set_num_threads(threads)
    data, refs = make_interaction(setting, seed=seed if data_seed is None else data_seed,
                                  scale=scale)
    cfg = ExperimentConfig.from_dict(raw_cfg, "suite config")
    cfg.model.name = model
    cfg.train.seed, cfg.train.n_seeds, cfg.train.progress = seed, 1, False
    cfg.train.tensorboard = False
    cfg.validate()
    prepared = prepare_loaded(data, cfg.data, seed)
    t0 = time.perf_counter()
    result = train_run(cfg, None, prepared=prepared, callbacks=callbacks)
    score = float(result["test"][refs.metric])
    return {"setting": setting, "model": model, "seed": seed, "metric": refs.metric,
            "score": score, "oracle": refs.oracle, "pooled": refs.pooled,
            "gap_closed": refs.gap_closed(score), "solved": refs.solved(score),
            "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
            "params": result["num_parameters"], "time_s": round(time.perf_counter() - t0, 1),
            "defaults": result.get("data_defaults")}


@contextlib.contextmanager
def _sigterm_raises():
    """While active, SIGTERM raises SystemExit(143) in this process (main thread only): its
    default action would end the process at once and leave the spawned workers training."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_suite(settings: Sequence[str], models: Sequence[str], seeds: Sequence[int],
              raw_cfg: dict, out_dir: str, *, scale: float = 1.0, workers: int = 1,
              threads: int = 1, progress: bool = True) -> list[dict]:
    """Train every (setting, model, seed) not yet recorded in ``out_dir/runs.jsonl``."""
    from tqdm.auto import tqdm

    from .environment import code_version

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "runs.jsonl")
    done = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    done[r["key"]] = r
    code = code_version()
    todo, records = [], []
    for s in settings:
        for seed in seeds:
            for m in models:
                key = _key(s, m, seed, scale, raw_cfg, code)
                if key in done:
                    records.append(done[key])
                else:
                    todo.append((key, s, m, seed))
    bar = tqdm(total=len(todo), desc="suite", disable=not progress)
    # spawn: the parent may hold torch threads; forked OpenMP runtimes can deadlock.
    ctx = mp.get_context("spawn")
    before = set(mp.active_children())
    pool = cf.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx)
    try:
        with _sigterm_raises(), open(path, "a") as log:
            futures = {pool.submit(run_pair, s, m, seed, scale, raw_cfg, threads): key
                       for key, s, m, seed in todo}
            for fut in cf.as_completed(futures):
                rec = {"key": futures[fut], "code": code, **fut.result()}
                log.write(json.dumps(_finite(rec)) + "\n")
                log.flush()
                records.append(rec)
                bar.set_postfix_str(f"{rec['setting']} {rec['model']} {rec['seed']}: "
                                    f"{rec['metric']} {rec['score']:.3f}")
                bar.update()
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or a pair failed: the workers would otherwise finish
        # their pairs, or go on training after this process is gone, for results nobody
        # records. The finished records are in runs.jsonl; a rerun trains the rest.
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in set(mp.active_children()) - before:
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    order = {s: i for i, s in enumerate(settings)}
    return sorted(records, key=lambda r: (order[r["setting"]], r["model"], r["seed"]))


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj


def summarize_suite(records: list[dict], models: Sequence[str]) -> list[dict]:
    """One row per setting: references and, per model, mean/std score, mean gap closed and
    the number of solved seeds."""
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r["setting"], {"setting": r["setting"], "metric": r["metric"],
                                             "oracle": [], "pooled": []})
        row["oracle"].append(r["oracle"])
        row["pooled"].append(r["pooled"])
        cell = row.setdefault(r["model"], {"score": [], "gap": [], "solved": 0, "n": 0})
        cell["score"].append(r["score"])
        cell["gap"].append(np.nan if r["gap_closed"] is None else r["gap_closed"])
        cell["solved"] += bool(r["solved"])
        cell["n"] += 1
    out = []
    for row in rows.values():
        # References differ per data seed (one data set per seed): report their mean.
        row["oracle"], row["pooled"] = float(np.mean(row["oracle"])), float(np.mean(row["pooled"]))
        for m in models:
            if m in row:
                c = row[m]
                row[m] = {"mean": float(np.mean(c["score"])), "std": float(np.std(c["score"])),
                          "gap": float(np.nanmean(c["gap"])), "solved": c["solved"],
                          "n": c["n"]}
        out.append(row)
    return out


def suite_markdown(rows: list[dict], models: Sequence[str]) -> str:
    """The table: setting, metric, references, then per model mean +- std (solved/seeds)."""
    head = "| setting | metric | oracle | pooled | " + " | ".join(models) + " |"
    lines = [head, "|" + "---|" * (4 + len(models))]
    totals = {m: [0, 0] for m in models}
    for row in rows:
        cells = []
        for m in models:
            c = row.get(m)
            if c is None:
                cells.append("")
                continue
            totals[m][0] += c["solved"]
            totals[m][1] += c["n"]
            cells.append(f"{c['mean']:.3f} ± {c['std']:.3f} ({c['solved']}/{c['n']})")
        lines.append(f"| {row['setting']} | {row['metric']} | {row['oracle']:.3f} | "
                     f"{row['pooled']:.3f} | " + " | ".join(cells) + " |")
    lines.append("| **solved (setting, seed) pairs** | | | | " + " | ".join(
        f"**{s}/{n}** ({100 * s / n:.0f}%)" if n else "" for s, n in totals.values()) + " |")
    return "\n".join(lines) + "\n"


def plot_suite(records: list[dict], models: Sequence[str], path: str) -> str:
    """Gap closed per setting (one dot per seed, one colour per model), 0.8 = solved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from coupled_mamba.data.interaction import SOLVED_GAP

    settings = list(dict.fromkeys(r["setting"] for r in records))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(settings) + 2), 4.0))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        for j, s in enumerate(settings):
            gaps = [r["gap_closed"] for r in records
                    if r["model"] == m and r["setting"] == s and r["gap_closed"] is not None]
            x = j - 0.4 + width * (i + 0.5)
            ax.scatter([x] * len(gaps), np.clip(gaps, -0.2, 1.1), s=14, color=f"C{i}",
                       label=m if j == 0 else None, alpha=0.8)
    ax.axhline(SOLVED_GAP, color="grey", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xticks(range(len(settings)), settings, rotation=30, ha="right")
    ax.set_ylabel("gap closed (pooled = 0, oracle = 1)")
    ax.legend(fontsize=8, ncol=len(models), loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_suite(records: list[dict], models: Sequence[str], out_dir: str, header: dict
                ) -> list[str]:
    """suite.md (table + provenance), suite.csv (one row per record), suite.json, suite.png."""
    rows = summarize_suite(records, models)
    md = os.path.join(out_dir, "suite.md")
    with open(md, "w") as f:
        f.write(suite_markdown(rows, models))
        f.write("\n" + "\n".join(f"- {k}: {v}" for k, v in header.items()) + "\n")
    csv_path = os.path.join(out_dir, "suite.csv")
    keys = [k for k in records[0] if k not in ("defaults",)] if records else []
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    js = os.path.join(out_dir, "suite.json")
    with open(js, "w") as f:
        json.dump(_finite({"header": header, "summary": rows}), f, indent=2, default=str)
    png = plot_suite(records, models, os.path.join(out_dir, "suite.png"))
    return [md, csv_path, js, png]
