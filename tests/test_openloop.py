"""Open-loop arrivals, SLO attainment, goodput search and the goodput gate metrics, without a server."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from compress.core.recipe import BenchSpec, GateCheck, GoodputSpec
from compress.core.reports import Goodput, LevelRun, ServedRequest
from compress.core.stats import FAIL, INCONCLUSIVE, PASS
from compress.measure.engines.client import arrival_times
from compress.measure.openloop import (GoodputSearch, attainment, client_bound, close_run, meets, start_rate,
                                       summarize_rate, tpot, verdict)

TINY = Path(__file__).resolve().parent.parent / "compress" / "assets" / "tiny-llama"


def req(i: int, *, sent: float, ttft: float, e2e: float, tokens: int = 5, due: float | None = None) -> ServedRequest:
    step = (e2e - ttft) / (tokens - 1)
    return ServedRequest(index=i, concurrency=0, prompt_tokens=8, output_tokens=tokens, started_s=sent, ttft_s=ttft,
                         e2e_s=e2e, token_times_s=[ttft + k * step for k in range(tokens)], chunks=tokens,
                         scheduled_s=sent if due is None else due)


def settings(**kw) -> BenchSpec:
    base = dict(engine="vllm", arrival="poisson", rates=[1.0], slo={"ttft_ms": 100, "e2e_ms": 500},
                goodput={"attainment": 0.9}, warmup_fraction=0.0, cooldown_fraction=0.0)
    return BenchSpec(**{**base, **kw})


def test_arrivals_are_seeded_and_have_the_rate_asked():
    a, b = arrival_times(4000, 5.0, "poisson", seed=3), arrival_times(4000, 5.0, "poisson", seed=3)
    assert a == b and a[0] == 0.0 and all(y > x for x, y in zip(a, a[1:]))
    assert arrival_times(4000, 5.0, "poisson", seed=4) != a
    gaps = np.diff(a)
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)
    assert gaps.std() == pytest.approx(0.2, rel=0.08)  # exponential: std equals mean
    assert arrival_times(5, 4.0, "constant", seed=0) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_request_meets_the_slo_only_within_every_bound():
    r = req(0, sent=0, ttft=0.05, e2e=0.45)
    assert tpot(r) == pytest.approx(0.1)
    assert meets(r, {"ttft": 0.1, "e2e": 0.5}) and not meets(r, {"ttft": 0.04})
    assert not meets(r, {"ttft": 0.1, "tpot": 0.09}) and meets(r, {"tpot": 0.1})


def test_attainment_counts_measured_requests_and_its_interval_brackets_it():
    s = settings(warmup_fraction=0.1, cooldown_fraction=0.1)
    reqs = [req(i, sent=i * 0.1, ttft=0.05 if i % 4 else 0.2, e2e=0.3) for i in range(40)]
    run = close_run(reqs, rnd=0, rate=10.0, arrival="poisson", settings=s)
    assert run.measured == list(range(4, 36))  # 10% each end set aside
    assert run.window_start_s == pytest.approx(0.4) and run.wall_s == pytest.approx(3.2)
    share = attainment([run], {"ttft": 0.1})
    assert share.value == pytest.approx(24 / 32)  # every fourth request misses its TTFT
    assert share.lower <= share.value <= share.upper and share.upper - share.lower < 0.5
    everyone = attainment([run], {"ttft": 1.0})
    assert (everyone.value, everyone.lower, everyone.upper) == (1.0, 1.0, 1.0)


def test_verdicts_need_the_whole_interval_on_one_side():
    from compress.core.reports import Spread

    sp = lambda v, lo, hi: Spread(value=v, lower=lo, upper=hi, confidence=0.95, rounds=2)  # noqa: E731
    assert verdict(sp(0.97, 0.95, 1.0), 0.95) == "pass"
    assert verdict(sp(0.9, 0.85, 0.94), 0.95) == "fail"
    assert verdict(sp(0.95, 0.90, 0.99), 0.95) == "undecided"


def test_a_level_whose_client_fell_behind_is_undecided_whatever_its_share():
    s = settings()
    on_time = [req(i, sent=i * 0.1, ttft=0.01, e2e=0.1) for i in range(20)]
    late = [req(i, sent=i * 0.2, ttft=0.01, e2e=0.1, due=i * 0.1) for i in range(20)]
    runs = [close_run(on_time, rnd=0, rate=10, arrival="poisson", settings=s)]
    assert not client_bound(runs) and summarize_rate(runs, s).verdict == "pass"
    behind = [close_run(late, rnd=0, rate=10, arrival="poisson", settings=s)]
    result = summarize_rate(behind, s)
    assert client_bound(behind) and result.client_bound and result.verdict == "undecided"
    assert result.send_lag.max == pytest.approx(1.9)


def test_throughput_counts_what_fell_inside_the_window():
    s = settings(cooldown_fraction=0.25)
    reqs = [req(i, sent=float(i), ttft=0.1, e2e=0.5, tokens=5) for i in range(8)]  # one per second
    result = summarize_rate([close_run(reqs, rnd=0, rate=1.0, arrival="constant", settings=s)], s)
    # window [0, 6): six requests sent and finished inside it, 5 tokens each
    assert result.achieved_requests_per_s == pytest.approx(1.0)
    assert result.output_tokens_per_s == pytest.approx(5.0)
    assert result.cost_per_mtok_usd == pytest.approx(1.0 / 3600 / 5.0 * 1e6)


def capacity_search(capacity: float, spec: GoodputSpec, start: float, band: float = 0.0) -> GoodputSearch:
    """A search against a server that keeps the SLO up to ``capacity`` (undecided within ``band`` above it)."""
    search = GoodputSearch(spec, start)
    while (rate := search.next_rate()) is not None:
        search.record(rate, "pass" if rate <= capacity else "undecided" if rate <= capacity + band else "fail")
    return search


def test_the_search_doubles_then_bisects_to_the_capacity():
    spec = GoodputSpec(attainment=0.9, max_probes=10, precision=0.1)
    s = capacity_search(7.3, spec, start=1.0)
    assert list(s.verdicts)[:4] == [1.0, 2.0, 4.0, 8.0]  # doubling until a level fails
    assert s.passed <= 7.3 < s.above and s.above <= s.passed * 1.1
    result = s.result({"ttft": 0.1}, [])
    assert (result.rps, result.upper_rps, result.slo) == (s.passed, s.above, {"ttft": 100.0})


def test_the_search_is_bounded_halves_below_a_failing_start_and_never_rounds_undecided():
    s = capacity_search(0.3, GoodputSpec(max_probes=4), start=2.0)
    assert list(s.verdicts) == [2.0, 1.0, 0.5, 0.25] and s.passed == 0.25 and s.above == 0.5
    s = capacity_search(4.0, GoodputSpec(max_probes=8, precision=0.05), start=1.0, band=3.0)
    assert s.passed <= 4.0 and all(r > 4.0 for r in s.result({}, []).undecided)
    nothing = capacity_search(0.0001, GoodputSpec(max_probes=3), start=1.0)
    result = nothing.result({"e2e": 1.0}, [])
    assert result.rps is None and "no probed rate met the target" in result.reason


def test_the_first_probe_is_what_one_request_at_a_time_sustains():
    closed = [LevelRun(round=0, level=1, wall_s=1.0, requests=[req(i, sent=0, ttft=0.1, e2e=0.25) for i in range(4)])]
    assert start_rate(settings(), closed) == 4.0
    assert start_rate(settings(goodput={"attainment": 0.9, "start_rate": 1.5}), closed) == 1.5
    assert start_rate(settings(), []) == 1.0


def goodput(rps, upper, probes, cost=None) -> Goodput:
    return Goodput(target=0.95, slo={"ttft": 100.0}, rps=rps, upper_rps=upper, probes=probes, cost_per_mtok_usd=cost)


def speed(base: Goodput | None, cand: Goodput | None):
    return SimpleNamespace(baseline=SimpleNamespace(goodput=base), candidate=SimpleNamespace(goodput=cand))


def test_goodput_metrics_carry_the_searches_bracket_and_the_gate_decides_on_it():
    from compress.decide.gate import efficiency_check
    from compress.measure.compare import goodput_metrics

    check = GateCheck(metric="goodput_speedup", min=1.5)
    clear = goodput_metrics(speed(goodput(2.0, 2.4, [1, 2, 4, 2.4]), goodput(4.0, 4.8, [1, 2, 4, 8, 4.8], 0.5)))
    sp = clear["goodput_speedup"]
    assert (sp.estimate, sp.lower, sp.upper) == pytest.approx((2.0, 4.0 / 2.4, 4.8 / 2.0))
    assert efficiency_check(check, clear).verdict == PASS
    cost = clear["cost_at_goodput"]
    assert (cost.estimate, cost.lower, cost.upper) == pytest.approx((0.5, 0.5 * 4.0 / 4.8, 0.5))
    assert efficiency_check(GateCheck(metric="cost_at_goodput", max=0.6), clear).verdict == PASS
    close = goodput_metrics(speed(goodput(2.0, 4.0, [1, 2, 4]), goodput(3.0, 6.0, [1, 3, 6], 0.5)))
    assert efficiency_check(check, close).verdict == INCONCLUSIVE  # [0.75, 3.0] straddles 1.5
    worse = goodput_metrics(speed(goodput(4.0, 4.5, [4, 8, 4.5]), goodput(2.0, 2.2, [2, 4, 2.2], 0.5)))
    assert efficiency_check(check, worse).verdict == FAIL
    open_top = goodput_metrics(speed(goodput(2.0, 2.5, [2, 4, 2.5]), goodput(8.0, None, [2, 4, 8], 0.5)))
    assert open_top["goodput_speedup"].upper == float("inf") and efficiency_check(check, open_top).verdict == PASS
    none = goodput_metrics(speed(goodput(None, 1.0, [1, 0.5]), goodput(None, 1.0, [1, 0.5])))
    assert efficiency_check(check, none).verdict == INCONCLUSIVE
    missing = goodput_metrics(speed(None, goodput(1.0, 2.0, [1, 2])))
    result = efficiency_check(check, missing)
    assert result.verdict == INCONCLUSIVE and "bench.goodput" in result.note


@pytest.mark.parametrize("bad, words", [
    (dict(arrival="closed", rates=[1.0]), "open loop"),
    (dict(arrival="poisson", rates=[], goodput=None), "needs rates"),
    (dict(arrival="poisson", rates=[1.0], goodput={}, slo=None), "add slo"),
    (dict(engine="hf", arrival="closed", workload={"prompt_tokens": 8}, goodput=None, rates=[]), "served"),
    (dict(workload={"path": "x.jsonl", "prompt_tokens": 8}), "own lengths"),
    (dict(workload={"prompt_tokens": {"uniform": [9, 3]}}), "backwards"),
    (dict(workload={"prompt_tokens": {"uniform": [1, 3], "lognormal": {"mean": 3, "sigma": 1}}}), "one of"),
    (dict(slo={}), "ttft_ms"),
])
def test_bad_open_loop_settings_are_refused(bad, words):
    with pytest.raises(ValueError, match=words):
        settings(**bad)


def test_earlier_bench_settings_keep_their_dump():
    dumped = BenchSpec(engine="vllm", slo={"ttft_p99_ms": 100}).model_dump(mode="json")
    assert not {"workload", "arrival", "rates", "goodput", "requests_per_rate", "duration_s"} & set(dumped)
    assert set(dumped["slo"]) == {"ttft_p99_ms", "itl_p99_ms"}
    assert json.dumps(settings().model_dump(mode="json"))  # and the new ones serialise


def test_a_goodput_check_without_a_search_is_a_recipe_error():
    from compress.core.errors import RecipeError
    from compress.core.recipe import validate_document

    doc = {"name": "g", "model": {"id": "builtin:tiny-llama"}, "method": {"kind": "int4", "algorithm": "rtn"},
           "bench": {"engine": "vllm"}, "gate": {"checks": [{"metric": "goodput_speedup", "min": 1.2}]}}
    with pytest.raises(RecipeError, match="needs bench.goodput"):
        validate_document(doc, "g.yaml")
    doc["bench"].update(arrival="poisson", slo={"ttft_ms": 500}, goodput={"attainment": 0.9})
    assert validate_document(doc, "g.yaml").bench.goodput.attainment == 0.9


def test_a_run_lasts_long_enough_for_a_queue_to_show():
    from compress.measure.openloop import STEADY_SERVICE_TIMES, requests_per_run, steady_span

    closed = [LevelRun(round=0, level=1, wall_s=2.0, requests=[req(i, sent=0, ttft=0.1, e2e=0.5) for i in range(4)])]
    assert steady_span(closed) == pytest.approx(STEADY_SERVICE_TIMES * 0.5)
    s = settings(requests_per_rate=10)
    assert requests_per_run(s, 2.0) == 10
    assert requests_per_run(s, 10.0, steady_span(closed)) == 10 * STEADY_SERVICE_TIMES * 0.5
    assert requests_per_run(settings(duration_s=30), 2.0) == 60
