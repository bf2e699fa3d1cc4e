"""`seewhy submit` against a real Ray head started here (`ray start --head` with the job server).

The head is a separate Ray instance (its own ports and temp dir, so it never meets the session's
``ray_local``); the client talks to its job API over HTTP only. The head runs as a child process
(``--block``) in its own process group, which the fixture terminates by its id at the end.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_jobs import submit as S
from ray_jobs.cli import build_parser, main
from ray_jobs.runtime import RAY_ENV

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A 1-CPU Ray head on 127.0.0.1 with the dashboard; yields the job API address."""
    from ray.job_submission import JobSubmissionClient

    ports = {
        k: _free_port()
        for k in ("port", "dashboard", "agent", "agent_grpc", "env_agent", "metrics", "client")
    }
    # A short temp dir: Ray's socket paths must stay under the 107-byte AF_UNIX limit.
    temp_dir = tempfile.mkdtemp(prefix="swh-", dir="/tmp")
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",  # the job's `python` is this venv's
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={ports['port']}",
        "--num-cpus=1", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
        f"--dashboard-agent-listen-port={ports['agent']}", f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--runtime-env-agent-port={ports['env_agent']}", f"--metrics-export-port={ports['metrics']}",
        f"--ray-client-server-port={ports['client']}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    log_path = Path(temp_dir) / "ray_start.log"
    with log_path.open("w") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited {head.returncode}: {log_path.read_text()}")
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield address
    finally:
        # Only what this fixture started: the `ray start --block` process cleans up its Ray children on
        # SIGTERM; anything left in its process group is killed by the group's id.
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_entrypoint_and_runtime_env():
    cmd = S.entrypoint(["generate", "/data/out dir", "--preset", "small"])
    assert cmd == "python -m ray_jobs.cli generate '/data/out dir' --preset small"
    cmd = S.entrypoint(["report", "/r"], "python3", {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1"})
    assert cmd == "env RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=1 python3 -m ray_jobs.cli report /r"
    env = S.runtime_env(env={"HF_HOME": "/models"}, pip=["vllm==0.32.0"])
    assert Path(env["working_dir"]) == S.REPO_ROOT and (S.REPO_ROOT / "ray_jobs" / "cli.py").exists()
    assert {".venv*/", "runs/", "demo-out/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0" and env["env_vars"]["HF_HOME"] == "/models"
    # The driver's ray.init sets these in its own runtime_env; Ray refuses a job env that repeats them.
    assert not set(RAY_ENV) & set(env["env_vars"]) and env["pip"] == ["vllm==0.32.0"]
    pins = S.pinned_requirements(extras=["gpu"])
    assert "ray[default,data,train,tune]==2.60.0" in pins and "vllm==0.32.0" in pins
    assert S.parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}


def test_bad_submissions_fail_before_contacting_a_cluster():
    with pytest.raises(ValueError, match="nothing to submit"):
        S.entrypoint([])
    with pytest.raises(ValueError, match="inside a job"):
        S.entrypoint(["submit", "--", "report", "x"])
    with pytest.raises(SystemExit):  # argparse: unknown subcommand, caught locally
        S.entrypoint(["trian", "--config", "x.yaml"], check=build_parser().parse_args)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        S.parse_env(["HF_HOME"])
    with pytest.raises(ValueError, match="no optional dependency group 'cuda'"):
        S.pinned_requirements(extras=["cuda"])


@pytest.mark.integration
def test_submit_runs_a_seewhy_job_and_reports(ray_head, tmp_path, capsys):
    out_dir = tmp_path / "log"
    with pytest.raises(SystemExit) as done:
        main(["submit", "--address", ray_head, "--", "generate", str(out_dir), "--preset", "small"])
    printed = capsys.readouterr().out
    assert done.value.code == 0, printed
    assert "SUCCEEDED" in printed and "interactions" in printed  # the job's own output, streamed
    pairs = pd.read_csv(out_dir / "MicroLens-100k_pairs.csv")
    assert len(pairs) > 1000 and list(pairs.columns) == ["user", "item", "timestamp"]

    job_id = printed.split("submitted ", 1)[1].split(":", 1)[0]
    buf = io.StringIO()
    assert S.status(job_id, ray_head, out=buf) == 0 and "SUCCEEDED" in buf.getvalue()
    buf = io.StringIO()
    assert S.logs(job_id, ray_head, follow_logs=False, out=buf) == 0 and "interactions" in buf.getvalue()


@pytest.mark.integration
def test_failing_job_exits_with_its_code(ray_head, tmp_path):
    buf = io.StringIO()
    code = S.submit(["run", "--config", str(tmp_path / "missing.yaml")], address=ray_head, out=buf)
    assert code == 2, buf.getvalue()  # a ConfigError: `seewhy run` exits 2
    assert "FAILED" in buf.getvalue() and "missing.yaml does not exist" in buf.getvalue()


@pytest.mark.integration
def test_stop_ends_a_long_job(ray_head, tmp_path):
    """The quick-start on a 1-CPU head: its ray.init joins the cluster (so the job's runtime_env merges
    with the driver's) and it writes to the absolute output_dir; then Ray Train waits for a second CPU,
    a job that runs until stopped."""
    buf = io.StringIO()
    job = ["run", "--config", "ray_jobs/configs/quickstart.yaml", "--set", f"output_dir={tmp_path}"]
    assert S.submit(job, address=ray_head, submission_id="seewhy-stop-test", wait=False, out=buf) == 0
    client = S.client(ray_head)
    manifest = tmp_path / "quickstart" / "manifest.json"  # written after ray.init, before training
    deadline = time.monotonic() + 240
    while not manifest.exists():
        status = client.get_job_status("seewhy-stop-test")
        assert not status.is_terminal(), client.get_job_logs("seewhy-stop-test")
        assert time.monotonic() < deadline, client.get_job_logs("seewhy-stop-test")
        time.sleep(1)
    time.sleep(2)
    assert str(client.get_job_status("seewhy-stop-test")) == "RUNNING"
    with pytest.raises(SystemExit) as done:
        main(["submit", "--address", ray_head, "--stop", "seewhy-stop-test"])
    assert done.value.code == 0
    assert str(client.get_job_status("seewhy-stop-test")) == "STOPPED"
    buf = io.StringIO()
    assert S.status("seewhy-stop-test", ray_head, out=buf) == S.EXIT["STOPPED"]


def _checkout(root: Path) -> Path:
    (root / "ray_jobs").mkdir(parents=True)
    (root / "ray_jobs" / "cli.py").write_text("")
    (root / "pyproject.toml").write_text('[project]\nname = "seewhy"\n')
    return root


def test_upload_leaves_out_secrets_data_and_outputs(tmp_path):
    root = _checkout(tmp_path / "repo")
    kept = ["ray_jobs/cli.py", "pyproject.toml", "docs/a.md", "featurize/x.py"]
    left_out = [
        ".env", ".env.local", "certs/server.pem", "deploy/tls.key", ".aws/credentials", ".ssh/id_ed25519",
        "home/id_rsa", ".netrc", "data/pairs.csv", "videos/1.mp4", "clips/2.mkv", "weights/m.safetensors",
        "runs/r/summary.csv", "mlruns/0/meta.yaml", ".venv/bin/python", ".git/config", "secret.txt",
    ]  # fmt: skip
    for rel in kept[2:] + left_out:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / ".gitignore").write_text("secret.txt\n")
    uploaded = {rel for rel, _ in S.upload_files(root)}
    assert uploaded == {*kept, ".gitignore"}
    assert S.check_upload(root) == sum(size for _, size in S.upload_files(root))
    # Ray gets the same patterns, so what it uploads is what was checked.
    assert {".env", "*.pem", ".ssh/", "data/", "*.mp4"} <= set(S.runtime_env(root)["excludes"])


def test_upload_refuses_a_big_tree_a_link_or_a_non_checkout(tmp_path):
    root = _checkout(tmp_path / "repo")
    (root / "notes.csv").write_bytes(b"x" * (2 * 2**20))
    with pytest.raises(ValueError, match=r"would be 2\.0 MB, over --max-upload-mb 1; biggest: notes\.csv"):
        S.check_upload(root, max_mb=1)
    assert S.check_upload(root, max_mb=3) > 2 * 2**20
    (root / "outside").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside is a symbolic link"):
        S.check_upload(root)
    with pytest.raises(ValueError, match="is not a seewhy checkout"):
        S.check_upload(tmp_path / "repo" / "ray_jobs")  # e.g. site-packages after a plain pip install
    S.check_upload(S.REPO_ROOT)  # this checkout passes with the default cap
