"""Artifacts on disk: content hashes, the manifest, and atomic directory writes.

An artifact directory holds a servable model, its tokenizer, ``recipe.yaml`` (the effective
recipe) and ``manifest.json``. The manifest lists the sha256 of every other file, so that
``compress export`` and ``compress verify`` can prove that the bytes are the ones gated.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compress.core.errors import IntegrityError, UsageError
from compress.core.faults import armed_for, fault_point

MANIFEST = "manifest.json"
RECIPE_FILE = "recipe.yaml"
MODEL_CARD = "README.md"
# A signed in-toto statement over every other file of an export (compress export --sign).
PROVENANCE = "provenance.intoto.json"
# The OpenSSF model-signing bundle over every other file of an export, PROVENANCE included (ship/model_sig.py).
MODEL_SIG = "model.sig"
# The reports and gate decision an export carries (compress.decide.evidence).
EVIDENCE_DIR = "evidence"
# Files describing an artifact rather than being the model; left out of its content hash.
DESCRIPTIVE = {MANIFEST, RECIPE_FILE, MODEL_CARD, PROVENANCE, MODEL_SIG}
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_files(root: Path) -> list[Path]:
    """Files that make up a model directory (hidden files and descriptive files excluded)."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.as_posix() in DESCRIPTIVE or rel.parts[0] == EVIDENCE_DIR:
            continue
        files.append(path)
    return files


def file_hashes(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "size"}}`` for every model file under ``root``."""
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in model_files(root)
    }


def content_hash(hashes: dict[str, dict[str, Any]]) -> str:
    """One hash for a whole model: over the sorted (path, sha256) pairs."""
    lines = "\n".join(f"{name}\0{entry['sha256']}" for name, entry in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in model_files(root))


def weights_size(root: Path) -> int:
    """Bytes of weight files (what quantization shrinks), falling back to all model files."""
    weights = [p for p in model_files(root) if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".gguf"}]
    return sum(p.stat().st_size for p in weights) if weights else dir_size(root)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share(root: Path) -> None:
    """Give every file and folder under ``root`` the user's usual permissions (umask applied).

    Libraries and ``mkstemp``/``mkdtemp`` create 0600/0700 entries; an artifact is meant to be
    read by a server that may run as another user.
    """
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


# Temporaries are named ``.<final name>.tmp-<pid>-<random>`` (``.old-`` for a replaced
# directory), in the final path's folder, and their writer holds an flock on them. Whoever
# writes next to them later removes the ones whose writer is gone (kill -9, power cut).
_TEMP = re.compile(r"^\.(?P<final>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
STALE_AFTER_S = 600  # a temporary whose pid looks alive is still stale when unlocked this long


def _temp_name(final: Path, kind: str = "tmp") -> str:
    return f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlocked(path: Path) -> bool:
    """True when nobody holds an flock on ``path`` (its writer has exited or died)."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's own lock


def sweep_stale(directory: Path) -> list[Path]:
    """Remove the temporaries that dead writers left in ``directory``; return what was removed.

    A replaced directory whose writer died between its two renames (the final path missing,
    ``.NAME.old-*`` present) is put back, so an interrupted ``--force`` leaves the old version.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or not _unlocked(entry):
            continue
        try:
            young = time.time() - entry.lstat().st_mtime < STALE_AFTER_S
        except OSError:
            continue
        if _pid_alive(int(m["pid"])) and young:
            continue
        final = entry.with_name(m["final"])
        try:
            if m["kind"] == "old" and entry.is_dir() and not final.exists():
                os.replace(entry, final)
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # someone else cleaned it, or we may not: it stays for the next sweep
    return removed


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, fault: str = "write") -> None:
    """Write a file atomically and durably: a reader (or a crash) sees the old file or the new
    one, never half of one. The data is fsynced before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    tmp = path.with_name(_temp_name(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(fd, "wb", closefd=False) as f:
            half = len(data) // 2 if armed_for(f"{fault}.mid") else 0
            if half:  # the crash tests kill here, with half of the file on disk
                f.write(data[:half])
                f.flush()
                fault_point(f"{fault}.mid")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"{fault}.before-rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def write_json(path: Path, data: Any, *, fault: str = "write_json") -> None:
    """Write JSON atomically (see ``write_bytes_atomic``)."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode(), fault=fault)


def safe_name(name: Any, where: str, allowed: Any = None) -> str:
    """A name read from a stored file, checked before it may touch the file system.

    It must be a non-empty string, a relative POSIX path with no ``..``, ``.`` or empty part, no
    backslash, NUL or control character, and, when ``allowed`` is given, one of those names.

    Args:
        where: the file the name was read from, for the error.

    Raises:
        UnsafeName: naming ``where`` and the name (exit 1).
    """
    from compress.core.errors import UnsafeName

    def refuse(why: str) -> UnsafeName:
        return UnsafeName(f"{where}: refusing the name {name!r}: {why}",
                          hint="the file was changed by hand or forged; rebuild, gate or export it again")

    if not isinstance(name, str) or not name:
        raise refuse("not a file name")
    if any(ord(ch) < 32 or ch in "\\\x7f" for ch in name):
        raise refuse("it holds a NUL, control character or backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise refuse("an absolute path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise refuse("a path that leaves its folder or is not normal")
    if allowed is not None and name not in allowed:
        raise refuse(f"not one of {', '.join(sorted(allowed))}")
    return name


def inside(folder: Path, name: str, where: str) -> Path:
    """``folder / name`` for a name that passed :func:`safe_name`, refusing one that a symlink on the
    way leads out of ``folder``."""
    from compress.core.errors import UnsafeName

    path = Path(folder) / safe_name(name, where)
    root = Path(folder).resolve()
    if not path.resolve().is_relative_to(root) or any(
            p.is_symlink() for p in [path, *path.parents] if p != root and p.is_relative_to(folder)):
        raise UnsafeName(f"{where}: refusing the name {name!r}: a symbolic link on its way",
                         hint="the folder was changed by hand; rebuild, gate or export it again")
    return path


def read_json(path: Path) -> Any:
    with path.open() as f:
        return json.load(f)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux") or armed_for("atomic_dir.between-renames"):
        return False  # (the crash tests arm that point to exercise the two-rename path)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # a file system without RENAME_EXCHANGE: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when complete.

    Args:
        final: where the directory should end up.
        overwrite: replace an existing directory. The old one is swapped out in one atomic
            step, so at every moment ``final`` is the old directory or the new one.

    Yields:
        The temporary directory to write into (on the same file system as ``final``).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise UsageError(f"{final} already exists", hint="choose another -o/--output or pass --force to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final.parent)
    tmp = final.with_name(_temp_name(final))
    tmp.mkdir()
    with _flocked(tmp):
        try:
            yield tmp
            share(tmp)
            fault_point("atomic_dir.before-rename")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not final.exists():
            os.rename(tmp, final)
            return
        if _exchange(tmp, final):
            fault_point("atomic_dir.after-swap")
            shutil.rmtree(tmp, ignore_errors=True)  # the old version, now under the temporary name
            return
        old = final.with_name(_temp_name(final, "old"))
        os.replace(final, old)
        fault_point("atomic_dir.between-renames")
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.exists():
        raise UsageError(f"{root} has no {MANIFEST}", hint="is this a directory written by compress?")
    return read_json(path)


def check_hashes(root: Path, recorded: dict[str, dict[str, Any]]) -> list[str]:
    """Compare the model files under ``root`` with recorded hashes; return every mismatch."""
    problems = []
    for name in recorded:
        safe_name(name, f"{root}/{MANIFEST}")
    actual = file_hashes(root)
    problems += [f"{p.relative_to(root).as_posix()}: is a symbolic link" for p in sorted(root.rglob("*"))
                 if p.is_symlink()]
    for name, entry in recorded.items():
        if name not in actual:
            problems.append(f"{name}: missing")
        elif actual[name]["sha256"] != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the recorded one (file changed)")
    for name in actual.keys() - recorded.keys():
        problems.append(f"{name}: not in the manifest (file added)")
    return problems


def verify_dir(root: Path) -> dict[str, Any]:
    """Re-check every file of an artifact against its manifest.

    Raises:
        IntegrityError: naming every file that is missing, changed or added.
    """
    manifest = read_manifest(root)
    problems = check_hashes(root, manifest.get("files", {}))
    if content_hash(manifest.get("files", {})) != manifest.get("content_hash"):
        problems.append("manifest: content_hash does not match its own file list")
    if problems:
        raise IntegrityError(f"{root}: " + "; ".join(problems),
                             hint="the files are not the ones recorded; rebuild or re-export the artifact")
    return manifest
