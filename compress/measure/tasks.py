"""Which lm-eval tasks an eval runs and where they come from: the bundled tasks (``evals/`` in a checkout,
``compress._evals`` when installed), a recipe's include paths, and their content hashes for the cache key.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from compress.core.env import PACKAGE
from compress.core.errors import UsageError
from compress.core.recipe import EvalSpec


def bundled_tasks_dir() -> Path:
    """The bundled lm-eval tasks: ``evals/`` in a checkout, ``compress/_evals`` when installed."""
    checkout = PACKAGE.parent / "evals"
    if (checkout / "tiny_facts_mc.yaml").exists():
        return checkout
    return PACKAGE / "_evals"


def tasks_hash(root: Path) -> str:
    """Hash of the task files under a folder, so that editing a task invalidates cached reports."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and p.suffix in {".yaml", ".yml", ".jsonl", ".json", ".py", ".jinja"} and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def bundled_tasks_hash() -> str:
    return tasks_hash(bundled_tasks_dir())


def include_dirs(settings: EvalSpec) -> tuple[str, ...]:
    """The extra task folders as absolute paths (given relative to the current directory).

    Raises:
        UsageError: a folder that does not exist.
    """
    out = []
    for entry in settings.include_path:
        path = Path(entry).expanduser()
        if not path.is_dir():
            raise UsageError(f"include path {entry} is not a folder",
                             hint="give a folder of lm-eval task YAML files (relative to the current directory)")
        out.append(str(path.resolve()))
    return tuple(out)


def task_manager(include_path: Sequence[str] = (), tasks: Iterable[str] | None = None):
    """lm-eval's task manager over the bundled tasks and ``include_path``, one per process for each.

    lm-eval's own tasks (some 14,000 YAML files, seconds to index) are indexed too, unless ``tasks`` names only
    tasks or groups found in the bundled folder and the include paths.
    """
    include = tuple(include_path)
    if tasks is not None:
        local = _task_manager(include, False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return _task_manager(include, True)


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(bundled_tasks_dir()), *include_path], include_defaults=defaults)


@functools.lru_cache(maxsize=1)
def bundled_task_names() -> frozenset[str]:
    """The names of the bundled tasks and groups, read from their YAML files (no lm-eval import)."""
    names = set()
    for p in bundled_tasks_dir().glob("*.yaml"):
        names.update(re.findall(r"^(?:task|group):\s*([\w.-]+)\s*$", p.read_text(), flags=re.MULTILINE))
    return frozenset(names)


def check_tasks(tasks: list[str], include_path: tuple[str, ...] = ()) -> None:
    """Raise a UsageError for unknown task names, suggesting close ones.

    Bundled tasks are known without lm-eval's task index (which takes seconds to build).
    """
    if set(tasks) <= bundled_task_names():
        return
    known = set(task_manager(include_path, tasks).all_tasks)
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean: {', '.join(close)}?" if close else \
                f"bundled: {', '.join(sorted(bundled_task_names()))}; `lm-eval ls tasks` lists the rest"
            raise UsageError(f"unknown eval task '{task}'", hint=hint)
