"""`seewhy tune`: the paper's Table 2 ablations as a Ray Tune grid of representation x model x seed.

A tune config is a run config (``ray_jobs/config.py``) plus a ``sweep`` section: the grid is
``experiment.representations`` x ``experiment.models`` x ``sweep.seeds``, so a `seewhy run` preset
becomes a sweep by adding ``sweep:``. Each trial runs the protocol for one cell on the folds that
``sweep.days`` selects, on Ray Train inside its Tune trial (``train.trainer.fit_and_rank``). The
log is prepared and every feature matrix read once, on the driver, and handed to the trials through
the object store; feature stores come from `seewhy featurize` and are never recomputed here.

The sweep folder (output_dir/name):

    manifest.json
    results/ranks/<model>__<rep>__seed<s>.parquet   one per finished trial; skipped on a rerun
    results/cases.parquet                           every trial's case ranks (column seed) + most-popular
    results/summary.csv, report.md, plots/          the table with paired tests vs each model's baseline
    results/seeds.csv, results/seeds.md             mean ± std over seeds per (model, rep), several seeds
    ray_train/, ray_tune/                           Ray Train checkpoints, Ray Tune experiment folders

On a multi-node cluster, output_dir must be storage every node mounts (trials write their ranks there).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ray_jobs.config import RunConfig, load_tree, validate
from ray_jobs.protocol import Prepared, log

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


def select_days(prep: Prepared, days: list[int | str] | None) -> Prepared:
    """The folds named by ``days`` (labels or indices), in protocol order; all when None."""
    if days is None:
        return prep
    labels = [f.label for f in prep.folds]
    keep = set()
    for d in days:
        if isinstance(d, int):
            if not -len(labels) <= d < len(labels):
                raise ValueError(f"sweep.days: index {d} is out of range; the folds are {labels}")
            keep.add(d % len(labels))
        elif d in labels:
            keep.add(labels.index(d))
        else:
            raise ValueError(f"sweep.days: no fold {d!r}; the folds are {labels}")

    def pick(xs: list) -> list:
        return [xs[i] for i in sorted(keep)]

    return dataclasses.replace(
        prep,
        folds=pick(prep.folds),
        cases=pick(prep.cases),
        refit_frames=pick(prep.refit_frames),
        test_days=pick(prep.test_days),
    )


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


def ranks_path(run_dir: Path, model: str, rep: str, seed: int) -> Path:
    return run_dir / "results" / "ranks" / f"{trial_name(model, rep, seed)}.parquet"


def _check_finished(path: Path, labels: list[str], n_cases: int) -> pd.DataFrame:
    """A finished trial's ranks, checked against the folds this sweep evaluates."""
    frame = pd.read_parquet(path)
    days = sorted(frame["day"].astype(str).unique())
    if days != sorted(labels) or len(frame) != n_cases:
        raise ValueError(
            f"{path}: written for days {days} ({len(frame)} cases), but this sweep evaluates {labels} "
            f"({n_cases} cases); use another name or output_dir, or delete the file"
        )
    return frame


def run_trial(
    config: dict, *, cfg: TuneConfig, prep: Prepared, features: dict, stand_ins: dict[str, bool]
) -> dict[str, float]:
    """One Tune trial: train and rank (model, rep, seed) on every fold, write its ranks, report metrics."""
    import ray

    from evaluate.metrics import metrics_from_ranks
    from ray_jobs.protocol import _case_rows, representation
    from train.trainer import fit_and_rank

    model, rep, seed = config["model"], config["rep"], int(config["seed"])
    out = ranks_path(cfg.run_dir, model, rep, seed)
    if out.exists():  # finished by an earlier invocation (checked on the driver)
        frame = pd.read_parquet(out)
    else:
        kind, fs = representation(rep)
        labels = [f.label for f in prep.folds]
        # Another day selection must not resume this one's checkpoint.
        digest = hashlib.sha256("\n".join(labels).encode()).hexdigest()[:8]
        t0 = time.perf_counter()
        by_label = fit_and_rank(
            model=model,
            item_encoder=kind,
            n_items=len(prep.item_ids),
            history_len=cfg.protocol.history_len,
            folds=prep.folds,
            model_cfg=cfg.model,
            train_cfg=cfg.train.model_copy(update={"seed": seed}),
            storage_path=str(cfg.run_dir / "ray_train"),
            run_name=f"{trial_name(model, rep, seed)}__{digest}".replace("+", "_plus_"),
            features=ray.get(features[fs]) if fs is not None else None,
        )
        ranks = [by_label[label] for label in labels]
        frame = _case_rows(prep, model, rep, ranks, stand_ins[rep]).assign(seed=seed)
        tmp = out.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(out)
        log(f"{trial_name(model, rep, seed)}: trained in {time.perf_counter() - t0:.0f}s")
    return {**metrics_from_ranks(frame["rank"].to_numpy()), "n_cases": float(len(frame))}


def _tune(cfg: TuneConfig, prep: Prepared, features: dict, stand_ins: dict[str, bool], n: int) -> None:
    """Run the whole grid on Ray Tune (finished cells return at once); raise naming failed trials."""
    import ray
    from ray import tune

    # Trials need the folds and cases, not the whole log: keep the object they all read small.
    slim = dataclasses.replace(prep, interactions=prep.interactions.iloc[:0], refit_frames=[])
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg=cfg, prep=slim, features=features, stand_ins=stand_ins),
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


def run_sweep(cfg: TuneConfig) -> Path:
    """Run the sweep and write its report; returns the sweep folder. Ray must already be initialised."""
    import ray

    from evaluate.report import write_report
    from ray_jobs.manifest import write_manifest
    from ray_jobs.protocol import MOST_POPULAR, _case_rows, load_features, most_popular_ranks, prepare
    from ray_jobs.protocol import representation as parse_rep

    t0 = time.perf_counter()
    # Tune starts each trial in its own trial folder: a relative output_dir would move with it.
    cfg = cfg.model_copy(update={"output_dir": str(Path(cfg.output_dir).expanduser().resolve())})
    run_dir = cfg.run_dir
    (run_dir / "results" / "ranks").mkdir(parents=True, exist_ok=True)
    prep = select_days(prepare(cfg), cfg.sweep.days)
    labels = [f.label for f in prep.folds]
    n_cases = sum(len(c) for c in prep.cases)
    log(f"{prep.load_summary}")
    log(f"{len(prep.item_ids):,} items, folds {labels}, {n_cases:,} test cases per trial")
    features_info: dict[str, dict] = {}
    features: dict[str, Any] = {}
    stand_ins: dict[str, bool] = {}
    for rep in cfg.experiment.representations:
        fs = parse_rep(rep)[1]
        if fs is not None and fs not in features:
            matrix, features_info[fs] = load_features(cfg, fs, prep.item_ids)
            features[fs] = ray.put(matrix)
        stand_ins[rep] = bool(fs and features_info[fs]["stand_in"])
    write_manifest(cfg, run_dir, prep.inputs, features_info, status="running")

    cells = [
        (m, r, s) for m in cfg.experiment.models for r in cfg.experiment.representations for s in cfg.seeds
    ]
    todo = []
    for m, r, s in cells:
        path = ranks_path(run_dir, m, r, s)
        if path.exists():
            _check_finished(path, labels, n_cases)
            log(f"{trial_name(m, r, s)}: already finished, reusing {path.name}")
        else:
            todo.append((m, r, s))
    if todo:
        _tune(cfg, prep, features, stand_ins, len(todo))

    # Each run's rows are stacked seed by seed in the same case order, so the paired tests of the
    # report (which number a case's repeats in row order) pair every case with the same case and seed.
    frames = []
    if cfg.experiment.most_popular:
        mp = _case_rows(
            prep,
            MOST_POPULAR,
            f"last {cfg.protocol.popularity_window_days}d",
            most_popular_ranks(prep, cfg.protocol.popularity_window_days),
            False,
        )
        frames += [mp.assign(seed=s) for s in cfg.seeds]  # deterministic: the same ranks for every seed
    frames += [_check_finished(ranks_path(run_dir, m, r, s), labels, n_cases) for m, r, s in cells]
    cases = pd.concat(frames, ignore_index=True)
    cases.to_parquet(run_dir / "results" / "cases.parquet", index=False)
    extra = ""
    if len(cfg.seeds) > 1:
        table = seed_table(cases)
        table.to_csv(run_dir / "results" / "seeds.csv", index=False)
        md = seed_markdown(table, cfg.seeds)
        (run_dir / "results" / "seeds.md").write_text(md)
        extra = (
            f"## Seeds\n\nThe tables above pool {len(cfg.seeds)} seeds: each mean is the mean over seeds, "
            "and each paired test pairs a case with the same case and seed of the baseline.\n\n" + md
        )
    write_report(
        cases,
        run_dir,
        title=f"seewhy tune: {cfg.name} (ablations, {len(cfg.seeds)} seed(s))",
        baselines=cfg.baselines(),
        extra_md=extra,
    )
    write_manifest(
        cfg,
        run_dir,
        prep.inputs,
        features_info,
        status="finished",
        wall_s=time.perf_counter() - t0,
        trials={"total": len(cells), "trained": len(todo)},
    )
    log(f"finished in {time.perf_counter() - t0:.0f}s; report: {run_dir / 'report.md'}")
    return run_dir
