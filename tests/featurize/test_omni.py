"""Omni captioner: placeholder layout against transformers' processor, vLLM requests, the tiny thinker."""

from __future__ import annotations

import types
from functools import partial

import numpy as np
import pytest

from featurize.config import FeaturizeConfig
from featurize.omni import (
    AUDIO,
    AUDIO_BOS,
    AUDIO_EOS,
    VIDEO,
    OmniCaptioner,
    build_vllm_omni_request,
    interleaved_media,
)
from featurize.pipeline import build_plan
from tests.featurize.test_captioners import VIDEO_META_KEYS, make_clip


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEWHY_CACHE", str(tmp_path_factory.mktemp("seewhy-cache")))
        yield


@pytest.mark.parametrize(
    ("thw", "spg", "n_audio"), [((4, 8, 8), 1.0, 120), ((2, 4, 6), 2 / 3, 30), ((6, 4, 4), 0.5, 200)]
)
def test_interleaving_matches_transformers_processor(thw, spg, n_audio):
    from transformers import Qwen2_5OmniProcessor as P

    fake = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=2),
        audio_bos_token=AUDIO_BOS, audio_eos_token=AUDIO_EOS, video_token=VIDEO, audio_token=AUDIO,
    )  # fmt: skip
    fake.get_chunked_index = partial(P.get_chunked_index, fake)
    video = {"video_grid_thw": [np.array(thw)], "video_second_per_grid": [spg]}
    theirs = P.replace_video_with_audio_token(
        fake, video, 0, {"num_audio_tokens": [n_audio]}, 0, position_id_per_seconds=25, seconds_per_chunk=2.0
    )
    assert interleaved_media(thw, 2, spg, n_audio, 25.0, 2.0) == theirs


def audio_of(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=round(16000 * seconds)) * 0.1).astype(np.float32)


def batch(clips, audios, errors=None) -> dict[str, np.ndarray]:
    n = len(clips)
    cols = {k: np.empty(n, dtype=object) for k in ("frames", "video_meta", "audio")}
    for i, ((f, m), a) in enumerate(zip(clips, audios)):
        cols["frames"][i], cols["video_meta"][i], cols["audio"][i] = f, m, a
    return {"item_id": np.arange(n), **cols, "decode_error": np.array(errors or [""] * n, dtype=object)}


def test_vllm_request_carries_video_audio_and_the_flag():
    frames, meta = make_clip(0)
    req = build_vllm_omni_request(frames, meta, audio_of(2.0), "Describe.", interleave=True)
    video, meta_out = req["multi_modal_data"]["video"]
    assert video is frames and set(meta_out) == VIDEO_META_KEYS and meta_out["do_sample_frames"] is False
    wave, rate = req["multi_modal_data"]["audio"]
    assert rate == 16000 and wave.dtype == np.float32 and len(wave) == 32000
    assert req["mm_processor_kwargs"] == {"use_audio_in_video": True}
    assert "<|vision_bos|><|VIDEO|><|vision_eos|>Describe." in req["prompt"] and AUDIO not in req["prompt"]
    apart = build_vllm_omni_request(frames, meta, audio_of(2.0), "Describe.", interleave=False)
    assert "<|audio_bos|><|AUDIO|><|audio_eos|><|vision_bos|><|VIDEO|>" in apart["prompt"]
    silent = build_vllm_omni_request(frames, meta, None, "Describe.", interleave=True)
    assert "audio" not in silent["multi_modal_data"] and silent["mm_processor_kwargs"] == {
        "use_audio_in_video": False
    }


@pytest.mark.parametrize("interleave", [True, False])
def test_tiny_thinker_captions_with_and_without_audio(interleave):
    cap = OmniCaptioner({"model": "tiny:qwen2.5-omni", "max_new_tokens": 6, "use_audio_in_video": interleave})
    clips = [make_clip(0), make_clip(1, t=4), make_clip(0)]
    b = batch(clips, [audio_of(5.0), None, audio_of(3.0, seed=5)])
    out = cap(b)
    assert list(out["omni_error"]) == ["", "", ""] and all(out["caption_omni"])
    # Batched (mixed audio / silent) equals one at a time, and the sound reaches the model.
    alone = [cap({k: v[i : i + 1] for k, v in b.items()})["caption_omni"][0] for i in range(3)]
    assert list(out["caption_omni"]) == alone
    assert out["caption_omni"][0] != out["caption_omni"][2]  # same frames, different audio
    bad = cap(batch([clips[0], clips[0]], [np.zeros((2, 5)), None], errors=["", "decode failed"]))
    assert "column 'audio'" in bad["omni_error"][0] and bad["omni_error"][1] == "decode: decode failed"


def test_plan_adds_the_omni_store_and_its_feature_sets():
    base = {"catalog": {"titles": "t.csv", "videos_dir": "v"}, "store_root": "s"}
    cfg = FeaturizeConfig.model_validate(
        base | {"omni": {"model": "tiny:qwen2.5-omni"}, "text_encoders": [{"model": "tiny:minilm"}]}
    )
    plan = build_plan(cfg)
    assert [s.fn.__name__ for s in plan.captions.stages] == ["Decode", "OmniCaptioner"]
    assert [s.key for s in plan.sinks()] == [
        "captions/mllm-omni.tiny-qwen2.5-omni",
        "features/title.tiny-minilm",
        "features/mllm-omni.tiny-qwen2.5-omni.tiny-minilm",
    ]
    ident = plan.captions.sinks[0].identity
    assert ident["use_audio_in_video"] is True and ident["prompt"]["name"] == "omni"
    assert plan.sources == {"caption_omni": "mllm-omni.tiny-qwen2.5-omni"}
    with pytest.raises(ValueError, match=r"\['omni'\] need audio"):
        FeaturizeConfig.model_validate(base | {"omni": {}, "decode": {"audio": False}})
