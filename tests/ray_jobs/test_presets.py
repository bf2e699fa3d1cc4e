"""Every YAML preset under ray_jobs/configs/ parses into its config model; the paper presets fit together.

Placeholder paths (``/path/to/...``) parse because no config checks that files exist at load time,
while unknown keys still fail (every model forbids extra keys), so a typo in a preset is caught here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from featurize.config import FeaturizeConfig
from ray_jobs.config import ConfigError, RunConfig, load_tree, validate

CONFIGS = Path(__file__).parents[2] / "ray_jobs" / "configs"
PRESETS = sorted(CONFIGS.rglob("*.yaml"))
PAPER = CONFIGS / "paper"


def parse(path: Path, tmp_path: Path):
    """The preset's config object, by its kind: cluster launcher (None here), tune, run or featurize."""
    tree = load_tree(path)
    if "provider" in tree:
        return None  # Ray cluster launcher config: tests/ray_jobs/test_cluster_config.py
    if "sweep" in tree:
        from ray_jobs.tune import TuneConfig

        return validate(TuneConfig, tree, str(path))
    if "data" in tree:
        return validate(RunConfig, tree, str(path))
    return validate(FeaturizeConfig, tree, str(path), context={"base_dir": str(tmp_path)})


@pytest.mark.parametrize("path", PRESETS, ids=[str(p.relative_to(CONFIGS)) for p in PRESETS])
def test_every_preset_parses(path, tmp_path):
    cfg = parse(path, tmp_path)
    if cfg is None:
        assert path.name == "cluster.yaml"
    else:
        assert isinstance(cfg, RunConfig | FeaturizeConfig)


def test_a_typo_in_a_preset_key_fails(tmp_path):
    bad = tmp_path / "featurize.yaml"
    bad.write_text(
        (PAPER / "featurize.yaml").read_text().replace("max_new_tokens: 256", "max_new_token: 256")
    )
    with pytest.raises(ConfigError, match=r"vlm\.max_new_token: unknown key"):
        parse(bad, tmp_path)


def test_paper_featurize_matches_section_5_1(tmp_path):
    cfg = parse(PAPER / "featurize.yaml", tmp_path)
    d = cfg.decode
    assert (d.num_frames, d.window_s, d.max_width, d.max_height, d.videomae_frames) == (
        16,
        30.0,
        426,
        224,
        16,
    )
    assert d.max_duration_s == 240
    assert (cfg.vlm.model, cfg.vlm.backend) == ("hf:Qwen/Qwen2.5-VL-3B-Instruct", "vllm")
    assert (cfg.audio_lm.model, cfg.audio_lm.backend) == ("hf:Qwen/Qwen2-Audio-7B-Instruct", "vllm")
    assert cfg.asr.model == "hf:Systran/faster-whisper-large-v3" and cfg.events is not None
    assert [e.model for e in cfg.text_encoders] == ["hf:BAAI/bge-large-en-v1.5"]
    assert (
        cfg.videomae.model == "hf:MCG-NJU/videomae-large" and cfg.clap.model == "hf:laion/clap-htsat-unfused"
    )
    raw = yaml.safe_load((PAPER / "featurize.yaml").read_text())
    assert all(str(v).startswith("/path/to/") for v in (*raw["catalog"].values(), raw["store_root"]))


def _feature_sets(name: str, tmp_path: Path) -> set[str]:
    from featurize.pipeline import build_plan

    cfg = parse(PAPER / name, tmp_path)
    return {s.name for s in build_plan(cfg).sinks() if s.kind == "features"}


def test_tables_read_the_feature_sets_the_featurize_presets_write(tmp_path):
    written = set().union(
        *(
            _feature_sets(n, tmp_path)
            for n in ("featurize.yaml", "featurize-qwen3-embedding.yaml", "featurize-qwen2.5-vl-7b.yaml")
        )
    )
    for table in ("table1.yaml", "table2.yaml"):
        cfg = parse(PAPER / table, tmp_path)
        wanted = {r.removeprefix("id+") for r in cfg.experiment.representations if r != "id"}
        assert wanted <= written, f"{table}: no featurize preset writes {sorted(wanted - written)}"
    t1 = parse(PAPER / "table1.yaml", tmp_path)
    assert t1.experiment.models == ["two-tower", "sasrec"] and t1.protocol.split == "rolling"
    assert t1.protocol.n_days == 7 and t1.train.patience == 5


def test_table2_variants_reuse_the_baseline_captions(tmp_path):
    base = parse(PAPER / "featurize.yaml", tmp_path)
    qwen3 = parse(PAPER / "featurize-qwen3-embedding.yaml", tmp_path)
    vl7b = parse(PAPER / "featurize-qwen2.5-vl-7b.yaml", tmp_path)
    assert qwen3.store_root == base.store_root == vl7b.store_root
    # The caption store's identity includes the VLM config and the frame sampling: both must match.
    assert qwen3.vlm == base.vlm and vl7b.vlm.model == "hf:Qwen/Qwen2.5-VL-7B-Instruct"
    keys = ("num_frames", "fps", "window_s", "max_width", "max_height", "max_duration_s", "mode")
    for variant in (qwen3, vl7b):
        assert {k: getattr(variant.decode, k) for k in keys} == {k: getattr(base.decode, k) for k in keys}
    assert [e.model for e in qwen3.text_encoders] == ["hf:Qwen/Qwen3-Embedding-0.6B"]
