"""The README is the entry and docs/ the guide: the README stays short and starts with the commands the
project's tooling runs (`make demo` first, `make test` for CI), and every relative link in README.md and
docs/*.md points at a file that exists (and at a heading of it, for a #anchor)."""
import re
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slugs(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces as hyphens)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [m[1] for m in _LINK.finditer(text) if not re.match(r"[a-z]+:", m[1])]


def test_the_readme_is_an_entry():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    block = re.search(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", text, re.S | re.M)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"], commands
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for page in ["docs/README.md", "docs/results.md", "docs/01-getting-started.md"]:
        assert page in text, page


def test_the_guide_index_links_every_page_in_order():
    index = (ROOT / "docs" / "README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("[0-9][0-9]-*.md"))
    assert len(pages) >= 10
    positions = [index.find(f"({name})") for name in pages]
    assert -1 not in positions and positions == sorted(positions), dict(zip(pages, positions))
    assert "(results.md)" in index


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    missing = []
    for link in _links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            missing.append(link)
        elif anchor and target.suffix == ".md" and anchor not in _slugs(target):
            missing.append(link)
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files or headings {missing}"
