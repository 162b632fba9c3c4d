"""Every bad input gets one clear line (issue 10, part 4).

Each case below ends in exit 2 (bad usage, recipe or input) or 4 (runtime failure: the OS
refused a write), prints exactly one ``Error:`` line on stderr that names the thing and the
fix, no traceback, and writes nothing: the files under the test's folder (working directory,
runs, cache, outputs) are the same after the command as before. The one exception is a report
cache that existed before the command, which may gain entries.

Most cases run in this process through ``compress.cli.main`` (torch is imported once); a
subprocess is used only where the OS has to refuse something: a read-only output folder, an
unwritable cache, a full disk, Ctrl-C.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from compress.cli import main
from compress.inputs import check_inside_tree
from conftest import BUILTIN

WEIGHTS = "model.safetensors"


# ----------------------------------------------------------------------------- helpers

@dataclass
class Place:
    """The folders of one case: ``work`` is the working directory, ``inputs`` holds the bad
    inputs the case builds, the rest are where compress would write."""

    root: Path
    work: Path
    inputs: Path
    runs: Path
    cache: Path
    out: Path

    def model(self, name: str = "model", mutate: Callable[[Path], None] | None = None) -> Path:
        """A copy of the embedded model, changed by ``mutate``."""
        d = self.inputs / name
        shutil.copytree(BUILTIN, d)
        if mutate:
            mutate(d)
        return d

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.inputs / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p

    def recipe(self, text: str, name: str = "bad.yaml") -> Path:
        return self.file(name, text)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every file and folder under ``root`` with its size and mtime (``skip``'s content left out)."""
    seen = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and p != skip and p.is_relative_to(skip):
            continue
        st = p.lstat()
        seen[p.relative_to(root).as_posix()] = (stat.S_IFMT(st.st_mode), st.st_size if p.is_file() else 0,
                                                st.st_mtime_ns if p.is_file() else 0)
    return seen


def cache_skip(place: Place) -> Path | None:
    """A cache that existed before a command may gain entries; one that did not must not appear."""
    return place.cache if place.cache.exists() else None


def assert_one_error_line(err: str, *needles: str, exact: bool = True, multi: bool = False) -> str:
    """One ``Error:`` line naming the thing and the fix; no traceback. ``exact``: it is all of
    stderr (in-process cases, where no library has started printing); ``multi``: a recipe with
    several problems lists them below it, indented. A runtime failure may end with one line
    naming the back ends' log (what they printed before it), which must exist."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if lines and lines[-1].startswith("  back-end log: "):
        assert Path(lines.pop()[len("  back-end log: "):].split(" (or rerun")[0]).is_file(), err
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, err
    if multi:
        start = lines.index(errors[0])
        assert len(lines) > start + 2 and all(line.startswith("    ") for line in lines[start + 1:]), err
    elif exact:
        assert lines == errors, err
    else:
        assert lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0] or (multi and needle in err), (needle, err)
    return errors[0]


@pytest.fixture
def place(tmp_path, runs_dir, monkeypatch) -> Place:
    p = Place(root=tmp_path, work=tmp_path / "work", inputs=tmp_path / "in", runs=runs_dir,
              cache=tmp_path / "cache", out=tmp_path / "out")
    p.work.mkdir()
    p.inputs.mkdir()
    monkeypatch.chdir(p.work)
    return p


# ------------------------------------------------------------------ the bad inputs

def _recipe_text(model: str = "builtin:tiny-llama", extra: str = "", method: str = "int4\n  algorithm: rtn") -> str:
    return (f"name: bad\nmodel:\n  id: {model}\nmethod:\n  kind: {method}\n"
            "gate:\n  checks:\n    - metric: size_ratio\n      max: 0.5\n" + extra)


def _truncate(d: Path) -> None:
    with (d / WEIGHTS).open("r+b") as f:
        f.truncate((d / WEIGHTS).stat().st_size // 2)


def _poke(offset: int, data: bytes) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        with (d / WEIGHTS).open("r+b") as f:
            f.seek(offset)
            f.write(data)
    return mutate


def _bad_offsets(d: Path) -> None:
    """A valid JSON header whose first tensor's shape no longer fits its data_offsets."""
    raw = (d / WEIGHTS).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [header[name]["shape"][0] + 1, *header[name]["shape"][1:]]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))  # same length: the data stays where it was
    assert len(text) == n
    (d / WEIGHTS).write_bytes(raw[:8] + text + raw[8 + n:])


def _poison(value: float) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(d / WEIGHTS))
        tensors["model.layers.2.mlp.down_proj.weight"][5, 7] = value
        save_file(tensors, str(d / WEIGHTS), metadata={"format": "pt"})
    return mutate


def _edit_config(**changes) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        config.update(changes)
        (d / "config.json").write_text(json.dumps(config))
    return mutate


def _link_out(d: Path) -> None:
    outside = d.parent / "elsewhere.json"
    (d / "tokenizer.json").rename(outside)
    (d / "tokenizer.json").symlink_to(outside)


def _broken_link(d: Path) -> None:
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.json").symlink_to("gone.json")


def _sharded_missing(d: Path) -> None:
    (d / WEIGHTS).rename(d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "lm_head.weight": "model-00002-of-00002.safetensors",
        "model.norm.weight": "model-00001-of-00002.safetensors"}}))


def _pickled(d: Path) -> None:
    (d / WEIGHTS).unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x00.")


def _no_tokenizer(d: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()


def _eval(model: str) -> list[str]:
    return ["eval", model, "--tasks", "tiny_facts_mc", "--limit", "2"]


def _quantize(p: Place, model: str = "builtin:tiny-llama", *extra: str, scheme: str = "int4-rtn") -> list[str]:
    return ["quantize", "--model", model, "--scheme", scheme, "-o", str(p.out / "q"), *extra]


def _calibrate(p: Place, data: Path | str) -> list[str]:
    return _quantize(p, "builtin:tiny-llama", "--set", f"calibration.dataset={data}", scheme="int4-gptq")


@dataclass
class Case:
    id: str
    argv: Callable[[Place], list[str]]
    code: int
    needles: tuple[str, ...]
    multi: bool = False


CASES = [
    # --- the command line itself (typer's parser: bundled click, not click.ClickException)
    Case("typo-option", lambda p: ["eval", "builtin:tiny-llama", "--limt", "5"], 2,
         ("No such option: --limt", "--limit", "compress eval --help")),
    Case("typo-command", lambda p: ["quantiz"], 2, ("No such command 'quantiz'", "'quantize'", "compress --help")),
    Case("missing-argument", lambda p: ["eval"], 2, ("Missing argument 'MODEL'", "compress eval --help")),
    Case("no-command", lambda p: [], 2, ("missing command", "compress --help")),
    Case("bad-integer", lambda p: ["eval", "builtin:tiny-llama", "--limit", "abc"], 2,
         ("'--limit'", "valid number")),
    Case("option-without-value", lambda p: ["bench", "builtin:tiny-llama", "--prompt-tokens"], 2,
         ("'--prompt-tokens' requires an argument",)),
    Case("extra-argument", lambda p: ["eval", "builtin:tiny-llama", "builtin:tiny-llama"], 2,
         ("unexpected extra argument",)),
    Case("unknown-scheme", lambda p: _quantize(p, scheme="int5"), 2, ("Unknown scheme 'int5'", "int4-rtn")),
    Case("no-recipe-no-model", lambda p: ["quantize", "--scheme", "int4-rtn"], 2,
         ("give a RECIPE file, or both --model and --scheme",)),
    Case("set-syntax", lambda p: _quantize(p, "builtin:tiny-llama", "--set", "method.bits"), 2,
         ("'method.bits' is not KEY=VALUE", "--set method.group_size=64")),
    Case("set-unknown-key", lambda p: _quantize(p, "builtin:tiny-llama", "--set", "method.grup_size=64"), 2,
         ("method.grup_size", "unknown key", "group_size")),
    Case("set-bad-yaml", lambda p: _quantize(p, "builtin:tiny-llama", "--set", "method.ignore=[lm_head"), 2,
         ("method.ignore=[lm_head", "not valid YAML")),
    Case("limit-zero", lambda p: ["eval", "builtin:tiny-llama", "--limit", "0"], 2, ("--limit", "0.0 is neither a number of documents")),
    Case("batch-size-zero", lambda p: ["eval", "builtin:tiny-llama", "--batch-size", "0"], 2,
         ("--batch-size", "greater than 0")),
    Case("batch-sizes-not-integers", lambda p: ["bench", "builtin:tiny-llama", "--batch-sizes", "x"], 2,
         ("--batch-sizes", "'x' is not a list of integers", "--batch-sizes 1,4,8")),
    Case("batch-sizes-negative", lambda p: ["bench", "builtin:tiny-llama", "--batch-sizes=1,-4"], 2,
         ("--batch-sizes", "greater than 0")),
    Case("unknown-task", lambda p: ["eval", "builtin:tiny-llama", "--tasks", "tiny_facts_mcq"], 2,
         ("unknown eval task 'tiny_facts_mcq'", "did you mean: tiny_facts_mc")),
    Case("limit-above-one-not-whole", lambda p: ["eval", "builtin:tiny-llama", "--limit", "1.5"], 2,
         ("--limit", "1.5 is neither a number of documents", "nor a fraction between 0 and 1")),
    Case("include-path-missing", lambda p: ["eval", "builtin:tiny-llama", "--include-path", str(p.inputs / "nope")], 2,
         ("include path", "nope is not a folder", "lm-eval task YAML")),
    Case("gen-kwargs-syntax", lambda p: ["eval", "builtin:tiny-llama", "--gen-kwargs", "max_gen_toks"], 2,
         ("'max_gen_toks' is not KEY=VALUE", "--gen-kwargs max_gen_toks=64")),
    # --- recipes
    Case("recipe-malformed-yaml", lambda p: ["run", str(p.recipe("name: bad\nmodel: [unclosed\n"))], 2,
         ("bad.yaml", "not valid YAML (line 3)", "fix the recipe")),
    Case("recipe-wrong-type", lambda p: ["run", str(p.recipe(_recipe_text(extra="evals:\n  batch_size: many\n")))],
         2, ("evals.batch_size (line 12)", "valid integer")),
    Case("recipe-unknown-key", lambda p: ["run", str(p.recipe(_recipe_text(extra="evals:\n  batch_sise: 4\n")))], 2,
         ("evals.batch_sise (line 12): unknown key; did you mean 'batch_size'?",)),
    Case("recipe-empty", lambda p: ["run", str(p.recipe(""))], 2, ("bad.yaml", "the file is empty")),
    Case("recipe-not-a-mapping", lambda p: ["run", str(p.recipe("- model\n- method\n"))], 2,
         ("top level must be a mapping",)),
    Case("recipe-missing", lambda p: ["run", str(p.inputs / "nope.yaml")], 2,
         ("recipe file not found", "nope.yaml", "check the path")),
    Case("recipe-is-a-directory", lambda p: ["run", str(p.inputs)], 2,
         ("is a directory, not a recipe file", "pass one of its .yaml files")),
    Case("recipe-binary", lambda p: ["run", str(p.file("bin.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe\x00"))], 2,
         ("bin.yaml", "not a text file (not UTF-8)")),
    Case("recipe-unknown-method", lambda p: ["run", str(p.recipe(_recipe_text(method="int5")))], 2,
         ("unknown method kind 'int5'", "fp8, fp4, int8, int4, gguf, distill")),
    Case("recipe-several-problems", lambda p: ["run", str(p.recipe(
        _recipe_text(extra="evals:\n  batch_size: many\nbench:\n  repeats: -1\n")))], 2,
         ("2 problems", "evals.batch_size (line 12)", "bench.repeats (line 14)"), multi=True),
    Case("recipe-no-gate-checks", lambda p: ["run", str(p.recipe(
        "name: bad\nmodel:\n  id: builtin:tiny-llama\nmethod:\n  kind: int4\n  algorithm: rtn\n"))], 2,
         ("no gate checks", "gate.checks")),
    Case("export-to-absolute", lambda p: ["run", str(p.recipe(_recipe_text(extra=f"export:\n  to: {p.out}\n")))], 2,
         ("recipe export.to '/", "/out' is outside the working tree",
          "give it on the command line with -o PATH")),
    Case("export-to-dotdot", lambda p: ["run", str(p.recipe(_recipe_text(extra="export:\n  to: dist/../../x\n")))], 2,
         ("recipe export.to 'dist/../../x' is outside the working tree", "-o PATH")),
    Case("export-to-home", lambda p: ["run", str(p.recipe(_recipe_text(extra="export:\n  to: ~/models/x\n")))], 2,
         ("recipe export.to '~/models/x' is outside the working tree",)),
    # --- models
    Case("model-missing", lambda p: _eval(str(p.inputs / "no-such-model")), 2,
         ("no-such-model does not exist", "builtin:tiny-llama")),
    Case("model-is-a-file", lambda p: _eval(str(p.file("weights.safetensors", b"x"))), 2,
         ("weights.safetensors is not a directory",)),
    Case("model-no-config", lambda p: _eval(str(p.model(mutate=lambda d: (d / "config.json").unlink()))), 2,
         ("has no config.json", "Hugging Face model directory")),
    Case("model-config-not-json", lambda p: _eval(str(p.model(
        mutate=lambda d: (d / "config.json").write_text("{oops")))), 2, ("config.json is not valid JSON",)),
    Case("model-link-outside", lambda p: _eval(str(p.model(mutate=_link_out))), 2,
         ("tokenizer.json is a link to", "outside the model directory", "cp -L")),
    Case("model-broken-link", lambda p: _eval(str(p.model(mutate=_broken_link))), 2,
         ("tokenizer.json is a broken link",)),
    Case("safetensors-truncated", lambda p: _eval(str(p.model(mutate=_truncate))), 2,
         (f"{WEIGHTS} is truncated", "re-download it")),
    Case("safetensors-header-length", lambda p: _eval(str(p.model(mutate=_poke(4, b"\xff\xff\xff\xff")))), 2,
         (WEIGHTS, "header length", "re-download it")),
    Case("safetensors-header-json", lambda p: _eval(str(p.model(mutate=_poke(8, b"#!?*")))), 2,
         (WEIGHTS, "header is not valid JSON", "re-download it")),
    Case("safetensors-offsets", lambda p: _eval(str(p.model(mutate=_bad_offsets))), 2,
         (WEIGHTS, "does not fit its data_offsets", "re-download it")),
    Case("safetensors-missing-shard", lambda p: _eval(str(p.model(mutate=_sharded_missing))), 2,
         ("missing 1 weight shard", "model-00002-of-00002.safetensors", "download complete")),
    Case("model-no-tokenizer", lambda p: _eval(str(p.model(mutate=_no_tokenizer))), 2,
         ("has no tokenizer", "tokenizer.json")),
    Case("weights-nan", lambda p: _quantize(p, str(p.model(mutate=_poison(float("nan"))))), 2,
         ("tensor 'model.layers.2.mlp.down_proj.weight' holds NaN values", WEIGHTS, "re-download")),
    Case("weights-inf", lambda p: _eval(str(p.model(mutate=_poison(float("-inf"))))), 2,
         ("tensor 'model.layers.2.mlp.down_proj.weight' holds infinite values",)),
    Case("remote-code-not-trusted", lambda p: _quantize(p, str(p.model(mutate=_edit_config(
        auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"}))) ), 2,
         ("needs remote code", "AutoModelForCausalLM", "model.trust_remote_code: true")),
    Case("pickled-weights", lambda p: _quantize(p, str(p.model(mutate=_pickled))), 2,
         ("only pickled weights (pytorch_model.bin)", "model.allow_pickle: true")),
    Case("no-weights", lambda p: _eval(str(p.model(mutate=lambda d: (d / WEIGHTS).unlink()))), 2,
         ("has no weight files",)),
    Case("unknown-builtin-model", lambda p: _eval("builtin:tiny-lama"), 2,
         ("Unknown built-in model 'tiny-lama'", "Did you mean: tiny-llama")),
    Case("unknown-run", lambda p: _eval("run:never-ran"), 2, ("no finished run named 'never-ran'",)),
    Case("invalid-hub-id", lambda p: _eval("no such model!"), 2, ("neither a local directory nor a hub id",)),
    Case("recipe-model-truncated", lambda p: ["run", str(p.recipe(_recipe_text(model=str(p.model(mutate=_truncate)))))],
         2, (f"{WEIGHTS} is truncated",)),
    Case("distill-student-missing", lambda p: ["distill", str(p.recipe(
        "name: bad\nmodel:\n  id: builtin:tiny-llama\nmethod:\n  kind: distill\n  student:\n"
        f"    from_teacher: false\n    model: {p.inputs / 'no-student'}\n"))], 2, ("no-student does not exist",)),
    # --- calibration and training data
    Case("data-empty", lambda p: _calibrate(p, p.file("empty.jsonl", "")), 2, ("empty.jsonl is empty", ".jsonl")),
    Case("data-binary", lambda p: _calibrate(p, p.file("blob.txt", b"\x00\x01\x02PK\x03\x04" * 10)), 2,
         ("blob.txt is a binary file", "UTF-8")),
    Case("data-not-utf8", lambda p: _calibrate(p, p.file("latin.txt", "caf\xe9 au lait".encode("latin-1"))), 2,
         ("latin.txt is not UTF-8 text", "iconv")),
    Case("data-missing-field", lambda p: _calibrate(p, p.file("c.jsonl", '{"content": "hello"}\n')), 2,
         ("record 0 has no field 'text' (it has: content)", "text_field")),
    Case("data-missing-file", lambda p: _calibrate(p, p.inputs / "nope.jsonl"), 2,
         ("data file not found", "nope.jsonl")),
    Case("data-bad-json-line", lambda p: _calibrate(p, p.file("c.jsonl", '{"text": "a"}\n{"text": \n')), 2,
         ("c.jsonl, line 2: not valid JSON", "one JSON object per line")),
    Case("data-unsupported-type", lambda p: _calibrate(p, p.file("c.csv", "text\nhello\n")), 2,
         ("unsupported data file type '.csv'", ".jsonl, .json or .txt")),
    Case("data-no-text", lambda p: _calibrate(p, p.file("c.jsonl", '{"text": ""}\n{"text": "  "}\n')), 2,
         ("no texts found",)),
    Case("distill-training-data-binary", lambda p: ["distill", str(p.recipe(
        "name: bad\nmodel:\n  id: builtin:tiny-llama\nmethod:\n  kind: distill\n  training:\n"
        f"    dataset: {p.file('train.jsonl', bytes(range(256)))}\n"))], 2, ("train.jsonl is a binary file",)),
    # --- release commands on the wrong folder
    Case("verify-not-a-directory", lambda p: ["verify", str(p.file("artifact.tar", b"x"))], 2,
         ("artifact.tar is not a directory", "compress export")),
    Case("export-not-a-run", lambda p: ["export", str(p.inputs), "-o", str(p.out / "x")], 2,
         ("is not a run directory (it has no model/)", "runs/NAME/KEY")),
    Case("gate-without-reports", lambda p: ["gate", str(p.inputs)], 2, ("has no reports/", "compress run")),
    Case("report-no-runs", lambda p: ["report", str(p.inputs / "runs")], 2, ("no runs directory",)),
    Case("recipes-list-no-dir", lambda p: ["recipes", "list", str(p.inputs / "recipes")], 2,
         ("no recipe directory",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, place: Place, capfd):
    argv = case.argv(place)
    before = snapshot(place.root)
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == case.code, err
    assert_one_error_line(err, *case.needles, multi=case.multi)
    assert snapshot(place.root) == before, "a bad input must not write anything"


def test_the_corpus_is_large_enough():
    assert len(CASES) + len(SUBPROCESS_CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_no_command_prints_the_help(place, capfd):
    assert main([]) == 2
    out, err = capfd.readouterr()
    assert "Usage:" in out and "quantize" in out  # the help on stdout, the one line on stderr


def test_an_explicit_export_path_may_point_anywhere(place, capfd):
    """`-o` (typed by the user) and `--no-export` skip the export.to check: the run
    then goes on to the next check, here the recipe's truncated model."""
    recipe = place.recipe(_recipe_text(model=str(place.model(mutate=_truncate)), extra="export:\n  to: /etc/x\n"))
    for flags in (["-o", str(place.out / "anywhere")], ["--no-export"]):
        assert main(["run", str(recipe), *flags]) == 2
        line = assert_one_error_line(capfd.readouterr().err)
        assert "is truncated" in line and "export.to" not in line
    assert check_inside_tree("dist/a/../b", "x") == Path("dist/a/../b")


def test_nan_scan_is_memoised_per_file(place, monkeypatch):
    """The eval of a base that was just checked does not read it again in the same process;
    a rewritten file is scanned again."""
    from compress.core import weights

    d = place.model()
    weights.check_weights(d)
    hits = weights._first_nonfinite.cache_info().hits
    weights.check_weights(d)
    assert weights._first_nonfinite.cache_info().hits == hits + 1
    _poison(float("nan"))(d)
    with pytest.raises(weights.ModelInputError, match="holds NaN"):
        weights.check_weights(d)


def test_hub_snapshot_links_into_blobs_are_allowed(place):
    """Hub snapshots are links into ../../blobs of their repo folder: allowed; out of it: not."""
    from compress.core.errors import ModelInputError
    from compress.core.weights import check_links

    repo = place.inputs / "hub" / "models--acme--tiny"
    snap = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in BUILTIN.iterdir():
        shutil.copy(f, repo / "blobs" / f.name)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / f.name)
    check_links(snap)
    (snap / "extra.json").symlink_to(place.inputs / "elsewhere.json")
    (place.inputs / "elsewhere.json").write_text("{}")
    with pytest.raises(ModelInputError, match="outside the model directory"):
        check_links(snap)


def test_hub_downloads_fetch_python_only_when_trusted(monkeypatch):
    import huggingface_hub

    from compress.core import models

    seen = []

    def fake(spec, revision=None, allow_patterns=None):
        seen.append(allow_patterns)
        return "/tmp/models--acme--tiny/snapshots/" + "0" * 40

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    models.resolve_model("acme/tiny")
    models.resolve_model("acme/tiny", trust_remote_code=True)
    assert "*.py" not in seen[0] and "*.py" in seen[1]


def test_temporary_names_are_shown_as_the_final_path():
    from compress.cli import _shown_path

    assert _shown_path(".q.tmp-x6no65y9") == "q"
    assert _shown_path("out/.q.tmp-123-ab12cd34/model.safetensors") == "out/q/model.safetensors"
    assert _shown_path("/r/.model.old-77-ff00") == "/r/model"
    assert _shown_path("runs/.cache/hashes") == "runs/.cache/hashes"


# ------------------------------------------------- the OS refuses: subprocesses

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _as_ordinary_user() -> None:
    """preexec_fn: root without the capabilities that let it ignore file modes, so a folder
    with mode 0555 refuses its writes as it would any user's (tests and CI run as root, where
    chmod alone stops nothing). An ordinary user needs nothing dropped."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def ordinary_user(tmp_path):
    """The preexec_fn above, once a probe shows that it makes a 0555 folder unwritable here."""
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    probe.chmod(0o555)
    try:
        p = subprocess.run([sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"], preexec_fn=_as_ordinary_user,
                           capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot drop root's file capabilities here: {e}")
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)
    if p.returncode == 0:
        pytest.skip("a 0555 folder is writable even without CAP_DAC_OVERRIDE here")
    return _as_ordinary_user


def _compress(place: Place, *args: str, preexec_fn=None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, COMPRESS_RUNS_DIR=str(place.runs), COMPRESS_CACHE_DIR=str(place.cache),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("COMPRESS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, env=env,
                          cwd=place.work, preexec_fn=preexec_fn, timeout=timeout)


def test_read_only_output_folder(place, ordinary_user):
    place.cache.mkdir()
    ro = place.root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    before = snapshot(place.root, skip=cache_skip(place))
    p = _compress(place, "quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-o", str(ro / "q"),
                  preexec_fn=ordinary_user)
    assert p.returncode == 4, p.stderr[-3000:]
    line = assert_one_error_line(p.stderr, f"cannot write {ro / 'q'}: Permission denied",
                                 "choose another output path", exact=False)
    assert ".tmp-" not in line  # the folder the user asked for, not the temporary one
    assert snapshot(place.root, skip=cache_skip(place)) == before


def test_unwritable_cache(place, ordinary_user):
    place.cache.mkdir()
    place.cache.chmod(0o555)
    before = snapshot(place.root)
    p = _compress(place, "eval", "builtin:tiny-llama", "--tasks", "tiny_facts_mc", "--limit", "2",
                  preexec_fn=ordinary_user)
    assert p.returncode == 4, p.stderr[-3000:]
    assert_one_error_line(p.stderr, f"cannot write {place.cache}", "Permission denied",
                          "set COMPRESS_CACHE_DIR to a writable directory", exact=False)
    assert snapshot(place.root) == before


def test_unreadable_model_file(place, ordinary_user):
    model = place.model()
    (model / WEIGHTS).chmod(0)
    before = snapshot(place.root)
    p = _compress(place, *_eval(str(model)), preexec_fn=ordinary_user)
    assert p.returncode == 4, p.stderr[-3000:]
    assert_one_error_line(p.stderr, f"cannot read {model / WEIGHTS}: Permission denied",
                          "make it readable", exact=False)
    assert snapshot(place.root) == before


def _small_disk() -> None:
    """preexec_fn: files may not grow past 1 MiB, and a write past it fails with EFBIG
    instead of killing the process with SIGXFSZ: a full disk, as the writer sees it."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_full_disk_leaves_no_partial_artifact(place):
    place.cache.mkdir()
    place.out.mkdir()
    before = snapshot(place.root, skip=place.cache)
    p = _compress(place, "quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-o",
                  str(place.out / "q"), preexec_fn=_small_disk)
    assert p.returncode == 4, p.stderr[-3000:]
    assert_one_error_line(p.stderr, f"cannot write {place.out / 'q' / WEIGHTS}: File too large",
                          "ulimit -f", exact=False)
    assert snapshot(place.root, skip=place.cache) == before  # no q, no .q.tmp-*, no .q.work


def test_ctrl_c_prints_interrupted_and_exits_130(place):
    import threading

    place.cache.mkdir()
    env = dict(os.environ, COMPRESS_RUNS_DIR=str(place.runs), COMPRESS_CACHE_DIR=str(place.cache))
    env.pop("COMPRESS_DEBUG", None)
    # -v: lm-eval's progress on stderr tells when the scoring has started.
    proc = subprocess.Popen([sys.executable, "-m", "compress", "eval", "builtin:tiny-llama", "-v"], cwd=place.work,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks: list[bytes] = []
    evaluating = threading.Event()

    def read() -> None:  # stderr as it comes; tqdm redraws with \r, so read bytes, not lines
        while chunk := proc.stderr.read1(4096):
            chunks.append(chunk)
            if b"Running loglikelihood requests" in b"".join(chunks[-2:]):
                evaluating.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Mid-way through the work: lm-eval is scoring the documents.
        assert evaluating.wait(180) and proc.poll() is None, b"".join(chunks).decode()[-3000:]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "Interrupted.", err[-3000:]
    assert not (place.cache / "accuracy").exists() or not any((place.cache / "accuracy").iterdir())


SUBPROCESS_CASES = ["read-only-output", "unwritable-cache", "unreadable-model", "full-disk", "ctrl-c"]
