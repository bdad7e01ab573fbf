"""A real `cdc run` replicating into PostgreSQL (issue 19): `cdc install`, the daemon as a
process, bots writing, `cdc status` showing the PostgreSQL target caught up, SIGKILL and a
restart, and the server's rows exactly the legacy ones with each event applied once;
`cdc verify` proves it across engines."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import cdc_cmd
from tests.support.logcount import count_log
from tests.support.pg_world import bot_writes as _write
from tests.support.pg_world import differences, load, make_world


def test_cdc_run_replicates_into_postgresql(tmp_path: Path, pg, daemons) -> None:
    cfg_path = make_world(tmp_path, pg)
    r = cdc_cmd("install", "-c", str(cfg_path))
    assert r.returncode == 0, r.stderr
    d = daemons(cfg_path)
    st = d.wait_synced()
    [t] = st["targets"]
    assert t["name"] == "core" and t["path"] == pg, t
    _write(tmp_path, 0, 40)
    d.wait_synced()
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    _write(tmp_path, 40, 40)  # while it is down
    d = daemons(cfg_path)
    _write(tmp_path, 80, 40)
    r = cdc_cmd("wait", "--zero-lag", "core", "-c", str(cfg_path), "--timeout", "60")
    assert r.returncode == 0, (r.stdout, r.stderr)  # caught up by capture sequences
    d.wait_synced()
    cfg, plan = load(cfg_path)
    assert differences(cfg, plan, pg) == []
    r = cdc_cmd("status", "--json", "-c", str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert d.stop() == 0, d.output()
    from checkpoints.pg_store import pg_target_state

    offset, events, _, seqs = pg_target_state(pg)
    assert events == count_log(cfg, plan).events  # each event applied once
    assert set(seqs) == {"a", "b"}
    r = cdc_cmd("verify", "-c", str(cfg_path), "--report", str(tmp_path / "reports"))
    assert r.returncode == 0, (r.stdout, r.stderr)  # every table proven equal across engines
    r = cdc_cmd("uninstall", "-c", str(cfg_path))
    assert r.returncode == 2 and "PostgreSQL target is taken only by" in r.stderr, r.stderr


def test_a_mixed_plan_replicates_both_and_verifies_the_sqlite_side(
    tmp_path: Path, pg, daemons
) -> None:
    """`log` goes to a SQLite target, the rest to PostgreSQL: both caught up, and the
    verifier proves every table equal, each by its own engine's protocol."""
    from cdc.config import load_config
    from cdc.planning.resolve import resolve_plan
    from verifier import select_tables, verify_tables

    cfg_path = make_world(tmp_path, pg)
    text = cfg_path.read_text().replace(
        "[targets]\n", f'[targets]\ncache = "{tmp_path}/cache.db"\n'
    )
    cfg_path.write_text(text + '[[rules]]\ntable = "log"\ntarget = "cache"\n')
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    d = daemons(cfg_path)
    _write(tmp_path, 0, 30)
    d.wait_synced()
    assert d.stop() == 0, d.output()
    cfg, plan = load(cfg_path)
    assert differences(cfg, plan, pg) == []  # the PostgreSQL side
    c = load_config(cfg_path, postgres=True)
    p = resolve_plan(c)
    got = {t.name: (t.state, t.reason) for t in verify_tables(c, p, select_tables(p)).report.tables}
    assert got["a.log"] == ("equal", None), got
    assert got["a.fills"] == ("equal", None) and got["b.pos"] == ("equal", None), got


def test_the_server_restarted_under_a_running_daemon(tmp_path: Path, pg, pg_cluster, daemons):
    """The PostgreSQL server stops while `cdc run` applies and bots write, and comes back:
    the daemon keeps running, retries from the target's checkpoint, and the target ends
    exactly the legacy rows with each event applied once."""
    import time

    cfg_path = make_world(tmp_path, pg)
    assert cdc_cmd("install", "-c", str(cfg_path)).returncode == 0
    d = daemons(cfg_path)
    d.wait_synced()
    _write(tmp_path, 0, 30)
    pg_cluster.stop("immediate")  # a crash of the server, mid-batch or between
    _write(tmp_path, 30, 30)
    time.sleep(1.0)
    pg_cluster.start()
    _write(tmp_path, 60, 30)
    d.wait_synced(timeout=120)
    assert d.stop() == 0, d.output()
    cfg, plan = load(cfg_path)
    assert differences(cfg, plan, pg) == []
    from checkpoints.pg_store import pg_target_state

    assert pg_target_state(pg)[1] == count_log(cfg, plan).events  # each event applied once
