"""`compress bench --endpoint URL` against a running OpenAI-compatible server.

The server here is a small stand-in written for the test (standard library only): it streams
one token per chunk with running usage statistics, as vLLM does, after a fixed prefill sleep
and a fixed sleep per token, and serves requests in parallel. So the client's timings must
follow known costs, and concurrency must multiply throughput.
"""
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import run_cli

PREFILL, DECODE = 0.060, 0.020


class FakeOpenAI(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path != "/v1/models":
            self.send_error(404)
            return
        body = json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if request.get("model") != "fake-model":
            self.send_error(404, "unknown model")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        prompt = len(request["prompt"])
        time.sleep(PREFILL)
        for i in range(request["max_tokens"]):
            if i:
                time.sleep(DECODE)
            chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}],
                     "usage": {"prompt_tokens": prompt, "completion_tokens": i + 1}}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        usage = {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": request["max_tokens"]}}
        self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bench_an_endpoint_follows_its_known_costs(endpoint, runs_dir):
    p = run_cli("bench", "builtin:tiny-llama", "--endpoint", endpoint, "--concurrency", "1,4", "--rounds", "2",
                "--repeats", "4", "--prompt-tokens", "16", "--output-tokens", "6", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout)
    m = report["measured"]
    assert m["runtime"]["engine"] == "endpoint" and m["runtime"]["url"] == endpoint
    assert report["settings"]["endpoint"] == endpoint
    one, four = m["batches"]
    for b in (one, four):
        # Sleeps are floors on the server; a chunk read late shortens the next gap, so the
        # inter-token floor holds for the median, not for every gap.
        assert b["ttft"]["min"] >= PREFILL and b["itl"]["p50"] >= DECODE * 0.9
        assert b["e2e"]["min"] >= PREFILL + 5 * DECODE
    # Four requests in flight on a server that runs them in parallel: about four times the rate.
    assert 2.5 < four["output_tokens_per_s"] / one["output_tokens_per_s"] < 4.5
    assert all(len(q["token_times_s"]) == 6 and q["prompt_tokens"] == 16 for r in m["runs"] for q in r["requests"])
    # An endpoint's figures are never cached: another moment, another measurement.
    again = run_cli("bench", "builtin:tiny-llama", "--endpoint", endpoint, "--concurrency", "1", "--rounds", "2",
                    "--repeats", "2", "--prompt-tokens", "16", "--output-tokens", "6")
    assert again.returncode == 0 and "measured in" in again.stdout


def test_a_bad_endpoint_is_one_line_and_exit_4(runs_dir):
    p = run_cli("bench", "builtin:tiny-llama", "--endpoint", "http://127.0.0.1:9", "--rounds", "2")
    assert p.returncode == 4 and "no model listed at http://127.0.0.1:9/v1/models" in p.stderr, p.stderr
    q = run_cli("bench", "builtin:tiny-llama", "--endpoint", "localhost:8000")
    assert q.returncode == 2 and "is not an http(s) URL" in q.stderr


class CutShort(FakeOpenAI):
    """Streams two tokens of whatever length is asked, without usage counts, then ends the stream (as
    llama-cpp-python's server does to a request when another one arrives, with interrupt_requests on)."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for text, finish in (("x", None), ("y", None), ("", "stop")):
            chunk = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def test_a_stream_cut_short_is_an_error_not_a_fast_request(runs_dir):
    server = ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = run_cli("bench", "builtin:tiny-llama", "--endpoint", f"http://127.0.0.1:{server.server_address[1]}",
                    "--rounds", "2", "--repeats", "1", "--output-tokens", "6")
    finally:
        server.shutdown()
    assert p.returncode == 4, p.stderr
    assert "the server ended a request after 2 of its 6 tokens (finish reason: stop)" in p.stderr, p.stderr


class DropsOne(FakeOpenAI):
    """Streams slowly, but closes the connection of the request whose prompt starts with 7 after one token."""

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(request["max_tokens"]):
            chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}],
                     "usage": {"prompt_tokens": len(request["prompt"]), "completion_tokens": i + 1}}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            if request["prompt"][0] == 7:
                self.connection.shutdown(socket.SHUT_RDWR)  # gone mid-answer, as a crashed server
                return
            time.sleep(0.05)
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.mark.parametrize("open_loop", [False, True])
def test_a_dropped_connection_ends_the_load_with_one_error_and_no_stray_request(open_loop, caplog):
    """The first failure ends the load as an EngineError naming the cause; the requests still in flight are
    cancelled and awaited, so none fails again while the client closes (asyncio's 'unhandled exception')."""
    from compress.core.errors import EngineError
    from compress.measure.engines.client import run_load, run_open_load

    server = ThreadingHTTPServer(("127.0.0.1", 0), DropsOne)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, prompts = f"http://127.0.0.1:{server.server_address[1]}", [[1, 2], [3, 4], [7, 8], [5, 6]]
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncio"), pytest.raises(EngineError) as err:
            if open_loop:
                run_open_load(url, "fake-model", prompts, 20, due=[0.0, 0.0, 0.05, 0.05])
            else:
                run_load(url, "fake-model", prompts, 20, concurrency=4)
    finally:
        server.shutdown()
    assert f"the server at {url} failed to answer" in str(err.value) or "ended a request" in str(err.value), err.value
    assert not [r for r in caplog.records if "unhandled exception" in r.getMessage()], caplog.text
