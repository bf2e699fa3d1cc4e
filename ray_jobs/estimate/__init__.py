"""`seewhy plan`: what a featurize, run or tune config will ask of a cluster, without loading a model.

    core.py       numbers with their sources (model sizes, throughputs), clusters, the Estimate type
    featurize.py  stages, actor pools, GPU memory, visual tokens and time of a featurize config
    run.py        trainings, Ray Train workers and a time bound of a run or tune config

``load_job_config`` tells the config kinds apart by their keys; ``make_estimate`` hands each to its half.
"""

from __future__ import annotations

from pathlib import Path

from ray_jobs.estimate.core import (
    MODEL_SIZES,
    Cluster,
    Estimate,
    cluster_from_args,
    cluster_from_yaml,
    parse_rates,
)

__all__ = [
    "MODEL_SIZES",
    "Cluster",
    "Estimate",
    "cluster_from_args",
    "cluster_from_yaml",
    "load_job_config",
    "make_estimate",
    "parse_rates",
]


def load_job_config(config: str | Path, overrides: list[str] = ()):
    """A featurize, run or tune config (told apart by their keys), validated into its model."""
    from ray_jobs.config import load_tree, validate

    tree = load_tree(config, list(overrides))
    if "provider" in tree:
        raise ValueError(
            f"{config} is a cluster launcher config: pass it as --cluster, with a job's --config"
        )
    if "data" in tree:
        if "sweep" in tree:
            from ray_jobs.tune import TuneConfig as model
        else:
            from ray_jobs.config import RunConfig as model
        return validate(model, tree, str(config))
    if "store_root" in tree or "catalog" in tree:
        from featurize.config import FeaturizeConfig

        return validate(FeaturizeConfig, tree, str(config), context={"base_dir": str(Path.cwd())})
    raise ValueError(f"{config}: neither a featurize config (store_root, catalog) nor a run config (data)")


def make_estimate(
    config: str | Path,
    overrides: list[str] = (),
    cluster: Cluster | None = None,
    n_items: int | None = None,
    rates: list[str] = (),
) -> Estimate:
    """Load a featurize, run or tune config (``load_job_config``) and resolve it into an Estimate."""
    from featurize.config import FeaturizeConfig

    cfg = load_job_config(config, overrides)
    if isinstance(cfg, FeaturizeConfig):
        from ray_jobs.estimate.featurize import estimate_featurize

        return estimate_featurize(cfg, str(config), cluster, n_items, parse_rates(list(rates)))
    from ray_jobs.estimate.run import estimate_run

    return estimate_run(cfg, str(config), cluster)
