"""Ctrl-C and SIGTERM during `seewhy run` training: a clean stop, a resume hint, no process left behind."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _with_token(token: str) -> list[int]:
    """Pids of live processes whose environment carries ``token`` (everything the command started)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if token.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass  # gone, or not ours
    return found


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(
            signal.SIGINT,
            marks=pytest.mark.xfail(
                reason="not yet reliable: in a clean-clone CI run the first SIGINT did not end the run "
                "within 90 s (issue 12.10 stays open)",
                strict=False,
            ),
        ),
        signal.SIGTERM,
    ],
)
def test_a_signal_during_training_stops_cleanly_and_leaves_no_process(tmp_path, sig):
    token = f"seewhy-signal-test-{uuid.uuid4().hex}"
    sets = [
        f"output_dir={tmp_path}",
        "data.synthetic.preset=small",
        "ray.num_cpus=2",
        "ray.dashboard=true",  # the dashboard and its agents must go too
        "train.epochs_max=200",
        "train.patience=200",
    ]
    args = [sys.executable, "-m", "ray_jobs.cli", "run", "--config", "ray_jobs/configs/quickstart.yaml"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "SEEWHY_TEST_TOKEN": token, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    out = b""
    try:
        deadline = time.monotonic() + 300
        while b"fit epoch 2" not in out:  # training is under way, checkpoints written
            assert time.monotonic() < deadline and proc.poll() is None, out.decode()[-3000:]
            if select.select([proc.stdout], [], [], 1.0)[0]:
                out += os.read(proc.stdout.fileno(), 65536)
        proc.send_signal(sig)
        t0 = time.monotonic()
        rest, _ = proc.communicate(timeout=90)
        stopped_s = time.monotonic() - t0
        out += rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.decode(errors="replace")
    assert proc.returncode == 128 + sig, text[-3000:]
    assert "resume with the same command" in text
    assert stopped_s < 60, stopped_s
    survivors = _with_token(token)
    for _ in range(20):
        if not survivors:
            break
        time.sleep(0.5)
        survivors = _with_token(token)
    names = [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in survivors if Path(f"/proc/{p}").exists()]
    assert not survivors, names
    assert list((tmp_path / "quickstart" / "ray_train").rglob("checkpoint_*"))  # the checkpoint is kept
