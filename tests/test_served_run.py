"""The default suite's served run: one `compress run` on vLLM, shared by the tests below.

The recipe is the shipped int4 recipe served the way production serves it: a workload with a shared system
prompt, prefix caching on the candidate's side (``serve``) and off on the base's, closed-loop levels in
alternating rounds, Poisson arrivals at a fixed rate with SLO attainment, and a goodput search. Three vLLM
servers start from `.venv-engine` (the bf16 base, its int4 artifact, and the artifact again for the
`servable: vllm` check, whose greedy tokens must equal transformers'), and all three are stopped. About two
minutes on 2 CPU cores, once per session; without `.venv-engine` the tests are skipped (run `make engine`).
"""
from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import yaml

from compress.core.recipe import BenchSpec
from compress.core.reports import SpeedReport
from compress.measure.openloop import meets, summarize_rate
from tests.conftest import ROOT, run_cli
from tests.test_engine import ENGINE_PYTHON, needs_engine

RECIPE = ROOT / "recipes" / "tiny-llama-int4-rtn.yaml"
BENCH = {"engine": "vllm", "engine_dtype": "bfloat16", "batch_sizes": [1, 4], "repeats": 4, "rounds": 2,
         "warmup": 1, "price_per_hour": 2.0,
         "workload": {"prompt_tokens": {"uniform": [8, 40]}, "output_tokens": {"uniform": [4, 12]},
                      "shared_prefix_tokens": 128, "prefix_share": 1.0},
         "arrival": "poisson", "rates": [2.0], "requests_per_rate": 12,
         "slo": {"ttft_ms": 400, "e2e_ms": 2000},
         "goodput": {"attainment": 0.8, "start_rate": 4.0, "max_probes": 3, "rounds": 1}}
GATE = {"checks": [{"metric": "size_ratio", "max": 0.5}, {"metric": "throughput_speedup", "min": 0.05}],
        "servable": {"engine": "vllm", "prompts": 6, "tokens": 8, "min_agreement": 1.0}}


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


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The run's JSON output, its speed report and its folder."""
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"{ENGINE_PYTHON} missing: run `make engine`")
    root = tmp_path_factory.mktemp("served")
    doc = yaml.safe_load(RECIPE.read_text())
    doc.update(bench={**doc["bench"], **BENCH}, gate={**doc["gate"], **GATE},
               serve={"enable_prefix_caching": True}, baseline_serve={"enable_prefix_caching": False})
    recipe = root / "tiny-llama-int4-rtn.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    env = {"COMPRESS_RUNS_DIR": str(root / "runs"), "COMPRESS_CACHE_DIR": str(root / "cache"),
           "COMPRESS_ENGINE_VENV": str(ENGINE_PYTHON.parent.parent)}
    p = run_cli("run", str(recipe), "--no-export", "--json", env=env, cwd=root)
    assert p.returncode in (0, 3), p.stderr[-3000:]
    out = json.loads(p.stdout)
    run_dir = Path(out["run_dir"])
    return {"out": out, "run_dir": run_dir, "root": root,
            "speed": SpeedReport.load(run_dir / "reports" / "speed.json")}


@needs_engine
def test_run_measures_base_and_candidate_together_in_vllm_and_stops_both(served):
    out, root, speed = served["out"], served["root"], served["speed"]
    assert not _servers_of(str(root / "runs")) and not _servers_of("compress/assets/tiny-llama"), \
        "a vLLM server outlived the run"
    base, cand = speed.baseline, speed.candidate
    for side in (base, cand):
        assert side.runtime.engine == "vllm" and side.runtime.version == "0.32.0"
        assert side.peak_memory_bytes > 0 and side.memory_kind.startswith("rss")
        # Every round measured every level; every request streamed exactly the tokens it asked for.
        assert sorted((r.round, r.level) for r in side.runs) == [(0, 1), (0, 4), (1, 1), (1, 4)]
        assert all(len(r.requests) == 4 for r in side.runs)
        for q in (q for r in side.runs for q in r.requests):
            assert 4 <= q.output_tokens <= 12 and len(q.token_times_s) == q.output_tokens, q
            assert q.finish_reason == "length"
        assert len({q.output_tokens for r in side.runs for q in r.requests}) > 1  # the workload's lengths vary
    # The int4 artifact ran on vLLM's low-bit kernel; the base did not.
    assert "CPUWNA16LinearKernel" in cand.runtime.kernels and "CPUWNA16LinearKernel" not in base.runtime.kernels
    # Baseline and candidate took turns at going first.
    assert {(r.round, r.position) for r in base.runs} == {(0, 0), (1, 1)}
    assert {(r.round, r.position) for r in cand.runs} == {(0, 1), (1, 0)}
    # The gate read its ratio from those rounds, with an interval.
    check = next(c for c in out["gate"]["checks"] if c["metric"] == "throughput_speedup")
    assert check["interval"]["method"] == "paired bootstrap over 2 interleaved rounds"
    assert check["interval"]["lower"] <= check["measured"] <= check["interval"]["upper"]


@needs_engine
def test_the_servable_check_serves_the_artifact_and_matches_transformers_token_for_token(served):
    # The servable check served the artifact a third time and compared greedy tokens with transformers':
    # in bfloat16 every prompt's first 8 tokens match, compared as token ids.
    from compress.measure.engines.servable import ServableResult

    servable = next(c for c in served["out"]["gate"]["checks"] if c["metric"] == "servable:vllm")
    assert servable["verdict"] == "PASS" and "CPUWNA16LinearKernel" in servable["note"], servable
    result = ServableResult.model_validate(
        json.loads((served["run_dir"] / "reports" / "servable.json").read_text())["result"])
    assert result.ok and result.error is None and result.engine_version == "0.32.0"
    assert result.compared == "token_ids" and result.dtype == "bfloat16"
    assert result.kernels == {"CPUWNA16LinearKernel": ["CompressedTensorsWNA16"]}
    assert [len(s) for s in result.served_token_ids] == [8] * 6
    assert result.agreement == sum(m == 8 for m in result.matching_prefix) / 6 == 1.0


@needs_engine
def test_prefix_caching_is_a_serving_lever_that_reaches_the_candidates_server_only(served):
    """``serve`` / ``baseline_serve``: the engine's own counters show the shared system prompt served from the
    cache on the candidate's side only."""
    speed = served["speed"]
    base, cand = speed.baseline, speed.candidate
    assert "--enable-prefix-caching" in cand.runtime.command and "--no-enable-prefix-caching" in base.runtime.command
    assert speed.settings["serve"] == {"baseline": {"enable_prefix_caching": False},
                                       "candidate": {"enable_prefix_caching": True}}
    hits = [r.metrics.prefix_cache_hit_rate for r in cand.runs]
    assert all(h is not None and h > 0.5 for h in hits), hits  # 128 of about 150 prompt tokens, after the first
    assert all(not r.metrics.prefix_cache_hits for r in base.runs + base.rate_runs)


@needs_engine
def test_open_loop_levels_report_attainment_goodput_and_engine_metrics(served):
    speed, settings = served["speed"], BenchSpec.model_validate(BENCH)
    from compress.ship.report.serving import rates_markdown

    text = rates_markdown({"baseline": speed.baseline, "candidate": speed.candidate})
    assert text.count("goodput at ≥80% of requests within TTFT ≤ 400 ms, end-to-end ≤ 2000 ms") == 2, text
    # The workload is described by its lengths and a hash, never its content.
    w = speed.workload
    assert w["source"] == "synthetic" and w["shared_prefix_tokens"] == 128 and len(w["sha256"]) == 64
    assert 8 + 128 <= w["prompt_tokens"]["max"] <= 40 + 128 and w["output_tokens"]["max"] <= 12
    for m in (speed.baseline, speed.candidate):
        # Every open-loop run sent its requests on the seeded schedule, each with its own length.
        assert m.rate_runs and all(q.scheduled_s is not None for r in m.rate_runs for q in r.requests)
        run = next(r for r in m.rate_runs if r.rate == 2.0)
        assert len(run.requests) == 12 and run.measured == list(range(1, 11))  # 10% warm-up and cool-down aside
        # Attainment is the share of measured requests within every bound, recomputed from the raw requests.
        bounds = settings.slo.request_bounds()
        for level in m.rates:
            runs = [r for r in m.rate_runs if r.rate == level.rate]
            measured = [r.requests[i] for r in runs for i in r.measured]
            assert level.attainment.value == pytest.approx(sum(meets(q, bounds) for q in measured) / len(measured))
            assert level.attainment.lower <= level.attainment.value <= level.attainment.upper
            assert level.model_dump() == summarize_rate(runs, settings).model_dump()
            assert level.cost_per_mtok_usd == pytest.approx(2.0 / 3600 / level.output_tokens_per_s * 1e6)
        # Goodput: the highest rate decided pass among the probes, bracketed by the lowest rate above it that was not.
        g = m.goodput
        probes = {r.rate: r.verdict for r in m.rates if r.rate in g.probes}
        assert len(g.probes) <= 3 and set(g.probes) == set(probes)
        passed = [r for r, v in probes.items() if v == "pass"]
        assert g.rps == (max(passed) if passed else None)
        above = [r for r, v in probes.items() if v != "pass" and r > (g.rps or 0)]
        assert g.upper_rps == (min(above) if above else None)
        # vLLM's /metrics were scraped through every level: its queue and running gauges were read at
        # every scrape (their values are a sample: a 50 ms request between two scrapes leaves them at 0,
        # so the parser's figures are tested on copied bodies in test_engine_metrics), and its counters
        # saw every request each open-loop run sent.
        metrics = [r.metrics for r in m.runs + m.rate_runs]
        assert all(x is not None and x.error is None and x.samples for x in metrics)
        assert all(s.running is not None and s.waiting is not None for x in metrics for s in x.samples)
        assert all(r.metrics.requests_finished >= len(r.requests) for r in m.rate_runs)
