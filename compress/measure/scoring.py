"""From per-document results to a metric's value: the one computation that the gate's paired
tests, the evidence check and the agreement tests with lm-eval share.

A task's metric is its per-document values under one filter, aggregated as lm-eval aggregates
them (mean, weighted perplexity, bits per byte, perplexity). A group's metric is the weighted
mean of its subtasks' values (weights: each subtask's number of documents, or 1 each, as the
group's config says); each subtask is a stratum whose documents are paired and resampled on
their own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress.core.reports import AccuracyReport, GroupMetric, Metric, Sample, split_key
from compress.core.stats import AGGREGATES, weighted_value


@dataclass
class Part:
    """One task's documents under one filter, in document order, with how they aggregate."""

    task: str
    key: str  # METRIC,FILTER
    aggregation: str
    weight: float
    samples: list[Sample]

    @property
    def metric(self) -> str:
        return split_key(self.key)[0]

    def values(self) -> list:
        return [s.values[self.metric] for s in self.samples]


def parts(report: AccuracyReport, name: str) -> tuple[str, str, Metric | GroupMetric, list[Part]]:
    """The metric a name means and the per-document results it is computed from.

    Returns:
        (task or group, stored ``METRIC,FILTER`` key, the metric as lm-eval reported it, parts)

    Raises:
        KeyError: the report has no such metric, or a subtask's results are missing.
    """
    owner, key = report.resolve(name)
    metric, filt = split_key(key)
    if owner in report.tasks:
        tasks, reported, by_size = [owner], report.tasks[owner].metrics[key], None
    else:
        group = report.groups[owner]
        tasks, reported = group.subtasks, group.metrics[key]
        by_size = reported.weight_by_size
    out = []
    for task in tasks:
        result = report.tasks.get(task)
        if result is None or key not in result.metrics:
            raise KeyError(f"{owner}/{key}: the report has no {key} results for subtask {task}")
        samples = sorted((s for s in result.by_filter(filt) if metric in s.values), key=lambda s: s.doc_id)
        weight = 1.0 if by_size is None or not by_size else float(len(samples))
        out.append(Part(task, key, result.metrics[key].aggregation, weight, samples))
    return owner, key, reported, out


def recompute(report: AccuracyReport, name: str) -> float:
    """A metric's value from the report's own per-document results, as the gate computes it."""
    _, _, _, ps = parts(report, name)
    if any(p.aggregation not in AGGREGATES for p in ps):
        raise ValueError(f"{name}: aggregation {ps[0].aggregation} cannot be recomputed from documents")
    return float(weighted_value([(np.asarray(p.values(), dtype=float), p.aggregation, p.weight) for p in ps])[0])


def only(report: AccuracyReport, keep: dict[str, set[int]]) -> AccuracyReport:
    """The report on the documents ``keep`` names per task (a task not named keeps none), with
    each metric recomputed from them (see ``recompute_values``)."""
    out = report.model_copy(deep=True)
    for name, task in out.tasks.items():
        docs = keep.get(name, set())
        task.samples = [s for s in task.samples if s.doc_id in docs]
        task.n_samples = len({s.doc_id for s in task.samples})
    recompute_values(out)
    return out


def recompute_values(report: AccuracyReport) -> None:
    """Set every metric's value from the report's per-document results, as the gate computes it
    (stderrs dropped; an aggregation without per-document values keeps its reported value), and
    the document count."""
    for owner, source in [*report.tasks.items(), *report.groups.items()]:
        for key, metric in source.metrics.items():
            metric.stderr = None
            try:
                metric.value = recompute(report, f"{owner}/{key}")
            except (KeyError, ValueError, IndexError):
                continue
    report.documents = sum(t.n_samples for t in report.tasks.values())


def restrict(report: AccuracyReport, like: AccuracyReport) -> AccuracyReport:
    """The report on the documents another report of the same evaluation covers (each task's
    documents ``like`` has, in both): what `compress search` compares a candidate's partial
    evaluation with. The result says what it was cut from."""
    keep = {name: {s.doc_id for s in task.samples} for name, task in like.tasks.items()}
    out = only(report, keep)
    out.settings = {**report.settings, "limit": like.settings.get("limit"), "restricted_from": report.cache_key}
    return out
