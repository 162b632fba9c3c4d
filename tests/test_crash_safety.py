"""Crash safety, proven by fault injection: kill -9 at every stage boundary and in the middle of
file writes, then check that nothing partial sits at a final path, that the next identical
command succeeds with the results of an uninterrupted run, and that it removes what the killed
one left behind.

Each command runs in a process forked from a zygote that has already imported compress, torch,
transformers, lm-eval and llm-compressor (tests/zygote.py), so a kill point costs the work up to it,
not five seconds of imports. ``COMPRESS_TESTING=1 COMPRESS_FAULT=NAME[#N]``
makes the process SIGKILL itself the N-th time it reaches ``fault_point(NAME)`` (compress/core/faults.py).

The killed commands form a chain over one state folder (each next command is killed further
on, and must get past the previous kill); after every kill a copy of the state gets an
uninterrupted rerun, which must succeed and equal the reference run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

import zygote
from conftest import ROOT

RECIPE = str(ROOT / "recipes" / "tiny-llama-int4-rtn.yaml")
DISTILL = str(ROOT / "recipes" / "tiny-llama-distill.yaml")
QUALITY_ONLY = ["--set", "evals.tasks=[tiny_facts_mc]", "--set", "evals.limit=60",
                "--set", "gate.checks=[{metric: tiny_facts_mc/acc, max_regression: 0.1}]"]
WITH_BENCH = ["--set", "evals.tasks=[tiny_facts_mc]", "--set", "evals.limit=60", "--set", "bench.repeats=2",
              "--set", "bench.batch_sizes=[1]", "--set", "bench.output_tokens=4", "--set", "bench.warmup=1",
              "--set", "gate.checks=[{metric: tiny_facts_mc/acc, max_regression: 0.1}, {metric: size_ratio, max: 0.5}]"]
RUN = ["run", RECIPE, *QUALITY_ONLY, "-o", "dist/x", "--json"]
TEMP = re.compile(r"^\..+\.(tmp|old)-\d+-[0-9a-f]+$")

def compress(root: Path, *argv: str, fault: str | None = None, log: str = "log.txt") -> tuple[int, str]:
    """Run ``compress ARGV`` in ``root`` (runs/, cache/ and dist/ inside it); return (exit code, output).

    The exit code is -9 when the process was killed by its fault point.
    """
    env = {"COMPRESS_RUNS_DIR": "runs", "COMPRESS_CACHE_DIR": "cache", "COMPRESS_TESTING": "1",
           "COMPRESS_FAULT": fault or ""}
    path = root.parent / f"{root.name}-{log}"
    p = zygote.process(list(argv), env=dict(os.environ, **env), cwd=root, out=path)
    p.join(600)
    if p.is_alive():
        p.kill()
        pytest.fail(f"compress {' '.join(argv)} hung")
    return p.exitcode, path.read_text()


def _json_out(text: str) -> dict:
    start = text.index("\n{") + 1 if not text.startswith("{") else 0
    return json.loads(text[start:])


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if TEMP.match(p.name)]


def assert_nothing_partial(root: Path) -> None:
    """Every final path holds something whole: JSON parses, artifacts and exports check out."""
    from compress.core.artifact import check_hashes, read_json
    from compress.ship.export import verify

    for path in root.rglob("*.json"):
        if TEMP.match(path.name) or any(TEMP.match(part) for part in path.relative_to(root).parts):
            continue
        json.loads(path.read_text())  # a half-written file at a final path would not parse
    for manifest in root.glob("runs/*/*/model/manifest.json"):
        assert not check_hashes(manifest.parent, read_json(manifest)["files"]), manifest
    for latest in root.glob("runs/*/LATEST"):
        assert (latest.parent / latest.read_text().strip() / "model" / "manifest.json").exists()
    for export in root.glob("dist/*"):
        if not TEMP.match(export.name):
            verify(export)


def outcome(root: Path, text: str) -> dict:
    """What must not depend on whether a run was interrupted: artifact bytes, verdict, quality figures."""
    out = _json_out(text)
    checks = {c["metric"]: (c["verdict"], c["measured"] if c["kind"] == "quality" else None)
              for c in out["gate"]["checks"]}
    export = json.loads((root / "dist" / "x" / "manifest.json").read_text())
    return {"verdict": out["verdict"], "candidate": out["gate"]["candidate_hash"], "checks": checks,
            "exported": export["content_hash"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    code, text = compress(root, *RUN)
    assert code == 0, text[-3000:]
    return outcome(root, text)


def _kill_chain(root: Path, argv: list[str], faults: list[str], check_rerun) -> list[str]:
    """Kill ``argv`` at each fault in turn over one state folder; after each kill, check the state
    and rerun a copy of it uninterrupted. Returns the kill points that were reached."""
    reached = []
    for n, fault in enumerate(faults):
        start = time.time()
        code, text = compress(root, *argv, fault=fault)
        assert code == -signal.SIGKILL, f"{fault}: not reached (exit {code})\n{text[-2000:]}"
        reached.append(fault)
        assert_nothing_partial(root)
        copy = root.parent / f"{root.name}-after-{n}"
        shutil.copytree(root, copy, symlinks=True)
        left = temporaries(copy)
        code, text = compress(copy, *argv)
        assert code == 0, f"rerun after {fault}: exit {code}\n{text[-3000:]}"
        assert not temporaries(copy), f"after {fault}, the rerun left {temporaries(copy)} (had {left})"
        assert_nothing_partial(copy)
        check_rerun(copy, text, fault)
        shutil.rmtree(copy)
        print(f"{fault}: killed and rerun in {time.time() - start:.1f} s")
    return reached


# The kill points of `compress run`, in the order one run reaches them.
RUN_FAULTS = [
    "cache.mid",                    # the first cache entry (a weight-scan or hash memo), half written
    "build.after-method",           # model written into the temporary artifact folder
    "build.manifest.mid",           # the artifact's manifest, half written
    "atomic_dir.before-rename",     # a complete artifact, not yet at its final path
    "build.before-latest",          # artifact in place, LATEST not yet updated
    "latest.mid",                   # LATEST half written
    "run.after-artifact",
    "cache.before-store",           # the baseline's report measured, not yet cached
    "run.after-eval-baseline",
    "write_json.mid",               # a report in the run folder, half written
    "cache.mid#2",                  # a second cache entry of that process (the candidate's), half written
    "run.after-eval-candidate",
    "write_json.before-rename#3",   # gate.json complete, not yet renamed
    "gate.before-manifest",         # gate.json written, manifest not yet updated
    "run.after-gate",
    "export.after-file#2",          # the export's copy half done
    "export.before-manifest",
    "export.manifest.mid",
    "atomic_dir.before-rename",     # a complete export, not yet at its final path
    "run.after-export",
    "write_json.mid#5",             # stages.json, half written
]


def test_run_killed_at_every_stage_boundary_and_mid_write(tmp_path, reference):
    root = tmp_path / "state"
    root.mkdir()

    killed = []

    def same_as_reference(copy, text, fault):
        assert outcome(copy, text) == reference, fault
        killed.append(fault)
        if len(killed) > RUN_FAULTS.index("run.after-artifact"):  # the artifact stage had finished: reused
            stages = {s["stage"]: s["reused"] for s in _json_out(text)["stages"]}
            assert stages["artifact"] is True, (fault, stages)

    reached = _kill_chain(root, RUN, RUN_FAULTS, same_as_reference)
    code, text = compress(root, *RUN)
    assert code == 0 and outcome(root, text) == reference
    assert not temporaries(root)
    assert len(reached) == len(RUN_FAULTS)


def test_bench_stages_killed(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    argv = ["run", RECIPE, *WITH_BENCH, "-o", "dist/x", "--json"]

    def passes(copy, text, fault):
        out = _json_out(text)
        assert out["verdict"] == "PASS", fault
        assert "bench both" in {s["stage"] for s in out["stages"]}

    _kill_chain(root, argv, ["run.after-eval-candidate", "run.after-bench-both"], passes)


def test_quantize_killed_leaves_no_artifact_and_reruns_to_the_same_bytes(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    argv = ["quantize", RECIPE, "-o", "out/q", "--json"]
    ref_root = tmp_path / "ref"
    ref_root.mkdir()
    code, text = compress(ref_root, *argv)
    assert code == 0, text[-2000:]
    expected = _json_out(text)["manifest"]["content_hash"]

    def same_bytes(copy, text, fault):
        assert _json_out(text)["manifest"]["content_hash"] == expected, fault
        mode = stat.S_IMODE((copy / "out" / "q" / "model.safetensors").stat().st_mode)
        assert mode & 0o044 == 0o044, f"{mode:o}: a server running as another user could not read it"

    _kill_chain(root, argv, ["build.after-method", "build.manifest.mid", "atomic_dir.before-rename"], same_bytes)
    assert not (root / "out" / "q").exists()


def test_export_force_killed_is_the_old_or_the_new_export_never_neither(tmp_path):
    """Two passing artifacts (group size 128 and 64); exporting the second over the first with
    --force is killed mid-copy, between the atomic swap and the clean-up, and between the two
    renames of the fallback path (file systems without renameat2's exchange)."""
    from compress.core.artifact import sweep_stale
    from compress.ship.export import verify

    root = tmp_path / "state"
    root.mkdir()
    runs = {}
    for group in (128, 64):
        code, text = compress(root, "run", RECIPE, *QUALITY_ONLY, "--set", f"method.group_size={group}",
                              "--no-export", "--json")
        assert code == 0, text[-2000:]
        out = _json_out(text)
        runs[group] = (out["run_dir"], out["gate"]["candidate_hash"])
    code, text = compress(root, "export", runs[128][0], "-o", "dist/x")
    assert code == 0, text[-2000:]
    old, new = runs[128][1], runs[64][1]
    argv = ["export", runs[64][0], "-o", "dist/x", "--force"]
    for fault in ["export.after-file#1", "atomic_dir.after-swap", "atomic_dir.between-renames"]:
        code, text = compress(root, *argv, fault=fault)
        assert code == -signal.SIGKILL, f"{fault}: exit {code}\n{text[-2000:]}"
        if fault == "atomic_dir.between-renames":
            # Without an atomic exchange there is a moment with neither at the final path; the
            # old export waits beside it and whoever writes there next puts it back.
            assert not (root / "dist" / "x").exists() and temporaries(root / "dist")
            sweep_stale(root / "dist")
        held = verify(root / "dist" / "x")["manifest"]["content_hash"]
        assert held in (old, new), fault
        code, text = compress(root, *argv)
        assert code == 0, text[-2000:]
        assert verify(root / "dist" / "x")["manifest"]["content_hash"] == new
        assert not temporaries(root), temporaries(root)
        code, text = compress(root, "export", runs[128][0], "-o", "dist/x", "--force")  # back to the old one
        assert code == 0 and verify(root / "dist" / "x")["manifest"]["content_hash"] == old


def test_distill_killed_mid_training_and_after_a_checkpoint(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    texts = [json.loads(line)["text"] for line in
             (ROOT / "compress" / "assets" / "data" / "train.jsonl").read_text().splitlines()[:200]]
    (root / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    argv = ["distill", DISTILL, "-o", "out/student", "--set", "method.training.max_steps=4",
            "--set", "method.training.save_steps=2", "--set", "method.training.batch_size=2",
            "--set", "method.training.max_seq_length=64",
            "--set", "method.training.logging_steps=2", "--set", "method.training.dataset=train.jsonl",
            "--set", "calibration.dataset=train.jsonl", "--set", "calibration.num_samples=8", "--json"]

    def trained(copy, text, fault):
        d = _json_out(text)["manifest"]["method"]["details"]["training"]
        assert d["steps"] == 4, fault

    # Killed before any checkpoint, right after the first one, after resuming from it, and
    # after the last one (so the rerun resumes at max_steps and trains no further).
    reached = _kill_chain(root, argv, ["distill.step#1", "distill.after-checkpoint#1", "distill.step#1",
                                       "distill.after-checkpoint#1", "build.after-method"], trained)
    assert len(reached) == 5
    assert not (root / "out" / "student").exists()
