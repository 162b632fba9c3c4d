"""Exclusive locks on directories, so that two compress processes never write one run at once.

A lock is an ``flock`` on the directory itself: the kernel drops it when its holder exits or
is killed, so a crash never leaves a stale lock behind. Locks are re-entrant within a process
(``compress run`` holds its run folder while the artifact stage takes the same lock).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from compress.core.errors import UsageError

# Locks this process holds: real path -> (fd, depth). Process-wide by nature: flock belongs
# to the open file, and a second open of the same folder in this process would deadlock.
_held: dict[str, list[int]] = {}


def lock_wait_s() -> float:
    """How long to wait for another process's lock (COMPRESS_LOCK_WAIT seconds; 0: don't)."""
    raw = os.environ.get("COMPRESS_LOCK_WAIT", "3600")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise UsageError(f"COMPRESS_LOCK_WAIT={raw!r} is not a number of seconds",
                         hint="unset it, or set e.g. COMPRESS_LOCK_WAIT=600") from None


@contextlib.contextmanager
def locked(directory: Path, what: str, *, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (created if missing) while the block runs.

    Args:
        directory: the folder being written.
        what: how to name it in messages ("run tiny-llama-int4-gptq").
        log: where the "waiting" message goes.

    Raises:
        UsageError: another process holds the lock and it was not released within
            ``COMPRESS_LOCK_WAIT`` seconds (exit 2).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(directory)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _acquire(fd, what, log)
        _held[key] = [fd, 1]
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)


def _acquire(fd: int, what: str, log: Callable[[str], None] | None) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    wait = lock_wait_s()
    if wait <= 0:
        raise UsageError(f"another compress process is writing {what}",
                         hint="wait for it to finish, or set COMPRESS_LOCK_WAIT=SECONDS to wait")
    if log:
        log(f"another compress process is writing {what}; waiting up to {wait:.0f} s for it to finish")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise UsageError(f"another compress process is still writing {what} after {wait:.0f} s",
                                 hint="wait for it to finish, or raise COMPRESS_LOCK_WAIT") from None
            time.sleep(0.2)
