"""`seewhy tune`: the paper's Table 2 ablations as a Ray Tune grid of representation x model x seed.

A tune config is a run config (``ray_jobs/config.py``) plus a ``sweep`` section: the grid is
``experiment.representations`` x ``experiment.models`` x ``sweep.seeds``, so a `seewhy run` preset
becomes a sweep by adding ``sweep:``. Each trial runs the protocol for one cell on the folds that
``sweep.days`` selects, on Ray Train inside its Tune trial, through the same experiment core as
`seewhy run` (``ray_jobs/experiment.py``: arms, fingerprints, reuse, training, results). The log is
prepared and every feature matrix read once, on the driver, and handed to the trials through the
object store; feature stores come from `seewhy featurize` and are never recomputed here.

The sweep folder (output_dir/name):

    manifest.json
    results/ranks/<model>__<rep>__seed<s>.parquet   one per finished trial, fingerprinted; reused on a
                                                    rerun under the same fingerprint, else refused
    results/cases.parquet                           every trial's case ranks (column seed) + most-popular
    results/summary.csv, report.md, plots/          the table with paired tests vs each model's baseline
    results/seeds.csv, results/seeds.md             mean ± std over seeds per (model, rep), several seeds
    ray_train/, ray_tune/                           Ray Train checkpoints, Ray Tune experiment folders

On a multi-node cluster, output_dir must be storage every node mounts (trials write their ranks there).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from featurize import durable
from ray_jobs import experiment as X
from ray_jobs.config import RunConfig, load_tree, validate
from ray_jobs.console import log
from ray_jobs.prepare import Prepared, prepare, select_days

SEED_KS = (10, 30)
"""The K of the mean ± std table: the paper's table columns."""


class SweepConfig(BaseModel):
    """What a sweep adds to a run: seeds, the folds to evaluate, and how many trials run at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: list[int] | None = Field(
        None, description="Training seeds, one trial per seed and cell (default: [train.seed])."
    )
    days: list[int | str] | None = Field(
        None,
        description="Folds to evaluate: ISO day labels or indices into the protocol's folds (negative: "
        "from the end); default all (protocol.n_days).",
    )
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        description="Trials in flight (default: what the cluster's CPUs/GPUs fit: "
        "floor(CPUs / (train.num_workers * train.cpus_per_worker + trial_cpus))).",
    )
    trial_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs each trial reserves for itself, the driver of its Ray Train run (it mostly "
        "waits: a fraction such as 0.25 is enough; Ray Tune needs more than 0).",
    )

    @field_validator("days", mode="before")
    @classmethod
    def _dates_as_labels(cls, v: Any) -> Any:
        # YAML reads an unquoted 2024-03-01 as a date; fold labels are ISO strings.
        if isinstance(v, list):
            return [d.isoformat() if isinstance(d, dt.date) else d for d in v]
        return v

    @field_validator("seeds", "days")
    @classmethod
    def _unique(cls, v: list | None) -> list | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"values must be unique, got {v}")
        if v is not None and not v:
            raise ValueError("must not be empty (leave it out for the default)")
        return v


class TrialsFailed(RuntimeError):
    """Some trials of a sweep failed; the message names each with its error (the CLI prints it, no traceback)."""


class TuneConfig(RunConfig):
    """One `seewhy tune`: a run config whose experiment grid is swept with Ray Tune, plus ``sweep``."""

    name: str = Field("sweep", description="Sweep name; the sweep folder is output_dir/name.")
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _baselines_in_grid(self) -> TuneConfig:
        exp = self.experiment
        unknown = sorted(set(exp.baselines) - set(exp.models))
        if unknown:
            raise ValueError(f"experiment.baselines: unknown model(s) {unknown}; models: {exp.models}")
        for model in exp.models:
            base = exp.baselines.get(model, "id")
            if base not in exp.representations:
                raise ValueError(
                    f"experiment.baselines: the baseline of {model!r} is {base!r}, which is not in "
                    f"experiment.representations {exp.representations}; every row is tested against it"
                )
        return self

    @property
    def seeds(self) -> list[int]:
        return self.sweep.seeds or [self.train.seed]

    def baselines(self) -> dict[str, str]:
        return {m: self.experiment.baselines.get(m, "id") for m in self.experiment.models}


def load_tune_config(path: str | Path | None, overrides: list[str] = ()) -> TuneConfig:
    """Read a YAML preset, apply ``--set`` overrides, validate into a TuneConfig."""
    return validate(TuneConfig, load_tree(path, overrides), str(path or "<overrides>"))


def max_concurrent(cfg: TuneConfig, n_trials: int, resources: dict[str, float]) -> int:
    """Trials in flight: the configured number, else as many as the cluster's CPUs and GPUs fit.

    A trial holds ``sweep.trial_cpus`` for itself plus its Ray Train workers' CPUs (and GPUs).
    Raises ValueError when not even one trial fits a local Ray (it would wait forever); a cluster
    (``ray.address``, or ``RAY_ADDRESS`` as in a Ray Jobs driver) may still grow, so there it is
    only logged and one trial runs at a time unless ``sweep.max_concurrent_trials`` says otherwise.
    """
    t = cfg.train
    cpus = t.num_workers * t.cpus_per_worker + cfg.sweep.trial_cpus
    have_cpus, have_gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    fits = math.floor(have_cpus / cpus + 1e-9)
    if t.use_gpu:
        fits = min(fits, math.floor(have_gpus / t.num_workers + 1e-9))
    if fits < 1:
        need = f"{cpus:g} CPUs" + (f" and {t.num_workers} GPUs" if t.use_gpu else "")
        msg = (
            f"one trial needs {need} (train.num_workers={t.num_workers} x train.cpus_per_worker="
            f"{t.cpus_per_worker:g} + sweep.trial_cpus={cfg.sweep.trial_cpus:g}), but Ray has "
            f"{have_cpus:g} CPUs and {have_gpus:g} GPUs"
        )
        if cfg.ray.address is None and not os.environ.get("RAY_ADDRESS"):
            raise ValueError(msg + "; lower train.num_workers or sweep.trial_cpus")
        log(
            f"warning: {msg}; trials wait for the autoscaler (set sweep.max_concurrent_trials to what it adds)"
        )
    n = cfg.sweep.max_concurrent_trials or max(1, fits)
    return max(1, min(n, n_trials))


def trial_name(model: str, rep: str, seed: int) -> str:
    return f"{model}__{rep}__seed{seed}"


def run_trial(
    config: dict, *, cfg: TuneConfig, prep: Prepared, features: X.FeatureSets, fingerprints: dict
) -> dict[str, float]:
    """One Tune trial: train and rank (model, rep, seed) on every fold, write its ranks, report metrics."""
    import ray

    from evaluate.metrics import metrics_from_ranks

    model, rep, seed = config["model"], config["rep"], int(config["seed"])
    arm = X.make_arm(model, rep, features, trial_name(model, rep, seed))
    fp = fingerprints[arm.name]
    frame = X.read_ranks(X.ranks_path(cfg.run_dir, arm.name), fp)  # finished by an earlier invocation
    if frame is None:
        t0 = time.perf_counter()
        matrices = {}
        if arm.feature_set is not None:
            m = features.matrices[arm.feature_set]
            matrices[arm.feature_set] = ray.get(m) if isinstance(m, ray.ObjectRef) else m
        tcfg = cfg.train.model_copy(update={"seed": seed, "parallel_runs": 1})
        ranks = X.train_arms(cfg, prep, [arm], matrices, fingerprints, train_cfg=tcfg)[arm.name]
        frame = X.finish_arm(cfg.run_dir, prep, arm, rep, ranks, features.stand_in(rep), fp, seed=seed)
        log(f"{arm.name}: trained in {time.perf_counter() - t0:.0f}s")
    return {**metrics_from_ranks(frame["rank"].to_numpy()), "n_cases": float(len(frame))}


def _tune(cfg: TuneConfig, prep: Prepared, features: X.FeatureSets, fingerprints: dict, n: int) -> None:
    """Run the whole grid on Ray Tune (finished cells return at once); raise naming failed trials."""
    import ray
    from ray import tune

    # Trials need the folds and cases, not the whole log: keep the object they all read small.
    slim = dataclasses.replace(prep, interactions=prep.interactions.iloc[:0], refit_frames=[])
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg=cfg, prep=slim, features=features, fingerprints=fingerprints),
        {"cpu": cfg.sweep.trial_cpus},
    )
    n_trials = len(cfg.experiment.models) * len(cfg.experiment.representations) * len(cfg.seeds)
    concurrent = max_concurrent(cfg, n_trials, ray.cluster_resources())
    log(f"Ray Tune: {n} of {n_trials} trial(s) to train, {concurrent} at a time")
    tuner = tune.Tuner(
        trainable,
        param_space={
            "model": tune.grid_search(list(cfg.experiment.models)),
            "rep": tune.grid_search(list(cfg.experiment.representations)),
            "seed": tune.grid_search(cfg.seeds),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent,
            trial_name_creator=lambda t: trial_name(t.config["model"], t.config["rep"], t.config["seed"]),
        ),
        # One experiment folder per invocation: the resumable state is results/ranks and ray_train.
        run_config=tune.RunConfig(
            storage_path=str(cfg.run_dir / "ray_tune"), name=time.strftime("%Y%m%d-%H%M%S")
        ),
    )
    grid = tuner.fit()
    failed = [
        f"{trial_name(r.config['model'], r.config['rep'], r.config['seed'])}: {r.error}"
        for r in grid
        if r.error is not None
    ]
    if failed:
        raise TrialsFailed(
            f"{len(failed)} trial(s) failed (finished ones are kept; a rerun resumes):\n  "
            + "\n  ".join(failed)
        )


def seed_table(cases: pd.DataFrame, ks: tuple[int, ...] = SEED_KS) -> pd.DataFrame:
    """Per (model, feature_set, k): mean and std over seeds of each seed's mean metric, and n_seeds."""
    from evaluate.metrics import METRICS

    rows = []
    for (model, fs), grp in cases.groupby(["model", "feature_set"], sort=False):
        per_seed = grp.groupby("seed")["rank"].apply(lambda r: r.to_numpy())
        for k in ks:
            row = {"model": model, "feature_set": fs, "k": k}
            for name, fn in METRICS.items():
                vals = np.array([fn(r, k).mean() for r in per_seed])
                row[f"{name}_mean"] = float(vals.mean())
                row[f"{name}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
            rows.append(row | {"n_seeds": len(per_seed)})
    return pd.DataFrame(rows)


def seed_markdown(table: pd.DataFrame, seeds: list[int]) -> str:
    """The mean ± std table in Markdown (report.md and results/seeds.md)."""
    from evaluate.metrics import METRICS
    from evaluate.plots import LABELS

    ks = sorted(table["k"].unique())
    cols = [(name, k) for name in METRICS for k in ks]
    lines = [
        f"Mean ± std (ddof=1) over seeds {', '.join(map(str, seeds))} of each run's metric over all its cases.",
        "",
        "| Model | Representation | " + " | ".join(f"{LABELS[n]}@{k}" for n, k in cols) + " | seeds |",
        "|---" * (len(cols) + 3) + "|",
    ]
    by = table.set_index(["model", "feature_set", "k"])
    for model, fs in dict.fromkeys(zip(table["model"], table["feature_set"])):
        cells = []
        for name, k in cols:
            mean, std = by.loc[(model, fs, k), [f"{name}_mean", f"{name}_std"]]
            cells.append(f"{mean:.4f} ± {std:.4f}" if std == std else f"{mean:.4f}")
        n = int(by.loc[(model, fs, ks[0]), "n_seeds"])
        lines.append(f"| {model} | {fs} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines) + "\n"


def run_sweep(cfg: TuneConfig, fresh: bool = False) -> Path:
    """Run the sweep and write its report; returns the sweep folder. Ray must already be initialised.

    ``fresh``: retrain every trial into the same sweep folder (finished ranks and checkpoints removed).
    """
    import ray

    from ray_jobs.manifest import write_manifest

    t0 = time.perf_counter()
    # Tune starts each trial in its own trial folder: a relative output_dir would move with it.
    cfg = cfg.model_copy(update={"output_dir": str(Path(cfg.output_dir).expanduser().resolve())})
    run_dir = X.open_run_dir(cfg, fresh)

    # Prepare: the selected folds, the feature sets (in the object store), every trial's fingerprint.
    prep = select_days(prepare(cfg), cfg.sweep.days)
    labels = [f.label for f in prep.folds]
    n_cases = sum(len(c) for c in prep.cases)
    log(prep.load_summary)
    log(f"{len(prep.item_ids):,} items, folds {labels}, {n_cases:,} test cases per trial")
    features = X.load_feature_sets(cfg, prep.item_ids, put=ray.put)
    cells = [
        (m, r, s) for m in cfg.experiment.models for r in cfg.experiment.representations for s in cfg.seeds
    ]
    arms = {(m, r, s): X.make_arm(m, r, features, trial_name(m, r, s)) for m, r, s in cells}
    fps = {arms[m, r, s].name: X.fingerprint(cfg, prep, features, arms[m, r, s], s) for m, r, s in cells}

    # Reuse trials finished under the same fingerprint; refuse anything else.
    todo, errors = [], []
    for cell in cells:
        name = arms[cell].name
        try:
            done = X.read_ranks(X.ranks_path(run_dir, name), fps[name])
        except X.FingerprintMismatch as e:
            errors.append(str(e))
            continue
        if done is None:
            todo.append(cell)
        else:
            log(f"{name}: already finished, reusing {name}.parquet")
    X.refuse_mismatches(errors, "trial")
    manifest = {"fingerprints": {name: X.digest([fp]) for name, fp in fps.items()}}
    write_manifest(cfg, run_dir, prep.inputs, features.info, status="running", **manifest)

    # Train the rest on Ray Tune.
    if todo:
        _tune(cfg, prep, features, fps, len(todo))

    # Report. Each run's rows are stacked seed by seed in the same case order, so the paired tests of
    # the report (which number a case's repeats in row order) pair every case with the same case and seed.
    frames = []
    if cfg.experiment.most_popular:
        mp = X.most_popular_rows(cfg, prep)
        frames += [mp.assign(seed=s) for s in cfg.seeds]  # deterministic: the same ranks for every seed
    for cell in cells:
        name = arms[cell].name
        frame = X.read_ranks(X.ranks_path(run_dir, name), fps[name])
        if frame is None:
            raise RuntimeError(f"trial {name} finished without writing {X.ranks_path(run_dir, name)}")
        frames.append(frame.assign(stand_in=features.stand_in(cell[1])))
    cases = pd.concat(frames, ignore_index=True)
    extra = ""
    if len(cfg.seeds) > 1:
        table = seed_table(cases)
        md = seed_markdown(table, cfg.seeds)
        durable.write_atomic(run_dir / "results" / "seeds.csv", lambda p: table.to_csv(p, index=False))
        durable.write_text_atomic(run_dir / "results" / "seeds.md", md)
        extra = (
            f"## Seeds\n\nThe tables above pool {len(cfg.seeds)} seeds: each mean is the mean over seeds, "
            "and each paired test pairs a case with the same case and seed of the baseline.\n\n" + md
        )
    title = f"seewhy tune: {cfg.name} (ablations, {len(cfg.seeds)} seed(s))"
    X.write_results(cfg, cases, title=title, baselines=cfg.baselines(), extra_md=extra)
    write_manifest(
        cfg,
        run_dir,
        prep.inputs,
        features.info,
        status="finished",
        wall_s=time.perf_counter() - t0,
        trials={"total": len(cells), "trained": len(todo)},
        **manifest,
    )
    log(f"finished in {time.perf_counter() - t0:.0f}s; report: {run_dir / 'report.md'}")
    return run_dir
