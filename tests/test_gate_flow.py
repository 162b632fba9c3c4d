"""`compress run` end to end on the embedded model: PASS is exported and verifiable, a too
aggressive recipe is blocked, edited bytes cannot be exported, every outcome has its exit code."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from conftest import FAST_RUN, ROOT, run_cli

FAST = FAST_RUN
GOOD = ROOT / "recipes" / "tiny-llama-int4-rtn.yaml"
BAD = ROOT / "recipes" / "demo" / "tiny-llama-int2-rtn.yaml"


@pytest.fixture(scope="module")
def flow(tmp_path_factory, shared_cache):
    """One PASS run and one FAIL run sharing a runs directory and report cache."""
    root = tmp_path_factory.mktemp("flow")
    env = {"COMPRESS_RUNS_DIR": str(root / "runs"), "COMPRESS_CACHE_DIR": str(shared_cache),
           "GITHUB_STEP_SUMMARY": str(root / "step-summary.md")}
    start = time.time()
    good = run_cli("run", str(GOOD), *FAST, "-o", str(root / "dist" / "good"), "--junit",
                   str(root / "good.xml"), "--summary", str(root / "good.md"), "--json", env=env, cwd=root)
    first_seconds = time.time() - start
    bad = run_cli("run", str(BAD), *FAST, "-o", str(root / "dist" / "bad"), "--junit", str(root / "bad.xml"),
                  "--json", env=env, cwd=root)
    return {"root": root, "env": env, "good": good, "bad": bad, "first_seconds": first_seconds}


NOISE = ("it/s]", "Running loglikelihood", "Loading weights", "torchao", "Warning", "_pytree", "INFO")


def test_run_says_little_and_keeps_the_back_ends_output_in_its_log(flow):
    """Off a terminal, `compress run` prints one line per stage and its result; what torch,
    transformers, lm-eval and llm-compressor print goes to the run's logs/ folder."""
    for p in (flow["good"], flow["bad"]):
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert len(lines) <= 15, p.stderr
        assert not any(n in p.stderr for n in NOISE), p.stderr
        assert [line.split(":")[0] for line in lines if line.startswith("• [")] \
            == ["• [1/6] artifact", "• [2/6] eval baseline", "• [3/6] eval candidate", "• [4/6] bench both",
                "• [5/6] gate"] + (["• [6/6] export"] if p is flow["good"] else [])
    run_dir = Path(json.loads(flow["good"].stdout)["run_dir"])
    logs = sorted((run_dir / "logs").glob("compress-run-*.log"))
    assert logs, list(run_dir.iterdir())
    text = logs[0].read_text()
    assert "Running loglikelihood requests" in text and "[compress " in text


def test_pass_is_exported_with_manifest_and_model_card(flow):
    p = flow["good"]
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["verdict"] == "PASS"
    dist = flow["root"] / "dist" / "good"
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["gate"]["verdict"] == "PASS" and manifest["gate"]["candidate_hash"] == manifest["content_hash"]
    card = (dist / "README.md").read_text()
    for needle in ["## Gate", "PASS", "tiny_facts_mc/acc", "## Accuracy", "## Speed, memory and cost",
                   "builtin:tiny-llama", "## How it was made", "kind: int4", "Calibration data: none",
                   "## Intended use and limitations", f"vllm serve {dist}", f"--model-path {dist}"]:
        assert needle in card, needle
    # The recipe excerpt holds what differs from the defaults, not every default.
    excerpt = card.split("## How it was made")[1].split("```yaml")[1].split("```")[0]
    assert "null" not in excerpt and "algorithm: rtn" in excerpt and "bootstrap_resamples" not in excerpt
    assert (dist / "recipe.yaml").exists() and (dist / "model.safetensors").exists()
    # The card is what a model hub reads: front matter, with the gated results in a model-index.
    from huggingface_hub import ModelCard

    hub = ModelCard.load(dist / "README.md").data
    assert hub.base_model == "builtin:tiny-llama" and hub.library_name == "transformers"
    assert hub.pipeline_tag == "text-generation" and {"compress", "int4-rtn", "compressed-tensors"} <= set(hub.tags)
    assert hub.license == "other"
    assert "model-index:" in card.split("---")[1]  # the key a hub reads (not model_index)
    results = {r.dataset_name: r for r in hub.eval_results}
    acc = results["tiny_facts_mc"]
    assert acc.metric_type == "acc" and 0 < acc.metric_value <= 1 and acc.task_type == "text-generation"
    assert "95% interval [" in acc.metric_name and "pts" in acc.metric_name and hub.model_name == "tiny-llama-int4-rtn"
    assert f"from_pretrained(\"{dist}\")" in card and "## Intended use and limitations" in card
    v = run_cli("verify", str(dist), env=flow["env"])
    assert v.returncode == 0 and "OK" in v.stdout
    v = run_cli("verify", str(dist), "--json", env=flow["env"])
    checked = json.loads(v.stdout)
    assert v.returncode == 0 and checked["ok"] and checked["content_hash"] == manifest["content_hash"]
    assert checked["files"] >= len(manifest["files"]) and checked["signature"] is None
    # Exporting again to the same place is a no-op that says so, in JSON too; runs/NAME is its newest run.
    e = run_cli("export", str(flow["root"] / "runs" / "tiny-llama-int4-rtn"), "-o", str(dist), "--json",
                env=flow["env"])
    assert e.returncode == 0, e.stderr[-2000:]
    assert json.loads(e.stdout)["content_hash"] == manifest["content_hash"]
    # The gate decision is recorded in the run's manifest and gate.json too.
    run_dir = flow["root"] / "runs" / "tiny-llama-int4-rtn"
    key = (run_dir / "LATEST").read_text().strip()
    gate = json.loads((run_dir / key / "gate.json").read_text())
    assert gate["verdict"] == "PASS" and {c["metric"] for c in gate["checks"]} >= {"tiny_facts_mc/acc", "size_ratio"}
    quality = next(c for c in gate["checks"] if c["metric"] == "tiny_facts_mc/acc")
    assert quality["interval"]["n"] == 1000 and quality["interval"]["lower"] <= quality["measured"] <= quality["interval"]["upper"]


def test_junit_and_summary_files(flow):
    suite = ET.parse(flow["root"] / "good.xml").getroot()
    cases = suite.findall(".//testcase")
    assert len(cases) == 4 and not suite.findall(".//failure")
    bad = ET.parse(flow["root"] / "bad.xml").getroot()
    failures = bad.findall(".//failure")
    # The quality checks FAIL; a speed guard may be INCONCLUSIVE on a busy machine, never PASS-as-failure.
    assert failures and "FAIL" in {f.get("type") for f in failures} <= {"FAIL", "INCONCLUSIVE"}
    summary = (flow["root"] / "good.md").read_text()
    assert "PASS" in summary and "| verdict | check |" in summary
    step = (flow["root"] / "step-summary.md").read_text()
    assert "tiny-llama-int4-rtn: PASS" in step and "tiny-llama-int2-rtn: FAIL" in step


def test_too_aggressive_recipe_fails_and_exports_nothing(flow):
    p = flow["bad"]
    assert p.returncode == 1, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["verdict"] == "FAIL" and out["exported_to"] is None
    assert not (flow["root"] / "dist" / "bad").exists()
    acc = next(c for c in out["gate"]["checks"] if c["metric"] == "tiny_facts_mc/acc")
    assert acc["verdict"] == "FAIL" and acc["interval"]["lower"] > 0.03
    # Asking for an export explicitly is refused too.
    run_dir = out["run_dir"]
    e = run_cli("export", run_dir, "-o", str(flow["root"] / "dist" / "forced"), env=flow["env"])
    assert e.returncode == 1 and "gate verdict is FAIL" in e.stderr
    assert not (flow["root"] / "dist" / "forced").exists()


def test_rerun_of_a_passed_recipe_reuses_every_stage(flow):
    start = time.time()
    p = run_cli("run", str(GOOD), *FAST, "-o", str(flow["root"] / "dist" / "good"), "--json",
                env=flow["env"], cwd=flow["root"])
    seconds = time.time() - start
    assert p.returncode == 0, p.stderr[-2000:]
    stages = {s["stage"]: s["reused"] for s in json.loads(p.stdout)["stages"]}
    assert stages == {"artifact": True, "eval baseline": True, "eval candidate": True, "bench both": True,
                      "gate": False, "export": True}
    assert seconds < flow["first_seconds"]


def test_edited_weight_file_blocks_export_and_fails_verify(flow, tmp_path):
    run_dir = json.loads(flow["good"].stdout)["run_dir"]
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    weights = copy / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit in the last tensor
    weights.write_bytes(bytes(data))
    e = run_cli("export", str(copy), "-o", str(tmp_path / "out"), env=flow["env"])
    assert e.returncode == 1
    assert "files changed after gating" in e.stderr and "model.safetensors" in e.stderr
    assert not (tmp_path / "out").exists()
    # An exported directory edited afterwards fails verification.
    exported = tmp_path / "exported"
    shutil.copytree(flow["root"] / "dist" / "good", exported)
    (exported / "tokenizer.json").write_text((exported / "tokenizer.json").read_text().replace("<pad>", "<pdd>"))
    v = run_cli("verify", str(exported))
    assert v.returncode != 0 and "tokenizer.json" in v.stderr


def test_gate_exit_codes_from_stored_reports(flow, tmp_path):
    run_dir = json.loads(flow["good"].stdout)["run_dir"]
    recipe = yaml.safe_load(GOOD.read_text())

    def gate_with(checks):
        r = dict(recipe, gate={"confidence": 0.95, "checks": checks})
        path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(r))
        return run_cli("gate", run_dir, "--recipe", str(path), "--json", env=flow["env"])

    measured = next(c for c in json.loads(flow["good"].stdout)["gate"]["checks"] if c["metric"] == "tiny_facts_mc/acc")
    iv = measured["interval"]
    inside = (iv["lower"] + iv["upper"]) / 2 if iv["lower"] < iv["upper"] else iv["upper"]
    unsure = gate_with([{"metric": "tiny_facts_mc/acc", "max_regression": max(inside, 0.0)}])
    assert unsure.returncode == 3, unsure.stdout
    result = json.loads(unsure.stdout)
    assert result["verdict"] == "INCONCLUSIVE" and result["checks"][0]["samples_needed"] > 1000
    fail = gate_with([{"metric": "size_ratio", "max": 0.1}])
    assert fail.returncode == 1 and json.loads(fail.stdout)["verdict"] == "FAIL"
    ok = gate_with([{"metric": "size_ratio", "max": 0.5}, {"metric": "tiny_bios_ppl/word_perplexity",
                                                            "max_regression": 0.5, "relative": True}])
    assert ok.returncode == 0
    missing = gate_with([{"metric": "tiny_facts_mc/acc_norm_x", "max_regression": 0.1}])
    assert missing.returncode == 2 and "no metric" in missing.stderr


def test_report_table_and_pareto_plot(flow, tmp_path):
    png = tmp_path / "runs.png"
    p = run_cli("report", str(flow["root"] / "runs"), "--plot", str(png), "--json", env=flow["env"])
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert rows["tiny-llama-int4-rtn"]["verdict"] == "PASS" and rows["tiny-llama-int2-rtn"]["verdict"] == "FAIL"
    assert rows["base: builtin:tiny-llama"]["accuracy"] > rows["tiny-llama-int2-rtn"]["accuracy"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Each row carries the interval its plot draws, and the table names the load its latency and cost are at.
    # (Another test re-gates the PASS run on perplexity, which has no standard error: only the FAIL
    # run's headline is still an accuracy here.)
    assert rows["tiny-llama-int2-rtn"]["accuracy_stderr"] > 0
    table = run_cli("report", str(flow["root"] / "runs"), env=flow["env"])
    header = next(line for line in table.stdout.splitlines() if "latency p50" in line)
    assert "latency p50 (hf, batch 1)" in header and "$/1M out (hf, batch 1)" in header, table.stdout
    assert "[95%]" in header and " ± " in table.stdout
    # No runs yet: an empty list for a script, a sentence for a person; neither is an error.
    empty = tmp_path / "no-runs"
    empty.mkdir()
    j = run_cli("report", str(empty), "--json", env=flow["env"])
    assert j.returncode == 0 and json.loads(j.stdout) == []
    t = run_cli("report", str(empty), env=flow["env"])
    assert t.returncode == 0 and "No gated runs" in t.stdout


@pytest.mark.slow
def test_a_crashed_run_resumes_from_its_finished_stages(tmp_path, runs_dir):
    """The process group killed from outside once the artifact exists. (In the default suite, the kill chain of
    tests/test_crash_safety.py kills a run at every stage boundary and checks that the rerun reuses the artifact.)"""
    args = [sys.executable, "-m", "compress", "run", str(GOOD), *FAST, "--no-export", "--json"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    latest = runs_dir / "tiny-llama-int4-rtn" / "LATEST"
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert latest.exists(), "the artifact stage never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # crash somewhere after the artifact was built
    proc.wait()
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    stages = {s["stage"]: s["reused"] for s in json.loads(again.stdout)["stages"]}
    assert stages["artifact"] is True
    assert not list((runs_dir / "tiny-llama-int4-rtn").glob("*/.model.tmp-*"))


# ------------------------------------------------------------ the gate is a promise

def _copy_run(flow, which: str, tmp_path):
    """A private copy of a run directory, gated again under its own recipe (other tests re-gate
    the shared one with other policies)."""
    run_dir = json.loads(flow[which].stdout)["run_dir"]
    copy = tmp_path / "runs" / "r" / "key"
    shutil.copytree(run_dir, copy)
    g = run_cli("gate", str(copy), env=flow["env"])
    assert g.returncode in (0, 1), g.stderr[-2000:]
    return copy


def test_forged_gate_verdict_is_refused(flow, tmp_path):
    copy = _copy_run(flow, "bad", tmp_path)
    gate = json.loads((copy / "gate.json").read_text())
    assert gate["verdict"] == "FAIL"
    gate["verdict"], gate["exit_code"] = "PASS", 0
    for check in gate["checks"]:
        check["verdict"] = "PASS"
    (copy / "gate.json").write_text(json.dumps(gate))
    e = run_cli("export", str(copy), "-o", str(tmp_path / "out"), env=flow["env"])
    assert e.returncode == 1, e.stderr
    assert "does not follow from its reports" in e.stderr and "verdict: recorded PASS, the reports give FAIL" in e.stderr
    assert not (tmp_path / "out").exists()
    # A gentler policy written into gate.json without its hash is caught too.
    gate["policy"]["checks"][0]["max_regression"] = 0.9
    (copy / "gate.json").write_text(json.dumps(gate))
    e = run_cli("export", str(copy), "-o", str(tmp_path / "out"), env=flow["env"])
    assert e.returncode == 1 and "policy does not match its own hash" in e.stderr


def test_forged_accuracy_report_is_refused(flow, tmp_path):
    import hashlib

    copy = _copy_run(flow, "good", tmp_path)
    report_path = copy / "reports" / "candidate-accuracy.json"
    report = json.loads(report_path.read_text())
    report["tasks"]["tiny_facts_mc"]["metrics"]["acc,none"]["value"] = 0.99  # a better headline for the model card
    report_path.write_text(json.dumps(report))
    e = run_cli("export", str(copy), "-o", str(tmp_path / "out"), env=flow["env"])
    assert e.returncode == 1 and "candidate-accuracy.json: differs from the report the decision was made on" in e.stderr
    # Recording the forged report's hash in gate.json does not help: the figure disagrees with its documents.
    gate = json.loads((copy / "gate.json").read_text())
    gate["reports"]["candidate-accuracy.json"] = hashlib.sha256(report_path.read_bytes()).hexdigest()
    (copy / "gate.json").write_text(json.dumps(gate))
    e = run_cli("export", str(copy), "-o", str(tmp_path / "out"), env=flow["env"])
    assert e.returncode == 1 and "tiny_facts_mc/acc is 0.99 but its documents give" in e.stderr, e.stderr
    # A report about other bytes than the candidate's (the base model's, relabelled) is refused too.
    shutil.copyfile(copy / "reports" / "baseline-accuracy.json", report_path)
    g = run_cli("gate", str(copy), env=flow["env"])
    assert g.returncode == 0, g.stdout
    e = run_cli("export", str(copy), "-o", str(tmp_path / "out"), env=flow["env"])
    assert e.returncode == 1 and "the PASS was given to different bytes than the ones on disk" in e.stderr, e.stderr
    assert not (tmp_path / "out").exists()


def test_any_edit_to_an_exported_file_fails_verify(flow, tmp_path):
    dist = flow["root"] / "dist" / "good"
    files = sorted(p.relative_to(dist) for p in dist.rglob("*") if p.is_file())
    assert {"README.md", "recipe.yaml", "manifest.json", "evidence/gate.json", "evidence/candidate-accuracy.json",
            "model.safetensors", "tokenizer.json"} <= {f.as_posix() for f in files}
    for rel in files:
        copy = tmp_path / rel.as_posix().replace("/", "_")
        shutil.copytree(dist, copy)
        data = bytearray((copy / rel).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / rel).write_bytes(bytes(data))
        v = run_cli("verify", str(copy))
        assert v.returncode != 0, f"an edit to {rel} verified OK"
        assert "Traceback" not in v.stderr and len(v.stderr.strip().splitlines()) == 1, v.stderr
        shutil.rmtree(copy)
    # The two edits that used to slip through, an added file and a missing one.
    for name, change in [("README.md", lambda p: p.write_text(p.read_text() + "\nBest model ever.\n")),
                         ("recipe.yaml", lambda p: p.write_text(p.read_text().replace("bits: 4", "bits: 2"))),
                         ("extra.txt", lambda p: p.write_text("hello")),
                         ("tokenizer_config.json", lambda p: p.unlink())]:
        copy = tmp_path / f"c-{name}"
        shutil.copytree(dist, copy)
        change(copy / name)
        v = run_cli("verify", str(copy))
        assert v.returncode == 4 and name in v.stderr, (name, v.stderr)


def test_a_lax_policy_is_visible_in_export_model_card_and_verify(flow, tmp_path):
    copy = _copy_run(flow, "bad", tmp_path)
    lax = yaml.safe_load(BAD.read_text())
    lax["gate"]["checks"] = [{"metric": "tiny_facts_mc/acc", "max_regression": 0.5},
                             {"metric": "size_ratio", "max": 0.5}]
    (tmp_path / "lax.yaml").write_text(yaml.safe_dump(lax))
    g = run_cli("gate", str(copy), "--recipe", str(tmp_path / "lax.yaml"), env=flow["env"])
    assert g.returncode == 0, g.stdout + g.stderr
    e = run_cli("export", str(copy), "-o", str(tmp_path / "out"), env=flow["env"])
    assert e.returncode == 0, e.stderr
    assert "warning:" in e.stderr and "lax.yaml, NOT the artifact's own recipe" in e.stderr
    card = (tmp_path / "out" / "README.md").read_text()
    assert "NOT the artifact's own recipe" in card and "max_regression" not in card.split("## Gate")[0]
    v = run_cli("verify", str(tmp_path / "out"))
    assert v.returncode == 0 and "NOT the artifact's own recipe" in v.stdout, v.stdout + v.stderr
    own = run_cli("verify", str(flow["root"] / "dist" / "good"))
    assert "from the artifact's own recipe" in own.stdout


def test_exported_files_are_readable_by_others_and_manifests_hold_no_builder_paths(flow):
    dist = flow["root"] / "dist" / "good"
    for p in dist.rglob("*"):
        mode = p.stat().st_mode & 0o777
        assert mode & 0o044 == 0o044, f"{p.name}: mode {mode:o}"
    run_dir = json.loads(flow["good"].stdout)["run_dir"]
    for manifest in [dist / "manifest.json", Path(run_dir) / "model" / "manifest.json"]:
        text = manifest.read_text()
        assert str(flow["root"]) not in text and str(ROOT) not in text, manifest


def test_a_second_run_of_the_same_recipe_waits_or_exits_2(flow, tmp_path):
    import threading

    from compress.core.locks import locked

    held = flow["root"] / "runs" / "tiny-llama-int4-rtn"
    args = ["run", str(GOOD), *FAST, "--no-export", "--json"]
    with locked(held, "test"):
        p = run_cli(*args, env={**flow["env"], "COMPRESS_LOCK_WAIT": "0"}, cwd=flow["root"])
    assert p.returncode == 2 and "another compress process is writing runs of tiny-llama-int4-rtn" in p.stderr
    release = threading.Event()

    def hold():
        with locked(held, "test"):
            release.wait(8)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.5)
    threading.Timer(4, release.set).start()
    p = run_cli(*args, env={**flow["env"], "COMPRESS_LOCK_WAIT": "120"}, cwd=flow["root"])
    t.join()
    assert p.returncode == 0, p.stderr[-2000:]
    assert "waiting up to 120 s" in p.stderr


# ------------------------------------------------- names read from stored files are data, never paths

def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _forged_names(tmp_path: Path) -> list[tuple[str, str]]:
    """(label, name) pairs a forger could write where compress expects a report's file name."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for export")
    return [("traversal", "../../secret.txt"), ("deep traversal", "speed.json/../../../secret.txt"),
            ("absolute", str(secret)), ("NUL", "speed.json\x00../../secret.txt"), ("backslash", "..\\secret.txt"),
            ("empty part", "reports//speed.json"), ("unknown name", "notes.json")]


def test_names_in_gate_json_never_reach_outside_the_run(flow, tmp_path):
    """A name added to gate.json's reports (with the right sha256) is refused by export with exit 1 and one line
    naming the file and the name; nothing is written anywhere, and a symlinked report file is refused too."""
    import hashlib

    copy = _copy_run(flow, "good", tmp_path)
    gate_path = copy / "gate.json"
    original = gate_path.read_text()
    digest = hashlib.sha256(b"not for export").hexdigest()
    for label, name in _forged_names(tmp_path):
        gate = json.loads(original)
        gate["reports"][name] = digest
        gate_path.write_text(json.dumps(gate))
        before = _snapshot(tmp_path)
        e = run_cli("export", str(copy), "-o", str(tmp_path / "a" / "b" / "exp"), env=flow["env"])
        assert e.returncode == 1, (label, e.stderr)
        lines = e.stderr.strip().splitlines()
        assert len(lines) == 1 and "gate.json" in lines[0] and "refusing the name" in lines[0], (label, e.stderr)
        assert not (tmp_path / "a").exists() and _snapshot(tmp_path) == before, label
    # A known name whose file is a symlink to something outside the run.
    gate_path.write_text(original)
    speed = copy / "reports" / "speed.json"
    outside = tmp_path / "outside-speed.json"
    shutil.move(speed, outside)
    speed.symlink_to(outside)
    e = run_cli("export", str(copy), "-o", str(tmp_path / "a" / "b" / "exp"), env=flow["env"])
    assert e.returncode == 1 and "symbolic link" in e.stderr, e.stderr
    assert not (tmp_path / "a").exists()


def test_names_in_a_run_manifest_never_reach_outside_the_run(flow, tmp_path):
    copy = _copy_run(flow, "good", tmp_path)
    manifest_path = copy / "model" / "manifest.json"
    original = manifest_path.read_text()
    for label, name in _forged_names(tmp_path)[:-1]:
        manifest = json.loads(original)
        manifest["files"][name] = {"sha256": "0" * 64, "size": 1}
        manifest_path.write_text(json.dumps(manifest))
        e = run_cli("export", str(copy), "-o", str(tmp_path / "a" / "exp"), env=flow["env"])
        assert e.returncode == 1 and "manifest.json" in e.stderr and "refusing the name" in e.stderr, (label, e.stderr)
        assert not (tmp_path / "a").exists(), label


def test_verify_refuses_forged_names_in_an_export(flow, tmp_path):
    """The same forgeries in an export (gate.json's reports, with the manifest's copy and export_files
    hash updated to match, and export_files' own names) fail verify with exit 1."""
    import hashlib

    dist = flow["root"] / "dist" / "good"
    for label, name in _forged_names(tmp_path):
        copy = tmp_path / "copy"
        shutil.copytree(dist, copy)
        gate = json.loads((copy / "evidence" / "gate.json").read_text())
        gate["reports"][name] = hashlib.sha256(b"not for export").hexdigest()
        (copy / "evidence" / "gate.json").write_text(json.dumps(gate))
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["gate"] = gate
        manifest["export_files"]["evidence/gate.json"]["sha256"] = hashlib.sha256(
            (copy / "evidence" / "gate.json").read_bytes()).hexdigest()
        (copy / "manifest.json").write_text(json.dumps(manifest))
        v = run_cli("verify", str(copy))
        assert v.returncode == 1 and "refusing the name" in v.stderr, (label, v.stderr)
        assert len(v.stderr.strip().splitlines()) == 1, v.stderr
        if label == "unknown name":  # a plain name there is only a missing file (exit 4)
            shutil.rmtree(copy)
            continue
        manifest["export_files"][name] = {"sha256": "0" * 64, "size": 1}
        (copy / "manifest.json").write_text(json.dumps(manifest))
        v = run_cli("verify", str(copy))
        assert v.returncode == 1 and "manifest.json" in v.stderr and "refusing the name" in v.stderr, (label, v.stderr)
        shutil.rmtree(copy)
