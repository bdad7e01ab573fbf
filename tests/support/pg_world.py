"""Legacy SQLite files bound for a PostgreSQL target, their change log, and the comparison
of both sides value by value (storage class and bytes, through `cdc.postgres.types`):
shared by the PostgreSQL apply tests and the driver they kill (`pg_apply_run`)."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import apsw

from cdc import exact_text
from cdc.capture import install as ops
from cdc.capture.harvester import Harvester
from cdc.changelog.segments import LogReader, LogWriter
from cdc.config import Config, load_config
from cdc.planning.plan import Plan
from cdc.planning.resolve import resolve_plan
from cdc.postgres.types import from_pg, pg_type
from cdc.sqlident import q

A = """
CREATE TABLE fills(id INTEGER PRIMARY KEY AUTOINCREMENT, sym TEXT UNIQUE, px REAL,
                   qty INTEGER, raw BLOB, n NUMERIC);
CREATE TABLE log(msg TEXT, level INTEGER);
CREATE TABLE pos(k TEXT PRIMARY KEY NOT NULL, v REAL);
INSERT INTO fills(sym, px, qty, raw, n) VALUES
  ('SOL', -0.0, 9223372036854775807, x'', 0.1),
  ('BTC', 1e308, -9223372036854775808, x'00ff', 12),
  ('ETH', 5e-324, 0, NULL, NULL);
INSERT INTO log VALUES ('start', 1), ('é \U0001f600', 2);
INSERT INTO pos VALUES ('a', 1.5), ('b', -2.25);
"""
B = """
CREATE TABLE pos(k TEXT PRIMARY KEY NOT NULL, v REAL, extra TEXT);
INSERT INTO pos VALUES ('a', 9.5, 'x'), ('c', 0.0, NULL);
"""
RULES = """
[[rules]]
table = "*"
target = "core"
[[rules]]
table = "pos"
target = "core"
merge = true
tag_column = "bot"
"""


def make_world(root: Path, dsn: str) -> Path:
    for name, script in (("a", A), ("b", B)):
        c = sqlite3.connect(root / f"{name}.db", isolation_level=None)
        c.executescript(script)
        c.close()
    cfg = root / "cdc.toml"
    cfg.write_text(
        f'state_dir = "{root}/state"\n[daemon]\nsnapshot_copy = "log"\nsnapshot_chunk = 2\n'
        f'[targets]\ncore = "{dsn}"\n'
        f'[[sources]]\nname = "a"\npath = "{root}/a.db"\n'
        f'[[sources]]\nname = "b"\npath = "{root}/b.db"\n{RULES}'
    )
    return cfg


def bot_writes(root: Path, first: int, n: int) -> None:
    """What the bots of the world write: inserts, REPLACEs, a merged table's upserts."""
    a = sqlite3.connect(root / "a.db", isolation_level=None, timeout=10)
    b = sqlite3.connect(root / "b.db", isolation_level=None, timeout=10)
    for i in range(first, first + n):
        a.execute("INSERT INTO fills(sym, px, qty) VALUES (?, ?, ?)", (f"D{i}", -i / 3, i))
        a.execute("INSERT OR REPLACE INTO fills(sym, px) VALUES ('ETH', ?)", (i + 0.5,))
        a.execute("INSERT INTO log VALUES (?, ?)", (f"d{i}", i))
        b.execute("INSERT OR REPLACE INTO pos VALUES (?, ?, ?)", (f"d{i % 7}", i * 0.25, None))
    a.close()
    b.close()


def load(cfg_path: Path) -> tuple[Config, Plan]:
    cfg = load_config(cfg_path, postgres=True)
    return cfg, resolve_plan(cfg)


class Capture:
    """The harvest half, in process: install, snapshot, harvest into the log."""

    def __init__(self, cfg: Config, plan: Plan) -> None:
        ops.install(cfg, plan)
        self.writer = LogWriter(cfg.log_dir, cfg.daemon.segment_bytes)
        self.harvesters = [Harvester(sp, self.writer, cfg.daemon) for sp in plan.sources]
        for h in self.harvesters:
            h.open()

    def sync(self) -> None:
        for _ in range(2):
            for h in self.harvesters:
                while h.snapshot_pending:
                    h.snapshot_chunk()
                while h.harvest().events:
                    pass

    def close(self) -> None:
        for h in self.harvesters:
            h.close()
        self.writer.close()


def log_end(cfg: Config) -> int:
    r = LogReader(cfg.log_dir)
    offset = 0
    while True:
        got = r.read(offset, None, max_frames=10_000)
        if not got:
            return offset
        offset = got[-1].next_offset


def differences(cfg: Config, plan: Plan, dsn: str) -> list[str]:
    """Every row that differs, by table and key (values compared with their storage class
    and bytes), legacy first."""
    import psycopg

    out = []
    with psycopg.connect(dsn) as pg:
        for sp in plan.sources:
            conn = apsw.Connection(sp.path, flags=apsw.SQLITE_OPEN_READONLY)
            conn.set_busy_timeout(10_000)  # a running daemon trims its capture table
            for m in sp.tables:
                if plan.targets[m.target] != dsn:  # another target (a mixed plan)
                    continue
                info = sp.info(m.table)
                cols = [c.name for c in info.columns]
                types = [pg_type(c.decl_type) for c in info.columns]
                key = info.key or ["rowid"]
                legacy = exact_text.select(
                    conn, [q(k) for k in key] + [q(c) for c in cols], f"FROM {q(m.table)}"
                )
                where = f" WHERE {q(m.tag_column)} = %s" if m.tag_column else ""
                rows = pg.execute(
                    f"SELECT {', '.join(q(k) for k in key + cols)} FROM {q(m.target_table)}{where}",
                    (m.tag,) if m.tag_column else (),
                ).fetchall()
                ktypes = ["bigint" if k == "rowid" else types[cols.index(k)] for k in key]
                target = [
                    tuple(from_pg(v, ty) for v, ty in zip(r, ktypes + types, strict=True))
                    for r in rows
                ]
                a = {_exact(r[: len(key)]): _exact(r) for r in legacy}
                b = {_exact(r[: len(key)]): _exact(r) for r in target}
                for k in sorted(set(a) | set(b), key=repr):
                    if a.get(k) != b.get(k):
                        out.append(f"{m.source}.{m.table} {k}: {a.get(k)} | {b.get(k)}")
            conn.close()
    return out


def _exact(row) -> tuple:  # noqa: ANN001
    return tuple(
        (type(v).__name__, struct.pack("<d", v) if isinstance(v, float) else v) for v in row
    )
