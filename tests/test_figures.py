"""The README's measured figures come from results files: a block edited by hand, or a results file
measured again without `python scripts/figures.py`, fails here."""
import importlib.util
import re

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("figures", ROOT / "scripts" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)


def test_every_generated_block_is_what_its_results_file_gives():
    text = (ROOT / "README.md").read_text()
    names = figures.blocks_in(text)
    assert {"speed-table", "mixed-precision-table", "demo-transcript", "cold-start"} <= set(names), names
    _, stale = figures.render(text)
    assert not stale, f"stale figure blocks {stale}: run `python scripts/figures.py`"


def test_a_figure_edited_by_hand_is_caught():
    text = (ROOT / "README.md").read_text()
    for name in figures.blocks_in(text):
        block = re.search(rf"<!-- figure: {name} .*?<!-- /figure -->", text, re.S)
        digit = re.search(r"\d", block.group(0)[block.group(0).index("-->") + 3:])
        at = block.start() + block.group(0).index("-->") + 3 + digit.start()
        edited = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]
        assert figures.render(edited)[1] == [name], name
