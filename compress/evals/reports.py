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


class Request(ReportModel):
    """One timed generation call (a batch of ``batch_size`` sequences)."""

    batch_size: int
    repeat: int
    ttft_s: float
    e2e_s: float
    token_times_s: list[float] = Field(description="seconds from start to each output token")

    @property
    def inter_token_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]


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


class BatchResult(ReportModel):
    batch_size: int
    prompt_tokens: int
    output_tokens: int
    ttft: Percentiles
    itl: Percentiles
    e2e: Percentiles
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    output_tokens_per_s: float
    cost_per_mtok_usd: float


class BenchReport(ReportModel):
    kind: Literal["bench"] = "bench"
    model: ModelInfo
    settings: dict[str, Any]
    device: str
    batches: list[BatchResult]
    peak_memory_bytes: int
    memory_kind: str  # "rss" on the CPU, "cuda_allocator" on a GPU
    model_memory_bytes: int | None = None
    size_bytes: int
    requests: list[Request]
    environment: dict[str, Any]
    created: str
    duration_s: float
    cache_key: str

    def headline(self) -> BatchResult:
        """The batch size that figures such as ``throughput_speedup`` are read at (the largest)."""
        return max(self.batches, key=lambda b: b.batch_size)
