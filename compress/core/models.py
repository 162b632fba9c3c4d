"""Finding and loading models: built-in names, local directories, other runs, hub ids.

All four go through one path: a reference is resolved to a local directory (downloading a
hub snapshot when the hub is reachable), its weights are checked, and transformers loads it.
Torch and transformers are imported inside functions, never at module import.

``check_model_dir`` refuses a bad model directory before any compute (exit 2, with the file
and the fix): no config.json, remote code that the recipe did not allow, no tokenizer, a link
out of the directory, a truncated or corrupt safetensors file, weights holding NaN or inf.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from compress.core import cache
from compress.core.env import PACKAGE, runs_root
from compress.core.errors import ModelInputError, ModelLoadError, UsageError
from compress.core.fixtures import FIXTURES, ensure_fixture
from compress.core.registry import suggest

ASSETS = PACKAGE / "assets"
# Shipped with compress. Generated ones (FIXTURES, e.g. llama-1b-random) are built into the
# cache on first use by compress/core/fixtures.py.
BUILTIN_MODELS = {"tiny-llama": ASSETS / "tiny-llama"}
BUILTIN_DATASETS = {
    "tiny-calibration": ASSETS / "data" / "calibration.jsonl",
    "tiny-train": ASSETS / "data" / "train.jsonl",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Any one of these makes a directory loadable by AutoTokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
# What a hub snapshot downloads; "*.py" (remote code) only when the recipe trusts it.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.bin"]
REDOWNLOAD = "re-download it, or re-export it from its source"


@dataclass
class ModelRef:
    """A model reference resolved to a directory on this machine."""

    spec: str
    path: Path
    source: str  # builtin | local | run | hub
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """For manifests: the reference as given and what it resolved to (hub commit, run key)."""
        return {"id": self.spec, "source": self.source, "revision": self.revision, "path": str(self.path),
                **self.extra}


def resolve_model(spec: str, revision: str | None = None, *, trust_remote_code: bool = False) -> ModelRef:
    """Turn a model reference into a local directory.

    ``builtin:llama-1b-random`` (random weights, for speed and memory only) is generated into
    the cache the first time it is asked for (about 2 GB, a few seconds to a minute).

    Args:
        spec: ``builtin:NAME``, a local directory, ``run:NAME`` or a hub id (``org/name``).
        revision: a hub revision (branch, tag or commit); ignored for local directories.
        trust_remote_code: a hub download fetches the model's Python files (``*.py``) only
            when this is set.

    Raises:
        UsageError: an unknown built-in name or run.
        ModelInputError: a path that does not exist, is not a directory or has no config.json;
            a hub id that does not exist (exit 2).
        ModelLoadError: a hub id that cannot be fetched, or a generated built-in model that
            cannot be written into the cache (exit 4).
    """
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name in FIXTURES:
            return ModelRef(spec, ensure_fixture(name), "builtin")
        if name not in BUILTIN_MODELS:
            raise suggest(name, [*BUILTIN_MODELS, *FIXTURES], "built-in model")
        path = BUILTIN_MODELS[name]
        if not (path / "config.json").exists():
            raise ModelLoadError(f"built-in model {name} is missing from {path}",
                                 hint="reinstall compress, or rebuild it with scripts/build_tiny_model.py")
        return ModelRef(spec, path, "builtin")
    if spec.startswith("run:"):
        return _resolve_run(spec)
    path = Path(spec).expanduser()
    if path.is_dir() and newest_run(path) != path:  # runs/NAME: the model of its newest run
        path = newest_run(path) / "model"
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        if not path.exists():
            raise ModelInputError(f"model path {spec} does not exist",
                                  hint="give a directory with config.json, a hub id, or builtin:tiny-llama")
        if not path.is_dir():
            raise ModelInputError(f"model path {spec} is not a directory",
                                  hint="give the directory that holds config.json and the weights")
        if not (path / "config.json").exists():
            raise ModelInputError(f"{spec} has no config.json", hint="point at a Hugging Face model directory")
        return ModelRef(spec, path.resolve(), "local")
    return _resolve_hub(spec, revision, trust_remote_code)


def newest_run(path: Path) -> Path:
    """A recipe's runs folder (``runs/NAME``, holding ``LATEST``) -> its newest run,
    ``runs/NAME/KEY``; any other path as given."""
    path = Path(path)
    latest = path / "LATEST"
    if latest.is_file() and not (path / "model").exists() and not (path / "config.json").exists():
        key = latest.read_text().strip()
        if key and (path / key).is_dir():
            return path / key
    return path


def _resolve_run(spec: str) -> ModelRef:
    name = spec.split(":", 1)[1]
    run_dir = runs_root() / name
    latest = run_dir / "LATEST"
    if not latest.exists():
        raise UsageError(f"no finished run named '{name}' under {runs_root()}",
                         hint=f"run its recipe first: compress run recipes/{name}.yaml")
    key = latest.read_text().strip()
    model_dir = run_dir / key / "model"
    if not (model_dir / "config.json").exists():
        raise ModelInputError(f"run '{name}' has no model at {model_dir}", hint="rerun its recipe")
    gate = run_dir / key / "gate.json"
    verdict = json.loads(gate.read_text()).get("verdict") if gate.exists() else None
    return ModelRef(spec, model_dir.resolve(), "run", extra={"run_key": key, "gate_verdict": verdict})


def _resolve_hub(spec: str, revision: str | None, trust_remote_code: bool = False) -> ModelRef:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise ModelLoadError(f"cannot fetch hub model {spec}: {e}") from None
    # A model's own Python files run only under trust_remote_code; without it, never fetch them.
    patterns = HUB_PATTERNS + (["*.py"] if trust_remote_code else [])
    try:
        path = snapshot_download(spec, revision=revision, allow_patterns=patterns)
    except RepositoryNotFoundError:
        raise ModelInputError(f"hub model {spec} not found",
                              hint="check the id, or give a local directory or builtin:tiny-llama") from None
    except HFValidationError:
        raise ModelInputError(f"model '{spec}' is neither a local directory nor a hub id",
                              hint="give ./DIR for a local directory, ORG/NAME for the hub, or builtin:tiny-llama") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"hub model {spec} is not in the local cache and the hub cannot be reached",
                             hint="download it where the hub is reachable, or give a local directory") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelLoadError(f"cannot fetch hub model {spec}: {e}") from None
    # Snapshots live in .../snapshots/<commit sha>: the exact revision that was read.
    return ModelRef(spec, Path(path), "hub", revision=revision, extra={"commit": Path(path).name})


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
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
                "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
# Only floating-point tensors can hold NaN or inf; integer and packed ones are not scanned.
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
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
        itemsize = _DTYPE_BYTES.get(entry.get("dtype"))
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

    for name, t in read_tensors(Path(path), max_elements=_SCAN_ELEMENTS, dtypes=_FLOAT_DTYPES):
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


def vocab_size(path: Path) -> int | None:
    """The vocabulary size a model directory's config.json states (its text part's, for a
    multimodal config); None when it states none."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
        return int(config.get("text_config", config)["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def checkpoint_dtype(path: Path) -> str:
    """The dtype a checkpoint's config declares (``dtype``, or ``torch_dtype`` before
    transformers 5): float32, bfloat16 or float16; float32 when it declares none."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    config = config.get("text_config", config) if "dtype" not in config and "torch_dtype" not in config else config
    value = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return value if value in ("float32", "bfloat16", "float16") else "float32"


def resolve_dtype(path: Path, dtype: str) -> str:
    """``auto`` -> the checkpoint's own dtype; any other name as given."""
    return checkpoint_dtype(path) if dtype == "auto" else dtype


def weight_bytes_in(path: Path, dtype: str) -> int:
    """Bytes a checkpoint's weights take once loaded in ``dtype`` (floating-point tensors cast,
    others as stored), read from the safetensors headers; the files' size without them."""
    itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return sum(p.stat().st_size for p in Path(path).iterdir() if p.suffix in PICKLE_SUFFIXES)
    total = 0
    for f in files:
        for name, entry in check_safetensors(f).items():
            if name != "__metadata__":
                n = math.prod(entry["shape"])
                total += n * itemsize if entry["dtype"] in _FLOAT_DTYPES else n * _DTYPE_BYTES.get(entry["dtype"], 1)
    return total


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "auto": "auto"}[name]


def pick_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name} asked for, but no CUDA device is available", hint="use --device cpu")
    return name


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: Path, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
               allow_pickle: bool = False, **kwargs: Any):
    """Load a decoder-only causal LM from a local directory.

    Raises:
        ModelLoadError: no weights, pickled weights without permission, an encoder-decoder
            model, or any failure inside transformers (with its message).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    check_weights(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the config of {path}: {e}") from None
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{path} is an encoder-decoder model ({config.model_type})",
                             hint="compress works on decoder-only causal LMs")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True, **kwargs,
        )
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:
        raise ModelLoadError(f"cannot load {path} as a causal LM: {str(e).splitlines()[0]}") from None
    model.eval()
    if device != "cpu" and "device_map" not in kwargs:
        model.to(device)
    return model
