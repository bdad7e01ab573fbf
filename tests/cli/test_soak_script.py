"""`bench/soak.py`, the by-hand soak, kept working: a short run on the corpus must print its
figures and find nothing lost, nothing duplicated and no bot error (exit 0)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.support.corpus import corpus_root


@pytest.mark.slow
def test_soak_script_on_the_corpus(tmp_path):
    corpus = corpus_root()
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            "--minutes",
            "0.25",
            "--corpus",
            str(corpus),
            "--work",
            str(tmp_path),
            "--bots",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    figures = dict(
        line.split(None, 1) for line in r.stdout.splitlines() if line and not line[0].isspace()
    )
    for name in ("events", "kills", "lost", "duplicated", "max"):
        assert name in figures, r.stdout
    assert figures["lost"].strip() == "0" and figures["duplicated"].strip() == "0", r.stdout
    assert int(figures["events"]) > 0 and int(figures["kills"].split()[0]) > 0, r.stdout
