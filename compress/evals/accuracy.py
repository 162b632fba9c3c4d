"""Accuracy through lm-evaluation-harness, with per-sample results kept for paired tests.

Bundled tasks (``evals/`` in the repository, ``compress._evals`` when installed) are found
through lm-eval's include path; any task lm-eval knows works too.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import os
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compress.artifact import weights_size
from compress.env import environment
from compress.errors import BackendMissingError, CompressError, UsageError
from compress.evals import cache
from compress.evals.reports import AccuracyReport, Metric, ModelInfo, Sample, TaskResult
from compress.models import load_model, load_tokenizer, pick_device, resolve_model
from compress.recipe import EvalSpec

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# How each per-sample metric aggregates over documents (lm-eval's names).
AGGREGATIONS = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
                "bits_per_byte": "bits_per_byte", "perplexity": "perplexity"}
UNITS = {"word_perplexity": "perplexity/word", "byte_perplexity": "perplexity/byte",
         "bits_per_byte": "bits/byte", "perplexity": "perplexity"}


def bundled_tasks_dir() -> Path:
    """The bundled lm-eval tasks: ``evals/`` in a checkout, ``compress/_evals`` when installed."""
    checkout = PACKAGE_ROOT.parent / "evals"
    if (checkout / "tiny_facts_mc.yaml").exists():
        return checkout
    return PACKAGE_ROOT / "_evals"


def bundled_tasks_hash() -> str:
    """Hash of the bundled task files, so that editing a task invalidates cached reports."""
    h = hashlib.sha256()
    root = bundled_tasks_dir()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in {".yaml", ".jsonl", ".py"} and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def model_info(path: Path, spec: str) -> ModelInfo:
    """Size, content hash and quantization format of a model directory."""
    import json

    quant = None
    config = Path(path) / "config.json"
    if config.exists():
        qc = json.loads(config.read_text()).get("quantization_config")
        if isinstance(qc, dict):
            quant = qc.get("quant_method") or qc.get("format") or "unknown"
    return ModelInfo(spec=spec, content_hash=cache.model_content_hash(path),
                     size_bytes=weights_size(Path(path)), quantization=quant)


@functools.lru_cache(maxsize=1)
def _task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(bundled_tasks_dir()))


@functools.lru_cache(maxsize=1)
def bundled_task_names() -> frozenset[str]:
    """The names of the bundled tasks, read from their YAML files (no lm-eval import)."""
    import re

    names = set()
    for p in bundled_tasks_dir().glob("*.yaml"):
        names.update(re.findall(r"^task:\s*([\w.-]+)\s*$", p.read_text(), flags=re.MULTILINE))
    return frozenset(names)


def check_tasks(tasks: list[str]) -> None:
    """Raise a UsageError for unknown task names, suggesting close ones.

    Bundled tasks are known without lm-eval's task index (which takes seconds to build).
    """
    if set(tasks) <= bundled_task_names():
        return
    known = set(_task_manager().all_tasks)
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean: {', '.join(close)}?" if close else \
                "bundled tasks: tiny_facts_mc, tiny_bios_ppl; `lm-eval ls tasks` lists the rest"
            raise UsageError(f"unknown eval task '{task}'", hint=hint)


def check_eval_settings(settings: EvalSpec) -> None:
    """Refuse settings that cannot produce a report, before any model is loaded or hashed:
    unknown tasks, and a limit that leaves no documents.

    Raises:
        UsageError: naming the task or the limit (exit 2).
    """
    if not settings.tasks:
        raise UsageError("no eval tasks given", hint="e.g. --tasks tiny_facts_mc,tiny_bios_ppl")
    if settings.limit is not None and settings.limit < 1:
        raise UsageError(f"--limit {settings.limit} leaves no documents to evaluate",
                         hint="give --limit N with N >= 1 (evals.limit in a recipe), or leave it out for every document")
    check_tasks(list(settings.tasks))


def eval_settings(spec: EvalSpec, dtype: str) -> dict[str, Any]:
    """The settings that change an accuracy report's numbers (part of its cache key)."""
    s = spec.model_dump(mode="json")
    s["dtype"] = dtype
    s["bundled_tasks"] = bundled_tasks_hash()
    return s


def run_eval(spec: str, settings: EvalSpec, *, dtype: str = "float32", revision: str | None = None,
             rerun: bool = False, trust_remote_code: bool = False,
             allow_pickle: bool = False) -> tuple[AccuracyReport, bool]:
    """Evaluate a model or artifact; reuse a cached report for the same bytes and settings.

    Args:
        spec: a model reference (see ``compress.models.resolve_model``) or artifact directory.
        settings: tasks, few-shot, limit, batch size, seed, back end.
        rerun: measure again even when a cached report exists.

    Returns:
        (report, whether it came from the cache)
    """
    check_eval_settings(settings)  # before the model is fetched, hashed or loaded
    ref = resolve_model(spec, revision)
    info = model_info(ref.path, spec)
    config = eval_settings(settings, dtype)
    key = cache.report_key("accuracy", info.content_hash, config)
    if not rerun and (hit := cache.load_cached("accuracy", key, AccuracyReport)) is not None:
        return hit, True
    start = time.time()
    results = _simple_evaluate(ref.path, settings, dtype, trust_remote_code, allow_pickle)
    report = to_report(results, info, config, key, time.time() - start)
    cache.store("accuracy", key, report)
    return report, False


def _simple_evaluate(path: Path, settings: EvalSpec, dtype: str, trust_remote_code: bool,
                     allow_pickle: bool) -> dict[str, Any]:
    if settings.backend == "vllm":
        return evaluate_lm(_vllm(path, settings, dtype), settings)
    device = pick_device(settings.device)
    model = load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                       allow_pickle=allow_pickle)
    return evaluate_model(model, load_tokenizer(path, trust_remote_code), settings, device)


def evaluate_model(model: Any, tokenizer: Any, settings: EvalSpec, device: str = "cpu") -> dict[str, Any]:
    """Run lm-eval on an in-memory transformers model; return lm-eval's result dictionary."""
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, device=device)
    return evaluate_lm(lm, settings)


def _quiet_lm_eval() -> None:
    """lm-eval warns about every custom dataset and in-memory model; keep its errors only."""
    logging.getLogger("lm_eval").setLevel(os.environ.get("COMPRESS_BACKEND_LOG", "ERROR").upper())


def evaluate_lm(lm: Any, settings: EvalSpec) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on an lm-eval model object, seeded, with samples logged."""
    import lm_eval
    import torch

    _quiet_lm_eval()
    check_tasks(settings.tasks)
    oom = CompressError(f"out of memory evaluating with batch size {settings.batch_size}",
                        hint="lower evals.batch_size (--batch-size)")
    try:
        with torch.inference_mode():
            results = lm_eval.simple_evaluate(
                model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot,
                limit=settings.limit, task_manager=_task_manager(), log_samples=True,
                random_seed=settings.seed, numpy_random_seed=settings.seed,
                torch_random_seed=settings.seed, fewshot_random_seed=settings.seed,
                verbosity=os.environ.get("COMPRESS_BACKEND_LOG", "ERROR").upper(),
            )
    except torch.OutOfMemoryError:
        raise oom from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
            raise oom from None
        raise
    if results is None:
        raise CompressError("lm-eval returned no results")
    return results


def _vllm(path: Path, settings: EvalSpec, dtype: str):
    try:
        from lm_eval.models.vllm_causallms import VLLM
        import vllm  # noqa: F401
    except ImportError:
        raise BackendMissingError("vllm", "vllm", "the vllm eval back end") from None
    return VLLM(pretrained=str(path), dtype="auto" if dtype == "auto" else dtype,
                batch_size=settings.batch_size, seed=settings.seed)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _sample(task_type: str | None, raw: dict[str, Any]) -> Sample:
    values = {m: _plain(raw[m]) for m in raw.get("metrics", []) if m in raw}
    sample = Sample(doc_id=int(raw["doc_id"]), doc_hash=raw.get("doc_hash"), target=_plain(raw.get("target")),
                    values=values)
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


def to_report(results: dict[str, Any], info: ModelInfo, settings: dict[str, Any], key: str,
              duration: float) -> AccuracyReport:
    """Turn lm-eval's result dictionary into a typed report."""
    tasks: dict[str, TaskResult] = {}
    for task, res in results["results"].items():
        if task not in results.get("samples", {}):
            continue  # a group's aggregate row; its subtasks are listed themselves
        cfg = results.get("configs", {}).get(task, {})
        hib = results.get("higher_is_better", {}).get(task, {})
        configured = {m.get("metric"): m for m in cfg.get("metric_list", []) or [] if isinstance(m, dict)}
        metrics: dict[str, Metric] = {}
        for name, value in res.items():
            metric, _, filt = name.partition(",")
            if metric.endswith("_stderr") or metric in ("alias", "name", "sample_len") or not filt:
                continue
            if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
                continue
            stderr = res.get(f"{metric}_stderr,{filt}")
            agg = configured.get(metric, {}).get("aggregation")
            metrics[metric] = Metric(
                value=float(value),
                stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                higher_is_better=bool(hib.get(metric, True)),
                aggregation=agg if isinstance(agg, str) else AGGREGATIONS.get(metric, "mean"),
                unit=UNITS.get(metric, "fraction" if metric.startswith("acc") else ""),
            )
        samples = [_sample(cfg.get("output_type"), s) for s in results["samples"][task]]
        samples.sort(key=lambda s: s.doc_id)
        version = results.get("versions", {}).get(task)
        tasks[task] = TaskResult(
            task=task, version=None if version is None else str(version), output_type=cfg.get("output_type"),
            num_fewshot=int(results.get("n-shot", {}).get(task, 0) or 0), n_samples=len(samples),
            metrics=metrics, samples=samples,
        )
    import torch

    return AccuracyReport(model=info, settings=settings, tasks=tasks, environment=environment(torch),
                          created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          duration_s=round(duration, 3), cache_key=key)


def aggregate(metric: Metric, values: list[Any]) -> float:
    """Recompute a metric from per-sample values (used by the paired bootstrap)."""
    if metric.aggregation == "weighted_perplexity":
        ll = sum(v[0] for v in values)
        n = sum(v[1] for v in values)
        return math.exp(-ll / n)
    if metric.aggregation == "bits_per_byte":
        ll = sum(v[0] for v in values)
        n = sum(v[1] for v in values)
        return -ll / n / math.log(2)
    if metric.aggregation == "perplexity":
        return math.exp(-sum(values) / len(values))
    return sum(float(v) for v in values) / len(values)

