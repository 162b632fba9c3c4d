"""What a fleet simulation takes and gives (``compress.decide.fleet.simulate``): the replica's service, the
traffic, the policy and its autoscaler settings, spot capacity, the SLO, and one run's result."""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

POLICIES = ("static", "utilization", "queue-depth")
HPA_TOLERANCE = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance default


class Service(Protocol):
    """A replica's service: how many requests it serves at once and what one request costs at occupancy k."""

    concurrency: int

    def draw(self, k: int, rng: random.Random) -> tuple[float, float, float, int]:
        """One request admitted as the k-th in service: (service s, time to first token s, time per output
        token s, output tokens)."""

    def mean_service_s(self, k: int) -> float:
        """The mean service time at occupancy k."""


@dataclass(frozen=True)
class Traffic:
    """Requests per second in steps (``steps``: (start s, rate), each holding until the next starts, the last
    until ``horizon_s``), or the arrival times of a trace (``trace``; its ``steps`` are its rate per window)."""

    steps: tuple[tuple[float, float], ...]
    horizon_s: float
    trace: tuple[float, ...] | None = None
    source: str = ""

    @property
    def peak_rps(self) -> float:
        return max(r for _, r in self.steps)

    @property
    def mean_rps(self) -> float:
        return self.requests_expected / self.horizon_s

    @property
    def requests_expected(self) -> float:
        if self.trace is not None:
            return float(len(self.trace))
        ends = [t for t, _ in self.steps[1:]] + [self.horizon_s]
        return sum(r * (end - t) for (t, r), end in zip(self.steps, ends))

    @property
    def steady(self) -> bool:
        return self.trace is None and len({r for _, r in self.steps}) == 1

    def arrivals(self, rng: random.Random) -> Iterator[float]:
        if self.trace is not None:
            yield from self.trace
            return
        ends = [t for t, _ in self.steps[1:]] + [self.horizon_s]
        for (start, rate), end in zip(self.steps, ends):
            t = start
            while rate > 0:
                t += rng.expovariate(rate)
                if t >= end:
                    break
                yield t


@dataclass(frozen=True)
class Policy:
    """How the fleet's size is set: ``static`` (``replicas``), ``utilization`` (``target``: busy fraction) or
    ``queue-depth`` (``target``: waiting requests per replica)."""

    kind: str
    target: float | None = None
    replicas: int | None = None
    metric: str = "in-system"  # queue-depth: "in-system" (waiting + running) or "waiting" (waiting alone)

    @property
    def label(self) -> str:
        if self.kind == "static":
            return f"static ({self.replicas} replica{'s' if self.replicas != 1 else ''})"
        if self.kind == "utilization":
            return f"utilization (busy {self.target:g})"
        if self.metric == "waiting":
            return f"queue-depth ({self.target:g} waiting/replica, waiting metric alone)"
        if self.target < 0:
            return f"queue-depth ({-self.target:g} slot(s) free/replica)"
        return f"queue-depth ({self.target:g} waiting/replica)"


@dataclass(frozen=True)
class Scaling:
    """The autoscaler's settings (HPA and KEDA's defaults where they have one)."""

    interval_s: float = 15.0  # the HPA's sync period (KEDA's pollingInterval for the ScaledObject)
    scale_up_delay_s: float = 0.0  # behavior.scaleUp.stabilizationWindowSeconds
    scale_down_delay_s: float = 300.0  # behavior.scaleDown.stabilizationWindowSeconds
    scale_down_pods: int | None = None  # behavior.scaleDown.policies: at most this many removed per period
    scale_down_period_s: float = 60.0  # (None: the HPA's default, 100% every 15 s, no limit to speak of)
    min_replicas: int = 1
    max_replicas: int = 64
    cold_start_s: float = 120.0  # from the start of a replica to its first request
    initial_replicas: int = 1  # autoscaled fleets start at this size (static sizing for the first step)


@dataclass(frozen=True)
class Spot:
    """A share of the fleet on spot capacity at ``price_per_hour``, each spot replica preempted at
    ``preemption_per_hour`` (a Poisson rate per replica-hour)."""

    price_per_hour: float
    preemption_per_hour: float
    share: float = 0.5


@dataclass(frozen=True)
class Slo:
    """What a request must keep to count as attained, in seconds (None: not held to it)."""

    wait_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class RunResult:
    """One simulated run of one policy."""

    requests: int
    served: int
    lost: int  # arrived by the horizon and never served (a fleet that could not drain within the safety cap)
    output_tokens: int
    service_mean_s: float  # the mean service time drawn for the requests served (their last attempt)
    attainment: float
    wait_probability: float
    wait_mean_s: float
    wait_p99_s: float
    latency_p50_s: float
    latency_p99_s: float
    utilization: float  # the share of the billed request slots (replica-seconds x concurrency) spent serving
    replica_hours: float
    spot_replica_hours: float
    peak_queue: int
    peak_replicas: int
    mean_replicas: float
    preemptions: int
    requeued: int
    scale_ups: int
    scale_downs: int
    timeline: list[dict[str, Any]] = field(default_factory=list)
