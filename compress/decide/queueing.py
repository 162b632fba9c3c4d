"""Queueing theory for a steady load: Erlang C (M/M/c), the reference the fleet simulation is checked
against, and the fleet size a steady rate needs."""
from __future__ import annotations

import math

from compress.decide.fleet_spec import Service


def erlang_c(servers: int, offered: float) -> float:
    """The probability that a request waits in an M/M/c queue (Erlang C): ``servers`` = c, ``offered`` = λ/μ
    (erlangs). 1 when the load is at or above capacity. Computed through Erlang B's recurrence, which stays
    stable for thousands of servers."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return servers * b / (servers - offered * (1 - b))


def erlang_wait(servers: int, rate: float, mean_service_s: float) -> dict[str, float]:
    """M/M/c figures at arrival rate ``rate`` (per s): the probability of waiting, the mean wait (s) and the
    utilisation. The mean wait is infinite at or above capacity."""
    mu, a = 1.0 / mean_service_s, rate * mean_service_s
    c = erlang_c(servers, a)
    mean = c / (servers * mu - rate) if a < servers else math.inf
    return {"servers": servers, "offered_erlangs": a, "utilisation": a / servers, "wait_probability": c,
            "wait_mean_s": mean}


def replicas_for(rate: float, service: Service, *, wait_s: float, attainment: float, goodput_rps: float | None = None,
                 max_replicas: int = 100000) -> int:
    """The fewest replicas for a steady ``rate``: the M/M/c bound P(wait > wait_s) = C·exp(-(cμ - λ)·wait_s) at most
    1 - ``attainment``, with c = replicas x concurrency and μ the service rate at full occupancy (the slowest),
    and no fewer than ``rate / goodput_rps`` where a goodput was measured."""
    if rate <= 0:
        return 1
    n = service.concurrency
    mean = service.mean_service_s(n)
    least = math.ceil(rate / goodput_rps - 1e-9) if goodput_rps else 1
    for replicas in range(max(1, least), max_replicas + 1):
        c = replicas * n
        a = rate * mean
        if a >= c:
            continue
        tail = erlang_c(c, a) * math.exp(-(c / mean - rate) * wait_s)
        if tail <= 1 - attainment + 1e-12:
            return replicas
    return max_replicas
