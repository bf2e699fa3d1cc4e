"""Interaction logs: read, validate and normalise them into the one frame every later stage consumes.

The canonical frame has columns ``user_id:int64, item_id:int64, timestamp:int64`` (epoch milliseconds,
UTC), sorted by ``(timestamp, user_id, item_id)`` with a fresh index. Accepted inputs:

- ``microlens_pairs``: MicroLens ``MicroLens-100k_pairs.csv``, header ``user,item,timestamp``, epoch ms.
- ``microlens_seq``: MicroLens per-user sequences (``.tsv``), ``user<TAB>item item item`` in time order,
  no header and no times. The timestamp becomes the 0-based position in the user's sequence and
  ``LoadReport.has_time`` is False: such a frame has an order but no days, so any protocol that needs
  calendar days (the rolling daily split) must check ``has_time`` and refuse it with a clear message.
- ``csv`` / ``parquet``: any table with configurable column names; ``time_unit="s"`` converts to ms.

How files are read and checked (every problem a ``DataError`` naming file, line and column) is in
``train.interaction_files``; this module validates what they hold and normalises it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from train.interaction_files import (
    MAX_LISTED,
    DataError,
    InteractionsConfig,
    detect_format,
    file_sha256,
    read_columns,
    read_seq,
)

__all__ = ["COLUMNS", "DataError", "InteractionsConfig", "LoadReport", "file_sha256", "load_interactions"]

COLUMNS = ("user_id", "item_id", "timestamp")


@dataclass
class LoadReport:
    """What loading found: counts, the first offending lines, and the file's identity for manifests."""

    path: str
    sha256: str
    has_time: bool  # False for the sequence form: timestamps are positions, there are no days
    format: str = ""  # the format read ("auto" resolved)
    n_rows_read: int = 0
    n_rows_kept: int = 0
    n_duplicates: int = 0
    duplicate_lines: list[int] = field(default_factory=list)  # first MAX_LISTED
    n_unknown_items: int = 0  # interactions whose item is missing from the catalog
    unknown_item_examples: list[int] = field(default_factory=list)  # distinct item ids, first MAX_LISTED
    unknown_items_action: str = "drop"

    def summary(self) -> str:
        """A few human-readable lines for logs and run reports."""
        lines = [
            f"{Path(self.path).name} ({self.format}): {self.n_rows_read:,} rows read, "
            f"{self.n_rows_kept:,} kept (sha256 {self.sha256[:12]}…)",
        ]
        if not self.has_time:
            lines.append("  no timestamps: order only (timestamp = position in the user's sequence)")
        if self.n_duplicates:
            lines.append(
                f"  {self.n_duplicates:,} duplicate (user, item, timestamp) rows dropped, "
                f"first at lines {self.duplicate_lines}"
            )
        if self.n_unknown_items:
            lines.append(
                f"  {self.n_unknown_items:,} interactions with items not in the catalog "
                f"({self.unknown_items_action}), e.g. items {self.unknown_item_examples}"
            )
        return "\n".join(lines)


def load_interactions(
    cfg: InteractionsConfig, catalog_items: set[int] | np.ndarray | None = None
) -> tuple[pd.DataFrame, LoadReport]:
    """Read, validate and normalise an interaction log into the canonical frame (see module docstring).

    ``catalog_items``: when given, interactions with other items are reported and handled per
    ``cfg.unknown_items``. Raises ``DataError`` on anything malformed, ``FileNotFoundError`` if absent.
    """
    path = Path(cfg.path)
    if not path.is_file():
        raise FileNotFoundError(f"interaction file not found: {path}")
    fmt = detect_format(cfg, path)
    if fmt == "microlens_seq":
        data = path.read_bytes()
        users, items, times, lines = read_seq(path, data)
        report = LoadReport(str(path), hashlib.sha256(data).hexdigest(), has_time=False, format=fmt)
    else:
        users, items, times, lines, sha = read_columns(cfg, path, fmt)
        report = LoadReport(str(path), sha, has_time=True, format=fmt)
    report.n_rows_read = len(users)
    report.unknown_items_action = cfg.unknown_items
    row_label = "row" if fmt == "parquet" else "line"

    keep = np.ones(len(users), dtype=bool)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": times})
    dup = frame.duplicated(keep="first").to_numpy()
    if dup.any():
        first = int(np.flatnonzero(dup)[0])
        if cfg.duplicates == "error":
            u, i, t = (int(frame.iat[first, k]) for k in range(3))
            same = np.flatnonzero((users == u) & (items == i) & (times == t))[0]
            raise DataError(
                path,
                f"duplicate interaction (user={u}, item={i}, timestamp={t}), same as {row_label} "
                f"{lines[same]}; set duplicates: drop to drop repeats",
                row=int(lines[first]),
                row_label=row_label,
            )
        report.n_duplicates = int(dup.sum())
        report.duplicate_lines = [int(x) for x in lines[dup][:MAX_LISTED]]
        keep &= ~dup

    if catalog_items is not None:
        known = np.asarray(sorted(catalog_items) if isinstance(catalog_items, set) else catalog_items)
        unknown = ~np.isin(items, known.astype(np.int64)) & keep
        if unknown.any():
            first = int(np.flatnonzero(unknown)[0])
            examples = pd.unique(items[unknown])[:MAX_LISTED]
            if cfg.unknown_items == "error":
                n_distinct = len(np.unique(items[unknown]))
                raise DataError(
                    path,
                    f"item {int(items[first])} is not in the catalog ({int(unknown.sum()):,} interactions "
                    f"with {n_distinct:,} unknown items); set unknown_items: drop or keep",
                    row=int(lines[first]),
                    column=cfg.item_col,
                    row_label=row_label,
                )
            report.n_unknown_items = int(unknown.sum())
            report.unknown_item_examples = [int(x) for x in examples]
            if cfg.unknown_items == "drop":
                keep &= ~unknown

    users, items, times = users[keep], items[keep], times[keep]
    order = np.lexsort((items, users, times))
    out = pd.DataFrame({"user_id": users[order], "item_id": items[order], "timestamp": times[order]})
    report.n_rows_kept = len(out)
    return out, report
