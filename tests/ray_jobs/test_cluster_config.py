"""cluster.yaml validates against Ray's own cluster-config schema, as `ray up` checks it (no cloud calls).

``prepare_config`` merges the provider's defaults (what ``ray up`` does first) and ``validate_config``
checks the result against ``ray/autoscaler/ray-schema.json`` plus Ray's cross-field rules.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).parents[2] / "cluster.yaml"


def _validate(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_validates_against_ray_schema(cluster):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)  # the file as written, before Ray fills in defaults
    prepared = _validate(cluster)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu)  # autoscaling


def test_cluster_yaml_installs_pinned_seewhy_and_binds_dashboard_locally(cluster):
    setup = "\n".join(cluster["setup_commands"])
    assert re.search(r'pip install .*"\$HOME/seewhy\[gpu\]"', setup)
    assert cluster["file_mounts"]["~/seewhy"] == "."
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--head" in head
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(cluster["worker_start_ray_commands"])


def test_cluster_yaml_asks_for_a_token_and_keeps_ssh_to_one_group(cluster):
    """Token auth on every node (the token file travels with file_mounts), no Ray API on the network,
    and every node in the user's own security group: Ray's default one opens SSH to 0.0.0.0/0."""
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in cluster["setup_commands"])
    for cmd in (" ".join(cluster["head_start_ray_commands"]), *cluster["worker_start_ray_commands"][1:]):
        assert "RAY_AUTH_MODE=token ray start" in cmd
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])
    for name, node in cluster["available_node_types"].items():
        assert node["node_config"].get("SecurityGroupIds") == ["sg-REPLACE-ME"], name
    assert "--port 22 --cidr" in CLUSTER.read_text()  # how to make that group is written beside it


def test_on_prem_variant_in_the_comments_validates(cluster):
    text = CLUSTER.read_text()
    block = re.search(r"# --- on-prem variant ---\n(.*?)# --- end of on-prem variant ---", text, re.S)
    assert block, "cluster.yaml lost its on-prem variant block"
    local = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.group(1).splitlines()))
    cfg = {k: v for k, v in cluster.items() if k not in ("available_node_types", "head_node_type")}
    cfg.update(local)
    prepared = _validate(cfg)
    node = prepared["available_node_types"][prepared["head_node_type"]]
    assert prepared["provider"]["type"] == "local" and node["max_workers"] == 2


def _min_over_max(c: dict) -> None:
    c["available_node_types"]["gpu_a10g"]["min_workers"] = 2
    c["max_workers"] = 1  # the global cap is below the node types' minimums


@pytest.mark.parametrize(
    "mangle, error",
    [
        (lambda c: c.update(max_worker=8), jsonschema.ValidationError),  # misspelt top-level key
        (
            lambda c: c["available_node_types"]["gpu_a10g"].update(resources={"GPU": 0.5}),
            jsonschema.ValidationError,
        ),
        (lambda c: c["available_node_types"]["gpu_a10g"].pop("node_config"), jsonschema.ValidationError),
        (lambda c: c.update(head_node_type="no_such_type"), ValueError),
        (_min_over_max, ValueError),
    ],
    ids=["unknown-key", "fractional-resource", "missing-node-config", "bad-head-type", "min-over-max"],
)
def test_mangled_copy_fails_validation(cluster, mangle, error):
    bad = copy.deepcopy(cluster)
    mangle(bad)
    with pytest.raises(error):
        _validate(bad)
