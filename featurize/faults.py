"""Poison pills and time limits: an item that kills or hangs its worker becomes an error row, not a stuck job.

Ray Data restarts a crashed stage actor and retries its task on the same input, so an item that
crashes its worker every time (a segfault in a decoder, an out-of-memory kill, ``os._exit``) would
be retried until the restarts ran out and the run stopped, and every rerun would queue it again.
``ItemGuard`` wraps each stage call inside the actor:

1. Before a batch it writes an *in-flight record* (the item ids, pid, time limit) durably under
   ``<store root>/.featurize/inflight/<phase>/<stage>/``, and deletes it when the call returns.
2. A record still there when the same ids come back means the worker died on them: each of its items
   gets a death (with the reason, below) in ``deaths/<item>.json``, and the record is dropped.
3. A batch holding an item with a death is processed one item at a time, each under its own record,
   so the culprit is found alone. An item that died ``MAX_DEATHS`` (2) times, or that ran past its
   time limit alone, is not processed again: it leaves the stage as an error row
   ("worker died while processing this item (2 times): <last error>"), and the job goes on.

Time limits use ``faulthandler.dump_traceback_later(exit=True)``: a C watchdog thread that needs no
GIL, so it stops a worker hung inside native code too; it writes the stuck Python stack to the
actor's trace file and exits, which the next attempt reads as the reason of the death. Segfaults
leave their stack in the same file (``faulthandler.enable``). The records are per store root and the
stores' write locks keep one run per root, so a record is never another live run's.

``run_featurize`` deletes a phase's folder once the phase completes (its error rows are in the
stores by then, and a rerun does not retry them unless ``retry_errors``); a stopped or killed run
keeps it, so the next run goes on counting.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featurize.durable import write_text_atomic
from featurize.stage import Batch

MAX_DEATHS = 2
"""Deaths of a worker while an item was in flight after which the item becomes an error row."""


def time_limit(n: int, item_s: float | None, batch_s: float | None) -> float | None:
    """The limit of a call on ``n`` items: ``item_s`` per item and/or ``batch_s`` per call (the smaller)."""
    limits = [x for x in (item_s * n if item_s else None, batch_s) if x]
    return min(limits) if limits else None


class ItemGuard:
    """In-flight records, death counts and time limits of one stage actor (see the module docstring)."""

    def __init__(
        self,
        folder: str,
        stage: str,
        item_time_limit_s: float | None = None,
        batch_time_limit_s: float | None = None,
    ) -> None:
        self.stage = stage
        self.dir = Path(folder) / stage
        (self.dir / "deaths").mkdir(parents=True, exist_ok=True)
        self.item_s, self.batch_s = item_time_limit_s, batch_time_limit_s
        self.error_column = f"{stage}_error"
        self._trace = open(self.dir / f"trace-{os.getpid()}.txt", "w")  # noqa: SIM115 (lives with the actor)
        faulthandler.enable(self._trace)

    def __call__(self, fn: Callable[[Batch], Batch], batch: Batch) -> Batch:
        """``fn(batch)``, or its rows one at a time with error rows for the items that must not run."""
        ids = [int(i) for i in np.asarray(batch["item_id"])]
        self._settle(ids)
        deaths = {i: self._deaths(i) for i in ids}
        if not any(d["count"] for d in deaths.values()):
            return self._attempt(fn, batch, ids)
        parts = []
        for k, item in enumerate(ids):
            row = {c: v[k : k + 1] for c, v in batch.items()}
            self._settle([item])
            reason = self._verdict(self._deaths(item))
            outputs = getattr(fn, "columns", None) or getattr(fn, "outputs", ())
            parts.append(
                _error_row(row, outputs, self.error_column, reason)
                if reason
                else self._attempt(fn, row, [item])
            )
        return _stack(parts)

    # -- records -----------------------------------------------------------------------------------
    def _record(self, ids: list[int]) -> Path:
        key = hashlib.sha1(np.sort(np.asarray(ids, np.int64)).astype("<i8").tobytes()).hexdigest()[:20]
        return self.dir / f"inflight-{key}.json"

    def _attempt(self, fn: Callable[[Batch], Batch], batch: Batch, ids: list[int]) -> Batch:
        record = self._record(ids)
        limit = time_limit(len(ids), self.item_s, self.batch_s)
        info = {"ids": ids, "pid": os.getpid(), "started": time.time(), "limit_s": limit}
        write_text_atomic(record, json.dumps(info))
        if limit:
            self._trace.seek(0)
            self._trace.truncate()
            faulthandler.dump_traceback_later(limit, exit=True, file=self._trace)
        try:
            return fn(batch)
        finally:  # not reached when the worker dies: the record stays and tells the next attempt
            if limit:
                faulthandler.cancel_dump_traceback_later()
            record.unlink(missing_ok=True)

    def _settle(self, ids: list[int]) -> None:
        """Turn a left-over record of exactly ``ids`` (its worker died) into a death of each item."""
        record = self._record(ids)
        try:
            info = json.loads(record.read_text())
        except FileNotFoundError:
            return
        except ValueError:  # torn by the death itself: the ids are still ours
            info = {"ids": ids}
        timed_out, reason = _death_reason(self.dir, info)
        for item in info.get("ids", ids):
            d = self._deaths(item)
            d["count"] += 1
            d["last"] = reason
            d["timed_out_alone"] = d.get("timed_out_alone", False) or (timed_out and len(info["ids"]) == 1)
            write_text_atomic(self.dir / "deaths" / f"{item}.json", json.dumps(d))
        record.unlink(missing_ok=True)

    def _deaths(self, item: int) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "deaths" / f"{item}.json").read_text())
        except (FileNotFoundError, ValueError):
            return {"count": 0, "last": "", "timed_out_alone": False}

    def _verdict(self, d: dict[str, Any]) -> str:
        """The error of an item that must not be processed again, or "" to try it (alone)."""
        if d.get("timed_out_alone"):
            return f"{d['last']}; the worker was stopped"
        if d["count"] >= MAX_DEATHS:
            return f"worker died while processing this item ({d['count']} times): {d['last']}"
        return ""


def _death_reason(folder: Path, info: dict[str, Any]) -> tuple[bool, str]:
    """(timed out?, reason) of the death of the worker that left record ``info``, from its trace file."""
    pid = info.get("pid")
    text = ""
    with contextlib.suppress(OSError):
        text = (folder / f"trace-{pid}.txt").read_text(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    frame = next((ln for ln in lines if ln.startswith("File ")), "")
    where = f" (in {frame})" if frame else ""
    if lines and lines[0].startswith("Timeout ("):
        return True, f"over its time limit of {info.get('limit_s') or 0:g} s{where}"
    fatal = next((ln for ln in lines if ln.startswith("Fatal Python error")), "")
    if fatal:
        return False, f"{fatal}{where}"[:200]
    return False, (
        f"the worker process (pid {pid}) exited without a Python error "
        "(a crash in native code, os._exit, or an out-of-memory kill)"
    )


def _error_row(row: Batch, outputs: tuple[str, ...], column: str, reason: str) -> Batch:
    """The input row with the stage's ``outputs`` empty (None) and its error ``column`` set to ``reason``."""
    empty = {c: np.asarray([None], dtype=object) for c in outputs if c not in row}
    return {**row, **empty, column: np.asarray([reason], dtype=object)}


def _stack(parts: list[Batch]) -> Batch:
    """One batch from single-row batches whose columns may differ (error rows lack stage outputs)."""
    columns: dict[str, None] = {}
    for p in parts:
        columns.update(dict.fromkeys(p))
    out: Batch = {}
    for c in columns:
        values = [p[c][0] if c in p else None for p in parts]
        if all(c in p for p in parts) and all(p[c].dtype != object for p in parts):
            out[c] = np.concatenate([p[c] for p in parts])
            continue
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        out[c] = arr
    return out
