"""The package's import structure (read statically with ast, nothing imported): no import cycles, and the
request path never imports a side module; side modules attach through server/hooks.py instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (("server", "skewless.server"), ("native", "skewless.native"))
SIDE = ("shadow", "lineage", "fallback", "alerts", "audit", "registry", "telemetry")
PATH = ("frontend", "dataplane", "decode", "encode", "request", "hooks", "request_ids", "peers", "batching", "models",
        "features", "shm")
# The wiring (may import everything), and the transports of side modules' own RPCs (their own side module).
ALLOWED = {
    "frontend.app": SIDE,
    "frontend.cli": SIDE,
    "frontend.options": SIDE,  # the composition of every area's settings object (wiring too)
    "frontend.admin_servicer": ("registry",),
    "frontend.traffic_servicer": ("shadow",),
    "frontend.feedback_servicer": ("lineage",),
}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its text (TYPE_CHECKING and function bodies
    included: a cycle through them is still a cycle of the design)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def short(name: str) -> str:
    return name.removeprefix("skewless.server.")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(modules())


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_request_path_imports_no_side_module(graph):
    bad = {}
    for name, targets in graph.items():
        area = short(name).split(".")[0]
        if not name.startswith("skewless.server.") or area not in PATH:
            continue
        allowed = ALLOWED.get(short(name), ())
        side = sorted(short(t) for t in targets
                      if short(t).split(".")[0] in SIDE and short(t).split(".")[0] not in allowed)
        if side:
            bad[short(name)] = side
    assert bad == {}, "request-path modules import side modules (attach them through server/hooks.py)"


def test_the_checks_see_a_cycle_and_a_side_import():
    """The checks themselves: a planted cycle and a planted path -> side edge are found."""
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(planted) == [["a", "b", "c"]]
    graph = import_graph(modules())
    assert "skewless.server.hooks" in graph["skewless.server.dataplane"]
    assert any(short(t).startswith("shadow") for t in graph["skewless.server.frontend.traffic_servicer"])
