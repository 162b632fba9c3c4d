"""Typed reports with units, the environment, raw per-sample data and a JSON round-trip.

Accuracy reports keep every document's result so that the gate can pair a baseline and a
candidate sample by sample; bench reports keep every request's timings.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compress.artifact import write_json


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
    """One document's result.

    ``values`` holds each metric's per-sample value as lm-eval computes it: a number (acc: 0
    or 1), or ``[loglikelihood, count]`` for perplexity-style metrics.
    """

    doc_id: int
    doc_hash: str | None = None
    target: Any = None
    answer: Any = None
    loglikelihoods: list[float] | None = None
    correct: bool | None = None
    values: dict[str, Any] = Field(default_factory=dict)


class Metric(ReportModel):
    value: float
    stderr: float | None = None
    higher_is_better: bool
    aggregation: str = "mean"  # mean | weighted_perplexity | bits_per_byte | perplexity
    unit: str = ""


class TaskResult(ReportModel):
    task: str
    version: str | None = None
    output_type: str | None = None
    num_fewshot: int = 0
    n_samples: int
    metrics: dict[str, Metric]
    samples: list[Sample]


class AccuracyReport(ReportModel):
    kind: Literal["accuracy"] = "accuracy"
    model: ModelInfo
    settings: dict[str, Any]
    tasks: dict[str, TaskResult]
    environment: dict[str, Any]
    created: str
    duration_s: float
    cache_key: str

    def metric(self, name: str) -> Metric:
        """A metric by ``TASK/METRIC`` name."""
        task, _, metric = name.partition("/")
        if task not in self.tasks or metric not in self.tasks[task].metrics:
            known = [f"{t}/{m}" for t, r in self.tasks.items() for m in r.metrics]
            raise KeyError(f"no metric {name} in the accuracy report (have: {', '.join(known)})")
        return self.tasks[task].metrics[metric]


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

    @property
    def inter_token_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]


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
    kernels: dict[str, list[str]] = Field(default_factory=dict)
    start_s: float | None = None
    kv_cache_dtype: str | None = None
    kv_cache_tokens: int | None = None  # tokens the engine's KV cache holds (from its log)
    kv_cache_bytes_per_token: float | None = None
    max_concurrency: float | None = None  # requests of max_model_len tokens that fit at once (from its log)
    max_model_len: int | None = None
    url: str | None = None


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

    @property
    def model(self) -> ModelInfo:
        return self.candidate.model

    def side(self, who: str) -> Measured:
        return self.baseline if who == "baseline" else self.candidate


class ServableReport(ReportModel):
    """Whether a serving engine loaded the candidate and agreed with transformers on it
    (the ``servable`` gate check; ``result`` is ``compress.engines.servable.ServableResult``)."""

    kind: Literal["servable"] = "servable"
    model: ModelInfo
    settings: dict[str, Any]
    result: dict[str, Any]
    created: str
    duration_s: float
