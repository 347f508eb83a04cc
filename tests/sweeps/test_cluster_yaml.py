"""cluster.yaml: Ray's own launcher schema accepts it, and it holds what a GPU sweep needs."""

from pathlib import Path

import pytest
import yaml

from pipeline.core.ray_compat import validate_cluster_yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_accepts_the_file(config):
    validate_cluster_yaml(config)  # the jsonschema `ray up` checks against
    broken = yaml.safe_load(CLUSTER.read_text())
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0  # a typo must not pass
    with pytest.raises(Exception, match="min_worker"):
        validate_cluster_yaml(broken)


def test_cpu_head_and_gpu_workers(config):
    for key in ("cluster_name", "max_workers", "provider", "auth", "docker", "head_node_type", "available_node_types",
                "file_mounts", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config, key
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] >= 1
    gpu = [t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu, "a GPU worker node type"
    assert all("min_workers" in t and "max_workers" in t and t["max_workers"] >= max(1, t["min_workers"]) for t in gpu)
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu)


def test_image_install_storage_and_tracking(config):
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:") and image.endswith("-gpu") and "ray-ml" not in image
    assert any(src == "." for src in config["file_mounts"].values())  # the project itself
    assert any("pip install" in c and "adept-ray" in c for c in config["setup_commands"])
    options = " ".join(config["docker"]["run_options"])
    assert "MLFLOW_TRACKING_URI=http" in options  # a server every node reaches (not a local sqlite file)
    assert "/mnt/cluster_storage" in options and any("/mnt/cluster_storage" in c for c in config["initialization_commands"])
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"])
