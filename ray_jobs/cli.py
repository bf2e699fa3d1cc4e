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

Every subcommand that takes --config also takes --print-config: print the resolved configuration
(preset + overrides + defaults) as YAML and exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ray_jobs.config_help import help_action
from ray_jobs.runtime import init_ray
from ray_jobs.submit import MAX_UPLOAD_MB


def cmd_run(args: argparse.Namespace) -> int:
    from ray_jobs.config import load_config
    from ray_jobs.protocol import run

    cfg = load_config(args.config, args.set)
    if args.print_config:
        return _print_config(cfg)
    return _run_and_report(cfg, lambda cfg: run(cfg, fresh=args.fresh))


def _print_config(cfg) -> int:
    """``--print-config``: the resolved configuration (a pydantic model) as YAML on stdout."""
    import yaml

    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


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
    if args.retry_errors:
        tree["retry_errors"] = True
    # Relative paths resolve against the working directory, as in `seewhy run`.
    cfg = validate(FeaturizeConfig, tree, args.config, context={"base_dir": str(Path.cwd())})
    if args.print_config:
        return _print_config(cfg)
    init_ray(args.address, args.num_cpus, None)
    result = run_featurize(cfg)
    print(result.table())
    print(f"stores: {cfg.store_root}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ray_jobs.tune import load_tune_config, run_sweep

    cfg = load_tune_config(args.config, args.set)
    if args.print_config:
        return _print_config(cfg)
    return _run_and_report(cfg, lambda cfg: run_sweep(cfg, fresh=args.fresh))


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
        return S.submit(
            cli_args,
            args.address,
            env,
            pip,
            args.python,
            args.submission_id,
            not args.no_wait,
            max_upload_mb=args.max_upload_mb,
            check=build_parser().parse_args,
        )
    except (ConnectionError, RuntimeError, ValueError) as e:  # unreachable, unknown job, refused upload
        print(f"seewhy: error: {e}", file=sys.stderr)
        return 2


def cmd_plan(args: argparse.Namespace) -> int:
    from ray_jobs.estimate import cluster_from_args, load_job_config, make_estimate

    if args.print_config:
        return _print_config(load_job_config(args.config, args.set))
    cluster = cluster_from_args(args.cluster, args.gpus, args.cpus, args.gpu_mem_gb, args.nodes)
    print(make_estimate(args.config, args.set, cluster, args.n_items, args.rate).markdown())
    return 0


CONFIG_CLASSES = {
    "run": "ray_jobs.config:RunConfig",
    "tune": "ray_jobs.tune:TuneConfig",
    "featurize": "featurize.config:FeaturizeConfig",
}
"""The config class of each config-driven subcommand (its keys are what --config and --set accept)."""


def _config_args(parser: argparse.ArgumentParser, example: str, command: str | None = None) -> None:
    """The ``--config`` preset, repeatable ``--set`` overrides and ``--help-config`` of a subcommand."""
    parser.add_argument("--config", required=True, help=f"YAML preset, e.g. {example}")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)"
    )
    if command is not None:  # `plan` takes any kind of config
        parser.add_argument(
            "--help-config",
            action=help_action(CONFIG_CLASSES[command], f"seewhy {command}: config keys (YAML and --set)"),
            help="list every config key with its type, default and meaning, then exit",
        )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration as YAML and exit"
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("seewhy")
    except PackageNotFoundError:  # run from a checkout (ray job submit --working-dir .)
        return "unknown (not installed)"


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
    p.add_argument("--version", action="version", version=f"seewhy {_version()}", help="print the version")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the evaluation protocol end to end and write a run folder")
    _config_args(r, "ray_jobs/configs/quickstart.yaml", "run")
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
    rep.add_argument("run_dir", help="a finished run folder (holds results/cases.parquet)")
    rep.add_argument("--title", default=None, help="report title (default: the run folder's name)")
    rep.set_defaults(fn=cmd_report)

    g = sub.add_parser("generate", help="write a synthetic MicroLens-format interaction log")
    g.add_argument("out_dir", help="folder to write the log into")
    g.add_argument(
        "--preset", choices=["small", "medium", "microlens_100k"], default="small", help="size of the log"
    )
    g.add_argument("--seed", type=int, default=0, help="generator seed (the same seed, the same files)")
    g.set_defaults(fn=cmd_generate)

    f = sub.add_parser("featurize", help="turn a catalogue of videos into caption and feature stores")
    _config_args(f, "ray_jobs/configs/featurize/offline.yaml", "featurize")
    f.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    f.add_argument("--address", default=None, help="Ray cluster address ('auto'); default: a local Ray")
    f.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild stores written with another configuration (swapped in when complete)",
    )
    f.add_argument(
        "--retry-errors",
        action="store_true",
        help="process again the items whose last row is an error (poison pills and time-outs included)",
    )
    f.set_defaults(fn=cmd_featurize)

    t = sub.add_parser("tune", help="Ray Tune sweep of the protocol over representations x models x seeds")
    _config_args(t, "ray_jobs/configs/tune_demo.yaml", "tune")
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
    s.add_argument(
        "--max-upload-mb",
        type=float,
        default=MAX_UPLOAD_MB,
        help=f"refuse to upload more code than this (default {MAX_UPLOAD_MB:g}; secrets and data never go)",
    )
    s.add_argument("args", nargs=argparse.REMAINDER, help="-- then the seewhy subcommand and its arguments")
    s.set_defaults(fn=cmd_submit)

    pl = sub.add_parser("plan", help="resolve a featurize/run config into stages, resources, memory and time")
    _config_args(pl, "ray_jobs/configs/quickstart.yaml")
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
    except Exception as e:
        message = _job_stopped(e)
        if message is None:
            raise
        print(f"seewhy: error: {message}", file=sys.stderr)
        code = 1
    sys.exit(code)


def _loaded(module: str, name: str) -> type | None:
    """A class of an already imported module (an exception of a module never imported was never raised)."""
    return getattr(sys.modules.get(module), name, None)


def _job_stopped(e: Exception) -> str | None:
    """One line for a job that ran and stopped (a featurize run, failed trials, a failed training).

    None for anything else: a bug keeps its traceback. The classes are looked up, not imported at
    the top, so ``seewhy --help`` stays light.
    """
    stopped = [_loaded("featurize.graph", "RunStopped"), _loaded("ray_jobs.tune", "TrialsFailed")]
    if any(cls and isinstance(e, cls) for cls in stopped):
        return " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    failed = _loaded("ray.train", "TrainingFailedError")
    if failed and isinstance(e, failed):
        from featurize.graph import root_cause

        return f"training failed ({type(e).__name__}): {root_cause(e)}"
    return None


if __name__ == "__main__":
    main()
