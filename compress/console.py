"""Terminal output: one console for results, one for messages and progress (stderr)."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; give them room.
_WIDTH = None if sys.stdout.isatty() else 140
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 140)


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "+-$.")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    """A rich table; columns whose cells are all figures are right-aligned, text columns left."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    t = Table(title=title, title_justify="left", show_lines=False)
    for i, col in enumerate(columns):
        figures = i > 0 and bool(cells) and all(_numeric(row[i]) for row in cells)
        t.add_column(col, justify="right" if figures else "left", overflow="fold")
    for row in cells:
        t.add_row(*row)
    return t


def warn(msg: str) -> None:
    """One warning line on stderr."""
    from rich.markup import escape

    err.print(f"[yellow]warning:[/yellow] {escape(msg)}")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


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
