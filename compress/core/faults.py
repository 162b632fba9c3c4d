"""Fault injection for the crash-safety tests: kill this process at a named point.

Code calls ``fault_point("NAME")`` at stage boundaries and in the middle of file writes. In
normal use it does nothing. The test harness (tests/test_crash_safety.py) sets

    COMPRESS_TESTING=1  COMPRESS_FAULT=NAME[#N]

and the process sends itself SIGKILL the N-th time (default: the first) it reaches NAME,
which is what a power cut, an OOM killer or ``kill -9`` does: no ``finally`` blocks, no
clean-up, files half-written. Both variables are needed, so a stray ``COMPRESS_FAULT`` in a
user's environment cannot kill a real run.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter[str] = Counter()


def _armed() -> tuple[str, int] | None:
    spec = os.environ.get("COMPRESS_FAULT")
    if not spec or os.environ.get("COMPRESS_TESTING") != "1":
        return None
    name, _, nth = spec.partition("#")
    return name, int(nth or 1)


def fault_point(name: str) -> None:
    """Die here with SIGKILL if the test harness asked for it (see the module docstring)."""
    armed = _armed()
    if armed is None or armed[0] != name:
        return
    _hits[name] += 1
    if _hits[name] == armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def armed_for(name: str) -> bool:
    """Whether a fault at ``name`` is armed (lets a writer split a file write in two)."""
    armed = _armed()
    return armed is not None and armed[0] == name


def hang_point(name: str) -> None:
    """Stop here for good, doing nothing (a deadlock), if the harness armed ``hang:NAME``: the caller's
    timeout must end it."""
    armed = _armed()
    if armed is not None and armed[0] == f"hang:{name}":
        import time

        while True:
            time.sleep(3600)
