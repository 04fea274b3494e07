"""Distributed helpers: one code path for a single process and for ``torchrun``.

Under ``torchrun --nproc_per_node=K`` (or any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT) the trainer joins a process group (gloo on CPU, nccl on CUDA), wraps the
model in DistributedDataParallel and reads data through DistributedSampler. Evaluation gathers the
predictions of every rank (``all_gather``) and drops the duplicates DistributedSampler adds to make
the shards even, so metrics are computed on exactly the N samples of the split, on every rank.
Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserInputError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_distributed() -> bool:
    """True when the environment says this process is one of several (torchrun sets these)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group if launched by torchrun; return this process's rank info.

    The backend is nccl for CUDA devices and gloo otherwise. A group that is already initialised
    (e.g. by the caller) is reused.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    if not launched_distributed():
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; under torchrun, ``cuda`` means this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError(f"device {name!r} requested but CUDA is not available "
                                 "(use --device cpu)")
        if name == "cuda":  # an explicit index: torch.cuda.set_device refuses a bare "cuda"
            index = (int(os.environ.get("LOCAL_RANK", 0)) if launched_distributed()
                     else torch.cuda.current_device())
            dev = torch.device("cuda", index)
        else:
            dev = torch.device(name)
        torch.cuda.set_device(dev)
        return dev
    return torch.device(name)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_rows(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate (n, ...) tensors of equal n from every rank, in rank order.

    DistributedSampler gives every rank the same number of samples, so equal n holds.
    """
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
