"""The generated speed fixture builtin:llama-1b-random, built here in a 2-layer, 64-wide variant.

The real 2 GB fixture is never built by the tests: the same code with small shapes shows that
builds are byte-identical, shards honour their size limit, transformers loads and generates,
and that a crash or a second caller never leaves a half-written fixture that is trusted.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from compress.core import fixtures
from compress.core.artifact import _TEMP, check_hashes, file_hashes
from compress.core.errors import UsageError
from compress.core.fixtures import FixtureSpec, build_llama, is_complete, llama_config, tensor_layout
from compress.core.models import load_model, load_tokenizer, resolve_model
from compress.core.weights import check_model_dir, check_safetensors
from conftest import ROOT

NAME = "llama-1b-random"
SHAPES = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 128}
SMALL = FixtureSpec("small-v1", SHAPES, seed=0, max_shard_bytes=100_000)


@pytest.fixture
def small(runs_dir, monkeypatch):
    """builtin:llama-1b-random resolves to the small variant, in this test's cache."""
    monkeypatch.setitem(fixtures.FIXTURES, NAME, SMALL)
    return fixtures.fixtures_root() / SMALL.dirname


def _temporaries(folder):
    return [p for p in folder.iterdir() if _TEMP.match(p.name)] if folder.exists() else []


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for out, seed in ((a, 0), (b, 0), (c, 1)):
        out.mkdir()
        build_llama(out, SHAPES, seed=seed, max_shard_bytes=100_000)
    assert file_hashes(a) == file_hashes(b)
    assert check_hashes(b, file_hashes(a)) == []
    differ = {name for name, e in file_hashes(c).items() if e != file_hashes(a)[name]}
    assert differ and all(name.endswith(".safetensors") for name in differ)


def test_shards_honour_the_limit_and_the_index_is_right(tmp_path):
    limit = 100_000
    build_llama(tmp_path, SHAPES, max_shard_bytes=limit)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert len(shards) >= 3 and set(index["weight_map"].values()) == {p.name for p in shards}
    held, total = {}, 0
    for path in shards:
        header = check_safetensors(path)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        assert header["__metadata__"] == {"format": "pt"}
        assert all(v["dtype"] == "BF16" for v in tensors.values())
        data = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in tensors.values())
        assert data <= limit or len(tensors) == 1  # only a tensor larger than the limit stands alone
        held.update(dict.fromkeys(tensors, path.name))
        total += data
    assert index["weight_map"] == held
    assert index["metadata"]["total_size"] == total
    assert sorted(held) == sorted(name for name, _, _ in tensor_layout(llama_config(SHAPES)))
    check_model_dir(tmp_path)  # config, tokenizer, headers, NaN scan: the model checks accept it
    one = tmp_path / "one"
    one.mkdir()
    build_llama(one, SHAPES, max_shard_bytes=10**9)
    assert [p.name for p in one.glob("*.safetensors")] == ["model.safetensors"]
    assert not (one / "model.safetensors.index.json").exists()


def test_resolves_loads_in_bfloat16_and_generates(small):
    import torch

    ref = resolve_model(f"builtin:{NAME}")
    assert ref.source == "builtin" and ref.path == small and is_complete(small)
    check_model_dir(ref.path)
    config = json.loads((ref.path / "config.json").read_text())
    tiny = json.loads((ROOT / "compress" / "assets" / "tiny-llama" / "config.json").read_text())
    assert config["vocab_size"] == tiny["vocab_size"] and config["dtype"] == "bfloat16"
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention
    tok = load_tokenizer(ref.path)
    assert len(tok) <= config["vocab_size"]
    model = load_model(ref.path, dtype="auto")
    assert model.dtype == torch.bfloat16
    # Initialised like a real Llama: normal(0, 0.02) weights, RMSNorm weights of one.
    w = model.model.layers[1].mlp.down_proj.weight.float()
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert bool((model.model.layers[0].input_layernorm.weight == 1).all())
    ids = tok("The quick brown fox", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert bool(torch.isfinite(logits).all())
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.input_ids.shape[1] + 4
    assert int(out.max()) < config["vocab_size"]


def test_a_crash_midway_leaves_nothing_trusted_and_the_next_call_rebuilds(small, monkeypatch):
    real = fixtures._save_shard
    calls = []

    def failing(tensors, path):
        calls.append(path.name)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        real(tensors, path)

    monkeypatch.setattr(fixtures, "_save_shard", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        resolve_model(f"builtin:{NAME}")
    assert not small.exists() and _temporaries(small.parent) == []
    monkeypatch.setattr(fixtures, "_save_shard", real)
    ref = resolve_model(f"builtin:{NAME}")
    assert is_complete(ref.path)
    check_model_dir(ref.path)


def test_a_folder_without_its_marker_is_not_trusted(small):
    small.mkdir(parents=True)
    (small / "config.json").write_text("{}")  # e.g. written by hand, or an older version
    ref = resolve_model(f"builtin:{NAME}")
    assert is_complete(ref.path) and json.loads((ref.path / "config.json").read_text())["hidden_size"] == 64


# A child process that builds the small variant, {slow} seconds per shard, once the file {go}
# exists (it creates {ready} when its imports are done).
CHILD = """
import pathlib, time
import torch, safetensors.torch
from compress.core import fixtures
fixtures.FIXTURES["llama-1b-random"] = fixtures.FixtureSpec(**{spec!r})
real = fixtures._save_shard
def slow(tensors, path):
    time.sleep({slow})
    real(tensors, path)
fixtures._save_shard = slow
pathlib.Path({ready!r}).touch()
while not pathlib.Path({go!r}).exists():
    time.sleep(0.01)
from compress.core.models import resolve_model
print("PATH=" + str(resolve_model("builtin:llama-1b-random").path))
"""


def _child(cache, slow=0.0, ready="/dev/null", go="/", fault=None):
    env = dict(os.environ, COMPRESS_CACHE_DIR=str(cache), COMPRESS_LOCK_WAIT="120")
    if fault:
        env.update(COMPRESS_TESTING="1", COMPRESS_FAULT=fault)
    code = CHILD.format(spec=dataclasses.asdict(SMALL), slow=slow, ready=str(ready), go=str(go))
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_after_a_shard_is_swept_and_rebuilt(small):
    p = _child(small.parents[1], fault="fixture.after-shard#2")
    _, err = p.communicate(timeout=120)
    assert p.returncode == -9, err[-2000:]
    assert not small.exists() and len(_temporaries(small.parent)) == 1  # kill -9: no clean-up ran
    ref = resolve_model(f"builtin:{NAME}")
    assert is_complete(ref.path) and _temporaries(small.parent) == []


def test_a_second_caller_waits_for_the_first(small, tmp_path):
    ready, go = [tmp_path / "ready-0", tmp_path / "ready-1"], tmp_path / "go"
    procs = [_child(small.parents[1], slow=0.5, ready=r, go=go) for r in ready]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both children past their imports: they ask at the same moment
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    paths = {line for out, _ in results for line in out.splitlines() if line.startswith("PATH=")}
    assert paths == {f"PATH={small}"}
    errs = [err for _, err in results]
    assert sum("generating builtin:llama-1b-random" in e for e in errs) == 1, errs
    assert sum("waiting" in e for e in errs) == 1, errs
    assert is_complete(small) and _temporaries(small.parent) == []


def test_unknown_builtin_names_the_generated_one():
    expected = "Did you mean: llama-1b-random.*Available: tiny-llama, llama-1b-random"
    with pytest.raises(UsageError, match=expected):
        resolve_model("builtin:llama-1b")
