"""What a vLLM server's log says: the engine version, the linear kernels it chose for each layer type, the
phase a start is in (loading, compiling, warming up), and the one line that best says why it failed.
"""
from __future__ import annotations

import re

# What a starting server is doing, from its log: the last line that names a phase names it (within a
# line the later pattern wins: "Warming up model for the compilation..." is compiling).
_PHASES = [
    (re.compile(r"Loading (weights|model)|Starting to load model|safetensors", re.I), "loading the weights"),
    (re.compile(r"KV cache|num_gpu_blocks|warm(ing)? ?up|Capturing", re.I), "warming up the engine"),
    (re.compile(r"Warming up model for the compilation|Compiling a graph|Dynamo bytecode transform|"
                r"compile range|torch\.compile takes", re.I),
     "compiling the model for vLLM (first run only; later starts reuse the cache)"),
    (re.compile(r"Starting vLLM API server|Application startup|Uvicorn running", re.I), "starting the API server"),
]

# "... Using CPUWNA16LinearKernel for CompressedTensorsWNA16" and similar lines; the kernel
# class names all end in ``LinearKernel``.
_KERNEL = re.compile(r"\b([A-Za-z0-9_]+LinearKernel)\b(?:\s+for\s+([A-Z][A-Za-z0-9_]+))?")
# "Initializing a V1 LLM engine (v0.32.0) with config: ..." and the banner's "version 0.32.0".
_VERSION = re.compile(r"LLM engine \(v([0-9][^\s)]*)\)|\bversion:?\s+v?([0-9]+\.[0-9]+[^\s,]*)")
_LOG_PREFIX = re.compile(
    r"^(?:\([^)]*\)\s+)?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\S+\s+\S+\s+\[[^\]]*\]\s+")
_KILLED = re.compile(r"Worker proc (\S+) died unexpectedly \(exit code: (-?\d+)\)")
_TRIVIAL = re.compile(r"^(Traceback|\s*File \"|\s*\^+\s*$|\s*~+\s*$|During handling|The above exception)")


def parse_log(text: str) -> dict:
    """The engine version and the linear kernels vLLM chose, from its log.

    Returns:
        ``{"version": str | None, "kernels": {kernel: [scheme, ...]}}``: each kernel class with
        the quantization schemes (layer types) it was chosen for, in order of first appearance.
    """
    version = None
    kernels: dict[str, list[str]] = {}
    for line in text.splitlines():
        if version is None and (m := _VERSION.search(line)):
            version = m.group(1) or m.group(2)
        for m in _KERNEL.finditer(line):
            schemes = kernels.setdefault(m.group(1), [])
            if m.group(2) and m.group(2) not in schemes:
                schemes.append(m.group(2))
    return {"version": version, "kernels": kernels}


def last_meaningful_line(text: str, limit: int = 300) -> str:
    """The line of a server log that best says why it failed, without vLLM's
    ``(Worker pid=1) ERROR 05-12 10:00:00 [file.py:12]`` prefix: the last exception line
    (``NotImplementedError: ...``) that is not a wrapper pointing "above" at the root cause,
    else the last ERROR line, else the last non-empty line."""
    lines = [(ln, _LOG_PREFIX.sub("", ln).strip()) for ln in text.splitlines()]
    lines = [(raw, msg) for raw, msg in lines if msg and not _TRIVIAL.match(msg)]
    if not lines:
        return "(the server wrote nothing to its log)"
    # a worker that exited 0 left on its own after its error (the error says why); a nonzero code ended it
    killed = [m for _, msg in lines if (m := _KILLED.search(msg)) and int(m.group(2)) != 0]
    if killed:  # the root cause is a worker the system ended; every later line is the engine shutting down
        proc, code = killed[-1].group(1), int(killed[-1].group(2))
        why = " (SIGKILL: most often the system ran out of memory)" if code == -9 else ""
        return f"vLLM's worker {proc} was killed, exit code {code}{why}"
    exceptions = [msg for _, msg in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", msg)]
    # Wrappers that point elsewhere: "See root cause above", vLLM 0.32's "See stack trace for root cause".
    causes = [msg for msg in exceptions if not re.search(r"(root cause|stack trace) above|for root cause", msg)]
    errors = [msg for raw, msg in lines if re.search(r"\b(ERROR|CRITICAL)\b", raw) or "Killed" in msg]
    line = (causes or exceptions or errors or [msg for _, msg in lines])[-1]
    if re.search(r"validation errors? for \w+$", line):
        # pydantic puts the reason on the line after its headline: vLLM refuses a bitsandbytes
        # artifact with "ValidationError: 1 validation error for ModelConfig", then
        # "Value error, Unknown quantization method: bitsandbytes. ...".
        raw = text.splitlines()
        at = max(i for i, ln in enumerate(raw) if ln.rstrip().endswith(line))
        detail = next((ln.strip() for ln in raw[at + 1:] if ln.strip()), "").removeprefix("Value error, ")
        line = re.sub(r"^[\w.]*\.(\w+Error)", r"\1", line)  # pydantic_core._pydantic_core.ValidationError
        line = f"{line}: {detail}" if detail else line
    line = re.sub(r"\s*Reasons:\s*$", "", line)  # vLLM's kernel refusal lists no reasons on a CPU build
    return line if len(line) <= limit else line[: limit - 3] + "..."


# The checkpoint format (a config's ``quantization_config.quant_method``) each scheme's artifact carries:
def start_phase(log: str) -> str:
    """What a starting server is doing, from its log: the phase of the last line that names one."""
    phase = "starting"
    for line in log.splitlines()[-200:]:
        for pattern, name in _PHASES:
            if pattern.search(line):
                phase = name
    return phase
