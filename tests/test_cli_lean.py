"""`compress --help` and `compress recipes validate` must not import heavy libraries."""
import subprocess
import sys

from conftest import ROOT

HEAVY = ["torch", "transformers", "lm_eval", "llmcompressor", "datasets", "accelerate"]

PROBE = """
import sys
from compress.cli import main
code = main({args!r})
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def _probe(args):
    return subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_help_imports_nothing_heavy():
    p = _probe(["--help"])
    assert p.returncode == 0, p.stderr
    assert "HEAVY=\n" in p.stdout or p.stdout.rstrip().endswith("HEAVY="), p.stdout[-300:]
    assert "quantize" in p.stdout or "recipes" in p.stdout


def test_recipes_validate_imports_nothing_heavy():
    recipes = [str(p) for p in sorted((ROOT / "recipes").glob("*.yaml"))]
    p = _probe(["recipes", "validate", *recipes])
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.rstrip().endswith("HEAVY="), p.stdout[-300:]


def test_every_command_help_imports_nothing_heavy():
    from compress.cli import app
    import typer.main

    group = typer.main.get_command(app)
    for name in group.commands:
        p = _probe([name, "--help"])
        assert p.returncode == 0, (name, p.stderr)
        assert p.stdout.rstrip().endswith("HEAVY="), (name, p.stdout[-200:])


def test_help_shows_flags_as_flags_answers_h_and_the_version():
    """A flag takes no value, so its help line shows none (typer's "<bool>" made people type
    `--force true`); `-h` is `--help`; `--version` prints the package version."""
    import typer.main

    from compress import __version__
    from compress.cli import app

    group = typer.main.get_command(app)
    commands = [[name] for name in group.commands if name != "recipes"] + [["recipes", "validate"], ["recipes", "list"]]
    for args in [[], *commands]:
        p = _probe([*args, "-h"])
        assert p.returncode == 0, (args, p.stderr)
        assert "Usage: compress" in p.stdout and "<bool>" not in p.stdout and "list[Path]" not in p.stdout, args
    p = _probe(["--version"])
    assert p.returncode == 0 and p.stdout.splitlines()[0] == f"compress {__version__}"


def _leaf_commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_has_examples_in_one_layout_that_its_own_parser_accepts():
    """`Examples:`, then one example per paragraph, indented two spaces, naming the command, and
    each one parses with the command's own options (a renamed flag breaks its example here)."""
    import shlex

    import click
    import typer.main

    from compress.cli import app

    for path, cmd in _leaf_commands(typer.main.get_command(app)):
        epilog = cmd.epilog or ""
        assert epilog.startswith("Examples:\n\n"), path
        lines = [p for p in epilog.split("\n\n")[1:] if p.startswith("  ")]
        assert lines, path
        for line in lines:
            argv = shlex.split(line.split("  #")[0])
            if argv[:3] == ["accelerate", "launch", "-m"]:
                argv = argv[3:]
            assert argv[:1 + len(path)] == ["compress", *path], (path, line)
            try:
                cmd.make_context(" ".join(path), argv[1 + len(path):])
            except click.exceptions.Exit:
                pass
            except click.ClickException as e:
                raise AssertionError(f"{line}: {e.format_message()}") from None
