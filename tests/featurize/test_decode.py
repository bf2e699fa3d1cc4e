"""Tests of the decode stage: the right frames (read back from the index each frame carries), sizes,
windows, audio, codecs, VFR, rotation, bad files, the batch UDF and one run through Ray Data."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from pydantic import ValidationError

from featurize.decode import Decode, DecodeConfig, decode_clip, segment_centres
from featurize.testclips import CodecUnavailable, chirp_frequency, make_broken, make_clip, read_frame_index


def _indices(frames: np.ndarray, rotation: int = 0) -> list[int]:
    return [read_frame_index(np.rot90(f, -(rotation // 90))) for f in frames]


def _expected(times, window: float, count: int) -> list[int]:
    """The frame shown at each segment centre: the last one whose time is <= the target."""
    return [int(np.searchsorted(times, t + 1e-9, side="right") - 1) for t in segment_centres(window, count)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "h264": make_clip(d / "h264.mp4", codec="h264", fps=30, seconds=2.0, bframes=3),
        "silent": make_clip(d / "silent.mp4", width=160, height=90, seconds=1.0, audio=False),
        "audio_only": make_clip(d / "audio.m4a", video=False, seconds=1.5),
        "empty": make_broken(d / "empty.mp4", "empty"),
        "truncated": make_broken(d / "truncated.mp4", "truncated"),
        "text": make_broken(d / "text.mp4", "text"),
    }


def test_config_rules():
    cfg = DecodeConfig()
    assert (cfg.num_frames, cfg.fps, cfg.window_s, cfg.max_width, cfg.max_height) == (8, None, 30.0, 426, 224)
    assert (cfg.max_duration_s, cfg.audio_rate, cfg.mode) == (240.0, 16000, "exact")
    assert DecodeConfig(fps=2.0).num_frames is None  # fps alone replaces the default count
    with pytest.raises(ValidationError, match="exactly one"):
        DecodeConfig(num_frames=8, fps=2.0)
    with pytest.raises(ValidationError, match="exactly one"):
        DecodeConfig(num_frames=None)
    with pytest.raises(ValidationError, match="extra"):
        DecodeConfig(frames=8)
    with pytest.raises(ValidationError):
        cfg.num_frames = 4  # frozen
    assert "first window_s seconds" in DecodeConfig.model_fields["window_s"].description


@pytest.mark.parametrize(
    ("codec", "suffix"), [("h264", ".mp4"), ("hevc", ".mp4"), ("vp9", ".webm"), ("av1", ".mp4")]
)
def test_exact_frames_for_each_codec(tmp_path, codec, suffix):
    try:
        info = make_clip(tmp_path / f"c{suffix}", codec=codec, fps=30, seconds=2.0, gop=12)
    except CodecUnavailable as e:
        pytest.skip(str(e))
    clip = decode_clip(info.path, DecodeConfig())
    assert clip.error == ""
    expected = _expected(info.frame_times, 2.0, 8)
    assert _indices(clip.frames) == clip.meta["frames_indices"] == expected
    assert clip.frames.shape == (8, 180, 320, 3) and clip.frames.dtype == np.uint8
    assert clip.meta["codec"] == codec and clip.meta["total_num_frames"] == 60
    assert clip.meta["fps"] == pytest.approx(30.0) and clip.duration == pytest.approx(2.0, abs=0.02)
    np.testing.assert_allclose(clip.meta["frame_times"], [info.frame_times[i] for i in expected], atol=1e-3)


def test_b_frames_and_threads_give_the_same_frames(clips):
    info = clips["h264"]
    one = decode_clip(info.path, DecodeConfig(num_frames=13))
    two = decode_clip(info.path, DecodeConfig(num_frames=13, threads=2))
    assert _indices(one.frames) == _indices(two.frames) == _expected(info.frame_times, 2.0, 13)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((320, 180), (320, 180)), ((640, 360), (398, 224)), ((180, 320), (126, 224)), ((1000, 200), (426, 84))],
)
def test_frames_fit_the_box_keeping_aspect(tmp_path, size, expected):
    info = make_clip(tmp_path / "s.mp4", width=size[0], height=size[1], seconds=0.5, audio=False)
    clip = decode_clip(info.path, DecodeConfig(num_frames=3))
    assert clip.frames.shape == (3, expected[1], expected[0], 3)
    assert (clip.meta["width"], clip.meta["height"]) == expected
    assert _indices(clip.frames) == _expected(info.frame_times, 0.5, 3)


def test_frames_come_from_the_first_window_only(tmp_path):
    info = make_clip(tmp_path / "w.mp4", fps=10, seconds=6.0, audio=False)
    clip = decode_clip(info.path, DecodeConfig(num_frames=4, window_s=2.0))
    assert _indices(clip.frames) == [2, 7, 12, 17] and clip.meta["window"] == 2.0
    assert max(clip.meta["frame_times"]) < 2.0 and clip.duration == pytest.approx(6.0, abs=0.05)
    by_fps = decode_clip(info.path, DecodeConfig(fps=2.0, window_s=2.0))
    assert _indices(by_fps.frames) == [2, 7, 12, 17]


def test_audio_is_16k_mono_float32_aligned_with_the_clip(clips):
    clip = decode_clip(clips["h264"].path, DecodeConfig())
    wave = clip.audio
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == 32000
    seg = wave[8000:9600]  # 0.5 s .. 0.6 s
    peak = np.fft.rfftfreq(len(seg), 1 / 16000)[np.abs(np.fft.rfft(seg * np.hanning(len(seg)))).argmax()]
    assert abs(peak - chirp_frequency(0.55)) < 20
    short = decode_clip(clips["h264"].path, DecodeConfig(audio_window_s=1.0, audio_rate=8000))
    assert len(short.audio) == 8000
    off = decode_clip(clips["h264"].path, DecodeConfig(audio=False))
    assert off.audio is None and off.frames is not None and off.meta["has_audio"] is False


def test_variable_frame_rate_uses_timestamps(tmp_path):
    info = make_clip(tmp_path / "vfr.mp4", vfr=True, fps=20, seconds=2.0, seed=7, audio=False)
    window = info.duration
    clip = decode_clip(info.path, DecodeConfig(num_frames=10))
    expected = _expected(info.frame_times, window, 10)
    naive = [int(t * 20) for t in segment_centres(window, 10)]
    assert expected != naive  # the clip really tells the two apart
    assert _indices(clip.frames) == clip.meta["frames_indices"] == expected


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_turns_frames_upright(tmp_path, rotation):
    info = make_clip(tmp_path / "r.mp4", rotation=rotation, seconds=0.5, audio=False)
    clip = decode_clip(info.path, DecodeConfig(num_frames=4))
    shape = (224, 126) if rotation % 180 else (180, 320)
    assert clip.frames.shape[1:3] == shape and clip.meta["rotation"] == rotation
    assert _indices(clip.frames, rotation) == _expected(info.frame_times, 0.5, 4)


def test_short_clip_samples_its_whole_length(tmp_path):
    info = make_clip(tmp_path / "short.mp4", fps=30, seconds=0.4)
    clip = decode_clip(info.path, DecodeConfig())
    assert clip.meta["window"] == pytest.approx(0.4, abs=1e-3) and len(clip.frames) == 8
    assert _indices(clip.frames) == _expected(info.frame_times, clip.meta["window"], 8)
    assert len(clip.audio) == pytest.approx(0.4 * 16000, abs=2)


def test_missing_streams(clips):
    silent = decode_clip(clips["silent"].path, DecodeConfig())
    assert silent.error == "" and silent.audio is None and silent.frames.shape == (8, 90, 160, 3)
    assert silent.meta["has_audio"] is False and silent.meta["has_video"] is True
    audio_only = decode_clip(clips["audio_only"].path, DecodeConfig())
    assert audio_only.error == "" and audio_only.frames is None and len(audio_only.audio) == 24000
    assert audio_only.meta["has_video"] is False and audio_only.duration == pytest.approx(1.5, abs=0.03)
    no_audio_wanted = decode_clip(clips["audio_only"].path, DecodeConfig(audio=False))
    assert "no video stream" in no_audio_wanted.error


@pytest.mark.parametrize("kind", ["empty", "truncated", "text"])
def test_broken_files_become_errors(clips, kind):
    clip = decode_clip(clips[kind], DecodeConfig())
    assert str(clips[kind]) in clip.error and "InvalidDataError" in clip.error
    assert clip.frames is None and clip.audio is None and math.isnan(clip.duration)


def test_missing_path_and_missing_file(tmp_path):
    assert decode_clip(None, DecodeConfig()).error == "no video file for this item"
    assert "FileNotFoundError" in decode_clip(tmp_path / "nope.mp4", DecodeConfig()).error


def test_approx_picks_keyframes_near_targets(tmp_path):
    info = make_clip(tmp_path / "g.mp4", codec="hevc", fps=30, seconds=3.0, gop=10, audio=False)
    cfg = DecodeConfig(num_frames=6, mode="approx")
    clip = decode_clip(info.path, cfg)
    got = _indices(clip.frames)
    assert got == clip.meta["frames_indices"]
    assert all(i % 10 == 0 for i in got)  # keyframes only
    half_segment = 3.0 / 6 / 2
    for i, t in zip(got, segment_centres(3.0, 6)):
        assert abs(info.frame_times[i] - t) <= half_segment
    # One keyframe in the whole clip: it is near the first target only (half a segment away, at the
    # limit); the other targets are too far from it, so approx falls back to the exact frames.
    sparse = make_clip(tmp_path / "one.mp4", codec="hevc", fps=30, seconds=2.0, gop=300, audio=False)
    assert _indices(decode_clip(sparse.path, cfg).frames) == [0, *_expected(sparse.frame_times, 2.0, 6)[1:]]


def test_long_clip_is_capped(tmp_path):
    # 5 minutes at 1 fps without audio: cheap to make, longer than the 4-minute cap.
    info = make_clip(tmp_path / "long.mp4", width=160, height=90, fps=1, seconds=300, audio=False, gop=30)
    cfg = DecodeConfig(num_frames=8, window_s=1000.0)
    clip = decode_clip(info.path, cfg)
    assert clip.meta["window"] == 240.0 and clip.duration == pytest.approx(300.0, abs=0.1)
    assert _indices(clip.frames) == [15, 45, 75, 105, 135, 165, 195, 225]


def test_cap_applies_to_audio_too(clips):
    clip = decode_clip(clips["h264"].path, DecodeConfig(num_frames=4, max_duration_s=1.0))
    assert clip.meta["window"] == 1.0 and len(clip.audio) == 16000
    assert _indices(clip.frames) == _expected(clips["h264"].frame_times, 1.0, 4)


def test_videomae_frames(clips):
    clip = decode_clip(clips["h264"].path, DecodeConfig(videomae_frames=16))
    assert clip.frames16.shape == (16, 180, 320, 3)
    assert (
        _indices(clip.frames16)
        == clip.meta["frames16_indices"]
        == _expected(clips["h264"].frame_times, 2.0, 16)
    )


def _batch(paths):
    return {
        "item_id": np.arange(len(paths), dtype=np.int64),
        "video_path": np.array([None if p is None else str(p) for p in paths], dtype=object),
    }


def test_stage_keeps_good_rows_beside_bad_ones(clips):
    stage = Decode({"num_frames": 4, "videomae_frames": 16})
    assert stage.name == "decode" and "frames16" in stage.columns
    paths = [clips["h264"].path, clips["truncated"], None, clips["audio_only"].path, clips["silent"].path]
    out = stage(_batch(paths))
    assert set(out) == {"item_id", "video_path", *stage.columns}
    assert list(out["item_id"]) == [0, 1, 2, 3, 4]
    errors = list(out["decode_error"])
    assert errors[0] == errors[3] == errors[4] == "" and "truncated.mp4" in errors[1] and errors[2]
    assert out["frames"][0].shape == (4, 180, 320, 3) and out["frames16"][0].shape[0] == 16
    assert out["frames"][1] is None and out["frames"][2] is None and out["frames"][3] is None
    assert out["audio"][3].dtype == np.float32 and out["audio"][4] is None
    meta = [json.loads(m) for m in out["video_meta"]]
    assert meta[0]["frames_indices"] == [7, 22, 37, 52] and meta[3]["has_video"] is False
    assert out["duration"].dtype == np.float64 and out["duration"][0] == pytest.approx(2.0, abs=0.02)
    assert "frames16" not in Decode()(_batch(paths[:1]))


@pytest.mark.integration
def test_stage_runs_in_ray_data(ray_local, clips):
    ray = ray_local
    paths = [clips["h264"].path, clips["empty"], clips["silent"].path, None, clips["audio_only"].path]
    items = [{"item_id": i, "video_path": None if p is None else str(p)} for i, p in enumerate(paths)]
    ds = ray.data.from_items(items).map_batches(
        Decode,
        fn_constructor_kwargs={"config": DecodeConfig(num_frames=4)},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=2,
        batch_format="numpy",
    )
    rows = {r["item_id"]: r for r in ds.take_all()}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert rows[0]["decode_error"] == "" and _indices(rows[0]["frames"]) == [7, 22, 37, 52]
    assert rows[2]["frames"].shape == (4, 90, 160, 3) and rows[2]["audio"] is None
    assert "empty.mp4" in rows[1]["decode_error"] and rows[1]["frames"] is None
    assert rows[3]["decode_error"] == "no video file for this item"
    assert rows[4]["frames"] is None and len(rows[4]["audio"]) == 24000


def _late_audio_clip(path, start_s: float):
    """A 1 s 64x48 video whose audio stream starts at ``start_s`` (a hostile or broken muxer)."""
    import av

    c = av.open(str(path), "w")
    vs = c.add_stream("libx264", rate=10)
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    as_ = c.add_stream("aac", rate=16000)
    as_.layout = "mono"
    for i in range(10):
        f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
        f.pts = i
        for p in vs.encode(f):
            c.mux(p)
    for p in vs.encode(None):
        c.mux(p)
    for k in range(10):
        a = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        a.sample_rate, a.pts = 16000, int(start_s * 16000) + k * 1024
        for p in as_.encode(a):
            c.mux(p)
    for p in as_.encode(None):
        c.mux(p)
    c.close()
    return path


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("guard") / "c.mp4", width=64, height=48, fps=10, seconds=1.0)


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (
            {"max_source_pixels": 64 * 48 - 1},
            r"resolution 64x48 \(3,072 pixels\) is over decode.max_source_pixels",
        ),
        ({"max_streams": 1}, "2 streams, more than decode.max_streams = 1"),
        (
            {"max_demux_mb": 0.001},
            r"over 0.001 MiB of packets \(decode.max_demux_mb\) before the end of the window",
        ),
    ],
)
def test_memory_guards_refuse_before_decoding(small_clip, limit, message):
    clip = decode_clip(small_clip.path, DecodeConfig(num_frames=2, **limit))
    assert clip.frames is None and clip.audio is None
    assert re.search(message, clip.error) and str(small_clip.path) in clip.error
    assert decode_clip(small_clip.path, DecodeConfig(num_frames=2)).error == ""  # the defaults let it be


def test_an_absurd_stream_start_is_refused_not_padded(tmp_path):
    path = _late_audio_clip(tmp_path / "late.mp4", 5000.0)  # 5000 s of silence = 80 M samples
    clip = decode_clip(path, DecodeConfig(num_frames=2))
    assert "the audio stream starts at t = 4999.9" in clip.error and clip.audio is None
    assert "decode.max_start_offset_s = 3600 s" in clip.error
    late = decode_clip(path, DecodeConfig(num_frames=2, max_start_offset_s=1e4))
    assert late.error == "" and late.audio.shape == (30 * 16000,)  # allowed: silent 30 s window
    assert not late.audio.any()
