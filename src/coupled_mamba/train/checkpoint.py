"""Resumable training checkpoints in one safetensors file.

Layout of ``last.safetensors``:

- tensors ``model/<param name>``: the model's ``state_dict()`` (unwrapped from DDP), and
  ``best/<param name>``: the weights of the best epoch so far (early stopping reloads them);
- tensors ``optimizer/...`` and ``scheduler/...``: their ``state_dict()`` flattened: every tensor
  leaf becomes one safetensors entry named by its path, everything else (param_groups, step
  counters stored as numbers, ...) stays in a JSON "skeleton" in which each tensor is replaced by
  ``{"__tensor__": "<entry name>"}``;
- tensors ``rng/torch``, ``rng/numpy``, ``rng/cuda/<i>``: the RNG states (python's and the rest of
  numpy's tuple go in the JSON);
- metadata ``"state"``: one JSON string holding the skeletons, the python RNG state and the
  trainer's progress (epoch, best epoch and score, epochs without improvement, history).

Safetensors stores only tensors and string metadata and executes nothing on load, unlike
``torch.save``/pickle. Writes go to a temporary file that is then renamed, so an interrupted
write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserInputError

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able skeleton of ``obj``; tensor leaves are moved into ``tensors`` under their path.

    Dict keys become strings; the skeleton records the original key types so that
    :func:`unflatten_state` rebuilds e.g. the integer parameter ids of an optimizer state.
    """
    if isinstance(obj, torch.Tensor):
        name = prefix
        # safetensors refuses views that share storage; a contiguous CPU copy is always safe.
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: name}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), flatten_state(v, f"{prefix}/{k}", tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {prefix!r}")


def unflatten_state(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if _TENSOR in skel:
            return tensors[skel[_TENSOR]]
        if _TUPLE in skel:
            return tuple(unflatten_state(v, tensors) for v in skel[_TUPLE])
        return {_unkey(k): unflatten_state(v, tensors) for k, v in skel["__dict__"]}
    if isinstance(skel, list):
        return [unflatten_state(v, tensors) for v in skel]
    return skel


def _key(k):
    if isinstance(k, bool) or not isinstance(k, (int, str)):
        raise TypeError(f"cannot checkpoint a dict key of type {type(k).__name__}: {k!r}")
    return {"int": k} if isinstance(k, int) else k


def _unkey(k):
    return k["int"] if isinstance(k, dict) else k


def get_rng_state() -> dict[str, Any]:
    """Torch (CPU and every CUDA device), numpy and python RNG states."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer, scheduler,
                    progress: dict[str, Any],
                    best_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write model, best weights, optimizer, scheduler, RNG states and ``progress`` (JSON-able)
    to ``path``."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model/{k}"] = v.detach().to("cpu", copy=True).contiguous()
    for k, v in (best_state or {}).items():
        tensors[f"best/{k}"] = v.detach().to("cpu", copy=True).contiguous()
    rng = get_rng_state()
    rng_numpy = rng["numpy"]
    tensors["rng/torch"] = rng["torch"].clone()
    tensors["rng/numpy"] = torch.from_numpy(rng_numpy[1].astype(np.int64))
    for i, s in enumerate(rng.get("cuda", [])):
        tensors[f"rng/cuda/{i}"] = s.clone()
    state = {
        "optimizer": flatten_state(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": flatten_state(scheduler.state_dict(), "scheduler", tensors)
        if scheduler is not None else None,
        "rng": {"numpy": [rng_numpy[0], int(rng_numpy[2]), int(rng_numpy[3]),
                          float(rng_numpy[4])],
                "python": [rng["python"][0], list(rng["python"][1]), rng["python"][2]],
                "n_cuda": len(rng.get("cuda", []))},
        "progress": progress,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer, scheduler,
                    restore_rng: bool = True
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore what :func:`save_checkpoint` wrote into the given objects.

    Returns:
        (progress, best_state): the progress dict and the best weights (None if none saved).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        state = json.loads(meta["state"]) if "state" in meta else None
    except (SafetensorError, ValueError) as exc:  # damaged header or data; damaged JSON
        raise UserInputError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc}); start "
                             "over with --overwrite") from None
    if state is None:
        raise UserInputError(f"{path}: not a training checkpoint (no 'state' metadata)")
    model.load_state_dict(_prefixed(tensors, "model/"), strict=True)
    best = _prefixed(tensors, "best/") or None
    optimizer.load_state_dict(unflatten_state(state["optimizer"], tensors))
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(unflatten_state(state["scheduler"], tensors))
    if restore_rng:
        r = state["rng"]
        kind, pos, has_gauss, cached = r["numpy"]
        set_rng_state({
            "torch": tensors["rng/torch"],
            "numpy": (kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss,
                      cached),
            "python": (r["python"][0], r["python"][1], r["python"][2]),
            **({"cuda": [tensors[f"rng/cuda/{i}"] for i in range(r["n_cuda"])]}
               if r["n_cuda"] else {}),
        })
    return state["progress"], best


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def read_progress(path: str | Path) -> dict[str, Any]:
    """The ``progress`` dict of a checkpoint without loading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})["state"])["progress"]
