"""The default suite's real engine test: `compress run` benchmarks base and candidate in vLLM.

Two vLLM servers (the bf16 base and its int4 artifact) are started from `.venv-engine`, measured
in alternating rounds through the streaming API, and stopped; the gate decides from the rounds.
A third serves the artifact for the `servable: vllm` check, whose greedy tokens must equal
transformers'. About two minutes on 2 CPU cores. `make test` builds the engine first; without
`.venv-engine` the test is skipped (run `make engine`).
"""
import json
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, run_cli

ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"
RECIPE = ROOT / "recipes" / "tiny-llama-int4-rtn.yaml"


def _servers_of(path_part: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(path_part in a for a in p.info["cmdline"] or []) \
                    and any("vllm" in a for a in p.info["cmdline"] or []):
                found.append(p.info["pid"])
        except psutil.Error:
            continue
    return found


@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason=f"{ENGINE_PYTHON} missing: run `make engine`")
def test_run_measures_base_and_candidate_together_in_vllm_and_stops_both(tmp_path):
    env = {"COMPRESS_RUNS_DIR": str(tmp_path / "runs"), "COMPRESS_CACHE_DIR": str(tmp_path / "cache"),
           "COMPRESS_ENGINE_VENV": str(ENGINE_PYTHON.parent.parent)}
    p = run_cli("run", str(RECIPE), "--set", "bench.engine=vllm", "--set", "bench.rounds=2",
                "--set", "bench.repeats=4", "--set", "bench.batch_sizes=[1, 4]", "--set", "bench.output_tokens=12",
                "--set", "gate.checks=[{metric: size_ratio, max: 0.5}, {metric: throughput_speedup, min: 0.05}]",
                "--set", "gate.servable={engine: vllm, prompts: 6, tokens: 8, min_agreement: 1.0}",
                "--no-export", "--json", env=env, cwd=tmp_path)
    assert p.returncode in (0, 3), p.stderr[-3000:]
    out = json.loads(p.stdout)
    run_dir = tmp_path / "runs" / "tiny-llama-int4-rtn"
    assert not _servers_of(str(run_dir)) and not _servers_of("compress/assets/tiny-llama"), "a vLLM server outlived the run"
    speed = json.loads((Path(out["run_dir"]) / "reports" / "speed.json").read_text())
    base, cand = speed["baseline"], speed["candidate"]
    for side in (base, cand):
        assert side["runtime"]["engine"] == "vllm" and side["runtime"]["version"] == "0.32.0"
        assert "--no-enable-prefix-caching" in side["runtime"]["command"]
        assert side["peak_memory_bytes"] > 0 and side["memory_kind"].startswith("rss")
        # Every round measured every level; every request streamed exactly the tokens asked for.
        assert sorted((r["round"], r["level"]) for r in side["runs"]) == [(0, 1), (0, 4), (1, 1), (1, 4)]
        assert all(q["output_tokens"] == 12 and len(q["token_times_s"]) == 12 for r in side["runs"]
                   for q in r["requests"])
        assert all(len(r["requests"]) == 4 for r in side["runs"])
    # The int4 artifact ran on vLLM's low-bit kernel; the base did not.
    assert "CPUWNA16LinearKernel" in cand["runtime"]["kernels"]
    assert "CPUWNA16LinearKernel" not in base["runtime"]["kernels"]
    # Baseline and candidate took turns at going first.
    assert {(r["round"], r["position"]) for r in base["runs"]} == {(0, 0), (1, 1)}
    assert {(r["round"], r["position"]) for r in cand["runs"]} == {(0, 1), (1, 0)}
    # The servable check served the artifact a third time and compared greedy tokens with transformers':
    # in bfloat16 every prompt's first 8 tokens match, compared as token ids.
    servable = next(c for c in out["gate"]["checks"] if c["metric"] == "servable:vllm")
    assert servable["verdict"] == "PASS" and "CPUWNA16LinearKernel" in servable["note"], servable
    from compress.measure.engines.servable import ServableResult

    result = ServableResult.model_validate(
        json.loads((Path(out["run_dir"]) / "reports" / "servable.json").read_text())["result"])
    assert result.ok and result.error is None and result.engine_version == "0.32.0"
    assert result.compared == "token_ids" and result.dtype == "bfloat16"
    assert result.kernels == {"CPUWNA16LinearKernel": ["CompressedTensorsWNA16"]}
    assert [len(s) for s in result.served_token_ids] == [8] * 6
    assert result.agreement == sum(m == 8 for m in result.matching_prefix) / 6 == 1.0
    # The gate read its ratio from those rounds, with an interval.
    check = next(c for c in out["gate"]["checks"] if c["metric"] == "throughput_speedup")
    assert check["interval"]["method"] == "paired bootstrap over 2 interleaved rounds"
    assert check["interval"]["lower"] <= check["measured"] <= check["interval"]["upper"]
