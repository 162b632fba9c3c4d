"""llama.cpp as a managed server: llama-cpp-python's OpenAI-compatible server (``llama_cpp.server``, through
``llamacpp_serve.py``: a completion generates at least one token, as lm-eval's gguf model assumes) from the
llama.cpp environment that `make llamacpp` installs, started on 127.0.0.1 and always stopped.

It has vLLM's lifecycle (:class:`compress.measure.engines.vllm.VllmServer`: a process group of its own, a start
that fails when it stalls or passes its deadline, SIGTERM then SIGKILL, every server ended on a signal) and serves
a GGUF artifact (one ``model.gguf``). The compression environment never imports llama_cpp.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compress.build.methods import _llamacpp
from compress.build.methods.gguf import GGUF_FILE, threads as cpu_threads
from compress.core.errors import InputError
from compress.core.procs import OMP_WAIT, omp_wait_policy
from compress.measure.engines.vllm import VllmServer

DEFAULT_CONTEXT = 4096
LAUNCHER = Path(__file__).with_name("llamacpp_serve.py")  # llama_cpp.server, a completion at least one token long


def gguf_file(model_dir: Path) -> Path:
    """The GGUF file of an artifact directory (or the file itself).

    Raises:
        InputError: neither a ``.gguf`` file nor a directory holding ``model.gguf``.
    """
    model_dir = Path(model_dir)
    if model_dir.is_file() and model_dir.suffix == ".gguf":
        return model_dir
    if (model_dir / GGUF_FILE).is_file():
        return model_dir / GGUF_FILE
    raise InputError(f"{model_dir}: no {GGUF_FILE} (llama.cpp serves GGUF artifacts)",
                     hint="build one with a gguf scheme, e.g. compress quantize MODEL --scheme gguf-q4_k_m")


def as_gguf(model_dir: Path) -> Path:
    """What llama.cpp serves for a model: a GGUF artifact as it is; any other model directory converted once by
    llama.cpp's converter to F16 (the base unquantized, as a llama.cpp user serves it), kept in the cache by the
    model's content hash."""
    from compress.core import cache
    from compress.core.artifact import atomic_dir

    model_dir = Path(model_dir)
    if (model_dir / GGUF_FILE).is_file() or model_dir.suffix == ".gguf":
        return model_dir
    out = cache.cache_root() / "gguf" / f"{cache.model_content_hash(model_dir)[:16]}-f16"
    if not (out / GGUF_FILE).is_file():
        with atomic_dir(out, overwrite=out.exists()) as tmp:
            _llamacpp.convert(model_dir, tmp / GGUF_FILE, outtype="f16", log_path=tmp / "convert.log")
    return out


def context_length(path: Path) -> int | None:
    """The training context the GGUF file records (``<arch>.context_length``); None when it cannot be read."""
    try:
        import gguf

        fields = gguf.GGUFReader(str(path)).fields  # the header only: the tensors are memory-mapped, not read
        arch = fields["general.architecture"].contents()
        found = fields.get(f"{arch}.context_length")
        return int(found.contents()) if found is not None else None
    except (ImportError, OSError, KeyError, ValueError):
        return None


def engine_info(venv: Path | str | None = None) -> dict[str, Any]:
    """The llama.cpp environment: whether it is there, llama-cpp-python's version (from its package metadata,
    without importing it), and whether the quantizer and converter are installed."""
    root = Path(venv or _llamacpp.venv())
    python = root / "bin" / "python"
    version = _llamacpp.package_version(root)
    return {"package": "llama-cpp-python", "version": version, "root": str(root), "present": python.exists()
            and version is not None, "tools": {name: (root / sub / name).exists() for sub, name in (
                ("bin", "llama-quantize"), ("bin", "llama-imatrix"), ("share/llama.cpp", "convert_hf_to_gguf.py"))}}


def bench_mode() -> str:
    """How a benchmark's server serves, in words that join its cache key (a change measures again)."""
    return f"requests queued, last position's logits only, {OMP_WAIT}={omp_wait_policy()}"


class LlamaCppServer(VllmServer):
    """llama.cpp's OpenAI-compatible server for one GGUF artifact, owned by a context manager.

    Args:
        model_dir: the artifact directory (``model.gguf``) or a ``.gguf`` file.
        n_ctx: the context length; defaults to the file's training context, at most 4096.
        threads: CPU threads for generation; all the process may use by default.
        logits_all: keep every position's logits (lm-eval's log-likelihoods read the prompt's own); a server as
            users run it keeps the last position's only, which is what a benchmark measures.
        Others as :class:`VllmServer` (``dtype`` and ``kv_cache_gib`` do not apply: GGUF fixes the types).
    """

    NAME = "llama.cpp"
    ENGINE = "llamacpp"  # a report's runtime engine
    INSTALL = "make llamacpp"
    HEALTH = "/v1/models"
    TEXT_PROMPTS = True  # its completions take text, not token ids
    METRICS = False  # no Prometheus /metrics

    def __init__(self, model_dir: Path | str, *, log_path: Path | str, n_ctx: int | None = None,
                 threads: int | None = None, logits_all: bool = False, python: Path | str | None = None,
                 **kwargs: Any):
        super().__init__(model_dir, log_path=log_path, python=python or _llamacpp.venv() / "bin" / "python",
                         max_model_len=n_ctx, **kwargs)
        self.threads = threads
        self.logits_all = logits_all

    def _build_command(self) -> list[str]:
        path = gguf_file(self.model_dir)
        limit = context_length(path)
        self._settle(min(limit or DEFAULT_CONTEXT, DEFAULT_CONTEXT), limit, "training context")
        length = self.max_model_len
        if self.served_model_name.endswith(".gguf"):  # a file was given: name it by its folder
            self.served_model_name = self.model_dir.parent.name
        n = self.threads or cpu_threads()
        return [str(self.python), str(LAUNCHER), "--model", str(path),
                "--model_alias", self.served_model_name, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", str(length), "--n_threads", str(n), "--n_threads_batch", str(n),
                # a request waits for the one before it instead of cutting its stream short (the server's default)
                "--interrupt_requests", "false", "--logits_all", str(self.logits_all).lower(), *self.extra_args]

    def _engine_env(self) -> dict[str, str]:
        """llama.cpp's OpenMP threads sleep while they wait instead of spinning: a spinning thread holds a core
        that the server's own event loop (which streams the tokens) and a client on the same machine need: on 2
        cores, with the client beside it, one of 4 requests to the 1B fixture took 71 s instead of about 3 s
        (spinning, about 10% more tokens per second on a run without such a stall). A value the user set is left
        as it is."""
        return {} if OMP_WAIT in os.environ or OMP_WAIT in self.env else {OMP_WAIT: omp_wait_policy()}

    def _get_json(self, route: str) -> dict:
        if route == "/version":  # llama_cpp.server has no such route: the package's own version
            return {"version": engine_info(self.python.parent.parent)["version"]}
        return super()._get_json(route)

    def _read_log(self) -> None:
        self.kernels = {}

    def describe(self) -> dict[str, Any]:
        return {"name": "llamacpp", "package": "llama-cpp-python", "version": self.version,
                "n_ctx": self.max_model_len, "start_s": round(self.start_seconds or 0.0, 3),
                "threads": self.threads or cpu_threads(), "logits_all": self.logits_all,
                OMP_WAIT: omp_wait_policy(self.env)}
