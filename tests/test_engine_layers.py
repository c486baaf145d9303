"""The engine's layers are one-way: no import cycle among mlwidgets modules outside ui/,
counting imports inside functions too (only `if TYPE_CHECKING:` blocks are skipped)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlwidgets"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        # The package's __init__ is the public API over every layer; ui/ is above the engine.
        if name in ("mlwidgets", "mlwidgets.__main__") or name.startswith("mlwidgets.ui"):
            continue
        found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def resolve(base: str, names: list[str]) -> None:
        for n in names:
            if f"{base}.{n}" in known:  # `from . import features`
                targets.add(f"{base}.{n}")
            elif base in known:
                targets.add(base)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.startswith("mlwidgets"):
                resolve(base, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name in known)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    targets.discard(name)
    return targets


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            found = walk(start)
            if found:
                return found
    return None


def engine_graph() -> dict[str, set[str]]:
    modules = engine_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def test_the_engine_has_no_import_cycle():
    cycle = find_cycle(engine_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    graph = engine_graph()
    assert "mlwidgets.trainer" in graph["mlwidgets.job"]  # imported inside Job.__init__
    assert "mlwidgets.session" not in graph["mlwidgets.follow"]  # only under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_never_import_the_session_or_the_job():
    graph = engine_graph()
    low = ("record", "checkpoints", "data", "loaders", "models", "events", "parameters",
           "files", "images", "features", "callbacks", "resume")
    for name in low:
        above = graph[f"mlwidgets.{name}"] & {"mlwidgets.session", "mlwidgets.job",
                                              "mlwidgets.trainer"}
        assert not above, f"mlwidgets.{name} imports {above}"
