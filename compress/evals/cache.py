"""Content-addressed report cache.

A report is keyed by the content hash of the model files, the settings that change its
numbers and the library versions. Any recipe that evaluates the same base model with the
same settings reuses the same baseline report.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from compress.artifact import content_hash, model_files, read_json, sha256_file, write_json
from compress.env import library_versions
from compress.models import runs_root

T = TypeVar("T")


def cache_root() -> Path:
    env = os.environ.get("COMPRESS_CACHE_DIR")
    return Path(env) if env else runs_root() / ".cache"


def model_content_hash(path: Path) -> str:
    """Content hash of a model directory, memoised on (path, size, mtime) of each file."""
    path = Path(path).resolve()
    files = model_files(path)
    stamp = hashlib.sha256(json.dumps(
        [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()).hexdigest()
    memo = cache_root() / "hashes" / f"{stamp}.json"
    if memo.exists():
        return read_json(memo)["content_hash"]
    hashes = {p.relative_to(path).as_posix(): {"sha256": sha256_file(p)} for p in files}
    digest = content_hash(hashes)
    try:
        write_json(memo, {"path": str(path), "content_hash": digest})
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def report_key(kind: str, model_hash: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "model": model_hash, "settings": settings,
                       "libraries": library_versions()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def report_path(kind: str, key: str) -> Path:
    return cache_root() / kind / f"{key}.json"


def load_cached(kind: str, key: str, cls: type[T]) -> T | None:
    path = report_path(kind, key)
    if not path.exists():
        return None
    try:
        return cls.load(path)  # type: ignore[attr-defined]
    except (ValueError, OSError):
        return None  # a stale or damaged entry is measured again


def store(kind: str, key: str, report: Any) -> Path:
    path = report_path(kind, key)
    write_json(path, report.model_dump(mode="json"))
    return path
