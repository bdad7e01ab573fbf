"""What the cutover proves under the fence, and which verdict it believes.

The final check under the fence must not take the change log's word that a table is
unchanged: a change the log never saw (something else writing to the target, a legacy
file that lost committed transactions) has to fail the cutover, also when it leaves the
row count as it was. And a repair that proved its tables equal must not be overruled by
the continuous verifier's older "diverged" until that verifier's next pass.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import apsw
import pytest

from cdc.config import load_config
from cdc.planning.resolve import resolve_plan
from cdc.stages.record import read_record
from cdc.status_file import write_json_atomic
from tests.conftest import LIVE_CONFIG, cdc_cmd, cdc_step, live_seed, wait_until
from tests.support import workload
from verifier import verify_tables
from verifier.continuous import (
    VERIFY_STATUS_FILE,
    TableVerifyState,
    VerifierStatus,
    read_verifier_status,
    record_repair_proofs,
)
from verifier.model import TableResult


def _setup(root: Path, cycle_pause: float = 600.0) -> Path:
    # a long pause between passes: no new pass of the daemon's verifier during the test
    config = LIVE_CONFIG.replace("cycle_pause = 0.2", f"cycle_pause = {cycle_pause}")
    return workload.setup(root, config, live_seed(200))


def _replicated(root: Path, pipeline_for):  # noqa: ANN001, ANN202
    """legacy/a.db (made by the test) mapped whole to out.db, installed and replicated by
    the in-process pipeline; its config and plan."""
    cfg = root / "cdc.toml"
    cfg.write_text(
        'state_dir = "state"\n[targets]\nout = "out.db"\n'
        '[[sources]]\nname = "a"\npath = "legacy/a.db"\n'
        '[[rules]]\ntable = "*"\ntarget = "out"\n'
    )
    r = cdc_cmd("install", "-c", str(cfg), cwd=root)
    assert r.returncode == 0, r.stderr
    pipeline_for(cfg).sync()
    conf = load_config(cfg)
    return conf, resolve_plan(conf)


def _synced(cfg: Path, daemons):  # noqa: ANN001, ANN202
    d = daemons(cfg)
    d.wait_synced()
    r = cdc_cmd("wait", "--zero-lag", "--timeout", "60", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    return d


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE alpha_accounts SET name = 'acct 7 ' WHERE id = 7",  # one value, same count
        "UPDATE alpha_accounts SET flags = 1.0 WHERE id = 4",  # only the storage class
        "DELETE FROM alpha_accounts WHERE id = 9",  # a row lost
    ],
)
def test_a_change_the_log_never_saw_fails_the_cutover_under_the_fence(
    tmp_path: Path, daemons, damage: str
) -> None:
    cfg = _setup(tmp_path)
    _synced(cfg, daemons)
    # Stop right after the pass before the fence proved every table equal...
    r = cdc_step("cutover", cfg, "core", kill_at="fencing")
    assert r.returncode == -9, r.stdout + r.stderr
    rec = read_record(str(tmp_path / "state"), "core")
    assert rec.state == "fencing" and "alpha.accounts" in rec.pre_verified
    # ...then change a table behind the log's back: no event records it.
    with sqlite3.connect(tmp_path / "out/core.db", timeout=30, isolation_level=None) as c:
        c.execute(damage)
    r = cdc_step("cutover", cfg, "core")
    assert r.returncode == 12, r.stdout + r.stderr
    assert "alpha.accounts diverged" in r.stderr, r.stderr
    rec = read_record(str(tmp_path / "state"), "core")
    assert rec.state == "fenced" and "alpha.accounts" in (rec.error or "")


def test_the_join_proves_every_kind_of_mapped_table_equal(
    tmp_path: Path, pipeline_for, monkeypatch
) -> None:
    """Renamed, merged (under a tag, beside the other sources' rows), AUTOINCREMENT and
    keyless tables, replicated and quiet: each proved equal by the one query over both
    files, none falling back to the digests, and one changed value found."""
    import verifier.digest
    from verifier.digest import attach_target, digest_check

    cfg = _setup(tmp_path)
    pipeline_for(cfg).sync()
    conf = load_config(cfg)
    plan = resolve_plan(conf)
    monkeypatch.setattr(verifier.digest, "SideDigest", None)
    seen = set()
    for sp in plan.sources:
        src = apsw.Connection(sp.path, flags=apsw.SQLITE_OPEN_READONLY)
        for m in sp.tables:
            tgt = apsw.Connection(plan.targets[m.target], flags=apsw.SQLITE_OPEN_READONLY)
            joined = attach_target(sp.path, plan.targets[m.target], 5000)
            try:
                res = digest_check(src, tgt, m, conf.verify, joined)
            finally:
                tgt.close()
                joined.close()
            assert (res.state, res.source_rows) == ("equal", res.target_rows), res
            seen.add(
                "merged" if m.tag_column else "renamed" if m.target_table != m.table else "same"
            )
        src.close()
    assert seen == {"merged", "renamed"}  # same-named, keyless and NULL keys: below
    m = plan.mapping("beta", "positions")
    assert m.tag_column
    with sqlite3.connect(plan.targets["core"], isolation_level=None) as out:
        out.execute(
            f"UPDATE positions SET qty = qty + 1 WHERE {m.tag_column} = 'beta' AND rowid = (SELECT min(rowid) FROM positions WHERE {m.tag_column} = 'beta')"
        )
    src = apsw.Connection(plan.source("beta").path, flags=apsw.SQLITE_OPEN_READONLY)
    tgt = apsw.Connection(plan.targets["core"], flags=apsw.SQLITE_OPEN_READONLY)
    joined = attach_target(plan.source("beta").path, plan.targets["core"], 5000)
    try:
        assert digest_check(src, tgt, m, conf.verify, joined).state == "diverged"
    finally:
        for c in (src, tgt, joined):
            c.close()


def test_a_blob_too_big_for_the_join_is_digested_instead(tmp_path: Path, pipeline_for) -> None:
    """A BLOB over the streaming size is not compared inside the join (it would be held in
    memory whole): the join declines the table and the digests, which stream it, judge."""
    from verifier.digest import attach_target, digest_check, join_check
    from verifier.model import TableResult
    from verifier.table import TableVerifier

    (tmp_path / "legacy").mkdir()
    c = sqlite3.connect(tmp_path / "legacy" / "a.db", isolation_level=None)
    c.execute("CREATE TABLE b(k INTEGER PRIMARY KEY, v BLOB)")
    c.execute("INSERT INTO b VALUES (1, zeroblob(9 << 20)), (2, X'01')")
    c.close()
    conf, plan = _replicated(tmp_path, pipeline_for)
    m = plan.mapping("a", "b")
    legacy, target = plan.source("a").path, plan.targets["out"]
    src = apsw.Connection(legacy, flags=apsw.SQLITE_OPEN_READONLY)
    tgt = apsw.Connection(target, flags=apsw.SQLITE_OPEN_READONLY)
    joined = attach_target(legacy, target, 5000)
    try:
        v = TableVerifier(src, tgt, m, conf.verify)
        assert v.prepare() is None
        assert not join_check(v.sides, joined, src, tgt, TableResult("a", "b", "out", "b"))
        res = digest_check(src, tgt, m, conf.verify, joined)
        assert (res.state, res.source_rows) == ("equal", 2) and res.source_digest
    finally:
        for conn in (src, tgt, joined):
            conn.close()


def test_a_utf16_legacy_file_is_proved_by_the_digests(tmp_path: Path, pipeline_for) -> None:
    """SQLite attaches only files of the main file's text encoding: the connections opened
    before the fence go without the joined one for a UTF-16 legacy file, whose tables the
    digests prove instead."""
    from cdc.cutover.connections import Connections
    from verifier.digest import digest_check

    (tmp_path / "legacy").mkdir()
    c = sqlite3.connect(tmp_path / "legacy" / "a.db", isolation_level=None)
    c.execute("PRAGMA encoding = 'UTF-16le'")
    c.execute("CREATE TABLE u(k TEXT PRIMARY KEY, v)")
    c.executemany("INSERT INTO u VALUES (?, ?)", [("é", 1.5), ("b", "ünï")])
    c.close()
    conf, plan = _replicated(tmp_path, pipeline_for)
    tables = plan.stage("out")
    with Connections(conf, plan, "out", tables) as conns:
        assert conns.joined == {"a": None}
        res = digest_check(conns.legacy["a"], conns.target["a"], tables[0], conf.verify, None)
        assert (res.state, res.source_rows) == ("equal", 2)


@pytest.mark.parametrize("change", [None, "legacy before the fence", "legacy under it", "target"])
def test_a_join_built_before_the_fence_stands_only_while_both_schemas_do(
    tmp_path: Path, pipeline_for, monkeypatch, change: str | None
) -> None:
    """The proof's joins are built before the fence, from both files' schemas. A DDL by
    any process after that, on either file, before or under the fence, must send the
    table back to reading its shapes: a join built for the old columns would call a
    table with a new column equal."""
    import msgspec

    from cdc.capture import fence
    from cdc.cutover.connections import Connections
    from cdc.cutover.fence_proof import _ahead, prepare_proofs
    from verifier.digest import digest_check
    from verifier.table import TableVerifier

    (tmp_path / "legacy").mkdir()
    c = sqlite3.connect(tmp_path / "legacy" / "a.db", isolation_level=None)
    c.execute("CREATE TABLE b(k INTEGER PRIMARY KEY, v)")
    c.executemany("INSERT INTO b VALUES (?, ?)", [(i, f"v{i}") for i in range(50)])
    c.close()
    conf, plan = _replicated(tmp_path, pipeline_for)
    settings = msgspec.structs.replace(conf.verify, settle_timeout=0.2)
    m = plan.mapping("a", "b")
    legacy, target = plan.source("a").path, plan.targets["out"]
    ddl = "ALTER TABLE b ADD COLUMN w DEFAULT 7"
    with Connections(conf, plan, "out", [m]) as conns:
        prepared = prepare_proofs(conf, [m], conns)
        assert set(prepared) == {("a", "b")}
        if change == "legacy before the fence":
            with sqlite3.connect(legacy, isolation_level=None) as stale:
                stale.execute(ddl)
        mark = fence.fence(conns.legacy["a"], "a", legacy, {"b": "out.db (table b)"})
        assert mark.schema_after > mark.schema_before >= 0
        if change == "legacy under it":  # the fence's triggers do not stop a DDL
            with sqlite3.connect(legacy, isolation_level=None) as stale:
                stale.execute(ddl)
        if change == "target":
            with sqlite3.connect(target, isolation_level=None) as stale:
                stale.execute("CREATE INDEX b_v ON b(v)")
        reads = []
        real = TableVerifier.prepare
        monkeypatch.setattr(TableVerifier, "prepare", lambda self: reads.append(1) or real(self))
        ahead = _ahead(mark, prepared, m)
        assert (ahead is None) == (change == "legacy before the fence")
        res = digest_check(
            conns.legacy["a"], conns.target["a"], m, settings, conns.joined["a"], ahead
        )
    assert reads == ([] if change is None else [1])  # the shapes read again after any DDL
    if change in (None, "target"):
        assert (res.state, res.source_rows, res.target_rows) == ("equal", 50, 50), res
    else:
        assert res.state != "equal", res


@pytest.mark.parametrize("compared_by", ["join", "digest"])
def test_the_proof_tells_every_storage_class_and_bit(
    tmp_path: Path, pipeline_for, monkeypatch, compared_by: str
) -> None:
    """Equal exactly when the verifier calls the rows equal: 1 is not 1.0, -0.0 is not
    0.0, a TEXT is not a BLOB of its bytes, nor another TEXT equal under the key's
    collation, and rows whose key is NULL count as a multiset; both sides compared in one
    query over both files (`join`, the cutover's way) or digested in Python."""
    import verifier.digest

    if compared_by == "join":  # every table here is compared by the join: never digested
        monkeypatch.setattr(verifier.digest, "SideDigest", None)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    c = sqlite3.connect(legacy / "a.db", isolation_level=None)
    c.executescript(
        "CREATE TABLE t(k TEXT PRIMARY KEY, v);"
        "CREATE TABLE n(k TEXT PRIMARY KEY, v);"
        "CREATE TABLE r(v);"
    )
    values = [1, 1.0, -0.0, 0.0, "x", b"x", None, 0.1 + 0.2, 2**63 - 1, "a\x00b", "ab\u00e9"]
    c.executemany("INSERT INTO t VALUES (?, ?)", [(f"k{i}", v) for i, v in enumerate(values)])
    c.executemany("INSERT INTO n VALUES (?, ?)", [(None, 1), (None, 1), (None, 2), ("a", 3)])
    c.executemany("INSERT INTO r VALUES (?)", [(v,) for v in values])
    c.execute("INSERT INTO t VALUES ('raw', CAST(X'61FF62' AS TEXT))")  # TEXT, not UTF-8
    c.execute("INSERT INTO t VALUES ('long', ?)", ("x" * 70_000,))
    c.execute("CREATE TABLE big(k TEXT COLLATE NOCASE PRIMARY KEY, v)")
    with c:  # one transaction, not 12001
        c.execute("BEGIN")
        c.executemany("INSERT INTO big VALUES (?, ?)", [(f"K{i:06}", i / 2) for i in range(12001)])
    c.close()
    conf, plan = _replicated(tmp_path, pipeline_for)
    from verifier.digest import attach_target, digest_check

    def check(table: str) -> str:
        m = plan.mapping("a", table)
        src = apsw.Connection(plan.source("a").path, flags=apsw.SQLITE_OPEN_READONLY)
        tgt = apsw.Connection(plan.targets["out"], flags=apsw.SQLITE_OPEN_READONLY)
        joined = None
        if compared_by == "join":
            joined = attach_target(plan.source("a").path, plan.targets["out"], 5000)
        try:
            res = digest_check(src, tgt, m, conf.verify, joined)
        finally:
            src.close()
            tgt.close()
            if joined is not None:
                joined.close()
        if res.state == "equal":
            n = {"t": len(values) + 2, "n": 4, "r": len(values), "big": 12001}[table]
            assert res.source_digest == res.target_digest and res.source_rows == n
        return res.state

    assert [check(t) for t in ("t", "n", "r", "big")] == ["equal"] * 4
    out = sqlite3.connect(tmp_path / "out.db", isolation_level=None)
    for i, (old, new) in enumerate(
        [
            (1, 1.0),
            (-0.0, 0.0),
            ("x", b"x"),
            (2**63 - 1, 2**63 - 2),
            ("a\x00b", "a\x00c"),
            (0.1 + 0.2, 0.3),  # one bit apart
            ("ab\u00e9", "abe\u0301"),  # the same text to a reader, other bytes
        ]
    ):
        k = f"k{values.index(old)}"
        (before,) = out.execute("SELECT v FROM t WHERE k = ?", (k,)).fetchone()
        out.execute("UPDATE t SET v = ? WHERE k = ?", (new, k))
        assert check("t") == "diverged", (i, old, new)
        out.execute("UPDATE t SET v = ? WHERE k = ?", (before, k))
        assert check("t") == "equal", (i, old)
    # a TEXT that is not UTF-8: its bytes count, and it is not the BLOB of them
    for other in ("CAST(X'61FE62' AS TEXT)", "X'61FF62'"):
        out.execute(f"UPDATE t SET v = {other} WHERE k = 'raw'")
        assert check("t") == "diverged", other
    out.execute("UPDATE t SET v = CAST(X'61FF62' AS TEXT) WHERE k = 'raw'")
    assert check("t") == "equal"
    # a long value, one byte apart
    out.execute("UPDATE t SET v = 'x' || substr(v, 2, 69998) || 'y' WHERE k = 'long'")
    assert check("t") == "diverged"
    out.execute("UPDATE t SET v = ? WHERE k = 'long'", ("x" * 70_000,))
    assert check("t") == "equal"
    # a key equal to another under the NOCASE collation, in place of it
    out.execute("UPDATE big SET k = 'k000001' WHERE k = 'K000001'")
    assert check("big") == "diverged"
    out.execute("UPDATE big SET k = 'K000001' WHERE k = 'k000001'")
    assert check("big") == "equal"
    # read in chunks: one row swapped for another far away, the count unchanged
    out.execute("DELETE FROM big WHERE k = 'K005000'")
    out.execute("INSERT INTO big VALUES ('K999999', 2500.0)")
    assert check("big") == "diverged"
    out.execute("DELETE FROM big WHERE k = 'K999999'")
    out.execute("INSERT INTO big VALUES ('K005000', 2500.0)")
    assert check("big") == "equal"
    # NULL keys: the same rows in another rowid order are equal; one changed is not
    out.execute("UPDATE n SET v = 2 WHERE v = 1 AND rowid = (SELECT min(rowid) FROM n)")
    assert check("n") == "diverged"
    out.execute("UPDATE n SET v = 1 WHERE rowid = (SELECT max(rowid) FROM n WHERE v = 2)")
    assert check("n") == "equal"
    # a keyless table is compared by rowid too
    out.execute("UPDATE r SET v = 'x' WHERE rowid = 1")
    assert check("r") == "diverged"
    out.close()


def test_a_repair_supersedes_the_verifiers_older_verdict(tmp_path: Path, daemons) -> None:
    cfg = _setup(tmp_path)
    state = str(tmp_path / "state")
    d = _synced(cfg, daemons)
    d.stop()
    # damage while the daemon is down: its verifier's first pass finds it at once
    with sqlite3.connect(tmp_path / "out/core.db", timeout=30, isolation_level=None) as c:
        c.execute("UPDATE alpha_accounts SET balance = -1 WHERE id = 5")
        c.execute("UPDATE beta_accounts SET name = 'x' WHERE id = 6")
    d = _synced(cfg, daemons)

    def first_pass_done() -> bool:
        st = read_verifier_status(state)
        return st is not None and st.current is None and st.cycle >= 1

    def verdict(source: str) -> TableVerifyState:
        st = read_verifier_status(state)
        return next(t for t in st.tables if (t.source, t.table) == (source, "accounts"))

    wait_until(first_pass_done, 60, 0.1, "the verifier's first pass")
    assert [verdict(s).state for s in ("alpha", "beta")] == ["diverged", "diverged"]
    r = cdc_cmd("cutover", "core", "-c", str(cfg), timeout=120)
    assert r.returncode == 12 and "alpha.accounts" in r.stderr, r.stdout + r.stderr

    # A repair's pass that did not prove its table equal records nothing.
    conf = load_config(cfg)
    plan = resolve_plan(conf)
    unproven = verify_tables(conf, plan, [plan.mapping("beta", "accounts")]).report.tables
    assert unproven[0].state == "diverged"
    assert record_repair_proofs(state, unproven, {("beta", "accounts"): 1}) == []
    assert verdict("beta").state == "diverged"

    r = cdc_cmd("repair", "alpha.accounts", "-c", str(cfg), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # what the daemon's verifier said is older than the repair's own proof, for that table
    acct = verdict("alpha")
    assert acct.state == "equal" and "repair" in (acct.reason or ""), acct
    assert acct.mismatches == 0 and not acct.diverged
    assert verdict("beta").state == "diverged"
    r = cdc_cmd("cutover", "core", "-c", str(cfg), timeout=120)
    assert r.returncode == 12, r.stdout + r.stderr
    assert "beta.accounts" in r.stderr and "alpha.accounts" not in r.stderr, r.stderr

    r = cdc_cmd("repair", "beta.accounts", "-c", str(cfg), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = cdc_cmd("cutover", "core", "-c", str(cfg), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_record(state, "core").state == "done"


def test_a_verdict_newer_than_the_repair_stands(tmp_path: Path) -> None:
    """Only a verdict whose pass ended before the repair's pass began is superseded: a
    pass that ended later (it overlapped the repair, or came after) may have seen a
    change the repair's pass did not."""
    state = str(tmp_path)
    proof = TableResult("a", "t", "out", "t", "equal", started_at=100.0, finished_at=110.0)
    proof.source_rows = 7
    assert len(record_repair_proofs(state, [proof], {("a", "t"): 2})) == 1

    def after(last_pass_at: float | None) -> TableVerifyState:
        st = VerifierStatus(1, 0.0, tables=[TableVerifyState("a", "t", "out", "t")])
        st.tables[0].state, st.tables[0].last_pass_at = "diverged", last_pass_at
        write_json_atomic(str(tmp_path / VERIFY_STATUS_FILE), st)
        return read_verifier_status(state).tables[0]

    older = after(99.0)
    assert (older.state, older.rows, older.last_verified_at) == ("equal", 7, 110.0)
    assert "2 keys re-sent" in (older.reason or "")
    assert after(None).state == "equal"  # never verified by the daemon yet
    assert after(105.0).state == "diverged"  # overlapped the repair's pass
    assert after(120.0).state == "diverged"  # a later pass
    # another table of the same name elsewhere is not covered by the proof
    st = VerifierStatus(1, 0.0, tables=[TableVerifyState("b", "t", "out", "t", "diverged")])
    write_json_atomic(str(tmp_path / VERIFY_STATUS_FILE), st)
    assert read_verifier_status(state).tables[0].state == "diverged"
