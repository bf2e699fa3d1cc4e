"""The featurize stage contract: a callable UDF class plus plain data describing how to run it.

A stage loads its model once in ``__init__`` (heavy imports happen there, not at module import),
then maps Ray Data batches in numpy format (``dict[str, np.ndarray]``, ragged values such as frames
or waveforms held in object arrays) to batches with its output columns added. A stage never raises
for one bad item: it writes the reason into its error column and leaves the value empty, so the row
flows on and ends as a ``status=error`` row in the store. A systemic failure (a model that does not
load) raises from ``__init__`` with a message naming the model reference.

Column conventions shared by every stage:
- ``item_id`` (int64), ``video_path`` (str), ``title`` (str) come from the catalog.
- A stage named ``<name>`` writes ``<name>_error`` (str, "" when ok) beside its outputs; a stage
  whose input carries an error (non-empty ``<upstream>_error``) skips that row and forwards the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

Batch = dict[str, np.ndarray]


class Stage(Protocol):
    """A featurize UDF: ``__init__`` loads once, ``__call__`` maps one batch."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[str, ...]]

    def __call__(self, batch: Batch) -> Batch: ...


@dataclass(frozen=True)
class StageSpec:
    """How to run a stage on Ray Data: the class, its constructor kwargs and its resources."""

    fn: type
    fn_constructor_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int = 1
    max_restarts: int = 2
    """How often Ray restarts a crashed actor of this pool (tasks on it are retried); -1: no bound."""
    item_time_limit_s: float | None = None
    """Time limit per item of a call (a call on n items gets n times it); None: none."""
    batch_time_limit_s: float | None = None
    """Time limit per call; None: none. Past a limit the worker is stopped and the items redone alone."""


def upstream_error(batch: Batch, columns: tuple[str, ...], n: int) -> np.ndarray:
    """Per row, the first non-empty error among ``columns`` (object array of str, "" when none)."""
    out = np.full(n, "", dtype=object)
    for col in columns:
        if col not in batch:
            continue
        errs = batch[col]
        for i in range(n):
            if not out[i] and errs[i]:
                out[i] = f"{col.removesuffix('_error')}: {errs[i]}"
    return out
