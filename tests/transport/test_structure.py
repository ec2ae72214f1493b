"""Structure of the transport package: an acyclic import graph and an exhaustive
event table."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import m2mproto.events as ev
import m2mproto.transport as transport
from m2mproto.transport._dispatch import HANDLERS

PACKAGE = Path(transport.__file__).parent


def _imports(path: Path) -> set[str]:
    """Modules of the transport package that *path* imports, at any level
    (including under ``if TYPE_CHECKING:`` and inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module and node.module.startswith("m2mproto.transport."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("m2mproto.transport."):
                    found.add(alias.name.split(".")[2])
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(PACKAGE / f"{name}.py") & modules - {name} for name in sorted(modules)}


def test_import_graph_is_acyclic() -> None:
    graph = import_graph()
    assert {"session", "_link", "_dispatch", "_pump", "server", "client"} <= graph.keys()
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"import cycle: {' -> '.join([*path, name])}"
        state[name] = 1
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        state[name] = 2
        order.append(name)

    for name in graph:
        visit(name, [])
    assert len(order) == len(graph)
    # the layering the architecture note describes
    assert graph["_pump"] <= {"_errors"} or not graph["_pump"]
    assert "session" not in graph["_dispatch"] | graph["_link"] | graph["_streams"]
    assert "server" not in graph["session"] | graph["client"] | graph["routing"]


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
    )
    assert _imports(tmp_path / "a.py") == {"b"}


def test_every_event_class_has_a_handler() -> None:
    events = {
        obj
        for _name, obj in inspect.getmembers(ev, inspect.isclass)
        if issubclass(obj, ev.Event) and obj is not ev.Event
    }
    assert len(events) >= 11
    assert events == set(HANDLERS), events ^ set(HANDLERS)
    assert all(callable(h) for h in HANDLERS.values())
