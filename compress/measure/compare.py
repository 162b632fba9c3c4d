"""Side-by-side rows for a baseline and a candidate: accuracy metrics and speed figures."""
from __future__ import annotations

from typing import Any

import numpy as np

from compress.core.reports import AccuracyReport, BenchReport, LevelRun, Measured, SpeedReport
from compress.core.stats import Interval


def accuracy_rows(base: AccuracyReport, cand: AccuracyReport) -> list[dict[str, Any]]:
    """One row per metric both reports have: values, delta, and whether the change is worse."""
    rows = []
    cand_names = set(cand.metric_names())
    for name in base.metric_names():
        if name not in cand_names:
            continue
        m, c = base.metric(name), cand.metric(name)
        delta = c.value - m.value
        rows.append({"metric": name, "baseline": m.value, "candidate": c.value, "delta": delta,
                     "relative": delta / m.value if m.value else None, "higher_is_better": m.higher_is_better,
                     "worse": (delta < 0) if m.higher_is_better else (delta > 0), "unit": m.unit})
    return rows


SPEED_FIGURES = [
    # (label, getter on a BatchResult, unit, higher is better)
    ("output tok/s", lambda b: b.output_tokens_per_s, "tok/s", True),
    ("TTFT p50", lambda b: b.ttft.p50, "s", False),
    ("TTFT p99", lambda b: b.ttft.p99, "s", False),
    ("inter-token p50", lambda b: b.itl.p50, "s", False),
    ("inter-token p99", lambda b: b.itl.p99, "s", False),
    ("end-to-end p50", lambda b: b.e2e.p50, "s", False),
    ("end-to-end p90", lambda b: b.e2e.p90, "s", False),
    ("end-to-end p99", lambda b: b.e2e.p99, "s", False),
    ("$ / 1M output tokens", lambda b: b.cost_per_mtok_usd, "USD", False),
]


def level_word(report: SpeedReport | BenchReport) -> str:
    """What a level is in this report: a batch size (hf) or a concurrency (served)."""
    return "batch" if report.settings.get("engine", "hf") == "hf" and not report.settings.get("endpoint") else "concurrency"


def level_intervals(report: SpeedReport, *, confidence: float = 0.95, resamples: int = 1000) -> dict[int, dict[str, Interval]]:
    """The ratios' intervals at every level both models ran."""
    shared = sorted({b.batch_size for b in report.baseline.batches} & {b.batch_size for b in report.candidate.batches})
    return {lvl: efficiency_metrics(report, level=lvl, confidence=confidence, resamples=resamples) for lvl in shared}


def speed_rows(report: SpeedReport, intervals: dict[int, dict[str, Interval]] | None = None) -> list[dict[str, Any]]:
    """Rows per shared level, plus memory and size; ``ratio`` is candidate / baseline.

    Throughput, latency and cost rows carry the ratio's interval over rounds (``interval``)
    when ``intervals`` (per level, from :func:`level_intervals`) is given.
    """
    base, cand = report.baseline, report.candidate
    word = level_word(report)
    rows = []
    cand_levels = {b.batch_size: b for b in cand.batches}
    headline = max(set(cand_levels) & {b.batch_size for b in base.batches})
    at_headline = {"output tok/s": "throughput_speedup", "end-to-end p50": "latency_p50_ratio",
                   "end-to-end p99": "latency_p99_ratio", "TTFT p99": "ttft_p99_ratio",
                   "$ / 1M output tokens": "cost_ratio"}
    for b in base.batches:
        c = cand_levels.get(b.batch_size)
        if c is None:
            continue
        for label, get, unit, hib in SPEED_FIGURES:
            bv, cv = get(b), get(c)
            row = {"figure": f"{label} ({word} {b.batch_size})", "baseline": bv, "candidate": cv,
                   "ratio": cv / bv if bv else None, "unit": unit, "higher_is_better": hib}
            if label == "output tok/s":
                row["baseline_spread"] = b.output_tokens_per_s_spread
                row["candidate_spread"] = c.output_tokens_per_s_spread
            if intervals and b.batch_size in intervals and label in at_headline:
                row["interval"] = intervals[b.batch_size][at_headline[label]]
            rows.append(row)
    if base.slo_output_tokens_per_s is not None and cand.slo_output_tokens_per_s is not None:
        bv, cv = base.slo_output_tokens_per_s, cand.slo_output_tokens_per_s
        rows.append({"figure": "output tok/s within the SLO", "baseline": bv, "candidate": cv,
                     "ratio": cv / bv if bv else None, "unit": "tok/s", "higher_is_better": True,
                     **({"interval": intervals[headline]["slo_throughput_speedup"]} if intervals else {})})
    rows += open_loop_rows(report)
    memory = [("peak memory", base.peak_memory_bytes, cand.peak_memory_bytes)]
    if base.model_memory_bytes and cand.model_memory_bytes:
        memory.append(("memory taken by the weights", base.model_memory_bytes, cand.model_memory_bytes))
    for label, bv, cv in memory + [("size on disk", base.size_bytes, cand.size_bytes)]:
        rows.append({"figure": label, "baseline": bv, "candidate": cv, "ratio": cv / bv if bv else None,
                     "unit": "bytes", "higher_is_better": False})
    return rows


def open_loop_rows(report: SpeedReport) -> list[dict[str, Any]]:
    """Per shared open-loop rate: SLO attainment and output tok/s of both; then goodput and its cost, with the
    bracket of the searches as the interval."""
    base, cand = report.baseline, report.candidate
    rows: list[dict[str, Any]] = []
    cand_rates = {r.rate: r for r in cand.rates}
    for b in base.rates:
        c = cand_rates.get(b.rate)
        if c is None:
            continue
        if b.attainment is not None and c.attainment is not None:
            rows.append({"figure": f"SLO attainment ({b.rate:g} req/s offered)", "baseline": b.attainment.value,
                         "candidate": c.attainment.value, "ratio": None, "unit": "fraction", "higher_is_better": True})
        rows.append({"figure": f"output tok/s ({b.rate:g} req/s offered)", "baseline": b.output_tokens_per_s,
                     "candidate": c.output_tokens_per_s,
                     "ratio": c.output_tokens_per_s / b.output_tokens_per_s if b.output_tokens_per_s else None,
                     "unit": "tok/s", "higher_is_better": True})
    if base.goodput is not None and cand.goodput is not None:
        figures = goodput_metrics(report)
        b, c = base.goodput, cand.goodput
        rows.append({"figure": f"goodput, req/s (≥{b.target:.0%} within the SLO)", "baseline": b.rps,
                     "candidate": c.rps, "ratio": figures["goodput_speedup"].estimate, "unit": "req/s",
                     "higher_is_better": True, "interval": figures["goodput_speedup"]})
        rows.append({"figure": "$ / 1M output tokens at goodput", "baseline": b.cost_per_mtok_usd,
                     "candidate": c.cost_per_mtok_usd,
                     "ratio": c.cost_per_mtok_usd / b.cost_per_mtok_usd if b.cost_per_mtok_usd and c.cost_per_mtok_usd
                     else None, "unit": "USD", "higher_is_better": False})
    return rows


class _Run:
    """One level of one round as arrays (built once: a gate resamples rounds thousands of times)."""

    def __init__(self, run: LevelRun):
        self.tokens = run.output_tokens
        self.wall = run.wall_s
        self.e2e = np.array([q.e2e_s for q in run.requests], dtype=float)
        self.ttft = np.array([q.ttft_s for q in run.requests], dtype=float)
        self.itl = np.array([d for q in run.requests for d in q.inter_token_s], dtype=float)


def _pooled(runs: list[_Run], field: str) -> np.ndarray:
    return np.concatenate([getattr(r, field) for r in runs])


def efficiency_metrics(report: SpeedReport, *, level: int | None = None, confidence: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """The efficiency metrics a gate can check (see ``recipe.EFFICIENCY_METRICS``), each with an interval.

    Ratios are read at ``level`` (the largest level both models ran by default). Rounds are the
    unit of resampling:
    each bootstrap resample draws rounds with replacement, the same rounds for both models
    (a round measured both, in the same minute), pools their requests and recomputes every
    figure. Size and memory are measured once and carry no spread.
    """
    base, cand = report.baseline, report.candidate
    shared = sorted({b.batch_size for b in base.batches} & {b.batch_size for b in cand.batches})
    if not shared:
        raise ValueError("the two sides of the speed report share no level")
    if level is not None and level not in shared:
        from compress.core.errors import UsageError

        raise UsageError(f"no level {level} in the speed report (measured: {', '.join(map(str, shared))})",
                         hint="set the check's 'at' to a level in bench.batch_sizes")
    level = shared[-1] if level is None else level
    rounds = sorted({r.round for r in base.runs} & {r.round for r in cand.runs})
    if not rounds:
        raise ValueError("the speed report holds no round that measured both models")
    price = float(report.settings.get("price_per_hour", 1.0))
    slo = report.settings.get("slo")
    if slo and slo.get("ttft_p99_ms") is None and slo.get("itl_p99_ms") is None:
        slo = None  # request bounds only: they are held by open-loop attainment, not by a level's tails

    def per_round(side: Measured, lvl: int) -> list[_Run]:
        by_round = {r.round: r for r in side.runs if r.level == lvl}
        return [_Run(by_round[i]) for i in rounds]

    sides = {name: {lvl: per_round(side, lvl) for lvl in shared} for name, side in (("b", base), ("c", cand))}

    def figures(pick: list[int]) -> dict[str, float]:
        # A figure the reports cannot give (no token, no request, no level within the SLO) is NaN,
        # never a stand-in value: the gate makes its check INCONCLUSIVE and says why.
        out = {}
        for name in ("b", "c"):
            runs = [sides[name][level][i] for i in pick]
            tokens = sum(r.tokens for r in runs)
            wall = sum(r.wall for r in runs)
            e2e, ttft = _pooled(runs, "e2e"), _pooled(runs, "ttft")
            out[name + "tps"] = tokens / wall if wall > 0 and tokens > 0 else nan
            out[name + "p50"] = _percentile(e2e, 50)
            out[name + "p99"] = _percentile(e2e, 99)
            out[name + "ttft99"] = _percentile(ttft, 99)
            out[name + "ttft"] = float(ttft.mean()) if ttft.size else nan
            if slo:
                out[name + "slo"] = _slo_throughput([sides[name][lvl] for lvl in shared], pick, slo)
        figures = {
            "throughput_speedup": _ratio(out["ctps"], out["btps"]),
            "prefill_speedup": _ratio(out["bttft"], out["cttft"]),
            "latency_p50_ratio": _ratio(out["cp50"], out["bp50"]),
            "latency_p99_ratio": _ratio(out["cp99"], out["bp99"]),
            "ttft_p99_ratio": _ratio(out["cttft99"], out["bttft99"]),
            "cost_ratio": _ratio(out["btps"], out["ctps"]),
            "cost_per_mtok": _ratio(price / 3600.0 * 1e6, out["ctps"]),
        }
        if slo:
            # Only the candidate within the SLO: infinitely better (evidence); only the baseline: 0;
            # neither: no evidence at all.
            b, c = out["bslo"], out["cslo"]
            figures["slo_throughput_speedup"] = c / b if b else (float("inf") if c else nan)
        return figures

    n = len(rounds)
    point = figures(list(range(n)))
    reasons = _missing(sides, level, slo, point)
    rng = np.random.default_rng(seed)
    draws = [figures(list(rng.integers(0, n, size=n))) for _ in range(resamples)]
    alpha = (1 - confidence) / 2
    method = f"paired bootstrap over {n} interleaved rounds"
    out: dict[str, Interval] = {}
    for name, value in point.items():
        if np.isnan(value):
            out[name] = Interval(nan, nan, nan, confidence, "not computable: " + reasons[name], n)
            continue
        values = np.array([d[name] for d in draws])
        values = values[~np.isnan(values)]  # a resample that met the SLO nowhere gives no figure
        # A side that met the SLO at no level makes a ratio infinite: the bounds take the
        # nearest drawn values rather than interpolating between infinities.
        how = "linear" if np.isfinite(values).all() else "nearest"
        lo, hi = np.quantile(values, [alpha, 1 - alpha], method=how) if values.size else (value, value)
        out[name] = Interval(float(value), float(lo), float(hi), confidence, method, n)
    out.update(goodput_metrics(report, confidence))
    memory = (cand.peak_memory_bytes / base.peak_memory_bytes if base.peak_memory_bytes and cand.peak_memory_bytes
              else nan)
    for name, value, why in (
            ("size_ratio", _ratio(cand.size_bytes, base.size_bytes), "the baseline's size on disk is unknown"),
            ("peak_memory_ratio", memory, "a side's peak memory was not measured"),
            ("peak_memory_mb", cand.peak_memory_bytes / 2**20 if cand.peak_memory_bytes else nan,
             "the candidate's peak memory was not measured")):
        out[name] = Interval(value, value, value, confidence,
                             "measured once" if not np.isnan(value) else "not computable: " + why, 1)
    return out


nan = float("nan")
inf = float("inf")


def goodput_metrics(report: SpeedReport, confidence: float = 0.95) -> dict[str, Interval]:
    """goodput_speedup and cost_at_goodput, each with the bracket the goodput searches give: a side's goodput lies
    between its highest rate decided within the target and the lowest rate above it that was not (every probe
    decided on a block-bootstrap interval at ``confidence``). A side that passed every probe has an open upper
    end; one that passed none, an upper end at its lowest probe."""
    b, c = report.baseline.goodput, report.candidate.goodput
    method = f"bracket of the goodput searches (probes decided at {confidence:.0%} confidence)"
    if b is None or c is None:
        why = "not computable: the speed report has no goodput search (set bench.goodput, with arrival and slo)"
        return {m: Interval(nan, nan, nan, confidence, why, 0) for m in ("goodput_speedup", "cost_at_goodput")}
    n = len(b.probes) + len(c.probes)

    def bounds(g) -> tuple[float, float, float]:  # (estimate, lower, upper) of one side's goodput
        if g.rps is None:
            return 0.0, 0.0, min(g.probes) if g.probes else inf
        return g.rps, g.rps, g.upper_rps if g.upper_rps is not None else inf

    (bv, bl, bu), (cv, cl, cu) = bounds(b), bounds(c)
    if bv == 0 and cv == 0:
        speed = Interval(nan, nan, nan, confidence, "not computable: neither side met the goodput target at any "
                         "probed rate", n)
    else:
        speed = Interval(cv / bv if bv else inf, cl / bu if bu else inf, cu / bl if bl else inf, confidence, method, n)
    if c.cost_per_mtok_usd is None:
        cost = Interval(nan, nan, nan, confidence, "not computable: " + (c.reason or "the candidate has no goodput"), n)
    else:
        lowest = c.cost_per_mtok_usd * cv / cu if np.isfinite(cu) else 0.0  # cost falls with the rate served
        cost = Interval(c.cost_per_mtok_usd, lowest, c.cost_per_mtok_usd, confidence, method, n)
    return {"goodput_speedup": speed, "cost_at_goodput": cost}


def _ratio(a: float, b: float) -> float:
    return a / b if b and np.isfinite(a) and np.isfinite(b) else nan


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else nan


def _missing(sides: dict[str, dict[int, list[_Run]]], level: int, slo: dict | None,
             point: dict[str, float]) -> dict[str, str]:
    """Why each figure that came out NaN cannot be computed, in words for the gate's detail column."""
    why: dict[str, str] = {}
    side_name = {"b": "baseline", "c": "candidate"}
    for name in ("b", "c"):
        runs = sides[name][level]
        if not any(r.e2e.size for r in runs):
            why.setdefault("requests", f"the {side_name[name]} has no request at level {level}")
        elif not sum(r.tokens for r in runs):
            why.setdefault("requests", f"the {side_name[name]} generated no token at level {level}")
    base = why.get("requests", f"a side has no timing at level {level}")
    reasons = {metric: base for metric, value in point.items() if np.isnan(value)}
    if slo and np.isnan(point.get("slo_throughput_speedup", 0.0)):
        reasons["slo_throughput_speedup"] = "neither model met bench.slo at any level"
    return reasons


def _slo_throughput(levels: list[list[_Run]], pick: list[int], slo: dict[str, Any]) -> float:
    """The highest output tok/s among the levels whose pooled p99 TTFT and inter-token latency meet the SLO."""
    best = 0.0
    for runs_by_round in levels:
        runs = [runs_by_round[i] for i in pick]
        ttft = _pooled(runs, "ttft")
        itl = _pooled(runs, "itl")
        if not ttft.size:
            continue  # no request at this level: it cannot be within the SLO
        itl = itl if itl.size else np.zeros(1)
        ok = (slo.get("ttft_p99_ms") is None or np.percentile(ttft, 99) * 1e3 <= slo["ttft_p99_ms"]) and \
             (slo.get("itl_p99_ms") is None or np.percentile(itl, 99) * 1e3 <= slo["itl_p99_ms"])
        if ok:
            best = max(best, sum(r.tokens for r in runs) / sum(r.wall for r in runs))
    return best


def traffic_rows(report: Any, confidence: float = 0.95) -> list[dict[str, Any]]:
    """The traffic report as rows: each fidelity figure of the candidate with its bootstrap interval over
    requests, then each behaviour check's pass rate per model (one model: its rates only)."""
    from compress.core.stats import mean_bootstrap
    from compress.measure.answers import FIDELITY

    rows: list[dict[str, Any]] = []
    if report.candidate is not None:
        for name, (what, higher) in FIDELITY.items():
            iv = mean_bootstrap(report.values(name), confidence=confidence)
            rows.append({"metric": f"traffic/{name}", "kind": "fidelity", "value": iv.estimate, "lower": iv.lower,
                         "upper": iv.upper, "higher_is_better": higher, "what": what, "requests": iv.n})
    for name in (report.requests[0].checks if report.requests else {}):
        base, cand = report.check_outcomes(name)
        rows.append({"metric": f"traffic/{name}", "kind": "behaviour", "baseline": sum(base) / len(base),
                     "candidate": sum(cand) / len(cand) if report.candidate is not None else None,
                     "requests": len(base)})
    return rows
