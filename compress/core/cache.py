"""Content-addressed report cache.

A report is keyed by the content hash of the model files, the settings that change its
numbers and the library versions. Any recipe that evaluates the same base model with the
same settings reuses the same baseline report.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from compress.core.artifact import content_hash, model_files, read_json, sha256_file, write_json
from compress.core.env import library_versions, runs_root
from compress.core.faults import fault_point

T = TypeVar("T")


def cache_root() -> Path:
    env = os.environ.get("COMPRESS_CACHE_DIR")
    return Path(env) if env else runs_root() / ".cache"


CACHE_FORMAT = "compress-cache/1"


def _checksum(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_entry(path: Path, data: Any) -> None:
    """Write a cache entry atomically, with a checksum of its content."""
    write_json(path, {"format": CACHE_FORMAT, "sha256": _checksum(data), "data": data}, fault="cache")


def read_entry(path: Path, what: str) -> Any | None:
    """A cache entry's content; None (with a one-line warning) when it is damaged or of an
    older format, in which case the entry is removed and its value is measured again."""
    if not path.exists():
        return None
    try:
        envelope = read_json(path)
        ok = (isinstance(envelope, dict) and envelope.get("format") == CACHE_FORMAT
              and envelope.get("sha256") == _checksum(envelope.get("data")))
    except (OSError, ValueError, UnicodeDecodeError):
        ok = False
    if ok:
        return envelope["data"]
    from compress.core import console

    console.warn(f"cache entry {path} is damaged or from an older compress; {what} again")
    with contextlib.suppress(OSError):
        path.unlink()
    return None


# Entries a command found while checking its inputs (a weight file scanned and found finite), written only once
# the command starts its work, so that a command refused for bad input writes nothing.
_deferred: dict[Path, Any] = {}


def defer_entry(path: Path, value: Any) -> None:
    """Write ``value`` at ``path`` when the command starts its work (``write_deferred``), not now."""
    _deferred[path] = value


def write_deferred() -> None:
    """Write the deferred entries that are not in the cache yet."""
    for path, value in list(_deferred.items()):
        if not path.exists():
            with contextlib.suppress(OSError):  # a read-only cache only costs a scan next time
                write_entry(path, value)
    _deferred.clear()


def model_content_hash(path: Path) -> str:
    """Content hash of a model directory.

    Memoised on each file's path, size, inode, mtime and ctime: any write to a file changes its
    ctime (which no user call can set back), so an edit that keeps the size and mtime is still
    hashed again.
    """
    write_deferred()  # hashing is where a command's work starts: its inputs were good
    path = Path(path).resolve()
    files = model_files(path)
    stats = [(str(p), st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns)
             for p in files for st in [p.stat()]]
    stamp = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    memo = cache_root() / "hashes" / f"{stamp}.json"
    hit = read_entry(memo, "hashing the model")
    if isinstance(hit, dict) and isinstance(hit.get("content_hash"), str):
        return hit["content_hash"]
    hashes = {p.relative_to(path).as_posix(): {"sha256": sha256_file(p)} for p in files}
    digest = content_hash(hashes)
    try:
        write_entry(memo, {"content_hash": digest})
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
    data = read_entry(report_path(kind, key), f"measuring the {kind} report")
    if data is None:
        return None
    try:
        return cls.model_validate(data)  # type: ignore[attr-defined]
    except ValueError:
        return None  # written by another version of the report schema: measured again


def store(kind: str, key: str, report: Any) -> Path:
    path = report_path(kind, key)
    fault_point("cache.before-store")
    write_entry(path, report.model_dump(mode="json"))
    return path
