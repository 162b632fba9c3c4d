"""Generation benchmark: TTFT, inter-token and end-to-end latency, throughput, memory, cost.

Two runtimes measure a model:

- ``hf``: transformers ``generate`` in a worker process that holds the model, so that peak
  memory belongs to that model alone (process RSS on the CPU, the CUDA allocator's peak on a
  GPU). A level is a batch size: ``repeats`` calls of ``level`` sequences, one after another.
- ``vllm``: the model served by vLLM from the engine environment (`make engine`), driven
  through the OpenAI-compatible streaming API (:mod:`compress.measure.engines.client`). A level is a
  concurrency: ``max(repeats, level)`` requests with at most ``level`` in flight. Peak memory
  is the RSS of the server's whole process group. ``endpoint`` is the same client against a
  server someone else started.

Every figure is measured in ``rounds`` rounds. A baseline and a candidate are measured in the
same time window: both are started, then each round measures both, the baseline first in
even rounds and the candidate first in odd ones, so that a busy moment of the machine falls
on both sides. Every request of every round is kept; ratios and their intervals come from
resampling rounds (:mod:`compress.measure.compare`). A cached figure of one model never becomes
the other side of a ratio: a pair is cached only as a pair.

Method per level and round: seeded random prompts of exactly ``prompt_tokens`` tokens
(special tokens excluded, new prompts each round, the same for both models); greedy
generation forced to exactly ``output_tokens`` new tokens; ``warmup`` untimed calls before the
first round.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compress.core import cache
from compress.core.errors import UsageError
from compress.core.recipe import BenchSpec
from compress.core.reports import (
    BatchResult,
    BenchReport,
    LevelRun,
    Measured,
    ModelInfo,
    SpeedReport,
    Spread,
    summarize,
)
from compress.measure.openloop import GoodputSearch, start_rate, steady_span, summarize_rate, summarize_rates
from compress.measure.sides import HfSide, ServedSide, Side

SIDES = ("baseline", "candidate")


# ------------------------------------------------------------------------ summaries

def spread(runs: list[LevelRun], confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Spread:
    """Output tokens per second over rounds: pooled, and a bootstrap interval resampling rounds."""
    tokens = np.array([r.output_tokens for r in runs], dtype=float)
    wall = np.array([r.wall_s for r in runs], dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(runs), size=(resamples, len(runs)))
    rates = tokens[idx].sum(1) / wall[idx].sum(1)
    lo, hi = np.quantile(rates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Spread(value=float(tokens.sum() / wall.sum()), lower=float(lo), upper=float(hi), confidence=confidence,
                  rounds=len(runs))


def summarize_level(runs: list[LevelRun], level: int, settings: BenchSpec) -> BatchResult:
    """One level's figures, every round pooled."""
    reqs = [q for r in runs for q in r.requests]
    ttft = [q.ttft_s for q in reqs]
    e2e = [q.e2e_s for q in reqs]
    itl = [d for q in reqs for d in q.inter_token_s] or [0.0]
    n_out = settings.output_tokens
    n_in = settings.prompt_tokens
    if settings.workload is not None:  # lengths vary: the level's means
        n_out = round(sum(q.output_tokens for q in reqs) / len(reqs))
        n_in = round(sum(q.prompt_tokens for q in reqs) / len(reqs))
    prefill_tps = level * n_in / (sum(ttft) / len(ttft))
    decode_time = sum(q.e2e_s - q.ttft_s for q in reqs) / len(reqs)
    decode_tps = level * (n_out - 1) / decode_time if n_out > 1 and decode_time > 0 else 0.0
    sp = spread(runs)
    cost = settings.price_per_hour / 3600.0 / sp.value * 1e6
    meets = None
    if settings.slo is not None and (settings.slo.ttft_p99_ms or settings.slo.itl_p99_ms):
        t_ok = settings.slo.ttft_p99_ms is None or summarize(ttft).p99 * 1e3 <= settings.slo.ttft_p99_ms
        i_ok = settings.slo.itl_p99_ms is None or summarize(itl).p99 * 1e3 <= settings.slo.itl_p99_ms
        meets = bool(t_ok and i_ok)
    served = settings.workload is not None or any(q.concurrency == level and q.output_tokens == n_out for q in reqs)
    return BatchResult(batch_size=level, prompt_tokens=n_in, output_tokens=n_out, ttft=summarize(ttft),
                       itl=summarize(itl), e2e=summarize(e2e), prefill_tokens_per_s=prefill_tps,
                       decode_tokens_per_s=decode_tps, output_tokens_per_s=sp.value, cost_per_mtok_usd=cost,
                       requests_per_s=len(reqs) / sum(r.wall_s for r in runs) if served else None,
                       output_tokens_per_s_spread=sp, meets_slo=meets)


def measured(info: ModelInfo, side: Side, runs: list[LevelRun], end: dict[str, Any], settings: BenchSpec,
             rate_runs: list[LevelRun] | None = None, search: GoodputSearch | None = None) -> Measured:
    batches = [summarize_level([r for r in runs if r.level == level], level, settings) for level in settings.batch_sizes]
    slo = None
    if settings.slo is not None and (settings.slo.ttft_p99_ms or settings.slo.itl_p99_ms):
        slo = max((b.output_tokens_per_s for b in batches if b.meets_slo), default=0.0)
    rates = summarize_rates(rate_runs, settings) if rate_runs else []
    goodput = search.result(settings.slo.request_bounds(), rates) if search is not None else None
    return Measured(model=info, runtime=side.runtime, device=end["device"], size_bytes=info.size_bytes,
                    peak_memory_bytes=end["peak_memory_bytes"], memory_kind=end["memory_kind"],
                    model_memory_bytes=end["model_memory_bytes"], runs=runs, batches=batches,
                    slo_output_tokens_per_s=slo, rate_runs=rate_runs or [], rates=rates, goodput=goodput)


# --------------------------------------------------------------------------- driving

DRAFT_TOKENS = 4  # tokens the draft proposes per step in vLLM's draft-model speculative decoding


def make_side(path: Path, settings: BenchSpec, *, dtype: str, log_path: Path | None = None,
              endpoint: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False,
              draft: Path | None = None, serve: Any = None) -> Side:
    """The side that measures ``path`` with the settings' engine (or an already running endpoint).
    ``dtype`` ``auto`` is each model's own checkpoint dtype. ``draft``: vLLM serves ``path`` with
    that model as its speculative-decoding draft. ``serve``: the recipe's serving settings for this side
    (a ``compress.core.recipe.ServeSpec``: its ``engine_args()`` are vLLM's flags); without them prefix caching
    is off, so that a shared prefix never hides prefill."""
    from compress.core.models import resolve_dtype

    dtype = resolve_dtype(path, dtype)
    if endpoint:
        return ServedSide(path, settings, url=endpoint)
    if settings.engine == "vllm":
        from compress.measure.engines.vllm import VllmServer, parallel_args

        # Without serving settings no cache may hide prefill: prefix caching is a lever a recipe turns on.
        levers = list(serve.engine_args()) if serve is not None else []
        caching = {"--enable-prefix-caching", "--no-enable-prefix-caching"}
        extra = ([] if caching & set(levers) else ["--no-enable-prefix-caching"]) + levers \
            + parallel_args(settings.tensor_parallel, settings.data_parallel)
        if settings.kv_cache_dtype != "auto" and "--kv-cache-dtype" not in levers:
            extra += ["--kv-cache-dtype", settings.kv_cache_dtype]
        if draft is not None:
            extra += ["--speculative-config", json.dumps({"method": "draft_model", "model": str(draft),
                                                          "num_speculative_tokens": DRAFT_TOKENS})]
        dt = dtype if settings.engine_dtype == "auto" else settings.engine_dtype
        server = VllmServer(path, log_path=log_path or Path(tempfile.mkdtemp(prefix="compress-vllm-")) / "vllm.log",
                            dtype=dt, kv_cache_gib=settings.kv_cache_gib, extra_args=extra,
                            max_model_len=None, startup_timeout=settings.start_timeout_s,
                            label=log_path.name.removesuffix("-vllm.log") if log_path else None)
        return ServedSide(path, settings, server=server)
    if settings.engine == "llamacpp":
        from compress.measure.engines.llamacpp import LlamaCppServer, as_gguf

        server = LlamaCppServer(as_gguf(path), startup_timeout=settings.start_timeout_s,
                                log_path=log_path or Path(tempfile.mkdtemp(prefix="compress-llamacpp-")) / "llamacpp.log",
                                label=log_path.name.removesuffix("-llamacpp.log") if log_path else None)
        return ServedSide(path, settings, server=server)
    return HfSide(path, settings, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


START_ORDER_ENV = "COMPRESS_ENGINE_START"  # parallel or sequential
# Servers start side by side: on 2 cores the speed recipe's run took 332 s cold and 258 s warm so, against
# 363 s and 277 s one after the other (scripts/cold_start.py; a start spends much of its time in single-threaded
# imports, and the two models compile different graphs anyway).
DEFAULT_START_ORDER = "parallel"


def _start_all(sides: list[Side]) -> None:
    """Start every side: servers side by side by default (``$COMPRESS_ENGINE_START=sequential`` starts them one
    after the other), transformers workers always side by side."""
    order = os.environ.get(START_ORDER_ENV, DEFAULT_START_ORDER).strip().lower() or DEFAULT_START_ORDER
    if order not in ("sequential", "parallel"):
        raise UsageError(f"${START_ORDER_ENV} is {order!r}", hint="set it to sequential or parallel, or unset it")
    for s in sides:  # transformers workers load side by side, whatever the order (nothing compiles there)
        if isinstance(s, HfSide):
            s.launch()
    if order == "sequential" or len(sides) == 1 or \
            not all(isinstance(s, ServedSide) and s.server is not None for s in sides):
        for s in sides:
            s.start()
        return
    errors: list[BaseException] = []

    def go(s: Side) -> None:
        try:
            s.start()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(s,), daemon=True) for s in sides]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def rotated(names: list[str], k: int) -> list[str]:
    """The order of round ``k``: each side goes first in turn (two sides alternate)."""
    k %= max(len(names), 1)
    return names[k:] + names[:k]


def interleave(sides: dict[str, Side], rounds: int, log: Callable[[str], None] | None = None) -> dict[str, list[LevelRun]]:
    """Measure every side in every round, alternating which goes first."""
    names = list(sides)
    runs: dict[str, list[LevelRun]] = {n: [] for n in names}
    for rnd in range(rounds):
        order = rotated(names, rnd)
        for position, name in enumerate(order):
            for run in sides[name].round(rnd):
                run.position = position
                runs[name].append(run)
        if log:
            heads = ", ".join(f"{n} {_rate(runs[n], rnd):,.1f}" for n in names)
            log(f"round {rnd + 1}/{rounds}: output tok/s at the largest level: {heads}")
    return runs


def _rate(runs: list[LevelRun], rnd: int) -> float:
    last = max((r for r in runs if r.round == rnd), key=lambda r: r.level)
    return last.output_tokens / last.wall_s


def _measure(named: dict[str, tuple[Path, ModelInfo]], settings: BenchSpec, *, dtype: str, log_dir: Path | None,
             endpoint: str | None, trust_remote_code: bool, allow_pickle: bool,
             log: Callable[[str], None] | None,
             drafts: dict[str, Path] | None = None,
             serve: dict[str, Any] | None = None) -> tuple[dict[str, Measured], dict[str, Any]]:
    sides: dict[str, Side] = {}
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="compress-bench-"))
    try:
        for name, (path, _) in named.items():
            engine = "vllm" if settings.engine == "hf" else settings.engine  # hf logs nothing of its own here
            sides[name] = make_side(path, settings, dtype=dtype, log_path=log_dir / f"{name}-{engine}.log",
                                    endpoint=endpoint, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                    draft=(drafts or {}).get(name), serve=(serve or {}).get(name))
        _start_all(list(sides.values()))
        runs = interleave(sides, settings.rounds, log)
        rate_runs, searches = open_levels(sides, settings, runs, log) if settings.open_loop else ({}, {})
        ends = {name: side.finish() for name, side in sides.items()}
    finally:
        for side in sides.values():
            side.close()
    out = {name: measured(named[name][1], sides[name], runs[name], ends[name], settings, rate_runs.get(name),
                          searches.get(name)) for name in named}
    return out, ends[next(iter(named))]["environment"]


def measure_together(named: dict[str, tuple[Path, ModelInfo]], settings: BenchSpec, *, dtype: str = "auto",
                     log_dir: Path | None = None, log: Callable[[str], None] | None = None,
                     serve: dict[str, Any] | None = None) -> tuple[dict[str, Measured], dict[str, Any]]:
    """Any number of models measured in the same time window (the order rotating every round and probe), uncached:
    what a study compares beyond one baseline and one candidate. Returns each model's figures and the environment."""
    return _measure(named, settings, dtype=dtype, log_dir=log_dir, endpoint=None, trust_remote_code=False,
                    allow_pickle=False, log=log, serve=serve)


def open_levels(sides: dict[str, Side], settings: BenchSpec, closed: dict[str, list[LevelRun]],
                log: Callable[[str], None] | None = None) -> tuple[dict[str, list[LevelRun]], dict[str, GoodputSearch]]:
    """The open-loop levels: every rate of ``settings.rates`` in every round (sides alternating which goes first),
    then, with ``settings.goodput``, each side's goodput search, probe by probe, the sides alternating."""
    names = list(sides)
    for name, side in sides.items():
        if not isinstance(side, ServedSide):
            raise UsageError("open-loop arrivals need a served model", hint="set bench.engine: vllm, or give --endpoint")
    runs: dict[str, list[LevelRun]] = {n: [] for n in names}
    spans = {n: steady_span(closed[n]) for n in names}  # each run long enough for a queue to show
    shared = max(spans.values(), default=0.0)  # fixed rates: the same requests for every side
    for rnd in range(settings.rounds if settings.rates else 0):
        for name in rotated(names, rnd):
            for rate in settings.rates:
                runs[name].append(sides[name].open_round(rnd, rate, shared))
        if log:
            log(f"open-loop round {rnd + 1}/{settings.rounds} ({settings.arrival}): attainment at "
                + "; ".join(f"{n} " + ", ".join(_attained(runs[n], rate, settings) for rate in settings.rates)
                            for n in names))
    searches: dict[str, GoodputSearch] = {}
    if settings.goodput is None:
        return runs, searches
    searches = {n: GoodputSearch(settings.goodput, start_rate(settings, closed[n])) for n in names}
    step = 0
    while True:
        due = {n: r for n in names if (r := searches[n].next_rate()) is not None}
        if not due:
            break
        for name in rotated(names, step):
            if name not in due:
                continue
            rate = due[name]
            runs[name] += [sides[name].open_round(g, rate, spans[name]) for g in range(settings.goodput.rounds)]
            result = summarize_rate([r for r in runs[name] if r.rate == rate], settings)
            searches[name].record(rate, result.verdict or "undecided")
            if log:
                a = result.attainment
                log(f"goodput probe {len(searches[name].verdicts)}/{settings.goodput.max_probes}: {name} at "
                    f"{rate:g}/s: attainment {a.value:.0%} [{a.lower:.0%}, {a.upper:.0%}], {result.verdict}")
        step += 1
    return runs, searches


def _attained(runs: list[LevelRun], rate: float, settings: BenchSpec) -> str:
    result = summarize_rate([r for r in runs if r.rate == rate], settings)
    share = f"{result.attainment.value:.0%}" if result.attainment is not None else "-"
    return f"{rate:g}/s {share}"


def bench_settings(spec: BenchSpec, dtype: str, endpoint: str | None = None) -> dict[str, Any]:
    s = spec.model_dump(mode="json", exclude={"start_timeout_s"})  # how long a start may take moves no figure
    s["dtype"] = dtype
    if endpoint:
        s["endpoint"] = endpoint
    if spec.engine == "llamacpp":  # how it serves: its build, and compress's way of starting it (one at a time)
        from compress.measure.engines.llamacpp import bench_mode, engine_info

        s["engine"] = f"llama-cpp-python {engine_info()['version']}, {bench_mode()}"
    return s


def describe_workload(settings: BenchSpec, model_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The workload's description (a bad traffic file fails here, before any server starts); its sha256 joins the
    settings of the cache key, so that an edited file is measured again."""
    if settings.workload is None:
        return None
    from compress.measure.engines.vllm import served_context
    from compress.measure.workload import Workload

    described = Workload(settings, model_dir, context=served_context(model_dir)).describe()
    config["workload_sha256"] = described["sha256"]
    return described


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_bench(spec: str, settings: BenchSpec, *, dtype: str = "auto", revision: str | None = None,
              rerun: bool = False, trust_remote_code: bool = False, allow_pickle: bool = False,
              endpoint: str | None = None, log_dir: Path | None = None,
              log: Callable[[str], None] | None = None) -> tuple[BenchReport, bool]:
    """Benchmark one model on its own; reuse a cached report when allowed (never with an endpoint).

    Returns:
        (report, whether it came from the cache)
    """
    from compress.core.models import resolve_dtype, resolve_model
    from compress.measure.accuracy import model_info

    ref = resolve_model(spec, revision)
    info = model_info(ref.path, spec)
    dtype = resolve_dtype(ref.path, dtype)
    config = bench_settings(settings, dtype, endpoint)
    workload = describe_workload(settings, ref.path, config)
    key = cache.report_key("bench", info.content_hash, config)
    if not rerun and not endpoint and (hit := cache.load_cached("bench", key, BenchReport)) is not None:
        return hit, True
    start = time.time()
    sides, env = _measure({"model": (ref.path, info)}, settings, dtype=dtype, log_dir=log_dir, endpoint=endpoint,
                          trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, log=log)
    report = BenchReport(model=info, settings=config, measured=sides["model"], environment=env, created=_now(),
                         duration_s=round(time.time() - start, 3), cache_key=key, workload=workload)
    if not endpoint:
        cache.store("bench", key, report)
    return report, False


def run_speed(baseline: str, candidate: str, settings: BenchSpec, *, dtype: str = "auto",
              revision: str | None = None, rerun: bool = False, trust_remote_code: bool = False,
              allow_pickle: bool = False, log_dir: Path | None = None,
              log: Callable[[str], None] | None = None, draft: str | None = None,
              serve: dict[str, Any] | None = None) -> tuple[SpeedReport, bool]:
    """Benchmark a baseline and a candidate in the same time window, in alternating rounds.

    The pair is cached as a pair (keyed by both models' bytes and the settings): a figure of
    one model measured at another moment never stands in for its side.

    Args:
        revision: the baseline's hub revision (the candidate is a local artifact).
        draft: vLLM only: the candidate is served with this model as its speculative-decoding
            draft (pass the same model as baseline and candidate to measure speculation alone).
        serve: vLLM only: ``{"baseline": ServeSpec, "candidate": ServeSpec}`` (either may be missing or None),
            the serving settings each side's server starts with; part of the cache key.

    Returns:
        (report, whether it came from the cache)
    """
    from compress.core.models import resolve_model
    from compress.measure.accuracy import model_info

    refs = {"baseline": resolve_model(baseline, revision), "candidate": resolve_model(candidate)}
    infos = {"baseline": model_info(refs["baseline"].path, baseline),
             "candidate": model_info(refs["candidate"].path, candidate)}
    config = bench_settings(settings, dtype)
    drafts = {}
    if draft is not None:
        d_ref = resolve_model(draft)
        drafts = {"candidate": d_ref.path}
        config["draft"] = {"model": draft, "content_hash": model_info(d_ref.path, draft).content_hash,
                           "method": "draft_model", "num_speculative_tokens": DRAFT_TOKENS}
    served = {w: v.model_dump(mode="json", exclude_defaults=True) for w, v in (serve or {}).items() if v is not None}
    if served:
        config["serve"] = served
    workload = describe_workload(settings, refs["baseline"].path, config)
    key = cache.report_key("speed", f"{infos['baseline'].content_hash}:{infos['candidate'].content_hash}", config)
    if not rerun and (hit := cache.load_cached("speed", key, SpeedReport)) is not None:
        return hit, True
    start = time.time()
    sides, env = _measure({w: (refs[w].path, infos[w]) for w in SIDES}, settings, dtype=dtype, log_dir=log_dir,
                          endpoint=None, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, log=log,
                          drafts=drafts, serve=serve)
    report = SpeedReport(settings=config, baseline=sides["baseline"], candidate=sides["candidate"], environment=env,
                         created=_now(), duration_s=round(time.time() - start, 3), cache_key=key, workload=workload)
    cache.store("speed", key, report)
    return report, False


