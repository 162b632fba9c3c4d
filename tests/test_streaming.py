"""Data-free schemes stream shard by shard: the model is never loaded, the bytes are those the
in-memory path writes, unquantized layers keep the checkpoint's dtype, and the sharded index is
complete. The default dtype is the checkpoint's own."""
import json
from pathlib import Path

import pytest
import safetensors.torch as st

from compress.evals.cache import model_content_hash
from compress.fixtures import build_llama
from compress.methods import _streaming
from compress.models import checkpoint_dtype, load_model, resolve_model
from compress.quantize import build_artifact
from compress.recipe import build_recipe

SHAPES = {"hidden_size": 256, "num_hidden_layers": 3, "intermediate_size": 512, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 256}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A bf16 Llama in five shards, as checkpoints on the hub come."""
    out = tmp_path_factory.mktemp("bf16-llama")
    build_llama(out, SHAPES, seed=3, max_shard_bytes=1_000_000)
    assert len(list(out.glob("*.safetensors"))) == 5
    return out


def _build(path: Path, out: Path, scheme: str, **model) -> dict:
    recipe = build_recipe(None, model=str(path), scheme=scheme, overrides=[f"model.{k}={v}" for k, v in model.items()])
    base = resolve_model(str(path), None)
    return build_artifact(recipe, out, base=base, base_hash=model_content_hash(path), key="k", log=lambda m: None,
                          warn=lambda m: None)


def _tensors(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(st.load_file(f))
    return out


@pytest.mark.parametrize("scheme", ["int4-rtn", "fp8-dynamic"])
def test_a_data_free_scheme_streams_and_writes_the_in_memory_bytes(checkpoint, tmp_path, monkeypatch, scheme):
    import compress.methods._llmcompressor as llmc

    def never(*args, **kwargs):
        raise AssertionError("the streaming path loaded the model")

    with monkeypatch.context() as m:
        m.setattr(llmc, "load_model", never)
        streamed = _build(checkpoint, tmp_path / "streamed", scheme)
    assert streamed["method"]["details"]["path"].startswith("streamed shard by shard")
    assert streamed["method"]["details"]["shards"] == 5
    with monkeypatch.context() as m:
        m.setattr(_streaming, "eligible", lambda ctx: False)
        loaded = _build(checkpoint, tmp_path / "loaded", scheme)
    assert "path" not in loaded["method"]["details"]
    a, b = _tensors(tmp_path / "streamed"), _tensors(tmp_path / "loaded")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].equal(b[name]), name
    # unquantized layers stay in the checkpoint's dtype
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                 "model.layers.0.input_layernorm.weight"):
        assert a[name].dtype.__repr__() == "torch.bfloat16", name
    qc = json.loads((tmp_path / "streamed" / "config.json").read_text())["quantization_config"]
    assert qc["ignore"] == ["lm_head"] and qc["config_groups"]["group_0"]["targets"] == ["Linear"]
    # the index names every tensor, in the shard that holds it, and every shard
    index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        assert set(st.load_file(tmp_path / "streamed" / shard)) == {k for k, v in index["weight_map"].items() if v == shard}
    assert set(index["weight_map"]) == set(a)
    # the manifest lists every file, the base's config and tokenizer files included, and it reloads
    files = set(streamed["files"])
    carried = {f.name for f in checkpoint.iterdir() if not f.name.endswith(".safetensors")}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= carried <= files
    assert not any(name.startswith(".stage") for name in files)
    model = load_model(tmp_path / "streamed", dtype="auto")
    assert model.dtype.__repr__() == "torch.bfloat16"


def test_a_dtype_change_takes_the_in_memory_path(checkpoint, tmp_path):
    manifest = _build(checkpoint, tmp_path / "f32", "int4-rtn", dtype="float32")
    assert "path" not in manifest["method"]["details"]
    assert _tensors(tmp_path / "f32")["model.embed_tokens.weight"].dtype.__repr__() == "torch.float32"


def test_the_default_dtype_is_the_checkpoints_own(checkpoint):
    recipe = build_recipe(None, model=str(checkpoint), scheme="int4-rtn")
    assert recipe.model.dtype == "auto" and checkpoint_dtype(checkpoint) == "bfloat16"
    assert checkpoint_dtype(Path(__file__).resolve().parents[1] / "compress" / "assets" / "tiny-llama") == "float32"
