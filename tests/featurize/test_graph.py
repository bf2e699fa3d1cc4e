"""The graph's pieces without Ray: the store writer's routing and error rules, todo rows, resource checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from featurize.graph import (
    TODO,
    Plan,
    Sink,
    StoreWriter,
    check_fits,
    own_error,
    pack_arrays,
    todo_rows,
    unpack_arrays,
)
from featurize.stage import StageSpec
from featurize.stores import CaptionStore, FeatureStore

VIDEO = Sink("captions", "mllm-video.x", "caption_video", ("decode_error", "vlm_error"), model="tiny:x")
AUDIO = Sink(
    "captions",
    "mllm-audio.asr-events",
    "caption_audio",
    ("decode_error", "asr_error"),
    model="pkg:w",
    extra=(("transcript", "transcript"), ("language", "language")),
)
CLIP = Sink("features", "clap.tiny", "vec_clap", ("decode_error", "clap_error"))


def _batch(**cols) -> dict[str, np.ndarray]:
    out = {}
    for k, v in cols.items():
        arr = np.empty(len(v), dtype=object)
        arr[:] = v
        out[k] = arr
    out["item_id"] = np.asarray(cols["item_id"], dtype=np.int64)
    return out


def test_writer_routes_rows_by_todo_and_turns_errors_into_rows(tmp_path):
    all3 = json.dumps([VIDEO.key, AUDIO.key, CLIP.key])
    batch = _batch(
        item_id=[1, 2, 3],
        todo=[all3, json.dumps([AUDIO.key]), all3],
        decode_error=["", "", "/v/3.mp4: cannot open"],
        vlm_error=["", "", "decode: /v/3.mp4: cannot open"],
        caption_video=["a cat", "a dog", ""],
        asr_error=["", "", ""],
        caption_audio=["Transcript: hi", None, ""],
        transcript=["hi", "", ""],
        language=["en", "", ""],
        clap_error=["", "", ""],
        vec_clap=[np.ones(3, np.float32), np.zeros(3), None],
    )
    out = StoreWriter(str(tmp_path), (VIDEO, AUDIO, CLIP))(batch)
    summary = pd.DataFrame(out)
    assert len(summary) == 7  # item 2 only goes to the audio store
    assert set(summary.columns) == {"item_id", "store", "status", "error"}

    video = CaptionStore(tmp_path, VIDEO.name).read().set_index("item_id")
    assert video.index.tolist() == [1, 3]
    assert video.loc[1, "text"] == "a cat" and video.loc[1, "model"] == "tiny:x"
    # The first error column wins: the reason names the stage where it arose.
    assert video.loc[3, "error"] == "decode: /v/3.mp4: cannot open"
    audio = CaptionStore(tmp_path, AUDIO.name).read().set_index("item_id")
    assert audio.loc[1, "transcript"] == "hi" and audio.loc[1, "language"] == "en"
    # A stage that left no value without saying why still gives an error row, never a silent gap.
    assert audio.loc[2, "status"] == "error" and "produced no text" in audio.loc[2, "error"]
    clap = FeatureStore(tmp_path, CLIP.name)
    mat, ok = clap.read_matrix([1, 3])
    assert ok.tolist() == [True, False] and mat[0].tolist() == [1, 1, 1]


def test_writer_rejects_a_plan_whose_stage_is_missing(tmp_path):
    batch = _batch(item_id=[1], todo=[json.dumps([VIDEO.key])], decode_error=[""])
    with pytest.raises(KeyError, match="no column 'caption_video'"):
        StoreWriter(str(tmp_path), (VIDEO,))(batch)


def test_shared_error_column_is_split_per_feature_set(tmp_path):
    keys = ("title.enc", "mllm-video.x.enc", "mllm-av.x+y.enc")
    text = "mllm-video.x.enc: caption_video: boom; it broke; mllm-av.x+y.enc: caption_audio: none"
    assert own_error(text, "mllm-video.x.enc", keys) == "caption_video: boom; it broke"
    assert own_error(text, "mllm-av.x+y.enc", keys) == "caption_audio: none"
    assert own_error(text, "title.enc", keys) == ""
    sinks = tuple(Sink("features", k, f"vec_{k}", ("embed_error",), error_key=k) for k in keys)
    batch = _batch(
        item_id=[7],
        todo=[json.dumps([s.key for s in sinks])],
        embed_error=[text],
        **{f"vec_{k}": [np.ones(2, np.float32) if k == "title.enc" else None] for k in keys},
    )
    out = StoreWriter(str(tmp_path), sinks)(batch)
    assert dict(zip(out["store"], out["status"])) == {
        "features/title.enc": "ok",
        "features/mllm-video.x.enc": "error",
        "features/mllm-av.x+y.enc": "error",
    }
    assert FeatureStore(tmp_path, "mllm-av.x+y.enc").read()["error"].tolist() == ["caption_audio: none"]


def test_todo_rows_skip_done_items_and_respect_eligibility(tmp_path):
    CaptionStore(tmp_path, VIDEO.name).write_part(
        pd.DataFrame(
            {
                "item_id": [1, 2],
                "text": ["a", None],
                "status": ["ok", "error"],
                "error": ["", "x"],
                "model": "m",
            }
        )
    )
    plan = Plan((), (VIDEO, CLIP))
    rows = pd.DataFrame({"item_id": [1, 2, 3]})
    todo = todo_rows(plan, rows, str(tmp_path)).set_index("item_id")[TODO].map(json.loads)
    assert todo.to_dict() == {1: [CLIP.key], 2: [CLIP.key], 3: [VIDEO.key, CLIP.key]}
    retry = todo_rows(plan, rows, str(tmp_path), retry_errors=True).set_index("item_id")[TODO].map(json.loads)
    assert retry[2] == [VIDEO.key, CLIP.key]
    only = todo_rows(plan, rows, str(tmp_path), eligible={CLIP.key: {3}})
    assert only.set_index("item_id")[TODO].map(json.loads).to_dict() == {3: [VIDEO.key, CLIP.key]}
    CaptionStore(tmp_path, VIDEO.name).write_part(
        pd.DataFrame({"item_id": [3], "text": ["c"], "status": "ok", "error": "", "model": "m"})
    )
    assert todo_rows(Plan((), (VIDEO,)), rows, str(tmp_path)).empty


def test_check_fits_names_the_pools_that_overflow():
    class Decode:
        name = "decode"

    class Vlm:
        name = "vlm"

    specs = [StageSpec(Decode, num_cpus=1, min_actors=2), StageSpec(Vlm, num_cpus=0.5, num_gpus=1)]
    check_fits(specs, {"CPU": 2.5, "GPU": 1})
    with pytest.raises(
        ValueError, match=r"need 2.5 CPUs at once \(decode 2x1, vlm 1x0.5\) but the Ray cluster has 2"
    ):
        check_fits(specs, {"CPU": 2, "GPU": 1})
    with pytest.raises(ValueError, match=r"1 GPUs .*has 0.*num_gpus"):
        check_fits(specs, {"CPU": 8})


def test_array_columns_travel_as_bytes_with_one_arrow_type():
    import pyarrow as pa

    frames = np.empty(3, dtype=object)
    frames[:] = [np.zeros((2, 4, 6, 3), np.uint8), None, np.ones((2, 2, 4, 3), np.uint8)]
    batch = {"item_id": np.arange(3), "frames": frames, "vec_x": np.ones((3, 4), np.float32), "title": frames}
    packed = pack_arrays(batch)
    assert {type(v) for v in packed["frames"]} == {bytes, type(None)} and packed["title"] is frames
    assert pa.array(packed["frames"]).type == pa.binary() and pa.array(packed["vec_x"]).type == pa.binary()
    back = unpack_arrays(packed)
    assert back["frames"][1] is None and back["frames"][2].shape == (2, 2, 4, 3)
    np.testing.assert_array_equal(back["vec_x"][0], np.ones(4, np.float32))
