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

import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from compress.core import cache
from compress.measure.engines.client import make_prompts, run_load
from compress.core.errors import CompressError, EngineError, UsageError
from compress.core.reports import BatchResult, BenchReport, LevelRun, Measured, ModelInfo, Runtime, ServedRequest, SpeedReport, Spread, summarize
from compress.core.recipe import BenchSpec

SIDES = ("baseline", "candidate")


# --------------------------------------------------------------------------- prompts

def prompt_seed(settings: BenchSpec, level: int, rnd: int) -> int:
    """The seed of the prompts of one level in one round (the same for both models)."""
    return settings.seed + 1000 * rnd + level


def requests_per_level(settings: BenchSpec, level: int) -> int:
    """How many requests a served level sends per round: every slot busy at least once."""
    return max(settings.repeats, level)


# ----------------------------------------------------------------- hf: generate timing

class TimingStreamer:
    """A transformers streamer that records when each new token arrives.

    ``generate`` calls ``put`` once with the prompt, then once per generated token.
    """

    def __init__(self, sync) -> None:
        self.sync = sync
        self.start = 0.0
        self.times: list[float] = []
        self._seen_prompt = False

    def begin(self) -> None:
        self.sync()
        self._seen_prompt = False
        self.times = []
        self.start = time.perf_counter()

    def put(self, value) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        self.sync()
        self.times.append(time.perf_counter() - self.start)

    def end(self) -> None:
        pass


def measure_round(model: Any, tokenizer: Any, settings: BenchSpec, device: str, rnd: int,
                  warmup: bool) -> list[LevelRun]:
    """One round of ``generate`` timing on an in-memory model: every batch size, ``repeats`` calls each."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    vocab = model.get_input_embeddings().weight.shape[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streamer = TimingStreamer(sync)
    n_out, runs = settings.output_tokens, []
    for level in settings.batch_sizes:
        ids = torch.tensor(make_prompts(vocab, tokenizer.all_special_ids or [], level, settings.prompt_tokens,
                                        prompt_seed(settings, level, rnd)), device=device)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n_out,
                      min_new_tokens=n_out, pad_token_id=pad, streamer=streamer, use_cache=True)
        reqs = []
        for i in range((settings.warmup if warmup else 0) + settings.repeats):
            timed = i >= (settings.warmup if warmup else 0)
            if timed and not reqs:
                origin = time.perf_counter()
            streamer.begin()
            with torch.inference_mode():
                out = model.generate(**kwargs)
            sync()
            e2e = time.perf_counter() - streamer.start
            if out.shape[1] - ids.shape[1] != n_out or len(streamer.times) != n_out:
                raise CompressError(f"generation produced {out.shape[1] - ids.shape[1]} tokens, not {n_out}",
                                    hint="this model's generate() ignores min_new_tokens; report it as a bug")
            if timed:
                reqs.append(ServedRequest(index=len(reqs), concurrency=level, prompt_tokens=level * ids.shape[1],
                                          output_tokens=level * n_out, started_s=streamer.start - origin,
                                          ttft_s=streamer.times[0], e2e_s=e2e, token_times_s=list(streamer.times),
                                          chunks=n_out))
        runs.append(LevelRun(round=rnd, level=level, wall_s=time.perf_counter() - origin, requests=reqs))
    return runs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serve_worker(job: dict[str, Any], commands, answer: Callable[[dict[str, Any]], None]) -> None:
    """Body of the hf worker process: load once, then measure one round per command.

    Commands (JSON lines): ``{"round": r}`` measures every level once; ``{"finish": true}``
    answers with the peak memory and the environment, and ends.
    """
    import torch

    from compress.core.env import environment
    from compress.core.models import load_model, load_tokenizer, pick_device

    settings = BenchSpec.model_validate(job["settings"])
    device = pick_device(settings.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = _rss_bytes()
    model = load_model(Path(job["path"]), dtype=job["dtype"], device=device,
                       trust_remote_code=job.get("trust_remote_code", False), allow_pickle=job.get("allow_pickle", False))
    tokenizer = load_tokenizer(Path(job["path"]), job.get("trust_remote_code", False))
    model_mem = torch.cuda.memory_allocated() if device.startswith("cuda") else _rss_bytes() - before
    answer({"ready": True, "device": device, "model_memory_bytes": int(model_mem)})
    warm = False
    for line in commands:
        command = json.loads(line)
        if command.get("finish"):
            break
        try:
            runs = measure_round(model, tokenizer, settings, device, command["round"], warmup=not warm)
        except torch.OutOfMemoryError:
            raise _oom() from None
        except RuntimeError as e:  # the CPU allocator's refusal ("can't allocate memory: ...")
            if "allocate" in str(e) or "out of memory" in str(e).lower():
                raise _oom() from None
            raise
        warm = True
        answer({"runs": [r.model_dump(mode="json") for r in runs]})
    if device.startswith("cuda"):
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_allocator"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"
    answer({"peak_memory_bytes": int(peak), "memory_kind": kind, "environment": environment(torch)})


def _oom() -> CompressError:
    return CompressError("out of memory while benchmarking", hint="lower bench.batch_sizes, prompt_tokens or output_tokens")


# ------------------------------------------------------------------------------ sides

class Side(Protocol):
    """One model ready to be measured, round by round."""

    runtime: Runtime

    def start(self) -> None: ...

    def round(self, rnd: int) -> list[LevelRun]: ...

    def finish(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


WORKER_TIMEOUT_ENV = "COMPRESS_WORKER_TIMEOUT"
WORKER_STALL_S = 300.0  # a worker that uses no CPU for this long while it owes an answer is hung


def worker_timeout() -> float:
    """The most seconds one answer of the hf worker may take: ``$COMPRESS_WORKER_TIMEOUT``, else 3600."""
    raw = os.environ.get(WORKER_TIMEOUT_ENV, "").strip()
    try:
        return float(raw) if raw else 3600.0
    except ValueError:
        raise UsageError(f"${WORKER_TIMEOUT_ENV} is {raw!r}, not a number of seconds", hint="unset it") from None


def _read_answer(proc: subprocess.Popen, timeout: float, what: str, stall: float | None = None) -> str:
    """The worker's next line, or a CompressError naming what hung once ``timeout`` s pass, or once its
    processes used no CPU for ``stall`` s (default :data:`WORKER_STALL_S`, at most ``timeout``); the
    worker is ended first."""
    import selectors

    from compress.core import procs
    from compress.measure.engines.vllm import group_cpu_seconds

    stall = min(stall or WORKER_STALL_S, timeout)
    began = last = time.monotonic()
    cpu = -1.0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if sel.select(timeout=1.0):
                return proc.stdout.readline()
            if proc.poll() is not None:
                return proc.stdout.readline()
            now = time.monotonic()
            used = group_cpu_seconds(proc.pid)
            if used > cpu + 0.05:
                cpu, last = used, now
            hung = now - last > stall
            if hung or now - began > timeout:
                procs.kill_group(proc.pid, grace=2)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)  # reaped: a dying process can look gone a moment before it can be waited for
                how = f"used no CPU for {stall:.0f} s" if hung else f"took more than {timeout:.0f} s"
                raise CompressError(f"the transformers benchmark worker hung: {what} {how}; it was stopped",
                                    hint=f"allow longer with ${WORKER_TIMEOUT_ENV}, or rerun with COMPRESS_DEBUG=1 "
                                         "to see the worker's output")


class HfSide:
    """A model held by a transformers worker process (``python -m compress.measure.bench``)."""

    def __init__(self, path: Path, settings: BenchSpec, *, dtype: str, trust_remote_code: bool = False,
                 allow_pickle: bool = False, timeout: float | None = None):
        self.job = {"path": str(path), "dtype": dtype, "settings": settings.model_dump(mode="json"),
                    "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        from compress.core.env import package_version

        self.runtime = Runtime(engine="hf", version=package_version("transformers"), dtype=dtype)

    def start(self) -> None:
        from compress.core import procs

        self._err = tempfile.TemporaryFile(mode="w+")
        env = procs.child_env({"TOKENIZERS_PARALLELISM": "false"})
        procs.install_handlers()
        self.proc = subprocess.Popen([sys.executable, "-m", "compress.measure.bench"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=env,
                                     start_new_session=True)
        procs.register(self.proc.pid, "the transformers benchmark worker")
        self.info = self._ask(self.job)

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        what = "loading the model" if "path" in message else "the round" if "round" in message else "finishing"
        line = _read_answer(self.proc, self.timeout or worker_timeout(), what)
        data = json.loads(line) if line.strip() else None
        if data is None:
            code = self.proc.wait()
            self._err.seek(0)
            stderr = self._err.read()
            if code == -9 or "out of memory" in stderr.lower():
                raise _oom()
            tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise CompressError(f"the benchmark worker failed: {tail[0]}",
                                hint="rerun with COMPRESS_DEBUG=1 to see the worker's output")
        if "error" in data:
            raise CompressError(data["error"], hint=data.get("hint"))
        return data

    def round(self, rnd: int) -> list[LevelRun]:
        return [LevelRun.model_validate(r) for r in self._ask({"round": rnd})["runs"]]

    def finish(self) -> dict[str, Any]:
        end = self._ask({"finish": True})
        return {"device": self.info["device"], "model_memory_bytes": self.info["model_memory_bytes"],
                "peak_memory_bytes": end["peak_memory_bytes"], "memory_kind": end["memory_kind"],
                "environment": end["environment"]}

    def close(self) -> None:
        if self.proc is not None:
            from compress.core import procs

            if self.proc.poll() is None:
                procs.kill_group(self.proc.pid, grace=0)
                self.proc.wait()
            procs.unregister(self.proc.pid)
        if getattr(self, "_err", None) is not None:
            if os.environ.get("COMPRESS_DEBUG") == "1":
                self._err.seek(0)
                sys.stderr.write(self._err.read())
            self._err.close()
            self._err = None


_MODEL_MEMORY = re.compile(r"Model loading took ([0-9.]+) ?GiB")
# "CPU KV cache size: 524,288 tokens, Maximum concurrency for 256 tokens per request: 2048.00x"
_KV_CACHE = re.compile(r"KV cache size: ([0-9,]+) tokens(?:, Maximum concurrency for ([0-9,]+) tokens per request: "
                       r"([0-9.]+)x)?")


class ServedSide:
    """A model behind an OpenAI-compatible server: started here (vLLM) or already running (endpoint)."""

    def __init__(self, path: Path, settings: BenchSpec, *, server: Any = None, url: str | None = None,
                 served_name: str | None = None):
        self.path = Path(path)
        self.settings = settings
        self.server = server
        self.url = url
        self.served_name = served_name
        self.runtime = Runtime(engine="vllm" if server is not None else "endpoint", url=url)
        self._peak = 0
        self._sampling = False
        self._sampler: threading.Thread | None = None
        from compress.core.models import load_tokenizer, vocab_size

        tokenizer = load_tokenizer(self.path)
        self.vocab = vocab_size(self.path) or len(tokenizer)
        self.special = set(tokenizer.all_special_ids or [])

    def start(self) -> None:
        if self.server is not None:
            self.server.__enter__()  # stopped on SIGTERM too
            self.url, self.served_name = self.server.url, self.server.served_model_name
            self.runtime = Runtime(engine="vllm", version=self.server.version, dtype=self.server.dtype,
                                   command=self.server.command, kernels=self.server.kernels,
                                   start_s=self.server.start_seconds, url=None,
                                   kv_cache_dtype=_kv_cache_dtype(self.path, self.settings))
            self._sampling = True
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        elif self.served_name is None:
            self.served_name = _served_name(self.url)
        # Untimed warm-up before the first round (vLLM compiles and allocates on first use).
        if self.settings.warmup:
            for level in self.settings.batch_sizes:
                prompts = make_prompts(self.vocab, self.special, level, self.settings.prompt_tokens, 10**6 + level)
                run_load(self.url, self.served_name, prompts, min(self.settings.output_tokens, 8), level)

    def _sample(self) -> None:
        from compress.measure.engines.vllm import group_rss

        while self._sampling:
            self._peak = max(self._peak, group_rss(self.server.pgid))
            time.sleep(0.5)

    def round(self, rnd: int) -> list[LevelRun]:
        runs = []
        for level in self.settings.batch_sizes:
            prompts = make_prompts(self.vocab, self.special, requests_per_level(self.settings, level),
                                   self.settings.prompt_tokens, prompt_seed(self.settings, level, rnd))
            began = time.perf_counter()
            reqs = run_load(self.url, self.served_name, prompts, self.settings.output_tokens, level)
            runs.append(LevelRun(round=rnd, level=level, wall_s=time.perf_counter() - began, requests=reqs))
        return runs

    def finish(self) -> dict[str, Any]:
        from compress.core.env import environment

        env = environment()
        if self.server is None:
            return {"device": "remote", "model_memory_bytes": None, "peak_memory_bytes": 0,
                    "memory_kind": "unknown (an endpoint started elsewhere)", "environment": env}
        self._sampling = False
        if self._sampler is not None:
            self._sampler.join()
        self.server._read_log()
        self.runtime.kernels = self.server.kernels
        text = self.server.log_text()
        kv = _KV_CACHE.search(text)
        if kv:
            tokens = int(kv.group(1).replace(",", ""))
            self.runtime.kv_cache_tokens = tokens
            self.runtime.kv_cache_bytes_per_token = self.settings.kv_cache_gib * 2**30 / tokens if tokens else None
            self.runtime.max_concurrency = float(kv.group(3)) if kv.group(3) else None
        self.runtime.max_model_len = self.server.max_model_len
        m = _MODEL_MEMORY.search(text)
        return {"device": "cpu" if _engine_device(self.server) == "cpu" else "cuda",
                "model_memory_bytes": int(float(m.group(1)) * 2**30) if m else None,
                "peak_memory_bytes": int(self._peak), "memory_kind": "rss (server process group)", "environment": env}

    def close(self) -> None:
        self._sampling = False
        if self.server is not None:
            self.server.__exit__(None, None, None)


def _kv_cache_dtype(path: Path, settings: BenchSpec) -> str:
    """The KV cache dtype the engine uses: the one asked for, else fp8 where the checkpoint
    declares a ``kv_cache_scheme`` (vLLM honours it when ``--kv-cache-dtype`` is ``auto``)."""
    if settings.kv_cache_dtype != "auto":
        return settings.kv_cache_dtype
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return "auto"
    scheme = (config.get("quantization_config") or {}).get("kv_cache_scheme")
    return "fp8 (the checkpoint's calibrated scales)" if scheme else "auto"


def _engine_device(server: Any) -> str:
    from compress.measure.engines.vllm import engine_info

    return engine_info(Path(server.python).parent.parent).get("device") or "cpu"


def _served_name(url: str) -> str:
    """The first model an OpenAI-compatible server lists at ``/v1/models``."""
    from compress.measure.engines.client import request

    try:
        r = request("GET", url.rstrip("/") + "/v1/models", timeout=10.0)
        if r.status_code != 200:
            raise ValueError(f"HTTP {r.status_code}")
        return r.json()["data"][0]["id"]
    except (EngineError, ValueError, KeyError, IndexError) as e:
        raise EngineError(f"no model listed at {url.rstrip('/')}/v1/models ({type(e).__name__}: {e})",
                          hint="check the URL, e.g. http://127.0.0.1:8000") from None


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


START_ORDER_ENV = "COMPRESS_ENGINE_START"  # sequential (default) or parallel


def _start_all(sides: list[Side]) -> None:
    """Start every side. Servers start one after the other by default: the second reuses the compile
    cache the first wrote for the same shapes, and a cold compile never shares the cores with another
    (scripts/cold_start.py measures both orders; ``$COMPRESS_ENGINE_START=parallel`` starts them together)."""
    order = os.environ.get(START_ORDER_ENV, "sequential").strip().lower() or "sequential"
    if order not in ("sequential", "parallel"):
        raise UsageError(f"${START_ORDER_ENV} is {order!r}", hint="set it to sequential or parallel, or unset it")
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
    from compress.measure.accuracy import model_info
    from compress.core.models import resolve_dtype, resolve_model

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
    from compress.measure.accuracy import model_info
    from compress.core.models import resolve_model

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


# ----------------------------------------------------------------- the worker process

def _main() -> int:
    """The hf worker: a job on the first line of stdin, then commands; answers as JSON lines.

    stdout carries only the answers: what libraries print goes to stderr.
    """
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def answer(data: dict[str, Any]) -> None:
        answers.write(json.dumps(data) + "\n")
        answers.flush()

    job = json.loads(sys.stdin.readline())
    from compress.core.faults import hang_point

    hang_point("bench-worker")
    try:
        serve_worker(job, sys.stdin, answer)
    except (CompressError, UsageError) as e:
        answer({"error": e.message, "hint": e.hint})
    return 0


if __name__ == "__main__":
    sys.exit(_main())
