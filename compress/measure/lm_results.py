"""lm-evaluation-harness's results as a typed accuracy report: every task's and group's metrics with
their units and aggregation, and every document's sample (its prompt hash, target, values and answer)
so that the gate can pair a baseline and a candidate document by document.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from compress.core.env import environment
from compress.core.reports import (
    AccuracyReport,
    GroupMetric,
    GroupResult,
    Metric,
    ModelInfo,
    Sample,
    TaskResult,
)
from compress.measure.tasks import task_manager

# How each per-sample metric aggregates over documents (lm-eval's names).
AGGREGATION_OF = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
                "bits_per_byte": "bits_per_byte", "perplexity": "perplexity"}
UNITS = {"word_perplexity": "perplexity/word", "byte_perplexity": "perplexity/byte",
         "bits_per_byte": "bits/byte", "perplexity": "perplexity"}
FRACTIONS = {"exact_match", "token_f1", "f1", "em"}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def prompt_hash(arguments: Any) -> str:
    """sha256 (16 hex digits) of every request a document made: contexts with their few-shot
    examples, chat template and system instruction applied, continuations, generation settings."""
    text = json.dumps(_plain(arguments), sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sample(task_type: str | None, raw: dict[str, Any]) -> Sample:
    values = {m: _plain(raw[m]) for m in raw.get("metrics", []) if m in raw}
    sample = Sample(doc_id=int(raw["doc_id"]), filter=str(raw.get("filter") or "none"), doc_hash=raw.get("doc_hash"),
                    prompt_hash=prompt_hash(raw["arguments"]) if "arguments" in raw else None,
                    target=_plain(raw.get("target")), values=values, answer_logprob=raw.get("answer_logprob"))
    resps = raw.get("filtered_resps")
    if task_type == "multiple_choice" and resps:
        lls = [float(r[0]) for r in resps]
        sample.loglikelihoods = lls
        sample.answer = max(range(len(lls)), key=lambda i: lls[i])
        if "acc" in values:
            sample.correct = bool(values["acc"])
    elif task_type == "loglikelihood_rolling" and resps:
        sample.answer = float(resps[0])
    elif resps:
        sample.answer = _plain(resps[0])
        if "exact_match" in values:
            sample.correct = bool(values["exact_match"])
    return sample


def _figures(res: dict[str, Any]):
    """lm-eval's reported figures of one task or group: (``METRIC,FILTER``, metric, filter, value),
    leaving out stderrs, names and counts."""
    for key, value in res.items():
        metric, _, filt = key.partition(",")
        if filt and not metric.endswith("_stderr") and _number(value) is not None:
            yield key, metric, filt, value


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    return None


def _task_result(task: str, res: dict[str, Any], results: dict[str, Any]) -> TaskResult:
    cfg = results.get("configs", {}).get(task, {})
    hib = results.get("higher_is_better", {}).get(task, {})
    configured = {}
    for m in cfg.get("metric_list", []) or []:
        if isinstance(m, dict):  # a `!function` metric is logged under its function's name
            name = m.get("metric")
            source = re.match(r"\s*def (\w+)\(", name) if isinstance(name, str) else None
            configured[getattr(name, "__name__", None) or (source.group(1) if source else str(name))] = m
    metrics: dict[str, Metric] = {}
    for key, metric, filt, value in _figures(res):
        agg = configured.get(metric, {}).get("aggregation")
        metrics[key] = Metric(
            value=float(value), stderr=_number(res.get(f"{metric}_stderr,{filt}")),
            higher_is_better=bool(hib.get(metric, True)),
            aggregation=agg if isinstance(agg, str) else AGGREGATION_OF.get(metric, "mean"),
            unit=UNITS.get(metric, "fraction" if metric.startswith("acc") or metric in FRACTIONS else ""),
        )
    samples = sorted((_sample(cfg.get("output_type"), s) for s in results["samples"][task]),
                     key=lambda s: (s.filter, s.doc_id))
    filters = sorted({s.filter for s in samples}) or ["none"]
    version = results.get("versions", {}).get(task)
    return TaskResult(task=task, version=None if version is None else str(version), output_type=cfg.get("output_type"),
                      num_fewshot=int(results.get("n-shot", {}).get(task, 0) or 0),
                      n_samples=len({s.doc_id for s in samples}), filters=filters, metrics=metrics, samples=samples)


def _leaf_tasks(name: str, subtasks: dict[str, list[str]]) -> list[str]:
    out = []
    for child in subtasks.get(name, []):
        out += _leaf_tasks(child, subtasks) if child in subtasks else [child]
    return out


def _group_result(group: str, res: dict[str, Any], results: dict[str, Any], tasks: dict[str, TaskResult],
                  include_path: tuple[str, ...]) -> GroupResult:
    """A group's aggregates, with the weighting its own config asks for (lm-eval's rule: a
    metric's first ``aggregate_metric_list`` entry whose filters include it)."""
    entry = task_manager(include_path, [group]).task_index.get(group)
    config = (entry.cfg or {}) if entry is not None else {}
    agg_list = config.get("aggregate_metric_list") or []
    agg_list = [agg_list] if isinstance(agg_list, dict) else agg_list
    subtasks = _leaf_tasks(group, results.get("group_subtasks", {}))
    metrics: dict[str, GroupMetric] = {}
    for key, metric, filt, value in _figures(res):
        agg = next((a for a in agg_list if a.get("metric") == metric
                    and (a.get("filter_list") is None or filt in ([a["filter_list"]] if isinstance(a["filter_list"], str)
                                                                  else a["filter_list"]))), None)
        if agg is None or agg.get("aggregation", "mean") != "mean":
            continue  # an aggregate compress cannot recompute from documents is not offered to the gate
        unit = next((tasks[t].metrics[key].unit for t in subtasks if t in tasks and key in tasks[t].metrics), "")
        metrics[key] = GroupMetric(value=float(value), stderr=_number(res.get(f"{metric}_stderr,{filt}")),
                                   higher_is_better=bool(results.get("higher_is_better", {}).get(group, {}).get(metric, True)),
                                   weight_by_size=bool(agg.get("weight_by_size", True)), unit=unit)
    return GroupResult(group=group, subtasks=subtasks, metrics=metrics)


def to_report(results: dict[str, Any], info: ModelInfo, settings: dict[str, Any], key: str,
              duration: float, include_path: tuple[str, ...] = ()) -> AccuracyReport:
    """Turn lm-eval's result dictionary into a typed report: every task's metrics per filter,
    its documents' results per filter, and every group's aggregates."""
    tasks = {task: _task_result(task, res, results) for task, res in results["results"].items()
             if task in results.get("samples", {})}
    groups = {group: _group_result(group, res, results, tasks, include_path)
              for group, res in (results.get("groups") or {}).items()}
    import torch

    env = environment(torch)
    if results.get("engine"):  # measured on a served engine: which one, which version
        env["engine"] = results["engine"]
    documents = sum(t.n_samples for t in tasks.values())
    return AccuracyReport(model=info, settings=settings, tasks=tasks, groups=groups, environment=env,
                          created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          duration_s=round(duration, 3), documents=documents,
                          documents_per_s=round(documents / duration, 2) if duration > 0 else None, cache_key=key)
