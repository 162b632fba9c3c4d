"""The console policy: results on stdout, compress's own progress on stderr, the back ends'
output in a log file (shown with -v), -q for results and errors only; and one naming scheme
for the options every command shares."""
import os
import sys
from pathlib import Path

import pytest

from compress.core import console
from compress.cli import main
from conftest import run_cli


def _noisy_eval(monkeypatch, exc: Exception):
    """`compress eval` whose back end prints at the Python and the C level (as torch and tqdm
    do), then fails with ``exc``."""
    import compress.measure.accuracy as accuracy

    def run_eval(*args, **kwargs):
        print("python-level noise", file=sys.stderr)
        print("stdout noise from a library")
        os.write(2, b"C-level noise\n")
        raise exc

    monkeypatch.setattr(accuracy, "run_eval", run_eval)


def test_a_failure_names_the_back_end_log_which_holds_what_they_printed(runs_dir, monkeypatch, capfd):
    _noisy_eval(monkeypatch, RuntimeError("the back end gave up"))
    code = main(["eval", "builtin:tiny-llama", "--limit", "5"])
    out, err = capfd.readouterr()
    assert code == 4, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("Error: RuntimeError: the back end gave up") and len(lines) == 2, err
    assert lines[1].startswith("  back-end log: "), err
    log = Path(lines[1][len("  back-end log: "):].split(" (or rerun")[0])
    text = log.read_text()
    assert "python-level noise" in text and "C-level noise" in text and "stdout noise from a library" in text
    assert "noise" not in out + err  # neither stream got what the back end printed


def test_verbose_shows_the_back_ends_output_live(runs_dir, monkeypatch, capfd):
    _noisy_eval(monkeypatch, RuntimeError("the back end gave up"))
    code = main(["eval", "builtin:tiny-llama", "--limit", "5", "-v"])
    out, err = capfd.readouterr()
    assert code == 4
    assert "python-level noise" in err and "C-level noise" in err and "stdout noise" in err
    assert "back-end log" not in err and out == ""  # stdout stays for results


def test_backend_log_variable_is_verbose_and_quiet_with_verbose_is_refused(monkeypatch, capfd):
    monkeypatch.setenv("COMPRESS_BACKEND_LOG", "1")
    console.set_verbosity(False, False)
    assert console.state.verbose and not console.state.quiet
    monkeypatch.delenv("COMPRESS_BACKEND_LOG")
    assert main(["doctor", "-q", "-v"]) == 2
    assert "-q and -v" in capfd.readouterr().err


def test_quiet_prints_results_only_and_the_log_goes_to_the_run(runs_dir, tmp_path, capfd):
    code = main(["quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "-q"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert err == "" and "int4-rtn" in out and "Wrote" in out
    # Without -q: one line for the stage; the back ends' output is in the run's logs/ folder.
    code = main(["quantize", "--model", "builtin:tiny-llama", "--scheme", "int4-rtn", "--force"])
    out, err = capfd.readouterr()
    assert code == 0
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()] and "[1/1] int4-rtn" in err
    logs = list(runs_dir.glob("*/*/logs/compress-quantize-*.log"))
    assert logs and "[compress " in logs[0].read_text()


def test_older_option_spellings_still_work():
    from compress.cli import _new_spellings

    assert _new_spellings(["export", "R", "--to", "D"]) == ["export", "R", "--output", "D"]
    assert _new_spellings(["run", "X", "--export-to=D", "--", "--out"]) == ["run", "X", "--output=D", "--", "--out"]
    assert _new_spellings(["quantize", "--out", "q", "--set", "a=--out"]) == ["quantize", "--output", "q", "--set",
                                                                                "a=--out"]


# What each command writes (-o/--output) and which read a recipe (--set).
WRITES = {"quantize", "distill", "eval", "bench", "compare", "report", "export", "run", "search", "keygen", "cascade",
          "plan"}
READS_RECIPE = {"quantize", "distill", "eval", "bench", "compare", "gate", "run", "search", "validate", "cascade"}


def test_one_naming_scheme_across_commands():
    import typer.main

    from compress.cli import app

    from test_cli_lean import _leaf_commands

    for path, cmd in _leaf_commands(typer.main.get_command(app)):
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        name = path[-1]
        assert {"--json", "-q", "--quiet", "-v", "--verbose"} <= opts, path
        assert ({"-o", "--output"} <= opts) == (name in WRITES), (path, opts)
        assert ("--set" in opts) == (name in READS_RECIPE), (path, opts)
        assert not opts & {"--out", "--to", "--export-to"}, path


@pytest.mark.parametrize("command,spec", [("eval", "EvalSpec"), ("bench", "BenchSpec")])
def test_every_setting_shows_its_default_in_help(command, spec):
    """Options left unset fall back to a recipe, then to the schema; --help says what that is."""
    import typer.main

    import compress.core.recipe
    from compress.cli import app

    fields = getattr(compress.core.recipe, spec).model_fields
    cmd = typer.main.get_command(app).commands[command]
    for p in cmd.params:
        if p.name in fields or p.name in ("dtype", "batch_sizes", "backend"):
            shown = p.is_flag or "default:" in (p.help or "") or (p.show_default and p.default is not None)
            assert shown, (command, p.name, p.help)


def test_spread_warning_names_the_widest_headline_figure(monkeypatch):
    from types import SimpleNamespace

    import compress.measure.compare
    from compress.ship import report

    def rows(width):
        iv = SimpleNamespace(n=4, estimate=1.0, lower=1.0 - width / 2, upper=1.0 + width / 2)
        tail = SimpleNamespace(n=4, estimate=1.0, lower=0.1, upper=5.0)
        return [{"figure": "end-to-end p50 (batch 4)", "interval": iv},
                {"figure": "TTFT p99 (batch 4)", "interval": tail}]  # tails are noisy by nature: not judged

    speed = SimpleNamespace(settings={"rounds": 4})
    monkeypatch.setattr(compress.measure.compare, "level_intervals", lambda r, confidence: None)
    monkeypatch.setattr(compress.measure.compare, "speed_rows", lambda r, iv: rows(0.1))
    assert report.spread_warning(speed) is None
    monkeypatch.setattr(compress.measure.compare, "speed_rows", lambda r, iv: rows(0.6))
    warning = report.spread_warning(speed)
    assert "end-to-end p50 (batch 4)" in warning and "60%" in warning and "4 rounds" in warning


def test_recipes_validate_counts_several_files_and_names_one(tmp_path):
    from conftest import RECIPES

    files = sorted(str(p) for p in RECIPES.glob("*.yaml"))
    p = run_cli("recipes", "validate", *files)
    assert p.returncode == 0 and p.stdout.strip() == f"✓ {len(files)} of {len(files)} recipes valid", p.stdout
    one = run_cli("recipes", "validate", files[0])
    assert one.returncode == 0 and one.stdout.startswith(f"✓ {files[0]} (")
