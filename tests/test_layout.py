"""The package's shape, read from its imports (every `import`, lazy ones inside functions too): no module of
compress imports itself back through others."""
import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "compress"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the compress modules it imports (``from compress import x`` counts as ``compress.x`` when x is
    a module; the package ``compress`` itself is left out: its __init__ is the shared entry)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {m for m in found if m in modules and m not in (name, "compress")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "compress.core.cache" in graph["compress.core.weights"]  # a top-level import
    assert any("compress.measure.engines.vllm" in deps for deps in graph.values())


def test_no_import_cycle_inside_compress():
    assert cycles(import_graph()) == []


# The flow, in order: a stage imports only the core and the stages before it. Modules at the top of the
# package (the pipeline, search, the CLI) are the top floor and may import any stage.
STAGES = ["core", "build", "measure", "decide", "ship"]


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


def rule_breaks(graph: dict[str, set[str]]) -> list[str]:
    breaks = []
    for module, deps in sorted(graph.items()):
        stage = stage_of(module)
        if stage is None:
            continue
        allowed = set(STAGES[: STAGES.index(stage) + 1])
        for dep in sorted(deps):
            if stage_of(dep) not in allowed:
                breaks.append(f"{module} imports {dep}")
    return breaks


def test_the_rule_finder_finds_a_break():
    assert rule_breaks({"compress.core.a": {"compress.build.b"}, "compress.build.b": {"compress.core.a"},
                        "compress.pipeline": {"compress.ship.c"}, "compress.measure.d": {"compress.cli"}}) \
        == ["compress.core.a imports compress.build.b", "compress.measure.d imports compress.cli"]


def test_a_stage_imports_only_the_core_and_the_stages_before_it():
    assert rule_breaks(import_graph()) == []


def test_the_top_of_the_package_is_small_and_no_module_is_long():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 14, top
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} \
        == {*STAGES, "cli"}
    long = {p.relative_to(ROOT).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}, f"modules over 500 lines (split them along their seams): {long}"


def test_the_architecture_page_names_every_package():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for package in [*STAGES, "cli"]:
        assert f"compress/{package}/" in text, package
