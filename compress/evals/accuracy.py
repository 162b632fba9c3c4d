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
from compress.errors import CompressError, EngineError, UsageError
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
    if spec.backend == "vllm":  # another engine build may score differently: its own cache entry
        from compress.engines.vllm import engine_info

        info = engine_info()
        s["engine"] = f"{info['package']} {info['version']}"
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
    log_path = cache.report_path("accuracy", key).with_suffix(".vllm.log")  # the engine's, beside the report
    results = _simple_evaluate(ref.path, settings, dtype, trust_remote_code, allow_pickle, log_path)
    report = to_report(results, info, config, key, time.time() - start)
    cache.store("accuracy", key, report)
    return report, False


def _simple_evaluate(path: Path, settings: EvalSpec, dtype: str, trust_remote_code: bool,
                     allow_pickle: bool, log_path: Path) -> dict[str, Any]:
    if settings.backend == "vllm":
        return evaluate_served(path, settings, dtype, log_path=log_path, trust_remote_code=trust_remote_code)
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


def evaluate_served(path: Path, settings: EvalSpec, dtype: str, *, log_path: Path,
                    trust_remote_code: bool = False) -> dict[str, Any]:
    """Run lm-eval against a vLLM server started on ``path`` from the engine environment.

    The compression environment never imports vLLM: the server is a managed process
    (``compress.engines.vllm.VllmServer``) and lm-eval's ``local-completions`` model asks it
    for log-probabilities over HTTP (``/v1/completions``, ``echo`` with ``logprobs``). Requests
    are token ids from the model's own tokenizer, so documents are split and scored as the
    ``hf`` back end scores them and the per-document results pair one to one.

    Args:
        path: the model or artifact directory.
        settings: tasks, few-shot, limit, seed; ``batch_size`` prompts go in one request.
        dtype: vLLM's ``--dtype``. The CPU int4 kernel needs ``bfloat16``. The embedded
            float32 model served in ``float32`` gave ``hf``'s log-likelihoods within 3e-5
            (in ``bfloat16``: within 0.3, the same answers).
        log_path: where the server's log goes (kept: its last lines name a failure).

    Returns:
        lm-eval's result dictionary, with ``"engine"``: name, package, version, dtype, kernels.

    Raises:
        EngineError: the engine environment is missing, the server cannot serve the model
            (the engine's own reason) or stops answering.
    """
    import asyncio
    import contextlib

    import aiohttp

    from compress.engines.vllm import VllmServer, engine_info, last_meaningful_line

    with contextlib.ExitStack() as stack:
        server = VllmServer(path, dtype=dtype, log_path=log_path)
        try:
            stack.enter_context(server)
        except EngineError:
            if not server.proc:  # no engine environment: its message says `make engine`
                raise
            reason = last_meaningful_line(server.log_text())
            hint = f"its log: {log_path}"
            if "not implemented for 'Float'" in reason:
                hint = f"the engine's CPU kernel for this format has no float32 path: use --dtype bfloat16; {hint}"
            raise EngineError(f"vLLM cannot serve {path.name}: {reason}", hint=hint) from None
        lm = served_lm(server, path, settings, trust_remote_code)
        try:
            results = evaluate_lm(lm, settings)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise EngineError(f"vLLM failed to answer lm-eval ({type(e).__name__}: {e}): {server.log_tail()}",
                              hint=f"its log: {log_path}") from None
        served = {"name": "vllm", "package": engine_info(server.python.parent.parent)["package"],
                  "version": server.version, "dtype": dtype, "max_model_len": server.max_model_len,
                  "kernels": server.kernels, "start_s": round(server.start_seconds or 0.0, 3)}
    results["engine"] = served
    return results


def served_lm(server: Any, path: Path, settings: EvalSpec, trust_remote_code: bool = False) -> Any:
    """lm-eval's ``local-completions`` model for a started :class:`VllmServer`.

    ``max_length`` is the server's context length: lm-eval sends at most ``max_length - 1``
    tokens and vLLM adds the one token it must generate. (Rolling windows are therefore two
    tokens shorter than ``hf``'s; only documents longer than the context notice.)
    """
    _quiet_lm_eval()
    return _local_completions()(
        base_url=f"{server.url}/v1/completions", model=server.served_model_name,
        tokenizer_backend="huggingface", tokenizer=str(path), tokenized_requests=True,
        # Encode as HFLM does (its add_bos_token unset): with the tokenizer's own special
        # tokens, so a BOS the tokenizer adds is in both back ends' requests and scores.
        add_bos_token=True,
        trust_remote_code=trust_remote_code, batch_size=settings.batch_size,
        # Two requests in flight keep the engine busy while lm-eval parses the last answer;
        # aiohttp (the concurrent path) also ignores proxy variables, as a local server needs.
        num_concurrent=2, max_retries=1, max_length=server.max_model_len, seed=settings.seed,
        timeout=600,
    )


@functools.lru_cache(maxsize=1)
def _local_completions() -> type:
    """``LocalCompletionsAPI`` scoring all rolling windows of all documents in one batched
    pass, as HFLM does; lm-eval's own sends one document at a time (one round trip and one
    progress bar each). The windows and their scores are the same."""
    from lm_eval import utils
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class BatchedRolling(LocalCompletionsAPI):
        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            strings = [req.args[0] for req in requests]
            windows, owner = [], []
            for i, string in enumerate(strings):
                for window in utils.get_rolling_token_windows(
                        token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length - 1, context_len=1):
                    windows.append((None, *utils.make_disjoint_window(window)))
                    owner.append(i)
            totals = [0.0] * len(strings)
            for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows), strict=True):
                totals[i] += ll
            for string, total in zip(strings, totals):
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            return totals

    return BatchedRolling


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

    env = environment(torch)
    if results.get("engine"):  # measured on a served engine: which one, which version
        env["engine"] = results["engine"]
    return AccuracyReport(model=info, settings=settings, tasks=tasks, environment=env,
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

