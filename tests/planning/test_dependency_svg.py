"""The dependency graph drawn without Graphviz: valid SVG, every node and edge of the model,
boxes that do not overlap, and table names SQLite allows but XML does not."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from cdc.planning.dependency_graph import dependency_graph
from cdc.planning.graph_svg import render_svg, xml_safe
from cdc.planning.survey import take_inventory
from tests.conftest import make_db

NS = "{http://www.w3.org/2000/svg}"

SHOP = """
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer REFERENCES customers(id));
CREATE TABLE lines(id INTEGER PRIMARY KEY, o REFERENCES orders(id), sku REFERENCES skus(id));
CREATE TABLE staff(id INTEGER PRIMARY KEY, boss REFERENCES staff(id));
CREATE TABLE a(id INTEGER PRIMARY KEY, b_id REFERENCES b(id));
CREATE TABLE b(id INTEGER PRIMARY KEY, a_id REFERENCES a(id));
CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);
CREATE VIRTUAL TABLE docs_fts USING fts5(body, content='docs', content_rowid='id');
CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN
  INSERT INTO docs_fts(rowid, body) VALUES (new.id, new.body);
END;
CREATE VIEW big_orders AS SELECT * FROM orders JOIN customers ON customers.id = customer;
"""

ODD = ["tab\tle", "bell\x07name", 'q"<&>', "ünïcødé_表", "line\nbreak"]


def _rects(svg: ET.Element) -> list[tuple[float, float, float, float]]:
    out = []
    for g in svg.iter(f"{NS}g"):
        if g.get("class") != "database":
            continue
        for r in g.findall(f"{NS}rect")[1:]:  # the first one is the database's frame
            out.append(tuple(float(r.get(k)) for k in ("x", "y", "width", "height")))
    return out


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_every_node_and_edge_is_drawn_and_no_boxes_overlap(tmp_path: Path) -> None:
    make_db(tmp_path / "shop.db", SHOP)
    make_db(tmp_path / "empty.db", "CREATE TABLE x(a); DROP TABLE x;")
    clusters = dependency_graph(take_inventory([tmp_path]))
    svg = ET.fromstring(render_svg(clusters).encode())

    texts = [t.text for t in svg.iter(f"{NS}text")]
    for c in clusters:
        assert c.label in texts
        for n in c.nodes:
            assert n.label.split("\n")[0] in texts
    assert "skus" in texts and "(missing)" in texts and "(no tables)" in texts
    edges = [g for g in svg.iter(f"{NS}g") if g.get("class") == "edge"]
    assert len(edges) == sum(len(c.edges) for c in clusters) >= 9
    assert all(g.find(f"{NS}path").get("marker-end", "").startswith("url(#") for g in edges)
    dashed = [g for g in edges if g.find(f"{NS}path").get("stroke-dasharray")]
    assert len(dashed) == sum(1 for c in clusters for e in c.edges if e.style != "solid")

    boxes = _rects(svg)
    assert len(boxes) == sum(1 for c in clusters for n in c.nodes if n.shape != "plain")
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if _overlap(a, b)]
    width, height = float(svg.get("width")), float(svg.get("height"))
    assert all(x >= 0 and y >= 0 and x + w <= width and y + h <= height for x, y, w, h in boxes)


def test_a_table_is_drawn_left_of_what_it_depends_on(tmp_path: Path) -> None:
    make_db(tmp_path / "shop.db", SHOP)
    svg = ET.fromstring(render_svg(dependency_graph(take_inventory([tmp_path]))).encode())
    x = {t.text: float(t.get("x")) for t in svg.iter(f"{NS}text") if t.get("font-weight")}
    assert x["lines"] < x["orders"] < x["customers"]
    assert x["big_orders"] < x["orders"]


def test_names_xml_cannot_carry_are_shown_escaped(tmp_path: Path) -> None:
    script = "".join(f'CREATE TABLE "{n.replace(chr(34), chr(34) * 2)}"(x);' for n in ODD)
    make_db(tmp_path / "odd\x01.db", script)
    text = render_svg(dependency_graph(take_inventory([tmp_path])))
    svg = ET.fromstring(text.encode())  # parses: nothing illegal got through
    texts = {t.text for t in svg.iter(f"{NS}text")}
    assert {"tab\tle", "bell\\x07name", 'q"<&>', "ünïcødé_表", "line", "break"} <= texts
    assert "odd\\x01.db" in texts
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", text)
    assert xml_safe("\ud800x") == "\\xd800x"
