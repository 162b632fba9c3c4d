"""Checks on a model directory before any compute, and reading its weights without torch's loaders.

``check_model_dir`` refuses a bad model directory (exit 2, with the file and the fix): no config.json,
remote code that the recipe did not allow, no tokenizer, a link out of the directory, a truncated or
corrupt safetensors file, weights holding NaN or inf. The finite scan is memoized in the cache by the
file's identity, so a rerun does not read every tensor again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from compress.core import cache
from compress.core.errors import ModelInputError

# Weights in these are pickles, which run code when loaded: refused unless the recipe allows them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Any one of these makes a directory loadable by AutoTokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
REDOWNLOAD = "re-download it, or re-export it from its source"


def check_model_dir(path: Path, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> list[Path]:
    """Refuse a model directory that cannot be used, before any compute; return its weight files.

    Checks config.json, remote code (``auto_map``) against ``trust_remote_code``, that a
    tokenizer is there, then everything ``check_weights`` checks.

    Raises:
        ModelInputError: naming the file and the fix (exit 2).
    """
    path = Path(path)
    config = _read_json_object(path / "config.json")
    if not trust_remote_code:
        tokenizer_config = _read_json_object(path / "tokenizer_config.json", optional=True)
        custom = [f"{name} ({', '.join(sorted(data['auto_map']))})"
                  for name, data in (("config.json", config), ("tokenizer_config.json", tokenizer_config))
                  if isinstance(data.get("auto_map"), dict) and data["auto_map"]]
        if custom:
            raise ModelInputError(
                f"{path} needs remote code: its {' and '.join(custom)} name Python classes shipped with the model",
                hint="that code would run on this machine; if you trust its source, set "
                     "model.trust_remote_code: true in the recipe, or --set model.trust_remote_code=true")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelInputError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
                              hint="copy the tokenizer files of the base model into it, or " + REDOWNLOAD)
    return check_weights(path, allow_pickle)


def _read_json_object(path: Path, optional: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if optional:
            return {}
        raise ModelInputError(f"{path.parent} has no {path.name}", hint="point at a Hugging Face model directory")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelInputError(f"{path} is not valid JSON ({e})".splitlines()[0], hint=REDOWNLOAD) from None
    if not isinstance(data, dict):
        raise ModelInputError(f"{path} is not a JSON object", hint=REDOWNLOAD)
    return data


def check_weights(path: Path, allow_pickle: bool = False) -> list[Path]:
    """Return the weight files of a model directory, refusing what cannot be loaded safely.

    Before any compute: no link may lead out of the directory, every ``*.safetensors`` file
    must be complete (header and data), and every floating-point tensor finite. Pickled
    weights are refused unless allowed.

    Raises:
        ModelInputError: naming the file (and tensor) and the fix (exit 2).
    """
    path = Path(path)
    check_links(path)
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        _check_shards(path)
        for f in safetensors:
            check_safetensors(f)
        for f in safetensors:
            check_finite(f)
        return safetensors
    gguf = path / "model.gguf"
    if gguf.is_file():  # a GGUF artifact (llama.cpp reads it; compress never loads its weights in torch)
        with open(gguf, "rb") as f:
            head = f.read(8)
        if head[:4] != b"GGUF":
            raise ModelInputError(f"{gguf} is not a GGUF file (no GGUF magic)", hint=REDOWNLOAD)
        return [gguf]
    pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled and not allow_pickle:
        raise ModelInputError(
            f"{path} has only pickled weights ({pickled[0].name}); loading them can run arbitrary code",
            hint="convert them to safetensors, or set model.allow_pickle: true if you trust the source",
        )
    if not pickled:
        raise ModelInputError(f"{path} has no weight files (*.safetensors)", hint="is the download complete?")
    return pickled


def _link_root(path: Path) -> Path:
    """The directory that links in ``path`` may point into: the model directory itself, or for a
    Hugging Face cache snapshot (``models--ORG--NAME/snapshots/SHA``) the whole repo folder,
    whose snapshot files are links into ``../../blobs``."""
    if path.parent.name == "snapshots" and path.parents[1].name.startswith(("models--", "datasets--")):
        return path.parents[1].resolve()
    return path.resolve()


def check_links(path: Path) -> None:
    """Refuse a model directory with a link that leads outside it (or nowhere).

    A link out would make the content hash, the artifact and an export read files the
    directory does not hold.
    """
    root = _link_root(Path(path))
    for dirpath, dirnames, filenames in os.walk(path):  # links to folders are listed, not followed
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            if name.startswith(".") or not entry.is_symlink():
                continue
            target = Path(os.path.realpath(entry))
            if not target.exists():
                raise ModelInputError(f"{entry} is a broken link (to {os.readlink(entry)})",
                                      hint="copy the real file into the model directory, or " + REDOWNLOAD)
            if not target.is_relative_to(root):
                raise ModelInputError(f"{entry} is a link to {target}, outside the model directory {path}",
                                      hint="copy the file into the directory (cp -L) instead of linking to it")


# Bytes per element of each safetensors dtype (sub-byte and unknown dtypes are not size-checked).
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
                "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
# Only floating-point tensors can hold NaN or inf; integer and packed ones are not scanned.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces


def check_safetensors(path: Path) -> dict[str, Any]:
    """Validate a safetensors file without loading it: the 8-byte little-endian header length,
    the JSON header, and that every tensor's ``data_offsets`` fit its shape and end within the
    file. Return the header.

    Raises:
        ModelInputError: the file is truncated or its header is corrupt (exit 2).
    """
    path = Path(path)
    size = path.stat().st_size

    def bad(problem: str) -> ModelInputError:
        return ModelInputError(f"{path} is {problem}", hint=REDOWNLOAD)

    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"truncated ({size} bytes, less than a safetensors header)")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise bad(f"truncated or corrupt: its header length says {n} bytes, the file has {size}")
        if n < 2 or n > _MAX_HEADER:
            raise bad(f"corrupt: a safetensors header length of {n} bytes is impossible")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise bad("corrupt: its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise bad("corrupt: its header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise bad(f"corrupt: tensor '{name}' has no valid data_offsets")
        itemsize = DTYPE_BYTES.get(entry.get("dtype"))
        if itemsize and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape):
            if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
                raise bad(f"corrupt: tensor '{name}' ({entry['dtype']} {shape}) does not fit its data_offsets")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise bad(f"truncated: {size} bytes, but its header describes {8 + n + end}")
    return header


def check_finite(path: Path) -> None:
    """Refuse a safetensors file whose floating-point tensors hold NaN or inf.

    The scan reads a file once: its result is memoised on the file's identity (path, size,
    inode, mtime, ctime) in this process and, for files found clean, in the cache
    (``finite/``, deferred with ``cache.defer_entry`` until the command starts its work), so a
    rerun served from the cache reads no weights and imports no torch.
    Any write to the file changes its ctime, so an edited file is scanned again.

    Raises:
        ModelInputError: naming the first bad tensor (exit 2).
    """
    path = Path(path)
    st = path.stat()
    identity = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    memo = cache.cache_root() / "finite" / (hashlib.sha256(json.dumps([*identity, st.st_dev]).encode())
                                            .hexdigest() + ".json")
    if cache.read_entry(memo, "scanning the weights") == {"finite": True}:
        return
    bad = _first_nonfinite(*identity)
    if bad is None:
        cache.defer_entry(memo, {"finite": True})  # written once the command gets to work
    else:
        name, what = bad
        raise ModelInputError(f"{path}: tensor '{name}' holds {what} values",
                              hint="the weights are broken, e.g. by a training run that diverged; "
                                   "re-download the model, or re-export it from its source")


_SCAN_ELEMENTS = 1 << 26  # elements read at a time, so a huge tensor is scanned in slices


@functools.lru_cache(maxsize=256)
def _first_nonfinite(path: str, size: int, mtime_ns: int, ino: int, ctime_ns: int) -> tuple[str, str] | None:
    """(tensor name, "NaN" or "infinite") of the first non-finite tensor, or None."""
    import torch

    for name, t in read_tensors(Path(path), max_elements=_SCAN_ELEMENTS, dtypes=FLOAT_DTYPES):
        if t.element_size() == 1:
            t = t.float()  # float8: isfinite has no kernel for it
        if not bool(torch.isfinite(t).all()):
            return name, "NaN" if bool(torch.isnan(t).any()) else "infinite"
    return None


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_freed_memory() -> None:
    """Hand memory freed inside the process back to the system (glibc's ``malloc_trim``).

    Tensors of a few to a few tens of megabytes come from the heap, not from their own
    mappings, once glibc has raised its mmap threshold; freed one by one between live ones,
    they stay in the process's RSS. Reading a checkpoint tensor by tensor would otherwise grow
    by about the size of what it read (3 GB on a 2.2 GB checkpoint).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# The torch dtype of each safetensors dtype that torch can hold.
_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
                 "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                 "BOOL": "bool"}


def read_tensors(path: Path, *, max_elements: int | None = None,
                 dtypes: set[str] | None = None) -> Iterator[tuple[str, Any]]:
    """The tensors of one safetensors file, in file order, as (name, tensor) pairs, each read into
    memory of its own with plain reads. (``safe_open`` maps the file instead, and every page a
    read touches stays in the process's RSS until the file is closed: a whole shard.)

    Args:
        max_elements: a larger tensor comes as several pairs, each a slice of its rows.
        dtypes: only tensors of these safetensors dtypes (all when None).

    Raises:
        ModelInputError: a damaged file, or a tensor of a dtype torch cannot hold (exit 2).
    """
    import torch

    header = check_safetensors(path)
    with Path(path).open("rb") as f:
        base = 8 + int.from_bytes(f.read(8), "little")
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
        for name, entry in entries:
            if dtypes is not None and entry["dtype"] not in dtypes:
                continue
            dtype = getattr(torch, _TORCH_DTYPES.get(entry["dtype"], ""), None)
            if dtype is None:
                raise ModelInputError(f"{path}: tensor '{name}' is {entry['dtype']}, a dtype compress cannot read",
                                      hint="convert the checkpoint to float or integer tensors")
            shape = entry["shape"]
            start, end = entry["data_offsets"]
            if end == start:
                yield name, torch.empty(shape, dtype=dtype)
                continue
            rows = max(1, max_elements // max(1, math.prod(shape[1:]))) if max_elements and shape else shape[0] if shape else 1
            step = rows * ((end - start) // (shape[0] if shape else 1))
            for offset in range(start, end, step):
                data = bytearray(min(step, end - offset))
                f.seek(base + offset)
                if f.readinto(data) != len(data):
                    raise ModelInputError(f"{path} ends inside tensor '{name}'", hint=REDOWNLOAD)
                yield name, torch.frombuffer(data, dtype=dtype).reshape([-1, *shape[1:]] if shape else [])


def _check_shards(path: Path) -> None:
    """A sharded checkpoint must hold every shard its index names."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return
    weight_map = _read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ModelInputError(f"{index} has no weight_map", hint=REDOWNLOAD)
    missing = sorted({str(v) for v in weight_map.values()} - {p.name for p in path.glob("*.safetensors")})
    if missing:
        raise ModelInputError(f"{path} is missing {len(missing)} weight shard(s) named in {index.name}: "
                              f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}",
                              hint="is the download complete? " + REDOWNLOAD)
