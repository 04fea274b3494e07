"""Evaluation metrics: MMSA's sentiment metrics exactly, plus classification and multi-label ones.

Sentiment definitions follow MMSA's ``utils/metricsTop.py`` (see docs/METRICS.md): same clipping,
binning, float32 comparisons, weighted F1 and ``round(x, 4)``, and the same key names, so tables
line up with the literature. N is the number of samples, K the number of classes or labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, roc_auc_score

from ._tasks import METRIC_FAMILIES, MMSA_DATASETS

# Left-open bins (lo, hi] of MMSA's SIMS metrics, compared in float32 like MMSA's tensors.
_SIMS_EDGES = {
    2: np.array([-1.01, 0.0, 1.01], dtype=np.float32),
    3: np.array([-1.01, -0.1, 0.1, 1.01], dtype=np.float32),
    5: np.array([-1.01, -0.7, -0.1, 0.1, 0.7, 1.01], dtype=np.float32),
}


def _as_numpy(x, name: str, ndim: int | None = 1) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if ndim == 1:
        x = x.reshape(-1)
    elif ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {x.shape}")
    return x


def _pair(y_pred, y_true, ndim=1):
    p = _as_numpy(y_pred, "y_pred", ndim)
    t = _as_numpy(y_true, "y_true", ndim)
    if ndim == 1 and p.shape != t.shape:
        raise ValueError(f"y_pred has {p.shape[0]} values but y_true has {t.shape[0]}")
    if p.shape[0] == 0:
        raise ValueError("y_pred/y_true: no samples to evaluate")
    return p, t


def _corr(p: np.ndarray, t: np.ndarray) -> float:
    # Pearson r as MMSA computes it; NaN when either side is constant (numpy warns).
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.corrcoef(p, t)[0, 1])


def _r4(d: dict) -> dict:
    return {k: round(float(v), 4) for k, v in d.items()}


def _mosei(p: np.ndarray, t: np.ndarray) -> dict:
    nz = t != 0
    if nz.any():
        non0_acc = accuracy_score(t[nz] > 0, p[nz] > 0)
        non0_f1 = f1_score(t[nz] > 0, p[nz] > 0, average="weighted")
    else:
        warnings.warn("every label is exactly 0: Non0 metrics are undefined (NaN)", RuntimeWarning,
                      stacklevel=3)
        non0_acc = non0_f1 = float("nan")
    return _r4({
        "Has0_acc_2": accuracy_score(t >= 0, p >= 0),
        "Has0_F1_score": f1_score(t >= 0, p >= 0, average="weighted"),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        # np.round rounds half to even, as MMSA's does.
        "Mult_acc_5": np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(t, -2, 2))),
        "Mult_acc_7": np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(t, -3, 3))),
        "MAE": np.mean(np.abs(p - t)),
        "Corr": _corr(p, t),
    })


def _sims_classes(x: np.ndarray, k: int) -> np.ndarray:
    # Index i where edges[i] < x <= edges[i+1]; clipping keeps x inside (-1.01, 1.01].
    return np.searchsorted(_SIMS_EDGES[k], x, side="left") - 1


def _sims(p: np.ndarray, t: np.ndarray) -> dict:
    p = np.clip(p, -1.0, 1.0).astype(np.float32)
    t = np.clip(t, -1.0, 1.0).astype(np.float32)
    out = {f"Mult_acc_{k}": np.mean(_sims_classes(p, k) == _sims_classes(t, k)) for k in (2, 3, 5)}
    out["F1_score"] = f1_score(_sims_classes(t, 2), _sims_classes(p, 2), average="weighted")
    out["MAE"] = np.mean(np.abs(p - t))
    out["Corr"] = _corr(p, t)
    return _r4(out)


def mmsa_metrics(y_pred, y_true, dataset: str) -> dict[str, float]:
    """MMSA's regression metrics for a sentiment dataset.

    Args:
        y_pred: (N,) predictions (array, list or tensor; flattened).
        y_true: (N,) labels.
        dataset: "mosi" or "mosei" (Has0/Non0 binary accuracy and F1, Mult_acc_5/7, MAE, Corr on
            unclipped values) or "sims"/"simsv2" (values clipped to [-1, 1]; Mult_acc_2/3/5 over
            MMSA's left-open bins, weighted F1 of the 2-class bins, MAE, Corr).

    Returns:
        dict of floats rounded to 4 decimals, with MMSA's key names.
    """
    key = dataset.lower()
    if key not in MMSA_DATASETS:
        raise ValueError(f"dataset: expected one of {MMSA_DATASETS}, got {dataset!r}")
    p, t = _pair(y_pred, y_true)
    p = p.astype(np.float32)  # MMSA evaluates float32 tensors
    t = t.astype(np.float32)
    return _mosei(p, t) if key in ("mosi", "mosei") else _sims(p, t)


def regression_metrics(y_pred, y_true) -> dict[str, float]:
    """MAE, MSE and Pearson correlation for generic regression. y_pred, y_true: (N,)."""
    p, t = _pair(y_pred, y_true)
    p, t = p.astype(np.float64), t.astype(np.float64)
    return {"MAE": mean_absolute_error(t, p), "MSE": float(np.mean((p - t) ** 2)),
            "Corr": _corr(p, t)}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(scores, y_true) -> dict[str, float]:
    """Accuracy, weighted F1, macro F1 (BRCA-style) and, for two classes, ROC AUC (ROSMAP-style).

    Args:
        scores: (N, K) logits (softmax is applied for the AUC) or (N,) predicted class ids.
        y_true: (N,) class ids.
    """
    s = _as_numpy(scores, "scores", ndim=None)
    t = _as_numpy(y_true, "y_true").astype(np.int64)
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"scores has {s.shape[0]} rows but y_true has {t.shape[0]}")
    pred = s.argmax(axis=1) if s.ndim == 2 else s.astype(np.int64)
    out = {
        "Accuracy": accuracy_score(t, pred),
        "F1_weighted": f1_score(t, pred, average="weighted"),
        "F1_macro": f1_score(t, pred, average="macro"),
    }
    if s.ndim == 2 and s.shape[1] == 2:
        if len(np.unique(t)) == 2:
            out["AUC"] = roc_auc_score(t, _softmax(s.astype(np.float64))[:, 1])
        else:
            warnings.warn("AUC needs both classes in y_true; reporting NaN", RuntimeWarning,
                          stacklevel=2)
            out["AUC"] = float("nan")
    return {k: float(v) for k, v in out.items()}


def multilabel_metrics(scores, y_true, threshold: float = 0.5) -> dict[str, float]:
    """Micro, macro and samples F1 of thresholded sigmoid scores (MM-IMDB-style).

    Args:
        scores: (N, K) logits; a label is predicted when sigmoid(logit) >= threshold.
        y_true: (N, K) 0/1 labels.
    """
    s, t = _pair(scores, y_true, ndim=2)
    if s.shape != t.shape:
        raise ValueError(f"scores shape {s.shape} differs from y_true shape {t.shape}")
    prob = 1.0 / (1.0 + np.exp(-s.astype(np.float64)))
    pred = (prob >= threshold).astype(np.int64)
    t = (t > 0.5).astype(np.int64)
    kw = dict(zero_division=0)
    return {
        "F1_micro": float(f1_score(t, pred, average="micro", **kw)),
        "F1_macro": float(f1_score(t, pred, average="macro", **kw)),
        "F1_samples": float(f1_score(t, pred, average="samples", **kw)),
    }


def compute_metrics(family: str, outputs, labels) -> dict[str, float]:
    """Metrics of one family ("mosi", "mosei", "sims", "simsv2", "regression",
    "classification", "multilabel") from model outputs: (N,) or (N, 1) regression values, (N, K)
    logits for classification and multi-label."""
    if family in MMSA_DATASETS:
        return mmsa_metrics(outputs, labels, family)
    if family == "regression":
        return regression_metrics(outputs, labels)
    if family == "classification":
        return classification_metrics(outputs, labels)
    if family == "multilabel":
        return multilabel_metrics(outputs, labels)
    raise ValueError(f"metric family: expected one of {METRIC_FAMILIES}, got {family!r}")


# Metric each family selects checkpoints on when the user asks for a metric instead of the loss,
# and whether larger is better.
PRIMARY_METRIC: dict[str, tuple[str, bool]] = {
    "mosi": ("Non0_F1_score", True),
    "mosei": ("Non0_F1_score", True),
    "sims": ("F1_score", True),
    "simsv2": ("F1_score", True),
    "regression": ("MAE", False),
    "classification": ("F1_macro", True),
    "multilabel": ("F1_micro", True),
}


def summarize(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and population std (as MMSA reports) of each metric over seeds."""
    if not runs:
        raise ValueError("summarize: no runs")
    keys = list(runs[0])
    arr = {k: np.array([r[k] for r in runs], dtype=np.float64) for k in keys}
    return {"mean": {k: float(v.mean()) for k, v in arr.items()},
            "std": {k: float(v.std()) for k, v in arr.items()}}
