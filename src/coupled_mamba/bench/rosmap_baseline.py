"""Logistic-regression baseline for ROSMAP (or any MOGONET folder): the bar to clear.

Reads the folder with the same loader and settings as ``configs/rosmap.yaml`` (so the same
train / valid / test rows and the same train-only standardisation), concatenates the three omics
views into one feature vector per sample, and fits scikit-learn's LogisticRegression on the
training rows. The inverse regularisation C is chosen on the validation rows by the same
criterion the trainer uses (valid cross-entropy), from a fixed grid. Test metrics come from
``coupled_mamba.metrics.classification_metrics`` (accuracy, weighted/macro F1, AUC).

    .venv/bin/python -m coupled_mamba.bench.rosmap_baseline --data ROSMAP \
        --config configs/rosmap.yaml --out runs/rosmap_logreg.json

The fit is deterministic (lbfgs), so there is no seed to vary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from ..metrics import classification_metrics
from ..train.config import load_config
from ..train.data_prep import prepare_data

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def features(split, names: list[str]) -> np.ndarray:
    """(N, sum_m L * d_m): every modality's token sequence flattened, views concatenated.

    Zero padding at the end of the last token is a constant column and does not matter.
    """
    return np.concatenate([split.modalities[m].reshape(len(split.labels), -1) for m in names], 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MOGONET folder (e.g. ROSMAP)")
    p.add_argument("--config", default="configs/rosmap.yaml",
                   help="experiment config whose data section is used")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)

    cfg = load_config(args.config)
    prepared = prepare_data(cfg.data, seed=cfg.train.seed, path=args.data)
    names = prepared.modality_names
    x_tr, x_va = features(prepared.train, names), features(prepared.valid, names)
    x_te = features(prepared.test, names)
    y_tr, y_va, y_te = prepared.train.labels, prepared.valid.labels, prepared.test.labels

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=5000).fit(x_tr, y_tr)

    valid_loss = {c: log_loss(y_va, fit(c).predict_proba(x_va), labels=[0, 1]) for c in C_GRID}
    best_c = min(C_GRID, key=lambda c: valid_loss[c])
    results = {}
    for label, c in (("logreg_C1", 1.0), ("logreg_validC", best_c)):
        model = fit(c)
        results[label] = {
            "C": c,
            # log-probabilities act as logits: classification_metrics applies softmax for AUC.
            "test": classification_metrics(model.predict_log_proba(x_te), y_te),
            "valid": classification_metrics(model.predict_log_proba(x_va), y_va),
        }
    summary = {"data": str(args.data), "n_train": len(y_tr), "n_valid": len(y_va),
               "n_test": len(y_te), "n_features": int(x_tr.shape[1]),
               "valid_log_loss": {str(c): v for c, v in valid_loss.items()}, **results}
    for label, r in results.items():
        t = r["test"]
        print(f"{label:<14} C={r['C']:<6} test Accuracy {t['Accuracy']:.4f}  F1_weighted "
              f"{t['F1_weighted']:.4f}  F1_macro {t['F1_macro']:.4f}  AUC {t['AUC']:.4f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
