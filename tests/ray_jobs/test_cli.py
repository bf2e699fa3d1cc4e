"""CLI habits: --version, --print-config on every config-taking subcommand, help on every argument,
and a one-line error with a non-zero exit code when a job stops (no traceback)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from ray_jobs import cli
from ray_jobs.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "ray_jobs" / "configs"


def _walk(parser: argparse.ArgumentParser, path: str):
    """Every (command path, action) of the parser tree, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helped.get(name)  # the subcommand's own line in --help
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_argument_has_help() -> None:
    items = list(_walk(build_parser(), "seewhy"))
    assert len(items) > 40  # the walk reached the subcommands
    missing = [name for name, text in items if not text or text == argparse.SUPPRESS]
    assert missing == []


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ray_jobs.cli", "--version"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout == f"seewhy {version('seewhy')}\n"


def _printed(capsys, argv: list[str]) -> dict:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    out = capsys.readouterr()
    assert stop.value.code == 0, out.err
    return yaml.safe_load(out.out)


@pytest.mark.parametrize(
    ("argv", "key", "value"),
    [
        (["run", "--config", str(CONFIGS / "quickstart.yaml")], "train.epochs_max", 3),
        (["tune", "--config", str(CONFIGS / "tune_demo.yaml")], "train.epochs_max", 3),
        (["featurize", "--config", str(CONFIGS / "featurize" / "offline.yaml")], "vlm.max_new_tokens", 7),
        (["plan", "--config", str(CONFIGS / "quickstart.yaml")], "train.epochs_max", 3),
    ],
)
def test_print_config_is_the_resolved_config(capsys, tmp_path, argv, key, value) -> None:
    tree = _printed(capsys, [*argv, "--set", f"{key}={value}", "--print-config"])
    section, field = key.split(".")
    assert tree[section][field] == value  # the override
    assert "ray" in tree or "resources" in tree  # defaults the preset does not mention
    # The printout is a complete config: fed back, it resolves to itself.
    again = tmp_path / "printed.yaml"
    again.write_text(yaml.safe_dump(tree))
    assert _printed(capsys, [argv[0], "--config", str(again), "--print-config"]) == tree


def test_run_stopped_is_one_line(monkeypatch, capsys) -> None:
    from featurize import pipeline
    from featurize.graph import RunStopped

    def stopped(cfg):
        raise RunStopped(
            "featurize captions: the run stopped (RayTaskError): RuntimeError: cannot load model tiny:x\n"
            "Everything written so far is kept; fix the cause and rerun to continue."
        )

    monkeypatch.setattr(pipeline, "run_featurize", stopped)
    monkeypatch.setattr(cli, "init_ray", lambda *a, **k: None)
    with pytest.raises(SystemExit) as stop:
        main(["featurize", "--config", str(CONFIGS / "featurize" / "offline.yaml")])
    err = capsys.readouterr().err
    assert stop.value.code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("seewhy: error: featurize captions: the run stopped") and "rerun to continue" in err


def test_failed_trials_and_training_are_one_line(monkeypatch, capsys) -> None:
    from ray.train import WorkerGroupError

    from ray_jobs import tune

    def failed(cfg, fresh=False):
        raise tune.TrialsFailed("2 trial(s) failed (...):\n  a: ValueError: x\n  b: ValueError: y")

    monkeypatch.setattr(tune, "run_sweep", failed)
    monkeypatch.setattr(cli, "init_ray", lambda *a, **k: None)
    with pytest.raises(SystemExit) as stop:
        main(["tune", "--config", str(CONFIGS / "tune_demo.yaml")])
    assert stop.value.code == 1
    assert (
        capsys.readouterr().err
        == "seewhy: error: 2 trial(s) failed (...): a: ValueError: x b: ValueError: y\n"
    )

    from ray_jobs import protocol

    def training_failed(cfg, fresh=False):
        raise WorkerGroupError(
            "Traceback ...\n  File x\nRuntimeError: CUDA out of memory", {0: RuntimeError()}
        )

    monkeypatch.setattr(protocol, "run", training_failed)
    with pytest.raises(SystemExit) as stop:
        main(["run", "--config", str(CONFIGS / "quickstart.yaml")])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err == "seewhy: error: training failed (WorkerGroupError): RuntimeError: CUDA out of memory\n"


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    from ray_jobs import protocol

    def bug(cfg, fresh=False):
        raise KeyError("a bug")

    monkeypatch.setattr(protocol, "run", bug)
    monkeypatch.setattr(cli, "init_ray", lambda *a, **k: None)
    with pytest.raises(KeyError, match="a bug"):
        main(["run", "--config", str(CONFIGS / "quickstart.yaml")])
