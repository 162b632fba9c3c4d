"""Production-shaped served benchmarks on a real vLLM server: a workload with a shared system prompt, Poisson
arrivals, SLO attainment per rate, a goodput search and the engine's own metrics (marked ``engine``)."""
from __future__ import annotations

import json

import pytest
import yaml

from compress.core.reports import BenchReport
from compress.core.recipe import BenchSpec
from compress.measure.openloop import meets, summarize_rate
from tests.conftest import run_cli
from tests.test_engine import needs_engine

BENCH = {"engine": "vllm", "engine_dtype": "bfloat16", "batch_sizes": [1], "repeats": 2, "rounds": 2, "warmup": 1,
         "output_tokens": 8, "price_per_hour": 2.0,
         "workload": {"prompt_tokens": {"uniform": [8, 40]}, "output_tokens": {"uniform": [4, 12]},
                      "shared_prefix_tokens": 64, "prefix_share": 0.75},
         "arrival": "poisson", "rates": [2.0], "requests_per_rate": 12,
         "slo": {"ttft_ms": 400, "e2e_ms": 2000},
         "goodput": {"attainment": 0.8, "start_rate": 4.0, "max_probes": 3, "rounds": 1}}


@needs_engine
def test_open_loop_bench_reports_attainment_goodput_and_engine_metrics(tmp_path):
    recipe = tmp_path / "serving.yaml"
    recipe.write_text(yaml.safe_dump({"name": "serving", "model": {"id": "builtin:tiny-llama"},
                                      "method": {"kind": "int4", "algorithm": "rtn"}, "bench": BENCH}))
    out = tmp_path / "bench.json"
    result = run_cli("bench", "builtin:tiny-llama", "--recipe", str(recipe), "-o", str(out), "--rerun")
    assert result.returncode == 0, result.stderr
    assert "Open loop (poisson arrivals" in result.stdout and "goodput at ≥80% of requests" in result.stdout
    report = BenchReport.load(out)
    settings = BenchSpec.model_validate(BENCH)
    m = report.measured
    # The workload is described by its lengths and a hash, never its content.
    w = report.workload
    assert w["source"] == "synthetic" and w["shared_prefix_tokens"] == 64 and len(w["sha256"]) == 64
    assert 8 + 64 <= w["prompt_tokens"]["max"] <= 40 + 64 and w["output_tokens"]["max"] <= 12
    # Every open-loop run sent its requests on the seeded schedule, each with its own length.
    assert m.rate_runs and all(q.scheduled_s is not None for r in m.rate_runs for q in r.requests)
    run = next(r for r in m.rate_runs if r.rate == 2.0)
    assert len(run.requests) == 12 and run.measured == list(range(1, 11))  # 10% warm-up and cool-down set aside
    assert {q.output_tokens for r in m.rate_runs for q in r.requests} <= set(range(4, 13))
    # Attainment is the share of measured requests within every bound, recomputed here from the raw requests.
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
    # vLLM's /metrics were scraped through every level: its queue and running gauges, and its prefix cache (off).
    metrics = [r.metrics for r in m.runs + m.rate_runs]
    assert all(x is not None and x.error is None and x.samples for x in metrics)
    assert max(s.running for x in metrics for s in x.samples) >= 1
    assert sum(x.requests_finished for x in metrics) >= len([q for r in m.rate_runs for q in r.requests])
    assert all(not x.prefix_cache_hits for x in metrics)  # compress serves with prefix caching off unless asked
    json.dumps(report.model_dump(mode="json"))


@needs_engine
def test_prefix_caching_is_a_candidate_whose_lever_reaches_the_server(tmp_path):
    """recipes/runtime/tiny-llama-prefix-caching.yaml: the base model with caching on against off; the engine's
    own counters show the shared system prompt served from the cache on the candidate's side only."""
    from compress.core.reports import SpeedReport

    result = run_cli("run", "recipes/runtime/tiny-llama-prefix-caching.yaml", "--no-export", "--json",
                     env={"COMPRESS_RUNS_DIR": str(tmp_path / "runs"), "COMPRESS_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode in (0, 1, 3), result.stderr
    out = json.loads(result.stdout)
    from pathlib import Path

    report = SpeedReport.load(Path(out["run_dir"]) / "reports" / "speed.json")
    base, cand = report.baseline, report.candidate
    assert "--enable-prefix-caching" in cand.runtime.command and "--no-enable-prefix-caching" in base.runtime.command
    assert report.settings["serve"] == {"baseline": {"enable_prefix_caching": False},
                                        "candidate": {"enable_prefix_caching": True}}
    assert base.model.content_hash == cand.model.content_hash  # the same weights: only the serving differs
    hits = [r.metrics.prefix_cache_hit_rate for r in cand.runs]
    assert all(h is not None and h > 0.5 for h in hits), hits  # 128 of about 160 prompt tokens, after the first
    assert all(not r.metrics.prefix_cache_hits for r in base.runs)
