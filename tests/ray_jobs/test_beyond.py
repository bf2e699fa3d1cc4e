"""Beyond the paper end to end: DFF features (replacement and fusion), omni captions, GRU4Rec and
BiMamba in one `seewhy run` whose report has their rows plus cold-start and clip-duration sections."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_jobs.cli import main
from ray_jobs.demo.world import DemoWorldConfig, build_world

pytestmark = pytest.mark.integration

DFF = "dff.tiny-qwen2.5-vl.L1-2"


def _cli(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    captured = capsys.readouterr()
    assert e.value.code == 0, captured.err[-3000:]
    return captured.out


def test_beyond_presets_run_end_to_end(ray_local, tmp_path, capsys):
    world = build_world(DemoWorldConfig(size="tiny"), tmp_path / "world")
    stores = tmp_path / "stores"
    _cli(
        [
            "featurize",
            "--config",
            "ray_jobs/configs/featurize/beyond.yaml",
            "--set",
            f"catalog.titles={world.titles}",
            "--set",
            f"catalog.videos_dir={world.videos}",
            "--set",
            f"store_root={stores}",
            "--set",
            "omni.max_new_tokens=8",
        ],
        capsys,
    )
    omni = sorted(p.name for p in (stores / "features").iterdir() if p.name.startswith("mllm-omni."))
    assert omni == ["mllm-omni.tiny-qwen2.5-omni.minilm"]
    reps = ["id", DFF, f"id+{DFF}", omni[0]]
    out = _cli(
        [
            "run",
            "--config",
            "ray_jobs/configs/beyond.yaml",
            "--set",
            f"output_dir={tmp_path / 'runs'}",
            "--set",
            f"data.interactions.path={world.pairs}",
            "--set",
            f"data.features_root={stores}",
            "--set",
            f"experiment.representations=[{', '.join(reps)}]",
            "--set",
            "train.epochs_max=1",
            "--set",
            "protocol.n_days=2",
            "--set",
            "model.dim=32",
        ],
        capsys,
    )
    run_dir = tmp_path / "runs" / "beyond"
    assert f"report: {run_dir / 'report.md'}" in out
    cases = pd.read_parquet(run_dir / "results" / "cases.parquet")
    runs = set(zip(cases["model"], cases["feature_set"]))
    for model in ("two-tower", "sasrec", "gru4rec", "bimamba"):
        assert {(model, r) for r in reps} <= runs
    report = (run_dir / "report.md").read_text()
    for row in (f"| {DFF} †", f"| id+{DFF} †", f"| {omni[0]} †", "*gru4rec*", "*bimamba*"):
        assert row in report, row
    assert "## Cold start" in report and "## Clip duration" in report
    assert cases["duration_s"].between(3, 8).all()
