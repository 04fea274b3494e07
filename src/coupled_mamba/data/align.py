"""Segment-mean alignment of unaligned modalities to one length (docs/MATH.md, section 4).

Shape letters: N samples, T valid length of one sample, T_max padded input length, L target
length, d feature size.

Definition (the executable spec is :func:`segment_mean_ref`). Frame i of a sample spans the time
interval [i, i+1) with centre i + 1/2; the valid part [0, T) is cut into L equal segments
[j T/L, (j+1) T/L), j = 0..L-1. Output step j is the mean of the frames whose centre lies in
segment j:

    start_j = ceil((2 j T - L) / (2 L)),   stop_j = start_{j+1}   (so stop_{L-1} = T)
    y[j]    = mean(x[start_j : stop_j])

A segment that holds no frame centre (only possible when T < L) takes the frame whose span holds
the segment's centre (j + 1/2) T / L, i.e. frame floor((2j+1) T / (2L)), a nearest frame (a tie,
centre on a frame boundary, goes to the later frame). Consequences: T = L is the identity,
T = k L is exact average pooling by k, T < L is nearest-neighbour sampling at the segment
centres, every output step is valid (lengths become L), and zero padding beyond T is never read.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserInputError
from ._types import MultimodalData, Split

DEFAULT_SEQ_LEN = 50  # docs/MATH.md section 4: the paper aligns to 50 steps
# Elements of the float64 prefix-sum buffer in segment_mean (8 MB): small enough to stay in cache
# and reused across blocks, where one buffer per block the size of a whole block would not be.
_BLOCK_ELEMENTS = 1024 * 1024


def segment_bounds(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ranges of each output step.

    Args:
        lengths: (N,) int valid lengths T >= 1.
        seq_len: target length L >= 1.
    Returns:
        start, stop: (N, L) int64 with 0 <= start < stop <= T; step j averages x[start:stop].
    """
    t = np.asarray(lengths, dtype=np.int64)[:, None]
    j = np.arange(seq_len + 1, dtype=np.int64)[None, :]
    two_l = 2 * seq_len
    # Integer arithmetic (ceil(a / b) = -((-a) // b)): exact at segment boundaries.
    edges = -((seq_len - 2 * j * t) // two_l)  # first frame whose centre is >= j T / L
    start, stop = edges[:, :-1], edges[:, 1:]
    empty = stop == start
    nearest = ((2 * j[:, :-1] + 1) * t) // two_l  # frame whose span holds the segment centre
    start = np.where(empty, nearest, start)
    stop = np.where(empty, nearest + 1, stop)
    return start, stop


def _check(x: np.ndarray, lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    lengths = np.asarray(lengths)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (N, T_max, d), got {x.shape}")
    if lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths must have shape ({x.shape[0]},), got {lengths.shape}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise UserInputError(f"seq_len must be a positive int, got {seq_len!r}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > x.shape[1]):
        raise ValueError(
            f"lengths must lie in [1, T_max={x.shape[1]}], got range "
            f"[{lengths.min()}, {lengths.max()}]")
    return x, lengths


def segment_mean(x: np.ndarray, lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Resample each sample's valid part to ``seq_len`` steps by segment means (vectorised).

    Args:
        x: (N, T_max, d) right zero-padded features; must be finite (a NaN or inf would spread
            through the cumulative sum into later steps, so it is rejected).
        lengths: (N,) int valid lengths, 1 <= lengths <= T_max.
        seq_len: target length L.
    Returns:
        (N, L, d) float32, every step valid. Equals :func:`segment_mean_ref`.

    Each segment mean is a difference of a float64 prefix sum over time, gathered at the segment
    bounds; samples are processed in blocks through one reused, cache-sized prefix-sum buffer.
    """
    x, lengths = _check(x, lengths, seq_len)
    n, t_max, d = x.shape
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or inf; replace non-finite values before aligning")
    start, stop = segment_bounds(lengths, seq_len)
    count = (stop - start).astype(np.float64)[:, :, None]
    out = np.empty((n, seq_len, d), dtype=np.float32)
    block = max(1, min(n, _BLOCK_ELEMENTS // ((t_max + 1) * max(d, 1))))
    buffer = np.zeros((block, t_max + 1, d), dtype=np.float64)  # row 0 stays 0: empty prefix
    rows = np.arange(block)[:, None]
    for a in range(0, n, block):
        b = min(n, a + block)
        csum = buffer[: b - a]
        np.cumsum(x[a:b], axis=1, dtype=np.float64, out=csum[:, 1:])
        r = rows[: b - a]
        out[a:b] = (csum[r, stop[a:b]] - csum[r, start[a:b]]) / count[a:b]
    return out


def segment_mean_ref(x: np.ndarray, lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Reference twin of :func:`segment_mean`: a plain loop over samples, steps and frames that
    states the definition with real-valued segment edges.

    Args/Returns as :func:`segment_mean` (computed in float64, returned as float32).
    """
    x, lengths = _check(x, lengths, seq_len)
    n, _, d = x.shape
    out = np.zeros((n, seq_len, d), dtype=np.float64)
    for i in range(n):
        t = int(lengths[i])
        for j in range(seq_len):
            lo, hi = j * t / seq_len, (j + 1) * t / seq_len
            frames = [f for f in range(t) if lo <= f + 0.5 < hi]
            if not frames:
                frames = [int(np.floor((j + 0.5) * t / seq_len))]
            out[i, j] = x[i, frames].astype(np.float64).mean(axis=0)
    return out.astype(np.float32)


def align_split(split: Split, seq_len: int) -> Split:
    """Resample every modality of ``split`` to ``seq_len`` steps (see module docstring).

    Args:
        split: modalities (N, L_m, d_m) with lengths (N,).
        seq_len: target length L.
    Returns:
        A new Split with modalities (N, L, d_m), lengths all equal to L (each sample's valid part
        now fills the L steps), and labels, ids, present mask and extra labels carried along.
        The input is not modified.
    """
    mods = {m: segment_mean(x, split.lengths[m], seq_len) for m, x in split.modalities.items()}
    n = len(split)
    lengths = {m: np.full(n, seq_len, dtype=np.int64) for m in mods}
    return Split(mods, lengths, split.labels, split.ids, split.present, dict(split.extra_labels))


def align_data(data: MultimodalData, seq_len: int | None = None) -> MultimodalData:
    """Bring every split to one length: the dataset-level policy used by ``load_dataset``.

    Data whose modalities all share one padded length L (in every split) is aligned and passes
    through unchanged when ``seq_len`` is None or equals L. Otherwise every modality of every
    split is resampled with :func:`align_split` to ``seq_len`` (default 50, docs/MATH.md section 4).
    """
    if data.is_aligned and (seq_len is None or seq_len == data.seq_len):
        return data
    target = DEFAULT_SEQ_LEN if seq_len is None else int(seq_len)
    aligned = {name: align_split(s, target) for name, s in data.splits().items()}
    return data.replace(train=aligned["train"], valid=aligned.get("valid"),
                        test=aligned.get("test"))
