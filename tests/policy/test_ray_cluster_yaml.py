"""The cluster launcher configs (ray_cluster.yaml for AWS, configs/ray_cluster_gcp.yaml) pass Ray's own
preparation and schema validation, give one farm worker per GPU, install and prepare the way the
README does, open nothing but SSH to the world, and run the farm's Redis with a password.

Ray's checks are called the way `ray up` calls them (prepare_config, then validate_config against
ray/autoscaler/ray-schema.json); the provider's bootstrap step, which needs cloud credentials and
the network, is left out."""

from __future__ import annotations

import copy
import ipaddress
import shlex
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import check_legacy_fields, prepare_config, validate_config

from cluster import config as farm_config
from cluster import head
from cluster.remote import protocol
from tests.farmkit import free_port, shutdown_redis

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"aws": ROOT / "ray_cluster.yaml", "gcp": ROOT / "configs" / "ray_cluster_gcp.yaml"}
INSTALL = 'pip install -e ".[dev,gpu]"'
PREPARE = "python prepare.py --dataset climbmix --num-shards 10"


@pytest.fixture(params=sorted(CONFIGS), ids=sorted(CONFIGS))
def config(request) -> tuple[str, dict, dict]:
    """(provider, the file as written, the file as `ray up` prepares it)."""
    raw = yaml.safe_load(CONFIGS[request.param].read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    return request.param, raw, prepared


def test_passes_rays_preparation_and_schema(config):
    provider, raw, prepared = config
    assert raw["provider"]["type"] == provider
    check_legacy_fields(prepared)
    validate_config(prepared)  # raises on any schema violation
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert "cluster_synced_files" in prepared  # the defaults were merged in, as `ray up` does


def test_one_worker_per_gpu(config):
    _, _, prepared = config
    cpus_per_worker = farm_config.load(str(ROOT / "configs" / "gpu.toml")).workers.cpus_per_worker
    gpu_types = 0
    for name, node_type in prepared["available_node_types"].items():
        res = node_type["resources"]
        gpus = res.get("GPU", 0)
        assert float(gpus).is_integer() and gpus >= 0, f"{name}: GPU count {gpus} is not a whole number"
        if name == prepared["head_node_type"]:
            assert gpus == 0 and res.get("CPU") == 0, "the head runs no workers: CPU 0, no GPU"
            continue
        assert gpus >= 1, f"{name}: a worker node type without GPUs"
        assert res["CPU"] / gpus >= max(1.0, cpus_per_worker), (
            f"{name}: {res['CPU']} CPUs for {gpus} GPUs; each GPU's worker needs {cpus_per_worker}")
        assert node_type["max_workers"] >= node_type["min_workers"]
        gpu_types += 1
    assert gpu_types >= 1
    assert sum(t["min_workers"] for t in prepared["available_node_types"].values()) >= 1, \
        "no GPU node comes up with the cluster: the farm sizes itself at start"


def test_install_and_prepare_as_the_readme_says(config):
    _, raw, prepared = config
    readme = (ROOT / "README.md").read_text()
    assert INSTALL in readme and PREPARE in readme, "the README's GPU set-up changed: update the cluster configs"
    src = "~/autoresearch-farm/src"
    assert raw["file_mounts"].get(src) == ".", "the repository is synced to every node"
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in by prepare_config
        cmds = prepared[key]
        assert any(INSTALL in c and f"cd {src}" in c for c in cmds), f"{key} lacks the README's install"
    assert any(PREPARE in c and f"cd {src}" in c for c in prepared["worker_setup_commands"]), \
        "GPU nodes must prepare the data"
    installs = [i for i, c in enumerate(prepared["worker_setup_commands"]) if INSTALL in c]
    prepares = [i for i, c in enumerate(prepared["worker_setup_commands"]) if PREPARE in c]
    assert max(installs) < min(prepares), "prepare runs after the install"
    assert any("boto3" in c or "google-api-python-client" in c for c in prepared["head_setup_commands"]), \
        "the head's autoscaler needs its cloud SDK"


def _ip_rules(rule: dict) -> list[str]:
    return [r["CidrIp"] for r in rule.get("IpRanges", [])] + [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]


def test_nothing_but_ssh_is_open_to_the_world(config):
    provider, _, prepared = config
    node_configs = [t["node_config"] for t in prepared["available_node_types"].values()]
    if provider == "aws":
        # Ray adds intra-cluster traffic and SSH 22/tcp from anywhere itself; anything extra is ours
        for rule in prepared["provider"].get("security_group", {}).get("IpPermissions", []):
            if any(ipaddress.ip_network(cidr).prefixlen == 0 for cidr in _ip_rules(rule)):  # 0.0.0.0/0 or ::/0
                assert rule.get("FromPort") == rule.get("ToPort") == 22, f"{rule} opens more than SSH to the world"
        for nc in node_configs:
            assert nc.get("MetadataOptions", {}).get("HttpTokens") == "required"
    else:
        # Ray puts nodes without networkInterfaces on the project's default network (SSH and RDP open)
        for nc in node_configs:
            nets = nc.get("networkInterfaces") or []
            assert nets and all("subnetwork" in n and "/default" not in n["subnetwork"] for n in nets), \
                "every GCP node needs the farm's own subnetwork"
    head = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head, "the dashboard is reached by port-forwarding"


def test_token_auth_and_graceful_stop(config):
    _, raw, prepared = config
    assert raw["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in prepared[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c and "--metrics-export-port=" in c for c in starts), key
    head = " ".join(prepared["head_start_ray_commands"])
    assert "RAY_JOB_STOP_WAIT_TIME_S=" in head, "a stopped run needs time to re-queue its candidates"


def test_the_head_runs_the_farms_redis_with_a_password(config, tmp_path):

    _, _, prepared = config
    cmds = prepared["head_start_ray_commands"]
    redis_at = [i for i, c in enumerate(cmds) if "python -m cluster.head head-redis" in c]
    assert redis_at and redis_at[0] < next(i for i, c in enumerate(cmds) if "ray start" in c), \
        "the farm's Redis starts on the head, before Ray"
    argv = shlex.split(cmds[redis_at[0]].split("python -m cluster.head", 1)[1])
    assert "--bind" not in argv, "the default bind (loopback + private address) is the safe one"
    home = argv[argv.index("--home") + 1] if "--home" in argv else protocol.DEFAULT_HOME
    assert home == protocol.DEFAULT_HOME, "the farm's Redis must live in the home the client's jobs name (--home)"
    # the very command: its config has a password and an append-only file, and no world binding
    import redis

    url = head.head_redis(tmp_path / "home", port=free_port())
    try:
        conf = (tmp_path / "home" / "redis" / "redis.conf").read_text().splitlines()
        assert any(line.startswith("requirepass ") and len(line.split()[1]) >= 32 for line in conf)
        assert "appendonly yes" in conf and "protected-mode yes" in conf
        binds = next(line for line in conf if line.startswith("bind ")).split()[1:]
        assert "0.0.0.0" not in binds and "*" not in binds and "127.0.0.1" in binds
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url.replace(url.split("@")[0], "redis://")).ping()
    finally:
        shutdown_redis(url)
