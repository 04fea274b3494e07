"""The training loop: the paper's recipe (docs/MATH.md, section 4) with MMSA's model selection.

One epoch = one pass over the training split in DistributedSampler order (also in a single
process, so a run and its ``torchrun`` twin see the same global batches), then an evaluation of
the validation split. The model with the best validation score (the valid loss by default, MMSA's
``KeyEval='Loss'``, with its 1e-6 margin) is kept; training stops after ``patience`` epochs without
improvement or at ``epochs``; the best weights are reloaded before testing.

Losses: L1 for regression (paper), cross-entropy for classification, BCE-with-logits for
multi-label. Evaluation losses are means over samples (MMSA averages batch means; the two agree
when every batch has the same size) so they do not depend on the batch size or the number of
ranks.

Shapes: B batch, L length, M modalities, K outputs (1 for regression).
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from coupled_mamba.metrics import PRIMARY_METRIC, compute_metrics

from ..errors import UserInputError
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistInfo, all_gather_rows
from .optim import build_optimizer, build_scheduler

LOWER_IS_BETTER = {"Loss", "MAE", "MSE"}
CHECKPOINT_NAME = "last.safetensors"


@dataclass
class EvalResult:
    loss: float
    metrics: dict[str, float]  # "Loss" first, then the metric family's keys
    outputs: np.ndarray  # (N, K) float32 model outputs in split order (logits for classification)
    labels: np.ndarray  # (N,) or (N, K) labels in split order


@dataclass
class FitResult:
    best_epoch: int  # 1-based epoch whose weights were selected
    best_score: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


class StopTraining(Exception):
    """Raised by a callback to end training cleanly after the current epoch."""


class NonFiniteLossError(UserInputError, FloatingPointError):
    """The training loss became NaN or inf: extreme feature values or too large a step size.

    A FloatingPointError too, which is what this condition raised before it was a user error.
    """


def _nonfinite_loss_message(loss: float, epoch: int, batch: dict[str, Any], ids,
                            names: Sequence[str]) -> str:
    """Where the batch's largest |feature| sits, to tell bad data from a bad step size."""
    rows = batch["index"].cpu().numpy()
    peaks = [x.detach().abs().amax(dim=(1, 2)).float().cpu().numpy() for x in batch["inputs"]]
    m = int(np.argmax([p.max() for p in peaks]))
    b = int(np.argmax(peaks[m]))
    return (f"non-finite training loss ({loss}) at epoch {epoch} on the train rows "
            f"{', '.join(repr(str(ids[i])) for i in rows[:5])}{', ...' if len(rows) > 5 else ''}"
            f"; their largest |feature| is {peaks[m][b]:.3g} (modality {names[m]!r}, row "
            f"{str(ids[rows[b]])!r}): rescale the features if that is large, else lower "
            "train.lr or set train.grad_clip")


def selection_key(select_on: str, family: str) -> tuple[str, bool]:
    """(metric key, higher is better) for ``train.select_on``."""
    if select_on == "loss":
        return "Loss", False
    if select_on == "primary":
        return PRIMARY_METRIC[family]
    for key, higher in PRIMARY_METRIC.values():
        if key == select_on:
            return key, higher
    return select_on, select_on not in LOWER_IS_BETTER


def _perfect_metrics(family: str, task: str, y: np.ndarray) -> dict[str, float]:
    """compute_metrics of predictions equal to the labels ``y`` ((N,) or (N, K))."""
    if task == "classification":
        k = int(y.max()) + 1
        out = np.eye(max(k, 2), dtype=np.float32)[y.astype(np.int64)]
    elif task == "multilabel":
        out = y.astype(np.float32) * 2 - 1
    else:
        out = y.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_metrics(family, out, y)


def metric_keys(family: str, task: str, labels: np.ndarray) -> list[str]:
    """Keys compute_metrics returns for this family (computed on perfect predictions)."""
    return ["Loss", *_perfect_metrics(family, task, labels[: min(len(labels), 64)])]


def check_selection(select_on: str, family: str, task: str, labels,
                    valid_labels=None) -> None:
    """UserInputError unless ``train.select_on`` names a metric this family reports and, given
    the validation labels, one that is defined on them (Corr of a constant target is NaN at
    every epoch, which would silently keep epoch 1)."""
    key, _ = selection_key(select_on, family)
    keys = metric_keys(family, task, np.asarray(labels))
    if key not in keys:
        raise UserInputError(f"train.select_on {select_on!r} is not a metric of {family!r}; use "
                             f"loss, primary or one of {', '.join(keys)}")
    if valid_labels is not None and key != "Loss":
        value = _perfect_metrics(family, task, np.asarray(valid_labels)).get(key)
        if value is None or not math.isfinite(value):
            raise UserInputError(
                f"train.select_on {select_on!r}: {key} is undefined (NaN) on the validation "
                "labels even for perfect predictions (e.g. Corr of a constant target), so no "
                "epoch could be selected; select on loss or another metric")


def loss_function(task: str, name: str = "auto") -> Callable[[torch.Tensor, torch.Tensor],
                                                              torch.Tensor]:
    """Mean loss of (B, K) outputs against labels: (B,) float | (B,) int64 | (B, K) float."""
    if name == "auto":
        name = {"regression": "l1", "classification": "ce", "multilabel": "bce"}[task]
    allowed = {"regression": ("l1", "mse"), "classification": ("ce",), "multilabel": ("bce",)}
    if name not in allowed[task]:
        raise UserInputError(f"train.loss {name!r} does not fit task {task!r}; use one of "
                             f"{', '.join(('auto', *allowed[task]))}")
    if name == "l1":
        return lambda out, y: F.l1_loss(out[:, 0], y.float())
    if name == "mse":
        return lambda out, y: F.mse_loss(out[:, 0], y.float())
    if name == "ce":
        return lambda out, y: F.cross_entropy(out, y.long())
    return lambda out, y: F.binary_cross_entropy_with_logits(out, y.float())


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {
        "inputs": [x.to(device, non_blocking=nb) for x in batch["inputs"]],
        "mask": [m.to(device, non_blocking=nb) for m in batch["mask"]],
        "present": batch["present"].to(device, non_blocking=nb),
        "labels": batch["labels"].to(device, non_blocking=nb),
        "index": batch["index"],
    }


class _Batches(Dataset):
    """Item ``[i_1, ..., i_B]`` -> the collated batch of those samples."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: list[int]) -> dict[str, Any]:
        return self.ds.batch(index)


class Trainer:
    """Fit, evaluate and predict one model on prepared splits.

    Args:
        model: an nn.Module following the model contract:
            ``model(inputs: list[(B, L, d_m)], mask: list[(B, L) bool], present: (B, M) bool)
            -> (B, K)``.
        cfg: the train section.
        task: "regression" | "classification" | "multilabel".
        metric_family: a key of ``coupled_mamba.metrics.PRIMARY_METRIC``.
        modality_names: modality order of the model's inputs.
        device: where to train.
        seed: the run seed (shuffling order of DistributedSampler).
        dist: rank info; with world_size > 1 the model is wrapped in DistributedDataParallel.
        out_dir: where rank 0 writes history.csv, TensorBoard events, the resumable checkpoint
            and ``best/`` (save_pretrained format); None writes nothing.
        callbacks: called as ``cb(trainer, epoch, row)`` after each epoch's checkpoint; a callback
            may raise :class:`StopTraining` (or anything else, to simulate a crash in tests).
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, *, task: str,
                 metric_family: str, modality_names: Sequence[str], device: torch.device,
                 seed: int, dist: DistInfo | None = None, out_dir: str | Path | None = None,
                 callbacks: Sequence[Callable] = ()):
        self.cfg = cfg
        self.task = task
        self.family = metric_family
        self.modality_names = list(modality_names)
        self.device = device
        self.seed = seed
        self.dist = dist or DistInfo()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks)
        self.model = model.to(device)
        self.net = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None)
        self.loss_fn = loss_function(task, cfg.loss)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = None  # built in fit(): a per-batch schedule needs the loader's length
        self._per_batch_schedule = False
        self.select_key, self.higher_is_better = selection_key(cfg.select_on, metric_family)
        self.autocast = cfg.bf16 and device.type == "cuda"
        if self.dist.enabled and cfg.batch_size % self.dist.world_size:
            warnings.warn(f"train.batch_size {cfg.batch_size} is not divisible by the "
                          f"{self.dist.world_size} ranks: each rank takes "
                          f"{cfg.batch_size // self.dist.world_size}", stacklevel=2)

    # ---- data ------------------------------------------------------------------------------
    def _loader(self, split, train: bool) -> DataLoader:
        from coupled_mamba.data import MultimodalTorchDataset

        ds = MultimodalTorchDataset(split, self.modality_names)
        bs = self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        bs = max(1, bs // self.dist.world_size)
        # DistributedSampler also for one process: its shuffle depends on (seed, epoch) only,
        # which makes resuming trivial and single-process batches equal DDP's global batches.
        sampler = DistributedSampler(ds, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=train, seed=self.seed, drop_last=False)
        # Whole batches are gathered with one index per array (MultimodalTorchDataset.batch)
        # instead of stacking B per-sample items.
        return DataLoader(_Batches(ds), sampler=BatchSampler(sampler, bs, drop_last=False),
                          batch_size=None, num_workers=self.cfg.num_workers,
                          pin_memory=self.device.type == "cuda")

    def _forward(self, net, batch) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            out = net(batch["inputs"], batch["mask"], batch["present"])
        return out.float()

    def _gather(self, outputs: list[torch.Tensor], labels: list[torch.Tensor],
                index: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Outputs, labels and sample indices of every rank, padding duplicates dropped, sorted
        by sample index."""
        out = torch.cat(outputs)
        lab = torch.cat(labels)
        idx = torch.cat(index).to(out.device)
        if self.dist.enabled:
            out = all_gather_rows(out, self.dist)
            lab = all_gather_rows(lab, self.dist)
            idx = all_gather_rows(idx, self.dist)
        out, lab, idx = out.cpu().numpy(), lab.cpu().numpy(), idx.cpu().numpy()
        _, first = np.unique(idx, return_index=True)  # sorted unique indices, first occurrence
        return out[first], lab[first], idx[first]

    def _metrics(self, outputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict]:
        loss = float(self.loss_fn(torch.from_numpy(outputs), torch.from_numpy(labels)))
        with warnings.catch_warnings():
            # Constant predictions early in training make Corr NaN; numpy/sklearn warn about it.
            warnings.simplefilter("ignore", RuntimeWarning)
            m = compute_metrics(self.family, outputs, labels)
        return loss, {"Loss": loss, **m}

    # ---- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split, desc: str = "eval") -> EvalResult:
        """Loss and metrics on ``split`` (all ranks take part under DDP; all get the result)."""
        self.model.eval()
        outs, labs, idxs = [], [], []
        for batch in tqdm(self._loader(split, train=False), desc=desc, leave=False,
                          disable=not (self.cfg.progress and self.dist.is_main)):
            batch = _to_device(batch, self.device)
            outs.append(self._forward(self.model, batch))
            labs.append(batch["labels"])
            idxs.append(batch["index"])
        out, lab, _ = self._gather(outs, labs, idxs)
        loss, metrics = self._metrics(out, lab)
        return EvalResult(loss, metrics, out, lab)

    # ---- training --------------------------------------------------------------------------
    def _train_epoch(self, loader: DataLoader, epoch: int, ids) -> dict[str, float]:
        """One pass over ``loader``; ``ids`` (N,) are the split's sample ids, for errors."""
        self.net.train()
        loader.sampler.sampler.set_epoch(epoch)  # BatchSampler(DistributedSampler)
        outs, labs, idxs = [], [], []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not (self.cfg.progress and self.dist.is_main))
        for batch in bar:
            batch = _to_device(batch, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            out = self._forward(self.net, batch)
            loss = self.loss_fn(out, batch["labels"])
            if not torch.isfinite(loss):
                raise NonFiniteLossError(_nonfinite_loss_message(
                    loss.item(), epoch + 1, batch, ids, self.modality_names))
            loss.backward()
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            if self.scheduler is not None and self._per_batch_schedule:
                self.scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            # Training metrics on the outputs seen during the epoch (dropout on), as MMSA does.
            outs.append(out.detach())
            labs.append(batch["labels"])
            idxs.append(batch["index"])
        out, lab, _ = self._gather(outs, labs, idxs)
        _, metrics = self._metrics(out, lab)
        return metrics

    def _improved(self, score: float, best: float | None) -> bool:
        if best is None or not math.isfinite(best):
            return best is None or math.isfinite(score)
        if not math.isfinite(score):
            return False
        d = self.cfg.min_delta
        return score > best + d if self.higher_is_better else score < best - d

    def fit(self, train, valid, resume: bool = False) -> FitResult:
        """Train on ``train``, select on ``valid``; leaves the best weights in ``self.model``.

        With ``resume=True`` and a checkpoint in ``out_dir``, continues from it: model,
        optimizer, scheduler, RNG states, history and early-stopping counters are restored.
        """
        cfg = self.cfg
        check_selection(cfg.select_on, self.family, self.task, train.labels)
        ckpt = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        start, best_epoch, best_score, bad, history = 0, 0, None, 0, []
        best_state: dict[str, torch.Tensor] | None = None
        loader = self._loader(train, train=True)
        self.scheduler, self._per_batch_schedule = build_scheduler(self.optimizer, cfg,
                                                                   len(loader))
        if resume and ckpt is not None and ckpt.is_file():
            p, best_state = load_checkpoint(ckpt, model=self.model, optimizer=self.optimizer,
                                            scheduler=self.scheduler)
            start, best_epoch, best_score = p["epoch"], p["best_epoch"], p["best_score"]
            bad, history = p["bad_epochs"], p["history"]
            if p["finished"]:
                if best_state:
                    self.model.load_state_dict(best_state)
                return FitResult(best_epoch, best_score, start, p["stopped_early"], history)
        writer = self._tensorboard()
        stopped_early = False
        bar = tqdm(range(start, cfg.epochs), desc="train", initial=start, total=cfg.epochs,
                   disable=not (cfg.progress and self.dist.is_main))
        epochs_run = start
        try:
            for epoch in bar:
                epochs_run = epoch + 1
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                train_m = self._train_epoch(loader, epoch, train.ids)
                if self.scheduler is not None and not self._per_batch_schedule:
                    self.scheduler.step()
                valid_r = self.evaluate(valid, desc="valid")
                score = valid_r.metrics.get(self.select_key, float("nan"))
                row = {"epoch": epoch + 1, "lr": lr,
                       **{f"train_{k}": v for k, v in train_m.items()},
                       **{f"valid_{k}": v for k, v in valid_r.metrics.items()},
                       "time_s": time.perf_counter() - t0}
                history.append(row)
                if self._improved(score, best_score):
                    best_epoch, best_score, bad = epoch + 1, score, 0
                    best_state = {k: v.detach().to("cpu", copy=True)
                                  for k, v in self.model.state_dict().items()}
                    self._save_best()
                else:
                    bad += 1
                stopped_early = cfg.patience > 0 and bad >= cfg.patience
                done = stopped_early or epoch + 1 == cfg.epochs
                if (epoch + 1) % cfg.checkpoint_every == 0 or done:
                    self._save_checkpoint(ckpt, epoch + 1, best_epoch, best_score, bad, history,
                                          best_state, finished=done,
                                          stopped_early=stopped_early)
                self._log(history, writer)
                bar.set_postfix({"valid " + self.select_key: f"{score:.4f}",
                                 "best": best_epoch})
                try:
                    for cb in self.callbacks:
                        cb(self, epoch + 1, row)
                except StopTraining:
                    done = True
                if done:
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return FitResult(best_epoch, best_score if best_score is not None else float("nan"),
                         epochs_run, stopped_early, history)

    # ---- files (rank 0 only) ---------------------------------------------------------------
    def _save_best(self) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        self.model.save_pretrained(self.out_dir / "best")

    def _save_checkpoint(self, ckpt, epoch, best_epoch, best_score, bad, history, best_state,
                         *, finished, stopped_early) -> None:
        if ckpt is None or not self.dist.is_main:
            return
        save_checkpoint(ckpt, model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, best_state=best_state,
                        progress={"epoch": epoch, "best_epoch": best_epoch,
                                  "best_score": best_score, "bad_epochs": bad,
                                  "history": history, "finished": finished,
                                  "stopped_early": stopped_early})

    def _tensorboard(self):
        if self.out_dir is None or not self.dist.is_main or not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    def _log(self, history: list[dict[str, float]], writer) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        write_history(self.out_dir / "history.csv", history)
        if writer is not None:
            row = history[-1]
            for k, v in row.items():
                if k != "epoch" and v is not None and math.isfinite(v):
                    split, _, name = k.partition("_")
                    tag = f"{name}/{split}" if split in ("train", "valid") else k
                    writer.add_scalar(tag, v, row["epoch"])
            writer.flush()


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
