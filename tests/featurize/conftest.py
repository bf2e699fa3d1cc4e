"""Featurize fixtures: a small catalog of generated clips (good and broken), and cheap test stages.

The test stages live here (not in a test module) so that Ray workers and the subprocess driver of the
fault-tolerance tests can import them by name (``tests.featurize.conftest``).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from featurize.config import FeaturizeConfig
from featurize.decode import Decode
from featurize.graph import Sink
from featurize.pipeline import PipelinePlan, assemble
from featurize.stage import Batch, StageSpec, upstream_error
from featurize.text_encoders import ERROR_COLUMNS, TextEmbed

GOOD = (101, 102, 103, 104, 105, 106)
BROKEN = {201: "empty", 202: "truncated", 203: "text"}
MISSING = 204  # titled, no file at all
SILENT = 107  # a video without an audio track


class FrameStats:
    """A deterministic stand-in captioner: describes the mean colour and shape of the decoded frames.

    ``crash_on`` + ``crash_marker``: the first actor that sees that item creates the marker file and
    exits the process (``os._exit``), as a segfaulting model would; the restarted actor finds the marker
    and carries on. ``sleep_s`` slows every batch down so a test can kill the driver mid-run.
    """

    name: ClassVar[str] = "testcap"
    inputs: ClassVar[tuple[str, ...]] = ("frames",)
    outputs: ClassVar[tuple[str, ...]] = ("caption_video", "testcap_error")
    upstream: ClassVar[tuple[str, ...]] = ("decode_error",)

    def __init__(self, crash_on: int | None = None, crash_marker: str | None = None, sleep_s: float = 0.0):
        self.crash_on, self.crash_marker, self.sleep_s = crash_on, crash_marker, sleep_s

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["item_id"])
        if self.crash_on is not None and self.crash_on in batch["item_id"].tolist():
            marker = Path(self.crash_marker or "")
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
        time.sleep(self.sleep_s)
        errors = upstream_error(batch, self.upstream, n)
        captions = np.full(n, "", dtype=object)
        for i in range(n):
            if errors[i]:
                continue
            f = batch["frames"][i]
            rgb = ", ".join(f"{c:.1f}" for c in f.reshape(-1, 3).mean(axis=0))
            captions[i] = f"{f.shape[0]} frames of {f.shape[2]}x{f.shape[1]}, mean colour ({rgb})"
        return batch | {"caption_video": captions, "testcap_error": errors}


class UnloadableModel(FrameStats):
    """A captioner whose model cannot load: the systemic failure that must stop a run at once."""

    def __init__(self) -> None:
        raise RuntimeError("test captioner: cannot load model tiny:does-not-exist")


class _HashEncoder:
    """8 floats from the sha256 of each text: deterministic, instant, no model."""

    def encode(self, texts: list[str]) -> np.ndarray:
        digests = [hashlib.sha256(t.encode()).digest()[:8] for t in texts]
        return (
            np.array([np.frombuffer(d, dtype=np.uint8) for d in digests], dtype=np.float32).reshape(-1, 8)
            / 255
        )


class HashTextEmbed(TextEmbed):
    """TextEmbed (same kwargs, columns and error handling) with the hash encoder instead of a model."""

    def __init__(self, encoder: Any, feature_sets: dict, error_columns: dict | None = None) -> None:
        self.sets = self.normalise_sets(feature_sets)
        self.error_columns = {**ERROR_COLUMNS, **(error_columns or {})}
        self.inputs, self.outputs = self.columns(self.sets)
        self.encoder = _HashEncoder()


VIDEO_STORE = "mllm-video.frame-stats"


def fault_config(catalog: dict[str, Any], root: str | Path, **overrides: Any) -> FeaturizeConfig:
    """Decode plus (in ``fault_plan``) FrameStats and the hash encoder, with pools that fit 2 CPUs."""
    data = {
        "catalog": {"titles": catalog["titles"], "videos_dir": catalog["videos_dir"]},
        "store_root": str(root),
        "decode": {"num_frames": 4},
        "text_encoders": [{"model": "tiny:minilm", "short_name": "hash"}],
        "resources": {
            "decode": {"batch_size": 2, "num_cpus": 0.5},
            "embed": {"batch_size": 4, "num_cpus": 0.5},
            "write": {"batch_size": 2, "num_cpus": 0.1},
        },
    }
    return FeaturizeConfig.model_validate(data | overrides)


def fault_plan(cfg: FeaturizeConfig, captioner: type = FrameStats, **frame_stats: Any) -> PipelinePlan:
    """The real decode stage, then FrameStats into VIDEO_STORE; phase B with HashTextEmbed."""
    decode = cfg.resources.decode.spec(Decode, config=cfg.decode)
    sink = Sink(
        "captions",
        VIDEO_STORE,
        "caption_video",
        ("decode_error", "testcap_error"),
        model="test:frame-stats",
        identity={"stage": "testcap", "frame_sampling": cfg.decode.model_dump()},
    )
    spec = StageSpec(
        fn=captioner, fn_constructor_kwargs=frame_stats, batch_size=2, num_cpus=0.5, max_restarts=2
    )
    plan = assemble(cfg, [decode, spec], [sink], video=VIDEO_STORE)
    text = tuple(replace(t, embed=replace(t.embed, fn=HashTextEmbed)) for t in plan.text)
    return replace(plan, text=text)


@pytest.fixture(scope="session")
def clip_catalog(tmp_path_factory) -> dict[str, Any]:
    """Six small good clips (one silent), three broken files and one missing file, with a titles CSV."""
    from featurize.testclips import make_broken, make_clip

    root = tmp_path_factory.mktemp("catalog")
    videos = root / "videos"
    videos.mkdir()
    for k, item in enumerate(GOOD):
        make_clip(
            videos / f"{item}.mp4",
            width=64,
            height=48,
            fps=10,
            seconds=1.0,
            seed=k,
            color=(40 * k, 80, 200 - 30 * k),
        )
    make_clip(videos / f"{SILENT}.mp4", width=64, height=48, fps=10, seconds=1.0, audio=False, seed=9)
    for item, kind in BROKEN.items():
        make_broken(videos / f"{item}.mp4", kind)
    titles = root / "titles.csv"
    ids = [*GOOD, SILENT, *BROKEN, MISSING]
    titles.write_text("item,title\n" + "".join(f"{i},clip number {i}\n" for i in ids))
    return {"root": root, "titles": str(titles), "videos_dir": str(videos), "ids": sorted(ids)}
