"""llama.cpp's own tools, as `make llamacpp` installs them into ``.venv-llamacpp``: the converter
(``share/llama.cpp/convert_hf_to_gguf.py`` with the ``gguf`` package of the same llama.cpp source), and the
``llama-imatrix`` and ``llama-quantize`` programs (``bin/``). The server (``llama_cpp.server``) lives in the same
environment; ``compress.measure.engines.llamacpp`` drives it.

The converter runs in the compression environment (it reads the checkpoint with torch), through
``python -m compress.build.methods._llamacpp convert``: that entry point lets a tokenizer whose pre-tokenizer is
exactly GPT-2's (byte-level with GPT-2's split pattern, which the converter recognizes only by hashing the
tokens of known hub models) be written as ``gpt-2``; any other unknown pre-tokenizer stays the converter's error.
``gpt2_fallback`` is that rule, for auto-round's bundled copy of the converter too (``_autoround_gguf``).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from compress.core.errors import CompressError

VENV_ENV = "COMPRESS_LLAMACPP_VENV"
DEFAULT_VENV = Path(".venv-llamacpp")
TIMEOUT_S = 3600.0  # a 70B conversion or imatrix on a CPU takes long; no wait is endless


def venv() -> Path:
    """The llama.cpp environment: ``$COMPRESS_LLAMACPP_VENV``, else ``.venv-llamacpp`` in the current directory."""
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).absolute()


def package_version(root: Path | None = None) -> str | None:
    """llama-cpp-python's version in the llama.cpp environment, read from its package metadata (never imported)."""
    for meta in sorted(Path(root or venv()).glob("lib/python*/site-packages/llama_cpp_python-*.dist-info/METADATA")):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def tool(name: str) -> Path:
    """A llama.cpp program or file of the llama.cpp environment.

    Raises:
        CompressError: the environment or the file is missing (`make llamacpp` installs it).
    """
    path = venv() / ("bin" if name.startswith("llama-") else "share/llama.cpp") / name
    if not path.exists():
        raise CompressError(f"llama.cpp's {name} is missing ({path} not found)",
                                hint=f"run `make llamacpp`, or set ${VENV_ENV} to its environment")
    return path


def run(command: list[str], *, what: str, log_path: Path, env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout: float = TIMEOUT_S) -> None:
    """Run one step of a GGUF build (a llama.cpp program, a converter) in a process group of its own, with its
    output to ``log_path``. The group is ended when this returns, raises or is interrupted; a failure or a step
    past ``timeout`` seconds is a CompressError (exit 4) carrying the last line of its output."""
    from compress.core import procs

    procs.install_handlers()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=procs.child_env(env or {}), start_new_session=True, cwd=cwd)
        try:
            with procs.owned(proc.pid, what):
                code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CompressError(f"{what} took more than {timeout:.0f} s", hint=f"its log: {log_path}") from None
        finally:
            procs.kill_group(proc.pid, grace=5.0)
    if code != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise CompressError(f"{what} failed (exit {code}): {last}", hint=f"its log: {log_path}")


def convert(model_dir: Path, out: Path, *, outtype: str, log_path: Path) -> None:
    """The checkpoint as one GGUF file of ``outtype`` (f32, f16, bf16, q8_0) with llama.cpp's converter."""
    home = tool("convert_hf_to_gguf.py").parent
    path = os.pathsep.join([str(home / "gguf-py"), str(home), *filter(None, [os.environ.get("PYTHONPATH")])])
    run([sys.executable, "-m", "compress.build.methods._llamacpp", "convert", str(home), str(model_dir),
         "--outfile", str(out), "--outtype", outtype], what="llama.cpp's converter", log_path=log_path,
        env={"PYTHONPATH": path})


def gpt2_pretokenizer(model_dir: Path) -> bool:
    """Whether the tokenizer splits text exactly as GPT-2 does: byte-level, GPT-2's pattern, nothing before."""
    try:
        tok = json.loads((model_dir / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return False
    pre = tok.get("pre_tokenizer") or {}
    return (tok.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False))


@contextlib.contextmanager
def gpt2_fallback(text_model: type, model_dir: Path) -> Iterator[None]:
    """While the block runs, a converter's ``TextModel`` names a pre-tokenizer it does not know ``gpt-2`` when the
    tokenizer in ``model_dir`` splits exactly as GPT-2 does; any other unknown one stays the converter's error.

    Args:
        text_model: the ``TextModel`` class of llama.cpp's ``conversion`` package (llama.cpp's converter, or the
            copy auto-round bundles for its GGUF export).
        model_dir: the checkpoint whose ``tokenizer.json`` is read.
    """
    own = vars(text_model).get("get_vocab_base_pre")
    known = text_model.get_vocab_base_pre

    def pretokenizer(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            if gpt2_pretokenizer(model_dir):
                return "gpt-2"
            raise

    text_model.get_vocab_base_pre = pretokenizer
    try:
        yield
    finally:
        if own is None:
            del text_model.get_vocab_base_pre
        else:
            text_model.get_vocab_base_pre = own


def _convert_main(argv: list[str]) -> None:
    home, model_dir = Path(argv[0]), Path(argv[1])
    sys.path[:0] = [str(home / "gguf-py"), str(home)]
    import convert_hf_to_gguf
    from conversion import base

    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), *argv[2:]]
    with gpt2_fallback(base.TextModel, model_dir):
        convert_hf_to_gguf.main()


if __name__ == "__main__":
    if sys.argv[1:2] != ["convert"]:
        sys.exit("usage: python -m compress.build.methods._llamacpp convert LLAMA_CPP_HOME MODEL_DIR [converter flags]")
    _convert_main(sys.argv[2:])
