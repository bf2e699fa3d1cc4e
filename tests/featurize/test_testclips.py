"""Tests of the synthetic clip generator: the files decode, and they carry the truth tests rely on."""

from __future__ import annotations

import av
import numpy as np
import pytest

from featurize.testclips import (
    CodecUnavailable,
    chirp_frequency,
    make_broken,
    make_clip,
    read_frame_index,
)


def _clip_or_skip(path, **kw):
    try:
        return make_clip(path, **kw)
    except CodecUnavailable as e:
        pytest.skip(str(e))


def _decode_all(path):
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


@pytest.mark.parametrize(
    ("codec", "suffix"), [("h264", ".mp4"), ("hevc", ".mp4"), ("vp9", ".webm"), ("av1", ".mp4")]
)
def test_every_frame_carries_its_index(tmp_path, codec, suffix):
    info = _clip_or_skip(tmp_path / f"c{suffix}", codec=codec, width=160, height=90, fps=15, seconds=1.0)
    frames = _decode_all(info.path)
    assert len(frames) == info.num_frames == 15
    assert [read_frame_index(f.to_ndarray(format="rgb24")) for f in frames] == list(range(15))
    assert frames[0].width == 160 and frames[0].height == 90
    with av.open(str(info.path)) as c:
        assert c.streams.video[0].codec_context.codec.canonical_name == codec
        assert len(c.streams.audio) == 1


def test_index_survives_resize_and_overlays(tmp_path):
    info = make_clip(
        tmp_path / "t.mp4", width=320, height=180, seconds=0.5, pattern="topic", seed=3, text="cats"
    )
    for i, f in enumerate(_decode_all(info.path)):
        assert read_frame_index(f.to_ndarray(format="rgb24", width=96, height=54)) == i


def test_frames_move_and_topics_differ(tmp_path):
    a = _decode_all(make_clip(tmp_path / "a.mp4", pattern="topic", seed=1, seconds=0.2).path)
    b = _decode_all(make_clip(tmp_path / "b.mp4", pattern="topic", seed=2, seconds=0.2).path)
    a0, a1, b0 = (f.to_ndarray(format="rgb24")[60:].astype(int) for f in (a[0], a[5], b[0]))
    assert np.abs(a0 - a1).mean() > 2  # the pattern slides between frames
    assert np.abs(a0.mean(axis=(0, 1)) - b0.mean(axis=(0, 1))).max() > 10  # another seed, another colour


def test_gop_sets_keyframe_interval(tmp_path):
    info = make_clip(tmp_path / "g.mp4", codec="hevc", fps=30, seconds=2.0, gop=15, bframes=0, audio=False)
    with av.open(str(info.path)) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert len(keys) == 60 and [i for i, k in enumerate(keys) if k] == [0, 15, 30, 45]


def test_vfr_timestamps_follow_frame_times(tmp_path):
    info = make_clip(tmp_path / "v.mp4", vfr=True, fps=20, seconds=1.5, seed=5)
    gaps = np.diff(info.frame_times)
    assert len(set(np.round(gaps, 4))) > 1  # really variable
    times = [float(f.pts * f.time_base) for f in _decode_all(info.path)]
    np.testing.assert_allclose(times, info.frame_times, atol=1e-3)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_display_metadata(tmp_path, rotation):
    info = make_clip(tmp_path / "r.mp4", rotation=rotation, seconds=0.2)
    frame = _decode_all(info.path)[0]
    assert frame.rotation % 360 == rotation and (frame.width, frame.height) == (320, 180)


def test_audio_is_a_chirp_at_44k(tmp_path):
    info = make_clip(tmp_path / "a.mp4", seconds=2.0)
    with av.open(str(info.path)) as c:
        stream = c.streams.audio[0]
        assert (stream.codec_context.name, stream.sample_rate, stream.channels) == ("aac", 44100, 2)
        wave = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    seg = wave[44100 : 44100 + 4410]  # 1.0 s .. 1.1 s
    peak = np.fft.rfftfreq(len(seg), 1 / 44100)[np.abs(np.fft.rfft(seg * np.hanning(len(seg)))).argmax()]
    assert abs(peak - chirp_frequency(1.05)) < 20


def test_audio_only_and_video_only(tmp_path):
    audio_only = make_clip(tmp_path / "a.m4a", video=False, seconds=1.0)
    with av.open(str(audio_only.path)) as c:
        assert (len(c.streams.video), len(c.streams.audio)) == (0, 1)
    assert audio_only.num_frames == 0 and audio_only.codec == "none"
    silent = make_clip(tmp_path / "v.mp4", audio=False, seconds=0.5)
    with av.open(str(silent.path)) as c:
        assert (len(c.streams.video), len(c.streams.audio)) == (1, 0)


@pytest.mark.parametrize("kind", ["empty", "truncated", "text"])
def test_broken_files_do_not_open(tmp_path, kind):
    path = make_broken(tmp_path / f"{kind}.mp4", kind)
    assert path.exists()
    with pytest.raises(av.error.FFmpegError):
        av.open(str(path))


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_clip(tmp_path / "x.mp4", width=161)
    with pytest.raises(ValueError, match="video, audio or both"):
        make_clip(tmp_path / "x.mp4", video=False, audio=False)
    with pytest.raises(ValueError, match="unknown codec"):
        make_clip(tmp_path / "x.mp4", codec="theora")
    with pytest.raises(ValueError, match="unknown broken-file kind"):
        make_broken(tmp_path / "x.mp4", "corrupt")
