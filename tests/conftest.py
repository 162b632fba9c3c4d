import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network: the embedded model and the bundled data are all they use.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
BUILTIN = ROOT / "compress" / "assets" / "tiny-llama"


@pytest.fixture(autouse=True)
def _no_environment_left_by_imports():
    """A test that imports GPTQModel in this process finds HF_HOME and more set by that import (compress keeps them
    from its children: compress.core.procs.SET_BY_IMPORTS). They are put back after the test: the commands of the
    tests that follow then still fork from the preloaded server (tests/zygote.py) instead of starting afresh."""
    from compress.core.procs import SET_BY_IMPORTS

    before = {key: os.environ.get(key) for key in SET_BY_IMPORTS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An isolated runs directory and report cache for one test."""
    d = tmp_path / "runs"
    monkeypatch.setenv("COMPRESS_RUNS_DIR", str(d))
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    return d


# The settings of the int4-rtn recipe's gated run that several modules make (tests/test_gate_flow.py,
# tests/test_provenance.py): with one report cache between them, the second measures nothing again.
FAST_RUN = ["--set", "bench.repeats=2", "--set", "bench.batch_sizes=[1]", "--set", "bench.output_tokens=8",
            "--set", "bench.warmup=1"]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """A report cache shared by the modules that gate the same artifact with the same settings (FAST_RUN)."""
    return tmp_path_factory.mktemp("shared-cache")


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, fresh: bool = False):
    """Run `compress ARGS` in a process of its own; return the CompletedProcess.

    The process is forked from a server that has already imported torch, transformers and lm-eval
    (tests/zygote.py); with ``fresh=True``, or an environment that a fork cannot honour, it is a new
    `python -m compress` interpreter."""
    import subprocess

    import zygote

    zygote.start()  # first: it sets what compress sets before its imports
    full_env = dict(os.environ, **(env or {}))
    if fresh:
        return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True,
                              env=full_env, cwd=cwd or ROOT, timeout=1800)
    return zygote.run(list(args), env=full_env, cwd=cwd or ROOT, timeout=1800)


# ---------------------------------------------------------------------------------------------------------------
# Durations: with $COMPRESS_TEST_DURATIONS set (`make test` sets it to scripts/results/test_durations.json), the
# session writes how long each test's setup, call and teardown took, so that the suite's budget is read from a
# measured file (tests/test_suite_budget.py) and never from a timed assert.
_durations: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    entry = _durations.setdefault(report.nodeid, {"outcome": "passed"})
    entry[report.when] = round(report.duration, 2)
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped and report.when != "teardown":
        entry["outcome"] = "skipped"


def pytest_sessionstart(session):
    import time

    session.config._compress_started = time.time()


def _commands() -> dict:
    """How the session's `compress` commands ran: forked from the preloaded server, or in a fresh interpreter."""
    import zygote

    return dict(zygote.COMMANDS)


def pytest_sessionfinish(session, exitstatus):
    import json
    import time

    path = os.environ.get("COMPRESS_TEST_DURATIONS")
    if not path or not _durations or hasattr(session.config, "workerinput"):
        return
    markers = {item.nodeid: sorted({m.name for m in item.iter_markers()} - {"parametrize", "skipif", "usefixtures"})
               for item in session.items}
    tests = {nodeid: {**entry, "markers": markers.get(nodeid, [])} for nodeid, entry in sorted(_durations.items())}
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "markexpr": session.config.option.markexpr or "",
        "args": [str(a) for a in session.config.args],
        "cpus": os.cpu_count(),
        "exit": int(exitstatus),
        "wall_s": round(time.time() - session.config._compress_started, 1),
        "commands": _commands(),
        "tests": tests,
    }
    Path(path).write_text(json.dumps(record, indent=1) + "\n")
