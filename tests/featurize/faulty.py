"""Fault-injection stand-in stages for the fault-tolerance tests and the chaos benchmark.

Importable by name from Ray workers (``tests.featurize.faulty``). Each behaves as ``FrameStats`` (a
deterministic captioner) except on the items it is told to misbehave on, every time it sees them.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar

from featurize.stage import Batch
from tests.featurize.conftest import FrameStats


class Misbehaving(FrameStats):
    """``FrameStats`` that kills its worker (``os._exit``, as a segfaulting decoder would) on the items
    in ``poison`` and hangs (sleeps far past any time limit) on those in ``hang``, on every attempt."""

    name: ClassVar[str] = "testcap"

    def __init__(
        self, poison: tuple[int, ...] = (), hang: tuple[int, ...] = (), sleep_s: float = 0.0
    ) -> None:
        super().__init__(sleep_s=sleep_s)
        self.poison, self.hang = set(poison), set(hang)

    def __call__(self, batch: Batch) -> Batch:
        ids = set(batch["item_id"].tolist())
        if ids & self.poison:
            os._exit(3)
        if ids & self.hang:
            time.sleep(3600)
        return super().__call__(batch)
