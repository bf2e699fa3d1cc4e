"""`seewhy tune`: the sweep config, fold selection, concurrency, the seed table, and a small grid on local Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluate.metrics import CASE_KEY, hit_rate
from evaluate.significance import compare, paired_ttest
from featurize.stores import FeatureStore
from ray_jobs.cli import main
from ray_jobs.config import ConfigError
from ray_jobs.prepare import prepare, select_days
from ray_jobs.tune import load_tune_config, max_concurrent, seed_table
from train.synth import SynthConfig, generate_log, write_microlens

SYNTH = ["data.synthetic.preset=small"]
DEMO = Path(__file__).resolve().parents[2] / "ray_jobs" / "configs" / "tune_demo.yaml"


def test_sweep_defaults_and_errors_name_their_keys():
    cfg = load_tune_config(None, SYNTH)
    assert cfg.seeds == [0] and cfg.sweep.days is None and cfg.name == "sweep"
    assert cfg.baselines() == {"two-tower": "id", "sasrec": "id"}
    cfg = load_tune_config(None, [*SYNTH, "sweep.seeds=[3, 4]", "sweep.days=[2024-03-01, -1]"])
    assert cfg.seeds == [3, 4] and cfg.sweep.days == ["2024-03-01", -1]  # a YAML date becomes its label
    with pytest.raises(ConfigError, match=r"sweep\.seedz: unknown key"):
        load_tune_config(None, [*SYNTH, "sweep.seedz=[1]"])
    with pytest.raises(ConfigError, match=r"sweep\.seeds: .*unique"):
        load_tune_config(None, [*SYNTH, "sweep.seeds=[1, 1]"])
    with pytest.raises(ConfigError, match=r"baseline of 'two-tower' is 'id', which is not in"):
        load_tune_config(None, [*SYNTH, "experiment.representations=[title.x]"])
    with pytest.raises(ConfigError, match=r"sweep\.trial_cpus: .*greater than 0"):
        load_tune_config(None, [*SYNTH, "sweep.trial_cpus=0"])
    with pytest.raises(ConfigError, match=r"unknown model\(s\) \['gru'\]"):
        load_tune_config(None, [*SYNTH, "experiment.baselines={gru: id}"])


def test_demo_preset_parses():
    cfg = load_tune_config(DEMO)
    grid = len(cfg.experiment.models) * len(cfg.experiment.representations) * len(cfg.seeds)
    assert grid >= 8 and len(cfg.seeds) > 1 and "id" in cfg.experiment.representations


def test_select_days_by_label_and_index(tmp_path):
    cfg = load_tune_config(None, [*SYNTH, "protocol.n_days=3", f"output_dir={tmp_path}"])
    prep = prepare(cfg)
    labels = [f.label for f in prep.folds]
    picked = select_days(prep, [-1, labels[0]])
    assert [f.label for f in picked.folds] == [labels[0], labels[2]]  # protocol order, not given order
    assert [c["day"].iloc[0] for c in picked.cases] == [labels[0], labels[2]]
    assert len(picked.refit_frames) == len(picked.test_days) == 2
    assert select_days(prep, None) is prep
    with pytest.raises(ValueError, match=r"index 3 is out of range"):
        select_days(prep, [3])
    with pytest.raises(ValueError, match=r"no fold '1999-01-01'"):
        select_days(prep, ["1999-01-01"])


def test_max_concurrent_follows_resources(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def cfg(*o: str):
        return load_tune_config(None, [*SYNTH, *o])

    # 2 workers x 1 CPU + 1 CPU per trial: 16 CPUs fit 5 trials.
    assert max_concurrent(cfg(), 12, {"CPU": 16}) == 5
    assert max_concurrent(cfg(), 3, {"CPU": 16}) == 3  # never more than the trials
    assert max_concurrent(cfg("sweep.max_concurrent_trials=2"), 12, {"CPU": 16}) == 2
    gpu = cfg("train.use_gpu=true", "train.num_workers=2")
    assert max_concurrent(gpu, 12, {"CPU": 64, "GPU": 8}) == 4  # GPUs are the limit
    with pytest.raises(ValueError, match=r"one trial needs 3 CPUs .* Ray has 2 CPUs"):
        max_concurrent(cfg(), 4, {"CPU": 2})
    assert max_concurrent(cfg("ray.address=auto"), 4, {"CPU": 2}) == 1  # a cluster may grow
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a Ray Jobs driver: a cluster too
    assert max_concurrent(cfg("sweep.max_concurrent_trials=3"), 4, {"CPU": 2}) == 3


def test_seed_table_is_mean_and_std_over_seeds():
    ranks = {0: [1, 50, 3, 40], 1: [1, 2, 3, 40], 2: [60, 2, 30, 40]}  # HR@10 per seed: 0.5, 0.75, 0.25
    cases = pd.concat(
        pd.DataFrame({"model": "m", "feature_set": "id", "seed": s, "rank": r}) for s, r in ranks.items()
    )
    row = seed_table(cases, ks=(10,)).iloc[0]
    assert row["hr_mean"] == pytest.approx(0.5) and row["hr_std"] == pytest.approx(0.25)  # ddof=1
    ndcg = [np.mean([1 / np.log2(x + 1.0) if x <= 10 else 0.0 for x in r]) for r in ranks.values()]
    assert row["ndcg_mean"] == pytest.approx(np.mean(ndcg))
    assert row["ndcg_std"] == pytest.approx(np.std(ndcg, ddof=1)) and row["n_seeds"] == 3


LOG_CFG = SynthConfig(
    n_users=150, n_items=80, n_interactions=2500, n_days=16, recent_days=5, seed=5, n_topics=6
)


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory):
    """A MicroLens-format log and a feature store of noisy topic one-hots (what `seewhy featurize` writes)."""
    inter, items = generate_log(LOG_CFG)
    root = tmp_path_factory.mktemp("sweep")
    write_microlens(inter, items, root / "log")
    rng = np.random.default_rng(0)
    vec = np.eye(8, dtype=np.float32)[items["topic"].to_numpy() % 8]
    vec += 0.1 * rng.standard_normal(vec.shape).astype(np.float32)
    store = FeatureStore(root / "store", "topic.test")
    store.write_part(
        pd.DataFrame({"item_id": items["item_id"], "vector": list(vec), "status": "ok", "error": ""})
    )
    (store.path / "_manifest.json").write_text(json.dumps({"models": [{"ref": "path:/none"}]}))
    return root


def _tune(*overrides: str) -> int:
    args = ["tune", "--config", str(DEMO)]
    for o in overrides:
        args += ["--set", o]
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


@pytest.mark.integration
def test_small_grid_writes_table2_and_resumes(ray_local, sweep_inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative output_dir must not follow Tune into its trial folders
    overrides = [
        "output_dir=runs",
        "name=s",
        "data.synthetic=null",
        f"data.interactions.path={sweep_inputs / 'log' / 'MicroLens-100k_pairs.csv'}",
        f"data.features_root={sweep_inputs / 'store'}",
        "experiment.models=[two-tower]",
        "experiment.representations=[id, topic.test]",
        "protocol.n_days=3",
        "sweep.days=[0, -1]",
        "sweep.seeds=[0, 1]",
        "train.num_workers=1",
        "train.cpus_per_worker=0.5",  # with sweep.trial_cpus=0.5: two trials at once on 2 CPUs
        "sweep.trial_cpus=0.5",
        "train.epochs_max=2",
        "train.patience=1",
        "train.batch_size=256",
        "model.dim=16",
    ]
    assert _tune(*overrides) == 0
    out = capsys.readouterr().out
    assert "Ray Tune: 4 of 4 trial(s) to train, 2 at a time" in out and "fit epoch 1" in out
    run = tmp_path / "runs" / "s"
    assert list((run / "ray_tune").iterdir())  # Tune's experiment folder
    cases = pd.read_parquet(run / "results" / "cases.parquet")
    runs = cases.groupby(["model", "feature_set", "seed"]).size()
    assert len(runs) == 3 * 2 and runs.nunique() == 1  # most-popular + 2 reps, 2 seeds, same cases
    days = sorted(cases["day"].unique())
    assert len(days) == 2 and (pd.Timestamp(days[1]) - pd.Timestamp(days[0])).days == 2  # first and last
    ranks = cases[(cases.feature_set == "id")].pivot_table(index=[*CASE_KEY], columns="seed", values="rank")
    assert (ranks[0] != ranks[1]).any()  # the seed reaches training

    # The report's paired test pairs each case with the same case *and seed* of the baseline.
    pooled = compare(cases, ("two-tower", "id"), ("two-tower", "topic.test"), k=10)
    key = ["seed", *CASE_KEY]
    a, b = (
        cases[cases.feature_set == fs].assign(n=lambda d: d.groupby(key).cumcount())
        for fs in ("id", "topic.test")
    )
    m = a.merge(b, on=[*key, "n"], suffixes=("_a", "_b"), validate="one_to_one")
    assert len(m) == len(a) == len(b)
    explicit = paired_ttest(hit_rate(m["rank_a"], 10), hit_rate(m["rank_b"], 10))
    assert pooled.p == pytest.approx(explicit.p) and pooled.delta == pytest.approx(explicit.delta)

    report = (run / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| topic.test |"))
    assert re.search(r"\(\S+%, p(=|<)0\.\d+, q(=|<)0\.\d+\)", row), row
    assert "id (baseline)" in report and "## Seeds" in report and "± " in report
    seeds = pd.read_csv(run / "results" / "seeds.csv")
    got = seeds.set_index(["model", "feature_set", "k"]).loc[("two-tower", "topic.test", 10)]
    per_seed = [
        hit_rate(g["rank"], 10).mean() for _, g in cases[cases.feature_set == "topic.test"].groupby("seed")
    ]
    assert got["hr_mean"] == pytest.approx(np.mean(per_seed)) and got["n_seeds"] == 2
    assert json.loads((run / "manifest.json").read_text())["trials"] == {"total": 4, "trained": 4}

    # A rerun trains nothing: every trial is read back, Tune is not started.
    assert _tune(*overrides) == 0
    out = capsys.readouterr().out
    assert out.count("already finished") == 4 and "Ray Tune:" not in out and "fit epoch" not in out
    pd.testing.assert_frame_equal(pd.read_parquet(run / "results" / "cases.parquet"), cases)
    assert json.loads((run / "manifest.json").read_text())["trials"]["trained"] == 0

    # Ranks written for other days are refused by name, not mixed in.
    assert _tune(*[o for o in overrides if not o.startswith("sweep.days")], "sweep.days=[0]") == 2
    err = capsys.readouterr().err
    assert "differing keys: folds (was" in err and "--fresh" in err


def test_a_trial_on_a_dff_feature_set_builds_its_encoder_with_every_layer(tmp_path, monkeypatch):
    """A tune trial on ``dff.*L1-2`` trains a 2-layer DFF encoder (the layer count of the store's manifest)."""
    import torch

    from ray_jobs import experiment
    from ray_jobs.tune import run_trial
    from train.registry import build_item_encoder

    reps = "experiment.representations=[id, dff.tiny.L1-2]"
    cfg = load_tune_config(None, [*SYNTH, "protocol.n_days=1", f"output_dir={tmp_path}", "model.dim=8", reps])
    prep = prepare(cfg)
    store = FeatureStore(tmp_path / "store", "dff.tiny.L1-2")
    vec = np.random.default_rng(0).standard_normal((len(prep.item_ids), 2 * 4)).astype(np.float32)
    store.write_part(
        pd.DataFrame({"item_id": prep.item_ids, "vector": list(vec), "status": "ok", "error": ""})
    )
    manifest = {"models": [{"ref": "tiny:qwen2.5-vl"}], "layers": [1, 2], "layer_dim": 4}
    (store.path / "_manifest.json").write_text(json.dumps(manifest))
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"features_root": str(tmp_path / "store")})}
    )
    features = experiment.load_feature_sets(cfg, prep.item_ids)
    built = []

    def fake_fit_and_rank_arms(*, arms, folds, n_items, model_cfg, features, **_):
        for a in arms:  # what the training loop builds for the arm
            feats = torch.from_numpy(features[a.feature_set])
            built.append(
                build_item_encoder(a.item_encoder, n_items, model_cfg.dim, feats, **(a.encoder_kwargs or {}))
            )
        return {a.name: {f.label: np.ones(len(f.test_target), np.int64) for f in folds} for a in arms}

    monkeypatch.setattr(experiment, "fit_and_rank_arms", fake_fit_and_rank_arms)
    experiment.open_run_dir(cfg)
    arm = experiment.make_arm("two-tower", "dff.tiny.L1-2", features, "t")
    fps = {"two-tower__dff.tiny.L1-2__seed0": experiment.fingerprint(cfg, prep, features, arm, 0)}
    run_trial(
        {"model": "two-tower", "rep": "dff.tiny.L1-2", "seed": 0},
        cfg=cfg,
        prep=prep,
        features=features,
        fingerprints=fps,
    )
    (enc,) = built
    assert enc.layers.n_layers == 2 and len(enc.layers.proj) == 2
