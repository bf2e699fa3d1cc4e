"""DFF hidden-state features: config, layer checks, pooling against transformers, and a featurize run with clips."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from featurize.config import FeaturizeConfig
from featurize.dff import DFFConfig, DFFEmbed, feature_set_name, text_dims
from featurize.pipeline import build_plan, run_featurize
from featurize.stores import ClipStore, FeatureStore, read_clip_durations
from tests.featurize.conftest import SILENT
from tests.featurize.test_captioners import batch_of, make_clip


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEWHY_CACHE", str(tmp_path_factory.mktemp("seewhy-cache")))
        yield


@pytest.fixture(scope="module")
def embed() -> DFFEmbed:
    return DFFEmbed({"model": "tiny:qwen2.5-vl", "layers": [1, 2], "batch_size": 2})


def test_config_names_refusals_and_layer_checks():
    assert feature_set_name(DFFConfig()) == "dff.qwen2.5-vl-3b-instruct.L8-16-24"
    assert (
        feature_set_name(DFFConfig(model="tiny:qwen2.5-vl", layers=(2,), pool="all"))
        == "dff.tiny-qwen2.5-vl.L2.all"
    )
    with pytest.raises(
        ValidationError, match=r"backend .vllm. is not supported: vLLM 0\.32 returns no intermediate"
    ):
        DFFConfig(backend="vllm")
    with pytest.raises(ValidationError, match="distinct increasing 1-based"):
        DFFConfig(layers=(16, 8))
    with pytest.raises(ValidationError, match="distinct increasing 1-based"):
        DFFConfig(layers=(0, 1))
    too_deep = DFFConfig(model="tiny:qwen2.5-vl", layers=(1, 3))
    with pytest.raises(
        ValueError, match=r"has 2 decoder layers \(valid layers 1..2\); layers \[3\] do not exist"
    ):
        text_dims(too_deep)
    assert text_dims(DFFConfig(model="tiny:qwen2.5-vl", layers=(1, 2))) == (2, 64)


def test_vectors_are_the_pooled_hidden_states_of_one_prefill(embed):
    clips = [make_clip(0), make_clip(1, t=4), make_clip(2)]
    out = embed(batch_of(clips))
    assert list(out["dff_error"]) == ["", "", ""]
    vecs = np.stack(out["vec_dff"])
    assert vecs.shape == (3, 2 * 64) and vecs.dtype == np.float32
    assert not np.allclose(vecs[0], vecs[2])  # the frames reach the model
    # Batched (left-padded) and one at a time agree.
    alone = embed(batch_of(clips[1:2]))["vec_dff"][0]
    np.testing.assert_allclose(vecs[1], alone, rtol=1e-4, atol=1e-4)
    # Against transformers' own hidden states: layer i = hidden_states[i], mean over the video tokens.
    eng = embed.states.engine
    item = eng.prepare(*(clips[0][0], __import__("json").loads(clips[0][1])), embed.prompt.text)
    inputs, _ = eng.model_inputs([item])
    with torch.inference_mode():
        hs = eng.model.model(**inputs, output_hidden_states=True).hidden_states
    video = inputs["input_ids"][0] == eng.video_token_id
    np.testing.assert_allclose(vecs[0][:64], hs[1][0][video].mean(0).numpy(), rtol=1e-4, atol=1e-4)
    # pool: all averages every token of the prompt, so it differs from the video-only mean.
    whole = DFFEmbed({"model": "tiny:qwen2.5-vl", "layers": [1], "pool": "all"})(batch_of(clips[:1]))
    np.testing.assert_allclose(whole["vec_dff"][0], hs[1][0].mean(0).numpy(), rtol=1e-4, atol=1e-4)


def test_bad_rows_become_errors(embed):
    good = make_clip(3)
    rows = [good, (None, good[1]), (good[0][..., :2], good[1]), good]
    out = embed(batch_of(rows, errors=["", "", "", "decode failed"]))
    errs = list(out["dff_error"])
    assert errs[0] == "" and out["vec_dff"][0].shape == (128,)
    assert "no frames" in errs[1] and "column 'frames'" in errs[2]
    assert errs[3] == "decode: decode failed" and out["vec_dff"][3] is None


def test_a_model_that_does_not_load_names_its_reference(tmp_path):
    with pytest.raises(RuntimeError, match=r"DFF: cannot load model path:"):
        DFFEmbed({"model": f"path:{tmp_path}"})


@pytest.mark.integration
def test_featurize_writes_dff_features_and_clip_metadata(ray_local, clip_catalog, tmp_path):
    cfg = FeaturizeConfig.model_validate(
        {
            "catalog": {"titles": clip_catalog["titles"], "videos_dir": clip_catalog["videos_dir"]},
            "store_root": str(tmp_path),
            "decode": {"num_frames": 4},
            "dff": {"model": "tiny:qwen2.5-vl", "layers": [1, 2]},
            "limit": 8,  # 101-107 (107 silent) and 201 (an empty file)
            "resources": {
                "decode": {"batch_size": 4, "num_cpus": 0.3},
                "dff": {"batch_size": 4, "num_cpus": 0.5},
                "write": {"num_cpus": 0.1},
            },
        }
    )
    plan = build_plan(cfg)
    assert [s.key for s in plan.sinks()] == ["features/dff.tiny-qwen2.5-vl.L1-2"] and plan.captions.clips
    run_featurize(cfg)
    store = FeatureStore(tmp_path, "dff.tiny-qwen2.5-vl.L1-2")
    mat, ok = store.read_matrix([*range(101, 108), 201])
    assert ok.tolist() == [True] * 7 + [False] and mat.shape == (8, 128)
    manifest = store.manifest()
    assert manifest["layers"] == [1, 2] and manifest["layer_dim"] == 64 and manifest["dim"] == 128
    assert manifest["counts"] == {"ok": 7, "error": 1} and manifest["models"][0]["ref"] == "tiny:qwen2.5-vl"

    clips = ClipStore(tmp_path).read().set_index("item_id")
    assert sorted(clips.index) == [*range(101, 108), 201]
    assert clips.loc[201, "status"] == "error" and clips.loc[201, "error"]
    assert bool(clips.loc[SILENT, "has_audio"]) is False and bool(clips.loc[101, "has_audio"]) is True
    dur = read_clip_durations(tmp_path, [101, 107, 201, 999])
    np.testing.assert_allclose(dur.iloc[:2], 1.0, atol=0.15)
    assert dur.iloc[2:].isna().all()
    assert ClipStore(tmp_path).manifest()["counts"] == {"ok": 7, "error": 1}

    # A store root from before the clip store: only the clip metadata is made again (decode only).
    shutil.rmtree(tmp_path / "clips")
    again = run_featurize(cfg)
    assert again.processed == 0 and again.items.get("clips") == 8
    assert len(ClipStore(tmp_path).read()) == 8
    assert "clips" not in run_featurize(cfg).items  # nothing left to backfill
    with pytest.raises(Exception, match="no clip metadata"):
        read_clip_durations(tmp_path / "elsewhere")
