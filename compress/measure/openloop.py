"""Open-loop levels: requests that arrive on their own schedule, their SLO attainment, and goodput.

A closed loop keeps N requests in flight, so the server sets its own pace; production traffic does not wait.
Here each level offers ``rate`` requests per second (Poisson or evenly spaced arrivals, seeded) and sends each
request when it is due, whatever is in flight. A run's arrivals span at least :data:`STEADY_SERVICE_TIMES`
service times, so that a sustained rate's queue (or its growing batch) shows rather than a burst that batching
absorbs. Per level:

- the **window**: the share ``warmup_fraction`` of first requests and ``cooldown_fraction`` of last ones are set
  aside (the queue is filling or draining then); throughput counts the tokens and completions that fell inside
  the window, from the first measured request's send to the first cool-down request's send;
- **attainment**: the share of measured requests that kept every request bound of ``bench.slo`` (TTFT, time per
  output token, end-to-end), with a block-bootstrap interval: each run's measured requests are cut into blocks of
  about sqrt(n) consecutive requests (a queue's memory stays inside a block) and blocks are resampled;
- with a target (``bench.goodput``), a **verdict**: ``pass`` when the whole interval is at or above it, ``fail``
  when the whole interval is below, ``undecided`` otherwise, and ``undecided`` too when the load generator fell
  behind its own schedule (it shares the machine with the server: the level then measured the client).

Goodput is the highest rate decided ``pass``: :class:`GoodputSearch` doubles from a start rate until a level is
not a pass, then bisects (geometrically) between the highest pass and the lowest non-pass, within a bounded number
of probes. An undecided probe counts as not a pass and is reported as such, never rounded to either side.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from compress.core.recipe import BenchSpec, GoodputSpec
from compress.core.reports import EngineMetrics, Goodput, LevelRun, RateResult, ServedRequest, Spread, summarize

MIN_BLOCK = 4  # a run's measured requests are resampled in blocks of consecutive requests: at least this many long,
#               and sqrt(n) long for n requests (a longer run has longer queue memory and more blocks)


STEADY_SERVICE_TIMES = 8  # an open-loop run lasts at least this many service times: long enough for a queue, or a
#                           batch that grows past what the SLO allows, to show (a short burst is absorbed by batching)


def requests_per_run(settings: BenchSpec, rate: float, min_span_s: float = 0.0) -> int:
    """How many requests one open-loop run at ``rate`` sends (warm-up and cool-down included): ``duration_s`` worth,
    else ``requests_per_rate``, and never fewer than ``min_span_s`` of arrivals."""
    n = math.ceil(rate * settings.duration_s) if settings.duration_s else settings.requests_per_rate
    return max(n, math.ceil(rate * min_span_s), 4)


def steady_span(closed: list[LevelRun]) -> float:
    """The shortest run that reaches a steady state: :data:`STEADY_SERVICE_TIMES` times the mean end-to-end
    latency at the lowest closed-loop level (one request's service time with the server to itself)."""
    if not closed:
        return 0.0
    low = min(r.level for r in closed)
    e2e = [q.e2e_s for r in closed if r.level == low for q in r.requests]
    return STEADY_SERVICE_TIMES * sum(e2e) / len(e2e) if e2e else 0.0


def tpot(req: ServedRequest) -> float:
    """Mean seconds per output token after the first (0 for a one-token answer)."""
    return (req.e2e_s - req.ttft_s) / (req.output_tokens - 1) if req.output_tokens > 1 else 0.0


def meets(req: ServedRequest, bounds: dict[str, float]) -> bool:
    """Whether one request kept every bound (seconds): ``ttft``, ``tpot``, ``e2e``."""
    return all({"ttft": req.ttft_s, "tpot": tpot(req), "e2e": req.e2e_s}[k] <= v for k, v in bounds.items())


def close_run(requests: list[ServedRequest], *, rnd: int, rate: float, arrival: str,
              settings: BenchSpec, metrics: EngineMetrics | None = None) -> LevelRun:
    """One open-loop run as a LevelRun: which requests are measured, and the window they span."""
    n = len(requests)
    first = int(n * settings.warmup_fraction)
    stop = n - int(n * settings.cooldown_fraction)
    if stop - first < 2:
        first, stop = 0, n
    begin = requests[first].started_s
    end = requests[stop].started_s if stop < n else max(r.started_s + r.e2e_s for r in requests)
    return LevelRun(round=rnd, level=0, wall_s=max(end - begin, 1e-9), requests=requests, rate=rate,
                    arrival=arrival, measured=list(range(first, stop)), window_start_s=begin, metrics=metrics)


def _in_window(run: LevelRun) -> tuple[int, int]:
    """(output tokens, completed requests) that fell inside the run's window."""
    begin, end = run.window_start_s or 0.0, (run.window_start_s or 0.0) + run.wall_s
    tokens = done = 0
    for r in run.requests:
        tokens += sum(begin <= r.started_s + t <= end for t in r.token_times_s)
        done += begin <= r.started_s + r.e2e_s <= end
    return tokens, done


def _blocks(runs: list[LevelRun], bounds: dict[str, float]) -> list[tuple[int, int]]:
    """(met, measured) per block of consecutive measured requests, over every run."""
    out = []
    for run in runs:
        ok = [meets(run.requests[i], bounds) for i in run.measured or range(len(run.requests))]
        size = max(MIN_BLOCK, math.ceil(math.sqrt(len(ok))))
        for part in np.array_split(np.asarray(ok, dtype=int), max(1, len(ok) // size)):
            if part.size:
                out.append((int(part.sum()), int(part.size)))
    return out


def attainment(runs: list[LevelRun], bounds: dict[str, float], *, confidence: float = 0.95, resamples: int = 2000,
               seed: int = 0) -> Spread:
    """The share of measured requests that met ``bounds``, with a block-bootstrap interval."""
    blocks = np.asarray(_blocks(runs, bounds), dtype=float)
    value = blocks[:, 0].sum() / blocks[:, 1].sum()
    idx = np.random.default_rng(seed).integers(0, len(blocks), size=(resamples, len(blocks)))
    shares = blocks[idx, 0].sum(1) / blocks[idx, 1].sum(1)
    lo, hi = np.quantile(shares, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Spread(value=float(value), lower=float(lo), upper=float(hi), confidence=confidence, rounds=len(runs))


def verdict(share: Spread, target: float) -> str:
    """pass: the whole interval at or above the target; fail: the whole interval below it; else undecided."""
    if share.lower >= target:
        return "pass"
    if share.upper < target:
        return "fail"
    return "undecided"


CLIENT_SLACK = 1.10  # a run whose requests went out over more than this times their scheduled span fell behind


def client_bound(runs: list[LevelRun]) -> bool:
    """Whether the load generator fell behind its own schedule in any run (it shares the machine with the server:
    on a small CPU a fast model can outrun the client that drives it)."""
    for run in runs:
        sent = [run.requests[i] for i in (run.measured or range(len(run.requests)))]
        planned = (sent[-1].scheduled_s or 0.0) - (sent[0].scheduled_s or 0.0)
        actual = sent[-1].started_s - sent[0].started_s
        if planned > 0 and actual > planned * CLIENT_SLACK:
            return True
    return False


def _mean(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def summarize_rate(runs: list[LevelRun], settings: BenchSpec) -> RateResult:
    """One rate level's figures, every run at that rate pooled."""
    reqs = [r.requests[i] for r in runs for i in (r.measured or range(len(r.requests)))]
    wall = sum(r.wall_s for r in runs)
    counted = [_in_window(r) for r in runs]
    tokens, done = sum(c[0] for c in counted), sum(c[1] for c in counted)
    tps = tokens / wall if wall > 0 else 0.0
    bounds = settings.slo.request_bounds() if settings.slo is not None else {}
    share = attainment(runs, bounds, seed=settings.seed) if bounds else None
    target = settings.goodput.attainment if settings.goodput else None
    ms = [r.metrics for r in runs if r.metrics is not None]
    behind = client_bound(runs)
    decided = verdict(share, target) if share is not None and target is not None else None
    return RateResult(
        rate=runs[0].rate, arrival=runs[0].arrival, requests=len(reqs), achieved_requests_per_s=done / wall,
        output_tokens_per_s=tps,
        cost_per_mtok_usd=settings.price_per_hour / 3600.0 / tps * 1e6 if tps > 0 else float("inf"),
        ttft=summarize([q.ttft_s for q in reqs]), itl=summarize([d for q in reqs for d in q.inter_token_s] or [0.0]),
        e2e=summarize([q.e2e_s for q in reqs]),
        send_lag=summarize([q.started_s - (q.scheduled_s or q.started_s) for q in reqs]),
        attainment=share, verdict="undecided" if behind and decided else decided, client_bound=behind,
        queue_time_mean_s=_mean([m.queue_time_mean_s for m in ms]), waiting_mean=_mean([m.waiting_mean for m in ms]),
        waiting_max=max((m.waiting_max for m in ms if m.waiting_max is not None), default=None),
        running_mean=_mean([m.running_mean for m in ms]),
        kv_cache_usage_max=max((m.kv_cache_usage_max for m in ms if m.kv_cache_usage_max is not None), default=None),
        prefix_cache_hit_rate=_hit_rate(ms),
        preemptions=sum(m.preemptions for m in ms if m.preemptions is not None) if ms else None)


def _hit_rate(ms: list[EngineMetrics]) -> float | None:
    queries = sum(m.prefix_cache_queries or 0 for m in ms)
    return sum(m.prefix_cache_hits or 0 for m in ms) / queries if queries else None


def summarize_rates(runs: list[LevelRun], settings: BenchSpec) -> list[RateResult]:
    rates = sorted({r.rate for r in runs})
    return [summarize_rate([r for r in runs if r.rate == rate], settings) for rate in rates]


# ---------------------------------------------------------------------------------------------- goodput

def _sig(rate: float) -> float:
    """A rate to three significant figures (what a report shows, and what the next run repeats)."""
    return float(f"{rate:.3g}")


class GoodputSearch:
    """Double, then bisect: the rate to probe next, given the verdicts so far.

    Example:
        search = GoodputSearch(spec, start=2.0)
        while (rate := search.next_rate()) is not None:
            search.record(rate, probe(rate))      # "pass" | "fail" | "undecided"
    """

    def __init__(self, spec: GoodputSpec, start: float):
        self.spec = spec
        self.start = float(start)
        self.verdicts: dict[float, str] = {}

    @property
    def passed(self) -> float | None:
        return max((r for r, v in self.verdicts.items() if v == "pass"), default=None)

    @property
    def above(self) -> float | None:
        """The lowest rate above the highest pass that was not a pass (the bracket's upper end)."""
        low = self.passed or 0.0
        return min((r for r, v in self.verdicts.items() if v != "pass" and r > low), default=None)

    def next_rate(self) -> float | None:
        if len(self.verdicts) >= self.spec.max_probes:
            return None
        if not self.verdicts:
            return self.start
        low, high = self.passed, self.above
        if high is None:
            return _sig(low * 2)  # every probe passed: double
        if low is None:
            lowest = min(self.verdicts)
            return _sig(lowest / 2) if lowest / 2 >= 1e-3 else None  # even the lowest failed: halve
        if high <= low * (1 + self.spec.precision):
            return None
        rate = _sig(math.sqrt(low * high))
        return rate if low < rate < high else None

    def record(self, rate: float, outcome: str) -> None:
        self.verdicts[rate] = outcome

    def result(self, slo: dict[str, float], rates: list[RateResult]) -> Goodput:
        low, high = self.passed, self.above
        at = next((r for r in rates if r.rate == low), None)
        reason = None
        if low is None:
            reason = (f"no probed rate met the target (lowest probed {min(self.verdicts):g}/s)" if self.verdicts
                      else "nothing was probed")
        return Goodput(target=self.spec.attainment, slo={k: v * 1e3 for k, v in slo.items()}, rps=low,
                       upper_rps=high, probes=list(self.verdicts),
                       undecided=[r for r, v in self.verdicts.items() if v == "undecided"],
                       output_tokens_per_s=at.output_tokens_per_s if at else None,
                       cost_per_mtok_usd=at.cost_per_mtok_usd if at else None, reason=reason)


def start_rate(settings: BenchSpec, closed: list[LevelRun]) -> float:
    """The first probe's rate: the recipe's, else what one request at a time sustains (1 / mean end-to-end at the
    lowest closed level), else 1 per second."""
    if settings.goodput is not None and settings.goodput.start_rate:
        return settings.goodput.start_rate
    if closed:
        low = min(r.level for r in closed)
        e2e = [q.e2e_s for r in closed if r.level == low for q in r.requests]
        if e2e and sum(e2e) > 0:
            return _sig(len(e2e) / sum(e2e))
    return 1.0


def describe(settings: BenchSpec) -> dict[str, Any]:
    """The open-loop settings a report records beside its figures."""
    return {"arrival": settings.arrival, "warmup_fraction": settings.warmup_fraction,
            "cooldown_fraction": settings.cooldown_fraction, "min_block": MIN_BLOCK}
