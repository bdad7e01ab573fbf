"""Generated legacy schemas: key kinds, collations, unique and partial and expression
indexes, STRICT, generated columns, odd names; and the cdc.toml that maps them.

A `TableSpec` is data, so the same table can be created in two legacy files (merged or
copied side by side) and created again after a DROP (the `recreate` family).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hypothesis import strategies as st

from tests.fuzz.sqltext import ident

KEY_KINDS = ["ipk", "ipk_desc", "text", "untyped", "composite", "none"]
ROWID_NAMES = ["rowid", "oid", "_rowid_"]
TAG_COLUMN = "src_tag"
BASE_TABLES = ["t0", "t1", "t2"]
ODD_TABLES = ['odd "q" tbl', "sp ace", "täble", "Order", "t.dot"]
CDC_TABLES = ["_cdc_user", "_cdc_t1_ins", "_CDC_Mixed"]
BASE_COLS = ["a", "b", "c", "v", "w"]
ODD_COLS = ["sp ace", 'q"uote', "ünï", "select", "order", "_cdc_x", "Aa", "ROWID", "oid"]
TYPES = ["", "INTEGER", "TEXT", "REAL", "BLOB", "NUMERIC", "VARCHAR(10)"]
STRICT_TYPES = ["ANY", "INTEGER", "TEXT", "REAL", "BLOB", "INT"]


@dataclass
class ColSpec:
    name: str
    decl: str = ""
    collate: str = ""
    unique: bool = False
    generated: str = ""  # "" or the full "AS (...) VIRTUAL|STORED" clause

    def sql(self) -> str:
        out = ident(self.name) + (f" {self.decl}" if self.decl else "")
        if self.collate:
            out += f" COLLATE {self.collate}"
        if self.unique:
            out += " UNIQUE"
        if self.generated:
            out += f" {self.generated}"
        return out


@dataclass(repr=False)
class TableSpec:
    name: str
    key_kind: str
    key_collate: str = "BINARY"
    without_rowid: bool = False
    strict: bool = False
    autoinc: bool = False
    cols: list[ColSpec] = field(default_factory=list)
    table_unique: list[str] = field(default_factory=list)  # a UNIQUE(...) constraint
    indexes: list[str] = field(default_factory=list)  # CREATE INDEX statements
    merged: bool = False

    def __repr__(self) -> str:  # how Hypothesis prints a drawn schema: its SQL
        return "; ".join(self.create_sql()) + (" -- merged" if self.merged else "")

    @property
    def key_cols(self) -> list[str]:
        return {"composite": ["ka", "kb"], "none": []}.get(self.key_kind, ["k"])

    @property
    def expect_refused(self) -> bool:
        """A keyless table whose columns shadow every rowid alias has no identity we can
        read: the plan must refuse it (rather than replicate it wrongly)."""
        names = {c.name.lower() for c in self.cols}
        return self.key_kind == "none" and all(n in names for n in ROWID_NAMES)

    def _key_defs(self) -> tuple[list[str], list[str]]:
        t = "ANY" if self.strict else ""
        coll = "" if self.key_collate == "BINARY" else f" COLLATE {self.key_collate}"
        kind = self.key_kind
        if kind == "ipk":
            auto = " AUTOINCREMENT" if self.autoinc else ""
            return [f'"k" INTEGER PRIMARY KEY{auto}'], []
        if kind == "ipk_desc":
            return ['"k" INTEGER PRIMARY KEY DESC'], []
        if kind == "text":
            return [f'"k" TEXT PRIMARY KEY{coll}'], []
        if kind == "untyped":
            return [f'"k" {t} PRIMARY KEY{coll}'.replace("  ", " ")], []
        if kind == "composite":
            return ['"ka" INTEGER', f'"kb" TEXT{coll}'], ['PRIMARY KEY("ka", "kb")']
        return [], []

    def create_sql(self, name: str | None = None) -> list[str]:
        """CREATE TABLE plus its CREATE INDEX statements."""
        keys, constraints = self._key_defs()
        defs = keys + [c.sql() for c in self.cols] + constraints
        if self.table_unique:
            defs.append("UNIQUE(" + ", ".join(self.table_unique) + ")")
        opts = [
            o for o, on in (("WITHOUT ROWID", self.without_rowid), ("STRICT", self.strict)) if on
        ]
        tname = ident(name or self.name)
        out = [f"CREATE TABLE {tname}({', '.join(defs)}){' ' + ', '.join(opts) if opts else ''}"]
        return out + [ix.replace("{table}", tname) for ix in self.indexes]


@st.composite
def columns(draw, features: frozenset[str], strict: bool, key_kind: str) -> list[ColSpec]:
    pool = list(BASE_COLS) + (ODD_COLS if "odd_names" in features else [])
    names = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique_by=str.lower))
    if key_kind != "none":
        names = [n for n in names if n.lower() not in ROWID_NAMES] or ["a"]
    elif "rowid_names" in features and draw(st.booleans()):
        names = [n for n in names if n.lower() not in ROWID_NAMES] + ROWID_NAMES
    elif all(any(n.lower() == r for n in names) for r in ROWID_NAMES):
        names.remove(names[-1])  # not all three: that table is the rowid_names family's
    cols = []
    for n in names:
        decl = draw(st.sampled_from(STRICT_TYPES if strict else TYPES))
        collate = ""
        if "collation" in features and decl in ("", "TEXT", "ANY") and draw(st.booleans()):
            collate = draw(st.sampled_from(["NOCASE", "RTRIM"]))
        cols.append(ColSpec(n, decl, collate))
    if "unique" in features and draw(st.booleans()):
        draw(st.sampled_from(cols)).unique = True
    if "generated" in features and draw(st.booleans()):
        src = ident(cols[0].name)
        expr = draw(
            st.sampled_from([f"typeof({src}) || 'g'", f"length({src})", f"coalesce({src}, 0) * 2"])
        )
        how = draw(st.sampled_from(["VIRTUAL", "STORED"]))
        gname = draw(st.sampled_from(["g", "gen col"] if "odd_names" in features else ["g"]))
        if gname.lower() not in {c.name.lower() for c in cols}:
            cols.append(ColSpec(gname, "ANY" if strict else "", generated=f"AS ({expr}) {how}"))
    return cols


@st.composite
def index_sql(draw, spec: TableSpec, features: frozenset[str], name: str) -> str | None:
    """One CREATE [UNIQUE] INDEX on the table (`{table}` stands for its quoted name)."""
    plain = [c for c in spec.cols if not c.generated]
    if not plain:
        return None
    col = ident(draw(st.sampled_from(plain)).name)
    kinds = ["plain"]
    if "unique" in features:
        kinds += ["unique", "unique"]
    if "partial_index" in features:
        kinds.append("partial")
    if "expr_index" in features:
        kinds.append("expr")
    kind = draw(st.sampled_from(kinds))
    term = col
    if "collation" in features and draw(st.booleans()):
        term += " COLLATE " + draw(st.sampled_from(["NOCASE", "RTRIM", "BINARY"]))
    if kind == "expr":
        term = draw(st.sampled_from([f"lower({col})", f"abs({col})", f"length({col})"]))
    where = ""
    if kind == "partial":
        where = draw(
            st.sampled_from(
                [
                    f" WHERE {col} IS NOT NULL",
                    f" WHERE typeof({col}) = 'integer'",
                    f" WHERE {col} > 0",
                ]
            )
        )
    uniq = "UNIQUE " if kind != "plain" else ""
    return f"CREATE {uniq}INDEX {ident(name)} ON {{table}}({term}){where}"


@st.composite
def table_specs(draw, name: str, features: frozenset[str]) -> TableSpec:
    kind = draw(st.sampled_from([*KEY_KINDS, "none"]))  # keyless twice: rowid identity
    without = "without_rowid" in features and kind not in ("none",) and draw(st.booleans())
    strict = "strict" in features and draw(st.integers(0, 3)) == 0
    merged = "merge" in features and kind != "none" and draw(st.booleans())
    collate = "BINARY"
    # A merged table's key under NOCASE/RTRIM: a REPLACE by a key equal to an existing
    # one but spelled differently leaves two rows in the target (docs/fuzzing.md,
    # Findings, F3): only with `merge_collation`.
    keyed_ok = not merged or "merge_collation" in features
    if "collation" in features and kind in ("text", "untyped", "composite") and keyed_ok:
        collate = draw(st.sampled_from(["BINARY", "NOCASE", "RTRIM"]))
    spec = TableSpec(name, kind, collate, without, strict)
    spec.autoinc = kind == "ipk" and not without and draw(st.booleans())
    spec.cols = draw(columns(features, strict, kind))
    plain = [c.name for c in spec.cols if not c.generated]
    if "unique" in features and len(plain) >= 2 and draw(st.integers(0, 3)) == 0:
        spec.table_unique = [ident(n) for n in plain[:2]]
    for i in range(draw(st.integers(0, 2))):
        sql = draw(index_sql(spec, features, f"ix_{name}_{i}"))
        if sql:
            spec.indexes.append(sql)
    spec.merged = merged
    return spec


@st.composite
def schemas(draw, features: frozenset[str]) -> list[TableSpec]:
    pool = list(BASE_TABLES)
    if "odd_names" in features:
        pool += ODD_TABLES
    if "cdc_names" in features:
        pool += CDC_TABLES
    names = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique_by=str.lower))
    return [draw(table_specs(n, features)) for n in names]


def _toml(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def config_text(
    sources: list[str], specs: list[TableSpec], excluded: set[str], daemon: dict[str, object]
) -> str:
    """The cdc.toml: one target, every legacy file a source, a literal rule per table."""
    lines = ['state_dir = "state"', "[targets]", 'core = "out/core.db"', "[daemon]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in daemon.items()]
    lines += ["[verify]", "settle_timeout = 1.0", "rows_per_second = 0.0", "continuous = false"]
    for s in sources:
        lines += ["[[sources]]", f"name = {_toml(s)}", f'path = "legacy/{s}.db"']
    for spec in specs:
        lines += ["[[rules]]", f"table = {_toml(spec.name)}"]
        if spec.name in excluded:
            lines.append("exclude = true")
        elif spec.merged:
            lines += ['target = "core"', "merge = true", f'tag_column = "{TAG_COLUMN}"']
        else:
            lines += ['target = "core"', 'as = "{source}_{table}"']
    return "\n".join(lines) + "\n"


def target_table(spec: TableSpec, source: str) -> str:
    return spec.name if spec.merged else f"{source}_{spec.name}"
