"""The real VLM and audio-LM stages with a record of each construction and call, for the graph tests.

Each instance writes ``<record_dir>/<stage>-<pid>-<id>.json``: the engine env the actor inherited and
the one its engine ran with, the engine class, and per call the batch size (and, for audio, the clip
lengths in seconds at 16 kHz). Kept out of conftest.py so Ray workers import nothing else by name.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from featurize.audio_lm import SAMPLE_RATE, AudioLM
from featurize.captioners import VLMCaptioner
from featurize.stage import Batch

ENV_KEYS = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")


class Recorded:
    """Mixin: records the construction (engine and env) and every batch of the stage it precedes."""

    def __init__(self, config: dict[str, Any], record_dir: str) -> None:
        inherited = {k: os.environ.get(k) for k in ENV_KEYS}
        super().__init__(config)  # type: ignore[call-arg]
        self.file = Path(record_dir) / f"{self.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.record: dict[str, Any] = {
            "pid": os.getpid(),
            "inherited_env": inherited,
            "engine_env": {k: os.environ.get(k) for k in ENV_KEYS},
            "engine": type(self.engine).__name__,
            "calls": [],
        }
        self.file.write_text(json.dumps(self.record))

    def describe(self, batch: Batch) -> dict[str, Any]:
        return {"rows": len(batch["item_id"])}

    def __call__(self, batch: Batch) -> Batch:
        out = super().__call__(batch)  # type: ignore[misc]
        self.record["calls"].append(self.describe(batch))
        self.file.write_text(json.dumps(self.record))
        return out


class RecordedVLM(Recorded, VLMCaptioner):
    pass


class RecordedAudioLM(Recorded, AudioLM):
    def describe(self, batch: Batch) -> dict[str, Any]:
        # A row without audio may arrive as NaN rather than None (an all-None column of a block).
        seconds = [
            len(w) / SAMPLE_RATE if isinstance(w, np.ndarray) and w.ndim == 1 else None
            for w in batch["audio"]
        ]
        return {"rows": len(batch["item_id"]), "audio_s": seconds}


def read_records(record_dir: Path, stage: str) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted(record_dir.glob(f"{stage}-*.json"))]
