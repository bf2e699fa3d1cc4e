"""The decode stage: a video file becomes sampled RGB frames, 16 kHz mono audio and sampling metadata.

``decode_clip`` is the whole job for one file (a plain loop and the Ray graph run the same code);
``Decode`` is the Ray Data UDF that maps it over a batch of ``video_path`` values.

How a clip is read, and why it is cheap:
1. One demux pass over the first window collects the video packets (no decoding), which gives the
   exact presentation time of every frame (variable frame rate included), the keyframes, and the
   frame index of each time. Target times are the centres of T equal segments of the window.
2. Only the packets a target needs are decoded: from the keyframe before a target forward to it,
   jumping to the next target's keyframe when that is ahead of the decoder (a seek without the
   seek), skipping non-reference frames that no target needs, and stopping after the last target.
   ``approx`` mode decodes just the keyframe nearest each target when one lies inside its segment.
3. Each kept frame is converted once, straight to the output size (swscale in C), then turned to
   its display orientation; audio is decoded over its window only and resampled to mono float32.
Every failure of one file becomes ``error`` text naming the file; nothing is raised per row.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from featurize.stage import Batch


class DecodeConfig(BaseModel):
    """How frames and audio are sampled from each clip (DESIGN.md "Featurization")."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    num_frames: int | None = Field(8, ge=1)
    """Frames for the VLM, spread uniformly over the window. Exactly one of num_frames / fps."""
    fps: float | None = Field(None, gt=0)
    """Frames per second of window for the VLM instead of a fixed count (setting it alone unsets num_frames)."""
    window_s: float = Field(30.0, gt=0)
    """Frames are sampled from the first window_s seconds of the clip (the paper: 30 s)."""
    max_width: int = Field(426, ge=2)
    """Frames are shrunk to fit inside max_width x max_height, keeping aspect ratio (never enlarged)."""
    max_height: int = Field(224, ge=2)
    """See max_width."""
    max_duration_s: float = Field(240.0, gt=0)
    """Clips longer than this are treated as their first max_duration_s seconds (the paper: 4 minutes)."""
    videomae_frames: int | None = Field(None, ge=1)
    """Also sample this many frames (16 for VideoMAE) into the frames16 column; None leaves it out."""
    audio: bool = True
    """Decode the audio track (None in the audio column when False or when the clip has none)."""
    audio_window_s: float = Field(30.0, gt=0)
    """Audio is kept for the first audio_window_s seconds (the same window as the frames by default)."""
    audio_rate: int = Field(16000, ge=1000)
    """Sample rate of the mono float32 waveform (16 kHz for Whisper, Qwen-Audio and the event detectors)."""
    mode: Literal["exact", "approx"] = "exact"
    """exact: the frame shown at each target time. approx: the nearest keyframe when one lies within
    half a segment of the target (much cheaper with short GOPs), else the exact frame."""
    threads: int = Field(1, ge=0)
    """Decoder threads per clip (0 = FFmpeg's choice). Keep 1 under Ray: parallelism comes from actors."""
    max_source_pixels: int = Field(7680 * 4320, ge=1)
    """Memory guard: a video stream whose coded width x height is larger (default: 8K UHD) is refused
    before decoding, as an error row. The guards below are not part of a store's identity: raising
    one and rerunning with ``--retry-errors`` redoes the refused items."""
    max_streams: int = Field(16, ge=1)
    """Memory guard: a file with more streams (of any kind) is refused before demuxing."""
    max_start_offset_s: float = Field(3600.0, gt=0)
    """Memory guard: a stream starting further than this from t = 0 (either way) is refused (a late
    audio start would otherwise be padded with that much silence)."""
    max_demux_mb: float = Field(512.0, gt=0)
    """Memory guard: demuxed packets held for one clip (packets without timestamps never reach the
    window's end, so the whole file would be read into memory); past this the clip is an error row."""

    @model_validator(mode="before")
    @classmethod
    def _fps_replaces_count(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("fps") is not None and "num_frames" not in data:
            data = {**data, "num_frames": None}
        return data

    @model_validator(mode="after")
    def _one_sampling_rule(self) -> DecodeConfig:
        if (self.num_frames is None) == (self.fps is None):
            raise ValueError(
                f"decode: set exactly one of num_frames and fps (got num_frames={self.num_frames}, fps={self.fps})"
            )
        return self


@dataclass(frozen=True)
class DecodedClip:
    """The result for one file: arrays are None when absent or when ``error`` is set."""

    frames: np.ndarray | None
    """uint8 [T, H, W, 3] RGB in display orientation."""
    frames16: np.ndarray | None
    audio: np.ndarray | None
    """float32 [n] mono at ``audio_rate``."""
    meta: dict[str, Any]
    duration: float
    """Seconds of the whole clip (not only the window); NaN when unknown."""
    error: str = ""


@dataclass
class _Video:
    """The demuxed first window of a video stream."""

    packets: list[Any] = field(default_factory=list)
    """Packets in decode order."""
    eof: bool = False
    """True when the stream ended before the window did."""


def segment_centres(window: float, count: int) -> np.ndarray:
    """Centres of ``count`` equal segments of [0, window): uniform sampling that avoids both ends."""
    return (np.arange(count) + 0.5) * window / count


def _fit(width: float, height: float, max_w: int, max_h: int) -> tuple[int, int]:
    scale = min(1.0, max_w / width, max_h / height)
    return max(2, int(width * scale + 1e-6) // 2 * 2), max(2, int(height * scale + 1e-6) // 2 * 2)


def _open(path: str):
    import av

    container = av.open(path, metadata_errors="ignore")
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    return (
        container,
        (videos[0] if videos else None),
        (container.streams.audio[0] if container.streams.audio else None),
    )


def _demux(container, vs, as_, v_end: float, a_end: float, max_bytes: float) -> tuple[_Video, list[Any]]:
    """Read packets (no decoding) until both streams pass their window ends (seconds of stream time).

    Raises past ``max_bytes`` of held packets (packets without timestamps never pass the window end)."""
    video, audio = _Video(), []
    v_done, a_done = vs is None, as_ is None
    streams = [s for s in (vs, as_) if s is not None]
    held = 0
    for pkt in container.demux(*streams):
        if pkt.size == 0:  # PyAV's end-of-stream marker
            continue
        held += pkt.size
        if held > max_bytes:
            untimed = sum(p.pts is None and p.dts is None for p in (*video.packets, *audio))
            raise ValueError(
                f"over {max_bytes / 2**20:g} MiB of packets (decode.max_demux_mb) before the end of the "
                f"window ({untimed} of {len(video.packets) + len(audio)} without timestamps)"
            )
        ts = pkt.dts if pkt.dts is not None else pkt.pts
        t = float(ts * pkt.time_base) if ts is not None else 0.0
        if vs is not None and pkt.stream_index == vs.index and not v_done:
            video.packets.append(pkt)
            v_done = t > v_end
        elif as_ is not None and pkt.stream_index == as_.index and not a_done:
            audio.append(pkt)
            a_done = t > a_end
        if v_done and a_done:
            break
    video.eof = not v_done
    return video, audio


# Decoders that read skip_frame per frame; others (libdav1d) read it once when opened.
_SKIP_NONREF = frozenset({"h264", "hevc"})


def _decode_needed(
    cc,
    packets: list[Any],
    needed: set[int],
    keys: list[tuple[int, int]],
    convert: Callable[[Any], np.ndarray],
) -> dict[int, np.ndarray]:
    """Decode the frames whose pts are in ``needed``, touching as few packets as possible.

    ``keys`` lists (pts, decode position) of the keyframes in decode order. Each target is decoded
    from the last keyframe at or before it. When that keyframe is ahead of the decoder, the decoder
    is drained (frames held back for reordering come out) and decoding jumps there, skipping
    packets no target needs; otherwise it runs on forward. Feeding stops at the last target's packet.
    Each needed frame is converted as soon as it comes out, so full-size frames are never held.
    """
    got: dict[int, np.ndarray] = {}
    position = {p.pts: i for i, p in enumerate(packets)}
    key_pts = [k for k, _ in keys]
    skip = cc.name in _SKIP_NONREF
    cur: int | None = None

    def collect(frames: list[Any]) -> None:
        got.update((f.pts, convert(f)) for f in frames if f.pts in needed and f.pts not in got)

    def drain() -> None:
        collect(cc.decode(None))
        cc.flush_buffers()

    for target in sorted(needed):
        if target in got:
            continue
        start = keys[max(0, int(np.searchsorted(key_pts, target, side="right")) - 1)][1]
        if cur is not None and start > cur:
            drain()
            cur = None
        if cur is None:
            cur = start
        while cur <= position[target]:
            pkt = packets[cur]
            cur += 1
            if skip:  # non-reference frames that no target needs are not decoded at all
                cc.skip_frame = "DEFAULT" if pkt.pts in needed else "NONREF"
            collect(cc.decode(pkt))
    if cur is not None:
        drain()
    if skip:
        cc.skip_frame = "DEFAULT"
    return got


def _to_rgb(frame, cfg: DecodeConfig, sar: float) -> np.ndarray:
    """Scale (swscale, from YUV) straight to the output size, then turn to display orientation."""
    k = round(frame.rotation / 90) % 4  # display matrix: counter-clockwise quarter turns
    disp_w, disp_h = frame.width * sar, frame.height
    if k % 2:
        disp_w, disp_h = disp_h, disp_w
    out_w, out_h = _fit(disp_w, disp_h, cfg.max_width, cfg.max_height)
    cw, ch = (out_h, out_w) if k % 2 else (out_w, out_h)
    rgb = frame.reformat(width=cw, height=ch, format="rgb24", interpolation="BILINEAR").to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _video(vs, video: _Video, cfg: DecodeConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Sample, decode and convert the frames of every requested column; returns (meta, arrays)."""
    packets = video.packets
    if not packets:
        raise ValueError("video stream has no packets")
    tb = vs.time_base
    for pkt in packets:
        if pkt.pts is None:
            pkt.pts = pkt.dts
    shown = sorted(p.pts for p in packets if p.pts is not None and not p.is_discard)
    if not shown:
        raise ValueError("video stream has no timestamps")
    pts = np.asarray(shown, dtype=np.int64)
    times = (pts - pts[0]) * float(tb)
    fps = float(vs.average_rate or vs.guessed_rate or 0) or (len(pts) - 1) / max(times[-1], 1e-9)
    if video.eof:
        last = max(packets, key=lambda p: p.pts if p.pts is not None else -1)
        extent = times[-1] + (float(last.duration * tb) if last.duration else 1 / fps)
    else:
        extent = math.inf
    window = min(cfg.window_s, cfg.max_duration_s, extent)
    seg_count = cfg.num_frames or max(1, round(window * cfg.fps))

    # Without keyframe flags (rare muxers) the only safe start is the first packet.
    keys = [(p.pts, i) for i, p in enumerate(packets) if p.is_keyframe and p.pts is not None] or [(pts[0], 0)]
    key_idx = np.searchsorted(pts, [k for k, _ in keys])
    key_times = times[np.minimum(key_idx, len(times) - 1)]

    def choose(count: int) -> np.ndarray:
        targets = segment_centres(window, count)
        idx = np.maximum(np.searchsorted(times, targets + 1e-9, side="right") - 1, 0)
        if cfg.mode == "approx":
            near = np.abs(key_times[None, :] - targets[:, None]).argmin(axis=1)
            ok = np.abs(key_times[near] - targets) <= window / count / 2
            idx = np.where(ok, key_idx[near], idx)
        return idx

    columns = {"frames": choose(seg_count)}
    if cfg.videomae_frames:
        columns["frames16"] = choose(cfg.videomae_frames)
    needed = {int(pts[i]) for idx in columns.values() for i in idx}

    cc = vs.codec_context
    cc.thread_count = cfg.threads
    cc.thread_type = "AUTO" if cfg.threads != 1 else "SLICE"
    sar = float(vs.sample_aspect_ratio or 1) or 1.0
    first: dict[str, int] = {}

    def convert(frame) -> np.ndarray:
        first.setdefault("width", frame.width)
        first.setdefault("height", frame.height)
        first.setdefault("rotation", round(frame.rotation / 90) % 4 * 90)
        return _to_rgb(frame, cfg, sar)

    rgb = _decode_needed(cc, packets, needed, sorted(keys), convert)
    missing = sorted(needed - rgb.keys())
    if missing:
        raise ValueError(f"could not decode the frame at t={(missing[0] - pts[0]) * float(tb):.3f}s")
    arrays = {col: np.stack([rgb[int(pts[i])] for i in idx]) for col, idx in columns.items()}
    meta = {
        "fps": fps,
        "total_num_frames": int(vs.frames) if vs.frames else (len(pts) if video.eof else round(fps * window)),
        "frames_indices": [int(i) for i in columns["frames"]],
        "frame_times": [round(float(times[i]), 6) for i in columns["frames"]],
        "width": int(arrays["frames"].shape[2]),
        "height": int(arrays["frames"].shape[1]),
        "coded_width": first["width"],
        "coded_height": first["height"],
        "codec": cc.codec.canonical_name,
        "rotation": first["rotation"],
        "window": float(window),
        "start": float(pts[0] * tb),
    }
    if "frames16" in columns:
        meta["frames16_indices"] = [int(i) for i in columns["frames16"]]
    return meta, arrays


def _audio(as_, packets: list[Any], start: float, end: float, cfg: DecodeConfig) -> np.ndarray | None:
    """Decode the audio window to mono float32 at cfg.audio_rate, aligned with the video start.

    ``end`` (seconds after ``start``) cuts the encoder's padding after the clip's last sample."""
    import av

    if not packets:
        return None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=cfg.audio_rate)
    chunks: list[np.ndarray] = []
    first_time: float | None = None
    cc = as_.codec_context
    for pkt in [*packets, None]:
        for frame in cc.decode(pkt):
            if first_time is None and frame.pts is not None:
                first_time = float(frame.pts * frame.time_base)
            chunks.extend(r.to_ndarray()[0] for r in resampler.resample(frame))
    chunks.extend(r.to_ndarray()[0] for r in resampler.resample(None))
    if not chunks:
        return None
    wave = np.concatenate(chunks).astype(np.float32, copy=False)
    # Audio that starts after the video is padded with silence, so sample i is at time i/rate.
    keep = round(min(cfg.audio_window_s, cfg.max_duration_s, end) * cfg.audio_rate)
    # Bounded by the window: audio starting after it is silence all through, not a huge allocation.
    shift = min(round(((first_time or start) - start) * cfg.audio_rate), keep)
    wave = np.concatenate([np.zeros(shift, np.float32), wave]) if shift > 0 else wave[-shift:]
    return wave[:keep]


def decode_clip(path: str | os.PathLike[str] | None, cfg: DecodeConfig) -> DecodedClip:
    """Decode one clip; any failure is returned as ``error`` ("<path>: <reason>"), never raised."""
    meta: dict[str, Any] = {"has_video": False, "has_audio": False}
    if path is None or (isinstance(path, float) and math.isnan(path)) or str(path) == "":
        return DecodedClip(None, None, None, meta, math.nan, "no video file for this item")
    path = os.fspath(path)
    try:
        container, vs, as_ = _open(path)
    except Exception as e:
        return DecodedClip(None, None, None, meta, math.nan, f"{path}: cannot open: {_reason(e)}")
    try:
        as_ = as_ if cfg.audio else None
        if vs is None and as_ is None:
            raise ValueError("no video stream" + ("" if cfg.audio else " (audio decoding is off)"))
        _check_limits(container, vs, as_, cfg)
        duration = container.duration / 1e6 if container.duration else math.nan
        cap_v = min(cfg.window_s, cfg.max_duration_s)
        cap_a = min(cfg.audio_window_s, cfg.max_duration_s)
        v_start = float(vs.start_time * vs.time_base) if vs is not None and vs.start_time is not None else 0.0
        # One second past the window leaves room for B-frame reordering (decode order runs ahead).
        video, audio_packets = _demux(
            container, vs, as_, v_start + cap_v + 1.0, v_start + cap_a, cfg.max_demux_mb * 2**20
        )
        arrays: dict[str, np.ndarray] = {}
        if vs is not None:
            vmeta, arrays = _video(vs, video, cfg)
            meta.update(vmeta, has_video=True)
            v_start = vmeta["start"]
        wave = None
        if as_ is not None:
            meta["audio_codec"] = as_.codec_context.name
            try:
                end = duration if not math.isnan(duration) else math.inf
                wave = _audio(as_, audio_packets, v_start, end, cfg)
            except Exception as e:  # frames are still worth captioning without their audio
                meta["audio_error"] = _reason(e)
        meta["has_audio"] = wave is not None
        if math.isnan(duration) and vs is not None and video.eof:
            duration = meta["window"]
        meta["duration"] = duration
        return DecodedClip(arrays.get("frames"), arrays.get("frames16"), wave, meta, duration)
    except Exception as e:
        return DecodedClip(None, None, None, meta, math.nan, f"{path}: {_reason(e)}")
    finally:
        container.close()


def _check_limits(container, vs, as_, cfg: DecodeConfig) -> None:
    """Refuse, before anything is demuxed or decoded, a file whose decoding would allocate without bound."""
    n = len(container.streams)
    if n > cfg.max_streams:
        raise ValueError(f"{n} streams, more than decode.max_streams = {cfg.max_streams}")
    if vs is not None:
        w, h = vs.codec_context.width, vs.codec_context.height
        if w * h > cfg.max_source_pixels:
            raise ValueError(
                f"resolution {w}x{h} ({w * h:,} pixels) is over decode.max_source_pixels = "
                f"{cfg.max_source_pixels:,}"
            )
    for kind, stream in (("video", vs), ("audio", as_)):
        if stream is not None and stream.start_time is not None and stream.time_base is not None:
            start = float(stream.start_time * stream.time_base)
            if abs(start) > cfg.max_start_offset_s:
                raise ValueError(
                    f"the {kind} stream starts at t = {start:g} s, further from 0 than "
                    f"decode.max_start_offset_s = {cfg.max_start_offset_s:g} s"
                )


def _reason(e: BaseException) -> str:
    import av

    if isinstance(e, av.error.FFmpegError):
        return f"{type(e).__name__}: {e.strerror}"  # without the errno and the repeated file name
    return f"{type(e).__name__}: {e}"


class Decode:
    """Ray Data UDF: adds frames, frames16 (when enabled), video_meta, audio, duration, decode_error."""

    name: ClassVar[str] = "decode"
    inputs: ClassVar[tuple[str, ...]] = ("video_path",)
    outputs: ClassVar[tuple[str, ...]] = ("frames", "video_meta", "audio", "duration", "decode_error")
    """frames16 is added too when ``videomae_frames`` is set (see ``columns``)."""

    def __init__(self, config: DecodeConfig | dict[str, Any] | None = None) -> None:
        import av  # noqa: F401  (the heavy import happens once per actor, not per batch)

        self.cfg = config if isinstance(config, DecodeConfig) else DecodeConfig(**(config or {}))

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns this instance writes."""
        return self.outputs + (("frames16",) if self.cfg.videomae_frames else ())

    def __call__(self, batch: Batch) -> Batch:
        if "video_path" not in batch:
            raise KeyError(f"decode: input batch has no 'video_path' column (columns: {sorted(batch)})")
        paths = batch["video_path"]
        n = len(paths)
        out = {col: np.empty(n, dtype=object) for col in ("frames", "frames16", "audio")}
        meta = np.empty(n, dtype=object)
        errors = np.empty(n, dtype=object)
        duration = np.full(n, np.nan)
        for i, path in enumerate(paths):
            try:
                clip = decode_clip(path, self.cfg)
            except Exception as e:  # decode_clip returns errors; this guards the other rows regardless
                clip = DecodedClip(None, None, None, {}, math.nan, f"{path}: {type(e).__name__}: {e}")
            out["frames"][i], out["frames16"][i], out["audio"][i] = clip.frames, clip.frames16, clip.audio
            meta[i], errors[i], duration[i] = json.dumps(clip.meta), clip.error, clip.duration
        result = dict(batch)
        result.update(frames=out["frames"], video_meta=meta, audio=out["audio"], duration=duration)
        if self.cfg.videomae_frames:
            result["frames16"] = out["frames16"]
        result["decode_error"] = errors
        return result
