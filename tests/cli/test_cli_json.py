"""`cdc status --json` is a contract (docs/cli-json.md).

Every struct the JSON can contain has a section there listing exactly its fields, with
their JSON types; the exit codes documented there are the code's; and a real daemon's
status shows what the document says: every field present, an idle synced source at lag 0
with a fresh heartbeat, and after the daemon is killed a lag that is the heartbeat's age
and grows.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from msgspec import inspect as mi

import cdc
import checkpoints
import replicator
import verifier
from cdc.cli import main as cli
from cdc.config import load_config
from cdc.daemon.status import Status, fresh_limit
from cdc.errors import CdcError
from tests.conftest import REPO, cdc_cmd, make_db, wait_until, write_config

DOC = REPO / "docs" / "cli-json.md"

# -- reading docs/cli-json.md ----------------------------------------------------------------


def _part(text: str, title: str) -> str:
    """The body of the `## title` section (up to the next `## ` heading)."""
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"{DOC.name}: no `## {title}` section"
    return m.group(1)


def _subsections(part: str) -> dict[str, str]:
    """`### name` -> its body, in order; a name twice is an error."""
    out: dict[str, str] = {}
    pieces = re.split(r"^### +(.+?)\s*$", part, flags=re.M)
    for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
        assert name not in out, f"{DOC.name}: two `### {name}` sections"
        out[name] = body
    return out


def _tables(body: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table in `body`: (header cells, rows of cells)."""
    tables, current = [], None
    for line in body.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if current is None:
            current = (cells, [])
            tables.append(current)
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            current[1].append(cells)
    return tables


def _plain(cell: str) -> str:
    """A cell without markdown: links become their text, backticks go."""
    return re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", cell).replace("`", "").strip()


def _field_rows(name: str, body: str) -> list[list[str]]:
    tables = [
        rows
        for header, rows in _tables(body)
        if [h.lower() for h in header[:2]] == ["field", "type"]
    ]
    assert len(tables) == 1, (
        f"{DOC.name}: `### {name}` needs one `| field | type | unit | meaning |` table"
    )
    return tables[0]


# -- the type tree of Status -------------------------------------------------------------------


def _reachable_structs(root: type) -> dict[str, mi.StructType]:
    """Every struct reachable from `root` through fields, list/dict items and unions."""
    found: dict[str, mi.StructType] = {}

    def walk(t: mi.Type) -> None:
        if isinstance(t, mi.StructType):
            name = t.cls.__name__
            if name in found:
                assert found[name].cls is t.cls, (
                    f"two structs named {name}: the doc cannot tell them apart"
                )
                return
            found[name] = t
            for f in t.fields:
                walk(f.type)
        for attr in ("item_type", "key_type", "value_type"):
            sub = getattr(t, attr, None)
            if sub is not None:
                walk(sub)
        for sub in getattr(t, "types", ()) or ():  # unions
            walk(sub)
        for sub in getattr(t, "item_types", ()) or ():  # fixed tuples
            walk(sub)

    walk(mi.type_info(root))
    return found


def _json_type(t: mi.Type) -> str:
    """How docs/cli-json.md writes the JSON type of a msgspec type."""
    simple = {
        mi.IntType: "int",
        mi.FloatType: "float",
        mi.StrType: "string",
        mi.BoolType: "bool",
        mi.NoneType: "null",
    }
    for cls, text in simple.items():
        if isinstance(t, cls):
            return text
    if isinstance(t, mi.StructType):
        return t.cls.__name__
    if isinstance(t, mi.ListType):
        return f"array of {_json_type(t.item_type)}"
    if isinstance(t, mi.DictType):
        assert isinstance(t.key_type, mi.StrType), f"dict keys of {t} are not strings"
        return f"object of {_json_type(t.value_type)}"
    if isinstance(t, mi.UnionType):
        return " or ".join(_json_type(x) for x in t.types)
    raise AssertionError(f"{t!r}: decide how docs/cli-json.md names this JSON type")


def _doc_fields() -> dict[str, list[list[str]]]:
    sections = _subsections(_part(DOC.read_text(), "Fields"))
    return {name: _field_rows(name, body) for name, body in sections.items()}


# -- (a) every struct documented, field by field ---------------------------------------------


def test_every_struct_has_a_section_listing_exactly_its_fields():
    structs = _reachable_structs(Status)
    documented = _doc_fields()
    problems = []
    missing = [n for n in structs if n not in documented]
    stale = [n for n in documented if n not in structs]
    if missing:
        problems.append(f"structs without a `### Name` section: {', '.join(missing)}")
    if stale:
        problems.append(f"sections for structs no longer in the JSON: {', '.join(stale)}")
    for name, st in structs.items():
        rows = documented.get(name)
        if rows is None:
            continue
        want = [f.encode_name for f in st.fields]
        have = [_plain(r[0]) for r in rows]
        extra = [f for f in have if f not in want]
        absent = [f for f in want if f not in have]
        if absent:
            problems.append(f"{name}: fields not documented: {', '.join(absent)}")
        if extra:
            problems.append(f"{name}: documented fields that do not exist: {', '.join(extra)}")
        if not absent and not extra and have != want:
            problems.append(f"{name}: rows not in the JSON's order {want}")
        dup = sorted({f for f in have if have.count(f) > 1})
        if dup:
            problems.append(f"{name}: fields documented twice: {', '.join(dup)}")
        for r in rows:
            if len(r) != 4 or not r[3]:
                problems.append(f"{name}: row {r[0]} needs 4 cells and a meaning")
            elif not r[0].startswith("`"):
                problems.append(f"{name}: write the field as `{_plain(r[0])}`")
    assert not problems, f"{DOC.name} is out of date:\n" + "\n".join(problems)


def test_documented_json_types_are_the_encoded_ones():
    structs = _reachable_structs(Status)
    documented = _doc_fields()
    wrong = []
    for name, st in structs.items():
        types = {_plain(r[0]): _plain(r[1]) for r in documented.get(name, []) if len(r) > 1}
        for f in st.fields:
            want = _json_type(f.type)
            if f.encode_name in types and types[f.encode_name] != want:
                wrong.append(
                    f"{name}.{f.encode_name}: documented {types[f.encode_name]!r}, is {want!r}"
                )
    assert not wrong, f"{DOC.name}: wrong types:\n" + "\n".join(wrong)


# -- (c) exit codes ----------------------------------------------------------------------------


def _error_classes() -> dict[str, int]:
    """Every CdcError class of the product (all its modules imported) -> its exit code."""
    for pkg in (cdc, verifier, replicator, checkpoints):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not m.name.endswith("__main__"):
                importlib.import_module(m.name)
    out: dict[str, int] = {"CdcError": CdcError.exit_code}
    todo = [CdcError]
    while todo:
        for sub in todo.pop().__subclasses__():
            assert sub.__name__ not in out, f"two error classes named {sub.__name__}"
            out[sub.__name__] = sub.exit_code
            todo.append(sub)
    return out


def _exit_code_table(column: str) -> dict[str, int]:
    """The exit code table whose header has `column`: name (that column) -> exit code."""
    for header, rows in _tables(_part(DOC.read_text(), "Exit codes")):
        names = [h.lower() for h in header]
        if column in names and "exit code" in names:
            i, code = names.index(column), names.index("exit code")
            out = {}
            for r in rows:
                name = _plain(r[i])
                assert name not in out, f"{DOC.name}: {name} listed twice"
                out[name] = int(r[code])
            return out
    raise AssertionError(f"{DOC.name}: no exit code table with a `{column}` column")


def test_documented_exit_codes_are_the_error_classes():
    documented = _exit_code_table("error class")
    actual = _error_classes()
    assert documented == actual, _code_diff(documented, actual, "error classes")


def test_documented_exit_codes_are_the_cli_constants():
    documented = _exit_code_table("constant")
    actual = {n: v for n, v in vars(cli).items() if n.startswith("EXIT_") and isinstance(v, int)}
    assert documented == actual, _code_diff(documented, actual, "cdc.cli EXIT_* constants")


def _code_diff(documented: dict[str, int], actual: dict[str, int], what: str) -> str:
    code = {k: v for k, v in actual.items() if documented.get(k) != v}
    doc = {k: v for k, v in documented.items() if actual.get(k) != v}
    return f"{DOC.name}: exit codes of {what} differ: the code says {code}, the doc says {doc}"


# -- (b) a real daemon -------------------------------------------------------------------------

CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
[[sources]]
name = "orders"
path = "legacy/orders.db"
[[sources]]
name = "ticks"
path = "legacy/ticks.db"
[[rules]]
table = "*"
target = "core"
"""


def _setup(root: Path) -> Path:
    make_db(
        root / "legacy" / "orders.db",
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, symbol TEXT, qty INTEGER);"
        "INSERT INTO orders(symbol, qty) VALUES ('AAPL', 10), ('MSFT', 5);",
    )
    make_db(
        root / "legacy" / "ticks.db",
        "CREATE TABLE ticks(id INTEGER PRIMARY KEY, px REAL); INSERT INTO ticks(px) VALUES (1.5);",
        wal=True,
    )
    cfg = write_config(root, CONFIG)
    r = cdc_cmd("install", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    return cfg


def _status(cfg: Path) -> tuple[dict, float, float]:
    """One `cdc status --json` call: (the object, time before the call, time after it)."""
    before = time.time()
    r = cdc_cmd("status", "--json", "-c", str(cfg))
    after = time.time()
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1, "one JSON object, one line"
    typed = msgspec.json.decode(r.stdout, type=Status)  # every value of its documented type
    raw = json.loads(r.stdout)
    _same_keys(raw, msgspec.to_builtins(typed), "status")
    return raw, before, after


def _same_keys(raw: object, full: object, where: str) -> None:
    """Every field of every struct is present in the output (decoding would fill in a
    missing one with its default), and nothing else."""
    if isinstance(full, dict):
        assert isinstance(raw, dict), where
        assert set(raw) == set(full), f"{where}: keys {sorted(set(raw) ^ set(full))} differ"
        for k in full:
            _same_keys(raw[k], full[k], f"{where}.{k}")
    elif isinstance(full, list):
        assert isinstance(raw, list) and len(raw) == len(full), where
        for i, (a, b) in enumerate(zip(raw, full, strict=True)):
            _same_keys(a, b, f"{where}[{i}]")


def test_status_json_lag_from_a_real_daemon(tmp_path, daemons):
    cfg = _setup(tmp_path)
    limit = fresh_limit(load_config(cfg))
    d = daemons(cfg)
    d.wait_synced()
    conn = sqlite3.connect(tmp_path / "legacy" / "orders.db")
    with conn:
        conn.execute("INSERT INTO orders(symbol, qty) VALUES ('IBM', 7)")
    conn.close()
    d.wait_synced()

    st, _, after = _status(cfg)
    assert set(st) >= set(Status.__struct_fields__)
    assert st["daemon"]["state"] == "running" and st["daemon"]["pid"] == d.proc.pid
    assert [s["name"] for s in st["sources"]] == ["orders", "ticks"]
    orders = st["sources"][0]
    assert orders["captured"] >= 1 and orders["applied"] == orders["captured"]
    for s in st["sources"]:
        # Idle and synced, with a harvest pass within the freshness limit: proven current.
        assert s["backlog_events"] == 0 and s["snapshot"] == "done", s
        assert s["lag_seconds"] == 0.0, s
        assert s["heartbeat_at"] is not None and 0 <= after - s["heartbeat_at"] <= limit, s
    assert st["targets"][0]["backlog_bytes"] == 0

    d.kill()  # SIGKILL: the status file still says running, with the last heartbeats
    dead = wait_until(
        lambda: (lambda st: st if all(s["lag_seconds"] for s in st["sources"]) else None)(
            _status(cfg)[0]
        ),
        limit + 10,
        0.3,
        "lag_seconds to stop being 0 once the heartbeats are stale",
    )
    assert dead["daemon"]["state"] == "dead"
    first, before1, after1 = _status(cfg)
    time.sleep(1.0)
    second, before2, after2 = _status(cfg)
    for s1, s2 in zip(first["sources"], second["sources"], strict=True):
        hb = s1["heartbeat_at"]
        assert hb is not None and s2["heartbeat_at"] == hb, "the heartbeat stopped with the daemon"
        # Nothing is pending, so the lag is exactly the age of the last proof ...
        assert before1 - hb - 0.01 <= s1["lag_seconds"] <= after1 - hb + 0.01, (s1, before1, after1)
        assert before2 - hb - 0.01 <= s2["lag_seconds"] <= after2 - hb + 0.01, (s2, before2, after2)
        # ... older than the freshness limit, and growing.
        assert s1["lag_seconds"] > limit
        assert s2["lag_seconds"] >= s1["lag_seconds"] + 0.9


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child")
def test_status_json_watch_prints_one_object_per_line(tmp_path):
    cfg = _setup(tmp_path)
    p = subprocess.Popen(
        [sys.executable, "-m", "cdc", "status", "--json", "--watch", "0.2", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        lines = [p.stdout.readline() for _ in range(3)]
    finally:
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=30)
    assert p.returncode == 0, err  # Ctrl-C is the normal end of --watch
    for line in lines + [x for x in rest.splitlines() if x.strip()]:
        st = msgspec.json.decode(line, type=Status)
        assert st.daemon.state == "not started"
