"""Typed reports with units, the environment, raw per-sample data and a JSON round-trip.

Accuracy reports keep every document's result so that the gate can pair a baseline and a
candidate sample by sample; bench reports keep every request's timings.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.core.artifact import write_json


class ReportModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def save(self, path: Path) -> None:
        write_json(Path(path), self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: Path):
        return cls.model_validate_json(Path(path).read_text())


class ModelInfo(ReportModel):
    """What was measured: the reference as given and its content hash (no local paths: reports
    travel inside exports as evidence)."""

    spec: str
    path: str | None = None  # older reports recorded where the model was read from
    content_hash: str
    size_bytes: int
    quantization: str | None = None


# ---------------------------------------------------------------------------- accuracy

class Sample(ReportModel):
    """One document's result under one filter.

    ``values`` holds each metric's per-sample value as lm-eval computes it: a number (acc: 0
    or 1), or ``[loglikelihood, count]`` for perplexity-style metrics. A task with several
    filters (a generative task reading its answer out strictly and flexibly) has one sample
    per document per filter. ``prompt_hash`` digests everything the model was asked for this
    document (few-shot examples, chat template, system instruction, generation settings), so
    a pairing can prove both models saw the same bytes.
    """

    doc_id: int
    filter: str = "none"
    doc_hash: str | None = None
    prompt_hash: str | None = None
    target: Any = None
    answer: Any = None
    loglikelihoods: list[float] | None = None
    # Generative tasks: the mean log-probability per token of the generated answer (the model's
    # confidence in it, which a cascade routes on).
    answer_logprob: float | None = None
    correct: bool | None = None
    values: dict[str, Any] = Field(default_factory=dict)


class Metric(ReportModel):
    value: float
    stderr: float | None = None
    higher_is_better: bool
    aggregation: str = "mean"  # mean | weighted_perplexity | bits_per_byte | perplexity
    unit: str = ""


def split_key(key: str) -> tuple[str, str]:
    """``"exact_match,strict-match"`` -> ``("exact_match", "strict-match")``; no filter: ``"none"``."""
    metric, _, filt = key.partition(",")
    return metric, filt or "none"


def _find_key(owner: str, keys: Any, asked: str) -> str:
    """The stored ``METRIC,FILTER`` key a metric name means: the full name, or the bare metric
    when it was measured under one filter only."""
    if "," in asked:
        if asked in keys:
            return asked
        raise KeyError(asked)
    matches = [k for k in keys if split_key(k)[0] == asked]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyError(f"{owner}/{asked} was measured under {len(matches)} filters: name one "
                       f"({', '.join(f'{owner}/{k}' for k in matches)})")
    raise KeyError(asked)


def display_names(owner: str, keys: Any) -> dict[str, str]:
    """How each stored key is shown: ``TASK/METRIC`` when the metric has one filter,
    ``TASK/METRIC,FILTER`` when it has several."""
    counts: dict[str, int] = {}
    for k in keys:
        counts[split_key(k)[0]] = counts.get(split_key(k)[0], 0) + 1
    return {k: f"{owner}/{split_key(k)[0] if counts[split_key(k)[0]] == 1 else k}" for k in keys}


class TaskResult(ReportModel):
    """One task's metrics, keyed ``METRIC,FILTER`` as lm-eval names them, and its samples
    (one per document per filter). ``n_samples`` counts documents."""

    task: str
    version: str | None = None
    output_type: str | None = None
    num_fewshot: int = 0
    n_samples: int
    filters: list[str] = Field(default_factory=lambda: ["none"])
    metrics: dict[str, Metric]
    samples: list[Sample]

    @model_validator(mode="before")
    @classmethod
    def _filter_in_keys(cls, data: Any) -> Any:
        """Reports written before filters were kept name metrics without one (``acc``): the
        filter was lm-eval's ``none``."""
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            data = {**data, "metrics": {k if "," in k else f"{k},none": v for k, v in data["metrics"].items()}}
        return data

    def by_filter(self, filt: str) -> list[Sample]:
        return [s for s in self.samples if s.filter == filt]


class GroupMetric(ReportModel):
    """A group's aggregate of its subtasks' values, as lm-eval weights them: by each subtask's
    number of documents (``weight_by_size``) or equally."""

    value: float
    stderr: float | None = None
    higher_is_better: bool
    weight_by_size: bool = True
    unit: str = ""


class GroupResult(ReportModel):
    group: str
    subtasks: list[str]  # the leaf tasks whose documents the aggregate covers
    metrics: dict[str, GroupMetric]


class AccuracyReport(ReportModel):
    kind: Literal["accuracy"] = "accuracy"
    model: ModelInfo
    settings: dict[str, Any]
    tasks: dict[str, TaskResult]
    groups: dict[str, GroupResult] = Field(default_factory=dict)
    environment: dict[str, Any]
    created: str
    duration_s: float
    documents: int | None = None  # documents evaluated over all tasks
    documents_per_s: float | None = None
    cache_key: str

    def resolve(self, name: str) -> tuple[str, str]:
        """``TASK/METRIC[,FILTER]`` or ``GROUP/METRIC[,FILTER]`` -> (task or group, stored key).

        Raises:
            KeyError: naming what the report has (or the filters to choose between).
        """
        owner, _, asked = name.partition("/")
        source = self.tasks.get(owner) or self.groups.get(owner)
        try:
            if source is None:
                raise KeyError(asked)
            return owner, _find_key(owner, source.metrics, asked)
        except KeyError as e:
            if "filters" in str(e.args[0]):
                raise
            raise KeyError(f"no metric {name} in the accuracy report (have: {', '.join(self.metric_names())})") from None

    def metric(self, name: str) -> Metric | GroupMetric:
        """A metric by ``TASK/METRIC[,FILTER]`` (or a group's) name."""
        owner, key = self.resolve(name)
        source = self.tasks.get(owner) or self.groups[owner]
        return source.metrics[key]

    def metric_names(self) -> list[str]:
        """Every metric as a gate names it: groups first, then tasks."""
        names = []
        for owner, source in [*self.groups.items(), *self.tasks.items()]:
            names += display_names(owner, source.metrics).values()
        return names


# ------------------------------------------------------------------------------- bench

class Percentiles(ReportModel):
    """Summary of a list of timings, in seconds."""

    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    n: int


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty list")
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> Percentiles:
    return Percentiles(
        mean=sum(values) / len(values), p50=percentile(values, 50), p90=percentile(values, 90),
        p99=percentile(values, 99), min=min(values), max=max(values), n=len(values),
    )


class ServedRequest(ReportModel):
    """One streamed request to a serving engine (OpenAI-compatible ``/v1/completions``).

    Times are seconds; ``started_s`` is from the start of its load run, the others from when
    this request was sent. ``token_times_s`` has one entry per output token (tokens that came
    in one chunk share its arrival time).
    """

    index: int
    concurrency: int
    prompt_tokens: int
    output_tokens: int
    started_s: float
    ttft_s: float
    e2e_s: float
    token_times_s: list[float]
    chunks: int
    text: str = ""
    finish_reason: str | None = None
    scheduled_s: float | None = None  # open loop: when the arrival process said to send it (from the run's start)

    @property
    def inter_token_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]


class MetricSample(ReportModel):
    """One scrape of the engine's Prometheus ``/metrics`` during a load level (``t_s`` from the level's start)."""

    t_s: float
    waiting: float | None = None  # vllm:num_requests_waiting (the queue an autoscaler watches)
    running: float | None = None  # vllm:num_requests_running
    kv_cache_usage: float | None = None  # vllm:kv_cache_usage_perc, 0..1


class EngineMetrics(ReportModel):
    """What the engine said about itself during one load level: a time series of its gauges and, from the
    counters' change over the level, its prefix-cache hit rate, preemptions and mean queueing time.
    ``error`` says why a figure is missing (no ``/metrics`` route, a scrape that failed)."""

    samples: list[MetricSample] = Field(default_factory=list)
    waiting_mean: float | None = None
    waiting_max: float | None = None
    running_mean: float | None = None
    running_max: float | None = None
    kv_cache_usage_max: float | None = None
    prefix_cache_queries: float | None = None  # tokens looked up in the prefix cache over the level
    prefix_cache_hits: float | None = None
    prefix_cache_hit_rate: float | None = None  # hits / queries (None: no query)
    preemptions: float | None = None
    queue_time_mean_s: float | None = None  # vllm:request_queue_time_seconds, mean over requests finished
    requests_finished: float | None = None
    error: str | None = None


class LevelRun(ReportModel):
    """One model at one load level in one round: every request, and the wall time they took.

    ``level`` is the batch size (``hf``: sequences per ``generate`` call, run one call after
    another) or the concurrency (``vllm`` / ``endpoint``: requests in flight).
    """

    round: int
    level: int
    position: int = 0  # 0 when this model went first in its round, 1 when second
    wall_s: float
    requests: list[ServedRequest]
    rate: float | None = None  # open loop: the requests per second the arrival process offered
    arrival: str | None = None  # open loop: poisson | constant
    measured: list[int] | None = None  # open loop: indices of the requests inside the window (warm-up and
    #                                    cool-down excluded); wall_s is that window's length
    window_start_s: float | None = None  # open loop: when the window began (from the run's start)
    metrics: EngineMetrics | None = None

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.requests)


class Spread(ReportModel):
    """A figure over rounds: the value from every round pooled, and an interval from resampling rounds."""

    value: float
    lower: float
    upper: float
    confidence: float
    rounds: int


class BatchResult(ReportModel):
    batch_size: int  # the level: batch size (hf) or concurrency (vllm, endpoint)
    prompt_tokens: int
    output_tokens: int
    ttft: Percentiles
    itl: Percentiles
    e2e: Percentiles
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    output_tokens_per_s: float
    cost_per_mtok_usd: float
    requests_per_s: float | None = None
    output_tokens_per_s_spread: Spread | None = None
    meets_slo: bool | None = None


class Runtime(ReportModel):
    """Where a model was measured: the engine, its version, how it was started, what it chose."""

    engine: str  # hf | vllm | endpoint
    version: str | None = None
    dtype: str | None = None
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)  # variables compress set for the engine beyond the user's
    kernels: dict[str, list[str]] = Field(default_factory=dict)
    start_s: float | None = None
    kv_cache_dtype: str | None = None
    kv_cache_tokens: int | None = None  # tokens the engine's KV cache holds (from its log)
    kv_cache_bytes_per_token: float | None = None
    max_concurrency: float | None = None  # requests of max_model_len tokens that fit at once (from its log)
    max_model_len: int | None = None
    url: str | None = None


class RateResult(ReportModel):
    """One open-loop level: requests offered at ``rate`` per second by an arrival process, every round pooled,
    warm-up and cool-down excluded. ``attainment`` is the share of requests that met every bound of bench.slo,
    with a block-bootstrap interval (blocks of consecutive requests, so that a queue's memory stays inside a
    block); ``verdict`` (with bench.goodput) says whether the level is within the target: ``pass`` and ``fail``
    when the whole interval is on one side of it, ``undecided`` when the interval straddles it."""

    rate: float
    arrival: str
    requests: int
    achieved_requests_per_s: float
    output_tokens_per_s: float
    cost_per_mtok_usd: float
    ttft: Percentiles
    itl: Percentiles
    e2e: Percentiles
    send_lag: Percentiles  # how late the client sent each request after its scheduled time (should be ~0)
    client_bound: bool = False  # the load generator could not keep the schedule: the level measures it, not the
    #                             server (its verdict is then undecided)
    attainment: Spread | None = None
    verdict: Literal["pass", "fail", "undecided"] | None = None
    queue_time_mean_s: float | None = None  # from the engine's metrics
    waiting_mean: float | None = None
    waiting_max: float | None = None
    running_mean: float | None = None
    kv_cache_usage_max: float | None = None
    prefix_cache_hit_rate: float | None = None
    preemptions: float | None = None


class Goodput(ReportModel):
    """The highest offered rate whose SLO attainment stays at or above ``target``: found by doubling, then
    bisecting, over at most ``max_probes`` levels. ``rps`` is the highest rate decided ``pass``; the true
    goodput lies between it and ``upper_rps``, the lowest rate above it that was not a pass (None: every probe
    passed, so the bound is open). ``undecided`` lists probes whose interval straddled the target."""

    target: float
    slo: dict[str, float]
    rps: float | None
    upper_rps: float | None
    probes: list[float]
    undecided: list[float] = Field(default_factory=list)
    output_tokens_per_s: float | None = None  # achieved at the goodput level
    cost_per_mtok_usd: float | None = None  # USD per 1M output tokens at the goodput level
    reason: str | None = None  # why rps is None


class Measured(ReportModel):
    """One model's side of a benchmark."""

    model: ModelInfo
    runtime: Runtime
    device: str
    size_bytes: int
    peak_memory_bytes: int
    memory_kind: str  # "rss" (the worker, or the server's whole process group) or "cuda_allocator"
    model_memory_bytes: int | None = None
    runs: list[LevelRun]
    batches: list[BatchResult]
    slo_output_tokens_per_s: float | None = None  # the highest throughput that met bench.slo (None: no slo)
    rate_runs: list[LevelRun] = Field(default_factory=list)  # every open-loop run (fixed rates and goodput probes)
    rates: list[RateResult] = Field(default_factory=list)  # open-loop levels (bench.arrival, bench.rates)
    goodput: Goodput | None = None


class BenchReport(ReportModel):
    """One model benchmarked on its own (``compress bench``): figures with their spread over rounds."""

    kind: Literal["bench"] = "bench"
    model: ModelInfo
    settings: dict[str, Any]
    measured: Measured
    environment: dict[str, Any]
    created: str
    duration_s: float
    cache_key: str
    workload: dict[str, Any] | None = None  # bench.workload: its hash and length percentiles

    @property
    def batches(self) -> list[BatchResult]:
        return self.measured.batches

    def headline(self) -> BatchResult:
        """The level that figures such as ``throughput_speedup`` are read at (the largest)."""
        return max(self.batches, key=lambda b: b.batch_size)


class SpeedReport(ReportModel):
    """Baseline and candidate benchmarked in the same time window, in alternating rounds.

    Round ``r`` measures both models at every level, the baseline first in even rounds and the
    candidate first in odd ones, so that a slow moment of the machine falls on both. Ratios
    are computed from rounds, never from figures measured at another time.
    """

    kind: Literal["speed"] = "speed"
    settings: dict[str, Any]
    baseline: Measured
    candidate: Measured
    environment: dict[str, Any]
    created: str
    duration_s: float
    cache_key: str
    workload: dict[str, Any] | None = None  # bench.workload: its hash and length percentiles

    @property
    def model(self) -> ModelInfo:
        return self.candidate.model

    def side(self, who: str) -> Measured:
        return self.baseline if who == "baseline" else self.candidate


class ServableReport(ReportModel):
    """Whether a serving engine loaded the candidate and agreed with transformers on it
    (the ``servable`` gate check; ``result`` is ``compress.measure.engines.servable.ServableResult``)."""

    kind: Literal["servable"] = "servable"
    model: ModelInfo
    settings: dict[str, Any]
    result: dict[str, Any]
    created: str
    duration_s: float
