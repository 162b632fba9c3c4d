"""How compress handles checkpoints larger than this machine's memory would like.

Data-free schemes stream tensor by tensor: the model is never loaded, the bytes are those the
in-memory path writes, unquantized layers keep the checkpoint's dtype, output shards respect their
size bound and the sharded index is complete. The default dtype is the checkpoint's own. Weights
are read without a memory map, whole or in slices of rows, exactly as safetensors reads them. Calibrated methods can leave the weights on disk
(``model.offload: disk``) and write the same bytes as in memory."""
import json
from pathlib import Path

import pytest
import safetensors.torch as st

from compress.core.cache import model_content_hash
from compress.core.fixtures import build_llama
from compress.build.methods import _streaming
from compress.core.models import checkpoint_dtype, load_model, resolve_model
from compress.build.quantize import build_artifact
from compress.core.recipe import build_recipe

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
    import compress.build.methods._llmcompressor as llmc

    def never(*args, **kwargs):
        raise AssertionError("the streaming path loaded the model")

    limit = 400_000
    with monkeypatch.context() as m:
        m.setattr(llmc, "load_model", never)
        m.setattr(_streaming, "SHARD_BYTES", limit)
        streamed = _build(checkpoint, tmp_path / "streamed", scheme)
    assert streamed["method"]["details"]["path"].startswith("streamed tensor by tensor")
    shards = sorted((tmp_path / "streamed").glob("*.safetensors"))
    assert streamed["method"]["details"]["shards"] == len(shards) > 1
    for shard in shards:  # at most the bound, unless one tensor alone is larger
        sizes = [t.numel() * t.element_size() for t in st.load_file(shard).values()]
        assert sum(sizes) <= limit or len(sizes) == 1, shard.name
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
    assert not any(name.startswith(".") for name in files)
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


def test_weights_are_read_whole_or_in_slices_as_safetensors_reads_them(tmp_path):
    import torch

    from compress.core.weights import read_tensors

    tensors = {"w": torch.randn(37, 11).to(torch.bfloat16), "f8": torch.randn(5, 3).to(torch.float8_e4m3fn),
               "scalar": torch.tensor(2.5), "empty": torch.empty(0, 4), "ids": torch.arange(7, dtype=torch.int64)}
    st.save_file(tensors, tmp_path / "t.safetensors")
    whole = dict(read_tensors(tmp_path / "t.safetensors"))
    assert whole.keys() == tensors.keys()
    for name, t in tensors.items():
        assert whole[name].dtype == t.dtype and whole[name].shape == t.shape, name
        assert whole[name].reshape(-1).view(torch.uint8).equal(t.reshape(-1).view(torch.uint8)), name
    slices = [(n, t) for n, t in read_tensors(tmp_path / "t.safetensors", max_elements=50, dtypes={"BF16"})]
    assert [n for n, _ in slices] == ["w"] * 10 and [t.shape[0] for _, t in slices] == [4] * 9 + [1]
    assert torch.cat([t for _, t in slices]).equal(tensors["w"])


def test_calibrated_quantization_with_the_weights_on_disk_writes_the_in_memory_bytes(tmp_path):
    """GPTQ with every weight left on disk (read a layer at a time, updates written to the work
    directory) gives the artifact GPTQ gives in memory, and leaves no scratch behind."""
    from compress.core.models import BUILTIN_MODELS

    builtin = BUILTIN_MODELS["tiny-llama"]
    manifests = {}
    for where in ("disk", "memory"):
        recipe = build_recipe(None, model="builtin:tiny-llama", scheme="int4-gptq",
                              overrides=[f"model.offload={where}", "calibration.num_samples=4",
                                         "calibration.max_seq_length=32"])
        manifests[where] = build_artifact(recipe, tmp_path / where, base=resolve_model("builtin:tiny-llama", None),
                                          base_hash=model_content_hash(builtin), key=where, log=lambda m: None,
                                          warn=lambda m: None)
    assert manifests["disk"]["method"]["details"]["offload"] == "disk"
    assert "offload" not in manifests["memory"]["method"]["details"]
    a, b = _tensors(tmp_path / "disk"), _tensors(tmp_path / "memory")
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].equal(b[name]), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "memory"]  # no work directory left


def test_auto_offload_leaves_the_weights_on_disk_only_when_memory_is_short(tmp_path, monkeypatch):
    import types

    import psutil

    from compress.build.methods._llmcompressor import offload_dir
    from compress.build.methods.base import MethodContext
    from compress.core.models import weight_bytes_in

    base = resolve_model("builtin:tiny-llama", None)
    recipe = build_recipe(None, model="builtin:tiny-llama", scheme="int4-gptq")
    ctx = MethodContext(recipe=recipe, base=base, out_dir=tmp_path / "out", log=lambda m: None, warn=lambda m: None,
                        work_dir=tmp_path / "work", artifact_key="k")
    need = weight_bytes_in(base.path, "float32")
    assert need == sum(t.numel() * 4 for t in _tensors(base.path).values())
    assert weight_bytes_in(base.path, "bfloat16") == need // 2
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=4 * need + 1))
    assert offload_dir(ctx) is None
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=4 * need - 1))
    assert offload_dir(ctx) == tmp_path / "work" / "offload"
    in_memory = build_recipe(None, model="builtin:tiny-llama", scheme="int4-gptq", overrides=["model.offload=memory"])
    assert offload_dir(MethodContext(**{**ctx.__dict__, "recipe": in_memory})) is None


def test_an_eval_spread_by_accelerate_scores_as_one_on_a_single_device(tmp_path, monkeypatch):
    """``device_map: auto`` (hf) places the layers over the devices, CPU memory and disk; the
    documents score exactly as with the whole model on one device. Placement stays out of the
    cache key where it is the default, so reports cached before it existed are still found."""
    from compress.measure.accuracy import eval_settings, run_eval
    from compress.core.recipe import EvalSpec

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    one, _ = run_eval("builtin:tiny-llama", EvalSpec(tasks=["tiny_facts_mc"], limit=40))
    spread, cached = run_eval("builtin:tiny-llama", EvalSpec(tasks=["tiny_facts_mc"], limit=40, device_map="auto"))
    assert not cached
    a, b = one.tasks["tiny_facts_mc"].samples, spread.tasks["tiny_facts_mc"].samples
    assert [(s.doc_id, s.prompt_hash, s.values) for s in a] == [(s.doc_id, s.prompt_hash, s.values) for s in b]
    assert len(a) == 40
    assert "device_map" not in eval_settings(EvalSpec(), "float32")
    assert eval_settings(EvalSpec(device_map="auto"), "float32")["device_map"] == "auto"


def test_vllm_parallelism_is_one_setting_each_and_only_for_vllm(tmp_path):
    from pydantic import ValidationError

    from compress.measure.engines.vllm import VllmServer, parallel_args
    from compress.core.recipe import BenchSpec, EvalSpec

    assert parallel_args() == []
    assert parallel_args(4, 2) == ["--tensor-parallel-size", "4", "--data-parallel-size", "2"]
    server = VllmServer(resolve_model("builtin:tiny-llama", None).path, log_path=tmp_path / "log",
                        extra_args=parallel_args(2, 1), port=8000)
    command = server._build_command()
    assert command[command.index("--tensor-parallel-size") + 1] == "2" and "--data-parallel-size" not in command
    for spec, fields in ((EvalSpec, {"tensor_parallel": 2}), (EvalSpec, {"data_parallel": 2}),
                         (BenchSpec, {"tensor_parallel": 2}), (EvalSpec, {"backend": "vllm", "device_map": "auto"})):
        with pytest.raises(ValidationError):
            spec(**fields)
    assert EvalSpec(backend="vllm", tensor_parallel=2).tensor_parallel == 2
    assert BenchSpec(engine="vllm", data_parallel=2).data_parallel == 2
