"""The gate's statistics, checked on simulated per-sample data with a known difference."""
import math

import numpy as np
import pytest

from compress.core.stats import FAIL, INCONCLUSIVE, PASS, Interval, decide, mcnemar_interval, paired_bootstrap, samples_to_decide, unpaired_bootstrap


def simulate(rng, n, p_base=0.8, p_break=0.06, p_fix=0.02):
    """Paired right/wrong outcomes: the candidate breaks some of the baseline's right answers
    and fixes some wrong ones. True accuracy drop = p_base*p_break - (1-p_base)*p_fix."""
    from compress.decide.sequential import paired_outcomes

    return paired_outcomes(rng, n, p_base, p_break, p_fix)


TRUE_DROP = 0.8 * 0.06 - 0.2 * 0.02  # 0.044


def test_paired_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(1234)
    covered = 0
    trials = 1000
    for t in range(trials):
        base, cand = simulate(rng, 400)
        iv = paired_bootstrap(base, cand, confidence=0.95, resamples=400, seed=t)
        covered += iv.lower <= TRUE_DROP <= iv.upper
    assert covered / trials >= 0.93, covered / trials


def test_mcnemar_interval_covers_the_true_difference():
    rng = np.random.default_rng(99)
    trials = 1000
    covered = sum(
        (lambda iv: iv.lower <= TRUE_DROP <= iv.upper)(mcnemar_interval(*simulate(rng, 300)))
        for _ in range(trials)
    )
    assert covered / trials >= 0.93, covered / trials


def _detection_rate(rng, n, paired, trials=200):
    hits = 0
    for t in range(trials):
        base, cand = simulate(rng, n, p_base=0.75, p_break=0.05, p_fix=0.03)  # drop 0.03
        iv = (paired_bootstrap(base, cand, resamples=300, seed=t) if paired
              else unpaired_bootstrap(base, cand, resamples=300, seed=t))
        hits += iv.lower > 0
    return hits / trials


def test_paired_test_detects_a_three_point_drop_with_fewer_samples():
    """Smallest n (on a grid) at which each test sees the drop in 80% of trials."""
    rng = np.random.default_rng(7)
    grid = [100, 200, 400, 800, 1600, 3200]

    def needed(paired):
        for n in grid:
            if _detection_rate(rng, n, paired) >= 0.8:
                return n
        return math.inf

    n_paired, n_unpaired = needed(True), needed(False)
    assert n_paired < n_unpaired, (n_paired, n_unpaired)
    assert n_paired <= 800


def test_bootstrap_for_perplexity_style_aggregates():
    rng = np.random.default_rng(0)
    counts = rng.integers(10, 30, size=300)
    base_ll = -2.0 * counts + rng.normal(0, 3, 300)
    cand_ll = base_ll - 0.1 * counts  # 0.1 nats/word worse: perplexity up by e^0.1 - 1 = 10.5%
    base = np.stack([base_ll, counts], 1)
    cand = np.stack([cand_ll, counts], 1)
    iv = paired_bootstrap(base, cand, aggregation="weighted_perplexity", higher_is_better=False, relative=True)
    assert iv.estimate == pytest.approx(math.exp(0.1) - 1, rel=1e-6)
    # Every document got worse by the same amount: the paired interval is tight around it.
    assert iv.lower == pytest.approx(iv.estimate, rel=1e-6) and iv.upper == pytest.approx(iv.estimate, rel=1e-6)


def test_mcnemar_interval_values():
    # 10 discordant pairs, all won by the baseline, out of 100 documents.
    base = [True] * 100
    cand = [False] * 10 + [True] * 90
    iv = mcnemar_interval(base, cand, confidence=0.95)
    assert iv.estimate == pytest.approx(0.10)
    # Agresti-Min: b=10.5, c=0.5, n=102 -> centre 10/102, se sqrt(11 - 100/102)/102.
    se = math.sqrt(11 - 100 / 102) / 102
    assert iv.lower == pytest.approx(10 / 102 - 1.959964 * se, rel=1e-5)
    assert iv.upper == pytest.approx(10 / 102 + 1.959964 * se, rel=1e-5)
    same = mcnemar_interval([True, False] * 50, [True, False] * 50)
    assert same.estimate == 0 and same.lower < 0 < same.upper


def test_decisions_and_samples_to_decide():
    iv = Interval(0.01, -0.005, 0.018, 0.95, "x", 500)
    assert decide(iv, 0.02) == PASS
    assert decide(Interval(0.05, 0.03, 0.07, 0.95, "x", 500), 0.02) == FAIL
    unsure = Interval(0.015, 0.005, 0.025, 0.95, "x", 500)
    assert decide(unsure, 0.02) == INCONCLUSIVE
    # Half-width 0.01, distance 0.005: the interval must halve, so 4x the documents.
    assert samples_to_decide(unsure, 0.02) == 2000
    assert samples_to_decide(Interval(0.02, 0.01, 0.03, 0.95, "x", 500), 0.02) is None


def test_unequal_lengths_are_rejected():
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError):
        mcnemar_interval([], [])


# ------------------------------------------------------------------ early stopping (search)

def _sequential_rates(seed, true_drop_params, margin, trials, n=400):
    """How often the group-sequential rule (interim looks stop for FAIL, PASS only on all
    documents) and the fixed-sample gate on all documents say PASS and FAIL, and the documents
    the sequential rule evaluates on average."""
    from compress.decide.sequential import operating_characteristics

    oc = operating_characteristics(n=n, margin=margin, trials=trials, seed=seed, **true_drop_params)
    return oc["sequential"], oc["fixed"], oc["documents"]


def test_early_stopping_keeps_the_false_pass_rate_within_the_gates_level():
    """A candidate exactly at the bound (true drop = the allowed regression) is not good enough:
    a PASS is a false pass. The sequential rule may only stop for FAIL, so it passes no more
    often than the fixed-sample gate does, which passes at most (1 - 0.95) / 2 of the time."""
    at_bound = {"p_base": 0.8, "p_break": 0.1, "p_fix": 0.1}  # drop 0.8*0.1 - 0.2*0.1 = 0.06
    seq, fixed, _ = _sequential_rates(2026, at_bound, 0.06, trials=2000)
    assert seq[PASS] <= fixed[PASS]
    # One-sided 2.5%, and three Monte Carlo standard errors (0.35 points each at 2000 trials).
    assert seq[PASS] <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / 2000), seq
    # The other error: calling that candidate FAIL. Interim stops add a little to the fixed 2.5%
    # (at most what O'Brien-Fleming spends before the last look, 0.97%).
    assert seq[FAIL] - fixed[FAIL] <= 0.0097 + 3 * math.sqrt(0.0097 / 2000), (seq, fixed)


def test_early_stopping_saves_documents_on_a_clear_failure_and_costs_little_otherwise():
    from compress.decide.sequential import Design, bounds

    clear_fail = {"p_base": 0.8, "p_break": 0.2, "p_fix": 0.05}  # drop 0.15 against a 0.03 bound
    seq, fixed, docs = _sequential_rates(7, clear_fail, 0.03, trials=300)
    assert seq[FAIL] == fixed[FAIL] == 1.0 and docs <= 0.6 * 400, docs
    harmless = {"p_base": 0.8, "p_break": 0.02, "p_fix": 0.08}  # drop 0
    seq, fixed, docs = _sequential_rates(8, harmless, 0.03, trials=300)
    assert docs == 400 and seq == fixed  # never stopped: the same verdicts as the fixed-sample gate
    # The spending functions' bounds (one-sided 2.5%, four equally spaced looks) as published:
    # O'Brien-Fleming 4.333, 2.963, 2.359, 2.014; Pocock about 2.36 at every look.
    assert bounds((0.25, 0.5, 0.75, 1.0), 0.025) == pytest.approx((4.333, 2.963, 2.359, 2.014), abs=2e-3)
    assert bounds((0.25, 0.5, 0.75, 1.0), 0.025, "pocock") == pytest.approx((2.36,) * 4, abs=0.02)
    assert Design(looks=4).counts(1000) == [250, 500, 750, 1000] and Design(looks=4).counts(2) == [1, 2]
