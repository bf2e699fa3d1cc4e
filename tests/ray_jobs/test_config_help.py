"""The config reference is generated from the config classes, and every key has its docstring."""

from __future__ import annotations

import pytest

from featurize.config import FeaturizeConfig
from ray_jobs.cli import build_parser
from ray_jobs.config import RunConfig
from ray_jobs.config_help import keys, undocumented
from ray_jobs.tune import TuneConfig


@pytest.mark.parametrize("model", [RunConfig, TuneConfig, FeaturizeConfig])
def test_every_config_key_is_documented(model):
    missing = undocumented(model)
    assert not missing, f"{model.__name__}: add a field docstring to {missing}"


def test_keys_are_dotted_with_types_and_defaults():
    by_path = {k.path: k for k in keys(RunConfig)}
    assert by_path["train.lr"].type == "float" and by_path["train.lr"].doc
    assert by_path["data.interactions.time_unit"].default == "'ms'"
    assert by_path["data"].default == "(required)" and "interactions" in by_path["data"].doc
    assert "None" in by_path["data.synthetic"].type and "NoneType" not in by_path["data.synthetic"].type
    assert any(p.startswith("text_encoders[].") for p in (k.path for k in keys(FeaturizeConfig)))


@pytest.mark.parametrize("command, key", [("run", "protocol.n_days"), ("featurize", "decode.window_s")])
def test_help_config_prints_the_reference_without_a_config(command, key, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help-config"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and f"\n{key}: " in out
