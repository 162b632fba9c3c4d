"""Processes compress starts, and the guarantee that none outlives the command that started it.

Every child process group (a vLLM server, a benchmark worker) is registered here while it runs.
Signal handlers live in the main thread (Python delivers signals only there): on SIGTERM, SIGINT
or SIGHUP they end every registered group, whichever thread started it, then let the command
unwind with the usual exit code (130 for Ctrl-C, 128 + the signal otherwise). An ``atexit`` hook
ends whatever is still registered when the interpreter exits by any other path.

Children also get an environment without the secrets compress holds: the signing key given as
text in ``COMPRESS_SIGN_KEY`` is never inherited by a server or worker. Nor do they inherit what a
back end wrote into compress's own environment when it was imported (see :data:`SET_BY_IMPORTS`).

Example:
    with owned(proc.pid):      # the group ends on a signal even if this thread never sees it
        ...
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping

# Variables a child process must not inherit: a private key given as text (compress.ship.provenance).
SECRETS = ("COMPRESS_SIGN_KEY",)
# Variables that back ends write into the environment of the process that imports them: GPTQModel's tokenizer
# helper (tokenicer) points HF_HOME and the hub and module caches at the shared folder /tmp/tokenicer_hf_home, and
# GPTQModel sets CUDA_DEVICE_ORDER and PYTORCH_ALLOC_CONF. A child gets the value the command started with, or none.
SET_BY_IMPORTS = ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE", "CUDA_DEVICE_ORDER",
                  "PYTORCH_ALLOC_CONF")
# A child that shares the cores gets OpenMP threads that sleep while they wait (omp_wait_policy).
OMP_WAIT = "OMP_WAIT_POLICY"
SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)

_groups: dict[int, str] = {}  # pgid -> what it is, for the log
_lock = threading.Lock()
_started_with: dict[str, str | None] = {}  # SET_BY_IMPORTS as the command found them (remember_environment)


def remember_environment() -> None:
    """Note :data:`SET_BY_IMPORTS` as they are now, before any back end is imported (the CLI's first step)."""
    _started_with.clear()
    _started_with.update({k: os.environ.get(k) for k in SET_BY_IMPORTS})


def child_env(extra: Mapping[str, str] | None = None, *, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The current environment less :data:`SECRETS` (and ``drop``), with :data:`SET_BY_IMPORTS` as the command
    started with them (once :func:`remember_environment` ran), and ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and k not in drop}
    for key, value in _started_with.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.update(extra or {})
    return env


def omp_wait_policy(env: Mapping[str, str] | None = None) -> str:
    """The OpenMP wait policy a child starts with: ``env``'s or the user's, else ``PASSIVE``. A spinning thread
    holds a core that the rest of the machine (a server's event loop, a client, another process) needs; a
    sleeping one gives it back, for a few percent of the child's own speed."""
    return (env or {}).get(OMP_WAIT) or os.environ.get(OMP_WAIT) or "PASSIVE"


def register(pgid: int, what: str) -> None:
    with _lock:
        _groups[pgid] = what


def unregister(pgid: int) -> None:
    with _lock:
        _groups.pop(pgid, None)


def registered() -> dict[int, str]:
    with _lock:
        return dict(_groups)


@contextlib.contextmanager
def owned(pgid: int, what: str = "process") -> Iterator[None]:
    """Register ``pgid`` for the block's duration (its owner still stops it on the way out)."""
    register(pgid, what)
    try:
        yield
    finally:
        unregister(pgid)


def kill_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM to the group, SIGKILL to what is left after ``grace`` seconds; returns when none is left
    or after ``grace + 5`` seconds in all."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_exists(pgid):
                return
            time.sleep(0.1)


def group_alive(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``."""
    import psutil

    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return alive


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # Zombies still count for killpg; reap what is ours and look again.
    with contextlib.suppress(ChildProcessError, OSError):
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
            pass
    return bool(group_alive(pgid))


def stop_all(grace: float = 10.0) -> list[int]:
    """End every registered group at once (SIGTERM to all, then SIGKILL to the rest). Returns their pgids."""
    groups = list(registered())
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_group_exists(g) for g in groups):
        time.sleep(0.1)
    for pgid in groups:
        if _group_exists(pgid):
            kill_group(pgid, grace=0)
        unregister(pgid)
    return groups


def _on_signal(signum, frame):
    # Restore the default first: a second signal while stopping ends the process at once.
    for sig in SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
    stop_all()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def install_handlers() -> bool:
    """Install the handlers, from the main thread (elsewhere it is a no-op: returns False). A handler
    that someone else installed (not the default one) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.default_int_handler, _on_signal):
            signal.signal(sig, _on_signal)
    return True


atexit.register(stop_all, 5.0)


def private_dir(name: str) -> Path:
    """A folder only this user can enter, for logs: ``$XDG_CACHE_HOME/compress/NAME`` (else
    ``~/.cache/compress/NAME``), never a fixed path under the shared /tmp. A symlink there, or a
    folder another user owns, is refused rather than followed.

    Raises:
        OSError: the folder cannot be made private.
    """
    import stat
    from pathlib import Path

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress"
    path = base / name
    for folder in (base, path):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise OSError(f"{folder} is not a plain folder (a symlink?): remove it")
        if info.st_uid != os.getuid():
            raise OSError(f"{folder} belongs to another user: remove it or set XDG_CACHE_HOME")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(folder, 0o700)
    return path
