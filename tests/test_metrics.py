"""Metrics: hand-computed cases that pin each MMSA definition, plus the other task families."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coupled_mamba.metrics import (
    classification_metrics,
    compute_metrics,
    mmsa_metrics,
    multilabel_metrics,
    summarize,
)


def test_mosei_ties_at_zero_and_clipping():
    # truth 0 counts as positive in Has0 and is dropped in Non0.
    t = [0.0, 0.0, 1.2, -0.4, 3.4, -2.6]
    p = [-0.2, 0.1, 0.5, 0.3, 2.6, -3.7]
    m = mmsa_metrics(p, t, "mosei")
    # Has0: (p>=0)==(t>=0): [F, T, T, F, T, T] -> 4/6
    assert m["Has0_acc_2"] == round(4 / 6, 4)
    # Non0 on t != 0 (last 4): (p>0)==(t>0): [T, F, T, T] -> 3/4
    assert m["Non0_acc_2"] == 0.75
    # Mult_acc_7: round(clip(., -3, 3)): p -> [-0, 0, 0, 0, 3, -3], t -> [0, 0, 1, -0, 3, -3]
    assert m["Mult_acc_7"] == round(5 / 6, 4)
    # Mult_acc_5: clip to +-2: p -> [-0, 0, 0, 0, 2, -2], t -> [0, 0, 1, -0, 2, -2] -> 5/6
    assert m["Mult_acc_5"] == round(5 / 6, 4)
    # MAE unclipped: |.2|+|.1|+|.7|+|.7|+|.8|+|1.1| = 3.6 / 6
    assert m["MAE"] == pytest.approx(0.6, abs=1e-4)
    assert m["Corr"] == round(float(np.corrcoef(np.float32(p), np.float32(t))[0, 1]), 4)


def test_mosei_round_half_to_even():
    # np.round(0.5) == 0 and np.round(1.5) == 2 (banker's rounding), as in MMSA.
    m = mmsa_metrics([0.5, 1.5, 2.5], [0.0, 2.0, 2.0], "mosi")
    assert m["Mult_acc_7"] == 1.0
    assert m["Mult_acc_5"] == 1.0  # 2.5 clips to 2


def test_mosei_weighted_f1_by_hand():
    t = [1.0, 2.0, -1.0, -2.0, 0.5]
    p = [1.0, -1.0, -1.0, -2.0, 0.5]
    # Has0 labels: t>=0 [1,1,0,0,1], p>=0 [1,0,0,0,1].
    # class 1: precision 2/2, recall 2/3 -> F1 0.8 (support 3); class 0: P 2/3, R 1 -> 0.8 (support 2)
    m = mmsa_metrics(p, t, "mosei")
    assert m["Has0_F1_score"] == 0.8
    assert m["Has0_acc_2"] == 0.8


def test_sims_bins_zero_is_negative():
    # 2 classes: (-1.01, 0] negative, (0, 1.01] positive; 0 is negative (unlike Has0).
    t = [0.0, 0.1, -0.1, 0.7, 1.0, -0.8]
    p = [0.0, 0.05, -0.05, 0.75, 1.7, -0.69]
    m = mmsa_metrics(p, t, "sims")
    # 2-class: t [0,1,0,1,1,0], p [0,1,0,1,1,0] -> 1.0
    assert m["Mult_acc_2"] == 1.0
    assert m["F1_score"] == 1.0
    # 3-class edges [-1.01,-0.1,0.1,1.01]: t [1,1,0,2,2,0], p [1,1,1,2,2,0] -> 5/6
    assert m["Mult_acc_3"] == round(5 / 6, 4)
    # 5-class edges [-1.01,-0.7,-0.1,0.1,0.7,1.01]:
    # t [2,2,1,3,4,0], p [2,2,2,4,4,1] -> 3/6
    assert m["Mult_acc_5"] == 0.5
    # MAE on CLIPPED values: 1.7 -> 1.0
    diffs = [0, 0.05, 0.05, 0.05, 0.0, 0.11]
    assert m["MAE"] == pytest.approx(np.mean(diffs), abs=1e-4)


def _sims_loop(p, t):
    """A literal transcription of MMSA's SIMS binning (loops and masks) as an oracle."""
    p = np.clip(np.asarray(p, np.float32), -1.0, 1.0)
    t = np.clip(np.asarray(t, np.float32), -1.0, 1.0)
    res = {}
    for k, edges in ((2, [-1.01, 0.0, 1.01]), (3, [-1.01, -0.1, 0.1, 1.01]),
                     (5, [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01])):
        pa, ta = p.copy(), t.copy()
        for i in range(k):
            pa[np.logical_and(p > edges[i], p <= edges[i + 1])] = i
            ta[np.logical_and(t > edges[i], t <= edges[i + 1])] = i
        res[k] = (pa, ta)
    return res


def test_sims_matches_literal_binning_on_random_values_with_edge_ties():
    rng = np.random.default_rng(0)
    edges = np.array([-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0])
    t = np.concatenate([rng.uniform(-1.3, 1.3, 300), rng.choice(edges, 100)])
    p = np.concatenate([rng.uniform(-1.3, 1.3, 300), rng.choice(edges, 100)])
    m = mmsa_metrics(p, t, "simsv2")
    bins = _sims_loop(p, t)
    for k in (2, 3, 5):
        pa, ta = bins[k]
        assert m[f"Mult_acc_{k}"] == round(float(np.mean(np.round(pa) == np.round(ta))), 4)


def test_accepts_tensors_and_rejects_bad_input():
    m = mmsa_metrics(torch.tensor([[0.5], [-0.5]]), torch.tensor([1.0, -1.0]), "mosi")
    assert m["Has0_acc_2"] == 1.0
    with pytest.raises(ValueError, match="dataset: expected one of"):
        mmsa_metrics([1.0], [1.0], "iemocap")
    with pytest.raises(ValueError, match="y_pred has 2 values but y_true has 3"):
        mmsa_metrics([1.0, 2.0], [1.0, 2.0, 3.0], "mosi")


def test_constant_prediction_gives_nan_corr_not_crash():
    m = mmsa_metrics([0.3, 0.3, 0.3], [1.0, -1.0, 2.0], "mosei")
    assert math.isnan(m["Corr"])


def test_classification_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    y = [0, 1, 1, 1]
    m = classification_metrics(logits, y)
    assert m["Accuracy"] == 0.75
    # class 0: P 1/2 R 1 -> 2/3; class 1: P 1 R 2/3 -> 0.8. macro = (2/3+0.8)/2
    assert m["F1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["F1_weighted"] == pytest.approx((2 / 3 * 1 + 0.8 * 3) / 4)
    # AUC: positive-class probabilities rank [1,3] above [0,2]? scores for y=1: .73,.27,.95
    # pairs (pos, neg=0.12): all 3 ranked correctly -> 1.0
    assert m["AUC"] == 1.0
    assert "AUC" not in classification_metrics(np.eye(3)[[0, 1, 2]], [0, 1, 2])


def test_multilabel_by_hand():
    logits = np.array([[5.0, -5.0, 5.0], [-5.0, 5.0, -5.0]])
    y = np.array([[1, 0, 0], [0, 1, 1]])
    m = multilabel_metrics(logits, y)
    # TP = 2 (row0 l0, row1 l1), FP = 1, FN = 1 -> micro F1 = 2*2/(2*2+1+1) = 2/3
    assert m["F1_micro"] == pytest.approx(2 / 3)
    # per label F1: l0 1.0, l1 1.0, l2 0 -> macro 2/3; samples: row0 2/3, row1 2/3
    assert m["F1_macro"] == pytest.approx(2 / 3)
    assert m["F1_samples"] == pytest.approx(2 / 3)


def test_compute_metrics_dispatch_and_summary():
    assert set(compute_metrics("regression", [1.0, 2.0, 4.0], [1.0, 2.0, 3.0])) == {"MAE", "MSE", "Corr"}
    with pytest.raises(ValueError, match="metric family"):
        compute_metrics("bleu", [1.0], [1.0])
    s = summarize([{"a": 1.0}, {"a": 3.0}])
    assert s["mean"]["a"] == 2.0 and s["std"]["a"] == 1.0  # population std, as MMSA
