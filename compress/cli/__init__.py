"""The `compress` command line. Thin: parse, call a module, print, map errors to exit codes.

One module per command group, in the order of the flow: setup (recipes, doctor, keygen), build
(quantize, distill), measure (eval, bench, compare), decide (gate, report), ship (run, export,
verify); the options they share are in ``options``, the application and helpers in ``common``.

Heavy libraries (torch, transformers, lm_eval) are imported inside command bodies only, so
``compress --help`` and ``compress recipes validate`` stay fast (tests/test_cli_lean.py).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import traceback
from pathlib import Path

import typer
from rich.markup import escape

from compress.core import console, procs
from compress.cli import setup, build, measure, decide, ship# noqa: F401, I001  (they register the commands, in this order)
from compress.cli.common import app
from compress.cli.options import RENAMED
from compress.core.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, CompressError, RecipeError

__all__ = ["app", "main", "entrypoint"]

# ------------------------------------------------------------------------------ entry

# errno -> what the user can do about a refused write (beside writing somewhere else).
_WRITE_ERRNOS = {
    errno.EROFS: None,
    errno.EACCES: "make it writable for this user",
    errno.EPERM: "make it writable for this user",
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some disk space (quota)",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}
# Temporaries next to a final path (artifact.py): `.NAME.tmp-…`, `.NAME.old-…`, `.NAME.work`.
_TEMP_PART = re.compile(r"^\.(?P<name>.+?)\.(?:(?:tmp|old)-[\w-]+|work)$")


def _shown_path(path: str | os.PathLike) -> str:
    """The path a user asked for, not the temporary it was being built under:
    ``out/.q.tmp-123-ab12/model.safetensors`` -> ``out/q/model.safetensors``."""
    parts = Path(path).parts
    return str(Path(*[m["name"] if (m := _TEMP_PART.match(p)) else p for p in parts])) if parts else str(path)


def _path_in_traceback(tb) -> str | None:
    """The file a library was writing when it failed without naming it (safetensors' Rust I/O
    errors): the innermost frame's ``filename``/``save_directory`` local."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in ("filename", "file_path", "save_directory"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                return os.fspath(value)
    return None


def _os_error_line(err_no: int | None, strerror: str, path: str | None) -> tuple[str, int] | None:
    """One line for an error from the OS, or None when it is not one that names a file.

    A refused write (read-only file system, permissions, disk full, file too large) is a
    runtime failure (exit 4) whose fix is on this machine, not in the recipe.
    """
    if err_no is None:
        return None
    shown = _shown_path(path) if path else None
    if err_no in _WRITE_ERRNOS:
        if shown and err_no in (errno.EACCES, errno.EPERM) and os.path.exists(path) \
                and not os.access(path, os.R_OK):
            return f"cannot read {shown}: {strerror} (make it readable for this user)", EXIT_RUNTIME
        elsewhere = "choose another output path"
        if shown:
            from compress.core.env import runs_root

            target = Path(os.path.abspath(shown))
            cache = Path(os.path.abspath(os.environ.get("COMPRESS_CACHE_DIR") or runs_root() / ".cache"))
            if target.is_relative_to(cache):
                elsewhere = "set COMPRESS_CACHE_DIR to a writable directory"
            elif target.is_relative_to(Path(os.path.abspath(runs_root()))):
                elsewhere = "set COMPRESS_RUNS_DIR to a writable directory"
        action = _WRITE_ERRNOS[err_no]
        fix = f"{action}, or {elsewhere}" if action else elsewhere
        return f"cannot write {shown or 'a file'}: {strerror} ({fix})", EXIT_RUNTIME
    if shown:
        return f"{shown}: {strerror} (rerun with COMPRESS_DEBUG=1 for a traceback)", EXIT_RUNTIME
    return None


def _error(line: str) -> None:
    console.err.print(f"[red]Error:[/red] {escape(' '.join(line.split()))}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of raising.

    Every failure ends here as one line on stderr starting with ``Error:`` (a recipe with
    several problems adds one indented line per problem) and an exit code: 2 for bad usage,
    recipes and input, 4 for runtime failures, 130 for Ctrl-C. A traceback only with
    COMPRESS_DEBUG=1.
    """
    debug = os.environ.get("COMPRESS_DEBUG") == "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    console.state.log_path = None
    argv = _new_spellings(sys.argv[1:] if argv is None else list(argv))
    procs.remember_environment()  # what a back end's import changes there, children do not inherit
    procs.install_handlers()  # SIGTERM and SIGHUP stop every server and worker before the command ends
    with _ctrl_c() as interrupted:
        code = _main(argv, debug)
    if code not in (0, 1, 3, EXIT_INTERRUPTED) and console.state.log_path is not None:
        # What the back ends said before the failure, in one line that names the file.
        console.err.print(f"  back-end log: {escape(str(console.state.log_path))} (or rerun with -v)", soft_wrap=True)
    if interrupted() and code != EXIT_INTERRUPTED:
        # A library swallowed the KeyboardInterrupt (a bare `except:` somewhere) and the command
        # went on; the user still asked it to stop, and its result is not to be relied on.
        _say_interrupted()
        return EXIT_INTERRUPTED
    return code


def _new_spellings(argv: list[str]) -> list[str]:
    """Older option names (--out, --to, --export-to) as today's -o/--output."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        name, eq, value = arg.partition("=")
        out.append(RENAMED[name] + eq + value if name in RENAMED else arg)
    return out


def _say_interrupted() -> None:
    # On a line of its own: a progress bar (or the terminal's ^C echo) may hold the cursor mid-line.
    console.err.print("\nInterrupted.")


@contextlib.contextmanager
def _ctrl_c():
    """Ctrl-C raises KeyboardInterrupt, so that servers are stopped and temporaries removed on
    the way out; a second Ctrl-C, or one that a library swallowed, still ends with exit 130."""
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            _say_interrupted()
            procs.stop_all(grace=0)
            os._exit(EXIT_INTERRUPTED)
        procs.stop_all()  # servers and workers whichever thread started them (the main one may be waiting)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (an embedding program): leave its handler alone
        yield lambda: False
        return
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _main(argv: list[str] | None, debug: bool) -> int:
    try:
        # Without standalone mode, typer returns the code of a typer.Exit instead of raising it,
        # and a Ctrl-C inside a command comes back as 130 (typer turns it into Exit(130)).
        code = app(args=argv, standalone_mode=False, prog_name="compress")
        code = code if isinstance(code, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        code = EXIT_INTERRUPTED
    except typer.TyperException as e:
        # Usage errors from the command line parser (typer bundles its own click, so these are
        # not click.ClickException): no such option or command, a missing or invalid value.
        if debug:
            traceback.print_exc()
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path} --help" if ctx is not None else "compress --help"
        message = e.format_message().strip()
        if type(e).__name__ == "NoArgsIsHelpError" or not message:
            message = "missing command"  # the help has been printed on stdout
        _error(f"{message} (see '{where}')")
        return EXIT_USAGE
    except RecipeError as e:
        if debug:
            traceback.print_exc()
        if len(e.problems) == 1:
            _error(str(e))
        else:
            console.err.print(f"[red]Error:[/red] {escape(e.source)}: {len(e.problems)} problems "
                              f"({escape(e.hint or '')})", soft_wrap=True)
            for p in e.problems:
                console.err.print(f"    {p}", markup=False)
        return e.exit_code
    except CompressError as e:
        if debug:
            traceback.print_exc()
        _error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except MemoryError:
        if debug:
            traceback.print_exc()
        _error("out of memory (use a smaller batch size or model, or a larger machine)")
        return EXIT_RUNTIME
    except Exception as e:  # noqa: BLE001 - the last resort keeps the exit-code contract
        if debug:
            traceback.print_exc()
        line = None
        if isinstance(e, OSError):
            line = _os_error_line(e.errno, e.strerror or str(e), e.filename2 or e.filename)
        elif m := re.search(r"\((?:os error|errno) (\d+)\)", str(e), flags=re.IGNORECASE):
            # Rust and C++ back ends (safetensors, tokenizers) report OS errors as text.
            n = int(m[1])
            line = _os_error_line(n, os.strerror(n), _path_in_traceback(e.__traceback__))
        if line is not None:
            _error(line[0])
            return line[1]
        first = str(e).splitlines()[0] if str(e) else ""
        _error(f"{type(e).__name__}: {first} (unexpected; rerun with COMPRESS_DEBUG=1 for a traceback)")
        return EXIT_RUNTIME
    if code == EXIT_INTERRUPTED:
        _say_interrupted()
    return code


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()