"""`seewhy submit`: run any seewhy subcommand on a Ray cluster through Ray Job Submission.

``seewhy submit -- featurize --config X`` uploads the repo (Ray's ``working_dir``: the code the cluster
runs is the code here, without environments, outputs or history), starts ``python -m ray_jobs.cli
featurize --config X`` as the job's entrypoint on the head node, streams its logs, and exits with the
job's outcome. Inside the job Ray sets ``RAY_ADDRESS``, so the subcommand's ``ray.init()`` joins the
cluster. ``--status`` / ``--logs`` / ``--stop`` act on a job by its submission id.

The client talks HTTP to the dashboard's job API only (``http://127.0.0.1:8265`` by default: where
``ray dashboard cluster.yaml`` forwards it). Relative paths in the job resolve against the uploaded
copy, which is gone when the job ends: outputs must go to absolute paths on shared storage.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ray_jobs.runtime import RAY_ENV

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
REPO_ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = (
    ".venv*/",
    ".git/",
    "runs/",
    "demo-out/",
    "mlruns/",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
)
"""Never uploaded (gitignore syntax, relative to the repo root): environments, outputs, history."""
SECRETS = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    ".kube/",
    ".docker/config.json",
    "*credentials*.json",
    ".git-credentials",
    ".ray-token",
)
"""Never uploaded: files that commonly hold secrets, wherever they are in the tree."""
DATA = (
    "data/",
    "videos/",
    "stores/",
    "*.mp4",
    "*.mkv",
    "*.mov",
    "*.webm",
    "*.avi",
    "*.m4v",
    "*.ts",
    "*.wav",
    "*.flac",
    "*.mp3",
    "*.tar",
    "*.tar.gz",
    "*.zip",
    "*.ckpt",
    "*.safetensors",
    "*.bin",
    "*.pt",
)
"""Never uploaded: datasets, videos, stores and weights. The cluster reads them from shared storage
(absolute paths in the config), never from the code upload. The speech assets of the demo are .ogg."""
MAX_UPLOAD_MB = 50
"""Refuse an upload bigger than this (``--max-upload-mb``): the code is a few MB; more means data."""
JOB_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # job logs are files: progress bars only add noise
}
"""Environment of the job's driver and every worker it starts (the job's runtime_env ``env_vars``).

``RAY_ENV`` (cli.py) is not among them: the driver's ``ray.init`` passes those keys in its own
runtime_env, and Ray refuses to merge a job's runtime_env with a driver's that sets the same env var.
Values for them given with ``--env`` go to the driver's environment instead (``env K=V python ...``),
which is where ``ray.init`` reads them from."""
EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
"""Exit status of ``seewhy submit`` per final job status (a failed entrypoint's own code wins)."""


def pinned_requirements(
    pyproject: Path = REPO_ROOT / "pyproject.toml", extras: Sequence[str] = ()
) -> list[str]:
    """The project's pinned dependencies (and those of ``extras``), as pip requirement strings."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"{pyproject}: no optional dependency group {extra!r} (have {sorted(optional)})")
        reqs += optional[extra]
    return reqs


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` from ``--env`` into a dict; a pair without ``=`` is an error naming it."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def check_checkout(root: Path = REPO_ROOT) -> None:
    """Refuse to upload anything but a seewhy source checkout (not ``site-packages``, not a stray folder)."""
    pyproject = root / "pyproject.toml"
    name = None
    if pyproject.is_file():
        name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
    if name != "seewhy" or not (root / "ray_jobs" / "cli.py").is_file():
        raise ValueError(
            f"{root} is not a seewhy checkout (no pyproject.toml naming project 'seewhy' beside ray_jobs/): "
            "`seewhy submit` uploads the checkout it runs from; install seewhy editable from a clone "
            "(`pip install -e .`, as scripts/setup.sh does) and submit from there"
        )


def upload_files(root: Path = REPO_ROOT) -> list[tuple[str, int]]:
    """The (relative path, size) of every file Ray would upload from ``root``: what ``EXCLUDES``,
    ``SECRETS``, ``DATA``, ``.gitignore`` and ``.rayignore`` leave. Uses the matcher Ray itself uses,
    so the list is the upload. A symbolic link is refused: Ray would follow it out of the tree."""
    from ray._private.thirdparty.pathspec import PathSpec

    patterns = [*EXCLUDES, *SECRETS, *DATA]
    for ignore in (".gitignore", ".rayignore"):
        if (root / ignore).is_file():
            patterns += (root / ignore).read_text().splitlines()
    spec = PathSpec.from_lines("gitwildmatch", patterns)
    files = []
    for here, dirs, names in os.walk(root):
        rel_dir = Path(here).relative_to(root)
        dirs[:] = [d for d in sorted(dirs) if not spec.match_file(f"{rel_dir / d}/")]
        for name in sorted(names):
            rel = rel_dir / name
            if spec.match_file(str(rel)):
                continue
            path = root / rel
            if path.is_symlink():
                raise ValueError(
                    f"{path} is a symbolic link (to {os.readlink(path)}): `seewhy submit` would upload what "
                    "it points to; remove it, or add it to .rayignore"
                )
            files.append((str(rel), path.stat().st_size))
        for d in dirs:
            if (root / rel_dir / d).is_symlink():
                raise ValueError(
                    f"{root / rel_dir / d} is a symbolic link to a folder: `seewhy submit` would upload "
                    "what it points to; remove it, or add it to .rayignore"
                )
    return files


def check_upload(root: Path = REPO_ROOT, max_mb: float = MAX_UPLOAD_MB) -> int:
    """Refuse a working dir that is not a checkout, or whose upload is over ``max_mb``; its size in bytes."""
    check_checkout(root)
    files = upload_files(root)
    total = sum(size for _, size in files)
    if total > max_mb * 2**20:
        biggest = ", ".join(
            f"{rel} ({size / 2**20:.1f} MB)" for rel, size in sorted(files, key=lambda f: -f[1])[:5]
        )
        raise ValueError(
            f"the upload of {root} would be {total / 2**20:.1f} MB, over --max-upload-mb {max_mb:g}; biggest: "
            f"{biggest}. Data belongs on shared storage (absolute paths in the config); add such files to "
            ".rayignore, or raise --max-upload-mb"
        )
    return total


def runtime_env(
    working_dir: Path = REPO_ROOT, env: dict[str, str] | None = None, pip: Sequence[str] = ()
) -> dict[str, Any]:
    """The job's runtime_env: the repo as working_dir, seewhy's env vars (``env`` wins), optional pip deps."""
    out: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": [*EXCLUDES, *SECRETS, *DATA],
        "env_vars": {**JOB_ENV, **(env or {})},
    }
    if pip:
        out["pip"] = list(pip)
    return out


def entrypoint(
    args: Sequence[str],
    python: str = "python",
    driver_env: dict[str, str] | None = None,
    check: Callable[[list[str]], object] | None = None,
) -> str:
    """The shell command the job runs: the seewhy CLI as a module of the uploaded working_dir.

    ``check`` parses the arguments here first (the CLI passes its own parser), so a typo fails now,
    not minutes later on the cluster."""
    if not args:
        raise ValueError("nothing to submit: give the seewhy subcommand after `--`, e.g. `-- run --config X`")
    if args[0] == "submit":
        raise ValueError(
            "`seewhy submit -- submit ...` would submit from inside a job; submit the subcommand itself"
        )
    if check is not None:
        check(list(args))
    prefix = ["env", *(f"{k}={v}" for k, v in driver_env.items())] if driver_env else []
    return shlex.join([*prefix, python, "-m", "ray_jobs.cli", *args])


def client(address: str | None):
    """A JobSubmissionClient for ``address`` (default: ``$RAY_ADDRESS``, else the forwarded dashboard)."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except ConnectionError as e:
        raise ConnectionError(
            f"no Ray job server at {address} ({e}); is the cluster up and `ray dashboard cluster.yaml` running?"
        ) from None


def submit(
    cli_args: Sequence[str],
    address: str | None = None,
    env: dict[str, str] | None = None,
    pip: Sequence[str] = (),
    python: str = "python",
    submission_id: str | None = None,
    wait: bool = True,
    out: TextIO | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    check: Callable[[list[str]], object] | None = None,
) -> int:
    """Submit ``seewhy <cli_args>``; with ``wait``, stream its logs and return its exit status, else 0."""
    out = out or sys.stdout
    env = env or {}
    driver_env = {k: v for k, v in env.items() if k in RAY_ENV}
    command = entrypoint(cli_args, python, driver_env, check)
    size = check_upload(REPO_ROOT, max_upload_mb)
    jobs = client(address)
    job_env = {k: v for k, v in env.items() if k not in RAY_ENV}
    job_id = jobs.submit_job(
        entrypoint=command, runtime_env=runtime_env(env=job_env, pip=pip), submission_id=submission_id
    )
    print(f"submitted {job_id}: {command}", file=out)
    print(f"uploaded {size / 2**20:.1f} MB of code (no secrets, data or outputs)", file=out, flush=True)
    if not wait:
        print(f"follow it with: seewhy submit --logs {job_id}  (status: --status, stop: --stop)", file=out)
        return 0
    try:
        return follow(jobs, job_id, out)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; the job keeps running. Stop it with: seewhy submit --stop {job_id}",
            file=out,
        )
        return 130


def follow(jobs: Any, job_id: str, out: TextIO | None = None, poll_s: float = 0.5) -> int:
    """Stream a job's logs until it ends; print and return its exit status (``EXIT``)."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    # The log stream can close a moment before the status turns terminal.
    while not (info := jobs.get_job_info(job_id)).status.is_terminal():
        time.sleep(poll_s)
    return report(info, job_id, out)


def report(info: Any, job_id: str, out: TextIO | None = None) -> int:
    """Print a job's final status line; its exit status (the entrypoint's own code when it failed)."""
    out = out or sys.stdout
    status = str(info.status)
    line = f"job {job_id}: {status}"
    if info.message and status != "SUCCEEDED":
        line += f" ({info.message.splitlines()[0].rstrip(' ,:')})"  # Ray appends the log tail: shown above
    print(line, file=out, flush=True)
    code = EXIT.get(status, 1)
    if status == "FAILED" and info.driver_exit_code:
        code = info.driver_exit_code
    return code


def status(job_id: str, address: str | None = None, out: TextIO | None = None) -> int:
    """Print a job's status, entrypoint and message; 0 while it runs or after success."""
    out = out or sys.stdout
    info = client(address).get_job_info(job_id)
    print(f"{job_id}: {info.status}\nentrypoint: {info.entrypoint}", file=out)
    if info.message:
        print(f"message: {info.message}", file=out)
    return 0 if str(info.status) in ("PENDING", "RUNNING", "SUCCEEDED") else EXIT.get(str(info.status), 1)


def logs(job_id: str, address: str | None = None, follow_logs: bool = True, out: TextIO | None = None) -> int:
    """Print a job's logs; with ``follow_logs``, keep streaming until it ends and return its exit status."""
    out = out or sys.stdout
    jobs = client(address)
    if follow_logs:
        return follow(jobs, job_id, out)
    out.write(jobs.get_job_logs(job_id))
    return 0


def stop(job_id: str, address: str | None = None, timeout_s: float = 60, out: TextIO | None = None) -> int:
    """Ask Ray to stop a job (SIGTERM, then SIGKILL) and wait until it has ended."""
    out = out or sys.stdout
    jobs = client(address)
    if not jobs.stop_job(job_id):
        print(f"{job_id} was not running", file=out)
    deadline = time.monotonic() + timeout_s
    while not (info := jobs.get_job_info(job_id)).status.is_terminal():
        if time.monotonic() > deadline:
            print(f"{job_id} still {info.status} after {timeout_s:.0f}s", file=out)
            return 1
        time.sleep(0.5)
    print(f"{job_id}: {info.status}", file=out)
    return 0
