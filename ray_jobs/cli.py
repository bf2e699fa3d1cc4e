"""The `seewhy` console script: one entry point, one subcommand per job.

seewhy demo [--size small|medium] [--out DIR]      the whole system offline on a generated demo world
seewhy run --config X.yaml [--set a.b=c ...]      the evaluation protocol end to end
seewhy report RUN_DIR                              re-render report.md / summary.csv / plots
seewhy generate OUT_DIR [--preset small]           write a synthetic MicroLens-format log
seewhy featurize --config X.yaml [--set ...]       videos -> caption and feature stores
seewhy tune --config X.yaml [--set ...]            Ray Tune sweep: representations x models x seeds
seewhy submit [--address URL] -- <subcommand ...>  run a subcommand on a Ray cluster (Ray Jobs)
seewhy submit --status|--logs|--stop ID            a submitted job's status, logs; stop it
seewhy plan --config X.yaml [--cluster C.yaml]     resources, memory and time of a job, no model loaded
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ray_jobs.runtime import init_ray


def cmd_run(args: argparse.Namespace) -> int:
    from ray_jobs.config import load_config
    from ray_jobs.protocol import run

    return _run_and_report(load_config(args.config, args.set), lambda cfg: run(cfg, fresh=args.fresh))


def _run_and_report(cfg, job) -> int:
    """Start Ray as the run config says, run ``job(cfg)`` and print where its report is."""
    from ray_jobs.signals import stop_cleanly

    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.object_store_mb, cfg.ray.dashboard)
    with stop_cleanly(f"{cfg.name!r}"):  # after init_ray: Ray sets a SIGTERM handler of its own
        run_dir = job(cfg)
    print(f"report: {run_dir / 'report.md'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from ray_jobs.demo.recipe import run_demo

    t0 = time.perf_counter()
    init_ray(None, args.num_cpus, None)
    res = run_demo(args.size, args.out, args.seed, args.set)
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in res.step_s.items())
    print(f"demo finished in {time.perf_counter() - t0:.0f}s ({steps})")
    print(f"report:  {res.report}")
    print(f"plots:   {res.run_dir / 'plots'}")
    print(f"browser: {res.browser}")
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
    from ray_jobs.prepare import synth_config
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
    init_ray(args.address, args.num_cpus, None)
    result = run_featurize(cfg)
    print(result.table())
    print(f"stores: {cfg.store_root}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ray_jobs.tune import load_tune_config, run_sweep

    return _run_and_report(
        load_tune_config(args.config, args.set), lambda cfg: run_sweep(cfg, fresh=args.fresh)
    )


def cmd_submit(args: argparse.Namespace) -> int:
    from ray_jobs import submit as S

    cli_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    try:
        if args.stop or args.status or args.logs:
            if cli_args:
                raise ValueError("--status/--logs/--stop take a job id, not a subcommand after `--`")
            if args.stop:
                return S.stop(args.stop, args.address)
            if args.status:
                return S.status(args.status, args.address)
            return S.logs(args.logs, args.address, follow_logs=not args.no_wait)
        pip = [*args.pip, *(S.pinned_requirements(extras=["gpu"]) if args.pip_pinned else [])]
        env = S.parse_env(args.env)
        return S.submit(cli_args, args.address, env, pip, args.python, args.submission_id, not args.no_wait)
    except (ConnectionError, RuntimeError) as e:  # cluster unreachable, unknown job id
        print(f"seewhy: error: {e}", file=sys.stderr)
        return 2


def cmd_plan(args: argparse.Namespace) -> int:
    from ray_jobs.estimate import cluster_from_args, make_estimate

    cluster = cluster_from_args(args.cluster, args.gpus, args.cpus, args.gpu_mem_gb, args.nodes)
    print(make_estimate(args.config, args.set, cluster, args.n_items, args.rate).markdown())
    return 0


def _config_args(parser: argparse.ArgumentParser, example: str) -> None:
    """The ``--config`` preset and repeatable ``--set`` overrides of a config-driven subcommand."""
    parser.add_argument("--config", required=True, help=f"YAML preset, e.g. {example}")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)"
    )


def _fresh_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="retrain everything into the same run folder (a changed config is otherwise refused)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seewhy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the evaluation protocol end to end and write a run folder")
    _config_args(r, "ray_jobs/configs/quickstart.yaml")
    _fresh_arg(r)
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="generate -> featurize -> train -> report, offline, on a demo world")
    d.add_argument("--size", choices=["tiny", "small", "medium"], default="medium", help="demo world size")
    d.add_argument("--out", default="demo-out", help="output folder (world, stores, run)")
    d.add_argument("--seed", type=int, default=0, help="seed of the demo world")
    d.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    d.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-config key"
    )
    d.set_defaults(fn=cmd_demo)

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

    t = sub.add_parser("tune", help="Ray Tune sweep of the protocol over representations x models x seeds")
    _config_args(t, "ray_jobs/configs/tune_demo.yaml")
    _fresh_arg(t)
    t.set_defaults(fn=cmd_tune)

    s = sub.add_parser("submit", help="run a seewhy subcommand on a Ray cluster through Ray Job Submission")
    s.add_argument(
        "--address", default=None, help="job API (default: $RAY_ADDRESS, else http://127.0.0.1:8265)"
    )
    s.add_argument(
        "--no-wait", action="store_true", help="return after submitting (--logs: print, don't follow)"
    )
    s.add_argument("--status", metavar="ID", help="print a job's status")
    s.add_argument("--logs", metavar="ID", help="stream a job's logs until it ends")
    s.add_argument("--stop", metavar="ID", help="stop a job and wait until it has ended")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var (repeatable)")
    s.add_argument("--pip", action="append", default=[], metavar="SPEC", help="pip requirement for the job")
    s.add_argument("--pip-pinned", action="store_true", help="install seewhy[gpu]'s pinned deps in the job")
    s.add_argument("--python", default="python", help="python on the cluster's PATH that runs the job")
    s.add_argument("--submission-id", default=None, help="job id to use (default: Ray's)")
    s.add_argument("args", nargs=argparse.REMAINDER, help="-- then the seewhy subcommand and its arguments")
    s.set_defaults(fn=cmd_submit)

    pl = sub.add_parser("plan", help="resolve a featurize/run config into stages, resources, memory and time")
    pl.add_argument("--config", required=True)
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pl.add_argument("--cluster", default=None, help="Ray cluster launcher YAML, e.g. cluster.yaml")
    pl.add_argument("--gpus", type=int, default=None, help="GPUs per node (instead of --cluster)")
    pl.add_argument("--cpus", type=int, default=None, help="CPUs per node (instead of --cluster)")
    pl.add_argument("--gpu-mem-gb", type=float, default=None, help="memory of one GPU, GiB")
    pl.add_argument("--nodes", type=int, default=1, help="nodes of that shape (instead of --cluster)")
    pl.add_argument("--n-items", type=int, default=None, help="catalogue size (default: MicroLens-100K's)")
    pl.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="STAGE=CLIPS_PER_S",
        help="replace an assumed per-replica throughput, e.g. vlm=3.2 (repeatable)",
    )
    pl.set_defaults(fn=cmd_plan)
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
