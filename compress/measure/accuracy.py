"""Accuracy through lm-evaluation-harness, with per-sample results kept for paired tests.

Bundled tasks (``evals/`` in the repository, ``compress._evals`` when installed) are found
through lm-eval's include path; any task lm-eval knows works too.
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from compress.core import cache
from compress.core.artifact import weights_size
from compress.core.errors import CompressError, EngineError, UsageError
from compress.core.models import load_model, load_tokenizer, pick_device, resolve_dtype, resolve_model
from compress.core.recipe import EvalSpec
from compress.core.reports import AccuracyReport, ModelInfo
from compress.measure.lm_results import to_report
from compress.measure.tasks import bundled_tasks_hash, check_tasks, include_dirs, task_manager, tasks_hash


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
    s = spec.model_dump(mode="json", exclude={"traffic"})  # the traffic is its own report
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
    elif spec.backend == "llamacpp":
        from compress.measure.engines.llamacpp import engine_info as llamacpp_info

        info = llamacpp_info()
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
    # the engine's log, beside the report
    log_path = cache.report_path("accuracy", key).with_suffix(f".{settings.backend}.log")
    answers = None
    if requests_cache and settings.backend == "hf":
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
    from compress.build.methods.gguf import GGUF_FILE

    if settings.backend == "llamacpp":
        return evaluate_llamacpp(path, settings, log_path=log_path)
    if (Path(path) / GGUF_FILE).is_file():
        raise UsageError(f"{path} is a GGUF artifact: llama.cpp evaluates it",
                         hint="use --engine llamacpp (evals.backend: llamacpp), after `make llamacpp`")
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
                limit=settings.limit, task_manager=task_manager(include, settings.tasks), log_samples=True,
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

    from compress.measure.engines.vllm import VllmServer, engine_info, parallel_args
    from compress.measure.engines.vllm_log import last_meaningful_line

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


def evaluate_llamacpp(path: Path, settings: EvalSpec, *, log_path: Path) -> dict[str, Any]:
    """Run lm-eval's own ``gguf`` model against llama.cpp's server started on a GGUF artifact (any other model
    as llama.cpp's F16 conversion of it): each
    log-likelihood is one ``/v1/completions`` request (the text, ``echo`` with ``logprobs``), tokenized by
    llama.cpp from the tokenizer inside the GGUF file, exactly as ``lm_eval --model gguf
    --model_args base_url=URL`` asks it. Per-document results pair with the ``hf`` evaluation of the base.

    Raises:
        UsageError: a perplexity task (lm-eval's gguf model scores no rolling log-likelihoods).
        EngineError: the llama.cpp environment is missing, or the server cannot serve the file or stops
            answering.
    """
    import requests
    from lm_eval.models.gguf import GGUFLM

    from compress.measure.engines.llamacpp import LlamaCppServer, as_gguf

    with LlamaCppServer(as_gguf(path), log_path=log_path, logits_all=True) as server:
        lm = GGUFLM(base_url=server.url, max_length=server.max_model_len)
        try:
            results = evaluate_lm(lm, settings)
        except NotImplementedError:
            raise UsageError(f"lm-eval's gguf model scores no rolling log-likelihoods: a perplexity task among "
                             f"{', '.join(settings.tasks)} cannot run on llama.cpp",
                             hint="evaluate multiple-choice and generative tasks with --engine llamacpp") from None
        except (requests.RequestException, RuntimeError) as e:
            raise EngineError(f"llama.cpp failed to answer lm-eval ({type(e).__name__}: {e}): {server.log_tail()}",
                              hint=f"its log: {log_path}") from None
        results["engine"] = server.describe()
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


