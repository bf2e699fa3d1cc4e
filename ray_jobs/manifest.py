"""The run manifest: what produced a run folder (config, package versions, input hashes, features)."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from featurize import stores as featurize_stores
from featurize.durable import write_text_atomic
from ray_jobs.config import RunConfig

PACKAGES = (
    "seewhy",
    "torch",
    "ray",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "transformers",
    "sentence-transformers",
    "faster-whisper",
    "pydantic",
)


def package_versions() -> dict[str, str]:
    found = featurize_stores.package_versions(PACKAGES)
    return {name: found.get(name, "not installed") for name in PACKAGES}


def write_manifest(
    cfg: RunConfig, run_dir: Path, inputs: dict[str, str], features: dict[str, dict], status: str, **extra
) -> Path:
    path = run_dir / "manifest.json"
    manifest = {
        "name": cfg.name,
        "status": status,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.model_dump(mode="json"),
        "inputs": {p: {"sha256": h} for p, h in inputs.items()},
        "feature_sets": features,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **extra,
    }
    return write_text_atomic(path, json.dumps(manifest, indent=2, default=str))
