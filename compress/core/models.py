"""Finding and loading models: built-in names, local directories, other runs, hub ids.

All four go through one path: a reference is resolved to a local directory (downloading a
hub snapshot when the hub is reachable), its weights are checked, and transformers loads it.
Torch and transformers are imported inside functions, never at module import.

The checks a directory passes before any compute live in :mod:`compress.core.weights`.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.core.env import PACKAGE, runs_root
from compress.core.errors import ModelInputError, ModelLoadError, UsageError
from compress.core.fixtures import FIXTURES, ensure_fixture
from compress.core.registry import suggest
from compress.core.weights import DTYPE_BYTES, FLOAT_DTYPES, PICKLE_SUFFIXES, check_safetensors, check_weights

ASSETS = PACKAGE / "assets"
# Shipped with compress. Generated ones (FIXTURES, e.g. llama-1b-random) are built into the
# cache on first use by compress/core/fixtures.py.
BUILTIN_MODELS = {"tiny-llama": ASSETS / "tiny-llama"}
BUILTIN_DATASETS = {
    "tiny-calibration": ASSETS / "data" / "calibration.jsonl",
    "tiny-train": ASSETS / "data" / "train.jsonl",
}
# What a hub snapshot downloads; "*.py" (remote code) only when the recipe trusts it.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.bin"]


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
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
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
                total += n * itemsize if entry["dtype"] in FLOAT_DTYPES else n * DTYPE_BYTES.get(entry["dtype"], 1)
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


def fp4_weights(config: Any) -> bool:
    """Whether a checkpoint holds compressed-tensors FP4 weights (NVFP4, MXFP4)."""
    qc = getattr(config, "quantization_config", None)
    qc = qc if isinstance(qc, dict) else qc.to_dict() if hasattr(qc, "to_dict") else {}
    return any((g.get("weights") or {}).get("type") == "float" and (g.get("weights") or {}).get("num_bits") == 4
               for g in (qc.get("config_groups") or {}).values() if isinstance(g, dict))


def _decompressed() -> dict[str, Any]:
    """Load FP4 weights decompressed: compressed-tensors 0.19 unpacks them to bfloat16 whatever the model's
    dtype, which a float32 model cannot multiply; decompressed once at load, they are cast with the model
    (activation quantization, W4A4's, still runs in the forward pass)."""
    from transformers import CompressedTensorsConfig

    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


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
    fp4 = fp4_weights(config) and resolve_dtype(path, dtype) != "bfloat16"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*already has a `quantization_config` attribute")
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True, **(_decompressed() if fp4 else {}), **kwargs,
            )
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:
        raise ModelLoadError(f"cannot load {path} as a causal LM: {str(e).splitlines()[0]}") from None
    if fp4:
        model.to(torch_dtype(dtype))
    model.eval()
    if device != "cpu" and "device_map" not in kwargs:
        model.to(device)
    return model
