"""Interaction-task suite: synthetic settings whose label needs a cross-modal rule.

Shape letters: N samples, M modalities, L padded length (``seq_len``), T valid length of a
sample, d_m feature size of modality m, k a rule's window in steps.

Every setting draws discrete events on one time grid, writes each event into its modality's
features as a fixed pattern vector (orthonormal, amplitude ``AMPLITUDE`` = 8 noise standard
deviations, never on the two leading distractor channels that carry a random sinusoid), and computes
the label from the events with one of four cross-modal rules. Modality 0 is ``a`` and modality 1
is ``b``; further modalities only carry decoys.

- ``confirm``: ``a`` shows 1-3 signed cues at t_i; a cue counts ``+s_i`` when a ``b`` event
  follows within ``lag + 1 .. lag + k`` steps and ``-s_i`` otherwise (the ``b`` event then comes
  just before the cue, too early or just too late). Regression: ``sum_i s_i c_i`` plus noise;
  classification (1 or 3 cues): the sign of that sum.
- ``cooccur``: ``a`` and ``b`` show 1-3 unsigned events each; class 1 when some ``a`` and some
  ``b`` event lie at most k steps apart. Both classes have the same event counts.
- ``xor``: ``a`` and ``b`` show 2-4 signed switch events; each modality's state is the sign of its
  latest event; class 1 when the two final states differ.
- ``gate``: ``b`` opens and closes a gate (two patterns, 1-2 open intervals); ``a`` shows 2-5
  events with values in {-2, -1, 1, 2} (amplitude ``|v| AMPLITUDE / 2``); regression label: the sum
  of the values whose event falls inside an open interval, plus noise.
- ``embedded``: the embedded timing benchmark (:mod:`coupled_mamba.data.synthetic`).

Decoys: every modality also shows 0-``decoys`` events of its own decoy pattern at random steps;
modalities beyond ``b`` also echo ``b``'s timing (``confirm``) so that only the right pair of
modalities explains the label.

Unaligned settings (``fast``) sample one modality at 3x the rate: an event at step t fills frames
3t .. 3t + 2, noise is drawn per frame, and the loader's segment means (:func:`align_data`) bring
every modality back to L steps, as for the paper's unaligned MMSA files.

References, computed by the generator on the test split (:class:`References`): ``oracle`` applies
the rule to the true events; ``pooled`` is the better of gradient-boosted trees and a linear model
on per-modality pooled features (event counts per modality, pattern and sign, and the embedded
task's true mood): what a model without cross-modal timing can do. A model *solves* a setting
when it closes at least ``SOLVED_GAP`` of the gap between the two.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import numpy as np

from ._types import MultimodalData, Split
from .align import align_data

RULES = ("confirm", "cooccur", "xor", "gate", "embedded")
N_DISTRACTORS = 2
NOISE = 0.5  # std of the i.i.d. feature noise
AMPLITUDE = 4.0  # event amplitude: 8 noise standard deviations, so events are unambiguous and
# only the rule over their timing is hard (as in the embedded benchmark)
FAST_RATE = 3  # frames per step of an unaligned (fast) modality
SOLVED_GAP = 0.8


def _kinds(rule: str, m: int) -> tuple[str, ...]:
    """Event kinds that modality m shows under ``rule`` (its decoy pattern included)."""
    own = {"confirm": {0: ("cue",), 1: ("event",)}, "cooccur": {0: ("event",), 1: ("event",)},
           "xor": {0: ("switch",), 1: ("switch",)}, "gate": {0: ("value",), 1: ("open", "close")}}
    default = ("echo",) if rule == "confirm" else ()
    return (*own[rule].get(m, default), "decoy")


@dataclass(frozen=True)
class Setting:
    """One member of the suite (module docstring)."""

    name: str
    rule: str  # one of RULES
    task: str  # "regression" | "classification"
    dims: tuple[int, ...]  # d_m per modality; M = len(dims)
    n_train: int
    seq_len: int  # L
    window: int = 3  # k
    lag: int = 0  # confirm: partner at lag + 1 .. lag + k after the cue
    decoys: int = 2  # at most this many decoy events per modality
    fast: int | None = None  # modality sampled at FAST_RATE x the rate (unaligned input)
    n_valid: int = 500
    n_test: int = 1000
    description: str = ""

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"setting {self.name}: rule {self.rule!r} is not one of {RULES}")
        if len(self.dims) < 2:
            raise ValueError(f"setting {self.name}: need M >= 2 modalities, got {self.dims}")
        if self.rule != "embedded":
            for m, d in enumerate(self.dims):
                need = N_DISTRACTORS + len(_kinds(self.rule, m))
                if d < need:
                    raise ValueError(f"setting {self.name}: modality {m} needs >= {need} "
                                     f"features for its patterns, got {d}")

    @property
    def n_modalities(self) -> int:
        return len(self.dims)


SUITE: dict[str, Setting] = {s.name: s for s in (
    Setting("embedded", "embedded", "regression", (16, 8, 12), 3000, 40,
            description="the embedded benchmark: a text cue counts only if audio follows"),
    Setting("confirm_cls", "confirm", "classification", (8, 8), 2000, 32,
            description="sign of the confirmed cues, two modalities"),
    Setting("confirm_lag", "confirm", "regression", (16, 4, 32), 3000, 48, lag=4,
            description="partner 5-7 steps after the cue, a third modality echoes it"),
    Setting("confirm_unaligned", "confirm", "regression", (16, 8, 12), 3000, 40, fast=1,
            description="partner modality at 3x the rate, resampled by the loader"),
    Setting("confirm_wide", "confirm", "regression", (768, 32, 16), 1500, 32,
            description="a 768-wide first modality (BERT-sized), mostly noise"),
    Setting("cooccur_m4", "cooccur", "classification", (64, 8, 256, 16), 2000, 32, window=2,
            description="co-occurrence within 2 steps, two decoy modalities, wide noise"),
    Setting("cooccur_small", "cooccur", "classification", (4, 4), 1000, 24, window=2,
            description="co-occurrence, 1k samples, 4 features per modality"),
    Setting("xor", "xor", "classification", (8, 8, 8), 4000, 32,
            description="XOR of two modalities' latest switch states"),
    Setting("gate", "gate", "regression", (16, 8, 8), 3000, 40,
            description="values in one modality counted while another's gate is open"),
    Setting("gate_16k", "gate", "regression", (8, 8), 16000, 24,
            description="the gate rule with 16k training samples"),
)}


@dataclass(frozen=True)
class References:
    """Test-split references of a generated setting.

    ``metric`` is "MAE" (regression, lower is better) or "Accuracy" (classification).
    """

    metric: str
    higher_is_better: bool
    oracle: float
    pooled: float

    def gap_closed(self, score: float) -> float:
        """Fraction of the pooled -> oracle gap that ``score`` closes (1 = oracle, 0 = pooled)."""
        gap = self.oracle - self.pooled
        if not self.higher_is_better:
            gap = -gap
        if gap <= 0 or not math.isfinite(score):
            return float("nan")
        diff = score - self.pooled if self.higher_is_better else self.pooled - score
        return diff / gap

    def solved(self, score: float) -> bool:
        return bool(self.gap_closed(score) >= SOLVED_GAP)


# ---- events ---------------------------------------------------------------------------------

def _rng_events(rule: str):
    return {"confirm": _confirm, "cooccur": _cooccur, "xor": _xor, "gate": _gate}[rule]


def _signs(rng, k):
    return rng.choice([-1.0, 1.0], size=k)


def _confirm(rng, s: Setting, t_len: int, task: str):
    """Cues in disjoint slots [before | cue | after]; returns events, label, pooled counts."""
    k, lag = s.window, s.lag
    before, after = k, lag + k + 2
    slot = before + 1 + after
    max_cues = max(1, min(3, t_len // slot))
    if task == "classification":
        n = 3 if max_cues >= 3 and rng.random() < 0.5 else 1
    else:
        n = int(rng.integers(1, max_cues + 1))
    gaps = rng.multinomial(t_len - n * slot, np.full(n + 1, 1.0 / (n + 1)))
    starts = gaps[0] + np.arange(n) * slot + np.cumsum(np.r_[0, gaps[1:n]])
    cues = starts + before
    signs = _signs(rng, n)
    partner, confirmed = [], []
    for t in cues:
        u = rng.random()
        if u < 0.5:
            partner.append(t + lag + int(rng.integers(1, k + 1)))
            confirmed.append(True)
            continue
        confirmed.append(False)
        choices = [t - int(rng.integers(1, k + 1)),  # before the cue
                   t + lag + k + int(rng.integers(1, 3))]  # just too late
        if lag > 0:
            choices.append(t + int(rng.integers(1, lag + 1)))  # too early
        partner.append(choices[int(rng.integers(len(choices)))])
    score = float(np.sum(signs * np.where(confirmed, 1.0, -1.0)))
    ev = {(0, "cue"): (cues, signs), (1, "event"): (np.array(partner), np.ones(n))}
    for m in range(2, s.n_modalities):  # echoes: b's timing distribution, no effect
        echo = [t + lag + int(rng.integers(1, k + 1)) if rng.random() < 0.5
                else t - int(rng.integers(1, k + 1)) for t in cues]
        ev[(m, "echo")] = (np.array(echo), np.ones(n))
    y = score if task == "regression" else float(score > 0)
    pooled = [float((signs > 0).sum()), float((signs < 0).sum())]
    return ev, y, pooled


def _spaced(rng, t_len: int, n: int, avoid: np.ndarray, gap: int, tries: int = 200):
    """n distinct steps in [0, t_len) more than ``gap`` away from every step in ``avoid``."""
    free = np.arange(t_len)
    if len(avoid):
        free = free[(np.abs(free[:, None] - avoid[None, :]) > gap).all(1)]
    if len(free) < n:
        return None
    return np.sort(rng.choice(free, size=n, replace=False))


def _cooccur(rng, s: Setting, t_len: int, task: str):
    k = s.window
    while True:
        na, nb = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        ta = np.sort(rng.choice(t_len, size=na, replace=False))
        tb = _spaced(rng, t_len, nb, ta, k)
        if tb is None:
            continue
        positive = rng.random() < 0.5
        if positive:  # move one b event next to one a event: the counts stay the same
            j = int(rng.integers(nb))
            target = int(ta[int(rng.integers(na))]) + int(rng.integers(-k, k + 1))
            if not 0 <= target < t_len or target in np.delete(tb, j):
                continue
            tb = np.sort(np.r_[np.delete(tb, j), target])
        break
    ev = {(0, "event"): (ta, np.ones(na)), (1, "event"): (tb, np.ones(nb))}
    return ev, float(positive), []


def _xor(rng, s: Setting, t_len: int, task: str):
    ev, states = {}, []
    for m in (0, 1):
        n = int(rng.integers(2, 5))
        times = np.sort(rng.choice(t_len, size=n, replace=False))
        signs = _signs(rng, n)
        ev[(m, "switch")] = (times, signs)
        states.append(signs[-1])
    return ev, float(states[0] != states[1]), []


def _gate(rng, s: Setting, t_len: int, task: str):
    n_open = int(rng.integers(1, 3))
    bounds = np.sort(rng.choice(np.arange(1, t_len), size=2 * n_open, replace=False))
    opens, closes = bounds[0::2], bounds[1::2]
    n = int(rng.integers(2, 6))
    times = np.sort(rng.choice(t_len, size=n, replace=False))
    values = rng.choice([-2.0, -1.0, 1.0, 2.0], size=n)
    inside = ((times[:, None] >= opens[None]) & (times[:, None] < closes[None])).any(1)
    ev = {(0, "value"): (times, values / 2.0),
          (1, "open"): (opens, np.ones(n_open)), (1, "close"): (closes, np.ones(n_open))}
    pooled = [float(values.sum()), float(np.abs(values).sum()),
              float((closes - opens).sum()) / t_len]
    return ev, float(values[inside].sum()), pooled


# ---- features -------------------------------------------------------------------------------

def _patterns(rng, rule: str, dims) -> dict[tuple[int, str], np.ndarray]:
    """Orthonormal event patterns per modality, zero on the distractor channels."""
    out = {}
    for m, d in enumerate(dims):
        kinds = _kinds(rule, m)
        q, _ = np.linalg.qr(rng.normal(size=(d - N_DISTRACTORS, len(kinds))))
        for i, kind in enumerate(kinds):
            vec = np.zeros(d, np.float32)
            vec[N_DISTRACTORS:] = q[:, i]
            out[(m, kind)] = vec
    return out


def _canvas(rng, n: int, frames: int, d: int, steps: np.ndarray) -> np.ndarray:
    """Noise plus sinusoids on the distractor channels: (n, frames, d) float32."""
    x = NOISE * rng.standard_normal((n, frames, d), dtype=np.float32)
    freq = rng.uniform(0.02, 0.15, size=(n, N_DISTRACTORS))
    phase = rng.uniform(0, 2 * np.pi, size=(n, N_DISTRACTORS))
    x[:, :, :N_DISTRACTORS] += np.sin(2 * np.pi * freq[:, None, :] * steps[None, :, None]
                                            + phase[:, None, :])
    return x


def _generate_split(s: Setting, n: int, rng, patterns) -> tuple[Split, np.ndarray, np.ndarray]:
    """One split: (Split, oracle predictions (n,), pooled features (n, F))."""
    M, L = s.n_modalities, s.seq_len
    min_len = math.ceil(0.75 * L)
    lengths = rng.integers(min_len, L + 1, size=n)
    rate = [FAST_RATE if m == s.fast else 1 for m in range(M)]
    feats = [_canvas(rng, n, L * rate[m], s.dims[m], np.arange(L * rate[m]) / rate[m])
             for m in range(M)]
    rule = _rng_events(s.rule)
    oracle = np.zeros(n)
    pooled_rows = []
    for i in range(n):
        t_len = int(lengths[i])
        ev, y, pooled = rule(rng, s, t_len, s.task)
        counts = []
        for m in range(M):
            nd = int(rng.integers(0, s.decoys + 1))
            if nd:
                ev[(m, "decoy")] = (rng.choice(t_len, size=nd, replace=False), _signs(rng, nd))
            for kind in _kinds(s.rule, m):
                if (m, kind) in ev:
                    _, vals = ev[(m, kind)]
                    counts += [float((vals > 0).sum()), float((vals < 0).sum())]
        for (m, kind), (times, vals) in ev.items():
            r = rate[m]
            for t, v in zip(times, vals, strict=True):
                if 0 <= t < t_len:
                    feats[m][i, int(t) * r:(int(t) + 1) * r] += AMPLITUDE * v * patterns[(m, kind)]
        oracle[i] = y
        pooled_rows.append(counts + pooled)
    width = max(len(r) for r in pooled_rows)
    pooled_x = np.array([r + [0.0] * (width - len(r)) for r in pooled_rows])
    mods, lens = {}, {}
    for m in range(M):
        frames = np.arange(L * rate[m])[None, :]
        feats[m][frames >= (lengths * rate[m])[:, None]] = 0.0
        mods[f"m{m}"] = feats[m].astype(np.float32)
        lens[f"m{m}"] = (lengths * rate[m]).astype(np.int64)
    if s.task == "regression":
        labels = np.clip(oracle + 0.1 * rng.normal(size=n), -3.0, 3.0).astype(np.float32)
    else:
        labels = oracle.astype(np.int64)
    return Split(mods, lens, labels, np.array([f"{i:05d}" for i in range(n)])), oracle, pooled_x


def make_interaction(setting: str | Setting, seed: int = 0, *, scale: float = 1.0
                     ) -> tuple[MultimodalData, References]:
    """Generate a suite setting and its test-split references.

    Args:
        setting: a name from :data:`SUITE` or a :class:`Setting`.
        seed: the data is a pure function of (setting, seed, scale); each split has its own
            random stream.
        scale: multiplies the split sizes (at least 20 samples each), for quick checks.
    Returns:
        (data, references): MultimodalData aligned to L (regression: metric family
        "regression"; classification: 2 classes, family "classification"; the embedded setting
        keeps its "mosi" family) and the References of its test split.
    """
    s = SUITE[setting] if isinstance(setting, str) else setting
    sizes = [max(20, int(round(scale * x))) for x in (s.n_train, s.n_valid, s.n_test)]
    if s.rule == "embedded":
        return _embedded(s, sizes, seed)
    pattern_ss, *split_ss = np.random.SeedSequence([seed, _stable_hash(s.name)]).spawn(4)
    patterns = _patterns(np.random.default_rng(pattern_ss), s.rule, s.dims)
    out, extra = {}, {}
    for name, n, ss in zip(("train", "valid", "test"), sizes, split_ss, strict=True):
        split, oracle, pooled_x = _generate_split(s, n, np.random.default_rng(ss), patterns)
        out[name], extra[name] = split, (oracle, pooled_x)
    classes = s.task == "classification"
    data = MultimodalData(out["train"], out["valid"], out["test"],
                          [f"m{m}" for m in range(s.n_modalities)], s.task, 2 if classes else 1,
                          "classification" if classes else "regression", s.name, "")
    if s.fast is not None:
        data = align_data(data, s.seq_len)
    refs = _references(s.task, out["train"].labels, extra["train"][1], out["test"].labels,
                       extra["test"][0], extra["test"][1])
    return data, refs


def _embedded(s: Setting, sizes, seed: int):
    from .synthetic import make_synthetic

    data, ev = make_synthetic(*sizes, seq_len=s.seq_len, seed=seed, return_events=True)

    def pooled(split):
        e = ev[split]
        signs, times = e["text_cue_signs"], e["text_cue_times"]
        return np.stack([(signs > 0).sum(1), (signs < 0).sum(1), (times >= 0).sum(1),
                         (e["decoy_times"] >= 0).sum(1), e["mood"]], axis=1).astype(float)

    test = ev["test"]
    oracle = np.clip(test["timing_score"] + 0.6 * test["mood"], -3.0, 3.0)
    refs = _references("regression", data.train.labels, pooled("train"), data.test.labels,
                       oracle, pooled("test"))
    return data, refs


def _references(task, y_train, pooled_train, y_test, oracle_test, pooled_test) -> References:
    """Oracle and pooled scores on the test split. The pooled score is the better (on test: a
    conservative reference) of boosted trees and a linear model on the pooled features."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression

    if task == "regression":
        models = [HistGradientBoostingRegressor(loss="absolute_error", max_iter=200,
                                                random_state=0), LinearRegression()]
        mae = min(float(np.mean(np.abs(m.fit(pooled_train, y_train).predict(pooled_test)
                                       - y_test))) for m in models)
        oracle = float(np.mean(np.abs(np.clip(oracle_test, -3, 3) - y_test)))
        return References("MAE", False, oracle, mae)
    models = [HistGradientBoostingClassifier(max_iter=200, random_state=0),
              LogisticRegression(max_iter=1000)]
    acc = max(float(np.mean(m.fit(pooled_train, y_train).predict(pooled_test) == y_test))
              for m in models)
    return References("Accuracy", True, float(np.mean(oracle_test == y_test)), acc)


def _stable_hash(name: str) -> int:
    """A process-independent integer from a setting name (Python's hash() is salted)."""
    return zlib.crc32(name.encode())


def scaled(setting: Setting, **changes) -> Setting:
    """A copy of ``setting`` with fields replaced (e.g. a smaller ``n_train``)."""
    return dataclasses.replace(setting, **changes)
