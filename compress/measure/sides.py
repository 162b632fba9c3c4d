"""The two sides a benchmark measures, round by round: a model held by a transformers worker process
(``HfSide``), and a model served by vLLM or an endpoint someone else started (``ServedSide``). A worker
that stops answering, or stops using the CPU while it owes an answer, ends with an error, never a hang.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from compress.core.errors import CompressError, EngineError, UsageError
from compress.core.recipe import BenchSpec
from compress.core.reports import (
    LevelRun,
    Runtime,
    ServedRequest,
)
from compress.measure.engines.client import run_load
from compress.measure.hf_worker import out_of_memory, prompt_seed, requests_per_level

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
    """A model held by a transformers worker process (``python -m compress.measure.hf_worker``)."""

    def __init__(self, path: Path, settings: BenchSpec, *, dtype: str, trust_remote_code: bool = False,
                 allow_pickle: bool = False, timeout: float | None = None):
        self.job = {"path": str(path), "dtype": dtype, "settings": settings.model_dump(mode="json"),
                    "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        from compress.core.env import package_version

        self.runtime = Runtime(engine="hf", version=package_version("transformers"), dtype=dtype)

    def launch(self) -> None:
        """Start the worker and hand it its job, without waiting: workers launched one after another load side by
        side (their imports are single-threaded)."""
        from compress.core import procs

        self._err = tempfile.TemporaryFile(mode="w+")
        env = procs.child_env({"TOKENIZERS_PARALLELISM": "false"})
        procs.install_handlers()
        self.proc = subprocess.Popen([sys.executable, "-m", "compress.measure.hf_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=env,
                                     start_new_session=True)
        procs.register(self.proc.pid, "the transformers benchmark worker")
        self._send(self.job)

    def start(self) -> None:
        if self.proc is None:
            self.launch()
        self.info = self._answer("loading the model")

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self._send(message)
        return self._answer("the round" if "round" in message else "finishing")

    def _answer(self, what: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = _read_answer(self.proc, self.timeout or worker_timeout(), what)
        data = json.loads(line) if line.strip() else None
        if data is None:
            code = self.proc.wait()
            self._err.seek(0)
            stderr = self._err.read()
            if code == -9 or "out of memory" in stderr.lower():
                raise out_of_memory()
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
        self.engine = getattr(server, "ENGINE", "vllm") if server is not None else "endpoint"
        self.runtime = Runtime(engine=self.engine, url=url)
        self._peak = 0
        self._sampling = False
        self._sampler: threading.Thread | None = None
        from compress.measure.engines.vllm import served_context
        from compress.measure.workload import Workload

        self.workload = Workload(settings, self.path, context=served_context(self.path))
        self._decode = None
        if server is not None and getattr(server, "TEXT_PROMPTS", False):  # a server that takes no token ids
            from compress.core.models import load_tokenizer

            tokenizer = load_tokenizer(self.path)
            self._decode = lambda ids: tokenizer.decode(ids)
            self._encode = lambda text: tokenizer(text)["input_ids"]

    def prompts(self, items: list[Any]) -> list[Any]:
        """The requests' prompts as the server takes them: token ids, or their text for a server that takes
        text only (it tokenizes that text again: random ids come back as more tokens than they were)."""
        return [self._decode(i.prompt) if self._decode and not isinstance(i.prompt, str) else i.prompt for i in items]

    def _counted(self, reqs: list[ServedRequest], sent: list[Any]) -> list[ServedRequest]:
        """A text prompt's length as the server read it when it reports none: the text sent, encoded again by the
        same tokenizer (llama.cpp's GGUF carries it)."""
        for r, prompt in zip(reqs, sent):
            if not r.prompt_tokens and isinstance(prompt, str) and self._decode:
                r.prompt_tokens = len(self._encode(prompt))
        return reqs

    def start(self) -> None:
        if self.server is not None:
            self.server.__enter__()  # stopped on SIGTERM too
            self.url, self.served_name = self.server.url, self.server.served_model_name
            self.runtime = Runtime(engine=self.engine, version=self.server.version, dtype=self.server.dtype,
                                   command=self.server.command, env=self.server.set_env,
                                   kernels=self.server.kernels,
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
                items = self.workload.items(level, 10**6 + level)
                run_load(self.url, self.served_name, self.prompts(items),
                         [min(i.output_tokens, 8) for i in items], level)

    def _sample(self) -> None:
        from compress.measure.engines.vllm import group_rss

        while self._sampling:
            self._peak = max(self._peak, group_rss(self.server.pgid))
            time.sleep(0.5)

    def round(self, rnd: int) -> list[LevelRun]:
        with self._engine_reason():
            return self._round(rnd)

    @contextlib.contextmanager
    def _engine_reason(self):
        """A request that fails because the server died says why, from the server's log."""
        try:
            yield
        except EngineError as e:
            if self.server is None or self.server.proc is None or "the server's log says" in str(e):
                raise
            time.sleep(1.0)  # the engine writes its last words as it goes
            raise EngineError(f"{e.message}; the server's log says: {self.server.log_tail()}",
                              hint=f"its log: {self.server.log_path}") from None

    def _round(self, rnd: int) -> list[LevelRun]:
        runs = []
        for level in self.settings.batch_sizes:
            items = self.workload.items(requests_per_level(self.settings, level), prompt_seed(self.settings, level, rnd))
            sampler = self._metrics()
            began = time.perf_counter()
            sent = self.prompts(items)
            reqs = self._counted(run_load(self.url, self.served_name, sent, [i.output_tokens for i in items], level),
                                 sent)
            runs.append(LevelRun(round=rnd, level=level, wall_s=time.perf_counter() - began, requests=reqs,
                                 metrics=sampler.stop() if sampler else None))
        return runs

    def open_round(self, rnd: int, rate: float, min_span_s: float = 0.0) -> LevelRun:
        """One open-loop run at ``rate`` requests per second, arrivals spanning at least ``min_span_s`` (the same
        requests and arrivals for both models at the same span)."""
        from compress.measure.engines.client import arrival_times, run_open_load
        from compress.measure.openloop import close_run, requests_per_run

        n = requests_per_run(self.settings, rate, min_span_s)
        seed = open_seed(self.settings, rate, rnd)
        items = self.workload.items(n, seed)
        due = arrival_times(n, rate, self.settings.arrival, seed)
        sampler = self._metrics()
        with self._engine_reason():
            sent = self.prompts(items)
            reqs = self._counted(run_open_load(self.url, self.served_name, sent, [i.output_tokens for i in items],
                                               due), sent)
        return close_run(reqs, rnd=rnd, rate=rate, arrival=self.settings.arrival, settings=self.settings,
                         metrics=sampler.stop() if sampler else None)

    def _metrics(self):
        """A running scrape of the engine's /metrics for one level (None for an endpoint: it may have none)."""
        if self.server is None or not getattr(self.server, "METRICS", True):
            return None
        from compress.measure.engines.metrics import MetricsSampler

        sampler = MetricsSampler(self.url)
        sampler.start()
        return sampler

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


def open_seed(settings: BenchSpec, rate: float, rnd: int) -> int:
    """The seed of one open-loop run's requests and arrivals (the same for both models)."""
    return settings.seed + 1000 * rnd + 100_000 + round(rate * 1000) % 100_000


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

    if getattr(server, "ENGINE", "vllm") != "vllm":
        return "cpu"  # llama.cpp's environment is built for the CPU here

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
