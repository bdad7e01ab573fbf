"""The dependency rules of docs/architecture.md ("Layers"), checked on every import.

Every module of the four engine packages belongs to one layer; a module may import its own
layer and the ones below, never one above, and no two modules may import each other, even
through others (function-level imports included: a lazy import is still a dependency).
The engine never imports the CLI, and the status reads the controls, not the reverse.
A new module fails here until it is given a layer: that is the moment to decide where it
lives.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cdc", "replicator", "checkpoints", "verifier")

# Bottom to top. Globs over dotted module names; the first layer that matches wins.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "vocabulary",
        [
            "cdc",
            "cdc.errors",
            "cdc.config",
            "cdc.events",
            "cdc.exact_text",
            "cdc.sqlident",
            "cdc.sqlconn",
            "cdc.fsutil",
            "cdc.faults",
            "cdc.log_output",
            "cdc.own_objects",
            "cdc.inventory",
            "cdc.shapes",
            "cdc.status_file",
            "cdc.guard",
            "cdc.postgres*",
            "verifier.model",
        ],
    ),
    ("change log", ["cdc.changelog*"]),
    ("planning", ["cdc.planning*"]),
    (
        "state files",
        ["cdc.control", "cdc.control.*", "cdc.pool.stats", "cdc.pool.recorded", "checkpoints*"],
    ),
    (
        "capture",
        [
            "cdc.capture",
            "cdc.capture.triggers",
            "cdc.capture.changes",
            "cdc.capture.fence",
            "cdc.capture.hooks",
            "cdc.capture.harvester",
            "cdc.capture.schema_look",
            "cdc.capture.snapshot",
            "cdc.capture.trim",
        ],
    ),
    ("stage rules", ["cdc.stages*"]),
    (
        "apply and verify",
        [
            "replicator*",
            "verifier*",
            "cdc.history",
            "cdc.history.rows",
            "cdc.history.logged",
            "cdc.history.tail",
            "cdc.history.render",
        ],
    ),
    (
        "operations",
        [
            "cdc.capture.install",
            "cdc.history.rebuild",
            "cdc.cutover*",
            "cdc.daemon*",
            "cdc.pool*",
            "cdc.application*",
        ],
    ),
    ("demo", ["cdc.demo*"]),
    ("command line", ["cdc.cli*", "cdc.__main__"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in known:
                    deps.add(full)
                elif node.module in known:
                    deps.add(node.module)
    return deps


def _layer(module: str) -> int | None:
    for i, (_, globs) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, g) for g in globs):
            return i
    return None


GRAPH = {m: _imports(p, _modules()) - {m} for m, p in _modules().items()}


def test_every_module_has_a_layer() -> None:
    assert [m for m in GRAPH if _layer(m) is None] == []


def test_no_import_goes_up_a_layer() -> None:
    up = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, deps in sorted(GRAPH.items())
        for d in sorted(deps)
        if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m)
    ]
    assert up == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_engine_never_imports_the_command_line() -> None:
    cli = [m for m in GRAPH if _layer(m) == len(LAYERS) - 1]
    assert [
        (m, sorted(GRAPH[m] & set(cli))) for m in GRAPH if m not in cli and GRAPH[m] & set(cli)
    ] == []


def test_status_reads_controls_not_the_reverse() -> None:
    assert "cdc.control.controls" in GRAPH["cdc.daemon.status"]
    assert not [d for d in GRAPH["cdc.control.controls"] if d.startswith("cdc.daemon")]


def test_no_test_module_is_imported_by_another_module() -> None:
    """What tests share lives in a conftest.py (fixtures, data) or in tests/support/
    (libraries, bots), never in a test module another module imports: not with `import`,
    not relative, not from a string a subprocess runs (`python -c "from tests... import"`)."""
    modules = {}
    for root in ("tests", "bench"):
        for path in sorted((REPO / root).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    tests = {m for m in modules if m.rpartition(".")[2].startswith("test_")}
    import re

    in_text = re.compile(r"\b(?:from|import)\s+((?:tests|bench)\.[\w.]+)")
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                targets = in_text.findall(node.value)
            else:
                continue
            found += [(name, t) for t in targets if t in tests and t != name]
    assert sorted(set(found)) == []
