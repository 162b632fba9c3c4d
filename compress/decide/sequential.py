"""Group-sequential stopping for `compress search`: stop evaluating a candidate that is already
certain to FAIL its quality checks on part of the documents.

The design is Lan and DeMets' error spending (1983) with O'Brien and Fleming's spending function
(the default) or Pocock's. A quality check's test statistic at a look is its regression's
distance from the gate's bound in standard errors; over looks at information fractions
t_1 < ... < t_K (documents so far / all documents) these statistics behave like a Brownian
motion sampled at t_k, correlated sqrt(t_i / t_j). The spending function ``alpha(t)`` says how
much of the one-sided error ``a = (1 - confidence) / 2`` may be spent by fraction t; the bound
``c_k`` at look k is the one whose first crossing there has probability
``alpha(t_k) - alpha(t_{k-1})`` under the null. Bounds depend only on the looks taken so far,
so a look may come at any fraction (a task with fewer documents completes early).

At a look the check's usual interval (McNemar or paired bootstrap) is computed at the nominal
confidence ``1 - 2 * (1 - Phi(c_k))``; a lower end beyond the bound stops the candidate: FAIL.
Interim looks only ever stop for FAIL. PASS is declared by the gate on all documents, exactly as
`compress run` declares it, because that is the evidence an export carries; stopping for FAIL
can only remove PASSes, so the false-PASS rate stays within the gate's level (tested by
simulation in tests/test_stats.py). Early stops add at most ``alpha(t_{K-1})`` to the rate at
which a candidate that is good enough is called FAIL (that simulation measures it too).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

from compress.core.stats import FAIL, INCONCLUSIVE, PASS, Interval

_N = NormalDist()


def obrien_fleming(t: float, a: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type spending: almost nothing early, the rest near the end."""
    return 2 * (1 - _N.cdf(_N.inv_cdf(1 - a / 2) / math.sqrt(t))) if t > 0 else 0.0


def pocock(t: float, a: float) -> float:
    """Lan-DeMets Pocock-type spending: more early (earlier stops, a wider last look)."""
    return a * math.log(1 + (math.e - 1) * t)


SPENDING: dict[str, Callable[[float, float], float]] = {"obrien-fleming": obrien_fleming, "pocock": pocock}


@lru_cache(maxsize=256)
def bounds(fractions: tuple[float, ...], a: float, spending: str = "obrien-fleming") -> tuple[float, ...]:
    """The one-sided critical values c_1..c_K (standard normal units) for looks at ``fractions``
    (increasing, the last at most 1) spending ``a`` with the named function."""
    import numpy as np
    from scipy.optimize import brentq
    from scipy.stats import multivariate_normal

    if not fractions or any(b <= f for f, b in zip(fractions, fractions[1:])) or fractions[0] <= 0 or fractions[-1] > 1:
        raise ValueError(f"look fractions must increase within (0, 1]: {fractions}")
    spend = SPENDING[spending]
    t = np.asarray(fractions, dtype=float)
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    out: list[float] = []
    continuing = 1.0  # P(no crossing so far) under the null
    for k in range(len(t)):
        target = spend(float(t[k]), a) - (spend(float(t[k - 1]), a) if k else 0.0)
        if k == 0:
            c = _N.inv_cdf(1 - target)
        elif target <= 1e-12:
            c = math.inf
        else:
            def excess(c: float, k: int = k) -> float:
                stay = multivariate_normal.cdf([*out, c], cov=cov[: k + 1, : k + 1], abseps=1e-6, releps=1e-5,
                                               rng=np.random.default_rng(0))
                return continuing - stay - target
            c = brentq(excess, 0.0, 12.0, xtol=1e-6)
        out.append(float(c))
        continuing -= target
    return tuple(out)


def look_confidence(c: float) -> float:
    """The two-sided confidence whose interval ends are ``c`` standard errors from the estimate."""
    return 1.0 if math.isinf(c) else 1 - 2 * (1 - _N.cdf(c))


@dataclass(frozen=True)
class Design:
    """How a search looks at a candidate: at ``looks`` equally spaced fractions of the documents
    (the last is all of them), spending the gate's one-sided error with ``spending``."""

    looks: int = 4
    spending: str = "obrien-fleming"

    def counts(self, total: int) -> list[int]:
        """The documents evaluated by each look (per task, as lm-eval's ``limit``)."""
        return sorted({max(1, math.ceil(total * k / self.looks)) for k in range(1, self.looks + 1)})

    def confidence(self, fractions: Sequence[float], gate_confidence: float) -> float:
        """The confidence of the intervals at the last of ``fractions`` (the looks so far)."""
        a = (1 - gate_confidence) / 2
        return look_confidence(bounds(tuple(round(f, 6) for f in fractions), a, self.spending)[-1])


def sequential_verdict(interval_at: Callable[[int, float], Interval], counts: Sequence[int], threshold: float,
                       design: Design, gate_confidence: float) -> tuple[str, int]:
    """One quality check through the looks: ``interval_at(n, confidence)`` gives the regression's
    interval on the first ``n`` documents. Returns (FAIL, n) at the first look whose interval lies
    beyond ``threshold``; otherwise the fixed-sample decision on all documents at the gate's own
    confidence (PASS, FAIL or INCONCLUSIVE) and the last count. Used by the simulation test; the
    search applies the same rule check by check."""
    total = counts[-1]
    fractions: list[float] = []
    for n in counts[:-1]:
        fractions.append(n / total)
        iv = interval_at(n, design.confidence(fractions, gate_confidence))
        if iv.lower > threshold:
            return FAIL, n
    iv = interval_at(total, gate_confidence)
    verdict = PASS if iv.upper <= threshold else FAIL if iv.lower > threshold else INCONCLUSIVE
    return verdict, total


def paired_outcomes(rng, n: int, p_base: float, p_break: float, p_fix: float):
    """Simulated paired right/wrong answers on ``n`` documents: the baseline is right with probability
    ``p_base``; the candidate breaks a share ``p_break`` of its right answers and fixes a share ``p_fix`` of
    its wrong ones. The true accuracy drop is ``p_base * p_break - (1 - p_base) * p_fix``."""
    import numpy as np

    base = rng.random(n) < p_base
    u = rng.random(n)
    return base, np.where(base, u >= p_break, u < p_fix)


def operating_characteristics(*, n: int, margin: float, p_base: float, p_break: float, p_fix: float,
                              trials: int, seed: int, design: Design | None = None,
                              gate_confidence: float = 0.95) -> dict:
    """How often the sequential rule and the fixed-sample gate (McNemar's interval on all ``n`` documents)
    say PASS and FAIL for a candidate of a known true drop against the bound ``margin``, and the documents
    the sequential rule evaluates on average, over ``trials`` simulated evaluations."""
    import numpy as np

    from compress.core.stats import decide, mcnemar_interval

    design = design or Design()
    counts = design.counts(n)
    rng = np.random.default_rng(seed)
    seq = {PASS: 0, FAIL: 0, INCONCLUSIVE: 0}
    fixed = dict(seq)
    docs = 0
    for _ in range(trials):
        base, cand = paired_outcomes(rng, n, p_base, p_break, p_fix)
        verdict, used = sequential_verdict(lambda k, conf: mcnemar_interval(base[:k], cand[:k], confidence=conf),
                                           counts, margin, design, gate_confidence)
        seq[verdict] += 1
        docs += used
        fixed[decide(mcnemar_interval(base, cand, confidence=gate_confidence), margin)] += 1
    return {"sequential": {k: v / trials for k, v in seq.items()}, "fixed": {k: v / trials for k, v in fixed.items()},
            "documents": docs / trials, "trials": trials, "n": n}
