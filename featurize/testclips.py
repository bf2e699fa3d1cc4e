"""Synthetic test clips: small, deterministic video files generated with PyAV in milliseconds.

Tests of every package, the demo and the decode benchmark need real encoded videos (H.264, HEVC, VP9,
AV1, with or without AAC audio, rotated, variable frame rate) without shipping binary fixtures. Each
frame carries its own index as a binary code in a strip along its top edge, so a test can check that
the frame a decoder returned for index i really is frame i (``read_frame_index``). The audio track is
a chirp whose frequency encodes time (``chirp_frequency``), so a test can check where audio starts.
``make_broken`` writes the kinds of bad files a catalog meets in practice.
"""

from __future__ import annotations

import colorsys
import fractions
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Codec = Literal["h264", "hevc", "vp9", "av1"]
Pattern = Literal["bars", "topic"]

CODE_BITS = 12
"""Bits of the frame-index code: indices up to 4095 (e.g. 2 min at 30 fps, 68 min at 1 fps)."""

# Encoder per codec name, in order of preference; the first one this FFmpeg build has is used.
_ENCODERS: dict[str, tuple[str, ...]] = {
    "h264": ("libx264", "h264"),
    "hevc": ("libx265", "hevc"),
    "vp9": ("libvpx-vp9", "vp9"),
    "av1": ("libsvtav1", "libaom-av1", "librav1e", "av1"),
}
# Quiet, fast encoder settings; the x264/x265 defaults also give B-frames, like transcoded uploads.
_ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast", "crf": "20"},
    "libx265": {"preset": "ultrafast", "crf": "22", "x265-params": "log-level=error"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b:v": "0"},
    "libsvtav1": {"preset": "12", "crf": "35", "svtav1-params": "enable-stat-report=0"},
}
_BARS = np.array(
    [
        [235, 235, 235],
        [235, 235, 16],
        [16, 235, 235],
        [16, 235, 16],
        [235, 16, 235],
        [235, 16, 16],
        [16, 16, 235],
    ],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class ClipInfo:
    """What ``make_clip`` wrote: enough for a test to know the right answer."""

    path: Path
    codec: str
    """The codec name (h264, hevc, vp9, av1, or none for an audio-only file)."""
    encoder: str
    width: int
    """Coded width (before any display rotation)."""
    height: int
    fps: float
    num_frames: int
    frame_times: tuple[float, ...]
    """Presentation time in seconds of each frame, in order (irregular when ``vfr``)."""
    duration: float
    rotation: int
    has_audio: bool
    audio_rate: int


def encoder_for(codec: str) -> str | None:
    """The first available encoder name for ``codec`` in this FFmpeg build, or None."""
    import av

    if codec not in _ENCODERS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(_ENCODERS)}")
    for name in _ENCODERS[codec]:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # UnknownCodecError, or a codec that exists only as a decoder
            continue
        return name
    return None


def chirp_frequency(t: float | np.ndarray) -> float | np.ndarray:
    """Instantaneous frequency (Hz) of the test audio at time ``t``: 300 Hz rising 100 Hz/s, every 30 s."""
    return 300.0 + 100.0 * np.mod(t, 30.0)


def _chirp(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(chirp_frequency(t)) / rate
    wave = (0.5 * np.sin(phase)).astype(np.float32)
    return np.repeat(wave[None, :], channels, axis=0)


def _code_cells(width: int, height: int) -> tuple[int, list[tuple[int, int]]]:
    """Height of the code strip and the [x0, x1) span of each bit cell, as fractions of the frame,
    so that the code reads the same after any resize."""
    strip = max(4, round(height / 6))
    edges = [round(b * width / CODE_BITS) for b in range(CODE_BITS + 1)]
    return strip, list(itertools.pairwise(edges))


def _draw_code(img: np.ndarray, index: int) -> None:
    strip, cells = _code_cells(img.shape[1], img.shape[0])
    img[:strip] = 0
    for bit, (x0, x1) in enumerate(cells):
        if (index >> (CODE_BITS - 1 - bit)) & 1:
            img[:strip, x0:x1] = 255


def read_frame_index(frame: np.ndarray) -> int:
    """Read the frame index from a decoded RGB frame [H, W, 3] in its coded orientation (any scale).

    Each bit cell is judged by the mean brightness of its centre, which survives lossy coding and
    resizing; a rotated frame must be turned back first (``np.rot90(frame, -k)``).
    """
    strip, cells = _code_cells(frame.shape[1], frame.shape[0])
    grey = frame[:strip].mean(axis=2)
    y0, y1 = strip // 4, max(strip // 4 + 1, 3 * strip // 4)
    index = 0
    for x0, x1 in cells:
        c0, c1 = x0 + (x1 - x0) // 4, max(x0 + (x1 - x0) // 4 + 1, x0 + 3 * (x1 - x0) // 4)
        index = (index << 1) | int(grey[y0:y1, c0:c1].mean() > 128)
    return index


def _background(width: int, height: int, pattern: Pattern, seed: int, color: tuple[int, int, int] | None):
    """A periodic background twice as wide as the frame; frames are windows sliding along it."""
    rng = np.random.default_rng(seed)
    x = np.arange(2 * width)
    if pattern == "bars":
        bars = _BARS[(x * len(_BARS) // width) % len(_BARS)]
        img = np.broadcast_to(bars[None], (height, 2 * width, 3)).copy()
    elif pattern == "topic":
        # A topic is a seeded hue: the demo's "videos about one topic" look alike but not identical.
        base = color or tuple(int(255 * c) for c in colorsys.hsv_to_rgb(rng.random(), 0.6, 0.8))
        ramp = (0.6 + 0.4 * np.sin(2 * np.pi * x / width))[None, :, None]
        img = np.broadcast_to(np.asarray(base, np.float32) * ramp, (height, 2 * width, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; expected 'bars' or 'topic'")
    if color is not None and pattern == "bars":
        img[height // 2 :] = color
    return img


def _text_mask(text: str, width: int, height: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).text((4, height - 14), text, fill=255)
    return np.asarray(canvas) > 127


def _frame_times(n: int, fps: float, vfr: bool, seed: int) -> np.ndarray:
    if not vfr:
        return np.arange(n) / fps
    # Irregular gaps of 0.5x, 1x and 2x the nominal period, like a phone dropping and bunching frames.
    gaps = np.random.default_rng(seed).choice([0.5, 1.0, 2.0], size=n) / fps
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def make_clip(
    path: str | Path,
    *,
    codec: Codec = "h264",
    width: int = 320,
    height: int = 180,
    fps: float = 30.0,
    seconds: float = 2.0,
    audio: bool = True,
    audio_rate: int = 44100,
    audio_channels: int = 2,
    video: bool = True,
    rotation: int = 0,
    vfr: bool = False,
    gop: int | None = None,
    bframes: int | None = None,
    pattern: Pattern = "bars",
    seed: int = 0,
    color: tuple[int, int, int] | None = None,
    text: str | None = None,
    texture: float = 0.0,
    encoder_options: dict[str, str] | None = None,
) -> ClipInfo:
    """Write a synthetic clip to ``path`` (container from the suffix: .mp4, .mkv, .webm, .m4a).

    ``rotation`` is written as display-matrix metadata (counter-clockwise degrees, FFmpeg's and
    PyAV's convention); the pixels stay in coded orientation. ``gop`` sets the keyframe interval in
    frames and ``bframes`` the B-frames between references (encoder default when None). ``texture`` (0..1) adds a seeded grain that moves with the pattern, raising the bitrate
    towards that of camera footage (for benchmarks). Raises ``CodecUnavailable`` when no encoder for
    ``codec`` exists in this FFmpeg build, so tests can skip.
    """
    import av

    path = Path(path)
    if not video and not audio:
        raise ValueError("make_clip needs video, audio or both")
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    encoder = encoder_for(codec) if video else "none"
    if encoder is None:
        raise CodecUnavailable(f"no encoder for {codec!r} in this FFmpeg build (tried {_ENCODERS[codec]})")
    n = max(1, round(seconds * fps)) if video else 0
    times = _frame_times(n, fps, vfr, seed)
    duration = float(times[-1] + (times[-1] - times[-2] if n > 1 else 1 / fps)) if video else seconds

    container = av.open(str(path), "w")
    try:
        vs = as_ = None
        if video:
            vs = container.add_stream(encoder, rate=fractions.Fraction(fps).limit_denominator(1001))
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.codec_context.time_base = fractions.Fraction(1, 90000)
            options = dict(_ENCODER_OPTIONS.get(encoder, {}))
            key = {"libx264": "x264-params", "libx265": "x265-params"}.get(encoder)
            params = [options[key]] if key in options else []
            if gop is not None:
                vs.codec_context.gop_size = gop
                params.append(f"keyint={gop}:min-keyint={gop}:scenecut=0")
            if bframes is not None:
                vs.codec_context.max_b_frames = bframes
                params.append(f"bframes={bframes}")
            if key and params:  # other encoders take gop_size / max_b_frames from the context
                options[key] = ":".join(params)
            options.update(encoder_options or {})
            vs.codec_context.options = options
            if rotation:
                vs.set_display_rotation(rotation)
        if audio:
            audio_codec = "libopus" if path.suffix == ".webm" else "aac"
            as_ = container.add_stream(audio_codec, rate=48000 if audio_codec == "libopus" else audio_rate)
            as_.layout = "stereo" if audio_channels == 2 else "mono"
        if vs is not None:
            _write_video(container, vs, times, width, height, pattern, seed, color, text, texture)
        if as_ is not None:
            _write_audio(container, as_, duration, audio_channels)
    finally:
        container.close()
    return ClipInfo(
        path=path,
        codec=codec if video else "none",
        encoder=encoder,
        width=width if video else 0,
        height=height if video else 0,
        fps=fps if video else 0.0,
        num_frames=n,
        frame_times=tuple(float(t) for t in times),
        duration=duration,
        rotation=rotation if video else 0,
        has_audio=audio,
        audio_rate=audio_rate,
    )


class CodecUnavailable(RuntimeError):
    """This FFmpeg build has no encoder for the requested codec."""


def _write_video(container, stream, times, width, height, pattern, seed, color, text, texture) -> None:
    import av

    background = _background(width, height, pattern, seed, color)
    if texture > 0:
        grain = np.random.default_rng(seed + 1).normal(0, 64 * texture, background.shape[:2])[..., None]
        background = np.clip(background + grain, 0, 255).astype(np.uint8)
    mask = _text_mask(text, width, height) if text else None
    speed = max(1, width // 60)  # pixels per frame: visible motion, periodic over the background
    tb = fractions.Fraction(1, 90000)
    for i, t in enumerate(times):
        off = (i * speed) % width
        img = background[:, off : off + width].copy()
        if mask is not None:
            img[mask] = 255
        _draw_code(img, i)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = round(t * 90000), tb
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _write_audio(container, stream, seconds: float, channels: int) -> None:
    import av

    rate = stream.codec_context.sample_rate
    wave = _chirp(seconds, rate, channels)
    layout = "stereo" if channels == 2 else "mono"
    chunk = 1024 * 8
    for start in range(0, wave.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(wave[:, start : start + chunk]), format="fltp", layout=layout
        )
        frame.sample_rate, frame.pts = rate, start
        frame.time_base = fractions.Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def make_broken(path: str | Path, kind: Literal["empty", "truncated", "text"] = "empty") -> Path:
    """Write a file that no decoder can read: 0 bytes, an MP4 cut off before its index, or plain text."""
    path = Path(path)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        # The MP4 muxer writes the sample index (moov) last: cutting the file loses it, as an
        # interrupted download or copy does.
        make_clip(path, seconds=1.0)
        data = path.read_bytes()
        path.write_bytes(data[: math.ceil(len(data) * 0.4)])
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    else:
        raise ValueError(f"unknown broken-file kind {kind!r}; expected 'empty', 'truncated' or 'text'")
    return path
