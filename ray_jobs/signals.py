"""Ctrl-C and SIGTERM for long-running commands: stop at once, keep what is on disk, leave no process behind.

Inside ``stop_cleanly`` the first SIGINT or SIGTERM interrupts the main thread, prints how to resume
(finished arms and Ray Train checkpoints are files that the same command picks up again), shuts Ray
down and ends every process this one started (the local Ray's GCS, raylet, dashboard, runtime-env and
dashboard agents, workers), then exits with 128 + the signal number. A second signal exits at once.
Without this, Ctrl-C waited for the training threads to finish, and Ray's own SIGTERM handler left the
local Ray's agents running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SHUTDOWN_WAIT_S = 20.0
"""How long Ray may take to stop before the remaining child processes are killed."""


class Stopped(BaseException):
    """Raised in the main thread by the first signal (a BaseException: ``except Exception`` lets it pass)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_cleanly(command: str) -> Iterator[None]:
    """Run the block; on SIGINT/SIGTERM stop as the module docstring says (never returns then)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    stopping = threading.Event()

    def handler(signum, frame):
        if stopping.is_set():
            os._exit(128 + signum)
        stopping.set()
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    except Stopped as e:
        print(
            f"\n[seewhy] {e}: stopping {command}. Finished work and the last checkpoint are kept; "
            "resume with the same command.",
            file=sys.stderr,
            flush=True,
        )
        stop_children()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + e.signum)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_children(wait_s: float = SHUTDOWN_WAIT_S) -> None:
    """Shut Ray down, then terminate (and after a grace period kill) every process this one started."""
    import psutil

    me = psutil.Process()
    children = me.children(recursive=True)  # before Ray stops: orphans would leave the tree
    done = threading.Event()

    def shutdown() -> None:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            done.set()

    threading.Thread(target=shutdown, daemon=True).start()
    done.wait(wait_s / 2)
    children += [c for c in me.children(recursive=True) if c not in children]
    alive = [c for c in children if c.is_running()]
    for c in alive:
        with contextlib.suppress(psutil.Error):
            c.terminate()
    _, alive = psutil.wait_procs(alive, timeout=wait_s / 2)
    for c in alive:
        with contextlib.suppress(psutil.Error):
            c.kill()
