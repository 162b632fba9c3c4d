"""scripts/peer_bench.py's comparison, without a server: which figures differ by more than 10 %, and what the
diagnostics say about them."""
import importlib.util

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("peer_bench", ROOT / "scripts" / "peer_bench.py")
peer_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer_bench)


def figures(rps, ttft_ms, *, offered, server_ttft_ms, client_ttft_ms=None):
    return {"request_throughput": rps, "output_throughput": 16 * rps, "ttft_p50_ms": ttft_ms,
            "ttft_p99_ms": 3 * ttft_ms, "e2e_p50_ms": ttft_ms + 30.0,
            "diagnostics": {"offered_rate": offered, "throughput_over_offered": rps / offered,
                            "span_request_throughput": rps, "ttft_mean_ms": client_ttft_ms or ttft_ms,
                            "server_ttft_mean_ms": server_ttft_ms}}


def test_figures_within_ten_percent_are_not_flagged_and_beyond_are():
    vllm = figures(8.0, 40.0, offered=8.0, server_ttft_ms=30.0)
    ours = figures(8.0 * 1.09, 40.0 * 0.85, offered=8.0, server_ttft_ms=30.0)
    result = peer_bench.compare(vllm, ours)
    assert result["relative"]["request_throughput"] == pytest.approx(0.09)
    assert result["relative"]["ttft_p50_ms"] == pytest.approx(-0.15)
    assert result["flagged"] == ["ttft_p50_ms", "ttft_p99_ms"]
    assert peer_bench.explain(vllm, vllm, peer_bench.compare(vllm, vllm)["flagged"]) is None


def test_a_throughput_gap_is_traced_to_the_offered_rates():
    vllm = figures(8.0, 40.0, offered=8.0, server_ttft_ms=30.0)
    ours = figures(9.0, 40.0, offered=9.0, server_ttft_ms=30.0)
    flagged = peer_bench.compare(vllm, ours)["flagged"]
    assert flagged == ["request_throughput", "output_throughput"]
    line = peer_bench.explain(vllm, ours, flagged)
    assert "offered 8.00 (vLLM) vs 9.00 (compress)" in line and "1.00 and 1.00" in line


def test_a_ttft_gap_is_split_between_the_engine_and_what_lies_outside_it():
    vllm = figures(8.0, 40.0, offered=8.0, server_ttft_ms=30.0, client_ttft_ms=41.0)
    ours = figures(8.0, 50.0, offered=8.0, server_ttft_ms=29.0, client_ttft_ms=52.0)
    line = peer_bench.explain(vllm, ours, ["ttft_p50_ms"])
    assert "30.0 vs 29.0 ms (within 10 %)" in line and "outside the engine (HTTP and client) 11.0 vs 23.0 ms" in line
    assert "burst" not in line
    busier = figures(8.0, 50.0, offered=8.0, server_ttft_ms=40.0, client_ttft_ms=51.0)
    busier["diagnostics"]["burst_share"] = 0.4
    line = peer_bench.explain(vllm, busier, ["ttft_p50_ms"])
    assert "40.0 ms (differs)" in line and "in one burst 0% vs 40%" in line
