"""Embedded benchmark: sentiment whose sign depends on cross-modal TIMING (generated in seconds).

Shape letters: N samples, L padded length (``seq_len``), T valid length of a sample, d_m feature
size, k the confirmation window (``window``).

Generative story (a toy of the sentiment task; docs/DATA.md has the derivations):

- Three modalities on one time grid: text (16 features), audio (8), vision (12). Each sample has
  a valid length T drawn uniformly from [ceil(0.7 L), L]; steps beyond T are zero padding.
- Text carries 1-3 polar CUES at steps t_i with polarity s_i = +-1 (the cue pattern times
  s_i * 4: eight noise standard deviations, so events are unambiguous and only their timing is
  hard). Each cue is followed by a prosodic EMPHASIS in audio with probability 1/2
  within k steps (t_i + 1 .. t_i + k); otherwise the emphasis comes just before the cue
  (t_i - k .. t_i - 1) or just too late (t_i + k + 1 or t_i + k + 2): near misses.
- A cue counts c_i = +1 ("sincere") when an audio emphasis follows within k steps, else
  c_i = -1 ("ironic": polarity reversed). Label

      y = clip( sum_i s_i c_i + 0.6 z + 0.1 eps, -3, 3 )          (MOSI/MOSEI range)

  where z ~ N(0, 1) is a per-sample MOOD shown in vision as a constant offset along a mood
  pattern over the valid steps, and eps ~ N(0, 1).
- Decoys: vision also shows one event per cue with the same before/within/late timing, which has
  no effect; text has 0-2 DECOY events (another pattern, random sign, random step) that have no
  effect whatever follows them.
- Noise: i.i.d. N(0, 0.5^2) on every valid feature, plus 2 distractor channels per modality with
  a random-frequency sinusoid. Cue and mood patterns are orthonormal and avoid those channels.

Per-modality counts (cues per polarity, emphases, vision events, decoys) do not depend on which
cues are confirmed, and P(c_i = +1) = 1/2 independently of s_i, so E[sum_i s_i c_i | counts] = 0:
only the relative timing of text and audio explains the main term (variance 1.9 of the label's
2.1 at the defaults). ``tests/data/test_data_synthetic.py``: boosted trees on the counts plus the
true mood reach test R^2 = 0.08; adding the timing score gives 0.995.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserInputError
from ._types import MultimodalData, Split

MODALITIES = ("text", "audio", "vision")
DEFAULT_DIMS = {"text": 16, "audio": 8, "vision": 12}
N_DISTRACTORS = 2  # leading channels of each modality carry a sinusoid
MAX_CUES = 3
MAX_DECOYS = 2
MOOD_AMPLITUDE = 0.5  # per-step vision offset per unit of mood z


def _orthonormal(rng: np.random.Generator, d: int, k: int) -> list[np.ndarray]:
    """k orthonormal (d,) vectors that are zero on the distractor channels."""
    q, _ = np.linalg.qr(rng.normal(size=(d - N_DISTRACTORS, k)))
    out = np.zeros((k, d))
    out[:, N_DISTRACTORS:] = q.T
    return list(out)


def _partner_time(rng: np.random.Generator, t: int, window: int) -> int:
    """Step of an audio/vision event for a text cue at t: within, before or just after window."""
    if rng.random() < 0.5:
        return t + int(rng.integers(1, window + 1))  # within: t+1 .. t+k
    if rng.random() < 0.5:
        return t - int(rng.integers(1, window + 1))  # before: t-k .. t-1
    return t + window + int(rng.integers(1, 3))  # near miss: t+k+1 or t+k+2


def _events(n: int, seq_len: int, rng: np.random.Generator, window: int, min_len: int) -> dict:
    """Draw event steps. Cues live in disjoint slots of width 2k+3: [before | cue | after]."""
    slot = 2 * window + 3
    ev = {
        "lengths": rng.integers(min_len, seq_len + 1, size=n),
        "text_cue_times": np.full((n, MAX_CUES), -1), "text_cue_signs": np.zeros((n, MAX_CUES)),
        "audio_cue_times": np.full((n, MAX_CUES), -1),
        "vision_cue_times": np.full((n, MAX_CUES), -1),
        "decoy_times": np.full((n, MAX_DECOYS), -1), "decoy_signs": np.zeros((n, MAX_DECOYS)),
    }
    for i in range(n):
        t_len = int(ev["lengths"][i])
        k = int(rng.integers(1, min(MAX_CUES, t_len // slot) + 1))
        gaps = rng.multinomial(t_len - k * slot, np.full(k + 1, 1.0 / (k + 1)))
        starts = gaps[0] + np.arange(k) * slot + np.cumsum(np.r_[0, gaps[1:k]])
        cue_t = starts + window
        ev["text_cue_times"][i, :k] = cue_t
        ev["text_cue_signs"][i, :k] = rng.choice([-1.0, 1.0], size=k)
        ev["audio_cue_times"][i, :k] = [_partner_time(rng, int(t), window) for t in cue_t]
        ev["vision_cue_times"][i, :k] = [_partner_time(rng, int(t), window) for t in cue_t]
        n_dec = int(rng.integers(0, MAX_DECOYS + 1))
        free = np.setdiff1d(np.arange(t_len), cue_t)
        ev["decoy_times"][i, :n_dec] = rng.choice(free, size=n_dec, replace=False)
        ev["decoy_signs"][i, :n_dec] = rng.choice([-1.0, 1.0], size=n_dec)
    ev["mood"] = rng.normal(size=n)
    return ev


def timing_score(text_times, text_signs, audio_times, window: int):
    """sum_i s_i c_i: c_i = +1 if an audio event lies in (t_i, t_i + window], else -1.

    Args:
        text_times, text_signs, audio_times: (N, C) event steps (-1 = none) and signs.
    Returns:
        score (N,) float and confirmed (N, C) bool.
    """
    diff = audio_times[:, None, :] - text_times[:, :, None]
    confirmed = ((diff >= 1) & (diff <= window) & (audio_times[:, None, :] >= 0)).any(axis=2)
    valid = text_times >= 0
    score = np.where(valid, text_signs * np.where(confirmed, 1.0, -1.0), 0.0).sum(axis=1)
    return score, confirmed & valid


def _add_events(x, times, values, pattern):
    rows, cols = np.nonzero(times >= 0)
    x[rows, times[rows, cols]] += values[rows, cols, None] * pattern


def _features(ev: dict, seq_len: int, dims: dict, patterns: dict, rng: np.random.Generator,
              noise: float, amp: float) -> dict[str, np.ndarray]:
    n = ev["lengths"].shape[0]
    steps = np.arange(seq_len)
    out = {}
    for m in MODALITIES:
        x = rng.normal(0.0, noise, size=(n, seq_len, dims[m]))
        freq = rng.uniform(0.02, 0.15, size=(n, N_DISTRACTORS))
        phase = rng.uniform(0, 2 * np.pi, size=(n, N_DISTRACTORS))
        x[:, :, :N_DISTRACTORS] += np.sin(
            2 * np.pi * freq[:, None, :] * steps[None, :, None] + phase[:, None, :])
        out[m] = x
    ones = np.ones((n, MAX_CUES))
    _add_events(out["text"], ev["text_cue_times"], amp * ev["text_cue_signs"], patterns["text_cue"])
    _add_events(out["text"], ev["decoy_times"], amp * ev["decoy_signs"], patterns["text_decoy"])
    _add_events(out["audio"], ev["audio_cue_times"], amp * ones, patterns["audio_cue"])
    _add_events(out["vision"], ev["vision_cue_times"], amp * ones, patterns["vision_cue"])
    out["vision"] += MOOD_AMPLITUDE * ev["mood"][:, None, None] * patterns["vision_mood"]
    pad = steps[None, :] >= ev["lengths"][:, None]
    for m in MODALITIES:
        out[m][pad] = 0.0
        out[m] = out[m].astype(np.float32)
    return out


def make_synthetic(n_train: int = 2000, n_valid: int = 500, n_test: int = 1000,
                   seq_len: int = 40, seed: int = 0, *, window: int = 3,
                   dims: dict[str, int] | None = None, noise: float = 0.5,
                   cue_amplitude: float = 4.0, mood_weight: float = 0.6,
                   label_noise: float = 0.1, min_length_fraction: float = 0.7,
                   return_events: bool = False):
    """Generate the timing benchmark (module docstring) deterministically from ``seed``.

    Args:
        n_train, n_valid, n_test: split sizes (0 for valid/test gives None).
        seq_len: L, the padded length; valid lengths are uniform in [ceil(0.7 L), L].
        seed: the data is a pure function of the arguments; each split has its own stream, so
            the test split does not change with ``n_train``.
        window: k, the confirmation window in steps.
        dims: feature sizes {"text", "audio", "vision"} (each > 3).
        noise, cue_amplitude, mood_weight, label_noise, min_length_fraction: see the story.
        return_events: also return the ground truth per split (event steps and signs, mood,
            timing score) and the patterns, for oracles and tests.
    Returns:
        MultimodalData (regression, metric family "mosi", modalities text/audio/vision, aligned
        at L) or (data, events) when ``return_events``.
    """
    dims = dict(DEFAULT_DIMS if dims is None else dims)
    if sorted(dims) != sorted(MODALITIES) or min(dims.values()) < N_DISTRACTORS + 2:
        raise UserInputError(f"dims must give text, audio, vision sizes >= {N_DISTRACTORS + 2}, "
                             f"got {dims}")
    min_len = math.ceil(min_length_fraction * seq_len)
    if not 0 < min_length_fraction <= 1 or min_len < 2 * window + 3:
        raise UserInputError(f"seq_len={seq_len} with min_length_fraction={min_length_fraction} "
                             f"gives valid lengths from {min_len}, shorter than one cue slot "
                             f"(2 * window + 3 = {2 * window + 3})")
    if window < 1:
        raise UserInputError(f"window must be >= 1, got {window}")
    if n_train < 1 or n_valid < 0 or n_test < 0:
        raise UserInputError(f"split sizes must be n_train >= 1, n_valid/n_test >= 0, got "
                             f"{n_train}, {n_valid}, {n_test}")
    pattern_ss, *split_ss = np.random.SeedSequence(seed).spawn(4)
    prng = np.random.default_rng(pattern_ss)
    t_cue, t_dec = _orthonormal(prng, dims["text"], 2)
    (a_cue,) = _orthonormal(prng, dims["audio"], 1)
    v_cue, v_mood = _orthonormal(prng, dims["vision"], 2)
    patterns = {"text_cue": t_cue, "text_decoy": t_dec, "audio_cue": a_cue,
                "vision_cue": v_cue, "vision_mood": v_mood}

    splits, events = {}, {}
    sizes = (n_train, n_valid, n_test)
    for name, n, ss in zip(("train", "valid", "test"), sizes, split_ss, strict=True):
        if n == 0:
            continue
        rng = np.random.default_rng(ss)
        ev = _events(n, seq_len, rng, window, min_len)
        feats = _features(ev, seq_len, dims, patterns, rng, noise, cue_amplitude)
        score, confirmed = timing_score(ev["text_cue_times"], ev["text_cue_signs"],
                                        ev["audio_cue_times"], window)
        y = score + mood_weight * ev["mood"] + label_noise * rng.normal(size=n)
        labels = np.clip(y, -3.0, 3.0).astype(np.float32)
        ev.update(timing_score=score, confirmed=confirmed)
        lengths = {m: ev["lengths"].astype(np.int64) for m in MODALITIES}
        ids = np.array([f"{name}_{i:05d}" for i in range(n)])
        splits[name] = Split(feats, lengths, labels, ids)
        events[name] = ev
    data = MultimodalData(splits["train"], splits.get("valid"), splits.get("test"),
                          list(MODALITIES), "regression", 1, "mosi", "synthetic", "")
    if return_events:
        return data, {"patterns": patterns, "window": window, **events}
    return data
