"""`seewhy plan` resolves the paper presets without loading a model, and warns when a cluster cannot run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.estimate import MODEL_SIZES, cluster_from_args, cluster_from_yaml, make_estimate, parse_rates
from ray_jobs.estimate.featurize import visual_tokens

CONFIGS = Path(__file__).parents[2] / "ray_jobs" / "configs"
PAPER = CONFIGS / "paper"
CLUSTER = Path(__file__).parents[2] / "cluster.yaml"


def test_plan_of_paper_featurize_on_the_cluster_yaml():
    plan = make_estimate(PAPER / "featurize.yaml", cluster=cluster_from_yaml(CLUSTER))
    text = plan.markdown()
    stages = [r["stage"] for r in plan.tables[0][1]]
    assert stages == ["decode", "vlm", "asr", "events", "audio_lm", "videomae", "clap", "embed:bge-large"]
    vlm = plan.tables[0][1][1]
    # 3.75B params x 2 bytes = 7.0 GiB; KV 2 x 36 layers x 2 heads x 128 x 2 B = 36 KiB/token x 4096 = 0.14 GiB
    assert vlm["GPU memory / replica"].startswith("7.0 GiB weights + 0.14 GiB KV per 4096-token sequence")
    assert vlm["GPU/actor"] == "1" and vlm["actors min-max (planned)"] == "1-3 (3)"
    assert "1152 tokens at 448x252" in text  # 16 frames -> 8 x (252/28) x (448/28)
    assert "19,738" in text and "estimated wall time" in text and "unknown" not in vlm["stage time"]
    assert "8 x gpu_a10g (16 CPU, 1 GPU of 24 GiB)" in text
    assert "none: the cluster described fits" in text, plan.warnings


def test_planning_imports_no_model_library():
    code = (
        "import sys; from ray_jobs.estimate import make_estimate; "
        f"make_estimate({str(PAPER / 'featurize.yaml')!r}).markdown(); "
        "heavy = ('torch', 'vllm', 'faster_whisper', 'sentence_transformers', 'transformers', 'av'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", sorted(p.name for p in PAPER.glob("*.yaml")))
def test_every_paper_preset_has_a_full_plan(name):
    text = make_estimate(PAPER / name, cluster=cluster_from_yaml(CLUSTER)).markdown()
    assert "## Totals" in text and "## Warnings" in text
    assert not re.search(r"(wall time|time bound) \| unknown", text)


def test_run_and_tune_plans_count_trainings():
    t1 = make_estimate(PAPER / "table1.yaml", cluster=cluster_from_yaml(CLUSTER))
    assert len(t1.tables[0][1]) == 2 * 7  # two models x seven representations, each over 7 folds
    assert {r["folds"] for r in t1.tables[0][1]} == {7}
    t2 = make_estimate(PAPER / "table2.yaml", cluster=cluster_from_yaml(CLUSTER)).markdown()
    assert "| trainings | 9 (3 model x representation, 3 seed(s)) |" in t2
    assert "| in parallel | 8 |" in t2  # one GPU per trial, 8 GPU nodes


def test_warnings_when_the_cluster_cannot_run_it():
    small = cluster_from_args(None, gpus=1, cpus=8, gpu_mem_gb=16, nodes=1)
    plan = make_estimate(PAPER / "featurize.yaml", cluster=small, n_items=1000)
    text = "\n".join(plan.warnings)
    assert "minimum actors need 2.75 GPUs together" in text
    assert re.search(r"audio_lm: .*needs 17\.6 GiB .* vLLM may use 14\.4 GiB", text)
    plan = make_estimate(
        PAPER / "featurize.yaml",
        ["vlm.tensor_parallel_size=2", "resources.asr.num_cpus=32", "vlm.max_model_len=1024"],
        cluster_from_args(None, gpus=1, cpus=16, gpu_mem_gb=80, nodes=8),
    )
    text = "\n".join(plan.warnings)
    assert "vlm: tensor_parallel_size 2 but the actor reserves 1 GPU(s)" in text
    assert "asr: an actor needs 32 CPUs; the largest node has 16" in text
    assert re.search(r"vlm: ~\d+ tokens per request exceed max_model_len 1024", text)
    run = make_estimate(
        PAPER / "table1.yaml", cluster=cluster_from_args(None, gpus=0, cpus=2, gpu_mem_gb=None)
    )
    assert any("one training needs 1 GPUs; the cluster has 0" in w for w in run.warnings)


def test_visual_tokens_follow_the_frame_sampling():
    from featurize.config import FeaturizeConfig

    base = {"catalog": {"titles": "t.csv"}, "store_root": "s", "vlm": {"model": "tiny:qwen2.5-vl"}}
    cfg = FeaturizeConfig.model_validate({**base, "decode": {"num_frames": 8}})
    assert visual_tokens(cfg)["426x224 box"] == (4 * 9 * 16, 448, 252)
    cfg = FeaturizeConfig.model_validate(
        {**base, "decode": {"fps": 1.0, "max_width": 1280, "max_height": 720}}
    )
    tokens, w, h = visual_tokens(cfg)["16:9 landscape"]  # 30 frames; 1280x720 capped at 768 x 28 x 28 pixels
    assert tokens == 15 * (h // 28) * (w // 28) and w * h <= 768 * 28 * 28 and w % 28 == h % 28 == 0


def test_unknown_models_and_bad_input_are_named(tmp_path):
    plan = make_estimate(CONFIGS / "featurize" / "offline.yaml", n_items=10)
    vlm = next(r for r in plan.tables[0][1] if r["stage"] == "vlm")
    assert vlm["items/s/actor"] == "unknown" and "tiny:qwen2.5-vl" not in MODEL_SIZES
    assert any("give --rate vlm=ITEMS_PER_S" in n for n in plan.notes)
    with pytest.raises(ValueError, match="expected STAGE=CLIPS_PER_S"):
        parse_rates(["vlm=fast"])
    with pytest.raises(ValueError, match="cluster launcher config: pass it as --cluster"):
        make_estimate(CLUSTER)
    with pytest.raises(ValueError, match="--gpu-mem-gb is needed"):
        cluster_from_args(None, gpus=1, cpus=8, gpu_mem_gb=None)
    local = tmp_path / "local.yaml"
    local.write_text("cluster_name: x\nprovider: {type: local, head_ip: 10.0.0.1, worker_ips: []}\n")
    with pytest.raises(ValueError, match="describe one node with --gpus"):
        cluster_from_yaml(local)


def test_cli_prints_the_plan():
    out = subprocess.run(
        [sys.executable, "-m", "ray_jobs.cli", "plan", "--config", str(PAPER / "featurize-qwen2.5-vl-7b.yaml"),
         "--gpus", "1", "--cpus", "16", "--gpu-mem-gb", "24", "--nodes", "6", "--rate", "vlm=1.2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert (
        out.startswith("# Plan: seewhy featurize") and "| A | vlm | hf:Qwen/Qwen2.5-VL-7B-Instruct |" in out
    )
    assert "rate of vlm: 1.2/s per actor (--rate)" in out
