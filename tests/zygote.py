"""Run ``compress ARGS`` in a process of its own without paying for its imports each time.

A command-line test wants a fresh process: its own environment, working folder, exit code, stdout and stderr,
signal handlers and exit hooks. A fresh interpreter also spends 5-8 s importing torch, transformers, lm-eval and
llm-compressor before the command does anything. So the tests fork each command from a server that has made
those imports once (multiprocessing's fork server, preloaded with tests/zygote_preload.py): the child takes the
given environment and folder, runs ``compress.cli.main`` and exits through the interpreter's exit hooks, as
``python -m compress`` does.

What a fork cannot give is an environment that libraries read when they are imported (Hugging Face's cache and
offline settings, OpenMP's threads, llm-compressor's logging): a command whose environment differs from the fork
server's in such a variable (:data:`IMPORT_TIME`) runs in a fresh interpreter instead, as does one given
``fresh=True``.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Prefixes of the variables that the preloaded libraries read when they are imported; any other variable is read
# when it is used, so the child's environment may differ from the fork server's in it.
IMPORT_TIME = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "OMP_", "MKL_", "KMP_", "LD_", "PYTHON",
               "CUDA_", "HOME", "XDG_", "LLM_COMPRESSOR_", "LOGURU_", "TOKENIZERS_")
# What compress sets before it imports llm-compressor (compress/build/methods/_llmcompressor.py), so that the
# preloaded import is the one a command makes.
PRESET = {"LLM_COMPRESSOR_LOG_DISABLED": "true"}
_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["zygote", "zygote_preload"])
_server_env: dict[str, str] | None = None
# How the session's commands ran (tests/conftest.py records it beside the durations): a command that could not be
# forked counts under the variables that stopped it.
COMMANDS: dict = {"forked": 0, "fresh": 0, "fresh_because": {}}


def start() -> None:
    """Start the fork server (once) with this folder importable: Python 3.11's fork server imports its preload
    modules before it applies the parent's sys.path, so they are found through PYTHONPATH."""
    global _server_env
    if _server_env is not None:
        return
    from multiprocessing import forkserver

    for key, value in {**PRESET, **_set_by_libraries()}.items():
        os.environ.setdefault(key, value)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), saved]))
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    _server_env = dict(os.environ)


def _set_by_libraries() -> dict[str, str]:
    """What libraries put into their own process's environment when imported or first used: scikit-learn and
    joblib their OpenMP flags, lm-eval Hugging Face's download setting, torch's inductor its default cache folder.
    Any command that makes those imports sets the same values, and so does a test that makes them in its own
    process after the server started: set first, they are in the server's environment too, and such a test's
    commands are still forked (without this, every command after the first such import ran in a fresh
    interpreter)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return {"KMP_DUPLICATE_LIB_OK": "True", "KMP_INIT_AT_FORK": "FALSE", "HF_XET_HIGH_PERFORMANCE": "1",
            "TORCHINDUCTOR_CACHE_DIR": os.path.abspath(default_cache_dir())}


def unforkable(env: dict[str, str]) -> list[str]:
    """The variables read at import time in which this whole environment differs from the server's."""
    start()
    return sorted(k for k in set(env) | set(_server_env)
                  if k.startswith(IMPORT_TIME) and env.get(k) != _server_env.get(k))


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str | None) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    f = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(f, 1)
    os.close(f)
    if err is None:  # 2>&1
        os.dup2(1, 2)
    else:
        f = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, 2)
        os.close(f)
    import importlib.util

    sys.argv = [importlib.util.find_spec("compress.__main__").origin, *argv]  # what `python -m compress` sees
    code = 1
    try:
        from compress.cli import main

        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        atexit._run_exitfuncs()  # what the interpreter runs on its way out (servers stopped, logs closed)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def process(argv: list[str], *, env: dict[str, str], cwd: str | Path, out: Path, err: Path | None = None):
    """A started child process forked from the server, running ``compress ARGV`` with the whole environment
    ``env`` in ``cwd``, its stdout to ``out`` and its stderr to ``err`` (to ``out`` as well when None)."""
    start()
    p = _ctx.Process(target=_child, args=(list(argv), env, str(cwd), str(out), None if err is None else str(err)))
    p.start()
    return p


def run(argv: list[str], *, env: dict[str, str], cwd: str | Path, timeout: float) -> subprocess.CompletedProcess:
    """``compress ARGV`` forked from the server (or in a fresh interpreter, see the module's note); the result as
    ``subprocess.run(..., capture_output=True, text=True)`` gives it."""
    args = [sys.executable, "-m", "compress", *argv]
    stopped = unforkable(env)
    if stopped:
        COMMANDS["fresh"] += 1
        for key in stopped:
            COMMANDS["fresh_because"][key] = COMMANDS["fresh_because"].get(key, 0) + 1
        return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    COMMANDS["forked"] += 1
    with tempfile.TemporaryDirectory(prefix="compress-cli-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        p = process(argv, env=env, cwd=cwd, out=out, err=err)
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            raise subprocess.TimeoutExpired(args, timeout)
        read = lambda f: f.read_text(errors="strict") if f.exists() else ""  # noqa: E731
        return subprocess.CompletedProcess(args, p.exitcode, read(out), read(err))
