"""A fleet of replicas serving a traffic profile: a discrete-event simulation on simpy.

One run follows every request of a day (or of any horizon) through a fleet whose size a policy sets:

- **Arrivals**: a Poisson process whose rate is constant within each step of the profile (exact: the
  exponential gap is memoryless, so a gap that crosses a step's end restarts at the next step's rate), or the
  times of a trace.
- **The fleet**: one queue in front of the replicas, as a gateway that holds a request until a replica has a
  free slot and then sends it to the least occupied one. A replica serves up to ``service.concurrency``
  requests at once; a request admitted as the k-th in service takes a time drawn from the service model at
  occupancy k (``service.draw(k, rng)``), which is how a batching server's slowdown as it fills enters. The
  queue is the sum of what each vLLM replica reports as ``vllm:num_requests_waiting``; a fleet behind a plain
  round-robin Service, with one queue per replica, waits longer than this.
- **A replica's life**: started (billed from here; not serving for ``cold_start_s``), ready, draining (after a
  scale-down: takes nothing new, finishes what it has, then goes). A spot replica is preempted after an
  exponential time (``Spot.preemption_per_hour``): what it was serving goes back to the head of the queue and
  is served again from the start, and the Deployment starts a replacement at once (its replica count did not
  change), which takes a cold start too.
- **Policies** (``Policy``): ``static`` keeps a fixed count; ``utilization`` and ``queue-depth`` are the
  Kubernetes HPA's algorithm (as KEDA drives it) over a metric averaged over each ``interval_s``.
  ``utilization``: the busy fraction of each ready replica (the share of time with at least one request in
  service, which is what GPU utilisation reports: one request keeps a batching server "100% busy") against a
  target fraction. ``queue-depth``: KEDA's ``AverageValue`` trigger, desired = ceil(total / threshold), on
  the fleet's requests waiting and running (``vllm:num_requests_waiting + vllm:num_requests_running``) with
  threshold = concurrency + target: at the target each replica has a full batch and ``target`` requests
  waiting (a negative target keeps slots free). With ``metric="waiting"`` the trigger reads the waiting
  requests alone (threshold = target), as KEDA's vLLM tutorials do; an empty queue then reads as "the minimum
  is enough", so a fleet with room to spare is scaled down to its minimum and back up again after each cold
  start, which the simulation shows. Within 10% of the target nothing changes (the HPA's tolerance); a
  scale-down takes the highest recommendation of the last ``scale_down_delay_s`` and a scale-up the lowest of
  the last ``scale_up_delay_s`` (the HPA's stabilisation windows); a step adds at most max(4, current)
  replicas (the HPA's default scale-up limit) and, with ``scale_down_pods``, removes at most that many per
  ``scale_down_period_s`` (a scale-down policy).

Replica-hours count the replicas provisioned over [0, horizon]; every request that arrived by the horizon is
followed to its end. Seeded: the same seed gives the same run.
"""
from __future__ import annotations

import collections
import math
import random

from compress.decide.fleet_spec import HPA_TOLERANCE, Policy, RunResult, Scaling, Service, Slo, Spot, Traffic

class _Replica:
    __slots__ = ("id", "spot", "state", "busy", "serving", "ready_at", "busy_since", "busy_acc")

    def __init__(self, rid: int, spot: bool):
        self.id, self.spot, self.state, self.busy, self.serving = rid, spot, "starting", 0, set()
        self.ready_at, self.busy_since, self.busy_acc = math.inf, 0.0, 0.0


def simulate(service: Service, traffic: Traffic, policy: Policy, *, scaling: Scaling = Scaling(),
             slo: Slo = Slo(), spot: Spot | None = None, seed: int = 0, bin_s: float | None = None) -> RunResult:
    """Run one policy over the traffic once (``seed`` makes it reproducible).

    Args:
        bin_s: the timeline's bin (default: 1/288 of the horizon, at least 60 s: 5 minutes over a day).
    """
    return _Fleet(service, traffic, policy, scaling, slo, spot, seed, bin_s).run()


class _Fleet:
    def __init__(self, service, traffic, policy, scaling, slo, spot, seed, bin_s):
        import simpy

        self.env = simpy.Environment()
        self.rng, self.spot_rng = random.Random(seed), random.Random(seed + 7919)
        self.service, self.traffic, self.policy, self.scaling, self.slo, self.spot = (
            service, traffic, policy, scaling, slo, spot)
        self.n = service.concurrency
        self.horizon = traffic.horizon_s
        self.bin_s = bin_s or max(60.0, self.horizon / 288)
        bins = int(math.ceil(self.horizon / self.bin_s))
        self.replicas: dict[int, _Replica] = {}
        self.free: list[set[int]] = [set() for _ in range(self.n)]  # ready replicas with a free slot, by busy
        self.queue: collections.deque[int] = collections.deque()
        self.next_id = 0
        # Per request: its arrival and the number of its attempt (a preempted one is served again); per request
        # served, in the order they end: its index, wait, latency and whether it kept the SLO.
        self.arrival: list[float] = []
        self.attempt: list[int] = []
        self.done_i: list[int] = []
        self.done_wait: list[float] = []
        self.done_latency: list[float] = []
        self.done_ok: list[bool] = []
        inf = math.inf
        self.bounds = tuple(inf if b is None else b for b in (slo.wait_s, slo.ttft_s, slo.tpot_s, slo.e2e_s))
        self.outstanding, self.arrivals_done, self.tokens, self.service_sum = 0, False, 0, 0.0
        self.stop = self.env.event()
        # Accounting.
        self.bill_t, self.area, self.spot_area = 0.0, 0.0, 0.0
        self.bin_area = [0.0] * bins
        self.bin_qmax = [0] * bins
        self.q_t, self.q_area, self.peak_queue = 0.0, 0.0, 0
        self.l_t, self.l_area = 0.0, 0.0  # requests in the system (waiting and in service), integrated
        self.peak_replicas = 0
        self.preemptions = self.requeued = self.scale_ups = self.scale_downs = 0

    # ------------------------------------------------------------------ accounting
    def _billed(self) -> tuple[int, int]:
        on = [r.spot for r in self.replicas.values()]
        return len(on) - sum(on), sum(on)

    def _account(self) -> None:
        """Replica-hours up to now (within the horizon), before the fleet changes."""
        t = min(self.env.now, self.horizon)
        if t > self.bill_t:
            od, sp = self._billed()
            self.area += (od + sp) * (t - self.bill_t)
            self.spot_area += sp * (t - self.bill_t)
            a, k = self.bill_t, min(int(self.bill_t / self.bin_s), len(self.bin_area) - 1)
            while a < t:  # spread over the timeline's bins
                b = t if k == len(self.bin_area) - 1 else min(t, (k + 1) * self.bin_s)
                self.bin_area[k] += (od + sp) * max(0.0, b - a)
                a, k = b, k + 1
            self.bill_t = t

    def _live(self) -> list[_Replica]:
        return [r for r in self.replicas.values() if r.state != "draining"]

    # ------------------------------------------------------------------ replicas
    def _start_replica(self) -> None:
        self._account()
        share = self.spot.share if self.spot else 0.0
        live = self._live()
        spot = self.spot is not None and sum(r.spot for r in live) < round(share * (len(live) + 1))
        rep = _Replica(self.next_id, spot)
        self.next_id += 1
        self.replicas[rep.id] = rep
        self.peak_replicas = max(self.peak_replicas, len(self.replicas))
        ev = self.env.timeout(self.scaling.cold_start_s if self.env.now > 0 else 0.0, value=rep)
        ev.callbacks.append(self._ready)
        if spot and self.spot.preemption_per_hour > 0:
            lost = self.env.timeout(self.spot_rng.expovariate(self.spot.preemption_per_hour / 3600.0), value=rep)
            lost.callbacks.append(self._preempt)

    def _ready(self, ev) -> None:
        rep = ev.value
        if rep.state != "starting" or rep.id not in self.replicas:
            return
        rep.state, rep.ready_at, rep.busy_since = "ready", self.env.now, self.env.now
        self.free[0].add(rep.id)
        while self.queue and rep.busy < self.n:
            self._admit(self._pop(), rep)

    def _remove(self, rep: _Replica) -> None:
        self._account()
        for k in range(self.n):
            self.free[k].discard(rep.id)
        del self.replicas[rep.id]

    def _preempt(self, ev) -> None:
        rep = ev.value
        if rep.id not in self.replicas:
            return
        self.preemptions += 1
        back = sorted(rep.serving, reverse=True)
        self.requeued += len(back)
        draining = rep.state == "draining"
        self._remove(rep)
        self._queue_mark()
        for i in back:  # the oldest ends up first
            self.attempt[i] += 1  # its pending completion is now stale
            self.queue.appendleft(i)
        self._queue_seen()
        if not draining:
            self._start_replica()  # the Deployment replaces the pod it lost
        self._dispatch_queue()

    # ------------------------------------------------------------------ requests
    def _queue_mark(self) -> None:
        now = self.env.now
        self.q_area += len(self.queue) * (now - self.q_t)
        self.q_t = now

    def _queue_seen(self) -> None:
        q = len(self.queue)
        if q > self.peak_queue:
            self.peak_queue = q
        b = min(int(self.env.now / self.bin_s), len(self.bin_qmax) - 1)
        if q > self.bin_qmax[b]:
            self.bin_qmax[b] = q

    def _pop(self) -> int:
        self._queue_mark()
        return self.queue.popleft()

    def _pick(self) -> _Replica | None:
        for bucket in self.free:
            if bucket:
                return self.replicas[next(iter(bucket))]
        return None

    def _admit(self, i: int, rep: _Replica) -> None:
        now = self.env.now
        busy = rep.busy
        free = self.free
        free[busy].discard(rep.id)
        if busy == 0:
            rep.busy_since = now
        busy = rep.busy = busy + 1
        if busy < self.n:
            free[busy].add(rep.id)
        rep.serving.add(i)
        s = self.service.draw(busy, self.rng)
        self.env.timeout(s[0], value=(i, self.attempt[i], rep, now, s)).callbacks.append(self._done)

    def _arrive(self, t: float) -> None:
        i = len(self.arrival)
        self.arrival.append(t)
        self.attempt.append(0)
        self.l_area += self.outstanding * (t - self.l_t)
        self.l_t = t
        self.outstanding += 1
        rep = None if self.queue else self._pick()
        if rep is not None:
            self._admit(i, rep)
        else:
            self._queue_mark()
            self.queue.append(i)
            self._queue_seen()

    def _done(self, ev) -> None:
        i, attempt, rep, started, (service, ttft, tpot, tokens) = ev._value
        if attempt != self.attempt[i]:
            return  # preempted: served again from the queue
        now = self.env.now
        rep.serving.discard(i)
        busy = rep.busy
        if busy < self.n:
            self.free[busy].discard(rep.id)
        busy = rep.busy = busy - 1
        if busy == 0:
            rep.busy_acc += now - rep.busy_since
        ready = rep.state == "ready"
        if ready:
            self.free[busy].add(rep.id)
        arrived = self.arrival[i]
        wait, latency = started - arrived, now - arrived
        wb, tb, pb, eb = self.bounds
        self.done_i.append(i)
        self.done_wait.append(wait)
        self.done_latency.append(latency)
        self.done_ok.append(wait <= wb and wait + ttft <= tb and tpot <= pb and latency <= eb)
        self.tokens += tokens
        self.service_sum += service
        self.l_area += self.outstanding * (now - self.l_t)
        self.l_t = now
        self.outstanding -= 1
        if not ready:
            if busy == 0:
                self._remove(rep)
        elif self.queue:
            self._admit(self._pop(), rep)
        if self.arrivals_done and self.outstanding == 0 and not self.stop.triggered:
            self.stop.succeed()

    def _dispatch_queue(self) -> None:
        while self.queue:
            rep = self._pick()
            if rep is None:
                return
            self._admit(self._pop(), rep)

    # ------------------------------------------------------------------ processes
    def _arrivals(self):
        env = self.env
        for t in self.traffic.arrivals(self.rng):
            if t > env.now:
                yield env.timeout(t - env.now)
            self._arrive(env.now)
        self.arrivals_done = True
        if self.outstanding == 0 and not self.stop.triggered:
            self.stop.succeed()

    def _autoscaler(self):
        env, sc, pol = self.env, self.scaling, self.policy
        # The fleet has been at its first size for as long as the windows reach (not a fleet with no history).
        recs: collections.deque[tuple[float, int]] = collections.deque([(0.0, len(self.replicas))])
        keep = max(sc.scale_up_delay_s, sc.scale_down_delay_s)
        last = 0.0
        removed: collections.deque[tuple[float, int]] = collections.deque()  # for the scale-down policy
        while True:
            yield env.timeout(sc.interval_s)
            now, span = env.now, env.now - last
            last = now
            live = self._live()
            current = len(live)
            target = pol.target
            if pol.kind == "queue-depth" and pol.metric == "waiting":
                self._queue_mark()
                total, self.q_area = self.q_area / span, 0.0
            elif pol.kind == "queue-depth":  # waiting + running against a full batch plus the target waiting
                self.l_area += self.outstanding * (now - self.l_t)
                self.l_t = now
                total, self.l_area = self.l_area / span, 0.0
                target = self.n + pol.target
            else:  # utilization: the busy fraction of each ready replica over the interval
                total = 0.0
                for r in live:
                    if r.state != "ready":
                        continue
                    if r.busy > 0:
                        r.busy_acc += now - r.busy_since
                        r.busy_since = now
                    total += r.busy_acc / max(1e-9, min(span, now - r.ready_at))
                    r.busy_acc = 0.0
            ratio = total / (target * max(current, 1))
            desired = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(total / target - 1e-9)
            desired = min(max(desired, sc.min_replicas), sc.max_replicas)
            recs.append((now, desired))
            while recs and recs[0][0] < now - keep - 1e-9:
                recs.popleft()
            up = min(d for t, d in recs if t >= now - sc.scale_up_delay_s - 1e-9)
            down = max(d for t, d in recs if t >= now - sc.scale_down_delay_s - 1e-9)
            new = up if current < up else down if current > down else current
            new = min(new, current + max(4, current))
            if new < current and sc.scale_down_pods is not None:
                while removed and removed[0][0] <= now - sc.scale_down_period_s:
                    removed.popleft()
                new = max(new, current - max(0, sc.scale_down_pods - sum(n for _, n in removed)))
            if new > current:
                self.scale_ups += 1
                for _ in range(new - current):
                    self._start_replica()
            elif new < current:
                self.scale_downs += 1
                removed.append((now, current - new))
                self._shrink(live, current - new)

    def _shrink(self, live: list[_Replica], count: int) -> None:
        """Take ``count`` replicas out: those still starting first (newest first), then the least busy."""
        order = sorted(live, key=lambda r: (r.state == "ready", r.busy, -r.id))
        for rep in order[:count]:
            if rep.state == "starting" or rep.busy == 0:
                self._remove(rep)
            else:
                self._account()
                for k in range(self.n):
                    self.free[k].discard(rep.id)
                rep.state = "draining"

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        pol, sc = self.policy, self.scaling
        first = pol.replicas if pol.kind == "static" else sc.initial_replicas
        for _ in range(max(1, first or 1)):
            self._start_replica()
        self.env.process(self._arrivals())
        if pol.kind != "static":
            self.env.process(self._autoscaler())
        # A safety cap: a fleet that cannot drain (a preemption rate far above any real one) stops here.
        cap = self.env.timeout(self.horizon * 20 + 86400.0)
        self.env.run(until=self.stop | cap)
        if self.env.now < self.horizon:  # traffic that ended early: the fleet is still billed to the horizon
            self.env.run(until=self.horizon)
        self._account()
        return self._result()

    def _result(self) -> RunResult:
        import numpy as np

        n = len(self.arrival)
        order = np.array(self.done_i, dtype=np.int64)
        wait, latency = np.full(n, np.nan), np.full(n, np.nan)
        ok = np.zeros(n, dtype=bool)
        wait[order], latency[order], ok[order] = self.done_wait, self.done_latency, self.done_ok
        served = ~np.isnan(latency)
        arrival = np.array(self.arrival)
        w, lat = wait[served], latency[served]

        def pct(x, q=99):
            return float(np.percentile(x, q)) if len(x) else math.nan

        timeline = []
        edges = [b * self.bin_s for b in range(len(self.bin_area))] + [self.horizon]
        cuts = [int(c) for c in np.searchsorted(arrival, edges)]  # arrivals are in time order
        for b in range(len(self.bin_area)):
            lo, hi, sel = edges[b], edges[b + 1], slice(cuts[b], cuts[b + 1])
            good = ok[sel][served[sel]]
            timeline.append({"t_s": lo, "offered_rps": (cuts[b + 1] - cuts[b]) / (hi - lo),
                             "replicas": self.bin_area[b] / (hi - lo), "queue_max": self.bin_qmax[b],
                             "latency_p99_s": pct(latency[sel][served[sel]]),
                             "attainment": float(good.mean()) if len(good) else None})
        return RunResult(
            requests=n, served=int(served.sum()), lost=int(n - served.sum()), output_tokens=self.tokens,
            service_mean_s=self.service_sum / max(1, len(self.done_i)),
            attainment=float(ok.mean()) if n else math.nan,
            wait_probability=float((w > 0).mean()) if len(w) else math.nan,
            wait_mean_s=float(w.mean()) if len(w) else math.nan, wait_p99_s=pct(w), latency_p50_s=pct(lat, 50),
            latency_p99_s=pct(lat),
            utilization=self.service_sum / (self.area * self.n) if self.area else math.nan,
            replica_hours=self.area / 3600.0, spot_replica_hours=self.spot_area / 3600.0,
            peak_queue=self.peak_queue, peak_replicas=self.peak_replicas, mean_replicas=self.area / self.horizon,
            preemptions=self.preemptions, requeued=self.requeued, scale_ups=self.scale_ups,
            scale_downs=self.scale_downs, timeline=timeline)
