"""What depends on what inside each database, as one graph model drawn two ways.

The model is built once from the inventory; `render_dot` writes it for Graphviz and
`cdc.planning.graph_svg` draws it without any system package, so a fresh machine gets a
picture too and both drawings always show the same nodes and edges.

Edges point from the dependent to what it depends on: a child table to its foreign-key
parent, an external-content FTS table to its content table, a view to what it reads, a
trigger's table to the tables its body writes. A parent that does not exist is drawn
dashed, as "(missing)", because that is exactly what a mapping must not hide.
"""

from __future__ import annotations

import msgspec

from cdc.planning.inventory_format import DatabaseReport, Inventory


class Node(msgspec.Struct, frozen=True):
    id: str
    label: str  # may hold newlines
    shape: str = "box"  # box, rounded (virtual table), note (view), dashed (missing), plain
    tooltip: str = ""


class Edge(msgspec.Struct, frozen=True):
    src: str
    dst: str
    label: str = ""
    style: str = "solid"  # solid, dashed, dotted
    color: str = ""


class Cluster(msgspec.Struct, frozen=True):
    label: str  # the database's path relative to the inventory root
    nodes: list[Node]
    edges: list[Edge]


def dependency_graph(inv: Inventory) -> list[Cluster]:
    return [_cluster(n, db) for n, db in enumerate(inv.databases, start=1)]


def _cluster(n: int, db: DatabaseReport) -> Cluster:
    ids: dict[str, str] = {}  # lowercased name -> node id
    nodes: list[Node] = []
    for i, t in enumerate(db.mappable(), start=1):
        ids[t.name.lower()] = f"d{n}_t{i}"
        label = t.name + ("" if t.rows is None else f"\n{t.rows} rows")
        if t.kind == "virtual":
            label += f"\n{t.module or 'virtual'}"
        shape = "rounded" if t.kind == "virtual" else "box"
        nodes.append(Node(ids[t.name.lower()], label, shape))
    for i, v in enumerate(db.views, start=1):
        ids[v.name.lower()] = f"d{n}_v{i}"
        nodes.append(Node(f"d{n}_v{i}", v.name + "\nview", "note"))

    def node(name: str) -> str:
        if name.lower() not in ids:
            ids[name.lower()] = f"d{n}_m{len(ids) + 1}"
            nodes.append(Node(ids[name.lower()], name + "\n(missing)", "dashed"))
        return ids[name.lower()]

    edges: list[Edge] = []
    for t in db.mappable():
        me = ids[t.name.lower()]
        edges += [Edge(me, node(fk.ref_table), ", ".join(fk.columns)) for fk in t.foreign_keys]
        if t.content_table:
            edges.append(Edge(me, node(t.content_table), "content", "dashed"))
    for v in db.views:
        edges += [Edge(ids[v.name.lower()], node(r), style="dotted") for r in v.reads]
    for tr in db.triggers:
        for w in tr.writes:
            if w.lower() != tr.table.lower() and tr.table.lower() in ids:
                edges.append(Edge(ids[tr.table.lower()], node(w), tr.name, "dotted", "gray40"))
    if not nodes:
        nodes.append(Node(f"d{n}_empty", "(no tables)", "plain"))
    return Cluster(db.relpath, nodes, edges)


# -- DOT --------------------------------------------------------------------------------------


def dot_string(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as `\\n`."""
    esc = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + esc.replace("\r", "").replace("\n", "\\n") + '"'


_DOT_NODE = {
    "box": "",
    "rounded": ", style=rounded",
    "note": ", shape=note",
    "dashed": ", style=dashed",
    "plain": ", shape=plaintext",
}


def render_dot(clusters: list[Cluster]) -> str:
    lines = [
        "digraph dependencies {",
        "  graph [rankdir=LR, fontname=Helvetica, fontsize=11];",
        "  node [shape=box, fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=8];",
    ]
    for n, c in enumerate(clusters, start=1):
        lines += [f"  subgraph cluster_{n} {{", f"    label={dot_string(c.label)};"]
        lines += [f"    {v.id} [label={dot_string(v.label)}{_DOT_NODE[v.shape]}];" for v in c.nodes]
        lines.append("  }")
        lines += [f"  {e.src} -> {e.dst}{_dot_edge_attrs(e)};" for e in c.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_edge_attrs(e: Edge) -> str:
    attrs = [] if e.style == "solid" else [f"style={e.style}"]
    if e.color:
        attrs.append(f"color={e.color}")
    if e.label:
        attrs.append(f"label={dot_string(e.label)}")
    return f" [{', '.join(attrs)}]" if attrs else ""
