"""Model references: built-in names, local directories, hub snapshots, other runs."""
import json
import shutil

import pytest

from compress.core.artifact import file_hashes
from compress.core.errors import ModelLoadError, UsageError
from compress.core.cache import model_content_hash
from compress.core.models import resolve_model
from compress.core.weights import check_weights
from conftest import BUILTIN


def test_builtin_model_shape_and_size():
    ref = resolve_model("builtin:tiny-llama")
    assert ref.source == "builtin" and ref.path == BUILTIN
    config = json.loads((ref.path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["hidden_size"] % 128 == 0 and config["intermediate_size"] % 128 == 0
    total = sum(e["size"] for e in file_hashes(ref.path).values())
    assert total <= 30 * 1024 * 1024
    assert (ref.path / "model.safetensors").exists() and (ref.path / "tokenizer.json").exists()


def test_local_directory_is_the_same_model(tmp_path, runs_dir):
    copy = tmp_path / "my-model"
    shutil.copytree(BUILTIN, copy)
    ref = resolve_model(str(copy))
    assert ref.source == "local"
    assert model_content_hash(ref.path) == model_content_hash(BUILTIN)


def test_hub_id_resolves_from_the_local_hub_cache(tmp_path, monkeypatch):
    """The hub code path, offline: a snapshot in the HF cache is found by its repo id."""
    hub = tmp_path / "hub"
    repo = hub / "models--acme--tiny"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(BUILTIN, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(snap.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    ref = resolve_model("acme/tiny")
    assert ref.source == "hub" and (ref.path / "config.json").exists()
    assert ref.describe()["commit"] == snap.name  # the manifest records the exact revision read
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        resolve_model("acme/absent")


def test_bad_references():
    with pytest.raises(UsageError, match="Did you mean: tiny-llama"):
        resolve_model("builtin:tiny-lama")
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("./no/such/dir")
    with pytest.raises(UsageError, match="no finished run"):
        resolve_model("run:never-ran")


def test_pickled_weights_are_refused_unless_allowed(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="pickled weights"):
        check_weights(d)
    assert check_weights(d, allow_pickle=True) == [d / "pytorch_model.bin"]
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="no weight files"):
        check_weights(d)


def test_a_recipes_runs_folder_stands_for_its_newest_run(tmp_path):
    """`runs/NAME` (with its LATEST) means `runs/NAME/KEY` wherever a run or its model is taken."""
    import shutil

    from compress.core.models import BUILTIN_MODELS, newest_run, resolve_model

    runs = tmp_path / "runs" / "tiny-int4"
    for key in ("old", "new"):
        shutil.copytree(BUILTIN_MODELS["tiny-llama"], runs / key / "model")
    (runs / "LATEST").write_text("new\n")
    assert newest_run(runs) == runs / "new" and newest_run(runs / "old") == runs / "old"
    assert resolve_model(str(runs), None).path == (runs / "new" / "model").resolve()
    from conftest import run_cli

    p = run_cli("gate", str(runs))  # the newest run, which has no reports yet
    assert p.returncode == 2 and f"{runs / 'new'} has no reports/" in p.stderr, p.stderr
    (runs / "LATEST").write_text("gone\n")  # a LATEST naming no run is not followed
    assert newest_run(runs) == runs
