"""Optimiser and learning-rate schedule of a run.

Parameters are split into two groups as nanoGPT's ``configure_optimizers`` does: weight decay
applies to the weight matrices and convolution kernels only. It never applies to biases, to
normalisation parameters, or to parameters flagged ``_no_weight_decay`` (``A_log`` and ``D`` of
the scan, coupling logits, fusion logits): decaying ``A_log`` towards 0 would push every state's
decay rate to 1, and decaying logits pulls the learned mixing towards uniform.

Schedules: ``step`` and ``cosine`` change the rate once per epoch; ``warmup_cosine`` once per
batch (a linear warm-up over ``warmup_epochs``, then a cosine to ``min_lr_ratio * lr``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..errors import UserInputError
from .config import TrainConfig

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def _is_norm(module: nn.Module) -> bool:
    # The package's own stacked norms (ModalityLayerNorm, RMS norms) name themselves *Norm.
    return isinstance(module, _NORMS) or type(module).__name__.endswith("Norm")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimiser groups: ``{"params": decayed, "weight_decay": weight_decay}`` and
    ``{"params": the rest, "weight_decay": 0.0}`` (module docstring). Each parameter appears once,
    also when modules share it; parameters with ``requires_grad=False`` are left out."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            skip = (getattr(p, "_no_weight_decay", False) or _is_norm(module)
                    or name.endswith("bias") or p.dim() < 2)
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.optimizer`` over :func:`param_groups` of ``model``."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise UserInputError(f"train.optimizer: expected adam, adamw or sgd, got {cfg.optimizer!r}")


class Schedule(NamedTuple):
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    per_batch: bool  # step() after every optimiser step (else after every epoch)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base rate after ``step`` optimiser steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> Schedule:
    """The schedule named by ``cfg.scheduler`` (module docstring)."""
    if cfg.scheduler == "step":
        return Schedule(torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size,
                                                        gamma=cfg.gamma), False)
    if cfg.scheduler == "cosine":
        return Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs),
                        False)
    if cfg.scheduler == "warmup_cosine":
        warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
        total = cfg.epochs * steps_per_epoch
        return Schedule(torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, warmup, total, cfg.min_lr_ratio)), True)
    if cfg.scheduler == "none":
        return Schedule(None, False)
    raise UserInputError(f"train.scheduler: expected step, cosine, warmup_cosine or none, "
                         f"got {cfg.scheduler!r}")
