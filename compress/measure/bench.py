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
    prefill_tps = level * settings.prompt_tokens / (sum(ttft) / len(ttft))
    decode_time = sum(q.e2e_s - q.ttft_s for q in reqs) / len(reqs)
    decode_tps = level * (n_out - 1) / decode_time if n_out > 1 and decode_time > 0 else 0.0
    sp = spread(runs)
    cost = settings.price_per_hour / 3600.0 / sp.value * 1e6
    meets = None
    if settings.slo is not None:
        t_ok = settings.slo.ttft_p99_ms is None or summarize(ttft).p99 * 1e3 <= settings.slo.ttft_p99_ms
        i_ok = settings.slo.itl_p99_ms is None or summarize(itl).p99 * 1e3 <= settings.slo.itl_p99_ms
        meets = bool(t_ok and i_ok)
    served = any(q.concurrency == level and q.output_tokens == n_out for q in reqs)
    return BatchResult(batch_size=level, prompt_tokens=settings.prompt_tokens, output_tokens=n_out, ttft=summarize(ttft),
                       itl=summarize(itl), e2e=summarize(e2e), prefill_tokens_per_s=prefill_tps,
                       decode_tokens_per_s=decode_tps, output_tokens_per_s=sp.value, cost_per_mtok_usd=cost,
                       requests_per_s=len(reqs) / sum(r.wall_s for r in runs) if served else None,
                       output_tokens_per_s_spread=sp, meets_slo=meets)


def measured(info: ModelInfo, side: Side, runs: list[LevelRun], end: dict[str, Any], settings: BenchSpec) -> Measured:
    batches = [summarize_level([r for r in runs if r.level == level], level, settings) for level in settings.batch_sizes]
    slo = None
    if settings.slo is not None:
        slo = max((b.output_tokens_per_s for b in batches if b.meets_slo), default=0.0)
    return Measured(model=info, runtime=side.runtime, device=end["device"], size_bytes=info.size_bytes,
                    peak_memory_bytes=end["peak_memory_bytes"], memory_kind=end["memory_kind"],
                    model_memory_bytes=end["model_memory_bytes"], runs=runs, batches=batches,
                    slo_output_tokens_per_s=slo)


# --------------------------------------------------------------------------- driving

DRAFT_TOKENS = 4  # tokens the draft proposes per step in vLLM's draft-model speculative decoding


def make_side(path: Path, settings: BenchSpec, *, dtype: str, log_path: Path | None = None,
              endpoint: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False,
              draft: Path | None = None) -> Side:
    """The side that measures ``path`` with the settings' engine (or an already running endpoint).
    ``dtype`` ``auto`` is each model's own checkpoint dtype. ``draft``: vLLM serves ``path`` with
    that model as its speculative-decoding draft."""
    from compress.core.models import resolve_dtype

    dtype = resolve_dtype(path, dtype)
    if endpoint:
        return ServedSide(path, settings, url=endpoint)
    if settings.engine == "vllm":
        from compress.measure.engines.vllm import VllmServer, parallel_args

        # Every round's prompts are new; no cache must hide prefill.
        extra = ["--no-enable-prefix-caching", *parallel_args(settings.tensor_parallel, settings.data_parallel)]
        if settings.kv_cache_dtype != "auto":
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


def interleave(sides: dict[str, Side], rounds: int, log: Callable[[str], None] | None = None) -> dict[str, list[LevelRun]]:
    """Measure every side in every round, alternating which goes first."""
    names = list(sides)
    runs: dict[str, list[LevelRun]] = {n: [] for n in names}
    for rnd in range(rounds):
        order = names if rnd % 2 == 0 else names[::-1]
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
             drafts: dict[str, Path] | None = None) -> tuple[dict[str, Measured], dict[str, Any]]:
    sides: dict[str, Side] = {}
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="compress-bench-"))
    try:
        for name, (path, _) in named.items():
            sides[name] = make_side(path, settings, dtype=dtype, log_path=log_dir / f"{name}-vllm.log",
                                    endpoint=endpoint, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                    draft=(drafts or {}).get(name))
        _start_all(list(sides.values()))
        runs = interleave(sides, settings.rounds, log)
        ends = {name: side.finish() for name, side in sides.items()}
    finally:
        for side in sides.values():
            side.close()
    out = {name: measured(named[name][1], sides[name], runs[name], ends[name], settings) for name in named}
    return out, ends[next(iter(named))]["environment"]


def bench_settings(spec: BenchSpec, dtype: str, endpoint: str | None = None) -> dict[str, Any]:
    s = spec.model_dump(mode="json", exclude={"start_timeout_s"})  # how long a start may take moves no figure
    s["dtype"] = dtype
    if endpoint:
        s["endpoint"] = endpoint
    return s


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
    key = cache.report_key("bench", info.content_hash, config)
    if not rerun and not endpoint and (hit := cache.load_cached("bench", key, BenchReport)) is not None:
        return hit, True
    start = time.time()
    sides, env = _measure({"model": (ref.path, info)}, settings, dtype=dtype, log_dir=log_dir, endpoint=endpoint,
                          trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, log=log)
    report = BenchReport(model=info, settings=config, measured=sides["model"], environment=env, created=_now(),
                         duration_s=round(time.time() - start, 3), cache_key=key)
    if not endpoint:
        cache.store("bench", key, report)
    return report, False


def run_speed(baseline: str, candidate: str, settings: BenchSpec, *, dtype: str = "auto",
              revision: str | None = None, rerun: bool = False, trust_remote_code: bool = False,
              allow_pickle: bool = False, log_dir: Path | None = None,
              log: Callable[[str], None] | None = None, draft: str | None = None) -> tuple[SpeedReport, bool]:
    """Benchmark a baseline and a candidate in the same time window, in alternating rounds.

    The pair is cached as a pair (keyed by both models' bytes and the settings): a figure of
    one model measured at another moment never stands in for its side.

    Args:
        revision: the baseline's hub revision (the candidate is a local artifact).
        draft: vLLM only: the candidate is served with this model as its speculative-decoding
            draft (pass the same model as baseline and candidate to measure speculation alone).

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
    key = cache.report_key("speed", f"{infos['baseline'].content_hash}:{infos['candidate'].content_hash}", config)
    if not rerun and (hit := cache.load_cached("speed", key, SpeedReport)) is not None:
        return hit, True
    start = time.time()
    sides, env = _measure({w: (refs[w].path, infos[w]) for w in SIDES}, settings, dtype=dtype, log_dir=log_dir,
                          endpoint=None, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, log=log,
                          drafts=drafts)
    report = SpeedReport(settings=config, baseline=sides["baseline"], candidate=sides["candidate"], environment=env,
                         created=_now(), duration_s=round(time.time() - start, 3), cache_key=key)
    cache.store("speed", key, report)
    return report, False


