"""`seewhy featurize` from the CLI on a folder of real-world-like clips: mixed codecs, some broken."""

from __future__ import annotations

import pandas as pd
import pytest

from featurize.testclips import CodecUnavailable, make_broken, make_clip
from ray_jobs.cli import main


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    videos = root / "videos"
    videos.mkdir()
    specs = {
        1: dict(codec="hevc", fps=30, seconds=2.0),
        2: dict(codec="h264", fps=60, seconds=1.5, rotation=90),
        3: dict(codec="vp9", fps=24, seconds=1.0, audio=False),
        4: dict(codec="h264", fps=30, seconds=1.0, vfr=True),
        5: dict(codec="av1", fps=25, seconds=1.0),
    }
    made = []
    for item, kw in specs.items():
        try:
            make_clip(videos / f"{item}.mp4", width=320, height=180, **kw)
            made.append(item)
        except CodecUnavailable:
            pass
    make_broken(videos / "6.mp4", "empty")
    make_broken(videos / "7.mp4", "truncated")
    make_broken(videos / "8.mp4", "text")
    titles = pd.DataFrame({"item": range(1, 10), "title": [f"clip number {i}, a test" for i in range(1, 10)]})
    titles.to_csv(root / "titles.csv", index=False)  # item 9 has no video file at all
    return root, made


@pytest.mark.integration
def test_featurize_cli_every_item_once_then_no_work(ray_local, catalog, tmp_path, capsys):
    root, made = catalog
    args = [
        "featurize",
        "--config",
        "ray_jobs/configs/featurize/offline.yaml",
        "--set",
        f"catalog.titles={root / 'titles.csv'}",
        "--set",
        f"catalog.videos_dir={root / 'videos'}",
        "--set",
        f"store_root={tmp_path / 'stores'}",
        "--set",
        "text_encoders=[{model: 'tiny:minilm'}]",
        "--set",
        "decode.num_frames=4",
    ]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    captions = pd.read_parquet(tmp_path / "stores" / "captions" / "mllm-video.tiny-qwen2.5-vl")
    assert sorted(captions.item_id) == list(range(1, 10))  # every item exactly once
    ok = set(captions.loc[captions.status == "ok", "item_id"])
    assert ok == set(made)  # the broken and missing files are error rows with a reason
    assert captions.loc[captions.status == "error", "error"].str.len().gt(0).all()
    for fs in ("title.tiny-minilm", "videomae.tiny-videomae", "clap.tiny-clap"):
        feats = pd.read_parquet(tmp_path / "stores" / "features" / fs)
        assert sorted(feats.item_id) == list(range(1, 10)), fs
    assert "mllm-video.tiny-qwen2.5-vl" in first

    with pytest.raises(SystemExit) as e:  # a second run does no work
        main(args)
    assert e.value.code == 0
    again = capsys.readouterr().out
    assert all(
        " 0       0 " in line or "wall time" in line or "store" in line or "---" in line or "stores:" in line
        for line in again.strip().splitlines()
    ), again


@pytest.mark.parametrize("flags", [[], ["--retry-errors"], ["--overwrite", "--retry-errors"]])
def test_featurize_cli_flags_reach_the_config(monkeypatch, tmp_path, flags):
    import featurize.pipeline
    import ray_jobs.cli

    seen = {}

    class Result:
        def table(self) -> str:
            return ""

    monkeypatch.setattr(ray_jobs.cli, "init_ray", lambda *a: None)
    monkeypatch.setattr(
        featurize.pipeline, "run_featurize", lambda cfg: seen.setdefault("cfg", cfg) and Result()
    )
    config = ["--config", "ray_jobs/configs/featurize/offline.yaml", "--set", f"store_root={tmp_path}"]
    with pytest.raises(SystemExit) as e:
        main(["featurize", *config, *flags])
    assert e.value.code == 0
    assert seen["cfg"].retry_errors == ("--retry-errors" in flags)
    assert seen["cfg"].overwrite == ("--overwrite" in flags)
