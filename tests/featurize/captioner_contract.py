"""The captioner contract: what the VLM captioner and the audio LM promise whatever their backend.

``CaptionerContract`` holds the cases; a test module subclasses it once per backend and provides the
``vlm`` and ``audio_lm`` fixtures (stages built on the tiny checkpoints of ``build_checkpoints``):
``tests/featurize/test_captioner_contract.py`` for transformers (main env),
``tests/vllm/test_vllm_contract.py`` for vLLM (``.venv-vllm``). Same inputs, same output columns, same
error texts for rows refused before the model, an error row (and untouched neighbours) for a clip the
model itself rejects, deterministic captions that depend on the input and do not depend on the batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from featurize.audio_lm import AudioLM
from featurize.captioners import VLMCaptioner
from featurize.prompts import load_prompt

CHECKPOINTS = ("qwen2.5-vl", "qwen2-audio")
VIDEO_OUT = ("caption_video", "vlm_error")
AUDIO_OUT = ("caption_audio", "audio_lm_error")
EVENTS = json.dumps([{"label": "music", "start": 0.0, "end": 1.5, "score": 0.9}])


def build_checkpoints(root: Path) -> dict[str, Path]:
    """Tiny random Qwen2.5-VL and Qwen2-Audio checkpoints built now under ``root`` (featurize.tiny_models:
    head_dim 32, Qwen2-Audio weights under the names vLLM loads)."""
    from featurize.tiny_models import tiny_model_dir

    return {name: tiny_model_dir(name, cache_dir=root) for name in CHECKPOINTS}


def video_clip(seed: int, t: int = 4, h: int = 96, w: int = 160) -> tuple[np.ndarray, str]:
    """A colour gradient drifting over time (distinct per seed), with decode-style window metadata."""
    base = np.random.default_rng(seed).uniform(0, 255, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [
        np.clip(base + (xx[..., None] * (k + 1) + yy[..., None] * (seed + 1)) % 97, 0, 255) for k in range(t)
    ]
    idx = [int((k + 0.5) * 30 / t) for k in range(t)]
    meta = {"fps": 10.0, "duration": 3.0, "total_num_frames": 30, "frames_indices": idx, "window": 30.0}
    return np.stack(frames).astype(np.uint8), json.dumps(meta)


def video_batch(
    clips: list[tuple[Any, Any]], decode_errors: list[str] | None = None
) -> dict[str, np.ndarray]:
    frames, metas = np.empty(len(clips), dtype=object), np.empty(len(clips), dtype=object)
    for i, (f, m) in enumerate(clips):
        frames[i], metas[i] = f, m
    return {
        "item_id": np.arange(len(clips), dtype=np.int64),
        "title": np.array([f"clip {i}" for i in range(len(clips))], dtype=object),
        "frames": frames,
        "video_meta": metas,
        "decode_error": np.array(decode_errors or [""] * len(clips), dtype=object),
    }


def tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def audio_batch(
    rows: list[tuple[Any, str, str]], asr_errors: list[str] | None = None
) -> dict[str, np.ndarray]:
    audio = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        audio[i] = r[0]
    return {
        "item_id": np.arange(len(rows), dtype=np.int64),
        "audio": audio,
        "transcript": np.array([r[1] for r in rows], dtype=object),
        "sound_events": np.array([r[2] for r in rows], dtype=object),
        "asr_error": np.array(asr_errors or [""] * len(rows), dtype=object),
    }


def check_columns(batch: dict, out: dict, outputs: tuple[str, ...]) -> None:
    """Inputs pass through untouched; each output is an object column of strings, one per row."""
    assert set(out) == set(batch) | set(outputs)
    for col in batch:
        assert out[col] is batch[col]
    for col in outputs:
        assert out[col].dtype == object and len(out[col]) == len(batch["item_id"])
        assert all(isinstance(v, str) for v in out[col])


class CaptionerContract:
    """The cases; subclasses set ``backend`` and provide the ``vlm`` and ``audio_lm`` fixtures."""

    backend: ClassVar[str]

    # ---- video -------------------------------------------------------------------------------------------

    def test_video_columns_and_deterministic_captions(self, vlm: VLMCaptioner):
        assert vlm.cfg.backend == self.backend
        batch = video_batch([video_clip(0), video_clip(1, t=3), video_clip(2, h=224, w=426)])
        out = vlm(batch)
        check_columns(batch, out, VIDEO_OUT)
        assert list(out["vlm_error"]) == ["", "", ""]
        assert all(out["caption_video"]), "every good clip gets a non-empty caption"
        assert len(set(out["caption_video"])) > 1, "the frames reach the model"
        assert list(vlm(batch)["caption_video"]) == list(out["caption_video"])
        for i in range(3):  # a clip's caption does not depend on its batch
            alone = video_batch([(batch["frames"][i], batch["video_meta"][i])])
            assert vlm(alone)["caption_video"][0] == out["caption_video"][i]

    def test_video_bad_rows_fail_alone_with_the_same_reasons(self, vlm: VLMCaptioner):
        good0, good1 = video_clip(10), video_clip(11)
        alone = vlm(video_batch([good0, good1]))["caption_video"]
        wide_meta = {"fps": 10.0, "duration": 3.0, "total_num_frames": 30, "frames_indices": [5, 20]}
        wide = (np.full((2, 2, 426, 3), 128, dtype=np.uint8), json.dumps(wide_meta))
        rows = [
            good0,
            (None, "{}"),  # decode failed upstream
            (None, "{}"),  # no video
            (good0[0].astype(np.float32), good0[1]),
            (good0[0], json.dumps({"fps": 10.0, "duration": 1.0})),
            (good0[0], "not json"),
            (good0[0], "[1, 2]"),
            wide,  # passes our checks; the model's processor refuses it (aspect ratio 213 > 200)
            good1,
        ]
        out = vlm(video_batch(rows, ["", "x.mp4: cannot open", "", "", "", "", "", "", ""]))
        errs = list(out["vlm_error"])
        assert errs[0] == errs[8] == ""
        assert list(out["caption_video"][[0, 8]]) == list(alone)
        assert errs[1] == "decode: x.mp4: cannot open"
        assert errs[2] == "ValueError: no frames (column 'frames' is None: the item has no decodable video)"
        assert errs[3].startswith(
            "ValueError: column 'frames': expected a non-empty uint8 array, got float32"
        )
        assert errs[4].startswith("ValueError: column 'video_meta': missing key(s) ['total_num_frames'")
        assert errs[5].startswith("ValueError: column 'video_meta': not a JSON object")
        assert errs[6] == "ValueError: column 'video_meta': expected a JSON object, got list"
        assert "aspect ratio" in errs[7] and "200" in errs[7], errs[7]
        assert all(out["caption_video"][i] == "" for i in range(1, 8))

    def test_video_empty_and_all_failed_batches_skip_the_model(self, vlm: VLMCaptioner, monkeypatch):
        calls = []
        real = vlm.engine.generate
        monkeypatch.setattr(vlm.engine, "generate", lambda reqs: calls.append(reqs) or real(reqs))
        empty = vlm(video_batch([]))
        assert all(len(empty[c]) == 0 for c in VIDEO_OUT)
        out = vlm(video_batch([(None, "{}"), (None, "{}")], ["a: x", "b: y"]))
        assert list(out["vlm_error"]) == ["decode: a: x", "decode: b: y"] and not calls

    def test_video_store_and_manifest(self, vlm: VLMCaptioner):
        assert vlm.store_name == f"mllm-video.{Path(vlm.cfg.model).name.lower()}"
        m = vlm.manifest()
        assert m["backend"] == self.backend and not m["stand_in"]
        assert m["prompt"]["sha256"] == load_prompt("video", "v1").sha256

    # ---- audio -------------------------------------------------------------------------------------------

    def test_audio_columns_and_deterministic_captions(self, audio_lm: AudioLM):
        assert audio_lm.cfg.backend == self.backend
        rows = [
            (tone(220, 2.0), "hello and welcome", EVENTS),
            (tone(880, 1.0), "", ""),
            (tone(440, 0.5), "x", ""),
        ]
        batch = audio_batch(rows)
        out = audio_lm(batch)
        check_columns(batch, out, AUDIO_OUT)
        assert list(out["audio_lm_error"]) == ["", "", ""] and all(out["caption_audio"])
        assert len(set(out["caption_audio"])) > 1, "audio and prompt reach the model"
        assert list(audio_lm(batch)["caption_audio"]) == list(out["caption_audio"])
        for i, row in enumerate(rows):
            assert audio_lm(audio_batch([row]))["caption_audio"][0] == out["caption_audio"][i]

    def test_audio_bad_rows_fail_alone_with_the_same_reasons(self, audio_lm: AudioLM):
        good = (tone(330, 1.5), "good row", "music")
        alone = audio_lm(audio_batch([good]))["caption_audio"][0]
        rows = [
            good,
            (None, "", ""),
            (np.zeros((2, 100), dtype=np.float32), "", ""),
            ((tone(330, 1) * 1000).astype(np.int16), "", ""),
            (tone(330, 1), "", json.dumps([{"start": 0}])),
            (tone(330, 1), "", ""),
            good,
        ]
        out = audio_lm(audio_batch(rows, ["", "", "", "", "", "model crashed", ""]))
        errs = list(out["audio_lm_error"])
        assert errs[0] == errs[6] == "" and out["caption_audio"][0] == out["caption_audio"][6] == alone
        assert errs[1] == "ValueError: no audio (column 'audio' is None: the item has no audio track)"
        assert errs[2] == "ValueError: column 'audio': expected a non-empty 1-D float32 array, got (2, 100)"
        assert errs[3] == "ValueError: column 'audio': expected float samples at 16 kHz, got dtype int16"
        assert errs[4].startswith("ValueError: column 'sound_events': event 0 is {'start': 0}")
        assert errs[5] == "asr: model crashed"
        assert all(out["caption_audio"][i] == "" for i in range(1, 6))

    def test_audio_store_and_manifest(self, audio_lm: AudioLM):
        assert audio_lm.store_name == f"mllm-audio.{Path(audio_lm.cfg.model).name.lower()}"
        m = audio_lm.manifest()
        assert m["backend"] == self.backend and m["prompt"]["sha256"] == load_prompt("audio", "v1").sha256
