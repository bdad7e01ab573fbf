"""What the planning tests share: the `cdc inventory` and `cdc plan` commands as an operator
runs them, a target's objects as SQLite lists them, and how an inventory is looked into."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from cdc.planning.inventory_format import DatabaseReport, Inventory
from cdc.planning.mapping import MappingRow, read_mapping
from tests.conftest import cdc_cmd


def inventory_rows(root: Path, out: Path) -> list[MappingRow]:
    """`cdc inventory ROOT --out OUT`, and the mapping rows it wrote."""
    r = cdc_cmd("inventory", str(root), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    return read_mapping(out / "migration_mapping.csv")


def plan_cli(work: Path, mapping: str, *extra: str) -> subprocess.CompletedProcess:
    """`cdc plan` over WORK/inventory.json and WORK/MAPPING, writing WORK/cdc.toml."""
    return cdc_cmd(
        "plan",
        "--inventory",
        str(work / "inventory.json"),
        "--mapping",
        str(work / mapping),
        "--out",
        str(work / "cdc.toml"),
        *extra,
    )


def schema_objects(conn) -> list[tuple]:  # noqa: ANN001 - an apsw connection
    """Every object of a target but SQLite's and sqlite-cdc's own, comparable across files."""
    return sorted(
        conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite%' "
            "AND name NOT LIKE '\\_cdc\\_%' ESCAPE '\\'"
        ).fetchall()
    )


DOT_EXE = shutil.which("dot")


def db_named(inv: Inventory, rel: str) -> DatabaseReport:
    return next(d for d in inv.databases if d.relpath == rel)


def tables_of(inv: Inventory, rel: str) -> dict:
    return {t.name: t for t in db_named(inv, rel).tables}


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root with its mtime and content hash: proof nothing was written."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = (
                p.stat().st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out
