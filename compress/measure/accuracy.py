"""Accuracy through lm-evaluation-harness, with per-sample results kept for paired tests.

Bundled tasks (``evals/`` in the repository, ``compress._evals`` when installed) are found
through lm-eval's include path; any task lm-eval knows works too.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compress.core.artifact import weights_size
from compress.core.env import PACKAGE, environment
from compress.core.errors import CompressError, EngineError, UsageError
from compress.core import cache
from compress.core.reports import AccuracyReport, GroupMetric, GroupResult, Metric, ModelInfo, Sample, TaskResult
from compress.core.models import load_model, load_tokenizer, pick_device, resolve_dtype, resolve_model
from compress.core.recipe import EvalSpec


# How each per-sample metric aggregates over documents (lm-eval's names).
AGGREGATION_OF = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
                "bits_per_byte": "bits_per_byte", "perplexity": "perplexity"}
UNITS = {"word_perplexity": "perplexity/word", "byte_perplexity": "perplexity/byte",
         "bits_per_byte": "bits/byte", "perplexity": "perplexity"}
FRACTIONS = {"exact_match", "token_f1", "f1", "em"}


def bundled_tasks_dir() -> Path:
    """The bundled lm-eval tasks: ``evals/`` in a checkout, ``compress/_evals`` when installed."""
    checkout = PACKAGE.parent / "evals"
    if (checkout / "tiny_facts_mc.yaml").exists():
        return checkout
    return PACKAGE / "_evals"


def tasks_hash(root: Path) -> str:
    """Hash of the task files under a folder, so that editing a task invalidates cached reports."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and p.suffix in {".yaml", ".yml", ".jsonl", ".json", ".py", ".jinja"} and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def bundled_tasks_hash() -> str:
    return tasks_hash(bundled_tasks_dir())


def include_dirs(settings: EvalSpec) -> tuple[str, ...]:
    """The extra task folders as absolute paths (given relative to the current directory).

    Raises:
        UsageError: a folder that does not exist.
    """
    out = []
    for entry in settings.include_path:
        path = Path(entry).expanduser()
        if not path.is_dir():
            raise UsageError(f"include path {entry} is not a folder",
                             hint="give a folder of lm-eval task YAML files (relative to the current directory)")
        out.append(str(path.resolve()))
    return tuple(out)


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


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...] = ()):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(bundled_tasks_dir()), *include_path])


@functools.lru_cache(maxsize=1)
def bundled_task_names() -> frozenset[str]:
    """The names of the bundled tasks and groups, read from their YAML files (no lm-eval import)."""
    names = set()
    for p in bundled_tasks_dir().glob("*.yaml"):
        names.update(re.findall(r"^(?:task|group):\s*([\w.-]+)\s*$", p.read_text(), flags=re.MULTILINE))
    return frozenset(names)


def check_tasks(tasks: list[str], include_path: tuple[str, ...] = ()) -> None:
    """Raise a UsageError for unknown task names, suggesting close ones.

    Bundled tasks are known without lm-eval's task index (which takes seconds to build).
    """
    if set(tasks) <= bundled_task_names():
        return
    known = set(_task_manager(include_path).all_tasks)
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean: {', '.join(close)}?" if close else \
                f"bundled: {', '.join(sorted(bundled_task_names()))}; `lm-eval ls tasks` lists the rest"
            raise UsageError(f"unknown eval task '{task}'", hint=hint)


def check_eval_settings(settings: EvalSpec) -> None:
    """Refuse settings that cannot produce a report, before any model is loaded or hashed:
    no tasks, unknown tasks, an include path that is not a folder. (A limit that leaves no
    documents is refused by ``EvalSpec`` itself.)

    Raises:
        UsageError: naming the task or the limit (exit 2).
    """
    if not settings.tasks:
        raise UsageError("no eval tasks given", hint="e.g. --tasks tiny_facts_mc,tiny_bios_ppl")
    check_tasks(list(settings.tasks), include_dirs(settings))


def eval_settings(spec: EvalSpec, dtype: str) -> dict[str, Any]:
    """The settings that change an accuracy report's numbers (part of its cache key)."""
    s = spec.model_dump(mode="json")
    # Where the weights sit changes no figure; the defaults stay out so that keys stay as they were.
    for name, default in (("device_map", None), ("tensor_parallel", 1), ("data_parallel", 1)):
        if s[name] == default:
            del s[name]
    s["dtype"] = dtype
    s["bundled_tasks"] = bundled_tasks_hash()
    # The included tasks by content, not by where they lie on this machine.
    s["include_path"] = [tasks_hash(Path(p)) for p in include_dirs(spec)]
    if spec.backend == "vllm":  # another engine build may score differently: its own cache entry
        from compress.measure.engines.vllm import engine_info

        info = engine_info()
        s["engine"] = f"{info['package']} {info['version']}"
    return s


def run_eval(spec: str, settings: EvalSpec, *, dtype: str = "auto", revision: str | None = None,
             rerun: bool = False, trust_remote_code: bool = False,
             allow_pickle: bool = False, requests_cache: bool = False) -> tuple[AccuracyReport, bool]:
    """Evaluate a model or artifact; reuse a cached report for the same bytes and settings.

    Args:
        spec: a model reference (see ``compress.core.models.resolve_model``) or artifact directory.
        settings: tasks, few-shot, limit, batch size, seed, back end.
        rerun: measure again even when a cached report exists.
        requests_cache: keep each request's answer (lm-eval's request cache, one sqlite file per
            model and settings but the limit, under ``<cache>/requests/``), so that evaluating
            more documents later computes only the new ones (`compress search`'s looks).
            transformers back end only.

    Returns:
        (report, whether it came from the cache)
    """
    check_eval_settings(settings)  # before the model is fetched, hashed or loaded
    ref = resolve_model(spec, revision)
    info = model_info(ref.path, spec)
    dtype = resolve_dtype(ref.path, dtype)  # auto: the checkpoint's own, named in the report and its key
    config = eval_settings(settings, dtype)
    key = cache.report_key("accuracy", info.content_hash, config)
    if not rerun and (hit := cache.load_cached("accuracy", key, AccuracyReport)) is not None:
        return hit, True
    start = time.time()
    log_path = cache.report_path("accuracy", key).with_suffix(".vllm.log")  # the engine's, beside the report
    answers = None
    if requests_cache and settings.backend != "vllm":
        answers = cache.cache_root() / "requests" / cache.report_key(
            "requests", info.content_hash, {**config, "limit": None, "device": pick_device(settings.device)})
        answers.parent.mkdir(parents=True, exist_ok=True)
    results = _simple_evaluate(ref.path, settings, dtype, trust_remote_code, allow_pickle, log_path, answers)
    report = to_report(results, info, config, key, time.time() - start, include_dirs(settings))
    cache.store("accuracy", key, report)
    return report, False


def cached_eval(spec: str, settings: EvalSpec, *, dtype: str = "auto", revision: str | None = None) -> AccuracyReport | None:
    """The report `run_eval` would reuse for these bytes and settings, or None (nothing run)."""
    ref = resolve_model(spec, revision)
    info = model_info(ref.path, spec)
    config = eval_settings(settings, resolve_dtype(ref.path, dtype))
    return cache.load_cached("accuracy", cache.report_key("accuracy", info.content_hash, config), AccuracyReport)


def _simple_evaluate(path: Path, settings: EvalSpec, dtype: str, trust_remote_code: bool,
                     allow_pickle: bool, log_path: Path, answers: Path | None = None) -> dict[str, Any]:
    if settings.backend == "vllm":
        return evaluate_served(path, settings, dtype, log_path=log_path, trust_remote_code=trust_remote_code)
    device = pick_device(settings.device)
    if settings.device_map is None:
        model = load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle)
        return evaluate_model(model, load_tokenizer(path, trust_remote_code), settings, device, answers)
    # accelerate places the layers over the GPUs, CPU memory and, past them, a scratch folder.
    with tempfile.TemporaryDirectory(prefix="compress-offload-") as offload:
        model = load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle, device_map=settings.device_map, offload_folder=offload)
        return evaluate_model(model, load_tokenizer(path, trust_remote_code), settings, device, answers)


def evaluate_model(model: Any, tokenizer: Any, settings: EvalSpec, device: str = "cpu",
                   answers: Path | None = None) -> dict[str, Any]:
    """Run lm-eval on an in-memory transformers model; return lm-eval's result dictionary
    (with ``answers``, lm-eval's request cache at that path prefix)."""
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()
    if settings.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise UsageError("apply_chat_template is set but the model's tokenizer has no chat template",
                         hint="drop evals.apply_chat_template, or add a chat_template.jinja to the model's folder")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, device=device)
    return evaluate_lm(lm, settings, answers)


def _quiet_lm_eval() -> None:
    """lm-eval warns about every custom dataset and in-memory model; keep its errors only."""
    logging.getLogger("lm_eval").setLevel(os.environ.get("COMPRESS_BACKEND_LOG", "ERROR").upper())


def evaluate_lm(lm: Any, settings: EvalSpec, answers: Path | None = None) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on an lm-eval model object, seeded, with samples logged
    (with ``answers``, through lm-eval's request cache at that path prefix)."""
    import lm_eval
    import torch

    _quiet_lm_eval()
    include = include_dirs(settings)
    check_tasks(settings.tasks, include)
    oom = CompressError(f"out of memory evaluating with batch size {settings.batch_size}",
                        hint="lower evals.batch_size (--batch-size)")
    try:
        with torch.inference_mode():
            results = lm_eval.simple_evaluate(
                model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot,
                limit=settings.limit, task_manager=_task_manager(include), log_samples=True,
                apply_chat_template=settings.apply_chat_template,
                fewshot_as_multiturn=settings.fewshot_as_multiturn,
                system_instruction=settings.system_instruction, gen_kwargs=settings.gen_kwargs,
                random_seed=settings.seed, numpy_random_seed=settings.seed,
                torch_random_seed=settings.seed, fewshot_random_seed=settings.seed,
                verbosity=os.environ.get("COMPRESS_BACKEND_LOG", "ERROR").upper(),
                use_cache=str(answers) if answers is not None else None,
            )
    except torch.OutOfMemoryError:
        raise oom from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
            raise oom from None
        raise
    if results is None:
        raise CompressError("lm-eval returned no results")
    with torch.inference_mode():
        answer_logprobs(lm, results)
    return results


def answer_logprobs(lm: Any, results: dict[str, Any]) -> None:
    """Record, on each logged sample of a generative task, the mean log-probability per token of
    the answer the model generated, given the prompt it was asked (one batched loglikelihood
    pass): the model's confidence in its answer, which a cascade routes on."""
    from lm_eval.api.instance import Instance

    todo = []
    for task, samples in (results.get("samples") or {}).items():
        if results.get("configs", {}).get(task, {}).get("output_type") != "generate_until":
            continue
        for raw in samples:
            try:
                context, answer = raw["arguments"][0][0], raw["resps"][0][0]
            except (KeyError, IndexError, TypeError):
                continue
            if isinstance(context, str) and isinstance(answer, str) and answer.strip():
                todo.append((raw, context, answer))
    if not todo or not hasattr(lm, "_encode_pair"):
        return
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(c, a), idx=0) for _, c, a in todo]
    for (raw, context, answer), (ll, _) in zip(todo, lm.loglikelihood(requests, disable_tqdm=True)):
        tokens = len(lm._encode_pair(context, answer)[1])
        raw["answer_logprob"] = float(ll) / max(1, tokens)


def evaluate_served(path: Path, settings: EvalSpec, dtype: str, *, log_path: Path,
                    trust_remote_code: bool = False) -> dict[str, Any]:
    """Run lm-eval against a vLLM server started on ``path`` from the engine environment.

    The compression environment never imports vLLM: the server is a managed process
    (``compress.measure.engines.vllm.VllmServer``) and lm-eval's ``local-completions`` model asks it
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

    from compress.measure.engines.vllm import VllmServer, engine_info, last_meaningful_line, parallel_args

    with contextlib.ExitStack() as stack:
        server = VllmServer(path, dtype=dtype, log_path=log_path,
                            extra_args=parallel_args(settings.tensor_parallel, settings.data_parallel))
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
    entry = _task_manager(include_path).task_index.get(group)
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
