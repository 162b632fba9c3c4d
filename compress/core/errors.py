"""Typed errors for users. Only `compress.cli` turns them into a message and an exit code.

Exit codes are a CI contract (see docs/04-evaluation-and-gate.md, "Exit codes"):

    0 pass · 1 gate failed · 2 bad usage, invalid recipe or bad input · 3 inconclusive ·
    4 runtime failure (including the OS refusing a write: read-only, permissions, disk full)

Ctrl-C exits 130.
"""
from __future__ import annotations

EXIT_PASS = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_RUNTIME = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class CompressError(Exception):
    """Base class of every error meant for a user.

    Args:
        message: what is wrong, in one line.
        hint: what to do about it (printed after the message).
    """

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(CompressError):
    """A flag, argument or file given on the command line is wrong."""

    exit_code = EXIT_USAGE


class RecipeError(UsageError):
    """A recipe does not validate. Carries every problem found, each with its path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"{source}: {len(problems)} {noun}: " + "; ".join(problems),
            hint="fix the recipe and run `compress recipes validate` again",
        )


class InputError(UsageError):
    """A file or directory handed in (a model, a data file, a path) is missing, malformed or
    refused. Bad input, like bad usage, exits 2: the fix is on the user's side."""


class ModelLoadError(CompressError):
    """A model or tokenizer cannot be found or loaded."""


class ModelInputError(InputError, ModelLoadError):
    """A model directory that is missing, malformed or refused before anything loads it
    (no config.json, corrupt or truncated safetensors, NaN weights, no tokenizer, remote code
    not allowed, pickled weights not allowed, a link out of the directory): exit 2.

    It is still a ``ModelLoadError``, so code that catches those keeps working; a well-formed
    directory that transformers then fails to load stays a plain ``ModelLoadError`` (exit 4).
    """


class BackendMissingError(CompressError):
    """An optional back end (llm-compressor, bitsandbytes, GPTQModel, ...) is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed",
            hint=f"pip install 'compress[{extra}]'",
        )
        self.package = package
        self.extra = extra


class QuantizationError(CompressError):
    """A quantization setting does not fit the model (e.g. a group size that does not divide a width)."""

    exit_code = EXIT_USAGE


class IntegrityError(CompressError):
    """Files on disk do not match the hashes that were recorded for them."""


class UnsafeName(IntegrityError):
    """A name read from a stored file (a report's, a manifest's) that would reach outside its folder:
    refused, like an export without a PASS."""

    exit_code = EXIT_GATE_FAILED


class ExportRefused(CompressError):
    """An export was asked for something without a PASS for exactly these bytes."""

    exit_code = EXIT_GATE_FAILED


class EngineError(CompressError):
    """A serving engine (vLLM) is missing, does not start, or fails while it is measured."""

    exit_code = EXIT_RUNTIME
