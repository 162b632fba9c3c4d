"""Generated model fixtures: models too big to ship, built once into the cache on first use.

``builtin:llama-1b-random`` is a Llama with the shapes of TinyLlama 1.1B (hidden 2048, 22
layers, MLP 5632, 32 query heads sharing 4 key-value heads) and seeded random weights in
bfloat16, about 2 GB. It carries the tokenizer of the embedded ``builtin:tiny-llama``, so its
vocabulary is that tokenizer's (1024 ids). **Accuracy on random weights means nothing**: the
fixture exists to measure speed and memory, where the 4M-parameter tiny model is all overhead.

Weights are drawn tensor by tensor, in float32 from a ``torch.Generator`` seeded by the
fixture's seed and the tensor's name, then cast to bfloat16 and written shard by shard, so
memory peaks at about one shard and the same seed gives byte-identical files (on one torch
build and CPU type: normal sampling uses vectorised log/cos, whose last bits may differ
between instruction sets). Initialisation follows a real Llama (normal, std 0.02, for
linear and embedding weights; ones for RMSNorm weights), so activations stay finite and
generation produces tokens.

A fixture is built under a temporary sibling name and renamed into place when complete (the
rename is the commit point; a ``.fixture.json`` marker is written last inside it as well), under
a lock on the fixtures folder: a second process asking at the same time waits for the first,
and what a crash leaves behind is swept away and rebuilt, never trusted.

Torch and safetensors are imported inside functions: importing this module is cheap.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.core.artifact import atomic_dir
from compress.core.cache import cache_root
from compress.core.env import PACKAGE
from compress.core.errors import ModelLoadError
from compress.core.faults import fault_point
from compress.core.locks import locked

TOKENIZER_SOURCE = PACKAGE / "assets" / "tiny-llama"
MARKER = ".fixture.json"  # hidden: left out of the content hash (compress.core.artifact.model_files)
FORMAT = "compress-fixture/1"
GB = 10**9

# TinyLlama-1.1B's shapes (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json).
LLAMA_1B_SHAPES: dict[str, Any] = {
    "hidden_size": 2048,
    "num_hidden_layers": 22,
    "intermediate_size": 5632,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class FixtureSpec:
    """What a generated fixture is; change ``dirname`` whenever its bytes would change.

    Args:
        dirname: its folder under ``<cache>/fixtures``, versioned (``-v1``).
        shapes: the keys of ``LLAMA_1B_SHAPES`` (any subset overrides those).
        seed: the seed of every tensor (mixed with the tensor's name).
        max_shard_bytes: the most bytes of tensor data per safetensors file.
    """

    dirname: str
    shapes: dict[str, Any] = field(default_factory=lambda: dict(LLAMA_1B_SHAPES))
    seed: int = 0
    # 1 GB rather than the hub's usual 2 GB: two shards, so memory peaks at half the model.
    max_shard_bytes: int = 1 * GB


FIXTURES: dict[str, FixtureSpec] = {
    "llama-1b-random": FixtureSpec("llama-1b-random-v1"),
}


def fixtures_root() -> Path:
    return cache_root() / "fixtures"


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished fixture (its marker, written last, is there and reads)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == FORMAT


def ensure_fixture(name: str, *, root: Path | None = None,
                   log: Callable[[str], None] | None = None) -> Path:
    """The directory of fixture ``name``, generating it first if it is not there yet.

    Args:
        name: a key of ``FIXTURES`` (``llama-1b-random``).
        root: the folder fixtures live in (default ``<cache>/fixtures``).
        log: where the one-line "generating" and "waiting" messages go (default: stderr).

    Raises:
        ModelLoadError: the fixture cannot be written (disk full, read-only cache; exit 4).
        UsageError: another process is generating it and did not finish within
            ``COMPRESS_LOCK_WAIT`` seconds.
    """
    spec = FIXTURES[name]
    root = (Path(root) if root is not None else fixtures_root()).absolute()
    final = root / spec.dirname
    if is_complete(final):
        return final
    from compress.core import console

    # Generating is part of a stage (a detail: the log file, -v); waiting for another process is news.
    wait = log or console.warn
    log = log or console.detail
    size = sum(math.prod(shape) * 2 for _, shape, _ in tensor_layout(llama_config(spec.shapes)))
    try:
        with locked(root, f"fixture builtin:{name}", log=wait):
            if is_complete(final):  # another process built it while we waited
                return final
            log(f"generating builtin:{name} (random weights, {size / GB:.1f} GB; once)")
            # A folder without a marker is no fixture (written by hand, or by an older version).
            with atomic_dir(final, overwrite=final.exists()) as tmp:
                build_llama(tmp, spec.shapes, seed=spec.seed, max_shard_bytes=spec.max_shard_bytes)
                _write_marker(tmp, name, spec)
    except OSError as e:
        raise ModelLoadError(f"cannot generate builtin:{name} in {root}: {e}",
                             hint=f"it needs {size / GB:.1f} GB free there: free some space, or set "
                                  "COMPRESS_CACHE_DIR to a folder with room") from None
    return final


def _write_marker(out: Path, name: str, spec: FixtureSpec) -> None:
    """The commit marker, written last: what was generated and from what."""
    marker = {"format": FORMAT, "fixture": f"builtin:{name}", "dirname": spec.dirname,
              "seed": spec.seed, "shapes": spec.shapes, "max_shard_bytes": spec.max_shard_bytes,
              "note": "random weights: for speed and memory only; accuracy on it means nothing"}
    path = out / MARKER
    with path.open("w") as f:
        f.write(json.dumps(marker, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())


def llama_config(shapes: dict[str, Any]) -> dict[str, Any]:
    """The config.json of a Llama with ``shapes`` and the embedded model's tokenizer ids.

    Holds no library version, so that its bytes (and the content hash) do not depend on one.
    """
    s = {**LLAMA_1B_SHAPES, **shapes}
    unknown = set(shapes) - set(LLAMA_1B_SHAPES) - {"vocab_size"}
    if unknown:
        raise ValueError(f"unknown fixture shape keys: {sorted(unknown)}")
    if s["num_attention_heads"] % s["num_key_value_heads"] or s["hidden_size"] % s["num_attention_heads"]:
        raise ValueError("hidden_size must split into heads, and heads into key-value groups")
    tiny = json.loads((TOKENIZER_SOURCE / "config.json").read_text())
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tiny["bos_token_id"],
        "eos_token_id": tiny["eos_token_id"],
        "pad_token_id": tiny["pad_token_id"],
        "head_dim": s["hidden_size"] // s["num_attention_heads"],
        "hidden_act": "silu",
        "hidden_size": s["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": s["intermediate_size"],
        "max_position_embeddings": s["max_position_embeddings"],
        "mlp_bias": False,
        "num_attention_heads": s["num_attention_heads"],
        "num_hidden_layers": s["num_hidden_layers"],
        "num_key_value_heads": s["num_key_value_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": s["rms_norm_eps"],
        # transformers 5 reads rope_parameters; older readers (vLLM on transformers 4) rope_theta.
        "rope_parameters": {"rope_theta": s["rope_theta"], "rope_type": "default"},
        "rope_theta": s["rope_theta"],
        "dtype": "bfloat16",
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": s["tie_word_embeddings"],
        "use_cache": True,
        # The tokenizer's vocabulary, so that its ids and the embedding rows line up (a larger
        # one, for a real model's embedding bytes, leaves rows no token reaches).
        "vocab_size": s.get("vocab_size", tiny["vocab_size"]),
    }


def tensor_layout(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, init)`` of every weight, in module order; init is "normal" or "ones"."""
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    out: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (vocab, h), "normal")]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (h,), "ones"),
            (p + "self_attn.q_proj.weight", (q, h), "normal"),
            (p + "self_attn.k_proj.weight", (kv, h), "normal"),
            (p + "self_attn.v_proj.weight", (kv, h), "normal"),
            (p + "self_attn.o_proj.weight", (h, q), "normal"),
            (p + "post_attention_layernorm.weight", (h,), "ones"),
            (p + "mlp.gate_proj.weight", (inter, h), "normal"),
            (p + "mlp.up_proj.weight", (inter, h), "normal"),
            (p + "mlp.down_proj.weight", (h, inter), "normal"),
        ]
    out.append(("model.norm.weight", (h,), "ones"))
    if not config["tie_word_embeddings"]:
        out.append(("lm_head.weight", (vocab, h), "normal"))
    return out


def plan_shards(layout: list[tuple[str, tuple[int, ...], str]], max_shard_bytes: int,
                itemsize: int = 2) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """Split the tensors, in order, into shards of at most ``max_shard_bytes`` of data (a tensor
    larger than that gets a shard of its own), as transformers' ``save_pretrained`` does."""
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    used = 0
    for entry in layout:
        nbytes = math.prod(entry[1]) * itemsize
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(entry)
        used += nbytes
    return shards


def _tensor_seed(seed: int, name: str) -> int:
    """A seed per tensor: a tensor's values depend on its name, not on the order of drawing."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _make_tensor(shape: tuple[int, ...], init: str, seed: int, name: str):
    import torch

    if init == "ones":
        return torch.ones(shape, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(_tensor_seed(seed, name))
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=g).to(torch.bfloat16)


def _save_shard(tensors: dict[str, Any], path: Path) -> None:
    """Write one shard and make it durable (the rename of its folder comes later)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_llama(out: Path, shapes: dict[str, Any], *, seed: int = 0, max_shard_bytes: int = 1 * GB) -> None:
    """Write a random-weight Llama into the existing folder ``out``: config.json,
    generation_config.json, the embedded model's tokenizer, and bfloat16 safetensors shards
    (``model.safetensors``, or ``model-0000K-of-0000N.safetensors`` with
    ``model.safetensors.index.json`` when there are several).

    Args:
        out: an empty folder (``ensure_fixture`` passes the temporary one).
        shapes: overrides of ``LLAMA_1B_SHAPES`` (tests build a 2-layer variant).
        seed: same seed, same bytes.
        max_shard_bytes: the most bytes of tensor data per shard.
    """
    out = Path(out)
    config = llama_config(shapes)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {
        "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    })
    _copy_tokenizer(out, config["max_position_embeddings"])
    shards = plan_shards(tensor_layout(config), max_shard_bytes)
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards, 1):
        filename = "model.safetensors" if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
        tensors = {name: _make_tensor(shape, init, seed, name) for name, shape, init in shard}
        _save_shard(tensors, out / filename)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, filename))
        del tensors  # one shard in memory at a time
        fault_point("fixture.after-shard")
    if n > 1:
        _write_json(out / "model.safetensors.index.json",
                    {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _copy_tokenizer(out: Path, max_length: int) -> None:
    """The embedded model's tokenizer files; only model_max_length follows the longer context."""
    for src in sorted(TOKENIZER_SOURCE.iterdir()):
        if src.name == "tokenizer_config.json":
            data = json.loads(src.read_text())
            data["model_max_length"] = max_length
            _write_json(out / src.name, data)
        elif src.name.startswith("tokenizer") or src.name == "special_tokens_map.json":
            shutil.copyfile(src, out / src.name)
