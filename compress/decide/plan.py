"""The fleet bill: a replica's service model and a traffic profile in, per policy the replica-hours, USD per day
and per 1M output tokens, SLO attainment and tail latency out (``compress plan``).

``read_traffic`` reads a profile (``time,requests per second`` per line, each rate holding until the next
line's time) or a trace (one arrival time per line); ``plan`` runs each policy ``repeats`` times with seeds
``seed, seed+1, ...`` (``fleet.simulate``) and reports each figure as the mean over runs with a 95% t-interval.
The static fleet is sized for the peak rate with the M/M/c bound (``fleet.replicas_for``); the autoscaled
fleets start at the size the first step needs, and are bounded by ``min_replicas`` and ``max_replicas``
(default: twice the static fleet). For a steady load the M/M/c (Erlang C) figures of the static fleet are
reported beside the simulated ones: they agree for exponential service that does not slow with occupancy,
and the gap shows what batching and service-time spread add.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from compress.core.errors import UsageError
from compress.decide.fleet import simulate
from compress.decide.fleet_spec import POLICIES, Policy, Scaling, Slo, Spot, Traffic
from compress.decide.queueing import erlang_wait, replicas_for

DEFAULT_WAIT_S = 1.0  # the wait bound when neither --slo-wait-p99 nor the run's SLO says anything
# Two-sided 95% Student t quantiles by degrees of freedom (1..10); 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


# ------------------------------------------------------------------------------------------------ traffic

def steady_traffic(rate: float, duration_s: float = 3600.0) -> Traffic:
    """A steady Poisson load of ``rate`` requests per second for ``duration_s``."""
    if not (math.isfinite(rate) and rate > 0):
        raise UsageError(f"--rate {rate} is not a positive number of requests per second", hint="e.g. --rate 12.5")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise UsageError(f"--duration {duration_s} is not a positive number of seconds", hint="e.g. --duration 3600")
    return Traffic(steps=((0.0, float(rate)),), horizon_s=float(duration_s), source=f"steady {rate:g}/s")


def _seconds(cell: str) -> float:
    """Seconds from a number or a clock time (HH:MM or HH:MM:SS)."""
    if ":" in cell:
        parts = [float(p) for p in cell.split(":")]
        if len(parts) > 3 or any(p < 0 for p in parts):
            raise ValueError(cell)
        h, m, s = parts + [0.0] * (3 - len(parts))
        return h * 3600 + m * 60 + s
    return float(cell)


def read_traffic(path: Path, duration_s: float | None = None) -> Traffic:
    """A traffic file: ``time,rate`` lines (a profile: seconds or HH:MM, requests per second, each rate holding
    until the next line's time and the last for as long as the step before it), or one arrival time per line
    (a trace). Times start where the file starts; a first line that is not figures is a header; ``#`` starts
    a comment. ``duration_s`` cuts (or, for one line, sets) the horizon.

    Raises:
        UsageError: no such file, or a line that does not read, naming the line.
    """
    hint = "each line: time (seconds or HH:MM) and requests per second, e.g. 3600,12.5; or one arrival time"
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read --traffic {path}: {e.strerror or e}", hint="give a CSV of time,rate") from None
    rows: list[tuple[float, ...]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        try:
            values = (_seconds(cells[0]),) + tuple(float(c) for c in cells[1:])
        except ValueError:
            if not rows and not any(c.replace(".", "", 1).isdigit() for c in cells):
                continue  # a header
            raise UsageError(f"{path}:{number}: {raw.strip()!r} is not figures", hint=hint) from None
        if len(values) > 2 or (rows and len(values) != len(rows[0])):
            raise UsageError(f"{path}:{number}: {len(values)} columns where {len(rows[0]) if rows else 2} were "
                             "expected", hint=hint)
        if not all(math.isfinite(v) for v in values) or values[-1] < 0 or values[0] < 0:
            raise UsageError(f"{path}:{number}: a negative or non-finite value in {raw.strip()!r}", hint=hint)
        if rows and (values[0] < rows[-1][0] or (len(values) == 2 and values[0] == rows[-1][0])):
            raise UsageError(f"{path}:{number}: time {cells[0]} comes before the line above's", hint=hint)
        rows.append(values)
    if not rows:
        raise UsageError(f"{path} holds no traffic", hint=hint)
    t0 = rows[0][0]
    if len(rows[0]) == 1:  # a trace
        times = tuple(r[0] - t0 for r in rows)
        horizon = duration_s or max(times[-1], 1e-9)
        times = tuple(t for t in times if t < horizon) or (0.0,)
        window = max(60.0, min(300.0, horizon / 12))
        counts = [0] * max(1, math.ceil(horizon / window))
        for t in times:
            counts[min(int(t / window), len(counts) - 1)] += 1
        steps = tuple((i * window, c / min(window, horizon - i * window)) for i, c in enumerate(counts))
        return Traffic(steps=steps, horizon_s=horizon, trace=times, source=str(path))
    steps = tuple((t - t0, r) for t, r in rows)
    if duration_s is None and len(steps) < 2:
        raise UsageError(f"{path} has one step and so no length", hint="add a second line, or give --duration")
    horizon = duration_s or steps[-1][0] + (steps[-1][0] - steps[-2][0])
    steps = tuple(s for s in steps if s[0] < horizon)
    if not any(r > 0 for _, r in steps):
        raise UsageError(f"{path}: every rate is 0", hint=hint)
    return Traffic(steps=steps, horizon_s=horizon, source=str(path))


def diurnal_traffic(peak_rps: float, trough_rps: float, *, step_s: float = 3600.0, days: float = 1.0) -> Traffic:
    """A synthetic day: a cosine from ``trough_rps`` at midnight to ``peak_rps`` at noon, in steps of ``step_s``."""
    steps = []
    n = int(round(days * 86400 / step_s))
    for i in range(n):
        hour = ((i + 0.5) * step_s / 3600.0) % 24
        steps.append((i * step_s, trough_rps + (peak_rps - trough_rps) * (1 - math.cos(2 * math.pi * hour / 24)) / 2))
    return Traffic(steps=tuple(steps), horizon_s=n * step_s, source=f"diurnal {trough_rps:g}-{peak_rps:g}/s")


# --------------------------------------------------------------------------------------------------- plan

@dataclass
class PlanSettings:
    """What ``plan`` simulates: the policies (``policies``: kinds; one variant per target), their settings,
    what counts as attained, the prices, and how many seeded runs."""

    policies: tuple[str, ...] = POLICIES
    target_utilization: tuple[float, ...] = (0.7,)
    target_waiting: tuple[float, ...] | None = None  # None: -N/4, -N/8 and 0 for N = the replica's concurrency
    queue_metric: str = "in-system"  # "in-system": waiting + running against a full batch; "waiting": alone
    replicas: int | None = None  # a fixed fleet (static only)
    scaling: Scaling = field(default_factory=Scaling)
    max_replicas: int | None = None  # None: twice the static fleet
    slo_wait_s: float | None = None
    attainment: float = 0.99
    price_per_hour: float | None = None  # None: the run's bench.price_per_hour, else 1.0
    spot: Spot | None = None
    repeats: int = 3
    seed: int = 0


def _spread(values: list[float]) -> tuple[float, float, float]:
    """Mean and a 95% t-interval over seeded runs (the mean itself when there is one run)."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, mean, mean
    half = (_T95[len(xs) - 2] if len(xs) - 1 <= len(_T95) else 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, max(0.0, mean - half), mean + half  # every figure here is non-negative


def wait_budget(service: Any, slo: Slo) -> float:
    """The longest a request may wait and still keep the SLO, for sizing: the wait bound, else what the time to
    first token and end-to-end bounds leave after the slowest (p99) service at full occupancy."""
    if slo.wait_s is not None:
        return slo.wait_s
    import random

    rng = random.Random(0)
    draws = sorted(service.draw(service.concurrency, rng) for _ in range(400))
    p99 = draws[int(0.99 * len(draws)) - 1]
    ttft99 = sorted(d[1] for d in draws)[int(0.99 * len(draws)) - 1]
    left = [b - s for b, s in ((slo.ttft_s, ttft99), (slo.e2e_s, p99[0])) if b is not None]
    return max(0.0, min(left)) if left else DEFAULT_WAIT_S


def plan(service: Any, traffic: Traffic, settings: PlanSettings = PlanSettings(),
         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Simulate each policy over the traffic ``settings.repeats`` times and bill it (``log``: progress lines).

    Returns:
        The plan as JSON-ready data: ``service``, ``traffic``, ``slo``, ``price``, ``settings``, ``policies``
        (each with ``policy``, ``label``, ``replica_hours``, ``usd_per_day``, ``usd_per_mtok``, ``attainment``,
        tail latencies, ``intervals``), ``chosen`` (the queue-depth target for the manifests), ``timeline`` and,
        for a steady load, ``wait_probability``, ``wait_mean_s`` and ``erlang_c``.
    """
    s = settings
    notes: list[str] = list(getattr(service, "notes", []))
    slo = replace(service.slo, wait_s=s.slo_wait_s)
    if not slo.as_dict():
        slo = Slo(wait_s=DEFAULT_WAIT_S)
        notes.append(f"no SLO given or measured: a request is held to a wait of at most {DEFAULT_WAIT_S:g} s")
    budget = wait_budget(service, slo)
    price = s.price_per_hour if s.price_per_hour is not None else (service.price_per_hour or 1.0)
    goodput = service.goodput_rps
    static_n = s.replicas or replicas_for(traffic.peak_rps, service, wait_s=budget, attainment=s.attainment,
                                          goodput_rps=goodput)
    max_n = s.max_replicas or max(2 * static_n, static_n + 2)
    min_n = min(s.scaling.min_replicas, max_n)
    first = replicas_for(traffic.steps[0][1], service, wait_s=budget, attainment=s.attainment, goodput_rps=goodput)
    scaling = replace(s.scaling, min_replicas=min_n, max_replicas=max_n, cold_start_s=service.cold_start_s,
                      initial_replicas=min(max(first, min_n), max_n))
    variants = []
    for kind in s.policies:
        if kind == "static":
            variants.append(Policy("static", replicas=static_n))
        else:
            variants += [Policy(kind, target=t, metric=s.queue_metric) for t in _targets(kind, service, s)]
    rows, timeline = [], {}
    for pol in variants:
        if log:
            log(f"simulating {pol.label}: {s.repeats} run(s) of {traffic.horizon_s / 3600:.3g} h, "
                f"~{traffic.requests_expected:,.0f} requests each")
        runs = [simulate(service, traffic, pol, scaling=scaling, slo=slo, spot=s.spot, seed=s.seed + r)
                for r in range(s.repeats)]
        timeline[pol.label] = runs[0].timeline
        rows.append(_bill(pol, runs, traffic, price, s, scaling))
    for row in rows:
        row["meets_goal"] = row["attainment"] >= s.attainment
    depth = [r for r in rows if r["policy"] == "queue-depth"]
    good = [r for r in depth if r["meets_goal"]]
    pick = min(good, key=lambda r: r["replica_hours"]) if good else max(depth, key=lambda r: r["attainment"],
                                                                        default=None)
    if depth and not good:
        notes.append(f"no queue-depth target reached {s.attainment:.1%} attainment: the manifests carry the best "
                     "one; try lower --target-waiting values or a higher --max-replicas")
    out: dict[str, Any] = {
        "service": service.describe(), "traffic": {
            "source": traffic.source, "kind": "trace" if traffic.trace is not None else
            "steady" if traffic.steady else "profile", "duration_s": traffic.horizon_s,
            "mean_rps": traffic.mean_rps, "peak_rps": traffic.peak_rps, "steps": len(traffic.steps)},
        "slo": slo.as_dict(), "wait_budget_s": budget, "attainment_goal": s.attainment,
        "price": {"per_replica_hour": price, "spot_per_replica_hour": s.spot.price_per_hour if s.spot else None,
                  "spot_share": s.spot.share if s.spot else 0.0,
                  "preemptions_per_replica_hour": s.spot.preemption_per_hour if s.spot else 0.0},
        "settings": {"interval_s": scaling.interval_s, "scale_up_delay_s": scaling.scale_up_delay_s,
                     "scale_down_delay_s": scaling.scale_down_delay_s, "scale_down_pods": scaling.scale_down_pods,
                     "scale_down_period_s": scaling.scale_down_period_s, "cold_start_s": scaling.cold_start_s,
                     "min_replicas": min_n, "max_replicas": max_n, "initial_replicas": scaling.initial_replicas,
                     "static_replicas": static_n, "repeats": s.repeats, "seed": s.seed},
        "policies": rows,
        "chosen": None if pick is None else {
            "policy": "queue-depth", "label": pick["label"], "target": pick["target"], "metric": s.queue_metric,
            "threshold": pick["target"] + (service.concurrency if s.queue_metric == "in-system" else 0),
            "min_replicas": min_n, "max_replicas": max_n},
        "notes": notes, "timeline": timeline}
    if traffic.steady:
        rate = traffic.steps[0][1]
        ref = next((r for r in rows if r["policy"] == "static"), rows[0])
        out["wait_probability"], out["wait_mean_s"] = ref["wait_probability"], ref["wait_mean_s"]
        out["erlang_c"] = erlang_wait(static_n * service.concurrency, rate, service.mean_service_s(service.concurrency))
        out["erlang_c"]["replicas"] = static_n
    return _finite(out)


def _finite(data: Any) -> Any:
    """NaN and infinities as None (JSON has neither)."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _targets(kind: str, service: Any, s: PlanSettings) -> tuple[float, ...]:
    """The targets a policy is simulated at (one variant each), checked."""
    n = service.concurrency
    if kind == "utilization":
        bad = [t for t in s.target_utilization if not 0 < t <= 1]
        if bad:
            raise UsageError(f"--target-utilization {bad[0]:g} is not a busy fraction",
                             hint="give one in (0, 1], e.g. 0.7")
        return s.target_utilization
    if s.target_waiting is None:
        return (-n / 4, -n / 8, 0.0) if s.queue_metric == "in-system" else (1.0, 4.0)
    floor = 0.0 if s.queue_metric == "waiting" else -n
    bad = [t for t in s.target_waiting if not (math.isfinite(t) and t > floor)]
    if bad:
        raise UsageError(f"--target-waiting {bad[0]:g} is not above {floor:g}",
                         hint=f"waiting requests per replica beyond a full batch of {n}: above -{n} (a negative "
                         "value keeps slots free)" if floor else "waiting requests per replica: above 0")
    return s.target_waiting


def _bill(pol: Policy, runs: list, traffic: Traffic, price: float, s: PlanSettings, scaling: Scaling) -> dict[str, Any]:
    """One policy's bill from its runs: means, intervals, and the worst of the peaks."""
    day = 86400.0 / traffic.horizon_s
    usd = [(r.replica_hours - r.spot_replica_hours) * price + r.spot_replica_hours * (s.spot.price_per_hour if s.spot
                                                                                       else 0.0) for r in runs]
    per = {
        "replica_hours": [r.replica_hours for r in runs], "usd_per_day": [u * day for u in usd],
        "usd_per_mtok": [u / r.output_tokens * 1e6 if r.output_tokens else math.nan for u, r in zip(usd, runs)],
        "attainment": [r.attainment for r in runs], "wait_p99_s": [r.wait_p99_s for r in runs],
        "latency_p50_s": [r.latency_p50_s for r in runs], "latency_p99_s": [r.latency_p99_s for r in runs],
        "wait_probability": [r.wait_probability for r in runs],
        "wait_mean_s": [r.wait_mean_s for r in runs], "mean_replicas": [r.mean_replicas for r in runs],
        "utilization": [r.utilization for r in runs]}
    row: dict[str, Any] = {"policy": pol.kind, "label": pol.label, "target": pol.target,
                           "replicas": pol.replicas,
                           "min_replicas": pol.replicas if pol.kind == "static" else scaling.min_replicas,
                           "max_replicas": pol.replicas if pol.kind == "static" else scaling.max_replicas}
    intervals = {}
    for key, values in per.items():
        mean, lo, hi = _spread(values)
        if key in ("attainment", "wait_probability", "utilization"):
            hi = min(hi, 1.0)  # shares
        row[key] = mean
        intervals[key] = [lo, hi]
    row.update({"spot_replica_hours": statistics.fmean(r.spot_replica_hours for r in runs),
                "peak_queue": max(r.peak_queue for r in runs), "peak_replicas": max(r.peak_replicas for r in runs),
                "preemptions": sum(r.preemptions for r in runs), "requeued": sum(r.requeued for r in runs),
                "lost": sum(r.lost for r in runs), "requests": sum(r.requests for r in runs),
                "served": sum(r.served for r in runs), "scale_ups": sum(r.scale_ups for r in runs),
                "scale_downs": sum(r.scale_downs for r in runs), "runs": len(runs), "intervals": intervals})
    return row


# ------------------------------------------------------------------------------------------------ output

def plan_table(result: dict[str, Any]):
    """The bill as a rich table, one row per policy."""
    from compress.core import console

    def num(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    rows = []
    for p in result["policies"]:
        lo, hi = p["intervals"]["replica_hours"]
        rows.append([p["label"], num(p["replica_hours"], ".1f") + f" [{num(lo, '.1f')}, {num(hi, '.1f')}]",
                     num(p["usd_per_day"], ".2f"), num(p["usd_per_mtok"], ".4g"), num(p["attainment"], ".2%"),
                     num(p.get("utilization"), ".0%"),
                     num(p["wait_p99_s"], ".3g"), num(p["latency_p99_s"], ".3g"), p["peak_queue"],
                     p["peak_replicas"], p["preemptions"]])
    t = result["traffic"]
    title = (f"Fleet plan: {t['source']} over {t['duration_s'] / 3600:.3g} h (peak {t['peak_rps']:.3g}/s, mean "
             f"{t['mean_rps']:.3g}/s), {result['settings']['repeats']} seeded runs each")
    return console.table(title, ["policy", "replica-h [95%]", "$/day", "$/1M tok", "attainment", "slots used",
                                 "wait p99 s",
                                 "latency p99 s", "peak queue", "peak replicas", "preemptions"], rows)


def plot(result: dict[str, Any], path: Path) -> None:
    """Load, replicas and p99 latency over the horizon, one line per policy (the first seeded run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    first = next(iter(result["timeline"].values()))
    hours = [b["t_s"] / 3600 for b in first]
    axes[0].step(hours, [b["offered_rps"] for b in first], where="post", color="black")
    axes[0].set_ylabel("requests/s")
    for label, bins in result["timeline"].items():
        axes[1].step(hours, [b["replicas"] for b in bins], where="post", label=label)
        axes[2].plot(hours, [b["latency_p99_s"] for b in bins], label=label)
    axes[1].set_ylabel("replicas")
    axes[2].set_ylabel("p99 latency (s)")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("hours")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Fleet plan: {result['traffic']['source']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
