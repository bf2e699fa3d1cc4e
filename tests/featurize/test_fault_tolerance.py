"""Fault tolerance of the featurize graph on real Ray: bad files, a crashing actor, a killed driver, reruns.

The stages are cheap stand-ins (decode for real, FrameStats as the captioner, a hash text encoder) so
each run takes seconds; the real stages are tested by their own modules.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurize.graph import RunStopped
from featurize.pipeline import run_featurize
from featurize.stores import CaptionStore, FeatureStore, StoreConfigError
from tests.featurize.conftest import (
    BROKEN,
    GOOD,
    MISSING,
    SILENT,
    VIDEO_STORE,
    UnloadableModel,
    fault_config,
    fault_plan,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FEATURES = (f"{VIDEO_STORE}.hash", "title.hash")


def _stores(root: Path, features: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The stores of a fault run, read raw (all parts, no dedup) with plain pandas."""
    out = {"captions": pd.read_parquet(root / "captions" / VIDEO_STORE)}
    for fs in features:
        out[fs] = pd.read_parquet(root / "features" / fs)
    return out


def _assert_each_item_once(root: Path, ids: list[int], features: tuple[str, ...] = FEATURES) -> None:
    for name, df in _stores(root, features).items():
        counts = df["item_id"].value_counts()
        assert sorted(counts.index) == ids, name
        assert (counts == 1).all(), f"{name}: duplicated {counts[counts > 1].to_dict()}"


@pytest.fixture(scope="module")
def clean(ray_local, clip_catalog, tmp_path_factory):
    """One uninterrupted run over the catalog: its root and result (later tests compare with it)."""
    root = tmp_path_factory.mktemp("clean")
    cfg = fault_config(clip_catalog, root)
    return root, run_featurize(cfg, fault_plan(cfg))


def test_corrupt_files_become_error_rows(clean, clip_catalog):
    root, result = clean
    _assert_each_item_once(root, clip_catalog["ids"])
    caps = CaptionStore(root, VIDEO_STORE).read().set_index("item_id")
    ok = [*GOOD, SILENT]
    assert (caps.loc[ok, "status"] == "ok").all()
    assert caps.loc[GOOD[0], "text"].startswith("4 frames of 64x48")
    assert (caps.loc[[*BROKEN, MISSING], "status"] == "error").all()
    for item in BROKEN:
        assert caps.loc[item, "error"].startswith("decode: ") and f"{item}.mp4" in caps.loc[item, "error"]
    assert caps.loc[MISSING, "error"] == "decode: no video file for this item"
    video = FeatureStore(root, f"{VIDEO_STORE}.hash").read().set_index("item_id")
    assert (video.loc[ok, "status"] == "ok").all()
    assert video.loc[201, "error"].startswith("caption_video: mllm-video.frame-stats: decode: ")
    assert (FeatureStore(root, "title.hash").read()["status"] == "ok").all()
    key = f"captions/{VIDEO_STORE}"
    assert result.written[key] == {"ok": len(ok), "error": len(BROKEN) + 1}
    assert result.totals[key] == result.written[key]
    manifest = CaptionStore(root, VIDEO_STORE).manifest()
    assert manifest["counts"] == {"ok": len(ok), "error": len(BROKEN) + 1}
    assert manifest["frame_sampling"]["num_frames"] == 4 and manifest["config_hash"]


def test_crashed_actor_is_restarted_and_every_item_written_once(ray_local, clip_catalog, tmp_path):
    marker = tmp_path / "crashed"
    cfg = fault_config(clip_catalog, tmp_path / "stores", text_encoders=[])  # phase A is what crashes
    run_featurize(cfg, fault_plan(cfg, crash_on=GOOD[2], crash_marker=str(marker)))
    assert marker.exists(), "the actor never crashed: the test did not test anything"
    assert int(marker.read_text()) != os.getpid()
    _assert_each_item_once(tmp_path / "stores", clip_catalog["ids"], features=())
    caps = CaptionStore(tmp_path / "stores", VIDEO_STORE).read().set_index("item_id")
    assert caps.loc[GOOD[2], "status"] == "ok"


def test_a_model_that_does_not_load_stops_the_run(ray_local, clip_catalog, tmp_path):
    cfg = fault_config(clip_catalog, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(
        RunStopped, match=r"captions: .*RuntimeError: .*cannot load model tiny:does-not-exist"
    ):
        run_featurize(cfg, fault_plan(cfg, captioner=UnloadableModel))
    assert time.monotonic() - t0 < 60  # stops at once, not after retrying every batch
    assert CaptionStore(tmp_path, VIDEO_STORE).parts() == []


_DRIVER = """
import sys
import ray
from featurize.graph import RunStopped
from featurize.pipeline import run_featurize
from tests.featurize.conftest import fault_config, fault_plan
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
cfg = fault_config({"titles": sys.argv[3], "videos_dir": sys.argv[4]}, sys.argv[2])
run_featurize(cfg, fault_plan(cfg, sleep_s=0.4))
"""


def test_killed_driver_resumes_to_the_same_stores(ray_local, clean, clip_catalog, tmp_path):
    killed = tmp_path / "killed"
    address = ray_local.get_runtime_context().gcs_address
    args = [address, str(killed), clip_catalog["titles"], clip_catalog["videos_dir"]]
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, *args], cwd=REPO, start_new_session=True)
    store = CaptionStore(killed, VIDEO_STORE)
    try:
        deadline = time.monotonic() + 120
        while not store.parts() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the driver ended (rc {proc.returncode}) before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(1.0)  # let Ray reap the dead job's actors (one may finish a part) before the rerun
    partial = store.done_ids()
    assert 0 < len(partial) < len(clip_catalog["ids"]), "the kill should leave a partial store"

    cfg = fault_config(clip_catalog, killed)
    resumed = run_featurize(cfg, fault_plan(cfg))
    assert resumed.items["captions"] == len(clip_catalog["ids"]) - len(partial)
    a, b = CaptionStore(killed, VIDEO_STORE).read(), CaptionStore(clean[0], VIDEO_STORE).read()
    pd.testing.assert_frame_equal(a, b)
    for fs in FEATURES:
        fa, fb = FeatureStore(killed, fs), FeatureStore(clean[0], fs)
        ids = clip_catalog["ids"]
        (ma, oka), (mb, okb) = fa.read_matrix(ids), fb.read_matrix(ids)
        np.testing.assert_array_equal(oka, okb)
        np.testing.assert_array_equal(ma, mb)
        assert fa.read()["status"].tolist() == fb.read()["status"].tolist()


def test_rerun_does_no_work_and_changed_config_is_refused(clean, clip_catalog):
    root, first = clean
    cfg = fault_config(clip_catalog, root)
    assert first.processed > 0
    parts = sorted(p.name for p in CaptionStore(root, VIDEO_STORE).parts())

    again = run_featurize(cfg, fault_plan(cfg))
    assert again.processed == 0
    assert again.items == {"captions": 0, "text.hash": 0}
    assert sorted(p.name for p in CaptionStore(root, VIDEO_STORE).parts()) == parts

    changed = fault_config(clip_catalog, root, decode={"num_frames": 2})
    with pytest.raises(StoreConfigError, match=r"frame-stats .*frame_sampling\.num_frames"):
        run_featurize(changed, fault_plan(changed))
    assert sorted(p.name for p in CaptionStore(root, VIDEO_STORE).parts()) == parts

    # The way out without losing the first store: write the new configuration under new names.
    renamed = fault_config(
        clip_catalog,
        root,
        decode={"num_frames": 2},
        rename={VIDEO_STORE: "mllm-video.frame-stats-2"},
        title=False,
    )
    run_featurize(renamed, fault_plan(renamed))
    caps = CaptionStore(root, "mllm-video.frame-stats-2").read().set_index("item_id")
    assert caps.loc[GOOD[0], "text"].startswith("2 frames")
    assert (
        CaptionStore(root, VIDEO_STORE)
        .read()
        .set_index("item_id")
        .loc[GOOD[0], "text"]
        .startswith("4 frames")
    )
    assert FeatureStore(root, "mllm-video.frame-stats-2.hash").counts()["ok"] == len(GOOD) + 1


def test_second_featurize_on_the_same_stores_refuses(ray_local, clip_catalog, tmp_path):
    from featurize.store_lock import StoreBusyError, StoreLock

    cfg = fault_config(clip_catalog, tmp_path, text_encoders=[])
    lock = CaptionStore(tmp_path, VIDEO_STORE).lock_file
    busy = rf"mllm-video.frame-stats is being written by another run \(pid {os.getpid()}"
    # Another run holds the caption store.
    with StoreLock(lock, "the first run"), pytest.raises(StoreBusyError, match=busy):
        run_featurize(cfg, fault_plan(cfg))
    assert CaptionStore(tmp_path, VIDEO_STORE).parts() == []  # refused before any work
    run_featurize(cfg, fault_plan(cfg))  # released: the next run goes ahead
    assert len(CaptionStore(tmp_path, VIDEO_STORE).done_ids()) == len(clip_catalog["ids"])


def test_overwrite_builds_beside_the_old_store_and_swaps_when_complete(ray_local, clip_catalog, tmp_path):
    cfg = fault_config(clip_catalog, tmp_path, text_encoders=[])
    run_featurize(cfg, fault_plan(cfg))
    before = CaptionStore(tmp_path, VIDEO_STORE).read()
    changed = fault_config(clip_catalog, tmp_path, text_encoders=[], decode={"num_frames": 2}, overwrite=True)
    wrong = changed.model_copy(
        update={"catalog": changed.catalog.model_copy(update={"titles": "/nowhere.csv"})}
    )
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        run_featurize(wrong, fault_plan(wrong))  # a wrong path: the old store is still all there
    pd.testing.assert_frame_equal(CaptionStore(tmp_path, VIDEO_STORE).read(), before)
    run_featurize(changed, fault_plan(changed))
    after = CaptionStore(tmp_path, VIDEO_STORE)
    assert after.manifest()["frame_sampling"]["num_frames"] == 2
    assert after.read().set_index("item_id").loc[GOOD[0], "text"].startswith("2 frames of 64x48")
    assert len(after.read()) == len(before)
    assert not any((tmp_path / ".featurize" / "staging" / "captions").iterdir())


def test_poison_pill_and_hung_item_become_error_rows_and_the_job_goes_on(ray_local, clip_catalog, tmp_path):
    from tests.featurize.faulty import Misbehaving

    poison, hang = GOOD[1], GOOD[4]
    cfg = fault_config(clip_catalog, tmp_path, text_encoders=[])
    plan = fault_plan(cfg, captioner=Misbehaving, poison=(poison,), hang=(hang,))
    spec = replace(plan.captions.stages[1], max_restarts=-1, batch_time_limit_s=3.0)
    plan = replace(plan, captions=replace(plan.captions, stages=(plan.captions.stages[0], spec)))
    run_featurize(cfg, plan)
    _assert_each_item_once(tmp_path, clip_catalog["ids"], features=())
    caps = CaptionStore(tmp_path, VIDEO_STORE).read().set_index("item_id")
    assert caps.loc[poison, "error"].startswith(
        "testcap: worker died while processing this item (2 times): the worker process (pid "
    )
    assert caps.loc[hang, "error"].startswith("testcap: over its time limit of 3 s (in File ")
    assert caps.loc[hang, "error"].endswith("the worker was stopped")
    others = [i for i in (*GOOD, SILENT) if i not in (poison, hang)]
    assert (caps.loc[others, "status"] == "ok").all()
    assert not (tmp_path / ".featurize" / "inflight").exists()
    rerun = run_featurize(cfg, plan)  # error rows are not retried: the rerun has nothing to do
    assert rerun.items["captions"] == 0
