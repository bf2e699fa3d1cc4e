"""Decode benchmark: CPU cost of sampling frames and audio from phone-like 720p clips, and Ray overhead.

Generates 720p HEVC and H.264 clips (30/60 fps, 10-30 s, AAC 44.1 kHz, GOP 1-2 s like a phone
camera, the encoders' default B-frames like a platform transcode) into a folder, then measures, in
this process, interleaved and repeated (median), CPU-seconds per clip for:
  naive     decord VideoReader(path).get_batch(indices) (defaults: full-size frames, auto threads)
            + decord AudioReader(path, sample_rate=16000, mono=True)
  exact     featurize.decode.decode_clip, mode="exact" (the same frame indices as naive)
  approx    decode_clip, mode="approx" (nearest keyframe within half a segment of each target)
  keyframes every keyframe of the window decoded (skip_frame="NONKEY") + the same audio: a lower bound
Then the Ray Data overhead: clips/s through map_batches(Decode, ActorPoolStrategy(size=N)) against
a plain loop over decode_clip, per core. The CPU may be shared, so read the ratios, not the times.

    python benchmarks/bench_decode.py            # 8 clips
    python benchmarks/bench_decode.py --quick    # 4 short clips, CI smoke
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from featurize.decode import Decode, DecodeConfig, decode_clip
from featurize.testclips import make_clip, read_frame_index

# (codec, fps, seconds, GOP seconds): the mix of the MicroLens uploads (HEVC/H.264, 7-30 s).
SPECS = [
    ("hevc", 30, 10, 1.0),
    ("h264", 30, 20, 1.0),
    ("hevc", 60, 30, 2.0),
    ("h264", 60, 15, 2.0),
    ("hevc", 60, 20, 1.0),
    ("h264", 30, 30, 2.0),
    ("hevc", 30, 25, 2.0),
    ("h264", 60, 10, 1.0),
]
# Short clips put targets closer than a GOP, so quick ratios are a smoke test, not the figures.
QUICK_SPECS = [("hevc", 30, 6, 1.0), ("h264", 30, 6, 1.0), ("hevc", 60, 6, 1.0), ("h264", 60, 6, 1.0)]


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def make_clips(specs, folder: Path, texture: float, bframes: int | None) -> list[dict]:
    clips = []
    for i, (codec, fps, seconds, gop_s) in enumerate(specs):
        path = folder / f"{i:02d}-{codec}-{fps}fps-{seconds}s-gop{gop_s:g}.mp4"
        if not path.exists():  # reuse clips from an earlier run with --out-dir
            tmp = path.with_suffix(".part.mp4")
            make_clip(tmp, codec=codec, width=1280, height=720, fps=fps, seconds=seconds,
                      gop=round(gop_s * fps), bframes=bframes, texture=texture, seed=i, pattern="bars")  # fmt: skip
            tmp.rename(path)
        clips.append({"path": str(path), "codec": codec, "fps": fps, "seconds": seconds, "gop": gop_s})
    return clips


def naive(path: str, indices: list[int]) -> np.ndarray:
    import decord

    frames = decord.VideoReader(path).get_batch(indices).asnumpy()  # defaults: full size, auto threads
    # AudioReader decodes and resamples the whole track when constructed; _array is its result.
    decord.AudioReader(path, sample_rate=16000, mono=True)._array  # noqa: B018
    return frames


def keyframes_only(path: str, cfg: DecodeConfig) -> int:
    """Decode every keyframe of the window to the output size, plus the audio window: a lower bound."""
    import av

    with av.open(path) as container:
        vs, audio = container.streams.video[0], container.streams.audio[0]
        vs.codec_context.thread_count = 1
        vs.codec_context.skip_frame = "NONKEY"
        count = 0
        for frame in container.decode(vs):
            if frame.time > cfg.window_s:
                break
            scale = min(cfg.max_width / frame.width, cfg.max_height / frame.height, 1.0)
            w, h = int(frame.width * scale) // 2 * 2, int(frame.height * scale) // 2 * 2
            frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
            count += 1
        container.seek(0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=cfg.audio_rate)
        chunks = []
        for frame in container.decode(audio):
            if frame.time > cfg.audio_window_s:
                break
            chunks.extend(r.to_ndarray()[0] for r in resampler.resample(frame))
        np.concatenate(chunks)
    return count


def measure_methods(clips: list[dict], repeats: int, cfg: DecodeConfig) -> dict:
    exact_cfg, approx_cfg = cfg, cfg.model_copy(update={"mode": "approx"})
    for clip in clips:
        clip["indices"] = decode_clip(clip["path"], exact_cfg).meta["frames_indices"]
        got = [read_frame_index(f) for f in naive(clip["path"], clip["indices"])]
        clip["naive_right"] = sum(a == b for a, b in zip(got, clip["indices"]))
    methods = {
        "naive": lambda c: naive(c["path"], c["indices"]),
        "exact": lambda c: decode_clip(c["path"], exact_cfg),
        "approx": lambda c: decode_clip(c["path"], approx_cfg),
        "keyframes": lambda c: keyframes_only(c["path"], cfg),
    }
    times: dict[tuple[int, str], list[float]] = {}
    names = list(methods)
    for r in range(repeats):
        for i, clip in enumerate(clips):
            order = names[r % len(names) :] + names[: r % len(names)]  # rotate so no method always runs first
            for name in order:
                start = cpu_seconds()
                methods[name](clip)
                times.setdefault((i, name), []).append(cpu_seconds() - start)
    return {key: statistics.median(v) for key, v in times.items()}


def measure_ray(paths: list[str], actors: int, batch_size: int, repeats: int, cfg: DecodeConfig) -> dict:
    """Wall and CPU cost per clip through Ray Data against a plain loop over decode_clip.

    The machine may be shared, so besides wall-clock rates this counts CPU-seconds: in each actor
    (process time between the starts of its successive batches, which includes Ray's own per-batch
    work in the worker) and in the long-lived processes (driver, raylet, GCS, idle workers).
    """
    import logging

    import psutil
    import ray

    class TimedDecode(Decode):
        """Decode that stamps each batch with its worker, wall-clock start/end and process CPU time."""

        def __call__(self, batch):
            t0, c0 = time.time(), time.process_time()
            out = super().__call__(batch)
            n = len(out["decode_error"])
            out["_pid"] = np.full(n, os.getpid())
            out["_t0"], out["_c0"], out["_t1"] = np.full(n, t0), np.full(n, c0), np.full(n, time.time())
            return out

    logging.getLogger("ray").setLevel(logging.WARNING)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        items = [{"item_id": i, "video_path": p} for i, p in enumerate(paths)]
        me = psutil.Process()

        def cpu_of_long_lived(procs: dict[int, psutil.Process]) -> dict[int, float]:
            out = {}
            for pid, proc in procs.items():
                try:
                    t = proc.cpu_times()
                    out[pid] = t.user + t.system
                except psutil.Error:
                    pass
            return out

        def run_ray() -> dict:
            procs = {p.pid: p for p in me.children(recursive=True)}
            before, cpu0, start = cpu_of_long_lived(procs), time.process_time(), time.time()
            ds = ray.data.from_items(items).map_batches(
                TimedDecode,
                fn_constructor_kwargs={"config": cfg},
                compute=ray.data.ActorPoolStrategy(size=actors),
                batch_size=batch_size,
                num_cpus=1,
            )
            done = ds.materialize()  # frames land in the object store, as they would for the next stage
            wall, driver_cpu = time.time() - start, time.process_time() - cpu0
            after = cpu_of_long_lived(procs)
            stamps = done.select_columns(["_pid", "_t0", "_c0", "_t1", "decode_error"]).to_pandas()
            assert (stamps["decode_error"] == "").all(), stamps["decode_error"].tolist()
            rate, worker_cpu = 0.0, 0.0
            for _, g in stamps.groupby("_pid"):
                # Per actor, over the starts of its batches: rows done per second of busy span, and
                # CPU-seconds per row between batch starts (the last batch costs the same on average).
                b = g.groupby("_t0").agg(rows=("_c0", "size"), c0=("_c0", "first")).sort_index()
                if len(b) > 1:
                    done = b["rows"].iloc[:-1].sum()
                    rate += done / (b.index[-1] - b.index[0])
                    worker_cpu += (b["c0"].iloc[-1] - b["c0"].iloc[0]) / done * len(g)
            # Actor processes die after the run, so only processes alive before and after are summed.
            overhead = driver_cpu + sum(after[p] - before[p] for p in after if p in before)
            n = len(items)
            return {
                "wall": wall,
                "rate": rate,
                "cpu": (worker_cpu + overhead) / n,
                "worker_cpu": worker_cpu / n,
            }

        def run_loop() -> dict:
            start, cpu0 = time.perf_counter(), cpu_seconds()
            for p in paths:
                decode_clip(p, cfg)
            return {"wall": time.perf_counter() - start, "cpu": (cpu_seconds() - cpu0) / len(paths)}

        run_ray()  # warm-up: worker processes start and import once
        loops, rays = [], []
        for _ in range(repeats):
            loops.append(run_loop())
            rays.append(run_ray())
        med = {f"loop_{k}": statistics.median(r[k] for r in loops) for k in ("wall", "cpu")}
        med.update(
            {f"ray_{k}": statistics.median(r[k] for r in rays) for k in ("wall", "rate", "cpu", "worker_cpu")}
        )
        return med
    finally:
        ray.shutdown()


def report_methods(clips: list[dict], med: dict) -> None:
    print("\n### CPU-seconds per clip (median), 8 frames over the first 30 s + 16 kHz mono audio\n")
    print(
        "| clip | naive ms | exact ms | approx ms | keyframes ms | exact/naive | approx/keyframes | naive frames right |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total = dict.fromkeys(("naive", "exact", "approx", "keyframes"), 0.0)
    for i, c in enumerate(clips):
        row = {m: med[(i, m)] for m in total}
        for m in total:
            total[m] += row[m]
        label = f"{c['codec']} 720p{c['fps']} {c['seconds']}s GOP {c['gop']:g}s"
        print(
            f"| {label} | {row['naive'] * 1e3:.0f} | {row['exact'] * 1e3:.0f} | {row['approx'] * 1e3:.0f} | "
            f"{row['keyframes'] * 1e3:.0f} | {row['exact'] / row['naive']:.2f} | "
            f"{row['approx'] / row['keyframes']:.2f} | {c['naive_right']}/{len(c['indices'])} |"
        )
    n = len(clips)
    print(
        f"| **mean** | {total['naive'] / n * 1e3:.0f} | {total['exact'] / n * 1e3:.0f} | {total['approx'] / n * 1e3:.0f} | "
        f"{total['keyframes'] / n * 1e3:.0f} | **{total['exact'] / total['naive']:.2f}** | "
        f"**{total['approx'] / total['keyframes']:.2f}** | |"
    )
    print("\nTargets: exact/naive <= 0.5, approx/keyframes <= 2.0 (ratios of summed CPU time).")


def report_ray(res: dict, items: int, actors: int, batch_size: int) -> None:
    loop_rate = items / res["loop_wall"]
    print(f"\n### Ray Data overhead ({items} clips, {actors} actors, batch_size {batch_size}, median)\n")
    print("| path | clips/s | clips/s per core | vs loop per core | CPU s per clip | loop CPU / this CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| plain loop over decode_clip | {loop_rate:.2f} | {loop_rate:.2f} | 1.00 | {res['loop_cpu']:.3f} | 1.00 |"
    )
    e2e, steady = items / res["ray_wall"], res["ray_rate"]
    eff = res["loop_cpu"] / res["ray_cpu"]
    print(
        f"| Ray Data, end to end (actor start included) | {e2e:.2f} | {e2e / actors:.2f} | {e2e / actors / loop_rate:.2f} | | |"
    )
    print(
        f"| Ray Data, steady (actors busy) | {steady:.2f} | {steady / actors:.2f} | {steady / actors / loop_rate:.2f} "
        f"| {res['ray_cpu']:.3f} | **{eff:.2f}** |"
    )
    print(
        f"\nRay CPU-s per clip: {res['ray_worker_cpu']:.3f} in the actors (decode + Ray's work in the worker), "
        f"{res['ray_cpu'] - res['ray_worker_cpu']:.3f} in the driver, raylet, GCS and idle workers."
    )
    print(
        "\nTarget: Ray clips/s per core >= 0.9x the plain loop. On a shared CPU read the CPU ratio (loop CPU-s per"
        "\nclip / Ray CPU-s per clip, Ray's driver, raylet and GCS included); wall rates need a quiet machine."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 short clips, 2 repeats (CI smoke)")
    parser.add_argument("--clips", type=int, default=None, help="number of clips (default 8, quick 4)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per clip and method (default 3, quick 2)"
    )
    parser.add_argument("--actors", type=int, default=2, help="Ray Data actors (one CPU each)")
    parser.add_argument("--batch-size", type=int, default=2, help="clips per Ray Data batch")
    parser.add_argument(
        "--ray-items", type=int, default=None, help="clips through Ray per run (default 4x clips)"
    )
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray overhead part")
    parser.add_argument("--out-dir", type=Path, default=None, help="keep (and reuse) the clips here")
    parser.add_argument(
        "--texture", type=float, default=0.2, help="grain in the clips (bitrate like camera footage)"
    )
    parser.add_argument(
        "--bframes", type=int, default=None, help="B-frames per GOP (default: encoder preset)"
    )
    args = parser.parse_args()

    specs = QUICK_SPECS if args.quick else SPECS
    count = args.clips or len(specs)
    specs = [specs[i % len(specs)] for i in range(count)]
    repeats = args.repeats or (2 if args.quick else 3)
    cfg = DecodeConfig()
    folder = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_decode_"))
    folder.mkdir(parents=True, exist_ok=True)

    start = time.time()
    clips = make_clips(specs, folder, args.texture, args.bframes)
    print(f"## Decode benchmark\n\n{count} clips in {folder} (made in {time.time() - start:.0f} s); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    med = measure_methods(clips, repeats, cfg)
    report_methods(clips, med)
    if not args.no_ray:
        items = args.ray_items or 4 * count
        paths = [clips[i % count]["path"] for i in range(items)]
        res = measure_ray(paths, args.actors, args.batch_size, repeats, cfg)
        report_ray(res, items, args.actors, args.batch_size)
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
