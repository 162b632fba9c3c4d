"""Terminal output: one console for results (stdout), one for compress's own messages (stderr).

The console policy, for every command:

- results (tables, ``--json``) on stdout;
- compress's own progress on stderr: one line per stage off a terminal (CI logs), a live line
  with stage, step and time left on one; ``-q`` leaves only results and errors;
- everything the back ends print (warnings, logging, progress bars, C-level output) goes to a
  log file while a command runs (:func:`captured`), kept in the run's ``logs/`` folder, named
  in one line when the command fails, and shown live with ``-v`` or ``COMPRESS_BACKEND_LOG=1``.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; give them room (a table
# is only as wide as its cells, so this is a limit, not a width every line takes).
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "+-$.")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    """A rich table; columns whose cells are all figures are right-aligned, text columns left."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    from rich import box

    # A rule under the header on a terminal, no rules off one (CI logs): a table costs its rows
    # and its header (and its title).
    t = Table(title=title, title_justify="left", show_lines=False, box=box.SIMPLE_HEAD if out.is_terminal else None,
              show_edge=False)
    for i, col in enumerate(columns):
        figures = i > 0 and bool(cells) and all(_numeric(row[i]) for row in cells)
        t.add_column(col, justify="right" if figures else "left", overflow="fold")
    for row in cells:
        t.add_row(*row)
    return t


@dataclass
class _State:
    quiet: bool = False         # -q: results and errors only
    verbose: bool = False       # -v: back-end output and compress's details on stderr, live
    log: IO[str] | None = None  # the back-end log of the command running now
    log_path: Path | None = None
    log_home: Path | None = None  # where the log is kept when the command ends (a run's logs/)
    command: str = "compress"


state = _State()


def set_verbosity(quiet: bool, verbose: bool) -> None:
    from compress.core.errors import UsageError

    if quiet and verbose:
        raise UsageError("-q and -v ask for opposite things", hint="pass one of them")
    env = os.environ.get("COMPRESS_BACKEND_LOG", "").strip().lower()
    state.quiet, state.verbose = quiet, verbose or env in ("1", "true", "yes", "stderr")


def _to_log(line: str) -> None:
    if state.log is not None:
        state.log.write(f"[compress {time.strftime('%H:%M:%S')}] {line}\n")


def warn(msg: str) -> None:
    """One warning line on stderr (in the back-end log only, with -q)."""
    _to_log(f"warning: {msg}")
    if not state.quiet:
        err.print(f"[yellow]warning:[/yellow] {escape(msg)}")


def detail(msg: str) -> None:
    """A line about what a stage is doing: the log file, and the live line on a terminal; stderr
    with -v, or when no command captures output (compress used as a library). Off a terminal a
    command says one line per stage, not one per detail."""
    _to_log(msg)
    if _live is not None and not state.verbose:
        _live.detail(msg)
    elif state.verbose or (state.log is None and not state.quiet):
        # -v; or no command is capturing (compress used as a library): stderr, as before
        err.print(f"[dim]•[/dim] {escape(msg)}")


def step(msg: str) -> None:
    """A stage line: compress's own progress on stderr (not with -q)."""
    _to_log(msg)
    if not state.quiet:
        err.print(f"[dim]•[/dim] {escape(msg)}")


def print_json(data: Any) -> None:
    out.file.write(json.dumps(data, indent=2) + "\n")
    out.file.flush()


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (Python or C level) to stderr while the block runs.

    Some back ends print progress and tables to stdout; compress keeps stdout for results
    (``--json``).
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# ----------------------------------------------------------------------- progress

class Stages:
    """Progress over a command's stages: on a terminal a live line (stage k/N, what it is doing,
    elapsed, time left); elsewhere one line as each stage ends; nothing with -q."""

    def __init__(self, total: int, title: str) -> None:
        self.total, self.title, self.done = total, title, 0
        self._progress = None
        self._task = None

    def __enter__(self) -> "Stages":
        global _live
        if err.is_terminal and not state.quiet and not state.verbose:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"),
                                      TimeRemainingColumn(), TextColumn("[dim]{task.fields[detail]}"),
                                      console=err, transient=True, redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.total, detail="")
            _live = self
        return self

    def start(self, name: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self.title}: {name}", detail="")

    def detail(self, msg: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, detail=msg[:60])

    def end(self, name: str, seconds: float, reused: bool, note: str = "") -> None:
        self.done += 1
        how = "reused" if reused else f"{fmt_seconds(seconds)}"
        step(f"[{self.done}/{self.total}] {name}: {how}{f' ({note})' if note else ''}")
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)

    def skip(self) -> None:
        """A planned stage that will not run (an export after a FAIL)."""
        self.total -= 1
        if self._progress is not None:
            self._progress.update(self._task, total=self.total)

    def __exit__(self, *exc) -> None:
        global _live
        if self._progress is not None:
            self._progress.stop()
        _live = None


_live: Stages | None = None


# ------------------------------------------------------------------ back-end output

def _stream_for(stream: IO[str], fd: int) -> tuple[IO[str], int | None]:
    """Where compress's own lines go while fd 1/2 point at the log: a new stream on a copy of
    the real descriptor, or the stream itself when it is not that descriptor (pytest's capture)."""
    try:
        real = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        return stream, None
    stream.flush()
    copy = os.dup(fd)
    return os.fdopen(copy, "w", buffering=1, encoding="utf-8", errors="replace", closefd=True), copy


@contextlib.contextmanager
def captured(command: str) -> Iterator[None]:
    """While the block runs, send everything written to stdout and stderr (Python or C level:
    warnings, logging, progress bars of the back ends) to a log file; compress's consoles keep
    writing to the real stdout and stderr. With -v, back-end output goes to stderr instead.

    The log starts in the temporary directory (the run it belongs to is not known yet) and is
    moved into ``state.log_home`` (a run's ``logs/``) when the block ends, if one was set; an
    empty log is removed. ``state.log_path`` names it afterwards, for the pointer on failure.
    """
    state.command, state.log_home, state.log_path = command, None, None
    if state.verbose:
        # The back ends' stdout joins stderr; results still reach the real stdout.
        out_stream, out_copy = _stream_for(sys.stdout, 1)
        out.file = out_stream
        try:
            with stdout_to_stderr():
                yield
        finally:
            out.file = None
            if out_copy is not None:
                with contextlib.suppress(Exception):
                    out_stream.close()
        return
    from compress.core.procs import private_dir

    folder = private_dir("logs")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, name = tempfile.mkstemp(prefix=f"{command}-{stamp}-", suffix=".log", dir=folder)
    log = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout.flush()
    sys.stderr.flush()
    out_stream, out_copy = _stream_for(sys.stdout, 1)
    err_stream, err_copy = _stream_for(sys.stderr, 2)
    saved = (os.dup(1), os.dup(2))
    out.file, err.file = out_stream, err_stream
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    state.log, state.log_path = log, Path(name)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr, log):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for copy in saved:
            os.close(copy)
        for stream, copy in ((out_stream, out_copy), (err_stream, err_copy)):
            if copy is not None:
                with contextlib.suppress(Exception):
                    stream.close()
        out.file = None  # back to the process's stdout and stderr
        err.file = None
        state.log = None
        log.close()
        state.log_path = _keep(Path(name), command, stamp)


def _keep(path: Path, command: str, stamp: str) -> Path | None:
    """Remove an empty log; move the others into the run's logs/ when the command found one."""
    if path.stat().st_size == 0:
        path.unlink()
        return None
    if state.log_home is None:
        return path
    import shutil

    target = state.log_home / f"compress-{command}-{stamp}.log"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), target)
    except OSError:
        return path  # a read-only run folder: the log stays where it was written
    for old in sorted(state.log_home.glob("compress-*.log"))[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)  # names sort by time: the oldest go
    return target


KEEP_LOGS = 20  # back-end logs kept per run folder


def log_into(folder: Path) -> None:
    """Keep the running command's back-end log in this folder (a run's ``logs/``) when it ends."""
    if state.log is not None:
        state.log_home = Path(folder)
