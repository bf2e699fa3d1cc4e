"""The `seewhy` console script: one entry point, one subcommand per job.

seewhy run --config X.yaml [--set a.b=c ...]      the evaluation protocol end to end
seewhy report RUN_DIR                              re-render report.md / summary.csv / plots
seewhy generate OUT_DIR [--preset small]           write a synthetic MicroLens-format log
seewhy featurize --config X.yaml [--set ...]       videos -> caption and feature stores
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def _init_ray(
    address: str | None, num_cpus: int | None, object_store_mb: int | None, dashboard: bool = True
) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray Train's controller collects each worker's report on its health-check tick (2 s by default),
    # and a report blocks until the previous one is collected: per-epoch checkpoints on small logs
    # would spend most of their time waiting. A quarter second keeps epochs cheap.
    env = {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}
    os.environ.update(env)  # a local Ray started here inherits it
    # The dashboard also serves the state API that Ray Train's placement-group cleaner polls; it
    # listens on 127.0.0.1 only (DESIGN.md: failure and input rules).
    kwargs: dict = {
        "include_dashboard": dashboard,
        "dashboard_host": "127.0.0.1",
        "configure_logging": False,
        "runtime_env": {"env_vars": env},
    }
    if address:
        kwargs["address"] = address
    else:
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        if object_store_mb:
            kwargs["object_store_memory"] = object_store_mb * 1024**2
    ray.init(**kwargs)


def cmd_run(args: argparse.Namespace) -> int:
    from ray_jobs.config import load_config
    from ray_jobs.protocol import run

    cfg = load_config(args.config, args.set)
    _init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.object_store_mb, cfg.ray.dashboard)
    run_dir = run(cfg)
    print(f"report: {run_dir / 'report.md'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from evaluate.report import write_report

    run_dir = Path(args.run_dir).resolve()
    cases_path = run_dir / "results" / "cases.parquet"
    if not cases_path.exists():
        raise SystemExit(f"{cases_path} does not exist: is {run_dir} a finished `seewhy run` folder?")
    cases = pd.read_parquet(cases_path)
    paths = write_report(cases, run_dir, title=args.title or f"seewhy run: {run_dir.name}")
    print(f"report: {paths.get('report', run_dir / 'report.md')}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ray_jobs.protocol import synth_config
    from train.synth import generate_log, write_microlens

    cfg = synth_config(args.preset, args.seed)
    interactions, items = generate_log(cfg)
    paths = write_microlens(interactions, items, Path(args.out_dir))
    for name, p in paths.items():
        print(f"{name}: {p}")
    print(
        f"{len(interactions):,} interactions, {interactions['user_id'].nunique():,} users, {len(items):,} items"
    )
    return 0


def cmd_featurize(args: argparse.Namespace) -> int:
    from featurize.config import FeaturizeConfig
    from featurize.pipeline import run_featurize
    from ray_jobs.config import load_tree, validate

    tree = load_tree(args.config, args.set)
    if args.overwrite:
        tree["overwrite"] = True
    # Relative paths resolve against the working directory, as in `seewhy run`.
    cfg = validate(FeaturizeConfig, tree, args.config, context={"base_dir": str(Path.cwd())})
    _init_ray(args.address, args.num_cpus, None)
    result = run_featurize(cfg)
    print(result.table())
    print(f"stores: {cfg.store_root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seewhy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the evaluation protocol end to end and write a run folder")
    r.add_argument("--config", required=True, help="YAML preset, e.g. ray_jobs/configs/quickstart.yaml")
    r.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)"
    )
    r.set_defaults(fn=cmd_run)

    rep = sub.add_parser("report", help="re-render the report of a finished run folder")
    rep.add_argument("run_dir")
    rep.add_argument("--title", default=None)
    rep.set_defaults(fn=cmd_report)

    g = sub.add_parser("generate", help="write a synthetic MicroLens-format interaction log")
    g.add_argument("out_dir")
    g.add_argument("--preset", choices=["small", "medium", "microlens_100k"], default="small")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=cmd_generate)

    f = sub.add_parser("featurize", help="turn a catalogue of videos into caption and feature stores")
    f.add_argument("--config", required=True)
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    f.add_argument("--address", default=None, help="Ray cluster address ('auto'); default: a local Ray")
    f.add_argument("--overwrite", action="store_true", help="clear stores written with another configuration")
    f.set_defaults(fn=cmd_featurize)
    return p


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from ray_jobs.config import ConfigError

    try:
        code = args.fn(args)
    except ConfigError as e:
        print(f"seewhy: {e}", file=sys.stderr)
        code = 2
    except (ValueError, FileNotFoundError) as e:
        print(f"seewhy: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
