"""Validation and normalisation of multimodal inputs: sequences, validity masks, presence masks.

Shapes: M modalities, B batch, L length (one L for every modality after alignment), d features.

Conventions shared by every encoder and model in this package:

- ``inputs``: a list/tuple of M tensors (B, L, d_m) in the order of the modality names, or a dict
  keyed by those names.
- ``mask``: None (every step valid), one (B, L) bool tensor shared by all modalities, or a
  list/dict of M entries each None or (B, L) bool. True marks a valid step; padding is on the right.
- ``present``: None (every modality present) or (B, M) bool; False marks a missing modality.

A step is *used* when its mask is True and its modality is present; :func:`validity` combines both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def as_modality_list(inputs, names: Sequence[str], arg: str = "inputs") -> list:
    """Order ``inputs`` (a list/tuple of M items, or a dict keyed by ``names``) as a list."""
    names = list(names)
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        extra = [k for k in inputs if k not in names]
        if missing or extra:
            raise ValueError(
                f"{arg}: dict keys {list(inputs)} do not match the modality names {names} "
                f"(missing {missing}, unexpected {extra})"
            )
        return [inputs[n] for n in names]
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != len(names):
            raise ValueError(
                f"{arg}: got {len(inputs)} modalities, expected M = {len(names)} ({names})"
            )
        return list(inputs)
    raise ValueError(
        f"{arg}: expected a list/tuple or a dict of {len(names)} tensors, "
        f"got {type(inputs).__name__}"
    )


def check_sequences(
    xs: Sequence[torch.Tensor],
    names: Sequence[str],
    dims: Sequence[int] | None = None,
    arg: str = "inputs",
) -> tuple[int, int]:
    """Check M floating tensors (B, L, d_m) that share B, L and a device; return (B, L).

    Args:
        xs: the M tensors, in modality order.
        names: modality names, for error messages.
        dims: expected feature width d_m per modality, or None to accept any.
    """
    shape0 = None
    for m, x in enumerate(xs):
        where = f"{arg}[{m}] ({names[m]!r})"
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{where}: expected a tensor (B, L, d), got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{where}: got shape {tuple(x.shape)}, expected 3 dims (B, L, d)")
        if not x.is_floating_point():
            raise ValueError(f"{where}: expected a floating-point tensor, got {x.dtype}")
        if dims is not None and x.shape[-1] != dims[m]:
            raise ValueError(
                f"{where}: got shape {tuple(x.shape)}, expected (B, L, {dims[m]}) "
                f"(feature width d_m = {dims[m]} from the config)"
            )
        if shape0 is None:
            shape0 = tuple(x.shape[:2])
            device = x.device
        elif tuple(x.shape[:2]) != shape0:
            raise ValueError(
                f"{where}: got (B, L) = {tuple(x.shape[:2])}, but {arg}[0] has {shape0}; all "
                "modalities must share batch size and length (align them first)"
            )
        elif x.device != device:
            raise ValueError(f"{where}: on {x.device}, but {arg}[0] is on {device}")
    if shape0[1] == 0:
        raise ValueError(f"{arg}: sequences have length L = 0")
    return shape0


def check_dtype(xs: Sequence[torch.Tensor], names: Sequence[str], dtype: torch.dtype,
                arg: str = "inputs") -> None:
    """Check that the M tensors have ``dtype``, the model weights' dtype (torch's own error for
    a mismatch names no input). Under autocast, which casts per op, any dtype passes."""
    if torch.is_autocast_enabled(xs[0].device.type):
        return
    for m, x in enumerate(xs):
        if x.dtype != dtype:
            raise ValueError(f"{arg}[{m}] ({names[m]!r}): dtype {x.dtype}, but the model's "
                             f"weights are {dtype}; convert the inputs (x.to({dtype})) or the "
                             f"model (model.to({x.dtype}))")


def check_step_inputs(
    xs: Sequence[torch.Tensor], names: Sequence[str], dims: Sequence[int], batch: int | None = None,
    arg: str = "inputs",
) -> int:
    """Check M tensors (B, d_m) holding one time step (streaming); return B."""
    for m, x in enumerate(xs):
        expected = (batch if batch is not None else "B", dims[m])
        if (not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != dims[m]
                or (batch is not None and x.shape[0] != batch)):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{arg}[{m}] ({names[m]!r}): got {got}, expected (B, d) = "
                             f"{expected} for one time step")
        if batch is None:
            batch = x.shape[0]
    return batch


def _check_mask(mk, where: str, shape: tuple, device, right_padded: bool = True) -> torch.Tensor:
    if not isinstance(mk, torch.Tensor):
        raise ValueError(f"{where}: expected a bool tensor {shape}, got {type(mk).__name__}")
    if mk.dtype != torch.bool:
        raise ValueError(f"{where}: expected dtype torch.bool (True = valid), got {mk.dtype}")
    if tuple(mk.shape) != shape:
        raise ValueError(f"{where}: got shape {tuple(mk.shape)}, expected {shape}")
    if mk.device != device:
        raise ValueError(f"{where}: on {mk.device}, but the inputs are on {device}")
    if right_padded and len(shape) == 2 and shape[1] > 1 and bool((mk[:, 1:] & ~mk[:, :-1]).any()):
        raise ValueError(
            f"{where}: a False step is followed by a True step; masks must mark right padding "
            "(True for the first n steps of a sample, then False)"
        )
    return mk


def normalize_masks(
    mask, names: Sequence[str], batch: int, length: int | None, device
) -> list[torch.Tensor | None] | None:
    """Turn ``mask`` into None or a list of M entries, each None or bool (B, L).

    With ``length=None`` the masks are per-step (B,) (streaming).
    """
    if mask is None:
        return None
    shape = (batch,) if length is None else (batch, length)
    if isinstance(mask, torch.Tensor):
        shared = _check_mask(mask, "mask", shape, device)
        return [shared] * len(names)
    masks = as_modality_list(mask, names, "mask")
    out = []
    for m, mk in enumerate(masks):
        where = f"mask[{m}] ({names[m]!r})"
        out.append(None if mk is None else _check_mask(mk, where, shape, device))
    return None if all(mk is None for mk in out) else out


def normalize_present(present, n_modalities: int, batch: int, device) -> torch.Tensor | None:
    """Check the (B, M) bool presence mask (None: every modality present)."""
    if present is None:
        return None
    return _check_mask(present, "present", (batch, n_modalities), device, right_padded=False)


def validity(
    masks: list[torch.Tensor | None] | None, present: torch.Tensor | None, shape: tuple
) -> torch.Tensor | None:
    """Which steps are used: (M, *shape) bool, or None when every step of every modality is.

    Args:
        masks: from :func:`normalize_masks` (entries of ``shape``: (B, L), or (B,) when streaming).
        present: (B, M) bool or None.
        shape: (B, L) or (B,).
    """
    if masks is None and present is None:
        return None
    M = len(masks) if masks is not None else present.shape[1]
    device = (present if present is not None else next(mk for mk in masks if mk is not None)).device
    valid = torch.ones((M, *shape), dtype=torch.bool, device=device)
    if masks is not None:
        for m, mk in enumerate(masks):
            if mk is not None:
                valid[m] = mk
    if present is not None:
        extra = (1,) * (len(shape) - 1)
        valid = valid & present.T.reshape(M, shape[0], *extra)
    return valid


def lengths_to_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) integer lengths -> (B, L) bool right-padding mask (True for the first lengths[b])."""
    if lengths.dim() != 1 or lengths.is_floating_point():
        raise ValueError(f"lengths: expected a 1-D integer tensor, got {lengths.dtype} "
                         f"{tuple(lengths.shape)}")
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def prepare_inputs(inputs, mask, present, names: Sequence[str], dims: Sequence[int],
                   batch: int | None = None, step: bool = False,
                   dtype: torch.dtype | None = None):
    """Everything above in one call, for a forward (``step=False``: tensors (B, L, d_m), masks
    (B, L)) or one streaming step (``step=True``: tensors (B, d_m), masks (B,)). ``dtype``: the
    dtype the tensors must have (:func:`check_dtype`), or None to accept any float.

    Returns:
        xs: list of M tensors; masks: list of M (None | bool) or None; present: (B, M) or None;
        valid: (M, B, L) (or (M, B) when streaming) bool, or None when every step is used.
    """
    xs = as_modality_list(inputs, names)
    if step:
        Bsz, length = check_step_inputs(xs, names, dims, batch), None
    else:
        Bsz, length = check_sequences(xs, names, dims=dims)
    if dtype is not None:
        check_dtype(xs, names, dtype)
    device = xs[0].device
    masks = normalize_masks(mask, names, Bsz, length, device)
    present = normalize_present(present, len(names), Bsz, device)
    shape = (Bsz,) if step else (Bsz, length)
    return xs, masks, present, validity(masks, present, shape)
