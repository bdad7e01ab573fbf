"""Shared fixtures: real SQLite files in tmp dirs, real daemon processes, no mocks.

Helpers wait for a condition with a timeout instead of sleeping a fixed time (watchdog's
test hygiene), and every daemon process a test starts is killed at teardown.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cdc.config import Config, load_config
from cdc.planning.resolve import resolve_plan
from tests.support import workload
from tests.support.corpus import copy_legacy, corpus_root, read_manifest, read_plan_json
from tests.support.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
SOAK_SCALE = float(os.environ.get("CDC_SOAK_SCALE", "1"))


def wait_until(
    cond: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_db(path: Path, script: str, wal: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = sqlite3.connect(path, isolation_level=None)
    if wal:
        c.execute("PRAGMA journal_mode=WAL")
    c.executescript(script)
    c.close()
    return path


def write_config(root: Path, text: str) -> Path:
    p = root / "cdc.toml"
    p.write_text(text)
    return p


def cdc_cmd(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


class DaemonProcess:
    """A real `cdc run` process."""

    def __init__(self, config: Path, extra_env: dict | None = None) -> None:
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", "-v", "run", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})},
        )

    def status(self) -> dict:
        r = cdc_cmd("status", "--json", "-c", str(self.config))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def wait_synced(self, timeout: float = 60) -> dict:
        def synced():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.output()}")
            st = self.status()
            ours = st["daemon"]["pid"] == self.proc.pid and st["daemon"]["state"] == "running"
            ok = (
                ours
                and all(s["backlog_events"] == 0 for s in st["sources"])
                and all(t["backlog_bytes"] == 0 for t in st["targets"])
            )
            return st if ok else None

        return wait_until(synced, timeout, 0.2, "daemon to reach zero backlog")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code

    def stop(self) -> int:
        return self.kill(signal.SIGTERM)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(autouse=True)
def _keep_umask():
    """`cdc` narrows its umask to 077 (cdc/cli/main.py); a command run in-process (click's
    CliRunner) must not leave the next test creating files only root can read."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.fixture
def daemons():
    started: list[DaemonProcess] = []

    def start(config: Path, **kw) -> DaemonProcess:
        d = DaemonProcess(config, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()  # a running one is killed; every one's log is closed


@pytest.fixture
def pipeline_for():
    """In-process harvest+apply, driven step by step (for tests about one component)."""
    made: list[Pipeline] = []

    def make(config: Path | Config) -> Pipeline:
        cfg = load_config(config) if isinstance(config, Path) else config
        p = Pipeline(cfg, resolve_plan(cfg))
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# -- the shared real-world corpus (tests/test_corpus*.py) ----------------------------------


@pytest.fixture(scope="module")
def corpus() -> Path:
    return corpus_root()


@pytest.fixture(scope="module")
def plan_json(corpus: Path) -> dict:
    return read_plan_json(corpus)


@pytest.fixture(scope="module")
def manifest(corpus: Path) -> dict[str, dict[str, int]]:
    return read_manifest(corpus)


@pytest.fixture
def legacy(corpus: Path, tmp_path: Path) -> Path:
    """A writable copy of the legacy tree (the fixtures themselves are never opened for write)."""
    return copy_legacy(corpus / "legacy", tmp_path / "legacy")


# -- the live world: three bot files, two targets, the verifier running -------------------
# (tests/verifier/test_verifier_live.py, tests/cutover/: cutover, rollback, fence proof)

LIVE_CONFIG = """
state_dir = "state"
[targets]
core = "out/core.db"
analytics = "out/analytics.db"
[daemon]
harvest_batch = 500
snapshot_chunk = 100
[verify]
chunk_rows = 100
rows_per_second = 0
cycle_pause = 0.2
settle_timeout = 5.0
[[sources]]
name = "alpha"
path = "legacy/alpha.db"
[[sources]]
name = "beta"
path = "legacy/beta.db"
[[sources]]
name = "gamma"
path = "legacy/gamma.db"
[[rules]]
table = "positions"
target = "core"
merge = true
tag_column = "bot"
[[rules]]
table = "positions"
source = "alpha"
target = "core"
as = "alpha_positions"
[[rules]]
table = "kv"
target = "core"
as = "{source}_kv"
[[rules]]
table = "accounts"
target = "core"
as = "{source}_accounts"
[[rules]]
table = "ticks"
target = "analytics"
merge = true
[[rules]]
table = "log_lines"
target = "analytics"
as = "{source}_log"
"""

# alpha's positions is copied, not merged: a bot's INSERT OR REPLACE through its UNIQUE
# symbol then relies on the probe triggers like a merged table's (the live verifier test
# found the delete a copied table lost without them), and on the verifier's suspects rule.

# Rows the bots never touch, so damage done to their copies stays until repaired.
QUIET = """
CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT, balance REAL, flags);
"""


def live_seed(rows: int) -> str:
    """QUIET's table and `rows` seed rows in positions, accounts and ticks."""
    return QUIET + "".join(
        f"INSERT INTO positions(symbol, qty, px) VALUES ('P{i}', {i}, {i * 0.5});"
        f"INSERT INTO accounts VALUES ({i}, 'acct {i}', {i * 1.25}, {i % 3});"
        f"INSERT INTO ticks VALUES ('Z{i % 4}', {i}, {i / 7});"
        for i in range(rows)
    )


@pytest.fixture
def live_cfg(tmp_path: Path) -> Path:
    """The live world in tmp_path (`workload.setup`: alpha, beta, gamma with 400 seed rows,
    LIVE_CONFIG, capture installed); its cdc.toml. No daemon, no bots yet."""
    return workload.setup(tmp_path, LIVE_CONFIG, live_seed(400))


# -- commands that may be killed at a step (cutover, rollback, finalize) ---------------


def cutover_cmd(cfg: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`cdc cutover ARGS` (`cdc_step`)."""
    return cdc_step("cutover", cfg, *args, kill_at=kill_at)


def cdc_step(
    command: str, cfg: Path, *args: str, kill_at: str | None = None
) -> subprocess.CompletedProcess:
    """`cdc COMMAND ARGS`, SIGKILLing itself right after step `kill_at` (a test hook)."""
    env = {k: v for k, v in os.environ.items() if k != "CDC_TEST_KILL_AT"}
    if kill_at:
        env["CDC_TEST_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "cdc", command, *args, "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(REPO)},
    )


# -- a disk to fill (tests of a full disk) ----------------------------------------------


class Volume:
    """A mounted tmpfs: `fill()` takes every free byte, `free()` gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Append to the filler until the volume refuses a single byte; returns the bytes
        now free (0). Call again to take what a failed writer gave back meanwhile."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
                buf = b"\0" * chunk
                try:
                    while True:
                        os.write(fd, buf)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
        return self.free_bytes()

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    @contextlib.contextmanager
    def kept_full(self):
        """Full until the block ends, then free: whatever a writer gives back meanwhile
        (a failed append taken back, an applied log segment retired) is taken again."""
        stop = threading.Event()

        def keep() -> None:
            while not stop.wait(0.02):
                self.fill()

        self.fill()
        t = threading.Thread(target=keep, name="filler", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join()
            self.free()


@pytest.fixture
def tmpfs(tmp_path):
    """`mount(path, size)`: a tmpfs of `size` at `path` (inside tmp_path), unmounted at
    teardown (lazily if something still holds a file there)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "8m") -> Volume:
        path.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                capture_output=True,
                text=True,
            )
            why = (r.stderr or r.stdout).strip() or f"mount exited {r.returncode}"
        except OSError as e:  # no mount(8) here
            r, why = None, str(e)
        if r is None or r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {why}")
        mounted.append(path)
        return Volume(path)

    yield mount
    for p in reversed(mounted):
        if subprocess.run(["umount", str(p)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(p)], capture_output=True)
