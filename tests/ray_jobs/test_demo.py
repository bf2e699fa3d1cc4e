"""`seewhy demo` end to end on the small world: every Table 1 row, stand-ins flagged, a browser, a no-op rerun.

CI runs this small version; the full medium demo (content beats ID on cold-start cases, p < 0.05) is
the `slow` test at the bottom and the README's first command.
"""

from __future__ import annotations

import pandas as pd
import pytest

from ray_jobs.cli import main
from ray_jobs.demo.recipe import ROWS

pytestmark = pytest.mark.integration

FAST = [
    "--set",
    "train.epochs_max=2",
    "--set",
    "train.patience=1",
    "--set",
    "protocol.n_days=2",
    "--set",
    "model.dim=32",
]


def _demo(out, size: str, extra: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["demo", "--size", size, "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert e.value.code == 0, captured.err[-3000:]
    return captured.out


def test_small_demo_end_to_end_then_rerun_does_no_work(ray_local, tmp_path, capsys):
    out = _demo(tmp_path, "small", FAST, capsys)
    run_dir = tmp_path / "runs" / "demo-small"
    assert f"report:  {run_dir / 'report.md'}" in out
    cases = pd.read_parquet(run_dir / "results" / "cases.parquet")
    runs = cases.groupby(["model", "feature_set"])["stand_in"].first()
    reps = sorted({fs for _, fs in runs.index} - {"last 7d"})
    assert len(reps) == 1 + len(ROWS)  # id + one feature set per Table 1 row
    for model in ("two-tower", "sasrec"):
        for fs in reps:
            # Stand-ins: the tiny VLM (video captions, so also audio+video), VideoMAE and CLAP.
            tiny = fs.startswith(("clap.", "videomae.", "mllm-video.", "mllm-av."))
            assert runs[(model, fs)] == tiny, (model, fs)
    assert "duration_s" in cases.columns and cases["duration_s"].between(3, 8).all()
    report = (run_dir / "report.md").read_text()
    assert "## Cold start" in report and "## Clip duration" in report and "†" in report
    assert (run_dir / "plots").is_dir() and any((run_dir / "plots").glob("*.png"))
    page = (run_dir / "browser.html").read_text()
    assert page.count("<section>") >= 20 and "data:image/jpeg;base64," in page
    assert "nearest items by feature set" in page and "stand-in: random text" in page

    again = _demo(tmp_path, "small", FAST, capsys)
    assert "world reused" in again and "already finished" in again
    assert "new ok" in again and " 300 " not in again


@pytest.mark.slow
def test_medium_demo_content_beats_id_on_cold_start(ray_local, tmp_path, capsys):
    """The README's claim: real content features beat ID-only on cold-start cases (HR@30, paired test, p < 0.05)."""
    from evaluate.significance import compare

    _demo(tmp_path, "medium", [], capsys)
    cases = pd.read_parquet(tmp_path / "runs" / "demo-medium" / "results" / "cases.parquet")
    cold = cases[cases["cold_start"]]
    for model in ("two-tower", "sasrec"):
        for fs in ("title.minilm", "mllm-audio.asr-events.minilm"):
            res = compare(cold, (model, "id"), (model, fs), k=30, metric="hr")
            assert res.delta > 0 and res.p < 0.05, (model, fs, res)
