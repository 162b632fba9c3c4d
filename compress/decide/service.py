"""What one replica can take: the service model ``compress plan`` simulates a fleet of.

Either measured (``service_from_evidence``: a run directory, an export or a ``speed.json``) or synthetic
(``synthetic("exp:0.5", concurrency=4)``, for checking the simulation against queueing theory).

The measured model: a served benchmark keeps every request it sent, and a request admitted as the k-th in
service on a replica takes the end-to-end time (with its time to first token and time per output token) of a
measured request drawn at random from the pool of occupancy k. A pool holds the requests of the closed-loop
level k (k in flight all the time) and the open-loop requests that were sent while k - 1 others were in flight
(Poisson arrivals, as production sends them: a request that starts beside one other often ends alone, which a
closed loop never measures). Between two pools, the one above with a probability that grows linearly from
the one below to it (a server measured at 1 and 4 serves its 3rd request as it served at 4 two times in
three, as at 1 otherwise: its mean time is interpolated); beyond the largest, the largest. A replica serves at
most the largest closed-loop level at once unless told otherwise, and an open-loop run that went past that
many in flight is not drawn from (the server queued some of its requests, and the simulation adds that wait
itself). Above level 1, a closed-loop round's first k requests are left out (they started together, each
prefill queued behind the others', which a request admitted into a running batch does not see), and so are
its last k (they ran as the level drained). ``scripts/replay_check.py`` compares the simulation with a real
server at rates it was not fed: the closed-loop levels alone made it pessimistic near a replica's capacity.

The measured server start (``Runtime.start_s``) is the cold start, the run's bench.slo request bounds what a
request must keep, the goodput (when measured) the rate one replica sustains within that SLO, and
bench.price_per_hour the price of a replica-hour.
"""
from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from compress.core.errors import UsageError
from compress.decide.fleet_spec import Slo

SYNTHETIC_KINDS = ("exp", "lognormal", "const")
DEFAULT_COLD_START_S = 120.0  # a replica whose start was not measured (an hf benchmark, a synthetic service)


@dataclass
class SyntheticService:
    """A replica whose requests do not slow each other: service times ``kind`` (exp, lognormal, const) with
    mean ``mean_s`` (lognormal: ``sigma`` of the log), ``output_tokens`` each, and no time to first token of
    their own (a request's time to first token is its wait)."""

    kind: str
    mean_s: float
    concurrency: int
    sigma: float = 0.0
    output_tokens: int = 256
    cold_start_s: float = DEFAULT_COLD_START_S
    goodput_rps: float | None = None
    slo: Slo = field(default_factory=Slo)
    price_per_hour: float | None = None

    def draw(self, k: int, rng: random.Random) -> tuple[float, float, float, int]:
        if self.kind == "exp":
            s = rng.expovariate(1.0 / self.mean_s)
        elif self.kind == "lognormal":
            s = rng.lognormvariate(math.log(self.mean_s) - self.sigma ** 2 / 2, self.sigma)
        else:
            s = self.mean_s
        return (s, 0.0, 0.0, self.output_tokens)

    def mean_service_s(self, k: int) -> float:
        return self.mean_s

    def describe(self) -> dict[str, Any]:
        return {"source": f"synthetic {self.kind}", "mean_s": self.mean_s, "sigma": self.sigma or None,
                "concurrency": self.concurrency, "output_tokens": self.output_tokens,
                "cold_start_s": self.cold_start_s, "goodput_rps": None, "slo": self.slo.as_dict()}


def synthetic(spec: str, *, concurrency: int, output_tokens: int = 256,
              cold_start_s: float | None = None) -> SyntheticService:
    """``exp:MEAN_S``, ``lognormal:MEAN_S,SIGMA`` or ``const:S`` as a service model.

    Raises:
        UsageError: a spec that is not one of these, or a mean that is not a positive number.
    """
    kind, _, args = spec.partition(":")
    hint = "e.g. --service-time exp:0.5, lognormal:0.5,0.8 or const:0.5 (seconds)"
    if kind not in SYNTHETIC_KINDS or not args:
        raise UsageError(f"--service-time {spec!r} is not {', '.join(k + ':...' for k in SYNTHETIC_KINDS)}", hint=hint)
    try:
        values = [float(v) for v in args.split(",")]
    except ValueError:
        raise UsageError(f"--service-time {spec!r}: {args!r} is not a number", hint=hint) from None
    if len(values) != (2 if kind == "lognormal" else 1) or not all(math.isfinite(v) and v > 0 for v in values):
        raise UsageError(f"--service-time {spec!r}: give {'a mean and a sigma' if kind == 'lognormal' else 'a mean'},"
                         " positive seconds", hint=hint)
    if concurrency < 1:
        raise UsageError(f"--concurrency-per-replica {concurrency} is not a positive count", hint="e.g. 4")
    return SyntheticService(kind, values[0], concurrency, sigma=values[1] if kind == "lognormal" else 0.0,
                            output_tokens=output_tokens,
                            cold_start_s=DEFAULT_COLD_START_S if cold_start_s is None else cold_start_s)


@dataclass
class MeasuredService:
    """A replica as a served benchmark measured it (see the module's docstring for the model)."""

    levels: dict[int, list[tuple[float, float, float, int]]]  # level -> (e2e s, ttft s, tpot s, output tokens)
    concurrency: int
    cold_start_s: float
    goodput_rps: float | None
    slo: Slo
    price_per_hour: float | None
    source: str  # the file read
    side: str
    origin: Path | None = None  # the run directory or export the report came from (None: a bare file)
    report: Any = None  # the SpeedReport or BenchReport
    notes: list[str] = field(default_factory=list)
    open_loop: dict[int, int] = field(default_factory=dict)  # level -> requests in its pool from open-loop runs
    _table: list[tuple[list, list, float]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        measured = sorted(self.levels)
        self._table = [([], [], 0.0)] + [self._between(k, measured) for k in range(1, self.concurrency + 1)]

    def _between(self, k: int, measured: list[int]) -> tuple[list, list, float]:
        """The measured levels around occupancy k and the weight of the upper one (linear in k)."""
        upper = level_for(k, measured)
        lower = max((m for m in measured if m <= k), default=upper)
        weight = 0.0 if upper == lower else (k - lower) / (upper - lower)
        return self.levels[lower], self.levels[upper], weight

    def draw(self, k: int, rng: random.Random) -> tuple[float, float, float, int]:
        lower, upper, weight = self._table[k]
        pool = upper if rng.random() < weight else lower
        return pool[int(rng.random() * len(pool))]

    def mean_service_s(self, k: int) -> float:
        lower, upper, weight = self._table[k]
        return (1 - weight) * sum(p[0] for p in lower) / len(lower) + weight * sum(p[0] for p in upper) / len(upper)

    def describe(self) -> dict[str, Any]:
        def stats(pool):
            xs = sorted(p[0] for p in pool)
            return {"requests": len(xs), "mean_s": sum(xs) / len(xs), "p50_s": xs[len(xs) // 2],
                    "p99_s": xs[min(len(xs) - 1, math.ceil(0.99 * len(xs)) - 1)],
                    "output_tokens_mean": sum(p[3] for p in pool) / len(pool)}

        def kept(pool):
            return sum(kept_alone(x, self.slo) for x in pool) / len(pool) if self.slo.as_dict() else None

        return {"source": self.source, "side": self.side, "concurrency": self.concurrency,
                "cold_start_s": self.cold_start_s, "goodput_rps": self.goodput_rps, "slo": self.slo.as_dict(),
                "levels": {str(k): {**stats(v), "open_loop_requests": self.open_loop.get(k, 0), "kept_slo_alone": kept(v)}
                           for k, v in sorted(self.levels.items())},
                "notes": self.notes}


def kept_alone(sample: tuple[float, float, float, int], slo: Slo) -> bool:
    """Whether a measured request keeps the SLO's time to first token, time per token and end-to-end bounds
    on its own (before any wait is added)."""
    e2e, ttft, tpot, _ = sample
    return ((slo.ttft_s is None or ttft <= slo.ttft_s) and (slo.tpot_s is None or tpot <= slo.tpot_s)
            and (slo.e2e_s is None or e2e <= slo.e2e_s))


def fit_concurrency(service: MeasuredService, attainment: float) -> MeasuredService:
    """The service with its concurrency set to the largest measured level at which at least ``attainment`` of
    the requests kept the run's SLO on their own (a replica filled beyond it misses the SLO before any
    queueing), with a note; unchanged when every level keeps it or the run has no SLO."""
    levels = sorted(service.levels)
    shares = {k: sum(kept_alone(x, service.slo) for x in service.levels[k]) / len(service.levels[k]) for k in levels}
    fit = [k for k in levels if shares[k] >= attainment and k <= service.concurrency]
    if not service.slo.as_dict() or not [k for k in levels if k <= service.concurrency and k not in fit]:
        return service
    top = fit[-1] if fit else levels[0]
    above = next((k for k in levels if k > top), None)
    why = (f"at level {above} only {shares[above]:.0%} of requests kept the run's SLO on their own"
           if above is not None else "")
    note = (f"a replica serves at most {top} at once ({why}; --concurrency-per-replica overrides)" if fit else
            f"no measured level kept the run's SLO for {attainment:.0%} of requests on their own (level {top}: "
            f"{shares[top]:.0%}): a replica serves {top} at once, and attainment will be low")
    return replace(service, concurrency=top, notes=[*service.notes, note])


def level_for(k: int, measured: list[int]) -> int:
    """The smallest measured level >= ``k``, else the largest (the upper level a request at occupancy k draws
    from)."""
    return next((level for level in measured if level >= k), measured[-1])


def find_speed_report(path: Path) -> tuple[Path, Path | None]:
    """The speed report of a run directory (``runs/NAME/KEY``, or ``runs/NAME`` for its newest), of an export
    (``evidence/speed.json``), or a report file itself; returns (the file, the directory it belongs to).

    Raises:
        UsageError: nothing there, or a directory with no speed report.
    """
    from compress.core.artifact import EVIDENCE_DIR
    from compress.core.models import newest_run
    from compress.decide.evidence import REPORT_FILES

    name = REPORT_FILES[("both", "speed")]
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="give a run directory, an export or a speed.json, "
                         "or a synthetic service with --service-time exp:0.5 --concurrency-per-replica 4")
    if path.is_file():
        return path, None
    for folder, inner in ((path, Path(EVIDENCE_DIR) / name), (newest_run(path), Path("reports") / name)):
        if (folder / inner).is_file():
            return folder / inner, folder
    raise UsageError(f"{path} holds no speed report (reports/{name} or {EVIDENCE_DIR}/{name})",
                     hint="measure it first: compress run RECIPE (with bench.engine: vllm), or compress bench")


def service_from_evidence(path: Path, *, side: str = "candidate", concurrency: int | None = None,
                          leave_out_rates: Collection[float] = ()) -> MeasuredService:
    """The per-replica service model of one side (``candidate`` or ``baseline``) of a served benchmark.

    Args:
        path: a run directory, an export, or a ``speed.json`` / ``bench.json`` file.
        concurrency: the most requests a replica serves at once (default: the largest measured level).
        leave_out_rates: open-loop rates whose requests are not drawn from (to predict a measured rate from
            the others: ``scripts/replay_check.py``).

    Raises:
        UsageError: no report there, a report that does not read, or one with no per-request timings.
    """
    from pydantic import ValidationError

    from compress.core.recipe.evals import SloSpec
    from compress.core.reports import BenchReport, SpeedReport

    file, origin = find_speed_report(path)
    try:
        data = json.loads(file.read_text())
        report = (BenchReport if data.get("kind") == "bench" else SpeedReport).model_validate(data)
    except (OSError, ValueError, ValidationError, AttributeError) as e:
        raise UsageError(f"{file} is not a speed or bench report ({type(e).__name__})",
                         hint="give the speed.json a served benchmark wrote") from None
    measured = report.measured if isinstance(report, BenchReport) else report.side(side)
    levels: dict[int, list[tuple[float, float, float, int]]] = {}
    first_wave_only = []
    for run in measured.runs:
        requests = sorted(run.requests, key=lambda r: r.started_s)
        k = run.level
        if k > 1:
            # The first k requests of a closed-loop level start together: each one's prefill waits behind the
            # others', which no request admitted into a running batch sees. The last k run as the level drains,
            # with fewer and fewer beside them. The requests between are served at occupancy k.
            if len(requests) > 2 * k:
                requests = requests[k:-k]
            elif len(requests) > k:
                requests = requests[k:]
                first_wave_only.append(k)
            else:
                first_wave_only.append(k)
        levels.setdefault(run.level, []).extend(_sample(r) for r in requests)
    if not levels:
        raise UsageError(f"{file} keeps no per-request timings for the {side}",
                         hint="measure again with this version of compress (it keeps every request)")
    top = max(levels)
    notes = []
    open_loop: dict[int, int] = {}
    skipped = _pool_open_loop(levels, open_loop, [r for r in measured.rate_runs if r.rate not in set(leave_out_rates)],
                              slots=concurrency or top)
    if skipped:
        notes.append(f"open-loop run(s) at {', '.join(f'{r:g}/s' for r in skipped)} went past {concurrency or top} "
                     "requests in flight (a replica's slots): their times hold the server's own queue, not drawn from")
    if first_wave_only:
        notes.append(f"level(s) {', '.join(str(k) for k in sorted(set(first_wave_only)))}: too few requests per "
                     "round for a steady batch (the first wave starts together, the last drains): measure at least "
                     "three times the level per round (bench.repeats) for a plan that holds near capacity")
    if concurrency is not None and concurrency > top:
        notes.append(f"a replica serves {concurrency} at once, beyond the largest measured level ({top}): requests "
                     f"above {top} take level {top}'s times (optimistic)")
    if measured.runtime.engine == "hf":
        notes.append("measured in transformers (static batches), not a serving engine: the plan is rough")
    settings = report.settings
    slo = Slo()
    if settings.get("slo"):
        bounds = SloSpec.model_validate(settings["slo"]).request_bounds()
        slo = Slo(ttft_s=bounds.get("ttft"), tpot_s=bounds.get("tpot"), e2e_s=bounds.get("e2e"))
    start = measured.runtime.start_s
    if start is None:
        notes.append(f"no measured server start: a cold start of {DEFAULT_COLD_START_S:g} s is assumed")
    goodput = measured.goodput.rps if measured.goodput is not None else None
    price = settings.get("price_per_hour")
    return MeasuredService(
        levels=levels, open_loop=open_loop, concurrency=concurrency or top, cold_start_s=DEFAULT_COLD_START_S if start is None else start,
        goodput_rps=goodput, slo=slo, price_per_hour=float(price) if price is not None else None,
        source=str(file), side=side, origin=origin, report=report, notes=notes)


MIN_OPEN_POOL = 20  # an occupancy no closed-loop level measured stands on at least this many open-loop requests


def _sample(r: Any) -> tuple[float, float, float, int]:
    tpot = (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
    return (r.e2e_s, r.ttft_s, tpot, r.output_tokens)


def _pool_open_loop(levels: dict[int, list[tuple[float, float, float, int]]], counts: dict[int, int],
                    runs: list[Any], *, slots: int) -> list[float]:
    """Add each open-loop request (inside its run's measured window) to the pool of the occupancy it was admitted
    at: 1 + the requests of its run the client had in flight when it sent it. A run that ever had more than
    ``slots`` in flight is skipped (the server queued some of them: their times hold a wait the simulation adds
    itself); an occupancy with no closed-loop level needs :data:`MIN_OPEN_POOL` requests. ``counts`` gets the
    requests added per occupancy. Returns the rates of the runs skipped."""
    found: dict[int, list[tuple[float, float, float, int]]] = {}
    skipped = []
    for run in runs:
        starts = sorted(r.started_s for r in run.requests)
        ends = sorted(r.started_s + r.e2e_s for r in run.requests)
        # in flight when a request went: the others sent by then, less those that had ended
        in_flight = [bisect.bisect_right(starts, r.started_s) - 1 - bisect.bisect_right(ends, r.started_s)
                     for r in run.requests]
        if max(in_flight, default=0) >= slots:
            skipped.append(run.rate)
            continue
        for i in run.measured if run.measured is not None else range(len(run.requests)):
            found.setdefault(1 + in_flight[i], []).append(_sample(run.requests[i]))
    for k, pool in found.items():
        if k in levels or len(pool) >= MIN_OPEN_POOL:
            levels.setdefault(k, []).extend(pool)
            counts[k] = len(pool)
    return sorted(set(skipped))
