"""Audio LM stage (tiny Qwen2-Audio), its vLLM request, the transcript + events describer and the prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featurize.audio_lm import (
    MAX_EVENTS,
    NO_EVENTS,
    NO_SPEECH,
    AudioLM,
    AudioLMConfig,
    TranscriptEventsDescriber,
    build_vllm_audio_request,
    format_sound_events,
)
from featurize.prompts import PromptError, available, load_prompt

EVENTS = json.dumps(
    [
        {"label": "music", "start": 0.0, "end": 12.5, "score": 0.91},
        {"label": "speech", "start": 3.0, "end": 8.25, "score": 0.77},
    ]
)


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEWHY_CACHE", str(tmp_path_factory.mktemp("seewhy-cache")))
        yield


def tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def batch_of(rows: list[tuple], **errors: list[str]) -> dict[str, np.ndarray]:
    audio = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        audio[i] = r[0]
    out = {
        "item_id": np.arange(len(rows)),
        "audio": audio,
        "transcript": np.array([r[1] for r in rows], dtype=object),
        "sound_events": np.array([r[2] for r in rows], dtype=object),
    }
    return out | {k: np.array(v, dtype=object) for k, v in errors.items()}


@pytest.fixture(scope="module")
def audio_lm() -> AudioLM:
    return AudioLM({"model": "tiny:qwen2-audio", "max_new_tokens": 10, "generate_batch_size": 2})


# ---- prompts -------------------------------------------------------------------------------------------


def test_prompts_load_with_version_and_hash():
    video, audio = load_prompt("video", "v1"), load_prompt("audio", "v1")
    assert video.version == "v1" and len(video.sha256) == 64 and video.fields == ()
    for word in (
        "intent",
        "style",
        "tone",
        "humour",
        "on-screen text",
        "cultural references",
        "single coherent paragraph",
    ):
        assert word in video.text
    assert audio.fields == ("transcript", "sound_events")
    for word in ("mood", "genre", "tone", "intent"):
        assert word in audio.text
    text = audio.render(transcript="hello there", sound_events="music")
    assert "Transcript: hello there" in text and "Sound events: music" in text
    with pytest.raises(PromptError, match="expected fields"):
        audio.render(transcript="x")
    assert video.manifest()["sha256"] == video.sha256 != audio.sha256
    assert available("video") == ["v1"]
    with pytest.raises(PromptError, match=r"versions of 'video': \['v1'\]"):
        load_prompt("video", "v9")
    with pytest.raises(PromptError, match="expected a name"):
        load_prompt("../video", "v1")


# ---- request building and formatting ---------------------------------------------------------------------


def test_vllm_audio_request_shape():
    wave = tone(440, 1.0)
    req = build_vllm_audio_request(wave, "Describe it.")
    assert set(req) == {"prompt", "multi_modal_data"} and set(req["multi_modal_data"]) == {"audio"}
    audio = req["multi_modal_data"]["audio"]
    assert isinstance(audio, tuple) and audio[0] is wave and audio[1] == 16000
    assert req["prompt"] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nDescribe it.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_sound_events_formatting():
    assert format_sound_events(EVENTS) == "music 0.0-12.5 s (0.91); speech 3.0-8.2 s (0.77)"
    assert format_sound_events("dramatic music") == "dramatic music"
    assert format_sound_events("") == format_sound_events(None) == format_sound_events("[]") == NO_EVENTS
    many = json.dumps([{"label": f"e{k}", "start": 30 - k} for k in range(MAX_EVENTS + 3)])
    text = format_sound_events(many)
    assert text.startswith("e22; e21") and text.endswith("e3; and 3 more")  # the earliest, in time order
    scored = [*json.loads(many), {"label": "late", "start": 99, "score": 0.5}]
    assert format_sound_events(json.dumps(scored)).endswith("e4; late (0.50); and 4 more")  # confident kept
    with pytest.raises(ValueError, match="column 'sound_events': event 1"):
        format_sound_events(json.dumps([{"label": "a"}, {"name": "b"}]))


# ---- the audio LM on tiny Qwen2-Audio --------------------------------------------------------------------


def test_audio_lm_captions_are_deterministic_and_see_the_prompt(audio_lm, monkeypatch):
    rows = [
        (tone(220, 2.0), "hello and welcome", EVENTS),
        (tone(880, 5.0), "", ""),
        (tone(440, 1.0), "x", "music"),
    ]
    seen = []
    real = audio_lm.engine.generate
    monkeypatch.setattr(audio_lm.engine, "generate", lambda items: seen.extend(items) or real(items))
    out = audio_lm(batch_of(rows))
    assert list(out["audio_lm_error"]) == ["", "", ""]
    assert len(set(out["caption_audio"])) > 1  # audio and prompt reach the model
    assert all(isinstance(c, str) and c for c in out["caption_audio"])
    assert list(audio_lm(batch_of(rows))["caption_audio"]) == list(out["caption_audio"])
    prompts = [p for _, p in seen[:3]]
    assert "Transcript: hello and welcome" in prompts[0] and "music 0.0-12.5 s (0.91)" in prompts[0]
    assert f"Transcript: {NO_SPEECH}" in prompts[1] and f"Sound events: {NO_EVENTS}" in prompts[1]
    assert audio_lm.store_name == "mllm-audio.tiny-qwen2-audio"
    m = audio_lm.manifest()
    assert m["prompt"]["name"] == "audio" and m["prompt"]["sha256"] == load_prompt("audio", "v1").sha256


def test_audio_lm_bad_rows_and_upstream_errors(audio_lm):
    good = (tone(330, 1.5), "good row", "music")
    alone = audio_lm(batch_of([good]))["caption_audio"][0]
    rows = [
        good,
        (None, "", ""),  # no audio track
        (np.zeros((2, 100), dtype=np.float32), "", ""),  # not mono
        ((tone(330, 1) * 1000).astype(np.int16), "", ""),  # integer samples
        (tone(330, 1), "", json.dumps([{"start": 0}])),  # malformed events
        (tone(330, 1), "", ""),  # ASR failed upstream
        good,
    ]
    asr = ["", "", "", "", "", "model crashed", ""]
    out = audio_lm(batch_of(rows, asr_error=asr))
    errs = list(out["audio_lm_error"])
    assert errs[0] == errs[6] == "" and out["caption_audio"][0] == out["caption_audio"][6] == alone
    assert "column 'audio' is None" in errs[1]
    assert "column 'audio': expected a non-empty 1-D" in errs[2]
    assert "dtype int16" in errs[3]
    assert "column 'sound_events': event 0" in errs[4]
    assert errs[5] == "asr: model crashed"


def test_audio_lm_config():
    assert AudioLMConfig().model == "hf:Qwen/Qwen2-Audio-7B-Instruct"
    with pytest.raises(ValueError, match="backend"):
        AudioLMConfig(backend="onnx")
    with pytest.raises(RuntimeError, match="cannot load model tiny:qwen2-vl"):
        AudioLM({"model": "tiny:qwen2-vl"})  # a VLM is not an audio LM


def test_audio_lm_vllm_backend_without_vllm():
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here; the engine itself is tested in the vllm environment")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match=r"audio LM: cannot load model tiny:qwen2-audio \(vllm\).*vllm"):
        AudioLM({"model": "tiny:qwen2-audio", "backend": "vllm"})


# ---- the describer -----------------------------------------------------------------------------------------


def test_transcript_events_describer():
    d = TranscriptEventsDescriber()
    rows = [(tone(1, 1), " hi there ", EVENTS), (None, "", ""), (tone(1, 1), "", ""), (tone(1, 1), "x", "")]
    batch = batch_of(rows, decode_error=["", "", "", ""], events_error=["", "", "", "detector failed"])
    batch["language"] = np.array(["en", "", "", "en"], dtype=object)
    out = d(batch)
    assert list(out["caption_audio"][:3]) == [
        "Transcript (en): hi there\nSound events: music 0.0-12.5 s (0.91); speech 3.0-8.2 s (0.77)",
        "",
        f"Transcript: {NO_SPEECH}\nSound events: {NO_EVENTS}",
    ]
    errs = list(out["audio_lm_error"])
    assert errs[0] == errs[2] == "" and "column 'audio' is None" in errs[1]
    assert errs[3] == "events: detector failed" and out["caption_audio"][3] == ""
    assert d.name == AudioLM.name and d.outputs == AudioLM.outputs
