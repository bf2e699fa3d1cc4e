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


def test_base_preset_is_merged_under_a_variant(tmp_path):
    from ray_jobs.config import load_tree

    (tmp_path / "base.yaml").write_text(
        "name: a\ntrain: {epochs: 3, lr: 0.01}\nexperiment: {models: [sasrec], representations: [id, t.x]}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "v.yaml").write_text(
        "base: ../base.yaml\nname: b\ntrain: {lr: 0.1}\nexperiment: !replace {models: [two-tower]}\n"
    )
    tree = load_tree(tmp_path / "sub" / "v.yaml", ["train.epochs=5"])
    # Mappings merge key by key, `!replace` replaces, scalars and lists replace; --set applies last.
    assert tree == {"name": "b", "train": {"epochs": 5, "lr": 0.1}, "experiment": {"models": ["two-tower"]}}
    (tmp_path / "v2.yaml").write_text("base: sub/v.yaml\nname: c\n")  # a chain of bases
    assert load_tree(tmp_path / "v2.yaml")["train"] == {"epochs": 3, "lr": 0.1}


def test_bad_base_presets_are_named(tmp_path):
    from ray_jobs.config import load_tree

    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="base presets form a loop"):
        load_tree(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml does not exist \(the base of .*c\.yaml\)"):
        load_tree(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="base: expected the path of another preset"):
        load_tree(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("x: !!python/object:os.system {}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # still a safe loader
        load_tree(tmp_path / "e.yaml")


def test_paper_variants_are_short_diffs_of_their_base():
    from pathlib import Path

    paper = Path(__file__).parents[2] / "ray_jobs" / "configs" / "paper"
    for name, base in [
        ("featurize-qwen3-embedding.yaml", "featurize.yaml"),
        ("featurize-qwen2.5-vl-7b.yaml", "featurize.yaml"),
        ("table2.yaml", "table1.yaml"),
    ]:
        text = (paper / name).read_text()
        assert f"base: {base}" in text, name
        # What must equal the base (catalogue, stores, frame sampling, data) is not repeated.
        assert not any(
            line.startswith(("catalog:", "store_root:", "data:", "output_dir:")) for line in text.splitlines()
        )


@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "a/b", "..", "~x", ""])
def test_a_run_name_that_leaves_output_dir_is_refused(name):
    with pytest.raises(ConfigError, match=r"name: .*not a plain folder name"):
        load_config(None, ["data.synthetic.preset=small", f"name={name}"])


def test_a_tune_name_is_checked_too():
    from ray_jobs.tune import load_tune_config

    with pytest.raises(ConfigError, match=r"name: .*not a plain folder name"):
        load_tune_config(None, ["data.synthetic.preset=small", "name=../up"])
    assert load_config(None, ["data.synthetic.preset=small", "name=run-1.b"]).name == "run-1.b"
