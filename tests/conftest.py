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


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An isolated runs directory and report cache for one test."""
    d = tmp_path / "runs"
    monkeypatch.setenv("COMPRESS_RUNS_DIR", str(d))
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    return d


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    """Run `python -m compress ARGS` in a fresh process; return the CompletedProcess."""
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=1800)
