"""`seewhy run` end to end on local Ray with Ray Train (2 CPU workers), on small generated logs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evaluate.metrics import metrics_from_ranks
from ray_jobs.cli import main
from train.synth import SynthConfig, generate_log, write_microlens

pytestmark = pytest.mark.integration

FAST = [
    "train.epochs_max=2",
    "train.patience=1",
    "train.batch_size=256",
    "model.dim=16",
    "model.n_layers=1",
    "protocol.n_days=2",
]


def _run(*overrides: str, fresh: bool = False) -> int:
    """`seewhy run` on the quick-start preset with ``--set`` overrides; returns the exit code."""
    args = ["run", "--config", "ray_jobs/configs/quickstart.yaml", *(["--fresh"] if fresh else [])]
    for o in overrides:
        args += ["--set", o]
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


LOG_CFG = SynthConfig(
    n_users=150, n_items=80, n_interactions=2500, n_days=16, recent_days=5, seed=11, n_topics=6
)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """A MicroLens-format log the code under test has not generated itself (another seed and shape)."""
    inter, items = generate_log(LOG_CFG)
    out = tmp_path_factory.mktemp("microlens")
    write_microlens(inter, items, out)
    return out


def _feature_store(root, item_ids, items_df):
    """A feature store in DESIGN.md's layout: a noisy topic one-hot per item (written with pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    topics = items_df.set_index("item_id").loc[item_ids, "topic"].to_numpy()
    vec = np.eye(8, dtype=np.float32)[topics % 8] + 0.1 * rng.standard_normal((len(item_ids), 8)).astype(
        np.float32
    )
    folder = root / "features" / "topic.test"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "item_id": pa.array(item_ids, pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel(), pa.float32()), 8),
            "status": pa.array(["ok"] * len(item_ids)),
            "error": pa.array([""] * len(item_ids)),
        }
    )
    pq.write_table(table, folder / "part-00000.parquet")
    (folder / "_manifest.json").write_text(
        json.dumps({"models": [{"ref": "path:/none", "fingerprint": "x"}]})
    )


def test_run_writes_a_consistent_run_folder(ray_local, log_dir, tmp_path, capsys):
    items = pd.read_csv(log_dir / "MicroLens-100k_title_en.csv")
    inter = pd.read_csv(log_dir / "MicroLens-100k_pairs.csv")
    _, gen_items = generate_log(LOG_CFG)
    ids = np.unique(np.r_[items["item"].to_numpy(), inter["item"].to_numpy()])
    _feature_store(tmp_path / "store", ids, gen_items)
    overrides = [
        f"output_dir={tmp_path}",
        "name=t",
        "data.synthetic=null",
        f"data.interactions.path={log_dir / 'MicroLens-100k_pairs.csv'}",
        f"data.catalog.titles={log_dir / 'MicroLens-100k_title_en.csv'}",
        f"data.features_root={tmp_path / 'store'}",
        "experiment.models=[two-tower, sasrec]",
        "experiment.representations=[id, topic.test, id+topic.test]",
        *FAST,
    ]
    assert _run(*overrides) == 0
    run = tmp_path / "t"
    cases = pd.read_parquet(run / "results" / "cases.parquet")
    assert set(cases.columns) >= {"model", "feature_set", "day", "user_id", "item_id", "rank"}
    runs = cases.groupby(["model", "feature_set"]).size()
    assert len(runs) == 1 + 2 * 3 and runs.nunique() == 1  # every run covers the same cases
    assert cases["rank"].between(1, len(ids)).all()

    # The ranks in cases.parquet reproduce summary.csv.
    summary = pd.read_csv(run / "results" / "summary.csv")
    for (model, fs), grp in cases.groupby(["model", "feature_set"]):
        m = metrics_from_ranks(grp["rank"].to_numpy())
        row = summary[(summary.model == model) & (summary.feature_set == fs) & (summary.day == "all")]
        for k in (10, 20, 30):
            got = row[row.k == k].iloc[0]
            assert got.hr == pytest.approx(m[f"hr@{k}"]) and got.ndcg == pytest.approx(m[f"ndcg@{k}"])
            assert got.n_cases == len(grp)

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert any(p.endswith("MicroLens-100k_pairs.csv") for p in manifest["inputs"])
    assert manifest["packages"]["torch"].startswith("2.13")
    assert manifest["feature_sets"]["topic.test"]["dim"] == 8
    report = (run / "report.md").read_text()
    assert "*sasrec*" in report and "topic.test" in report and "id+topic.test" in report
    assert (run / "plots" / "bars.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "fit epoch 1" in out and "report:" in out

    # A rerun reuses every finished (model, representation): no training, same ranks.
    assert _run(*overrides) == 0
    assert "already finished" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(run / "results" / "cases.parquet"), cases)


def test_a_changed_config_is_refused_then_retrained_with_fresh(ray_local, tmp_path, capsys):
    """Rank files carry a fingerprint: another model.dim is refused by name; --fresh retrains; damage is redone."""
    import pyarrow.parquet as pq

    from ray_jobs.experiment import FINGERPRINT_KEY

    base = [
        f"output_dir={tmp_path}",
        "name=r",
        "data.synthetic.preset=small",
        "experiment.models=[two-tower]",
        *FAST,
        "protocol.n_days=1",
    ]
    run = tmp_path / "r"
    ranks = run / "results" / "ranks" / "two-tower__id.parquet"
    assert _run(*base) == 0
    capsys.readouterr()

    # A key that does not shape the ranks may change: the finished arm is reused.
    assert _run(*base, "train.progress=fold") == 0
    assert "already finished" in capsys.readouterr().out

    assert _run(*base, "model.dim=32") == 2
    err = capsys.readouterr().err
    assert "model.dim (was 16, now 32)" in err and "--fresh" in err and "name" in err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["model"]["dim"] == 16 and manifest["status"] == "finished"  # untouched

    assert _run(*base, "model.dim=32", fresh=True) == 0
    out = capsys.readouterr().out
    assert "already finished" not in out and "fit epoch 1" in out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["model"]["dim"] == 32 and manifest["status"] == "finished"
    stored = json.loads(pq.read_schema(ranks).metadata[FINGERPRINT_KEY])
    assert stored["model.dim"] == "32"
    assert len(list((run / "ray_train").iterdir())) == 1  # the old checkpoint went with --fresh

    # A truncated rank file is quarantined and its arm trained again (same config, same ranks).
    redo = pd.read_parquet(ranks)
    ranks.write_bytes(ranks.read_bytes()[:100])
    assert _run(*base, "model.dim=32") == 0
    assert list((ranks.parent / "_quarantine").iterdir())
    pd.testing.assert_frame_equal(pd.read_parquet(ranks), redo)


def test_malformed_row_is_named(ray_local, log_dir, tmp_path, capsys):
    bad = tmp_path / "pairs.csv"
    lines = (log_dir / "MicroLens-100k_pairs.csv").read_text().splitlines()
    lines[41] = lines[41].split(",")[0] + ",12x," + lines[41].split(",")[2]
    bad.write_text("\n".join(lines) + "\n")
    assert _run("data.synthetic=null", f"data.interactions.path={bad}", f"output_dir={tmp_path}") == 2
    err = capsys.readouterr().err
    assert "pairs.csv line 42" in err and "'item'" in err


def test_unknown_key_exits_with_its_path(tmp_path, capsys):
    assert _run("train.epochz=1") == 2
    assert "train.epochz: unknown key" in capsys.readouterr().err


def test_sasrec_beats_most_popular_on_a_sequential_log(ray_local, tmp_path):
    """The quick-start's log has strong sequential habits: SASRec on IDs must beat popularity."""
    from evaluate.significance import compare

    code = _run(
        f"output_dir={tmp_path}",
        "experiment.models=[sasrec]",
        "protocol.n_days=2",
        "train.epochs_max=15",
        "train.patience=4",
    )
    assert code == 0
    cases = pd.read_parquet(tmp_path / "quickstart" / "results" / "cases.parquet")
    test = compare(cases, ("most-popular", "last 7d"), ("sasrec", "id"), k=10, metric="hr")
    assert test.delta > 0 and test.p < 0.05, test
