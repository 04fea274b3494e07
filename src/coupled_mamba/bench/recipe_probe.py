"""Train one recipe and print one JSON line: the probe behind the findings in docs/TRAINING.md
("Defaults that follow the data").

    python -m coupled_mamba.bench.recipe_probe '{"seed": 1112, "m": {"dt_max": 1.0}}'
    python -m coupled_mamba.bench.recipe_probe '{"setting": "xor", "set": ["train.lr=1e-3"]}'

Spec keys (all optional): ``seed`` (1111, the training seed), ``model`` (registry name,
coupled_mamba), ``d`` / ``m`` / ``t``: overrides of the data / model / train config sections,
``set``: ``section.key=value`` overrides as on the command line, ``name``: a label copied to the
output. Data: with ``setting``, that interaction-suite setting drawn with the training seed
(``make_interaction(setting, seed)``; ``n_train`` changes its training size); otherwise
``make_synthetic(n_train, 500, 1000, seq_len=L, seed=data_seed)`` with ``n_train`` 3000, ``L`` 40,
``data_seed`` 0. Keys not given follow the data
defaults (``train.recipe`` auto). The output has the test metric of the selected epoch and the
per-epoch history (epoch, train metric, valid metric, valid Corr for regression, seconds). One
torch thread.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import yaml

from ..data import make_synthetic
from ..data.interaction import SUITE, make_interaction, scaled
from ..train.config import ExperimentConfig
from ..train.data_prep import prepare_loaded
from ..train.run import train_run


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0]) if argv else {}
    torch.set_num_threads(1)
    seed = spec.get("seed", 1111)
    if "setting" in spec:
        setting = SUITE[spec["setting"]]
        if "n_train" in spec:
            setting = scaled(setting, n_train=spec["n_train"])
        data, refs = make_interaction(setting, seed=seed)
        metric = refs.metric
    else:
        data = make_synthetic(n_train=spec.get("n_train", 3000), n_valid=500, n_test=1000,
                              seq_len=spec.get("L", 40), seed=spec.get("data_seed", 0))
        metric = "MAE"
    raw = {"data": {"format": "npz", **spec.get("d", {})},
           "model": {"name": spec.get("model", "coupled_mamba"), **spec.get("m", {})},
           "train": {"device": "cpu", "tensorboard": False, "progress": False,
                     "seed": seed, **spec.get("t", {})}}
    cfg = ExperimentConfig.from_dict(raw, "spec")
    for item in spec.get("set", []):
        key, _, value = item.partition("=")
        cfg.set(key, yaml.safe_load(value), "spec")
    cfg.validate()
    prepared = prepare_loaded(data, cfg.data, cfg.train.seed)
    hist = []

    def record(trainer, epoch, row):
        hist.append((epoch, round(row[f"train_{metric}"], 3), round(row[f"valid_{metric}"], 3),
                     round(row.get("valid_Corr", float("nan")), 3), round(row["time_s"], 1)))

    t0 = time.time()
    r = train_run(cfg, None, prepared=prepared, callbacks=[record])
    test = r["test"]
    print(json.dumps({"spec": spec, f"test_{metric}": round(test[metric], 4),
                      "test_Corr": round(test.get("Corr", float("nan")), 4),
                      "best_epoch": r["best_epoch"],
                      "params": r["num_parameters"], "secs": round(time.time() - t0, 1),
                      "hist": hist}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
