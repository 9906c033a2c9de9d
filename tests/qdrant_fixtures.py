"""What tests/test_qdrant.py and tests/test_qdrant_cluster.py share: the SciFact data and its
fixtures, the small adapter's training settings, and the harness that SIGKILLs an export
running in a child process mid-way.

A test module uses the fixtures by importing them (``from qdrant_fixtures import scifact``);
each importing module gets its own module-scoped instance, as if it had defined them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from csr_index import CSRConfig
from csr_index.io import read_embeddings

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"
CORPUS = DATA / "corpus.parquet"
QUERIES = DATA / "queries.parquet"
TOL = 1e-5

requires_scifact = pytest.mark.skipif(not CORPUS.exists(), reason=f"SciFact data not found at {DATA}")
"""A module's ``pytestmark``: every test here reads SciFact."""


def adapter_config() -> CSRConfig:
    """The adapter trained on SciFact once per module: small and fast (quality is irrelevant for parity)."""
    return CSRConfig(steps=20, batch_size=256, warmup_steps=1, device="cpu", seed=0)


@pytest.fixture(scope="module")
def scifact():
    """SciFact docs (vectors, keys, and the id/text table)."""
    return read_embeddings(CORPUS)


@pytest.fixture(scope="module")
def qvecs():
    """The 300 SciFact query vectors."""
    return read_embeddings(QUERIES).vectors


# ------------------------------------------------------------------ kill harness
CHECKPOINTS = r"""
import logging, sys, time

report_after, hold_after, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]


class Checkpoints(logging.Handler):
    # says READY after `report_after` batches; blocks after `hold_after` until killed
    seen = 0

    def emit(self, record):
        if record.getMessage().startswith("batch at row"):
            Checkpoints.seen += 1
            if Checkpoints.seen == report_after:
                print("READY", flush=True)
            if Checkpoints.seen == hold_after:
                time.sleep(600)  # never finish: the parent kills this process


log = logging.getLogger("csr_index.integrations.qdrant")
log.setLevel(logging.DEBUG)
log.addHandler(Checkpoints())
"""
"""The start of every child program: its first two arguments are the checkpoints, ``args`` the rest."""


def run_and_kill(export: str, report_after: int, hold_after: int, args: Sequence, delay: float = 0.0) -> None:
    """Run the Python source ``export`` in a child process, after :data:`CHECKPOINTS` (which leaves
    ``args``, as strings, in the variable ``args``), and SIGKILL it ``delay`` seconds after it has
    sent ``report_after`` batches. The child holds (sleeps) once it has sent ``hold_after`` batches,
    so it is killed mid-export, never after it finished."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHECKPOINTS + export, str(report_after), str(hold_after),
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", f"child did not reach the checkpoint: {line!r} {proc.stderr.read()}"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child finished before it was killed"
