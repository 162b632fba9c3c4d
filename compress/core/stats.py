"""Paired statistics for gate decisions.

Two evaluations over the same documents are compared document by document. For a metric
whose value aggregates per-document values (a mean of 0/1 correctness, a perplexity over
summed log-likelihoods), the *regression* is how much worse the candidate is than the
baseline, in the metric's bad direction, absolute or relative to the baseline.

- ``paired_bootstrap``: resample documents (the same resample for both models), recompute
  both aggregates, take percentiles of the regression. Works for any aggregate.
- ``mcnemar_interval``: for right/wrong outcomes, an interval for the accuracy drop from the
  McNemar table of discordant pairs, with the Agresti-Min adjustment that keeps its coverage
  near nominal when few answers changed. Cheap and deterministic.

A non-inferiority decision against a threshold: PASS when the upper bound of the regression
is within the threshold, FAIL when the lower bound exceeds it, INCONCLUSIVE otherwise.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


@dataclass
class Interval:
    estimate: float
    lower: float
    upper: float
    confidence: float
    method: str
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------ aggregates

def mean_aggregate(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean of per-sample values over each resample (rows of ``idx``)."""
    return values[idx].mean(axis=-1)


def ratio_aggregate(transform: Callable[[np.ndarray], np.ndarray]):
    """For ``[loglikelihood, count]`` samples: transform(sum ll / sum count) per resample."""

    def agg(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
        ll = values[:, 0][idx].sum(axis=-1)
        n = values[:, 1][idx].sum(axis=-1)
        return transform(ll / n)

    return agg


AGGREGATES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": mean_aggregate,
    "weighted_perplexity": ratio_aggregate(lambda x: np.exp(-x)),
    "bits_per_byte": ratio_aggregate(lambda x: -x / math.log(2)),
    "perplexity": lambda values, idx: np.exp(-values[idx].mean(axis=-1)),
}


def regression(base: np.ndarray, cand: np.ndarray, higher_is_better: bool, relative: bool) -> np.ndarray:
    """How much worse the candidate is (positive = worse), absolute or as a fraction of the baseline."""
    diff = base - cand if higher_is_better else cand - base
    return diff / np.abs(base) if relative else diff


# ------------------------------------------------------------------------- intervals

def paired_bootstrap(base: Sequence[Any], cand: Sequence[Any], *, aggregation: str = "mean",
                     higher_is_better: bool = True, relative: bool = False, confidence: float = 0.95,
                     resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of the regression, resampling documents in pairs.

    Args:
        base, cand: per-document values in the same document order (numbers, or
            ``[loglikelihood, count]`` pairs for perplexity-style aggregates).
        aggregation: how per-document values combine (see ``AGGREGATES``).
        confidence: two-sided level of the interval.
    """
    return stratified_paired_bootstrap([Stratum(base, cand, aggregation, 1.0)], higher_is_better=higher_is_better,
                                       relative=relative, confidence=confidence, resamples=resamples, seed=seed)


@dataclass
class Stratum:
    """One subtask of a group: both models' per-document values (same documents, same order),
    how they aggregate, and the subtask's weight in the group's figure."""

    base: Sequence[Any]
    cand: Sequence[Any]
    aggregation: str = "mean"
    weight: float = 1.0


def weighted_value(parts: Sequence[tuple[np.ndarray, str, float]], idx: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """A figure from per-document values: each part aggregated (over the rows of its ``idx``,
    or all its documents), then the parts' weighted mean, as lm-eval combines a group's
    subtasks (``sum(value * weight) / sum(weight)``). One part of weight 1 is its aggregate."""
    total, weights = 0.0, 0.0
    for i, (values, aggregation, weight) in enumerate(parts):
        rows = np.arange(len(values))[None, :] if idx is None else idx[i]
        total = total + AGGREGATES[aggregation](values, rows) * weight
        weights += weight
    return total / weights


def stratified_paired_bootstrap(strata: Sequence[Stratum], *, higher_is_better: bool = True, relative: bool = False,
                                confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of the regression of a (group) figure: documents are
    resampled in pairs *within* each stratum, so every resample keeps each subtask's size
    and weight, as the group's own figure does.
    """
    arrays = []
    for st in strata:
        b, c = np.asarray(st.base, dtype=float), np.asarray(st.cand, dtype=float)
        if b.shape != c.shape or len(b) == 0:
            raise ValueError(f"paired samples must have the same, non-zero length ({len(b)} vs {len(c)})")
        arrays.append((b, c, st.aggregation, float(st.weight)))
    base_parts = [(b, agg, w) for b, _, agg, w in arrays]
    cand_parts = [(c, agg, w) for _, c, agg, w in arrays]
    estimate = float(regression(weighted_value(base_parts), weighted_value(cand_parts), higher_is_better, relative)[0])
    rng = np.random.default_rng(seed)
    regs = []
    for start in range(0, resamples, 500):  # chunks bound the memory of the index matrix
        k = min(500, resamples - start)
        idx = [rng.integers(0, len(b), size=(k, len(b))) for b, *_ in arrays]
        regs.append(regression(weighted_value(base_parts, idx), weighted_value(cand_parts, idx),
                               higher_is_better, relative))
    reg = np.concatenate(regs)
    alpha = (1 - confidence) / 2
    lower, upper = np.quantile(reg, [alpha, 1 - alpha])
    method = "paired bootstrap" if len(arrays) == 1 else f"paired bootstrap within {len(arrays)} subtasks"
    return Interval(estimate, float(lower), float(upper), confidence, method, sum(len(b) for b, *_ in arrays))


def mean_bootstrap(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of a mean over items (requests, documents), each item resampled whole."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = np.concatenate([v[rng.integers(0, len(v), size=(min(500, resamples - s), len(v)))].mean(axis=1)
                            for s in range(0, resamples, 500)])
    alpha = (1 - confidence) / 2
    lower, upper = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(v.mean()), float(lower), float(upper), confidence, "bootstrap over items", len(v))


def mcnemar_interval(base_correct: Sequence[bool], cand_correct: Sequence[bool], *,
                     confidence: float = 0.95) -> Interval:
    """Interval for the accuracy drop (baseline minus candidate) from McNemar's 2x2 table.

    Only discordant pairs carry information: with b documents only the baseline got right and
    c only the candidate got right, the drop is (b - c) / n with variance
    ((b + c) - (b - c)^2 / n) / n^2. Adding 0.5 to every cell first (Agresti and Min, 2005)
    keeps the coverage near nominal even with few discordant pairs, where the plain interval
    (and one that conditions on b + c) is far too narrow.
    """
    from statistics import NormalDist

    bc = np.asarray(base_correct, dtype=bool)
    cc = np.asarray(cand_correct, dtype=bool)
    if bc.shape != cc.shape or len(bc) == 0:
        raise ValueError("paired samples must have the same, non-zero length")
    n = len(bc)
    b0, c0 = int(np.sum(bc & ~cc)), int(np.sum(~bc & cc))
    b, c, m = b0 + 0.5, c0 + 0.5, n + 2
    centre = (b - c) / m
    se = math.sqrt(max((b + c) - (b - c) ** 2 / m, 0.0)) / m
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return Interval((b0 - c0) / n, centre - z * se, centre + z * se, confidence, "McNemar (Agresti-Min)", n)


def unpaired_bootstrap(base: Sequence[float], cand: Sequence[float], *, confidence: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> Interval:
    """Interval of mean(base) - mean(cand) resampling each side independently (for comparison)."""
    b = np.asarray(base, dtype=float)
    c = np.asarray(cand, dtype=float)
    rng = np.random.default_rng(seed)
    diffs = b[rng.integers(0, len(b), (resamples, len(b)))].mean(1) - c[rng.integers(0, len(c), (resamples, len(c)))].mean(1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return Interval(float(b.mean() - c.mean()), float(lo), float(hi), confidence, "unpaired bootstrap", len(b))


# -------------------------------------------------------------------------- decision

def decide(interval: Interval, threshold: float) -> str:
    """Non-inferiority: the regression may be at most ``threshold``."""
    if interval.upper <= threshold:
        return PASS
    if interval.lower > threshold:
        return FAIL
    return INCONCLUSIVE


def samples_to_decide(interval: Interval, threshold: float) -> int | None:
    """Documents needed for the interval to clear the threshold, if the effect and spread held.

    The interval's half-width shrinks as 1/sqrt(n): to separate the estimate from the
    threshold it must shrink to their distance. None when the estimate sits on the threshold.
    """
    distance = abs(interval.estimate - threshold)
    half = (interval.upper - interval.lower) / 2
    if distance == 0:
        return None
    if half == 0:
        return interval.n
    return max(interval.n, math.ceil(interval.n * (half / distance) ** 2))
