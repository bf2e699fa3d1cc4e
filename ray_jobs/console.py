"""What seewhy's recipes print: one plain, flushed line per event, prefixed so it stands out in Ray's
interleaved worker output and in submitted jobs' log files."""

from __future__ import annotations


def log(msg: str, prefix: str = "seewhy") -> None:
    """Print ``[prefix] msg`` and flush (job logs are files: unflushed lines arrive late or never)."""
    print(f"[{prefix}] {msg}", flush=True)
