"""The measured figures of README.md and docs/*.md come from results files: a block edited by hand, or a
results file measured again without `python scripts/figures.py`, fails here."""
import importlib.util
import re

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("figures", ROOT / "scripts" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)

DOCUMENTS = figures.documents()


def test_the_documents_cover_the_readme_and_the_guide():
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/results.md", "docs/01-getting-started.md"} <= names, names


def test_the_results_page_holds_the_measurements():
    text = (ROOT / "docs" / "results.md").read_text()
    assert {"speed-table", "mixed-precision-table", "cold-start", "quality-tables", "sensitivity-table",
            "scaling-table", "toolkit-cost-table", "distill-table", "eval-tasks-tables", "routing-tables",
            "aa-check"} <= set(figures.blocks_in(text))
    assert "demo-transcript" in figures.blocks_in((ROOT / "README.md").read_text())


def test_every_block_is_known_and_used():
    used = {name for doc in DOCUMENTS for name in figures.blocks_in(doc.read_text())}
    assert used == set(figures.BLOCKS), f"unused: {set(figures.BLOCKS) - used}"


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_generated_block_is_what_its_results_file_gives(doc):
    _, stale = figures.render(doc.read_text())
    assert not stale, f"stale figure blocks in {doc.name}: {stale}: run `python scripts/figures.py`"


@pytest.mark.parametrize("doc", [d for d in DOCUMENTS if figures.blocks_in(d.read_text())],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_figure_edited_by_hand_is_caught(doc):
    text = doc.read_text()
    for name in figures.blocks_in(text):
        block = re.search(rf"<!-- figure: {name} .*?<!-- /figure -->", text, re.S)
        digit = re.search(r"\d", block.group(0)[block.group(0).index("-->") + 3:])
        at = block.start() + block.group(0).index("-->") + 3 + digit.start()
        edited = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]
        assert figures.render(edited)[1] == [name], name


def test_the_figures_do_not_depend_on_where_the_checkout_lies(tmp_path):
    """CI clones into another folder: the same results files give the same documents there."""
    import shutil
    import subprocess
    import sys

    elsewhere = tmp_path / "somewhere" / "else"
    for part in ("scripts", "docs"):
        shutil.copytree(ROOT / part, elsewhere / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", elsewhere / "README.md")
    proc = subprocess.run([sys.executable, str(elsewhere / "scripts" / "figures.py"), "--check"],
                          capture_output=True, text=True, cwd=elsewhere)
    assert proc.returncode == 0, proc.stdout + proc.stderr
