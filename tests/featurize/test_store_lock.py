"""One writer per store: the second refuses naming the holder; a dead holder's lock is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from featurize.store_lock import StoreBusyError, StoreLock

_HOLD = """
import sys, time
from featurize.store_lock import StoreLock
StoreLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A subprocess holding the lock file ``tmp_path/.s.lock`` until the test ends."""
    path = tmp_path / ".s.lock"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"held"
    yield path, proc
    proc.kill()
    proc.wait()


def test_second_writer_refuses_naming_the_holder(holder):
    path, proc = holder
    with pytest.raises(
        StoreBusyError, match=rf"store s is being written by another run \(pid {proc.pid} on .*, started 20"
    ):
        StoreLock(path, "store s").acquire()


def test_a_killed_holder_leaves_no_lock(holder):
    path, proc = holder
    proc.kill()
    proc.wait()
    # The OS dropped the dead holder's lock; a second open file in the same process is a second writer.
    with StoreLock(path), pytest.raises(StoreBusyError, match=f"pid {os.getpid()}"):
        StoreLock(path).acquire()
    with StoreLock(path):
        pass


def test_release_lets_the_next_writer_in(tmp_path):
    t0 = time.monotonic()
    for _ in range(3):
        with StoreLock(tmp_path / ".x.lock"):
            pass
    assert time.monotonic() - t0 < 5
