"""Unknown keys and bad values name their dotted path; --set overrides apply."""

import pytest
from pydantic import ValidationError

from ray_jobs.config import ConfigError, load_config, parse_override


def test_unknown_key_names_its_path(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("data: {synthetic: {preset: small}}\ntrain: {epochz: 3}\n")
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key"):
        load_config(p)


def test_bad_value_names_its_path():
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(None, ["data.synthetic.preset=small", "train.lr=-1"])
    with pytest.raises(ConfigError, match=r"protocol\.split"):
        load_config(None, ["data.synthetic.preset=small", "protocol.split=random"])


def test_exactly_one_data_source():
    with pytest.raises(ConfigError, match=r"exactly one of data\.interactions and data\.synthetic"):
        load_config(None, ["data.synthetic.preset=small", "data.interactions.path=x.csv"])


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        None,
        [
            "data.synthetic.preset=small",
            "train.epochs_max=3",
            "experiment.models=[sasrec]",
            "train.use_gpu=false",
        ],
    )
    assert cfg.train.epochs_max == 3 and cfg.experiment.models == ["sasrec"] and cfg.train.use_gpu is False
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        parse_override("novalue")


def test_config_is_frozen():
    cfg = load_config(None, ["data.synthetic.preset=small"])
    with pytest.raises(ValidationError):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "a/b", "..", "~x", ""])
def test_a_run_name_that_leaves_output_dir_is_refused(name):
    with pytest.raises(ConfigError, match=r"name: .*not a plain folder name"):
        load_config(None, ["data.synthetic.preset=small", f"name={name}"])


def test_a_tune_name_is_checked_too():
    from ray_jobs.tune import load_tune_config

    with pytest.raises(ConfigError, match=r"name: .*not a plain folder name"):
        load_tune_config(None, ["data.synthetic.preset=small", "name=../up"])
    assert load_config(None, ["data.synthetic.preset=small", "name=run-1.b"]).name == "run-1.b"
