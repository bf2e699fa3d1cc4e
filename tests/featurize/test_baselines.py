"""Paper baselines: tiny VideoMAE and CLAP stand-ins (shapes, norms, determinism, sensitivity to input),
their preprocessing (resize/crop/normalise, 16 -> 48 kHz windows), bad rows, and refusing hub models offline."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from featurize.asr import SAMPLE_RATE
from featurize.baselines import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CLAPConfig,
    CLAPEmbed,
    VideoMAEConfig,
    VideoMAEEmbed,
    resize_crop,
)


def cells(values: list) -> np.ndarray:
    """An object column holding ``values`` as they are (np.array would broadcast equal-shaped arrays)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def clip(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, h, w, 3), dtype=np.uint8)


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


@pytest.fixture(scope="module")
def videomae() -> VideoMAEEmbed:
    return VideoMAEEmbed({"model": "tiny:videomae", "device": "cpu"})


@pytest.fixture(scope="module")
def clap() -> CLAPEmbed:
    return CLAPEmbed({"model": "tiny:clap", "device": "cpu"})


def test_config_checks():
    assert VideoMAEConfig().model == "hf:MCG-NJU/videomae-large"
    assert CLAPConfig().model == "hf:laion/clap-htsat-unfused"
    with pytest.raises(ValidationError, match="valid: 'tiny:videomae'"):
        VideoMAEConfig(model="tiny:clap")
    with pytest.raises(ValidationError, match="valid: 'tiny:clap'"):
        CLAPConfig(model="tiny:videomae")
    with pytest.raises(ValidationError, match="window_s"):
        CLAPConfig(window_s=5)


def test_resize_crop_shapes_and_normalisation():
    grey = np.full((16, 224, 398, 3), 128, dtype=np.uint8)
    x = resize_crop(grey, 224, IMAGENET_MEAN, IMAGENET_STD)
    assert tuple(x.shape) == (16, 3, 224, 224)
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), expected, atol=1e-4)
    portrait = resize_crop(np.zeros((16, 426, 240, 3), np.uint8), 224, IMAGENET_MEAN, IMAGENET_STD)
    assert tuple(portrait.shape) == (16, 3, 224, 224)


def test_videomae_vectors(videomae):
    frames = [clip(224, 398, 0), clip(240, 426, 1), clip(426, 240, 2)]
    out = videomae({"frames16": cells(frames)})
    vecs = np.stack(list(out["vec_videomae"]))
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32 and list(out["videomae_error"]) == [""] * 3
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.abs(vecs[0] - vecs[1]).max() > 1e-3  # different clips, different vectors
    again = VideoMAEEmbed({"model": "tiny:videomae", "device": "cpu"})({"frames16": np.stack([frames[0]])})
    np.testing.assert_allclose(again["vec_videomae"][0], vecs[0], atol=1e-6)  # fixed seed, batch-independent


def test_videomae_bad_rows(videomae):
    good = clip(224, 398, 0)
    batch = {
        "frames16": cells([good, None, good[:8], good.astype(np.float32), good]),
        "decode_error": np.array(["", "", "", "", "moov atom not found"], dtype=object),
    }
    out = videomae(batch)
    errors, vecs = list(out["videomae_error"]), out["vec_videomae"]
    assert errors[0] == "" and vecs[0].shape == (32,)
    assert errors[1] == "ValueError: column 'frames16' is None: the item has no decoded video"
    assert (
        errors[2] == "ValueError: column 'frames16': expected uint8 [16, H, W, 3], got uint8 (8, 224, 398, 3)"
    )
    assert errors[3].endswith("got float32 (16, 224, 398, 3)")
    assert errors[4] == "decode: moov atom not found"
    assert all(v is None for v in vecs[1:])


def test_clap_windows(clap):
    assert clap.rate == 48_000 and clap.window == 480_000
    assert [len(w) for w in clap.prepare(noise(3.0, 0))] == [144_000]
    windows = clap.prepare(noise(25.0, 0))  # 0-10 s, 10-20 s, and 15-25 s (aligned to the end)
    assert [len(w) for w in windows] == [480_000] * 3
    np.testing.assert_array_equal(windows[2][-1000:], clap.prepare(noise(25.0, 0))[2][-1000:])


def test_clap_vectors(clap):
    audio = [noise(3.0, 0), noise(25.0, 1), noise(3.0, 2)]
    out = clap({"audio": cells(audio)})
    vecs = np.stack(list(out["vec_clap"]))
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32 and list(out["clap_error"]) == [""] * 3
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    again = CLAPEmbed({"model": "tiny:clap", "device": "cpu"})({"audio": cells([audio[1]])})
    np.testing.assert_allclose(again["vec_clap"][0], vecs[1], atol=1e-5)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    sine = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    other = clap({"audio": np.stack([sine])})["vec_clap"][0]
    assert np.abs(other - vecs[0]).max() > 1e-3


def test_clap_bad_rows(clap):
    batch = {
        "audio": cells([noise(2.0, 0), None, np.zeros((2, 5), np.float32), noise(2.0, 0)]),
        "decode_error": np.array(["", "", "", "av error"], dtype=object),
    }
    out = clap(batch)
    errors = list(out["clap_error"])
    assert errors[0] == "" and out["vec_clap"][0].shape == (32,)
    assert errors[1] == "ValueError: column 'audio' is None or empty: the item has no audio track"
    assert errors[2].startswith("ValueError: column 'audio': expected a 1-D float32 waveform")
    assert errors[3] == "decode: av error"


@pytest.mark.parametrize(
    ("stage", "ref"),
    [(VideoMAEEmbed, "hf:MCG-NJU/videomae-large"), (CLAPEmbed, "hf:laion/clap-htsat-unfused")],
)
def test_hub_models_fail_loudly_offline(stage, ref):
    # No hub here: the stage must stop naming the model, never fall back to a tiny stand-in.
    with pytest.raises(RuntimeError, match=ref):
        stage({"model": ref, "device": "cpu"})
