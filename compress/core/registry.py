"""Lazy registries: names map to ``"module:attr"`` strings, imported only when used.

Listing what exists (``compress recipes list``, ``--help``) therefore imports nothing heavy.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

from compress.core.errors import UsageError


def suggest(name: str, known: list[str], what: str) -> UsageError:
    """An error for an unknown name that offers the closest known names.

    Example:
        >>> str(suggest("int4x", ["fp8", "int8", "int4"], "method"))
        "Unknown method 'int4x'. Did you mean: int4? Available: fp8, int8, int4"
    """
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UsageError(f"Unknown {what} '{name}'.{hint} Available: {', '.join(known)}")


class LazyRegistry:
    """A name -> ``"module:attr"`` table whose entries are imported on first use."""

    def __init__(self, what: str, entries: dict[str, str]):
        self.what = what
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def target(self, name: str) -> str:
        if name not in self._entries:
            raise suggest(name, self.names(), self.what)
        return self._entries[name]

    def load(self, name: str) -> Any:
        module, _, attr = self.target(name).partition(":")
        return getattr(importlib.import_module(module), attr)
