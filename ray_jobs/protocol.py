"""The protocol runner behind `seewhy run`: data -> splits -> (model x representation) on Ray Train -> report.

Reads the log (and catalogue), builds the rolling daily folds (or leave-one-out), trains every
model on every representation in one TorchTrainer (all arms and folds inside), adds the
most-popular baseline, and writes the run folder:

    manifest.json               config, package versions, input file hashes, resolved feature sets
    results/cases.parquet       model, feature_set, day, user_id, item_id, rank, cold_start, stand_in
                                (+ duration_s when the feature stores hold clip metadata)
    results/summary.csv         model, feature_set, day ('all' for the whole), k, hr, ndcg, n_cases
    report.md, plots/*.png      Table 1 with paired tests, per-day plots

Finished (model, representation) pairs are kept under results/ranks/ with the fingerprint of
everything that shaped them and reused on a rerun only under the same fingerprint (another config is
refused, naming the differing keys: ``--fresh`` retrains into the same folder); an interrupted trainer
resumes from its last epoch checkpoint under ray_train/. The steps are those of
``ray_jobs/experiment.py``, shared with `seewhy tune`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ray_jobs import experiment as X
from ray_jobs.config import RunConfig
from ray_jobs.console import log
from ray_jobs.manifest import write_manifest
from ray_jobs.prepare import attach_durations, prepare


def run(cfg: RunConfig, fresh: bool = False) -> Path:
    """Run the whole protocol; returns the run folder. Ray must already be initialised.

    ``fresh``: retrain every arm into the same run folder (finished ranks and checkpoints removed).
    """
    t0 = time.perf_counter()
    run_dir = X.open_run_dir(cfg, fresh)

    # Prepare: the log, its folds, the feature sets, and every arm with its fingerprint.
    prep = prepare(cfg)
    log(prep.load_summary)
    n_cases = sum(len(c) for c in prep.cases)
    log(
        f"{len(prep.interactions):,} interactions, {len(prep.item_ids):,} items, {len(prep.folds)} fold(s), "
        f"{n_cases:,} test cases"
    )
    features = X.load_feature_sets(cfg, prep.item_ids)
    grid = [(m, rep) for rep in cfg.experiment.representations for m in cfg.experiment.models]
    arms = {(m, rep): X.make_arm(m, rep, features) for m, rep in grid}
    fps = {a.name: X.fingerprint(cfg, prep, features, a, cfg.train.seed) for a in arms.values()}

    # Reuse what an earlier run finished under the same fingerprint; refuse anything else.
    finished, errors = {}, []
    for a in arms.values():
        try:
            finished[a.name] = X.read_ranks(X.ranks_path(run_dir, a.name), fps[a.name])
        except X.FingerprintMismatch as e:
            errors.append(str(e))
    X.refuse_mismatches(errors, "arm")
    manifest = {"fingerprints": {name: X.digest([fp]) for name, fp in fps.items()}}
    write_manifest(cfg, run_dir, prep.inputs, features.info, status="running", **manifest)

    # Train the rest.
    pending = [a for a in arms.values() if finished[a.name] is None]
    for a in arms.values():
        if finished[a.name] is not None:
            log(f"{a.name}: already finished, reusing {X.ranks_path(run_dir, a.name).name}")
    if pending:
        t1 = time.perf_counter()
        ranks = X.train_arms(cfg, prep, pending, features.matrices, fps)
        for (_, rep), a in arms.items():
            if a.name in ranks:
                stand_in = features.stand_in(rep)
                finished[a.name] = X.finish_arm(run_dir, prep, a, rep, ranks[a.name], stand_in, fps[a.name])
        log(f"trained {len(pending)} arm(s) in {time.perf_counter() - t1:.0f}s")

    # Report. The stand-in flag follows the stores as they are now, not as they were when trained.
    frames = [X.most_popular_rows(cfg, prep)] if cfg.experiment.most_popular else []
    frames += [finished[arms[m, rep].name].assign(stand_in=features.stand_in(rep)) for m, rep in grid]
    cases = attach_durations(cfg, pd.concat(frames, ignore_index=True))
    baselines = {m: cfg.experiment.baselines.get(m, "id") for m in cfg.experiment.models}
    baselines = {m: b for m, b in baselines.items() if b in cfg.experiment.representations}
    X.write_results(cfg, cases, title=f"seewhy run: {cfg.name}", baselines=baselines or None)
    wall_s = time.perf_counter() - t0
    write_manifest(cfg, run_dir, prep.inputs, features.info, status="finished", wall_s=wall_s, **manifest)
    log(f"finished in {wall_s:.0f}s; report: {run_dir / 'report.md'}")
    return run_dir
