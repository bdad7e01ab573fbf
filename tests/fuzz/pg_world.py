"""The differential fuzzer against a PostgreSQL target (issue 19, docs/fuzzing.md).

`PgWorld` is the in-process World with the target `core` a fresh PostgreSQL database (one
per case, dropped after it), applied by the real `replicator.pg_apply.PgTarget` through
the Replicator. Its oracle reads the legacy rows with plain SQL (storage class and bytes,
`tests/fuzz/oracle.py`) and the PostgreSQL rows through `cdc.postgres.types.from_pg` (the
definition of equality across engines, as `tests/support/pg_world.differences` reads
them), checks every column's PostgreSQL type against its SQLite affinity (worked out here,
not by the engine), and judges `verifier.verify_tables` (`cdc verify`, across engines)
against it; `verifier.compare_plan` reads SQLite targets only.

What PostgreSQL cannot hold is refused by the product by name, so the draws stay within
what fits (`PgDraws`): the families in `PG_FAMILIES` (no NOCASE/RTRIM, no partial or
expression index, no NULL key, no invalid UTF-8), and every stored value one its column's
affinity turns into a value its PostgreSQL type carries (`fitting`). A refusal that still
comes (`does not translate to PostgreSQL`) is `hypothesis.reject()`, counted in `STATS`;
a value refused as not fitting is a failure (the draws never write one, so the engine
made it).

Replay a printed failure against a private cluster:
`python -m tests.fuzz.pg_world failure.txt` (tests/fuzz/replay.py's format).
"""

from __future__ import annotations

import math
import os
import re
import struct
import sys
import uuid
from collections import Counter
from dataclasses import replace

import apsw
from hypothesis import reject
from hypothesis import strategies as st

from cdc.config import load_config
from cdc.errors import PlanError
from cdc.planning.resolve import PG_REFUSED, resolve_plan
from cdc.postgres.types import from_pg
from tests.fuzz import oracle
from tests.fuzz.features import enabled
from tests.fuzz.machine import Draws
from tests.fuzz.schema import TAG_COLUMN, TableSpec, config_text, schemas, target_table
from tests.fuzz.sqltext import (
    BLOBS,
    EDGE_INTS,
    EDGE_REALS,
    INFINITIES,
    SMALL_INTS,
    ident,
    literal,
)
from tests.fuzz.statements import (
    NEW_COLS,
    Shape,
    Stmt,
    _insert_cols,
    _key_kind,
    _where,
    ddl,
    read_spec_shape,
)
from tests.fuzz.world import (
    PipelineCrashed,
    PlanMistake,
    ReplicationDiffers,
    VerifierFalseAlarm,
    VerifierSaidEqual,
    World,
)
from verifier import verify_tables

# Families whose inputs a PostgreSQL target can hold (tests/fuzz/features.py). Left out:
# `collation`, `merge_collation` (a NOCASE/RTRIM key or unique is refused), `utf8` (TEXT
# that is not UTF-8), `null_keys`, `reset_null_keys`, `merge_null_keys` (no PostgreSQL key
# holds NULL), `partial_index`, `expr_index` (refused), `numeric_keys`, `numeric_replace`
# (an untyped key is `bytea`: it holds BLOBs only, so 1 and 1.0 never meet).
PG_FAMILIES = frozenset(
    {
        "cdc_names",
        "late_index",
        "rowid_names",
        "col_drift",
        "vacuum",
        "recreate",
        "merge_defaults",
        "merge_drift_index",
        "default_affinity",
        "add_column",
        "merge",
        "two_sources",
        "without_rowid",
        "strict",
        "generated",
        "unique",
        "odd_names",
        "big_values",
        "txn",
        "executemany",
        "key_updates",
    }
)

# Families of this variant only (CDC_FUZZ_FEATURES / CDC_FUZZ_SKIP name them too): each
# switches off one combination that fails against PostgreSQL (docs/fuzzing.md, Findings
# against PostgreSQL), so the rest of its families keeps running.
PG_ONLY: dict[str, str] = {
    "unique_drift": "RENAME COLUMN of a table with a UNIQUE (P2; with `col_drift`, `unique`)",
    "rowid_column": "keyless tables with a column named rowid (P3; with `odd_names`)",
    "drop_unique": "DROP INDEX of a unique index, or of one made after install (P5; with "
    "`late_index`)",
}

# What the runs saw, for the test to print: cases, checks, each verdict, each reject.
STATS: Counter = Counter()


# -- affinity and the values each column can hold ------------------------------------------


def affinity(decl: str, strict: bool) -> str:
    """SQLite's rule (datatype3.html, 3.1), with a STRICT table's ANY as no type."""
    d = decl.upper()
    if strict and d == "ANY":
        return "BLOB"
    if "INT" in d:
        return "INTEGER"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "TEXT"
    if "BLOB" in d or not d:
        return "BLOB"
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return "REAL"
    return "NUMERIC"


PG_TYPE = {
    "INTEGER": "bigint",
    "REAL": "double precision",
    "TEXT": "text",
    "BLOB": "bytea",
    "NUMERIC": "numeric",
}

_TEXTS = st.sampled_from(["", "a", "A", "b", "1", "é", "😀 x", "it's", "x\ny"])
_ANY_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
_FINITE = st.floats(allow_nan=False, allow_infinity=False)


def _numeric_ok(v: float) -> bool:
    """A REAL a NUMERIC column keeps as a value `numeric` carries: not a whole number
    SQLite leaves REAL (past 2^53 it may: no int64 conversion is tried)."""
    return not (math.isfinite(v) and v == int(v) and abs(v) >= 2**53)


def fitting(decl: str, strict: bool, f: frozenset[str], convert: bool = True):
    """A value that, stored in a column declared `decl`, is one its PostgreSQL type
    carries. `convert`: also values of another class the affinity converts ('7' into an
    INTEGER column, 3 into a REAL one)."""
    aff = affinity(decl, strict)
    big = "big_values" in f
    parts: list = [st.none()]
    if aff == "INTEGER":
        parts += [SMALL_INTS, EDGE_INTS]
        if convert:
            parts += [st.sampled_from(["7", "-3", "0"]), st.sampled_from([2.0, -1.0, -0.0])]
    elif aff == "REAL":
        parts += [EDGE_REALS, _FINITE] + ([INFINITIES] if big else [])
        if convert:
            parts += [SMALL_INTS, EDGE_INTS, st.sampled_from(["1.5", "-2"])]
    elif aff == "TEXT":
        parts += [_TEXTS, _ANY_TEXT]
        if big:
            parts.append(st.sampled_from(["x" * 70_000, "é" * 5000]))
        if convert:
            parts += [SMALL_INTS, st.sampled_from([0.5, -1.5, 1e-300])]
    elif aff == "BLOB":
        parts += [BLOBS, st.binary(max_size=8)]
        if big:
            parts.append(st.sampled_from([b"\x00" * 70_000, bytes(range(256)) * 300]))
    else:  # NUMERIC: integers, REALs that are not whole, infinities
        parts += [SMALL_INTS, EDGE_INTS, EDGE_REALS.filter(_numeric_ok)]
        parts += [_FINITE.filter(_numeric_ok)] + ([INFINITIES] if big else [])
        if convert:
            parts.append(st.sampled_from(["5", "2.5", "-0.0"]))
    return st.one_of(*parts)


def default_values(decl: str, strict: bool, f: frozenset[str]):
    """A DEFAULT for an added column that PostgreSQL takes as the rows already there read
    it (`cdc.planning.pg_ddl.default_sql`: a number, a string in a `text` column, NULL;
    anything else is refused by name while the table holds rows). `default_affinity`:
    also numbers the column's affinity converts (3 in REAL, 2.0 in INTEGER, 0.5 in TEXT)."""
    aff = affinity(decl, strict)
    conv = "default_affinity" in f
    parts: list = [st.none()]
    if aff == "INTEGER":
        parts += [SMALL_INTS, EDGE_INTS] + ([st.sampled_from([2.0, -1.0, -0.0])] if conv else [])
    elif aff == "REAL":
        parts.append(st.sampled_from([0.0, -0.0, 0.5, -1.5, 1e-300, 1.7976931348623157e308]))
        parts += [SMALL_INTS, EDGE_INTS] if conv else []
    elif aff == "TEXT":
        parts.append(st.sampled_from(["", "a", "é", "it's", "😀 x"]))
        parts += [SMALL_INTS, st.sampled_from([0.5, -1.5, 1e-300])] if conv else []
    elif aff == "NUMERIC":
        parts += [SMALL_INTS, st.sampled_from([0.5, -1.5, 1e-300])]
    return st.one_of(*parts)  # a BLOB column: NULL (x'..' does not translate)


def key_values(kind: str):
    """A small key domain (rows collide, replace and update each other), of the key's
    PostgreSQL type: an untyped key is `bytea`."""
    if kind in ("ipk", "ipk_desc", "int"):
        return st.integers(-2, 6)
    if kind == "text":
        return st.sampled_from(["a", "b", "k1", "", "é"])
    return st.sampled_from([b"", b"\x00", b"1", b"a", b"b", b"\xff\x00\xfe"])


def _value_for(draw, spec: TableSpec, shape: Shape, col: str, f: frozenset[str]):
    if col in shape.key and spec.key_kind != "none":
        return draw(key_values(_key_kind(spec, col)))
    return draw(fitting(shape.decl.get(col, ""), spec.strict, f))


# -- the bots' statements, with values that fit (tests/fuzz/statements.py's, constrained) --


@st.composite
def insert(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt:
    cols = _insert_cols(draw, spec, shape, f)
    verb = draw(st.sampled_from(["INSERT", "INSERT OR REPLACE", "REPLACE", "INSERT OR IGNORE"]))
    vals = ", ".join(literal(_value_for(draw, spec, shape, c, f)) for c in cols)
    names = ", ".join(ident(c) for c in cols)
    table = ident(shape.name)
    sql = f"{verb} INTO {table}({names}) VALUES ({vals})"
    if not cols:
        sql = f"{verb} INTO {table} DEFAULT VALUES"
    elif verb == "INSERT" and draw(st.booleans()):
        other = [c for c in shape.writable if c not in shape.key] or cols
        col = draw(st.sampled_from(other))
        c = ident(col)
        sql += draw(
            st.sampled_from(
                [
                    " ON CONFLICT DO NOTHING",
                    f" ON CONFLICT DO UPDATE SET {c} = excluded.{c}",
                    f" ON CONFLICT DO UPDATE SET {c} = "
                    + literal(_value_for(draw, spec, shape, col, f)),
                ]
            )
        )
    return Stmt([sql])


@st.composite
def update(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt:
    pool = [c for c in shape.writable if c not in shape.key]
    if "key_updates" in f or not pool:
        pool = list(shape.writable)
    cols = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
    sets = ", ".join(f"{ident(c)} = {literal(_value_for(draw, spec, shape, c, f))}" for c in cols)
    verb = "UPDATE OR REPLACE" if "key_updates" in f and draw(st.booleans()) else "UPDATE"
    where = _where(draw, spec, shape, f)  # values in a WHERE are not stored: any will do
    return Stmt([f"{verb} {ident(shape.name)} SET {sets}{where}"])


@st.composite
def delete(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt:
    return Stmt([f"DELETE FROM {ident(shape.name)}{_where(draw, spec, shape, f)}"])


@st.composite
def many(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt:
    cols = _insert_cols(draw, spec, shape, f)
    if not cols:
        return draw(insert(spec, shape, f))
    names = ", ".join(ident(c) for c in cols)
    sql = (
        f"INSERT OR REPLACE INTO {ident(shape.name)}({names}) VALUES ({', '.join('?' * len(cols))})"
    )
    n = draw(st.integers(1, 5))
    rows = [tuple(_value_for(draw, spec, shape, c, f) for c in cols) for _ in range(n)]
    return Stmt([sql], rows)


def dml(spec: TableSpec, shape: Shape, f: frozenset[str]) -> st.SearchStrategy[Stmt]:
    parts = [insert(spec, shape, f), insert(spec, shape, f), update(spec, shape, f)]
    parts.append(delete(spec, shape, f))
    if "executemany" in f:
        parts.append(many(spec, shape, f))
    return st.one_of(*parts)


@st.composite
def transaction(draw, specs_shapes: list[tuple[TableSpec, Shape]], f: frozenset[str]) -> Stmt:
    body = []
    for _ in range(draw(st.integers(1, 4))):
        spec, shape = draw(st.sampled_from(specs_shapes))
        s = draw(dml(spec, shape, f))
        body += [x.rstrip(";") for x in s.script()[1:]] if s.rows else s.sqls
    end = draw(st.sampled_from(["COMMIT", "ROLLBACK", "SAVEPOINT"]))
    if end == "SAVEPOINT":
        cut = draw(st.integers(0, len(body)))
        return Stmt(["SAVEPOINT sp", *body[:cut], "ROLLBACK TO sp", *body[cut:], "RELEASE sp"])
    return Stmt(["BEGIN", *body, end])


@st.composite
def schema_change(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt | None:
    """statements.ddl, but an added column's DEFAULT and the rows a rewrite puts back fit."""
    kinds = ["other"] * 3
    kinds += ["add"] if "add_column" in f else []
    kinds += ["recreate"] if "recreate" in f else []
    kind = draw(st.sampled_from(kinds))
    t = ident(shape.name)
    if kind == "add":
        name = draw(st.sampled_from(sorted(NEW_COLS)))
        decl = NEW_COLS[name] or ("ANY" if spec.strict else "")
        dflt = ""
        if (not spec.merged or "merge_defaults" in f) and draw(st.booleans()):
            dflt = " DEFAULT " + literal(draw(default_values(decl, spec.strict, f)))
        sql = f"ALTER TABLE {t} ADD COLUMN {ident(name)} {decl}{dflt}"
        return Stmt([sql.replace("  ", " ")])
    if kind == "recreate":
        body = [f"DROP TABLE {t}", *spec.create_sql(shape.name)]
        for _ in range(draw(st.integers(0, 3))):
            body += draw(insert(spec, read_spec_shape(spec, shape.name), f)).sqls
        return Stmt(["BEGIN", *body, "COMMIT"])
    rest = f - {"add_column", "recreate"}
    if "unique_drift" not in f and _has_unique(spec, shape):
        rest -= {"col_drift"}  # finding P2: a renamed UNIQUE column stops the apply
    if "drop_unique" not in f:  # finding P5: a dropped unique index stays in PostgreSQL
        made = [i for i in spec.indexes if i.startswith("CREATE INDEX ")]
        plain = {i.split(" ON ")[0].removeprefix("CREATE INDEX ") for i in made}
        shape = replace(shape, indexes=[n for n in shape.indexes if ident(n) in plain])
    return draw(ddl(spec, shape, rest))


def _has_unique(spec: TableSpec, shape: Shape) -> bool:
    """Whether a UNIQUE (a constraint, or an index made with the table or later) may
    cover a column of the table."""
    made = any(c.unique for c in spec.cols) or spec.table_unique
    return bool(made or any("UNIQUE" in ix for ix in spec.indexes) or shape.indexes)


def pg_schemas(f: frozenset[str]) -> st.SearchStrategy[list[TableSpec]]:
    """tests/fuzz/schema.py's, which with PG_FAMILIES draws nothing PostgreSQL refuses;
    without `rowid_column`, no keyless table has a column named rowid (finding P3)."""
    if "rowid_column" in f:
        return schemas(f)
    return schemas(f).filter(lambda specs: not any(_rowid_column(s) for s in specs))


def _rowid_column(spec: TableSpec) -> bool:
    return spec.key_kind == "none" and any(c.name.lower() == "rowid" for c in spec.cols)


class PgDraws(Draws):
    schemas = staticmethod(pg_schemas)
    dml = staticmethod(dml)
    transaction = staticmethod(transaction)
    ddl = staticmethod(schema_change)


def families(features: str | None = None, skip: str | None = None) -> frozenset[str]:
    """The families to draw: features.enabled()'s (CDC_FUZZ_FEATURES, CDC_FUZZ_SKIP) that a
    PostgreSQL target can hold, and the PostgreSQL-only ones (PG_ONLY) named or `all`."""
    features = os.environ.get("CDC_FUZZ_FEATURES", "all") if features is None else features
    skip = os.environ.get("CDC_FUZZ_SKIP", "") if skip is None else skip
    on, off = _names(features), _names(skip)
    mine = (set(PG_ONLY) if "all" in on else on & set(PG_ONLY)) - off
    common = enabled(",".join(on - set(PG_ONLY)) or "none", ",".join(off - set(PG_ONLY)))
    return frozenset((common & PG_FAMILIES) | mine)


def _names(text: str) -> set[str]:
    return {n.strip() for n in text.split(",") if n.strip()}


# -- the world -----------------------------------------------------------------------------


class PgWorld(World):
    """A World whose target `core` is a fresh database on `ADMIN`'s cluster."""

    ADMIN = ""  # a DSN of the cluster's maintenance database (`on`)
    draws = PgDraws

    @classmethod
    def on(cls, admin_dsn: str) -> type[PgWorld]:
        return type(cls.__name__, (cls,), {"ADMIN": admin_dsn})

    def __init__(self, features, specs, sources, wal, daemon) -> None:  # noqa: ANN001
        import psycopg

        self.db = f"fz_{uuid.uuid4().hex[:16]}"
        self.dsn = self.ADMIN.rsplit("/", 1)[0] + "/" + self.db
        with psycopg.connect(self.ADMIN, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.db}"')
        STATS["cases"] += 1
        # the initial copy goes through the log (a copy by reference is SQLite's only);
        # the verifier reads chunks of 1, 3 or all rows
        daemon = dict(daemon, snapshot_copy="log")
        self.chunk_rows = {1: 1, 3: 3}.get(daemon.get("harvest_batch"), 1000)
        try:
            super().__init__(features, specs, sources, wal, daemon)
        except BaseException:
            self._drop()
            raise

    def _write_config(self) -> str:
        text = config_text(self.sources, self.specs, self.excluded, self.daemon)
        text = text.replace('core = "out/core.db"', f'core = "{self.dsn}"')
        self.config = text.replace("[verify]\n", f"[verify]\nchunk_rows = {self.chunk_rows}\n")
        path = self.root / "cdc.toml"
        path.write_text(self.config)
        return str(path)

    def plan(self) -> None:
        """World.plan, with PostgreSQL targets accepted; a table PostgreSQL cannot make
        (refused by name) is a reject: the draws should not make one."""
        must_refuse = {s.name for s in self.specs if s.expect_refused}
        try:
            resolve_plan(load_config(self._write_config(), postgres=True))
            refused = ""
        except PlanError as e:
            refused = str(e)
        if PG_REFUSED in refused:
            STATS["reject: plan refused by PostgreSQL"] += 1
            reject()
        named = {s.name for s in self.specs if repr(s.name) in refused}
        taken = sorted(must_refuse - named)
        if taken:
            self.fail(PlanMistake, f"the plan took tables it cannot identify rows of: {taken}")
        wrong = sorted(n for n in named - must_refuse if not n.lower().startswith("_cdc_"))
        if refused and (wrong or not named):
            self.fail(PlanMistake, f"the plan refused generated tables: {refused}")
        self.excluded = must_refuse | named
        self.cfg = load_config(self._write_config(), postgres=True)

    def _guard(self, what: str, fn):  # noqa: ANN001, ANN202
        try:
            return super()._guard(what, fn)
        except PipelineCrashed as e:
            if "does not translate" in str(e.__cause__ or ""):  # PG_REFUSED, or the apply's
                STATS["reject: apply refused a table PostgreSQL cannot make"] += 1
                reject()
            raise

    # -- the judgment ------------------------------------------------------------------------
    def judge(self, plan) -> None:  # noqa: ANN001 - cdc.plan.Plan
        """The oracle against `cdc verify`'s pass (the one verifier across engines)."""
        STATS["checks"] += 1
        oracle_says = self._oracle()
        tables = [m for sp in plan.sources for m in sp.tables]
        report = self._guard("verify", lambda: verify_tables(self.cfg, plan, tables)).report
        real = {(r.source, r.table): r for r in report.tables}
        worst, lines = None, []
        for key, problems in oracle_says.items():
            r = real.get(key)
            STATS[f"verify said {r.state if r else 'absent'}"] += 1
            said = f"cdc verify: {r.state if r else 'absent'}" + (
                f" ({r.reason})" if r and r.reason else ""
            )
            if problems:
                kind = VerifierSaidEqual if r and r.state == "equal" else ReplicationDiffers
                lines.append(f"{key[0]}.{key[1]}: {said}\n  " + "\n  ".join(problems))
                worst = VerifierSaidEqual if kind is VerifierSaidEqual else worst or kind
            elif r and r.state == "diverged":
                lines.append(f"{key[0]}.{key[1]}: oracle equal; {said}")
                worst = worst or VerifierFalseAlarm
        if worst:
            self.fail(worst, "\n".join(lines))

    def _oracle(self) -> dict[tuple[str, str], list[str]]:
        import psycopg

        out = {}
        with psycopg.connect(self.dsn, autocommit=True) as pg:
            for s in self.sources:
                src = apsw.Connection(
                    str(self.root / "legacy" / f"{s}.db"), flags=apsw.SQLITE_OPEN_READONLY
                )
                try:
                    for spec in self.specs:
                        if spec.name in self.excluded:
                            continue
                        tag = (TAG_COLUMN, s) if spec.merged else None
                        out[(s, spec.name)] = compare(
                            src, spec.name, pg, target_table(spec, s), tag
                        )
                finally:
                    src.close()
        return out

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._drop()

    def _drop(self) -> None:
        import psycopg

        with psycopg.connect(self.ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


# -- the oracle ----------------------------------------------------------------------------


def _cell(v: object) -> oracle.Value:
    """A value read back through `from_pg` as the oracle's cell (class and bytes)."""
    if v is None:
        return ("null",)
    if isinstance(v, bool | int):
        return ("integer", int(v))
    if isinstance(v, float):
        return ("real", struct.pack(">d", v))
    if isinstance(v, str):
        return ("text", v.encode("utf-8"))
    return ("blob", bytes(v))


def _pg_rowid(names: list[str]) -> str | None:
    """The column a keyless table's rowid is in PostgreSQL (docs/postgres.md, The DDL)."""
    low = {n.lower() for n in names}
    return next((r for r in ("rowid", "_rowid_", "oid") if r not in low), None)


def compare(src: apsw.Connection, table: str, pg, target: str, tag) -> list[str]:  # noqa: ANN001
    """Every way the PostgreSQL table differs from the legacy table; [] when equal. As
    oracle.compare, plus each column's type: the one its affinity maps to."""
    scols = oracle.columns(src, table)
    if scols is None:
        return []  # dropped in the legacy file: its target keeps the last rows
    have_types = dict(
        pg.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (target,),
        ).fetchall()
    )
    if not have_types:
        return [f"target table {target!r} does not exist"]
    key, wr = oracle._key_and_wr(src, table)
    strict = bool(
        src.execute(
            "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?", (table,)
        ).fetchone()[0]
    )
    decl = dict(src.execute("SELECT name, type FROM pragma_table_xinfo(?)", (table,)).fetchall())
    names = [n for n in scols.names if not (tag and n.lower() in scols.generated)]
    have = {n.lower(): n for n in have_types}
    identity = oracle._identity(scols, key, wr)  # the legacy side's name for the rowid
    pg_identity = [_pg_rowid(scols.names)] if identity else []
    problems = []
    lacking = [n for n in names if n.lower() not in have]
    known = {x.lower() for x in names + pg_identity}
    extra = [n for n in have_types if n.lower() not in known]
    if tag:
        extra = [n for n in extra if n.lower() != tag[0].lower()]
    if lacking:
        problems.append(f"target lacks columns {lacking}")
    for n in pg_identity:
        if have_types.get(have.get(n.lower(), "")) != "bigint":
            problems.append(f"the rowid column {n!r} is not a bigint in the target")
    for n in names:
        want = PG_TYPE[affinity(decl.get(n) or "", strict)]
        got = have_types.get(have.get(n.lower(), ""))
        if got is not None and got != want:
            problems.append(f"column {n!r}: {got} in the target, its affinity maps to {want}")
    where, args = (f" WHERE {ident(tag[0])} = %s", (tag[1],)) if tag else ("", ())
    if extra and not tag:
        problems.append(f"target has columns the legacy table has not: {extra}")
    elif extra:
        cond = " OR ".join(f"{ident(n)} IS NOT NULL" for n in extra)
        n = pg.execute(
            f"SELECT count(*) FROM {ident(target)}{where} AND ({cond})", args
        ).fetchone()[0]
        if n:
            problems.append(f"{n} rows hold values in columns the legacy table has not: {extra}")
    common = [n for n in names if n.lower() in have]
    s = oracle.rows(src, table, identity + common)
    tcols = [have[n.lower()] for n in pg_identity + common]
    types = [have_types[c] for c in tcols]
    t: Counter = Counter()
    sel = ", ".join(ident(c) for c in tcols) or "1"
    for r in pg.execute(f"SELECT {sel} FROM {ident(target)}{where}", args):
        cells = tuple(_cell(from_pg(v, ty)) for v, ty in zip(r, types, strict=True))
        t[cells if tcols else ()] += 1
    if s != t:
        problems.append(oracle._row_diff(identity + common, s, t))
    return problems


# -- replaying a printed failure ------------------------------------------------------------


def replay(text: str, admin_dsn: str) -> None:
    """tests/fuzz/replay.py's replay, into a fresh database of the cluster at `admin_dsn`."""
    from tests.fuzz.replay import Replay, parse

    class PgReplay(Replay, PgWorld.on(admin_dsn)):
        def plan(self) -> None:
            self.cfg = load_config(self._write_config(), postgres=True)

        def _write_config(self) -> str:
            self.config = re.sub(
                r'^core = "postgres[^"]*"$', f'core = "{self.dsn}"', self.given, flags=re.M
            )
            path = self.root / "cdc.toml"
            path.write_text(self.config)
            return str(path)

    config, script = parse(text)
    w = PgReplay(config)
    source = w.sources[0]
    steps = {
        "-- cdc install": w.start,
        "-- [snapshot chunk": w.snapshot_chunk,
        "-- [harvest once]": w.harvest_once,
        "-- [apply]": w.apply,
        "-- [sync": w.check,
    }
    from tests.fuzz.world import FuzzFailure

    try:
        for ln in script:
            if ln.startswith(".open legacy/"):
                source = ln[len(".open legacy/") : -len(".db")]
            elif ln.startswith("--"):
                for prefix, step in steps.items():
                    if ln.startswith(prefix):
                        step()
            elif ln.strip():
                w.run(source, Stmt([ln.rstrip().rstrip(";")]))
        print("replayed: no failure")
    except FuzzFailure as e:
        print(str(e).split("\n\n--- reproduction ---")[0])
    finally:
        w.close()


if __name__ == "__main__":
    import logging

    from tests.support.postgres import Cluster, server_bin

    logging.disable(logging.WARNING)
    bin_dir = server_bin()
    if bin_dir is None:
        sys.exit("no PostgreSQL server installed (Debian: postgresql)")
    cluster = Cluster(bin_dir)
    try:
        with open(sys.argv[1]) as fh:
            replay(fh.read(), cluster.dsn)
    finally:
        cluster.close()
