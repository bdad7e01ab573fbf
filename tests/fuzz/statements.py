"""Bot workloads: DML and DDL drawn against the table's shape as it is *now* in the legacy
file (read back after every step), so the drift a previous step made is written to."""

from __future__ import annotations

from dataclasses import dataclass, field

import apsw
from hypothesis import strategies as st

from tests.fuzz.schema import ROWID_NAMES, ColSpec, TableSpec, index_sql
from tests.fuzz.sqltext import BLOBS, SMALL_INTS, TEXTS, ident, key_values, literal, values


@dataclass
class Shape:
    """A legacy table as SQLite describes it now."""

    name: str
    writable: list[str]  # not generated, in table order
    decl: dict[str, str]
    key: list[str]
    without_rowid: bool
    indexes: list[str]

    @property
    def rowid(self) -> str | None:
        if self.without_rowid:
            return None
        names = {c.lower() for c in self.decl}
        return next((r for r in ROWID_NAMES if r not in names), None)


def read_shape(conn: apsw.Connection, table: str) -> Shape | None:
    cols = conn.execute(
        "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?) ORDER BY cid", (table,)
    ).fetchall()
    if not cols:
        return None
    wr = conn.execute(
        "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?", (table,)
    ).fetchone()
    indexes = [
        n
        for (n,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL ORDER BY name",
            (table,),
        )
    ]
    key = [c[0] for c in sorted((c for c in cols if c[2]), key=lambda c: c[2])]
    return Shape(
        table,
        [c[0] for c in cols if c[3] == 0],
        {c[0]: c[1] for c in cols},
        key,
        bool(wr and wr[0]),
        indexes,
    )


@dataclass(repr=False)
class Stmt:
    """One bot action: SQL statements run one by one (a failing one is kept in the script
    with its error), or one statement run with `executemany` over `rows`."""

    sqls: list[str]
    rows: list[tuple] = field(default_factory=list)

    def __repr__(self) -> str:  # how Hypothesis prints a drawn statement: its SQL
        return "; ".join(self.script())

    def script(self) -> list[str]:
        if not self.rows:
            return list(self.sqls)
        out = ["-- executemany of the next statements (one prepared INSERT, bound values)"]
        parts = self.sqls[0].split("?")  # no generated name holds a "?"
        for r in self.rows:
            text = parts[0] + "".join(literal(v) + p for v, p in zip(r, parts[1:], strict=True))
            out.append(text + ";")
        return out


def _key_kind(spec: TableSpec, col: str) -> str:
    if spec.key_kind == "composite":
        return "int" if col == "ka" else "text"
    return spec.key_kind


def _value_for(draw, spec: TableSpec, shape: Shape, col: str, f: frozenset[str]):
    if col in shape.key and spec.key_kind != "none":
        if spec.merged and "merge_null_keys" not in f:
            f = f - {"null_keys"}  # documented: a NULL key in a merged table stops the apply
        return draw(key_values(_key_kind(spec, col), spec.key_collate, f))
    return draw(values(f))


def _where(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> str:
    """Rows to touch: by key, by a column's value, by rowid, or all of them."""
    choices = ["col", "all"]
    if shape.key:
        choices += ["key", "key", "key"]
    if shape.rowid:
        choices += ["rowid", "rowid"]
    how = draw(st.sampled_from(choices))
    if how == "key":
        return " WHERE " + " AND ".join(
            f"{ident(k)} = {literal(_value_for(draw, spec, shape, k, f))}" for k in shape.key
        )
    if how == "rowid":
        return f" WHERE {shape.rowid} = {draw(st.integers(1, 6))}"
    if how == "col":
        col = draw(st.sampled_from(shape.writable))
        return f" WHERE {ident(col)} IS {literal(_value_for(draw, spec, shape, col, f))}"
    return ""


def _insert_cols(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> list[str]:
    cols = [c for c in shape.writable if c not in shape.key]
    cols = draw(st.lists(st.sampled_from(cols), unique=True, max_size=len(cols))) if cols else []
    keys = list(shape.key)
    null_ok = "null_keys" in f and (not spec.merged or "merge_null_keys" in f)
    omit_ok = spec.key_kind == "ipk" or (null_ok and spec.key_kind == "ipk_desc")
    if keys and omit_ok and draw(st.booleans()):
        keys = []  # the key is chosen by SQLite (or left NULL: INTEGER PRIMARY KEY DESC)
    cols = keys + cols
    return cols or ([] if not shape.writable else [shape.writable[0]])


def _no_replace(spec: TableSpec, f: frozenset[str]) -> bool:
    """A REPLACE by an untyped key equal in value, not in class (2 -> 2.0), then an UPDATE
    of that key in the same harvest leaves the old row in the target (docs/fuzzing.md,
    Findings, F6): such tables get no REPLACE unless `numeric_replace` is on."""
    return spec.key_kind == "untyped" and "numeric_keys" in f and "numeric_replace" not in f


@st.composite
def insert(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt:
    cols = _insert_cols(draw, spec, shape, f)
    verbs = ["INSERT", "INSERT OR REPLACE", "REPLACE", "INSERT OR IGNORE"]
    if _no_replace(spec, f):
        verbs = ["INSERT", "INSERT OR IGNORE"]
    verb = draw(st.sampled_from(verbs))
    vals = ", ".join(literal(_value_for(draw, spec, shape, c, f)) for c in cols)
    names = ", ".join(ident(c) for c in cols)
    sql = f"{verb} INTO {ident(shape.name)}({names}) VALUES ({vals})"
    if not cols:
        sql = f"{verb} INTO {ident(shape.name)} DEFAULT VALUES"
    elif verb == "INSERT" and draw(st.booleans()):
        other = [c for c in shape.writable if c not in shape.key] or cols
        col = draw(st.sampled_from(other))
        sql += draw(
            st.sampled_from(
                [
                    " ON CONFLICT DO NOTHING",
                    f" ON CONFLICT DO UPDATE SET {ident(col)} = excluded.{ident(col)}",
                    f" ON CONFLICT DO UPDATE SET {ident(col)} = "
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
    verb = "UPDATE"
    if "key_updates" in f and not _no_replace(spec, f) and draw(st.booleans()):
        verb = "UPDATE OR REPLACE"
    return Stmt([f"{verb} {ident(shape.name)} SET {sets}{_where(draw, spec, shape, f)}"])


@st.composite
def delete(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt:
    return Stmt([f"DELETE FROM {ident(shape.name)}{_where(draw, spec, shape, f)}"])


@st.composite
def many(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt:
    """executemany of one prepared INSERT [OR REPLACE] (bound values, no BadText)."""
    cols = _insert_cols(draw, spec, shape, f - {"utf8"})
    if not cols:
        return draw(insert(spec, shape, f))
    marks = ", ".join("?" * len(cols))
    verb = "INSERT" if _no_replace(spec, f) else "INSERT OR REPLACE"
    sql = f"{verb} INTO {ident(shape.name)}({', '.join(ident(c) for c in cols)}) VALUES ({marks})"
    n = draw(st.integers(1, 5))
    rows = [tuple(_value_for(draw, spec, shape, c, f - {"utf8"}) for c in cols) for _ in range(n)]
    return Stmt([sql], rows)


def dml(spec: TableSpec, shape: Shape, f: frozenset[str]) -> st.SearchStrategy[Stmt]:
    parts = [insert(spec, shape, f), insert(spec, shape, f), update(spec, shape, f)]
    parts.append(delete(spec, shape, f))
    if "executemany" in f:
        parts.append(many(spec, shape, f))
    return st.one_of(*parts)


@st.composite
def transaction(draw, specs_shapes: list[tuple[TableSpec, Shape]], f: frozenset[str]) -> Stmt:
    """BEGIN ... COMMIT or ROLLBACK, or a SAVEPOINT rolled back in part."""
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


# An added column's type follows from its name, and a renamed column's new name from its
# old one: the same change made in two merged sources never gives one column two kinds of
# value (the plan refuses that, and a restarted daemon stops on it).
NEW_COLS = {"n1": "TEXT", "n2": "INTEGER", "added col": "", "ñew": "REAL", "z": "BLOB"}


@st.composite
def ddl(draw, spec: TableSpec, shape: Shape, f: frozenset[str]) -> Stmt | None:
    """One schema change of the families enabled (None when none applies)."""
    t = ident(shape.name)
    plain = [c for c in shape.writable if c not in shape.key]
    kinds = []
    if "add_column" in f:
        kinds.append("add")
    if "col_drift" in f and plain:
        kinds += ["rename", "drop"]
    # A merged table's column rename or drop and a new unique index seen in one harvest:
    # the index is never probed (docs/fuzzing.md, Findings, F7): only with
    # `merge_drift_index`.
    drift_index = spec.merged and "col_drift" in f and "merge_drift_index" not in f
    if "late_index" in f and not drift_index:
        kinds += ["index", "index"] + (["drop_index"] if shape.indexes else [])
    # A reset of a composite-key table whose rows hold NULL in the key can lose a row
    # (docs/fuzzing.md, Findings, F4): only with `reset_null_keys`.
    null_reset = spec.key_kind == "composite" and "null_keys" in f
    if "recreate" in f and (not null_reset or "reset_null_keys" in f):
        kinds.append("recreate")
    if "vacuum" in f:
        kinds.append("vacuum")
    if not kinds:
        return None
    kind = draw(st.sampled_from(kinds))
    if kind == "add":
        name = draw(st.sampled_from(sorted(NEW_COLS)))
        decl = NEW_COLS[name] or ("ANY" if spec.strict else "")
        dflt = ""
        if spec.merged and "merge_defaults" not in f:
            pass  # a merged target's DEFAULT would reach the other sources' rows
        elif draw(st.booleans()):
            dflt = " DEFAULT " + literal(draw(_default(decl, f)))
        return Stmt([f"ALTER TABLE {t} ADD COLUMN {ident(name)} {decl}{dflt}".replace("  ", " ")])
    if kind == "rename":
        old = draw(st.sampled_from(plain))
        new = old + draw(st.sampled_from(["_r", " r"]))
        return Stmt([f"ALTER TABLE {t} RENAME COLUMN {ident(old)} TO {ident(new)}"])
    if kind == "drop":
        return Stmt([f"ALTER TABLE {t} DROP COLUMN {ident(draw(st.sampled_from(plain)))}"])
    if kind == "index":
        now = TableSpec(shape.name, spec.key_kind, cols=[ColSpec(c) for c in shape.writable])
        sql = draw(index_sql(now, f | {"unique"}, draw(st.sampled_from(["lix1", "lix2", "l ix"]))))
        return Stmt([sql.replace("{table}", t)]) if sql else None
    if kind == "drop_index":
        return Stmt([f"DROP INDEX {ident(draw(st.sampled_from(shape.indexes)))}"])
    if kind == "recreate":
        keep = draw(st.integers(0, 3))
        body = [f"DROP TABLE {t}", *spec.create_sql(shape.name)]
        for _ in range(keep):
            body += draw(insert(spec, read_spec_shape(spec, shape.name), f)).sqls
        return Stmt(["BEGIN", *body, "COMMIT"])
    return Stmt(["VACUUM"])


def _default(decl: str, f: frozenset[str]) -> st.SearchStrategy:
    """A DEFAULT for an added column: any value with `default_affinity`, else one the
    column's affinity keeps as it is (rows older than the ALTER read it converted)."""
    if "default_affinity" in f or decl in ("", "ANY"):
        return values(f - {"big_values", "utf8"})
    return {  # BLOB: a STRICT table refuses another class (on the target, if it has rows)
        "TEXT": TEXTS,
        "INTEGER": SMALL_INTS,
        "REAL": st.sampled_from([0.5, -1.5, 1e-300]),
        "BLOB": BLOBS,
    }[decl]


def read_spec_shape(spec: TableSpec, name: str) -> Shape:
    """The shape a freshly created `spec` has (for the rows a rewrite puts back)."""
    writable = spec.key_cols + [c.name for c in spec.cols if not c.generated]
    decl = {c: "" for c in spec.key_cols} | {c.name: c.decl for c in spec.cols}
    return Shape(name, writable, decl, spec.key_cols, spec.without_rowid, [])
