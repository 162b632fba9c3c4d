"""Finding and loading models: built-in names, local directories, other runs, hub ids.

All four go through one path: a reference is resolved to a local directory (downloading a
hub snapshot when the hub is reachable), its weights are checked, and transformers loads it.
Torch and transformers are imported inside functions, never at module import.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import ModelLoadError, UsageError
from compress.registry import suggest

ASSETS = Path(__file__).resolve().parent / "assets"
BUILTIN_MODELS = {"tiny-llama": ASSETS / "tiny-llama"}
BUILTIN_DATASETS = {
    "tiny-calibration": ASSETS / "data" / "calibration.jsonl",
    "tiny-train": ASSETS / "data" / "train.jsonl",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


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


def runs_root() -> Path:
    return Path(os.environ.get("COMPRESS_RUNS_DIR", "runs"))


def resolve_model(spec: str, revision: str | None = None) -> ModelRef:
    """Turn a model reference into a local directory.

    Args:
        spec: ``builtin:NAME``, a local directory, ``run:NAME`` or a hub id (``org/name``).
        revision: a hub revision (branch, tag or commit); ignored for local directories.

    Raises:
        UsageError: an unknown built-in name or run.
        ModelLoadError: a path that does not exist, or a hub id that cannot be fetched.
    """
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN_MODELS:
            raise suggest(name, list(BUILTIN_MODELS), "built-in model")
        path = BUILTIN_MODELS[name]
        if not (path / "config.json").exists():
            raise ModelLoadError(f"built-in model {name} is missing from {path}",
                                 hint="reinstall compress, or rebuild it with scripts/build_tiny_model.py")
        return ModelRef(spec, path, "builtin")
    if spec.startswith("run:"):
        return _resolve_run(spec)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        if not path.is_dir():
            raise ModelLoadError(f"model path {spec} does not exist or is not a directory",
                                 hint="give a directory with config.json, a hub id, or builtin:tiny-llama")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{spec} has no config.json", hint="point at a Hugging Face model directory")
        return ModelRef(spec, path.resolve(), "local")
    return _resolve_hub(spec, revision)


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
        raise ModelLoadError(f"run '{name}' has no model at {model_dir}", hint="rerun its recipe")
    gate = run_dir / key / "gate.json"
    verdict = json.loads(gate.read_text()).get("verdict") if gate.exists() else None
    return ModelRef(spec, model_dir.resolve(), "run", extra={"run_key": key, "gate_verdict": verdict})


def _resolve_hub(spec: str, revision: str | None) -> ModelRef:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise ModelLoadError(f"cannot fetch hub model {spec}: {e}") from None
    try:
        path = snapshot_download(
            spec, revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken", "*.bin"],
        )
    except RepositoryNotFoundError:
        raise ModelLoadError(f"hub model {spec} not found",
                             hint="check the id, or give a local directory or builtin:tiny-llama") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"hub model {spec} is not in the local cache and the hub cannot be reached",
                             hint="download it where the hub is reachable, or give a local directory") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelLoadError(f"cannot fetch hub model {spec}: {e}") from None
    # Snapshots live in .../snapshots/<commit sha>: the exact revision that was read.
    return ModelRef(spec, Path(path), "hub", revision=revision, extra={"commit": Path(path).name})


def check_weights(path: Path, allow_pickle: bool = False) -> list[Path]:
    """Return the weight files of a model directory; refuse pickled weights unless allowed."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled and not allow_pickle:
        raise ModelLoadError(
            f"{path} has only pickled weights ({pickled[0].name}); loading them can run arbitrary code",
            hint="convert them to safetensors, or set model.allow_pickle: true if you trust the source",
        )
    if not pickled:
        raise ModelLoadError(f"{path} has no weight files (*.safetensors)", hint="is the download complete?")
    return pickled


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
