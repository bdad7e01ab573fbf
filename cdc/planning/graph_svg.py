"""Draw the dependency graph as SVG with no system package, for machines without Graphviz.

Graphviz stays the better drawing when `dot` is installed; this one exists so that the
inventory always comes with a picture an operator can open in a browser. Written here
rather than with a Python layout library because the ones on PyPI either wrap Graphviz
(the package we are replacing) or pull in a plotting stack for a handful of boxes.

The layout is a plain layered one: in each database, a table sits one column left of
everything it depends on (longest path, cycles broken where found), rows inside a column
are ordered by where their neighbours are, and the databases are stacked top to bottom.
Labels come from table names, which SQLite lets hold anything, so characters XML cannot
carry are shown as `\\xNN` rather than making the file unreadable.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from cdc.planning.dependency_graph import Cluster, Edge, Node

CHAR_W = 7.0  # average glyph width of 12px sans-serif, for box sizing
LINE_H = 15.0
PAD = 8.0
COL_GAP = 70.0
ROW_GAP = 18.0
CLUSTER_GAP = 24.0
TITLE_H = 24.0
MARGIN = 12.0

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def render_svg(clusters: list[Cluster]) -> str:
    svg = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", version="1.1")
    _defs(svg)
    y = MARGIN
    width = 0.0
    for c in clusters:
        g = ET.SubElement(svg, "g", {"class": "database"})
        w, h = _draw_cluster(g, c, MARGIN, y)
        width = max(width, w)
        y += h + CLUSTER_GAP
    svg.set("width", f"{width + 2 * MARGIN:.0f}")
    svg.set("height", f"{max(y - CLUSTER_GAP + MARGIN, 2 * MARGIN):.0f}")
    svg.set("viewBox", f"0 0 {svg.get('width')} {svg.get('height')}")
    ET.indent(svg)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, "unicode") + "\n"


def _defs(svg: ET.Element) -> None:
    defs = ET.SubElement(svg, "defs")
    style = ET.SubElement(defs, "style")
    style.text = (
        "text{font-family:Helvetica,Arial,sans-serif;font-size:12px}"
        ".edge text{font-size:10px;fill:#444}"
        ".title{font-weight:bold}"
    )
    for name, color in (("arrow", "black"), ("arrow-gray", "#666")):
        m = ET.SubElement(
            defs,
            "marker",
            id=name,
            viewBox="0 0 10 10",
            refX="10",
            refY="5",
            markerWidth="8",
            markerHeight="8",
            orient="auto-start-reverse",
        )
        ET.SubElement(m, "path", d="M 0 0 L 10 5 L 0 10 z", fill=color)


class _Box:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.lines = [xml_safe(s) for s in node.label.split("\n")]
        self.w = max(len(s) for s in self.lines) * CHAR_W + 2 * PAD
        self.h = len(self.lines) * LINE_H + PAD
        self.x = self.y = 0.0


def _columns(c: Cluster) -> dict[str, int]:
    """Column of each node: one left of the furthest thing it depends on."""
    out: dict[str, list[str]] = {n.id: [] for n in c.nodes}
    for e in c.edges:
        if e.src != e.dst:
            out[e.src].append(e.dst)
    depth: dict[str, int] = {}
    on_path: set[str] = set()

    def visit(v: str) -> int:
        if v in depth:
            return depth[v]
        on_path.add(v)
        d = 0
        for w in out[v]:
            if w not in on_path:  # an edge back into the path closes a cycle: ignore it
                d = max(d, visit(w) + 1)
        on_path.discard(v)
        depth[v] = d
        return d

    for n in c.nodes:
        visit(n.id)
    top = max(depth.values(), default=0)
    return {v: top - d for v, d in depth.items()}


def _place(c: Cluster, x0: float, y0: float) -> tuple[dict[str, _Box], float, float]:
    boxes = {n.id: _Box(n) for n in c.nodes}
    col = _columns(c)
    ncols = max(col.values(), default=0) + 1
    cols: list[list[str]] = [[] for _ in range(ncols)]
    for n in c.nodes:
        cols[col[n.id]].append(n.id)
    order = _order(cols, c.edges)
    x = x0 + PAD
    height = 0.0
    for ids in cols:
        ids.sort(key=order.__getitem__)
        y = y0 + TITLE_H
        for i in ids:
            boxes[i].x, boxes[i].y = x, y
            y += boxes[i].h + ROW_GAP
        height = max(height, y - y0)
        x += max((boxes[i].w for i in ids), default=0.0) + COL_GAP
    return boxes, x - COL_GAP + PAD - x0, height - ROW_GAP + PAD


def _order(cols: list[list[str]], edges: list[Edge]) -> dict[str, float]:
    """Rows inside a column follow their neighbours (two barycentre sweeps)."""
    pos = {v: float(i) for ids in cols for i, v in enumerate(sorted(ids))}
    near: dict[str, list[str]] = {v: [] for v in pos}
    for e in edges:
        if e.src != e.dst:
            near[e.src].append(e.dst)
            near[e.dst].append(e.src)
    for _ in range(2):
        for ids in cols:
            bary = {
                v: sum(pos[w] for w in near[v]) / len(near[v]) if near[v] else pos[v] for v in ids
            }
            for i, v in enumerate(sorted(ids, key=lambda v: (bary[v], v))):
                pos[v] = float(i)
    return pos


def _draw_cluster(g: ET.Element, c: Cluster, x0: float, y0: float) -> tuple[float, float]:
    boxes, w, h = _place(c, x0, y0)
    w = max(w, len(c.label) * CHAR_W + 2 * PAD)
    ET.SubElement(
        g, "rect", x=f"{x0}", y=f"{y0}", width=f"{w:.1f}", height=f"{h:.1f}", rx="6",
        fill="#f7f7f7", stroke="#999",
    )  # fmt: skip
    title = ET.SubElement(g, "text", {"class": "title", "x": f"{x0 + PAD}", "y": f"{y0 + 16}"})
    title.text = xml_safe(c.label)
    for e in c.edges:
        _draw_edge(g, boxes[e.src], boxes[e.dst], e)
    for b in boxes.values():
        _draw_node(g, b)
    return w, h


_DASH = {"solid": None, "dashed": "6,3", "dotted": "2,3"}


def _draw_node(g: ET.Element, b: _Box) -> None:
    shape = b.node.shape
    if shape != "plain":
        rect = ET.SubElement(
            g, "rect", x=f"{b.x:.1f}", y=f"{b.y:.1f}", width=f"{b.w:.1f}", height=f"{b.h:.1f}",
            fill="#fffbe6" if shape == "note" else "white", stroke="black",
        )  # fmt: skip
        if shape == "rounded":
            rect.set("rx", "8")
        if shape == "dashed":
            rect.set("stroke-dasharray", "6,3")
    for i, line in enumerate(b.lines):
        t = ET.SubElement(
            g, "text", x=f"{b.x + PAD:.1f}", y=f"{b.y + PAD / 2 + 12 + i * LINE_H:.1f}"
        )
        if i == 0:
            t.set("font-weight", "bold")
        t.text = line


def _draw_edge(g: ET.Element, a: _Box, b: _Box, e: Edge) -> None:
    eg = ET.SubElement(g, "g", {"class": "edge"})
    color = "#666" if e.color else "black"
    if a is b:  # a table that references itself: a loop on its right side
        x, y = a.x + a.w, a.y + a.h / 2
        d = f"M {x:.1f} {y - 6:.1f} C {x + 40:.1f} {y - 30:.1f} {x + 40:.1f} {y + 30:.1f} {x:.1f} {y + 6:.1f}"
        mid = (x + 32, y)
    elif b.x > a.x:  # the usual case: left to right
        x1, y1, x2, y2 = a.x + a.w, a.y + a.h / 2, b.x, b.y + b.h / 2
        dx = (x2 - x1) / 2
        d = f"M {x1:.1f} {y1:.1f} C {x1 + dx:.1f} {y1:.1f} {x2 - dx:.1f} {y2:.1f} {x2:.1f} {y2:.1f}"
        mid = ((x1 + x2) / 2, (y1 + y2) / 2)
    else:  # a cycle closed backwards, or a neighbour in the same column: around the left
        x1, y1, x2, y2 = a.x, a.y + a.h / 2, b.x, b.y + b.h / 2
        bend = min(x1, x2) - 40
        d = f"M {x1:.1f} {y1:.1f} C {bend:.1f} {y1:.1f} {bend:.1f} {y2:.1f} {x2:.1f} {y2:.1f}"
        mid = (bend + 10, (y1 + y2) / 2)
    path = ET.SubElement(
        eg, "path", d=d, fill="none", stroke=color,
        attrib={"marker-end": f"url(#{'arrow-gray' if e.color else 'arrow'})"},
    )  # fmt: skip
    if _DASH[e.style]:
        path.set("stroke-dasharray", _DASH[e.style])
    if e.label:
        t = ET.SubElement(eg, "text", x=f"{mid[0]:.1f}", y=f"{mid[1] - 3:.1f}")
        t.set("text-anchor", "middle")
        t.text = xml_safe(e.label)
